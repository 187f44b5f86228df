package idem_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// failingReleaseStore fails every Release with a store error.
type failingReleaseStore struct{ *countingStore }

func (s failingReleaseStore) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	return errors.New("redis: connection pool timeout")
}

// A release that fails leaves the key locked until its lease ends: the hook
// hears of it, with the store's error, after a response that was not kept
// and after a panic; the panic itself is an event too.
func TestReleaseFailuresAndPanicsReachTheHook(t *testing.T) {
	base, _ := newCountingStore(t)
	st := failingReleaseStore{base}
	var ev events
	mw := idem.New(st, idem.WithHook(ev.hook))
	do(mw(&payments{status: 503}), "POST", "/", "k1", "")
	if got := ev.outcomes(); len(got) != 2 || got[0] != idem.OutcomeReleaseFailed || got[1] != idem.OutcomeExecuted {
		t.Fatalf("outcomes %v, want release_failed then executed", got)
	}
	if e := ev.evs[0]; e.Err == nil || e.Key != "k1" {
		t.Fatalf("release_failed event %+v, want the key and the store's error", e)
	}

	ev = events{}
	boom := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("card declined unexpectedly") })
	func() {
		defer func() {
			if recover() != "card declined unexpectedly" {
				t.Fatal("the panic did not go on with its value")
			}
		}()
		do(idem.New(base, idem.WithHook(ev.hook))(boom), "POST", "/", "k2", "")
	}()
	if e := ev.last(); e.Outcome != idem.OutcomePanic || e.Err == nil || e.Key != "k2" {
		t.Fatalf("after a panic the hook saw %+v, want panic with an error", e)
	}
	if base.releases.Load() != 2 {
		t.Fatalf("releases %d, want the panicked key released", base.releases.Load())
	}

	ev = events{}
	func() {
		defer func() { recover() }()
		do(mw(boom), "POST", "/", "k3", "")
	}()
	if got := ev.outcomes(); len(got) != 2 || got[0] != idem.OutcomeReleaseFailed || got[1] != idem.OutcomePanic {
		t.Fatalf("outcomes %v, want release_failed then panic", got)
	}

	ev = events{}
	_, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return nil, errors.New("smtp down") }, idem.WithHook(ev.hook))
	if err == nil || len(ev.outcomes()) != 2 || ev.outcomes()[0] != idem.OutcomeReleaseFailed {
		t.Fatalf("Do with a failed release: %v, outcomes %v", err, ev.outcomes())
	}
}

// blockingReleaseStore fails every Claim as a store does whose replies are
// lost, and holds every Release until free is closed.
type blockingReleaseStore struct {
	*countingStore
	entered atomic.Int64
	free    chan struct{}
}

func (s *blockingReleaseStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.claims.Add(1)
	return nil, errors.New("read tcp: i/o timeout")
}

func (s *blockingReleaseStore) Release(ctx context.Context, key, token string) error {
	s.entered.Add(1)
	<-s.free
	return idem.ErrLockLost
}

// During an outage every failed claim is released again in the background;
// the number of those releases in flight is bounded, and a release skipped
// beyond the bound is reported to the hook.
func TestBackgroundReleasesBounded(t *testing.T) {
	base, _ := newCountingStore(t)
	st := &blockingReleaseStore{countingStore: base, free: make(chan struct{})}
	defer close(st.free)
	var ev events
	mw := idem.New(st, idem.WithHook(ev.hook))(&payments{})
	const n = 300
	for i := 0; i < n; i++ {
		wantProblem(t, do(mw, "POST", "/", "k"+itoa(int64(i)), ""), 503, "store-unavailable")
	}
	skipped := func() (k int64) {
		for _, o := range ev.outcomes() {
			if o == idem.OutcomeReleaseFailed {
				k++
			}
		}
		return k
	}
	waitFor(t, "every failed claim's release to start or be skipped", func() bool { return st.entered.Load()+skipped() == n })
	if skipped() == 0 || st.entered.Load() >= n {
		t.Fatalf("%d background releases in flight at once, %d skipped; want a bound", st.entered.Load(), skipped())
	}
}

// A streamed response is reported once, when it is recorded, with the
// status the client got.
func TestStreamedResponseIsReported(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	mw := idem.New(st, idem.WithHook(ev.hook))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		w.Write([]byte("rest"))
	}))
	if w := do(mw, "POST", "/", "k", "b"); w.Code != http.StatusAccepted || w.Body.String() != "partrest" {
		t.Fatalf("answer %d %q", w.Code, w.Body)
	}
	if got := ev.outcomes(); len(got) != 1 || got[0] != idem.OutcomeExecuted {
		t.Fatalf("outcomes %v, want one executed", got)
	}
	if e := ev.last(); e.Status != http.StatusAccepted || !e.Stored || e.Err != nil {
		t.Fatalf("event %+v, want status 202, stored, no error", e)
	}
}
