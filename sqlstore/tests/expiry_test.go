package sqlstore_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// A record is live until the database's clock passes its expires_at, and
// absent from then on, whatever the time on the client: each record here
// is moved into the past by the database itself, so no test waits. An
// expired in-progress record and an expired completed one are both free to
// claim, and their former owner can no longer touch them.
func TestExpiredRowCountsAsAbsent(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		expire := `UPDATE {t} SET expires_at = clock_timestamp() - interval '1 millisecond' WHERE key = $1`
		switch b.dialect {
		case sqlstore.SQLite:
			expire = `UPDATE {t} SET expires_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 1 WHERE key = ?1`
		case sqlstore.MySQL:
			expire = "UPDATE {t} SET expires_at = DATE_SUB(UTC_TIMESTAMP(6), INTERVAL 1000 MICROSECOND) WHERE `key` = ?"
		}
		expire = strings.ReplaceAll(expire, "{t}", f.table)
		ctx := testCtx(t)
		setPast := func(key string) {
			t.Helper()
			res, err := f.db.ExecContext(ctx, expire, []byte(key))
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				t.Fatalf("moving %s into the past changed %d rows", key, n)
			}
		}
		for _, completed := range []bool{false, true} {
			key := "in-progress"
			if completed {
				key = "completed"
			}
			if rec, err := f.store.Claim(ctx, key, "old", "fp-old", time.Hour); rec != nil || err != nil {
				t.Fatalf("%s: first Claim: %v %v", key, rec, err)
			}
			if completed {
				if err := f.store.Complete(ctx, key, "old", []byte("old result"), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			// Live for an hour: a second claim meets it.
			if rec, err := f.store.Claim(ctx, key, "probe", "fp-probe", time.Hour); rec == nil || err != nil {
				t.Fatalf("%s: Claim of a live record: %v %v, want the record", key, rec, err)
			}
			setPast(key)
			if !completed {
				for op, err := range map[string]error{
					"Renew":    f.store.Renew(ctx, key, "old", time.Hour),
					"Complete": f.store.Complete(ctx, key, "old", []byte("late"), time.Hour),
					"Release":  f.store.Release(ctx, key, "old"),
				} {
					if !errors.Is(err, idem.ErrLockLost) {
						t.Fatalf("%s by the owner of an expired lease: %v, want ErrLockLost", op, err)
					}
				}
			}
			rec, err := f.store.Claim(ctx, key, "new", "fp-new", time.Hour)
			if rec != nil || err != nil {
				t.Fatalf("%s: Claim of an expired record: %+v, %v; want the key claimed", key, rec, err)
			}
			if err := f.store.Complete(ctx, key, "new", []byte("new result"), time.Hour); err != nil {
				t.Fatalf("%s: new owner's Complete: %v", key, err)
			}
			got, err := f.store.Claim(ctx, key, "probe", "fp-new", time.Hour)
			if err != nil || got == nil || string(got.Result) != "new result" || got.Fingerprint != "fp-new" {
				t.Fatalf("%s: after the takeover: %+v, %v", key, got, err)
			}
		}
	})
}
