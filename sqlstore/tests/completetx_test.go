package sqlstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// CompleteTx completes the record in the caller's transaction: commit
// stores the business write and the result together; rollback stores
// neither and leaves the key in progress, still owned.
func TestCompleteTx(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		ctx := testCtx(t)
		payments := f.table + "_payments"
		if _, err := f.db.ExecContext(ctx, `CREATE TABLE `+payments+` (id varchar(64) PRIMARY KEY)`); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.db.Exec(`DROP TABLE ` + payments) })
		insert := `INSERT INTO ` + payments + ` (id) VALUES (` + ph(b.dialect, 1) + `)`
		countPayments := func() int {
			t.Helper()
			var n int
			if err := f.db.QueryRowContext(ctx, `SELECT count(*) FROM `+payments).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}

		for _, commit := range []bool{true, false} {
			key := "rolled-back"
			if commit {
				key = "committed"
			}
			if rec, err := f.store.Claim(ctx, key, "owner", "fp", time.Minute); err != nil || rec != nil {
				t.Fatalf("Claim: %v %v", rec, err)
			}
			tx, err := f.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, insert, key); err != nil {
				t.Fatal(err)
			}
			if err := f.store.CompleteTx(ctx, tx, key, "owner", []byte("result of "+key), time.Hour); err != nil {
				t.Fatalf("CompleteTx: %v", err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			rec, err := f.store.Claim(ctx, key, "other", "fp", time.Minute)
			if err != nil || rec == nil {
				t.Fatalf("Claim after the transaction: %v %v", rec, err)
			}
			if commit {
				if rec.State != idem.StateCompleted || string(rec.Result) != "result of "+key {
					t.Fatalf("after commit the record is %+v, want completed with the result", rec)
				}
			} else {
				if rec.State != idem.StateInProgress || rec.Token != "owner" {
					t.Fatalf("after rollback the record is %+v, want in progress, still owned", rec)
				}
				if err := f.store.Release(ctx, key, "owner"); err != nil {
					t.Fatalf("the owner's Release after rollback: %v", err)
				}
			}
		}
		if got := countPayments(); got != 1 {
			t.Fatalf("%d payments, want the committed one only", got)
		}

		// A caller that lost the key changes nothing and is told so.
		if rec, err := f.store.Claim(ctx, "lost", "owner", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		tx, err := f.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := f.store.CompleteTx(ctx, tx, "lost", "stale", []byte("x"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
			t.Fatalf("CompleteTx with a stale token: %v, want ErrLockLost", err)
		}
		if err := f.store.CompleteTx(ctx, nil, "lost", "owner", []byte("x"), time.Hour); err == nil {
			t.Fatal("CompleteTx accepted a nil *sql.Tx")
		}
	})
}
