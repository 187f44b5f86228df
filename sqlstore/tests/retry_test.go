package sqlstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// stateError is the error of a driver that exposes its SQLSTATE through a
// SQLState method, as pgx's *pgconn.PgError does.
type stateError struct{ code string }

func (e *stateError) Error() string    { return "driver error " + e.code }
func (e *stateError) SQLState() string { return e.code }

// stringStateError carries its SQLSTATE in a string field named SQLState:
// not a shape the Store reads (it reads a [5]byte field, as
// go-sql-driver/mysql has), so never retried.
type stringStateError struct{ SQLState string }

func (e *stringStateError) Error() string { return "driver error " + e.SQLState }

// wrappingDriverError is an error as a driver wrapper (instrumentation,
// for example) reports the error of the driver it wraps.
type wrappingDriverError struct{ err error }

func (e *wrappingDriverError) Error() string { return "instrumented: " + e.err.Error() }
func (e *wrappingDriverError) Unwrap() error { return e.err }

// mysqlState returns the SQLState field of a *mysql.MySQLError.
func mysqlState(s string) (b [5]byte) {
	copy(b[:], s)
	return b
}

// retryFaults returns the errors with which the driver of b reports a
// serialization failure or a deadlock: the Store runs the statement again.
func retryFaults(b backend) []error {
	switch b.dialect {
	case sqlstore.Postgres:
		return []error{
			&pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access due to concurrent update"},
			&pgconn.PgError{Severity: "ERROR", Code: "40P01", Message: "deadlock detected"},
		}
	case sqlstore.MySQL:
		deadlock := &mysql.MySQLError{Number: 1213, SQLState: mysqlState("40001"), Message: "Deadlock found when trying to get lock; try restarting transaction"}
		return []error{deadlock, &wrappingDriverError{deadlock}}
	}
	return []error{&stateError{"40001"}, &wrappingDriverError{&stateError{"40P01"}}}
}

// otherFaults returns errors of the driver of b that are not worth a
// retry: the Store returns them at once.
func otherFaults(b backend) []error {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	errs := []error{reset, &stringStateError{"40001"}, &wrappingDriverError{errors.New("40001")}}
	switch b.dialect {
	case sqlstore.Postgres:
		return append(errs, &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint"})
	case sqlstore.MySQL:
		return append(errs, &mysql.MySQLError{Number: 1205, SQLState: mysqlState("HY000"), Message: "Lock wait timeout exceeded; try restarting transaction"})
	}
	return append(errs, &stateError{"23505"})
}

// Statements of the Store, told apart by their text in every dialect.
var (
	isComplete = func(q string) bool { return strings.Contains(q, "SET state = 2") }
	isRenew    = func(q string) bool { return strings.Contains(q, "SET expires_at") }
	isRelease  = func(q string) bool { return strings.HasPrefix(q, "DELETE") && strings.Contains(q, "token =") }
	isRead     = func(q string) bool { return strings.HasPrefix(q, "SELECT") && strings.Contains(q, "version") }
	isInsert   = func(q string) bool { return strings.HasPrefix(q, "INSERT") || strings.HasPrefix(q, "WITH upd") }
	isTakeover = func(q string) bool { return strings.HasPrefix(q, "UPDATE") && strings.Contains(q, "SET state = 1") }
	isSweep    = func(q string) bool { return strings.HasPrefix(q, "DELETE") && strings.Contains(q, "LIMIT") }
)

// failing returns a hook that fails the next n statements that match
// with err (every one if n < 0).
func failing(n int, match func(string) bool, err error) func(string) error {
	return func(q string) error {
		if !match(q) || n == 0 {
			return nil
		}
		n--
		return err
	}
}

// faultFixture is a migrated store on a fresh table of b, opened through a
// faultConnector.
func (b backend) faultFixture(t *testing.T) (fixture, *faultConnector) {
	t.Helper()
	db, fc := b.openFaulty(t, b.dsn(t))
	tbl := table(t, db)
	s := newStore(t, db, b.dialect, tbl, sqlstore.WithSweepInterval(0))
	if err := s.Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return fixture{db: db, table: tbl, store: s}, fc
}

// expire moves the record of key into the past with the database's own
// clock.
func (f fixture) expire(t *testing.T, d sqlstore.Dialect, key string) {
	t.Helper()
	q := `UPDATE {t} SET expires_at = clock_timestamp() - interval '1 millisecond' WHERE key = $1`
	switch d {
	case sqlstore.SQLite:
		q = `UPDATE {t} SET expires_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 1 WHERE key = ?1`
	case sqlstore.MySQL:
		q = "UPDATE {t} SET expires_at = DATE_SUB(UTC_TIMESTAMP(6), INTERVAL 1000 MICROSECOND) WHERE `key` = ?"
	}
	res, err := f.db.ExecContext(testCtx(t), strings.ReplaceAll(q, "{t}", f.table), []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("moving %s into the past changed %d rows", key, n)
	}
}

// run runs fn with hook set and returns the statements it ran.
func (fc *faultConnector) run(hook func(string) error, fn func()) int64 {
	before := fc.stmts.Load()
	fc.inject(hook)
	defer fc.inject(nil)
	fn()
	return fc.stmts.Load() - before
}

// A Claim whose statement fails with a serialization failure or a
// deadlock (which changed nothing) runs again and claims the key, whichever
// of its statements failed: the read, the insert, or the takeover of an
// expired record.
func TestClaimRetriesSerializationFailure(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f, fc := b.faultFixture(t)
		ctx := testCtx(t)
		steps := map[string]func(string) bool{"insert": isInsert}
		if b.dialect != sqlstore.Postgres {
			steps["read"] = isRead
		}
		if b.dialect == sqlstore.MySQL {
			steps["takeover"] = isTakeover
		}
		for step, match := range steps {
			for i, fault := range retryFaults(b) {
				key := fmt.Sprintf("%s-%d", step, i)
				if step == "takeover" {
					if rec, err := f.store.Claim(ctx, key, "dead", "fp-dead", time.Hour); err != nil || rec != nil {
						t.Fatalf("Claim: %v %v", rec, err)
					}
					f.expire(t, b.dialect, key)
				}
				var (
					rec *idem.Record
					err error
				)
				fc.run(failing(1, match, fault), func() {
					rec, err = f.store.Claim(ctx, key, "owner", "fp", time.Minute)
				})
				if err != nil || rec != nil {
					t.Fatalf("%s failed with %v: Claim returned %+v, %v; want the key claimed", step, fault, rec, err)
				}
				got, err := f.store.Claim(ctx, key, "other", "fp", time.Minute)
				if err != nil || got == nil || got.Token != "owner" {
					t.Fatalf("%s failed with %v: the key then holds %+v, %v; want the retried claim's", step, fault, got, err)
				}
			}
		}
	})
}

// A Claim that keeps failing with serialization failures gives up after
// 5 statements, with an error that wraps the failure (never a claim,
// never ErrLockLost).
func TestClaimGivesUpAfterFiveSerializationFailures(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f, fc := b.faultFixture(t)
		ctx := testCtx(t)
		fault := retryFaults(b)[0]
		var (
			rec *idem.Record
			err error
		)
		n := fc.run(failing(-1, func(string) bool { return true }, fault), func() {
			rec, err = f.store.Claim(ctx, "k", "owner", "fp", time.Minute)
		})
		if !errors.Is(err, fault) || rec != nil || errors.Is(err, idem.ErrLockLost) || !strings.HasPrefix(err.Error(), "sqlstore: claim: ") {
			t.Fatalf("Claim under endless %v: %+v, %v; want a sqlstore: claim: error wrapping it", fault, rec, err)
		}
		if n != 5 {
			t.Fatalf("Claim ran %d statements, want 5", n)
		}
		if got := f.rows(t); got != 0 {
			t.Fatalf("%d rows after a failed Claim", got)
		}
	})
}

// Any other error of a Claim's statement (a unique violation, a lock wait
// timeout, a broken connection, an error whose SQLSTATE the Store cannot
// read) is returned at once, wrapped; so is a serialization failure once
// the caller's context is done.
func TestClaimReturnsOtherErrorsAtOnce(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f, fc := b.faultFixture(t)
		type fault struct {
			err    error
			cancel bool
		}
		var faults []fault
		for _, err := range otherFaults(b) {
			faults = append(faults, fault{err: err})
		}
		for _, err := range retryFaults(b) {
			faults = append(faults, fault{err: err, cancel: true})
		}
		for _, fl := range faults {
			ctx, cancel := context.WithCancel(testCtx(t))
			var (
				rec *idem.Record
				err error
			)
			n := fc.run(func(string) error {
				if fl.cancel {
					cancel()
				}
				return fl.err
			}, func() {
				rec, err = f.store.Claim(ctx, "k", "owner", "fp", time.Minute)
			})
			cancel()
			if rec != nil || !errors.Is(err, fl.err) || !strings.HasPrefix(err.Error(), "sqlstore: claim: ") {
				t.Fatalf("Claim meeting %v (context cancelled: %v): %+v, %v; want that error, wrapped", fl.err, fl.cancel, rec, err)
			}
			if n != 1 {
				t.Fatalf("Claim meeting %v (context cancelled: %v) ran %d statements, want 1", fl.err, fl.cancel, n)
			}
		}
	})
}

// fencedOps are the Store's fenced writes of the record of key owned by
// token, each with the statement it runs.
func fencedOps(s *sqlstore.Store) []struct {
	name  string
	match func(string) bool
	run   func(ctx context.Context, key, token string) error
} {
	return []struct {
		name  string
		match func(string) bool
		run   func(ctx context.Context, key, token string) error
	}{
		{"Complete", isComplete, func(ctx context.Context, key, token string) error {
			return s.Complete(ctx, key, token, []byte("result"), time.Hour)
		}},
		{"Renew", isRenew, func(ctx context.Context, key, token string) error {
			return s.Renew(ctx, key, token, time.Hour)
		}},
		{"Release", isRelease, func(ctx context.Context, key, token string) error {
			return s.Release(ctx, key, token)
		}},
	}
}

// Complete, Renew and Release run again after a serialization failure or
// a deadlock, up to 5 statements in all; any other error, or one met once
// the caller's context is done, is returned at once.
func TestFencedWritesRetrySerializationFailure(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f, fc := b.faultFixture(t)
		ctx := testCtx(t)
		for _, op := range fencedOps(f.store) {
			claim := func(key string) {
				t.Helper()
				if rec, err := f.store.Claim(ctx, key, "owner", "fp", time.Minute); err != nil || rec != nil {
					t.Fatalf("Claim(%s): %v %v", key, rec, err)
				}
			}
			for i, fault := range retryFaults(b) {
				key := fmt.Sprintf("%s-retried-%d", op.name, i)
				claim(key)
				var err error
				n := fc.run(failing(4, op.match, fault), func() { err = op.run(ctx, key, "owner") })
				if err != nil || n != 5 {
					t.Fatalf("%s after 4 failures with %v: %v after %d statements; want success at the 5th", op.name, fault, err, n)
				}
				// It took effect: the owner's second try finds the record
				// changed (completed, released) or still its own.
				if op.name == "Renew" {
					rec, err := f.store.Claim(ctx, key, "other", "fp", time.Minute)
					if err != nil || rec == nil || rec.LeaseLeft <= 30*time.Minute {
						t.Fatalf("after the retried Renew to an hour: %+v, %v", rec, err)
					}
				} else if err := op.run(ctx, key, "owner"); !errors.Is(err, idem.ErrLockLost) {
					t.Fatalf("%s again after the retried one: %v, want ErrLockLost", op.name, err)
				}

				key = fmt.Sprintf("%s-given-up-%d", op.name, i)
				claim(key)
				n = fc.run(failing(-1, op.match, fault), func() { err = op.run(ctx, key, "owner") })
				if !errors.Is(err, fault) || errors.Is(err, idem.ErrLockLost) || n != 5 {
					t.Fatalf("%s under endless %v: %v after %d statements; want that error after 5", op.name, fault, err, n)
				}
				if err := op.run(ctx, key, "owner"); err != nil {
					t.Fatalf("%s after the failures: %v; the record should be untouched", op.name, err)
				}

				key = fmt.Sprintf("%s-cancelled-%d", op.name, i)
				claim(key)
				cctx, cancel := context.WithCancel(ctx)
				n = fc.run(func(q string) error {
					if op.match(q) {
						cancel()
						return fault
					}
					return nil
				}, func() { err = op.run(cctx, key, "owner") })
				cancel()
				if !errors.Is(err, fault) || n != 1 {
					t.Fatalf("%s meeting %v as its context ends: %v after %d statements; want that error after 1", op.name, fault, err, n)
				}
			}
			for i, fault := range otherFaults(b) {
				key := fmt.Sprintf("%s-other-%d", op.name, i)
				claim(key)
				var err error
				n := fc.run(failing(1, op.match, fault), func() { err = op.run(ctx, key, "owner") })
				if !errors.Is(err, fault) || !strings.HasPrefix(err.Error(), "sqlstore: "+strings.ToLower(op.name)+": ") || n != 1 {
					t.Fatalf("%s meeting %v: %v after %d statements; want that error, wrapped, after 1", op.name, fault, err, n)
				}
			}
		}
	})
}

// CompleteTx does not retry a serialization failure: it runs in the
// caller's transaction, which the failure has aborted, so the error goes
// to the caller, who rolls back; the record stays in progress and owned.
func TestCompleteTxReturnsSerializationFailure(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f, fc := b.faultFixture(t)
		ctx := testCtx(t)
		if rec, err := f.store.Claim(ctx, "k", "owner", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		fault := retryFaults(b)[0]
		tx, err := f.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		n := fc.run(failing(1, isComplete, fault), func() {
			err = f.store.CompleteTx(ctx, tx, "k", "owner", []byte("result"), time.Hour)
		})
		if !errors.Is(err, fault) || !strings.HasPrefix(err.Error(), "sqlstore: complete: ") || n != 1 {
			t.Fatalf("CompleteTx meeting %v: %v after %d statements; want that error after 1", fault, err, n)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		rec, err := f.store.Claim(ctx, "k", "other", "fp", time.Minute)
		if err != nil || rec == nil || rec.State != idem.StateInProgress || rec.Token != "owner" {
			t.Fatalf("after the failed CompleteTx: %+v, %v; want the owner's record in progress", rec, err)
		}
	})
}
