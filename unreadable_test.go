package idem_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// unreadableStore answers every Claim as a store does that holds a record it
// cannot read: an error wrapping ErrCorruptRecord, or a record of a state
// this release does not know.
type unreadableStore struct {
	*countingStore
	badState bool
}

func (s unreadableStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.claims.Add(1)
	if s.badState {
		return &idem.Record{State: idem.State(9), Fingerprint: fp}, nil
	}
	return nil, fmt.Errorf("somestore: claim: record format version \"2\" unknown: %w", idem.ErrCorruptRecord)
}

// A record that exists but cannot be read (written by a newer release, or
// in a state this one does not know) is never a reason to run the handler,
// not even with WithFailOpen: it may stand for a completed request.
func TestUnreadableRecordNeverRunsHandler(t *testing.T) {
	for _, badState := range []bool{false, true} {
		for _, failOpen := range []bool{false, true} {
			t.Run(fmt.Sprintf("badState=%v/failOpen=%v", badState, failOpen), func(t *testing.T) {
				base, _ := newCountingStore(t)
				st := unreadableStore{countingStore: base, badState: badState}
				h := &payments{}
				var ev events
				opts := []idem.Option{idem.WithHook(ev.hook)}
				if failOpen {
					opts = append(opts, idem.WithFailOpen())
				}
				w := do(idem.New(st, opts...)(h), "POST", "/", "k", "")
				wantProblem(t, w, http.StatusServiceUnavailable, "store-unavailable")
				if h.runs.Load() != 0 {
					t.Fatal("the handler ran over an unreadable record")
				}
				if e := ev.last(); e.Outcome != idem.OutcomeStoreError || !errors.Is(e.Err, idem.ErrCorruptRecord) {
					t.Fatalf("hook saw %v %v, want store_error wrapping ErrCorruptRecord", e.Outcome, e.Err)
				}
				ran := false
				_, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
				if ran || !errors.Is(err, idem.ErrCorruptRecord) {
					t.Fatalf("Do over an unreadable record: ran %v, err %v", ran, err)
				}
			})
		}
	}
}
