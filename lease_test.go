package idem_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// slowRenewStore is a store whose Renew hangs until its context ends, as a
// store does whose replies are lost; every other call goes through.
type slowRenewStore struct {
	*countingStore
}

func (s slowRenewStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.renews.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// overlapDetector records the executions of a handler and whether two of
// them ever ran at once.
type overlapDetector struct {
	running atomic.Int64
	overlap atomic.Bool
}

func (d *overlapDetector) enter() {
	if d.running.Add(1) > 1 {
		d.overlap.Store(true)
	}
}

func (d *overlapDetector) leave() { d.running.Add(-1) }

// When renewals hang, the owner gives the lease up before the store can hand
// the key to a retry: its handler's context is cancelled with cause
// ErrLockLost, and a cooperative handler has stopped before the retry's
// handler starts.
func TestSlowRenewNeverOverlapsExecutions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []idem.Option
	}{
		{"explicit store timeout", []idem.Option{idem.WithLockTTL(1500 * time.Millisecond), idem.WithStoreTimeout(500 * time.Millisecond)}},
		{"default store timeout", []idem.Option{idem.WithLockTTL(1500 * time.Millisecond)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, _ := newCountingStore(t)
			st := slowRenewStore{base}
			var (
				d         overlapDetector
				runs      atomic.Int64
				retryRan  = make(chan struct{})
				firstDone = make(chan error, 1)
				ev        events
			)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				d.enter()
				defer d.leave()
				if runs.Add(1) == 1 {
					// The first execution works until told to stop, or
					// until the retry's execution has started.
					select {
					case <-r.Context().Done():
						firstDone <- context.Cause(r.Context())
					case <-retryRan:
						firstDone <- errors.New("still running when the retry ran")
					}
					return
				}
				close(retryRan)
				w.WriteHeader(http.StatusCreated)
			})
			mw := idem.New(st, append(tc.opts, idem.WithHook(ev.hook))...)(h)
			first := make(chan *httptest.ResponseRecorder, 1)
			go func() { first <- do(mw, "POST", "/", "k", "") }()
			waitFor(t, "the first execution", func() bool { return runs.Load() == 1 })

			// A client retrying until its request runs.
			deadline := time.Now().Add(20 * time.Second)
			for runs.Load() < 2 {
				if time.Now().After(deadline) {
					t.Fatal("the retry never ran")
				}
				w := do(mw, "POST", "/", "k", "")
				if w.Code != http.StatusConflict && w.Code != http.StatusCreated {
					t.Fatalf("retry got %d: %s", w.Code, w.Body)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if cause := <-firstDone; !errors.Is(cause, idem.ErrLockLost) {
				t.Fatalf("first execution ended with %v, want cause ErrLockLost", cause)
			}
			if d.overlap.Load() {
				t.Fatal("two executions of one key ran at once")
			}
			w := <-first
			wantProblem(t, w, http.StatusServiceUnavailable, "response-not-recorded")
			if st.renews.Load() < 2 {
				t.Fatalf("%d renewals tried, want a prompt second try after the first failed", st.renews.Load())
			}
		})
	}
}

// flakyRenewStore fails the first n renewals at once with a transient error.
type flakyRenewStore struct {
	*countingStore
	fail atomic.Int64
}

func (s *flakyRenewStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	if s.fail.Add(-1) >= 0 {
		s.renews.Add(1)
		return errors.New("i/o timeout")
	}
	return s.countingStore.Renew(ctx, key, token, lease)
}

// A failed renewal is tried again within the lease, not a whole interval
// later: two failures in a row do not cost the owner its key.
func TestFailedRenewalRetriedWithinLease(t *testing.T) {
	base, _ := newCountingStore(t)
	st := &flakyRenewStore{countingStore: base}
	st.fail.Store(2)
	var ev events
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Work through several lock TTLs' worth of renewals.
		deadline := time.Now().Add(10 * time.Second)
		for st.renews.Load() < 5 && r.Context().Err() == nil && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		w.WriteHeader(http.StatusCreated)
	})
	mw := idem.New(st, idem.WithLockTTL(1500*time.Millisecond), idem.WithHook(ev.hook))(h)
	if w := do(mw, "POST", "/", "k", ""); w.Code != http.StatusCreated {
		t.Fatalf("owner with two failed renewals got %d: %s", w.Code, w.Body)
	}
}

// deadlineStore records the time left on the context of each Claim.
type deadlineStore struct {
	*countingStore
	mu   sync.Mutex
	left []time.Duration
}

func (s *deadlineStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	if d, ok := ctx.Deadline(); ok {
		s.mu.Lock()
		s.left = append(s.left, time.Until(d))
		s.mu.Unlock()
	}
	return s.countingStore.Claim(ctx, key, token, fp, lease)
}

// A store timeout longer than a third of the lock TTL would let one slow
// renewal lapse the lease: set explicitly it is refused; the default store
// timeout is shortened to fit.
func TestStoreTimeoutFitsLease(t *testing.T) {
	base, _ := newCountingStore(t)
	for _, opts := range [][]idem.Option{
		{idem.WithLockTTL(300 * time.Millisecond), idem.WithStoreTimeout(200 * time.Millisecond)},
		{idem.WithLockTTL(3 * time.Second), idem.WithStoreTimeout(2 * time.Second)},
	} {
		if _, err := idem.NewMiddleware(base, opts...); err == nil {
			t.Errorf("NewMiddleware accepted a store timeout over a third of the lock TTL")
		}
	}
	st := &deadlineStore{countingStore: base}
	mw, err := idem.NewMiddleware(st, idem.WithLockTTL(3*time.Second))
	if err != nil {
		t.Fatalf("WithLockTTL(3s) with the default store timeout: %v", err)
	}
	do(mw.Handler(&payments{}), "POST", "/", "k", "")
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.left) != 1 || st.left[0] > time.Second {
		t.Fatalf("claim deadlines %v, want one of at most 1s (a third of the lock TTL)", st.left)
	}
}

// Each failed renewal reaches the hook with the store's error.
func TestFailedRenewalReported(t *testing.T) {
	base, _ := newCountingStore(t)
	st := &flakyRenewStore{countingStore: base}
	st.fail.Store(2)
	var ev events
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadline := time.Now().Add(10 * time.Second)
		for st.renews.Load() < 3 && r.Context().Err() == nil && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		w.WriteHeader(http.StatusCreated)
	})
	do(idem.New(st, idem.WithLockTTL(1500*time.Millisecond), idem.WithHook(ev.hook))(h), "POST", "/", "k", "")
	var failed []idem.Event
	ev.mu.Lock()
	for _, e := range ev.evs {
		if e.Outcome == idem.OutcomeRenewFailed {
			failed = append(failed, e)
		}
	}
	ev.mu.Unlock()
	if len(failed) != 2 || failed[0].Err == nil || failed[0].Key != "k" {
		t.Fatalf("renew_failed events %+v, want 2 with the key and the store's error", failed)
	}
}

// A response that is not to be recorded (a 5xx) reaches the client as the
// handler wrote it even when the lease was lost while it ran: nothing was
// to be recorded, so the loss changes nothing for the client. The event
// keeps the loss.
func TestLostLeaseKeepsUnrecordedResponse(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.renewErr = idem.ErrLockLost })
	var ev events
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // until the lease is lost
		http.Error(w, "upstream failed", http.StatusBadGateway)
	})
	w := do(idem.New(st, idem.WithLockTTL(300*time.Millisecond), idem.WithHook(ev.hook))(h), "POST", "/", "k", "")
	if w.Code != http.StatusBadGateway || w.Body.String() != "upstream failed\n" {
		t.Fatalf("client got %d %q, want the handler's 502", w.Code, w.Body)
	}
	if e := ev.last(); e.Outcome != idem.OutcomeExecuted || e.Stored || !errors.Is(e.Err, idem.ErrLockLost) {
		t.Fatalf("hook saw %v stored=%v err=%v, want executed, not stored, with ErrLockLost", e.Outcome, e.Stored, e.Err)
	}
}
