package sqlstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// Leases and retention times are stored in the dialect's unit (SQLite
// milliseconds, MySQL microseconds), rounded up, so that a positive
// duration never becomes zero and a whole one is kept exactly; a
// negative one counts as zero. Both
// dialects give one value of the current time to a whole statement, so
// expires_at - created_at is exactly the lease.
func TestDurationsRoundUpToTheUnit(t *testing.T) {
	for _, b := range []backend{backends[0], mysqlBackend} {
		t.Run(b.name, func(t *testing.T) {
			f := b.fixture(t, sqlstore.WithSweepInterval(0))
			ctx := testCtx(t)
			q := fmt.Sprintf(`SELECT expires_at - created_at FROM %s WHERE key = ?1`, f.table)
			unit := time.Millisecond
			if b.dialect == sqlstore.MySQL {
				q = fmt.Sprintf("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, expires_at) FROM %s WHERE `key` = ?", f.table)
				unit = time.Microsecond
			}
			stored := func(key string) int64 {
				t.Helper()
				var n int64
				if err := f.db.QueryRowContext(ctx, q, []byte(key)).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			for i, lease := range []time.Duration{-time.Millisecond - time.Nanosecond, -time.Nanosecond, 0, time.Nanosecond, 200 * time.Microsecond, 1500 * time.Microsecond, time.Minute} {
				want := int64((max(lease, 0) + unit - 1) / unit)
				key := fmt.Sprintf("lease-%d", i)
				if rec, err := f.store.Claim(ctx, key, "tok", "fp", lease); err != nil || rec != nil {
					t.Fatalf("Claim: %v %v", rec, err)
				}
				if got := stored(key); got != want {
					t.Errorf("a lease of %v is stored as %d units of %v, want %d", lease, got, unit, want)
				}
			}
			// Complete's retention time likewise: keep the lease for an hour
			// first, so that it cannot run out before Complete.
			if rec, err := f.store.Claim(ctx, "done", "tok", "fp", time.Hour); err != nil || rec != nil {
				t.Fatalf("Claim: %v %v", rec, err)
			}
			if err := f.store.Complete(ctx, "done", "tok", nil, 2*time.Hour+time.Nanosecond); err != nil {
				t.Fatal(err)
			}
			// created_at stays the claim's; expires_at is the time of Complete
			// plus the retention time, so later than the claim's plus it.
			if got, min := stored("done"), int64((2*time.Hour)/unit)+1; got < min {
				t.Errorf("a retention time of 2h1ns is stored as at least %d units, want %d or more", got, min)
			}
		})
	}
}
