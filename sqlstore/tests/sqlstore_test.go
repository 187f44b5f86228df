package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// Every dialect passes the shared conformance suite, on a
// real database, all sub-tests sharing one table as processes would.
func TestConformance(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		b.conformance(t, func(t *testing.T) idem.Store {
			return newStore(t, f.db, b.dialect, f.table)
		})
	})
}

// The suite again on PostgreSQL with SERIALIZABLE as the server's default
// isolation level: serialization failures are retried, never reported as
// a claim.
func TestConformancePostgresSerializable(t *testing.T) {
	b := backends[1]
	dsn := postgresDSN(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db := b.open(t, dsn+sep+"options=-c%20default_transaction_isolation%3Dserializable")
	var level string
	if err := db.QueryRowContext(testCtx(t), `SHOW default_transaction_isolation`).Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "serializable" {
		t.Fatalf("default_transaction_isolation = %q, want serializable", level)
	}
	tbl := table(t, db)
	if err := newStore(t, db, b.dialect, tbl).Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	b.conformance(t, func(t *testing.T) idem.Store {
		return newStore(t, db, b.dialect, tbl)
	})
}

// Two *sql.DB on one SQLite file, as two processes would have: concurrent
// claims of the same keys through both never make two owners.
func TestSQLiteTwoHandlesOneFile(t *testing.T) {
	b := backends[0]
	dsn := b.dsn(t)
	db1, db2 := b.open(t, dsn), b.open(t, dsn)
	tbl := table(t, db1)
	s1, s2 := newStore(t, db1, b.dialect, tbl), newStore(t, db2, b.dialect, tbl)
	if err := s1.Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	stores := []*sqlstore.Store{s1, s2}
	const keys, perKey = 8, 24
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners = map[string]int{}
		errs    = make(chan error, keys*perKey)
		start   = make(chan struct{})
	)
	for k := 0; k < keys; k++ {
		for i := 0; i < perKey; i++ {
			wg.Add(1)
			go func(key string, i int) {
				defer wg.Done()
				<-start
				rec, err := stores[i%2].Claim(context.Background(), key, fmt.Sprintf("tok-%d", i), "fp", time.Minute)
				switch {
				case err != nil:
					errs <- err
				case rec == nil:
					mu.Lock()
					winners[key]++
					mu.Unlock()
				case rec.State != idem.StateInProgress:
					errs <- fmt.Errorf("loser saw %+v", rec)
				}
			}(fmt.Sprintf("k%d", k), i)
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Claim: %v", err)
	}
	for k := 0; k < keys; k++ {
		if n := winners[fmt.Sprintf("k%d", k)]; n != 1 {
			t.Errorf("key k%d: %d winners, want 1", k, n)
		}
	}
}

// A replay costs 1 statement, a conflict 1, Renew and Release 1
// each, and a new key 2 (claim, complete) on PostgreSQL. SQLite and MySQL
// read before they write, so that a replay is a plain read rather than a
// write: a new key costs them 3 statements.
func TestStatementCount(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		claimFree := int64(1)
		if b.dialect != sqlstore.Postgres {
			claimFree = 2
		}
		dsn := b.dsn(t)
		db, counter := b.openFaulty(t, dsn) // no hook: it only counts
		tbl := table(t, db)
		s := newStore(t, db, b.dialect, tbl, sqlstore.WithSweepInterval(0))
		ctx := testCtx(t)
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		// Warm the pool so that connecting is not counted.
		if err := db.PingContext(ctx); err != nil {
			t.Fatal(err)
		}
		count := func(name string, want int64, fn func() error) {
			t.Helper()
			before := counter.stmts.Load()
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := counter.stmts.Load() - before; got != want {
				t.Errorf("%s ran %d statements, want %d", name, got, want)
			}
		}
		claim := func(key, token string, wantNil bool) func() error {
			return func() error {
				rec, err := s.Claim(ctx, key, token, "fp", time.Minute)
				if err == nil && (rec == nil) != wantNil {
					err = fmt.Errorf("Claim returned record %+v, want nil=%v", rec, wantNil)
				}
				return err
			}
		}
		count("new key (Claim + Complete)", claimFree+1, func() error {
			if err := claim("new", "owner", true)(); err != nil {
				return err
			}
			return s.Complete(ctx, "new", "owner", []byte("result"), time.Hour)
		})
		count("replay", 1, claim("new", "other", false))
		count("claim of a second key", claimFree, claim("busy", "owner", true))
		count("conflict", 1, claim("busy", "other", false))
		count("Renew", 1, func() error { return s.Renew(ctx, "busy", "owner", time.Minute) })
		count("Release", 1, func() error { return s.Release(ctx, "busy", "owner") })
		count("lost Complete", 1, func() error {
			if err := s.Complete(ctx, "busy", "owner", nil, time.Hour); !errors.Is(err, idem.ErrLockLost) {
				return fmt.Errorf("Complete after Release: %v, want ErrLockLost", err)
			}
			return nil
		})
	})
}

// An expired in-progress record is taken over by exactly one
// of many concurrent claimers; the others see the new owner's record.
func TestTakeoverOneWinner(t *testing.T) {
	for _, b := range append(backends[:len(backends):len(backends)], mysqlFoundRows()) {
		t.Run(b.name, func(t *testing.T) { takeoverOneWinner(t, b) })
	}
}

func takeoverOneWinner(t *testing.T, b backend) {
	{
		f := b.fixture(t)
		const rounds, n = 5, 40
		for r := 0; r < rounds; r++ {
			key := fmt.Sprintf("takeover-%d", r)
			if rec, err := f.store.Claim(testCtx(t), key, "dead", "fp-dead", 50*time.Millisecond); err != nil || rec != nil {
				t.Fatalf("first Claim: %v %v", rec, err)
			}
			time.Sleep(100 * time.Millisecond)
			var (
				wg      sync.WaitGroup
				start   = make(chan struct{})
				results = make([]*idem.Record, n)
				errs    = make([]error, n)
			)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					<-start
					results[i], errs[i] = f.store.Claim(context.Background(), key, fmt.Sprintf("tok-%d", i), fmt.Sprintf("fp-%d", i), time.Minute)
				}(i)
			}
			close(start)
			wg.Wait()
			winner := -1
			for i := 0; i < n; i++ {
				if errs[i] != nil {
					t.Fatalf("round %d: Claim %d: %v", r, i, errs[i])
				}
				if results[i] == nil {
					if winner >= 0 {
						t.Fatalf("round %d: claims %d and %d both took over the expired key", r, winner, i)
					}
					winner = i
				}
			}
			if winner < 0 {
				t.Fatalf("round %d: no claim took over the expired key", r)
			}
			for i, rec := range results {
				if rec != nil && (rec.State != idem.StateInProgress || rec.Fingerprint != fmt.Sprintf("fp-%d", winner)) {
					t.Fatalf("round %d: loser %d saw %+v, want the winner's (fp-%d) in-progress record", r, i, rec, winner)
				}
			}
			// The dead owner is fenced out; the winner owns the key.
			if err := f.store.Complete(testCtx(t), key, "dead", []byte("x"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
				t.Fatalf("round %d: dead owner's Complete: %v, want ErrLockLost", r, err)
			}
			if err := f.store.Complete(testCtx(t), key, fmt.Sprintf("tok-%d", winner), []byte("x"), time.Hour); err != nil {
				t.Fatalf("round %d: winner's Complete: %v", r, err)
			}
		}
	}
}

// On PostgreSQL under READ COMMITTED, a Claim whose statement
// snapshot predates a record committed by a concurrent transaction (a new
// record, or the takeover of an expired one) returns that record, which it
// reads with a plain read. It never claims the key and never fails.
func TestPostgresClaimSeesConcurrentCommit(t *testing.T) {
	b := backends[1]
	for _, tc := range []struct {
		name string
		// before prepares the row, if any; during changes it inside the
		// open transaction.
		before, during string
	}{
		{
			name:   "insert",
			during: `INSERT INTO {t} VALUES ($1, 1, 1, 'winner'::bytea, 'fp-winner'::bytea, now() + interval '1 minute', now(), NULL)`,
		},
		{
			name:   "takeover",
			before: `INSERT INTO {t} VALUES ($1, 1, 1, 'dead'::bytea, 'fp-dead'::bytea, now() - interval '1 second', now(), NULL)`,
			during: `UPDATE {t} SET token = 'winner'::bytea, fingerprint = 'fp-winner'::bytea, expires_at = now() + interval '1 minute' WHERE key = $1`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fc := b.faultFixture(t)
			key := []byte("contended")
			sqlt := func(q string) string { return strings.ReplaceAll(q, "{t}", f.table) }
			if tc.before != "" {
				if _, err := f.db.ExecContext(testCtx(t), sqlt(tc.before), key); err != nil {
					t.Fatal(err)
				}
			}
			tx, err := f.db.BeginTx(testCtx(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(testCtx(t), sqlt(tc.during), key); err != nil {
				t.Fatal(err)
			}
			type result struct {
				rec *idem.Record
				err error
			}
			var (
				mu    sync.Mutex
				stmts []string
			)
			fc.inject(func(q string) error {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case isInsert(q):
					stmts = append(stmts, "claim")
				case isRead(q):
					stmts = append(stmts, "read")
				}
				return nil
			})
			defer fc.inject(nil)
			done := make(chan result, 1)
			go func() {
				rec, err := f.store.Claim(context.Background(), string(key), "late", "fp-late", time.Minute)
				done <- result{rec, err}
			}()
			// Wait until the Claim is blocked on the transaction's row, so
			// that its snapshot is older than the commit.
			waitForLockWait(t, f.db)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			res := <-done
			if res.err != nil {
				t.Fatalf("Claim: %v", res.err)
			}
			if res.rec == nil {
				t.Fatal("Claim took a key that a concurrent transaction holds")
			}
			if res.rec.State != idem.StateInProgress || res.rec.Fingerprint != "fp-winner" || res.rec.Token != "winner" {
				t.Fatalf("Claim returned %+v, want the winner's record", res.rec)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := []string{"claim", "read"}; !slices.Equal(stmts, want) {
				t.Fatalf("Claim ran %v, want %v", stmts, want)
			}
		})
	}
}

// waitForLockWait waits until some session of db's server waits for a
// lock.
func waitForLockWait(t *testing.T, db *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := db.QueryRowContext(testCtx(t), `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the Claim never waited for the concurrent transaction")
}

// Migrate may run again, and at once from several places.
func TestMigrateIdempotent(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		db := b.open(t, b.dsn(t))
		const rounds, n = 4, 12
		var s *sqlstore.Store
		for r := 0; r < rounds; r++ {
			// A fresh table each round; from the second round on the pool
			// holds a connection per goroutine, so they really race.
			s = newStore(t, db, b.dialect, table(t, db))
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make(chan error, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs <- s.Migrate(context.Background())
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("round %d: concurrent Migrate: %v", r, err)
				}
			}
		}
		ctx := testCtx(t)
		if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate over an existing table: %v", err)
		}
		if rec, err := s.Claim(ctx, "k", "tok2", "fp", time.Minute); err != nil || rec == nil {
			t.Fatalf("record lost by a second Migrate: %v %v", rec, err)
		}
	})
}

// The published schema, run by hand as one script, makes a table the
// store works with.
func TestSchemaByHand(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		db := b.open(t, b.dsn(t))
		tbl := table(t, db)
		ddl, err := b.dialect.Schema(tbl)
		if err != nil {
			t.Fatal(err)
		}
		quoted := `"` + tbl + `"`
		if b.dialect == sqlstore.MySQL {
			quoted = "`" + tbl + "`"
		}
		if !strings.Contains(ddl, quoted) || !strings.Contains(ddl, "expires_at") {
			t.Fatalf("Schema(%q) = %s", tbl, ddl)
		}
		if _, err := db.ExecContext(testCtx(t), ddl); err != nil {
			t.Fatalf("running the schema: %v", err)
		}
		b.conformance(t, func(t *testing.T) idem.Store {
			return newStore(t, db, b.dialect, tbl)
		})
	})
}

func TestNewRefusesBadArguments(t *testing.T) {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, name := range []string{"", "1abc", "a-b", "a b", "a;drop table x", `a"b`, "a.b.c", ".a", "a.", strings.Repeat("a", 64), "idem_keys\x00"} {
		if s, err := sqlstore.New(db, sqlstore.SQLite, sqlstore.WithTable(name)); err == nil {
			s.Close()
			t.Errorf("WithTable(%q) accepted", name)
		}
		if _, err := sqlstore.Postgres.Schema(name); err == nil {
			t.Errorf("Schema(%q) accepted", name)
		}
	}
	for _, name := range []string{"idem_keys", "_x", "Keys2", "public.idem_keys", "order", "AZaz_09", "Zz9.Aa0", strings.Repeat("a", 63)} {
		s, err := sqlstore.New(db, sqlstore.SQLite, sqlstore.WithTable(name))
		if err != nil {
			t.Errorf("WithTable(%q): %v", name, err)
			continue
		}
		s.Close()
	}
	if _, err := sqlstore.New(db, sqlstore.Dialect(0)); err == nil {
		t.Error("New accepted the zero Dialect")
	}
	if _, err := sqlstore.New(nil, sqlstore.SQLite); err == nil {
		t.Error("New accepted a nil *sql.DB")
	}
}

// A record of a format version this release does not know, or
// with an unknown state, is an error, never replayed, never claimed and
// never shown by Lookup.
func TestUnknownRecordIsAnError(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		ctx := testCtx(t)
		for _, tc := range []struct{ key, set string }{
			{"future-version", "version = 99"},
			{"bad-state", "state = 7"},
		} {
			if rec, err := f.store.Claim(ctx, tc.key, "owner", "fp", time.Minute); err != nil || rec != nil {
				t.Fatalf("Claim: %v %v", rec, err)
			}
			if err := f.store.Complete(ctx, tc.key, "owner", []byte("result"), time.Hour); err != nil {
				t.Fatal(err)
			}
			q := fmt.Sprintf("UPDATE %s SET %s WHERE %s = %s", f.table, tc.set, keyColumn(b.dialect), ph(b.dialect, 1))
			if _, err := f.db.ExecContext(ctx, q, []byte(tc.key)); err != nil {
				t.Fatal(err)
			}
			rec, err := f.store.Claim(ctx, tc.key, "other", "fp", time.Minute)
			if err == nil {
				t.Fatalf("%s: Claim returned record %+v and no error", tc.key, rec)
			}
			if !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "sqlstore: claim: ") {
				t.Fatalf("%s: Claim error = %v, want a sqlstore: claim: error wrapping idem.ErrCorruptRecord", tc.key, err)
			}
			if errors.Is(err, idem.ErrLockLost) {
				t.Fatalf("%s: Claim error is ErrLockLost", tc.key)
			}
			ks, err := f.store.Lookup(ctx, tc.key)
			if ks != nil || !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "sqlstore: lookup: ") {
				t.Fatalf("%s: Lookup = %+v, %v; want a sqlstore: lookup: error wrapping idem.ErrCorruptRecord", tc.key, ks, err)
			}
		}
	})
}

// Keys, tokens and fingerprints are bytes: NUL, invalid UTF-8 (a scope
// taken from a header may hold any byte) and long keys come back exact, and
// keys that differ in one byte are different keys.
func TestBinaryKeys(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		ctx := testCtx(t)
		keys := []string{"acct\x00|k", "acct\xff|k", "acct\xfe|k", "\xc3\x28", "acct|" + strings.Repeat("\xe2\x82\xac", 300), "ACCT|k", "acct|k "}
		for i, k := range keys {
			tok, fp := fmt.Sprintf("tok\x00%d\xff", i), fmt.Sprintf("\xff\x00fp-%d", i)
			if rec, err := f.store.Claim(ctx, k, tok, fp, time.Minute); err != nil || rec != nil {
				t.Fatalf("Claim(%q): %v %v", k, rec, err)
			}
			rec, err := f.store.Claim(ctx, k, "other", "fp", time.Minute)
			if err != nil || rec == nil || rec.Token != tok || rec.Fingerprint != fp {
				t.Fatalf("Claim(%q) again: %+v %v", k, rec, err)
			}
			if err := f.store.Complete(ctx, k, tok, []byte(k), time.Hour); err != nil {
				t.Fatalf("Complete(%q): %v", k, err)
			}
		}
		for i, k := range keys {
			rec, err := f.store.Claim(ctx, k, "other", "fp", time.Minute)
			if err != nil || rec == nil || rec.State != idem.StateCompleted || !bytes.Equal(rec.Result, []byte(k)) || rec.Fingerprint != fmt.Sprintf("\xff\x00fp-%d", i) {
				t.Fatalf("key %q came back as %+v, %v", k, rec, err)
			}
		}
	})
}

// A Claim by the live owner's own token is not a claim: it returns the
// record.
func TestClaimWithOwnersToken(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		ctx := testCtx(t)
		if rec, err := f.store.Claim(ctx, "k", "tok", "fp-1", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		rec, err := f.store.Claim(ctx, "k", "tok", "fp-2", time.Minute)
		if err != nil || rec == nil || rec.State != idem.StateInProgress || rec.Fingerprint != "fp-1" {
			t.Fatalf("second Claim with the same token: %+v %v, want the first record", rec, err)
		}
		// The same for a completed record and an empty token.
		if rec, err := f.store.Claim(ctx, "e", "", "fp-1", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim with empty token: %v %v", rec, err)
		}
		if err := f.store.Complete(ctx, "e", "", []byte("r"), time.Hour); err != nil {
			t.Fatal(err)
		}
		rec, err = f.store.Claim(ctx, "e", "", "fp-2", time.Minute)
		if err != nil || rec == nil || rec.State != idem.StateCompleted || string(rec.Result) != "r" {
			t.Fatalf("Claim of a completed key with empty token: %+v %v", rec, err)
		}
	})
}

// DeleteExpired removes expired records only, no more than limit at a time.
func TestDeleteExpired(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t, sqlstore.WithSweepInterval(0))
		ctx := testCtx(t)
		claim := func(key string, lease time.Duration) {
			t.Helper()
			if rec, err := f.store.Claim(ctx, key, "owner", "fp", lease); err != nil || rec != nil {
				t.Fatalf("Claim(%s): %v %v", key, rec, err)
			}
		}
		complete := func(key string, ttl time.Duration) {
			t.Helper()
			if err := f.store.Complete(ctx, key, "owner", []byte("r"), ttl); err != nil {
				t.Fatalf("Complete(%s): %v", key, err)
			}
		}
		for i := 0; i < 3; i++ {
			claim(fmt.Sprintf("lease-short-%d", i), 50*time.Millisecond)
		}
		claim("lease-long", time.Minute)
		for i := 0; i < 2; i++ {
			k := fmt.Sprintf("done-short-%d", i)
			claim(k, time.Minute)
			complete(k, 50*time.Millisecond)
		}
		claim("done-long", time.Minute) // a lease that cannot run out before Complete, however busy the machine
		complete("done-long", time.Hour)
		time.Sleep(150 * time.Millisecond)

		if n, err := f.store.DeleteExpired(ctx, 2); err != nil || n != 2 {
			t.Fatalf("DeleteExpired(2) = %d, %v; want 2", n, err)
		}
		if got := f.rows(t); got != 5 {
			t.Fatalf("%d rows after deleting 2 of 7, want 5", got)
		}
		if n, err := f.store.DeleteExpired(ctx, 0); err != nil || n != 3 {
			t.Fatalf("DeleteExpired(0) = %d, %v; want the 3 other expired rows", n, err)
		}
		if n, err := f.store.DeleteExpired(ctx, 0); err != nil || n != 0 {
			t.Fatalf("DeleteExpired with nothing expired = %d, %v", n, err)
		}
		for _, k := range []string{"lease-long", "done-long"} {
			if rec, err := f.store.Claim(ctx, k, "other", "fp", time.Minute); err != nil || rec == nil {
				t.Fatalf("live record %s deleted: %v %v", k, rec, err)
			}
		}
		if got := f.rows(t); got != 2 {
			t.Fatalf("%d rows left, want the 2 live ones", got)
		}
	})
}

// The background sweeper deletes expired rows on its own, reports its
// errors, and stops on Close.
func TestSweeper(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t, sqlstore.WithSweepInterval(0))
		ctx := testCtx(t)
		sweepErrs := make(chan error, 100)
		s := newStore(t, f.db, b.dialect, f.table,
			sqlstore.WithSweepInterval(10*time.Millisecond),
			sqlstore.WithSweepErrorHandler(func(err error) {
				select {
				case sweepErrs <- err:
				default:
				}
			}))
		if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Millisecond); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for f.rows(t) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the sweeper did not delete the expired row within 10s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		// Stopped: an expired row now stays.
		if rec, err := f.store.Claim(ctx, "k2", "tok", "fp", time.Millisecond); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		time.Sleep(100 * time.Millisecond)
		if got := f.rows(t); got != 1 {
			t.Fatalf("%d rows 100ms after Close, want 1: the sweeper still runs", got)
		}
		select {
		case err := <-sweepErrs:
			t.Fatalf("sweep error: %v", err)
		default:
		}

		// Errors go to the handler: a store over a missing table.
		missing := newStore(t, f.db, b.dialect, "idem_no_such_table",
			sqlstore.WithSweepInterval(5*time.Millisecond),
			sqlstore.WithSweepErrorHandler(func(err error) {
				select {
				case sweepErrs <- err:
				default:
				}
			}))
		select {
		case err := <-sweepErrs:
			if !strings.HasPrefix(err.Error(), "sqlstore: delete expired: ") {
				t.Fatalf("sweep error %q lacks its prefix", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no sweep error reported for a missing table")
		}
		missing.Close()
	})
}

// Durations shorter than the dialect's unit round up, so a positive lease
// is never zero.
func TestTinyLease(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		ctx := testCtx(t)
		if rec, err := f.store.Claim(ctx, "k", "tok", "fp", 200*time.Microsecond); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		// Either still held or already expired; never an error.
		if _, err := f.store.Claim(ctx, "k", "tok2", "fp", time.Minute); err != nil {
			t.Fatal(err)
		}
	})
}

// On SQLite a replay and a conflict are reads: they answer while another
// connection holds the write lock, instead of waiting for it.
func TestSQLiteReplayIsARead(t *testing.T) {
	b := backends[0]
	f := b.fixture(t)
	ctx := testCtx(t)
	if rec, err := f.store.Claim(ctx, "done", "owner", "fp", time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim: %v %v", rec, err)
	}
	if err := f.store.Complete(ctx, "done", "owner", []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if rec, err := f.store.Claim(ctx, "busy", "owner", "fp", time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim: %v %v", rec, err)
	}
	// A writer that holds the lock for the rest of the test.
	tx, err := f.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see SQLiteDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE `+f.table+`_side (x)`); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"done", "busy"} {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		rec, err := f.store.Claim(c, key, "other", "fp", time.Minute)
		cancel()
		if err != nil || rec == nil {
			t.Fatalf("Claim(%s) while another connection writes: %v %v (after %v)", key, rec, err, time.Since(start))
		}
	}
}

// A schema-qualified table works in every statement: a PostgreSQL schema,
// a SQLite database name.
func TestSchemaQualifiedTable(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		db := b.open(t, b.dsn(t))
		ctx := testCtx(t)
		schema := "main"
		switch b.dialect {
		case sqlstore.Postgres:
			schema = table(t, db) + "_schema"
			if _, err := db.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`) })
		case sqlstore.MySQL: // a schema is a database
			schema = table(t, db) + "_db"
			if _, err := db.ExecContext(ctx, `CREATE DATABASE `+schema); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Exec(`DROP DATABASE ` + schema) })
		}
		tbl := table(t, db)
		s := newStore(t, db, b.dialect, schema+"."+tbl, sqlstore.WithSweepInterval(0))
		for i := 0; i < 2; i++ {
			if err := s.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+schema+`.`+tbl).Scan(&n); err != nil {
			t.Fatalf("the table is not in %s: %v", schema, err)
		}
		if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Millisecond); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		time.Sleep(20 * time.Millisecond)
		if rec, err := s.Claim(ctx, "k", "tok2", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("takeover: %v %v", rec, err)
		}
		if err := s.Renew(ctx, "k", "tok2", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "k", "tok2", []byte("r"), time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		if n, err := s.DeleteExpired(ctx, 10); err != nil || n != 1 {
			t.Fatalf("DeleteExpired = %d, %v", n, err)
		}
	})
}
