package idem_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// Inside Do there is no response to keep: MarkCommitted reports false, as
// it does nothing there.
func TestMarkCommittedReportsFalseInDo(t *testing.T) {
	st, _ := newCountingStore(t)
	var marked bool
	idem.Do(context.Background(), st, "job", "fp", func(ctx context.Context) ([]byte, error) {
		marked = idem.MarkCommitted(ctx)
		return nil, nil
	})
	if marked {
		t.Fatal("MarkCommitted reported true inside Do, where it does nothing")
	}
}

// When the lease is lost while the work fails, Do returns both errors.
func TestDoReturnsWorkErrorWithLostLease(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.renewErr = idem.ErrLockLost })
	smtp := errors.New("smtp: 421 try again later")
	_, err := idem.Do(context.Background(), st, "job", "fp", func(ctx context.Context) ([]byte, error) {
		<-ctx.Done()
		return nil, smtp
	}, idem.WithLockTTL(300*time.Millisecond))
	if !errors.Is(err, idem.ErrLockLost) || !errors.Is(err, smtp) {
		t.Fatalf("err = %v, want both ErrLockLost and the work's error", err)
	}
}

// Do refuses what would silently protect nothing, before any store call: a
// nil store, an empty, over-long or non-visible-ASCII key (an empty
// delivery id would merge every message that lacks one), and a context
// that has already ended.
func TestDoRefusesBadCalls(t *testing.T) {
	st, _ := newCountingStore(t)
	ran := false
	work := func(context.Context) ([]byte, error) { ran = true; return nil, nil }
	if _, err := idem.Do(context.Background(), nil, "job", "fp", work); err == nil {
		t.Error("Do accepted a nil store")
	}
	for _, key := range []string{"", strings.Repeat("k", 256), "job 1", "job\n", "jöb"} {
		if _, err := idem.Do(context.Background(), st, key, "fp", work); !errors.Is(err, idem.ErrInvalidKey) {
			t.Errorf("key %q: err = %v, want ErrInvalidKey", key, err)
		}
	}
	if _, err := idem.Do(context.Background(), st, strings.Repeat("k", 300), "fp", work, idem.WithMaxKeyLength(300)); err != nil {
		t.Errorf("a key within WithMaxKeyLength: %v", err)
	}
	ran = false
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := st.calls()
	if _, err := idem.Do(ctx, st, "job-2", "fp", work); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v, want context.Canceled", err)
	}
	if ran || st.calls() != before {
		t.Errorf("with a cancelled context: ran %v, %d store calls", ran, st.calls()-before)
	}
}

// Keys of Do and of the HTTP middleware live apart in one store: a job key
// never meets a request's key, whatever the scope.
func TestDoKeysApartFromHTTPKeys(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st)(h)
	do(mw, "POST", "/", "shared", "")
	for _, key := range []string{"shared", "|shared", idem.StoreKey("", "shared")} {
		ran := false
		res, err := idem.Do(context.Background(), st, key, idem.Fingerprint(newPost(), nil), func(context.Context) ([]byte, error) { ran = true; return []byte("job"), nil })
		if err != nil || !ran || string(res) != "job" {
			t.Fatalf("Do key %q met the HTTP key: ran %v, %q, %v", key, ran, res, err)
		}
	}
}

func newPost() *http.Request {
	r, _ := http.NewRequest("POST", "/", nil)
	return r
}
