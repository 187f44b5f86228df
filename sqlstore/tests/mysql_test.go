package sqlstore_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// The suite again on MySQL with the driver's settings that change what
// the server reports: interpolateParams (statements sent as text, their
// arguments escaped into them) and clientFoundRows (an UPDATE reports
// the rows it matched rather than the rows it changed).
func TestConformanceMySQLDriverSettings(t *testing.T) {
	b := mysqlBackend
	db := b.open(t, withParams(mysqlDSN(t), "interpolateParams=true&clientFoundRows=true"))
	tbl := table(t, db)
	if err := newStore(t, db, b.dialect, tbl).Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	b.conformance(t, func(t *testing.T) idem.Store {
		return newStore(t, db, b.dialect, tbl)
	})
}

// mysqlFoundRows is the MySQL backend with the driver's clientFoundRows.
func mysqlFoundRows() backend {
	b := mysqlBackend
	b.name = "MySQL/clientFoundRows"
	b.dsn = func(t testing.TB) string { return withParams(mysqlDSN(t), "clientFoundRows=true") }
	return b
}

// Keys up to InnoDB's 3072-byte index limit are stored whole; a longer
// key is refused with a clear error and writes nothing, rather than being
// cut to a prefix that another key may share.
func TestMySQLKeyLengthLimit(t *testing.T) {
	f := mysqlBackend.fixture(t)
	ctx := testCtx(t)
	longest := strings.Repeat("k", 3071) + "a"
	sibling := strings.Repeat("k", 3071) + "b"
	for _, k := range []string{longest, sibling} {
		if rec, err := f.store.Claim(ctx, k, "tok-"+k[3071:], "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim of a %d-byte key: %v %v", len(k), rec, err)
		}
	}
	if rec, err := f.store.Claim(ctx, longest, "other", "fp", time.Minute); err != nil || rec == nil || rec.Token != "tok-a" {
		t.Fatalf("the 3072-byte key came back as %+v, %v", rec, err)
	}
	tooLong := longest + "x"
	rec, err := f.store.Claim(ctx, tooLong, "tok", "fp", time.Minute)
	if err == nil || rec != nil {
		t.Fatalf("Claim of a %d-byte key: %+v %v, want an error", len(tooLong), rec, err)
	}
	if !strings.HasPrefix(err.Error(), "sqlstore: claim: ") || !strings.Contains(err.Error(), "3072") || errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("error for a long key: %v", err)
	}
	if got := f.rows(t); got != 2 {
		t.Fatalf("%d rows, want the 2 claimed keys only", got)
	}
	// Tokens and fingerprints up to the 65535 bytes of a BLOB are kept
	// whole; a longer one is refused.
	tok, fp := strings.Repeat("t", 65535), strings.Repeat("f", 65535)
	if rec, err := f.store.Claim(ctx, "full", tok, fp, time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim with a 65535-byte token and fingerprint: %v %v", rec, err)
	}
	if rec, err := f.store.Claim(ctx, "full", "other", "fp", time.Minute); err != nil || rec == nil || rec.Token != tok || rec.Fingerprint != fp {
		t.Fatalf("the 65535-byte token and fingerprint did not come back whole: %v", err)
	}
	for _, c := range []struct{ tok, fp string }{{tok + "t", "fp"}, {"tok", fp + "f"}} {
		if _, err := f.store.Claim(ctx, "long", c.tok, c.fp, time.Minute); err == nil || !strings.Contains(err.Error(), "65535") {
			t.Fatalf("Claim with a %d-byte token and a %d-byte fingerprint: %v, want an error", len(c.tok), len(c.fp), err)
		}
	}
	if got := f.rows(t); got != 3 {
		t.Fatalf("%d rows, want the 3 claimed keys only", got)
	}
}

// A replay and a conflict are consistent reads: they answer while another
// transaction holds the record's row lock, instead of waiting for it
// (InnoDB waits 50 s by default; the calls here have 5 s).
func TestMySQLReplayDoesNotWaitForWriter(t *testing.T) {
	f := mysqlBackend.fixture(t)
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
	// A transaction that locks both rows for the rest of the test, as a
	// CompleteTx inside a caller's transaction does.
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "SELECT 1 FROM "+f.table+" FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"done", "busy"} {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rec, err := f.store.Claim(c, key, "other", "fp", time.Minute)
		cancel()
		if err != nil || rec == nil {
			t.Fatalf("Claim(%s) while another transaction holds its row: %v %v", key, rec, err)
		}
	}
}

// Leases are judged in UTC by the server's clock: clients whose sessions
// use different time zones (a DSN may set time_zone) agree on them.
func TestMySQLSessionTimeZonesAgree(t *testing.T) {
	b := mysqlBackend
	east := b.open(t, withParams(mysqlDSN(t), "time_zone=%27%2B13%3A00%27"))
	west := b.open(t, withParams(mysqlDSN(t), "time_zone=%27-12%3A00%27"))
	var tzEast, tzWest string
	if err := east.QueryRowContext(testCtx(t), "SELECT @@session.time_zone").Scan(&tzEast); err != nil {
		t.Fatal(err)
	}
	if err := west.QueryRowContext(testCtx(t), "SELECT @@session.time_zone").Scan(&tzWest); err != nil {
		t.Fatal(err)
	}
	if tzEast != "+13:00" || tzWest != "-12:00" {
		t.Fatalf("session time zones %q and %q, want +13:00 and -12:00", tzEast, tzWest)
	}
	tbl := table(t, east)
	se := newStore(t, east, b.dialect, tbl, sqlstore.WithSweepInterval(0))
	sw := newStore(t, west, b.dialect, tbl, sqlstore.WithSweepInterval(0))
	ctx := testCtx(t)
	if err := se.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name         string
		owner, other *sqlstore.Store
	}{{"east then west", se, sw}, {"west then east", sw, se}} {
		key := "tz-" + c.name
		if rec, err := c.owner.Claim(ctx, key, "owner", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("%s: Claim: %v %v", c.name, rec, err)
		}
		rec, err := c.other.Claim(ctx, key, "other", "fp", time.Minute)
		if err != nil || rec == nil {
			t.Fatalf("%s: the other zone took a key leased for a minute: %v %v", c.name, rec, err)
		}
		if rec.LeaseLeft <= 0 || rec.LeaseLeft > time.Minute {
			t.Fatalf("%s: the other zone sees %v left of a 1m lease", c.name, rec.LeaseLeft)
		}
		if err := c.other.Renew(ctx, key, "owner", time.Minute); err != nil {
			t.Fatalf("%s: the owner's Renew through the other zone: %v", c.name, err)
		}
	}
}

// The Store retries a deadlock victim by reading the SQLState field of
// the driver's error (it imports no driver): that field must still be
// there, 5 bytes long.
func TestMySQLDriverErrorShape(t *testing.T) {
	f, ok := reflect.TypeOf(mysql.MySQLError{}).FieldByName("SQLState")
	if !ok || f.Type != reflect.TypeOf([5]byte{}) {
		t.Fatalf("mysql.MySQLError.SQLState is %v, want [5]byte", f.Type)
	}
}
