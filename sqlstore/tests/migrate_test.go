package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// A Migrate that fails gives its connection back and holds no lock: on a
// pool of one connection, the next statement runs and the next Migrate
// succeeds once the cause is gone. Here the table exists already without
// an expires_at column, so creating the index fails.
func TestFailedMigrateRollsBack(t *testing.T) {
	for _, b := range backends[:2] { // MySQL: see TestFailedMySQLMigrateReleasesItsLock
		t.Run(b.name, func(t *testing.T) {
			db := b.open(t, b.dsn(t))
			db.SetMaxOpenConns(1)
			tbl := table(t, db)
			ctx := testCtx(t)
			if _, err := db.ExecContext(ctx, `CREATE TABLE `+tbl+` (key bytea PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			s := newStore(t, db, b.dialect, tbl, sqlstore.WithSweepInterval(0))
			err := s.Migrate(ctx)
			if err == nil || !strings.HasPrefix(err.Error(), "sqlstore: migrate: ") || !strings.Contains(err.Error(), "expires_at") {
				t.Fatalf("Migrate over a table without expires_at: %v, want a sqlstore: migrate: error naming the column", err)
			}
			// Bounded, so that a connection the failed Migrate kept shows
			// as a failure here rather than as a hung test.
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := db.ExecContext(c, `DROP TABLE `+tbl); err != nil {
				t.Fatalf("the next statement after a failed Migrate: %v", err)
			}
			if err := s.Migrate(c); err != nil {
				t.Fatalf("Migrate once the table is gone: %v", err)
			}
			if rec, err := s.Claim(c, "k", "tok", "fp", time.Minute); err != nil || rec != nil {
				t.Fatalf("Claim: %v %v", rec, err)
			}
		})
	}
}

// On MySQL, where Migrate holds a named lock of its session, a Migrate
// that fails after taking the lock releases it: a Migrate from another
// process (another pool) then gets it at once, rather than after its
// 60-second wait. Failed or not, Migrate gives its connection back: on a
// pool of one, Migrate and Claim run after it.
func TestFailedMySQLMigrateReleasesItsLock(t *testing.T) {
	b := mysqlBackend
	dsn := mysqlDSN(t)
	db1, db2 := b.open(t, dsn), b.open(t, dsn)
	db1.SetMaxOpenConns(1)
	ctx := testCtx(t)
	broken := newStore(t, db1, b.dialect, "idem_no_such_database."+table(t, db1), sqlstore.WithSweepInterval(0))
	err := broken.Migrate(ctx)
	if err == nil || !strings.HasPrefix(err.Error(), "sqlstore: migrate: ") {
		t.Fatalf("Migrate into a missing database: %v, want a sqlstore: migrate: error", err)
	}
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := newStore(t, db2, b.dialect, table(t, db2), sqlstore.WithSweepInterval(0)).Migrate(c); err != nil {
		t.Fatalf("Migrate from another pool after a failed one: %v", err)
	}
	s := newStore(t, db1, b.dialect, table(t, db1), sqlstore.WithSweepInterval(0))
	if err := s.Migrate(c); err != nil {
		t.Fatalf("Migrate on the pool of one after a failed one: %v", err)
	}
	if rec, err := s.Claim(c, "k", "tok", "fp", time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim on the pool of one after Migrate: %v %v", rec, err)
	}
}

// A table in an attached SQLite database gets its table and its index
// there.
func TestSQLiteAttachedDatabase(t *testing.T) {
	b := backends[0]
	db := b.open(t, b.dsn(t))
	db.SetMaxOpenConns(1) // ATTACH is per connection
	ctx := testCtx(t)
	aux := filepath.Join(t.TempDir(), "aux.db")
	if _, err := db.ExecContext(ctx, `ATTACH DATABASE ?1 AS aux`, aux); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, db, b.dialect, "aux.keys", sqlstore.WithSweepInterval(0))
	for i := 0; i < 2; i++ {
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate #%d: %v", i+1, err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM aux.sqlite_master WHERE tbl_name = 'keys' AND type = 'index' AND name = 'keys_expires_at_idx'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("aux.keys_expires_at_idx: %d, %v; want the index", n, err)
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM main.sqlite_master WHERE tbl_name = 'keys'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("main holds %d objects of keys (%v), want none", n, err)
	}
	if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim: %v %v", rec, err)
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM aux.keys`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("aux.keys holds %d rows (%v), want 1", n, err)
	}
}

// Migrate takes its lock (PostgreSQL's advisory lock, MySQL's GET_LOCK)
// before it changes anything: while another session holds it, as a
// Migrate in another process would, Migrate waits, and finishes once the
// lock is released.
func TestMigrateWaitsForTheLockOfAnother(t *testing.T) {
	for _, b := range backends[1:] {
		t.Run(b.name, func(t *testing.T) {
			db := b.open(t, b.dsn(t))
			ctx := testCtx(t)
			tbl := table(t, db)
			holder, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			lock, unlock := `SELECT pg_advisory_lock(hashtext($1))`, `SELECT pg_advisory_unlock(hashtext($1))`
			key := `idem sqlstore migrate "` + tbl + `"`
			waiting := `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`
			if b.dialect == sqlstore.MySQL {
				lock, unlock = `SELECT GET_LOCK(?, 10)`, `SELECT RELEASE_LOCK(?)`
				key = "idem sqlstore migrate"
				waiting = `SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'SELECT GET_LOCK(%' AND id <> CONNECTION_ID()`
			}
			var got sql.NullString // void on PostgreSQL, 1 on MySQL
			if err := holder.QueryRowContext(ctx, lock, key).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if b.dialect == sqlstore.MySQL && got.String != "1" {
				t.Fatalf("GET_LOCK returned %v", got)
			}
			s := newStore(t, db, b.dialect, tbl, sqlstore.WithSweepInterval(0))
			done := make(chan error, 1)
			go func() { done <- s.Migrate(ctx) }()
			for waited := false; !waited; {
				select {
				case err := <-done:
					t.Fatalf("Migrate finished (%v) while another session held its lock", err)
				default:
				}
				var n int
				if err := db.QueryRowContext(ctx, waiting).Scan(&n); err != nil {
					t.Fatal(err)
				}
				waited = n > 0
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := holder.ExecContext(ctx, unlock, key); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Migrate once the lock was released: %v", err)
			}
			if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Minute); err != nil || rec != nil {
				t.Fatalf("Claim: %v %v", rec, err)
			}
		})
	}
}
