package sqlstore_test

import (
	"database/sql/driver"
	"testing"
	"time"
)

// The statements that read a record compute its time left with the
// database's clock, rounded up, and select only records that have not
// expired, so a live record reads at least one unit. A record whose time
// left reads 0 (it ran out between two readings of the clock) is
// expired: Lookup reports no key, and Claim does not hand it back as a
// live record.
func TestRecordWithNoTimeLeftIsExpired(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			f, fc := b.faultFixture(t)
			ctx := testCtx(t)
			if _, err := f.store.Claim(ctx, "k", "owner", "fp", time.Minute); err != nil {
				t.Fatal(err)
			}
			// The record columns are won, version, state, token,
			// fingerprint, time left, result.
			fc.rewrite(func(dest []driver.Value) {
				if len(dest) == 7 {
					dest[5] = int64(0)
				}
			})
			defer fc.rewrite(nil)
			ks, err := f.store.Lookup(ctx, "k")
			if err != nil || ks != nil {
				t.Errorf("Lookup of a record with no time left = %+v, %v; want no key", ks, err)
			}
			rec, err := f.store.Claim(ctx, "k", "second", "fp", time.Minute)
			if rec != nil {
				t.Errorf("Claim returned a record with no time left as live: %+v (err %v)", rec, err)
			}
		})
	}
}
