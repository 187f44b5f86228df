package rueidisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/rueidisstore"
)

// The same Complete sent twice (a client that resends a command whose
// reply it lost) succeeds twice and changes nothing; a second Complete with
// another result, or by another token, is refused.
func TestCompleteSentAgainSucceeds(t *testing.T) {
	_, c := newMini(t)
	st := rueidisstore.New(c)
	ctx := context.Background()
	if _, err := st.Claim(ctx, "k", "owner", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := st.Complete(ctx, "k", "owner", []byte("result"), time.Hour); err != nil {
			t.Fatalf("Complete #%d: %v", i+1, err)
		}
	}
	if err := st.Complete(ctx, "k", "owner", []byte("other"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Complete with another result: %v, want ErrLockLost", err)
	}
	if err := st.Complete(ctx, "k", "intruder", []byte("result"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Complete by another token: %v, want ErrLockLost", err)
	}
	rec, err := st.Claim(ctx, "k", "late", "fp", time.Minute)
	if err != nil || rec == nil || rec.State != idem.StateCompleted || string(rec.Result) != "result" {
		t.Fatalf("record after the repeated Completes: %+v, %v", rec, err)
	}
}
