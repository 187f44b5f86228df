package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// serializableDB opens the PostgreSQL server with SERIALIZABLE as the
// default isolation level of its sessions.
func serializableDB(t *testing.T) *sql.DB {
	t.Helper()
	b := backends[1]
	db := b.open(t, withParams(postgresDSN(t), "options=-c%20default_transaction_isolation%3Dserializable"))
	var level string
	if err := db.QueryRowContext(testCtx(t), `SHOW default_transaction_isolation`).Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "serializable" {
		t.Fatalf("default_transaction_isolation = %q, want serializable", level)
	}
	return db
}

// isolation returns the isolation level of the transaction of w.
func isolation(t *testing.T, w idem.Work) string {
	t.Helper()
	tx, ok := sqlstore.TxFromContext(w.Context(context.Background()))
	if !ok {
		t.Fatal("no transaction in the work's context")
	}
	var level string
	if err := tx.QueryRowContext(testCtx(t), `SHOW transaction_isolation`).Scan(&level); err != nil {
		t.Fatal(err)
	}
	return level
}

// Transactional(nil) runs each handler's transaction in READ COMMITTED,
// what CompleteTx needs, even where the server's default is stricter;
// options given are used as they are.
func TestTransactionalIsolationLevel(t *testing.T) {
	b := backends[1]
	db := serializableDB(t)
	tbl := table(t, db)
	s := newStore(t, db, b.dialect, tbl, sqlstore.WithSweepInterval(0))
	ctx := testCtx(t)
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts *sql.TxOptions
		want string
	}{
		{nil, "read committed"},
		{&sql.TxOptions{Isolation: sql.LevelRepeatableRead}, "repeatable read"},
		{&sql.TxOptions{}, "serializable"}, // the driver's default: the server's
	} {
		w, err := s.Transactional(tc.opts).BeginWork(ctx, "k", "tok")
		if err != nil {
			t.Fatal(err)
		}
		got := isolation(t, w)
		if err := w.Rollback(); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("Transactional(%+v): the transaction is %s, want %s", tc.opts, got, tc.want)
		}
	}
}

// A unit of work gives its connection back to the pool however it ends:
// committed, rolled back (again after a failed Commit, which is no error),
// or never begun because BeginTx failed. On a pool of one connection,
// every step here needs the one before to have given it back.
func TestWorkGivesItsConnectionBack(t *testing.T) {
	b := backends[1]
	f := b.fixture(t, sqlstore.WithSweepInterval(0))
	l := b.ledger(t, f, `, UNIQUE (ref) DEFERRABLE INITIALLY DEFERRED`)
	f.db.SetMaxOpenConns(1)
	t.Cleanup(func() { f.db.SetMaxOpenConns(0) }) // for the cleanups, even if a connection was kept
	// Bounded, so that a connection kept shows as a failure rather than
	// as a hung test.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ts := f.store.Transactional(nil)
	pay := func(key string) error {
		t.Helper()
		if rec, err := f.store.Claim(ctx, key, "tok", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim(%s): %v %v", key, rec, err)
		}
		w, err := ts.BeginWork(ctx, key, "tok")
		if err != nil {
			t.Fatalf("BeginWork(%s): %v", key, err)
		}
		tx, _ := sqlstore.TxFromContext(w.Context(ctx))
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+l.table+` (idem_key, ref) VALUES ($1, 'same-ref')`, key); err != nil {
			t.Fatal(err)
		}
		err = w.Commit(ctx, []byte("paid"), time.Hour)
		if err != nil {
			if rerr := w.Rollback(); rerr != nil {
				t.Fatalf("Rollback after the failed Commit: %v", rerr)
			}
		}
		return err
	}
	if err := pay("k1"); err != nil {
		t.Fatalf("first payment: %v", err)
	}
	err := pay("k2") // the same ref: COMMIT fails
	if err == nil || !strings.HasPrefix(err.Error(), "sqlstore: commit: ") {
		t.Fatalf("Commit of a duplicate ref: %v, want a sqlstore: commit: error", err)
	}
	if l.count(t, "k2") != 0 {
		t.Fatal("the failed commit kept its row")
	}
	// Rolled back without Commit.
	w, err := ts.BeginWork(ctx, "k3", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Rollback(); err != nil {
		t.Fatal(err)
	}
	// BeginTx refused: PostgreSQL has no linearizable level.
	if _, err := f.store.Transactional(&sql.TxOptions{Isolation: sql.LevelLinearizable}).BeginWork(ctx, "k4", "tok"); err == nil || !strings.HasPrefix(err.Error(), "sqlstore: begin: ") {
		t.Fatalf("BeginWork at an unsupported level: %v, want a sqlstore: begin: error", err)
	}
	ks, err := f.store.Lookup(ctx, "k1")
	if err != nil || ks == nil || ks.State != idem.StateCompleted {
		t.Fatalf("k1 after all that: %+v, %v; want it completed", ks, err)
	}
	// And a context already done gets no connection.
	done, stop := context.WithCancel(ctx)
	stop()
	if _, err := ts.BeginWork(done, "k5", "tok"); !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "sqlstore: begin: ") {
		t.Fatalf("BeginWork with a done context: %v", err)
	}
}
