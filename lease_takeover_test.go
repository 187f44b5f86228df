package idem_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// blipStore wraps a store whose first Renew calls fail with a transient
// error (a timeout, a dropped connection); later ones work again.
type blipStore struct {
	idem.Store
	failedRenews atomic.Int64
	renews       atomic.Int64 // successful ones

	mu    sync.Mutex
	blips int // Renew calls still to fail
}

func newBlipStore(st idem.Store, blips int) *blipStore {
	return &blipStore{Store: st, blips: blips}
}

func (s *blipStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	blip := s.blips > 0
	if blip {
		s.blips--
	}
	s.mu.Unlock()
	if blip {
		s.failedRenews.Add(1)
		return errors.New("read tcp 127.0.0.1:6379: i/o timeout")
	}
	err := s.Store.Renew(ctx, key, token, lease)
	if err == nil {
		s.renews.Add(1)
	}
	return err
}

// outliveLease moves clock, the clock of the store under st, past several
// leases of lockTTL, each step waiting for a successful renewal made after
// the previous step, so that only an owner whose renewals go on keeps its
// lease. Each step moves the clock by 0.4 lockTTL: a renewal that read the
// clock just before a step still covers the next one.
func outliveLease(st *blipStore, clock *fakeClock, lockTTL time.Duration) error {
	for i := 0; i < 5; i++ {
		n := st.renews.Load()
		deadline := time.Now().Add(10 * time.Second)
		for st.renews.Load() <= n {
			if time.Now().After(deadline) {
				return fmt.Errorf("no successful renewal for 10s after %d failed ones (step %d): the lease was left to run out", st.failedRenews.Load(), i)
			}
			time.Sleep(time.Millisecond)
		}
		clock.Advance(lockTTL * 4 / 10)
	}
	return nil
}

// A store error during a renewal (a timeout, a blip) is not a lost lease:
// renewal goes on at the next tick, so a slow handler keeps its key for as
// long as it runs and a duplicate is never run beside it.
func TestTransientRenewErrorKeepsLease(t *testing.T) {
	// The store's clock only moves when the test moves it, so the lease
	// runs out exactly when the test says, however slow the machine is.
	clock := newFakeClock()
	mem := memstore.New(memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	t.Cleanup(func() { mem.Close() })
	st := newBlipStore(mem, 1)

	// A renewal every 300ms of real time. The owner's own deadline (nine
	// tenths of the TTL after its last success) runs on real time: it must
	// not pass on a busy machine between the blip and the next renewal.
	// The schedule itself is pinned on virtual time by
	// TestLeaseScheduleOnVirtualTime.
	const lockTTL = 900 * time.Millisecond
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	var runs atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		started <- struct{}{}
		<-release
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "paid")
	})
	mw := idem.New(st, idem.WithLockTTL(lockTTL))(h)
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- do(mw, "POST", "/", "slow", "x") }()
	<-started
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	waitFor(t, "the failed renewal", func() bool { return st.failedRenews.Load() >= 1 })
	// The store's clock passes two whole leases; without renewals after the
	// blip, the claim's lease is over and the duplicate below would run.
	if err := outliveLease(st, clock, lockTTL); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, do(mw, "POST", "/", "slow", "x"), http.StatusConflict, "key-in-use")
	close(release)
	if w := <-first; w.Code != http.StatusCreated {
		t.Fatalf("slow owner got %d %s, want 201", w.Code, w.Body)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if w := do(mw, "POST", "/", "slow", "x"); w.Body.String() != "paid" || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d %q, want the replay", w.Code, w.Body)
	}
}

// The same through Do: a blip in a renewal neither stops the renewals nor
// makes Do report a lost lease.
func TestDoTransientRenewErrorKeepsLease(t *testing.T) {
	clock := newFakeClock()
	mem := memstore.New(memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	t.Cleanup(func() { mem.Close() })
	st := newBlipStore(mem, 2)
	const lockTTL = 600 * time.Millisecond // real time: see TestTransientRenewErrorKeepsLease
	var runs atomic.Int64
	fn := func(ctx context.Context) ([]byte, error) {
		runs.Add(1)
		waitFor(t, "two failed renewals", func() bool { return st.failedRenews.Load() >= 2 })
		if err := outliveLease(st, clock, lockTTL); err != nil {
			return nil, err
		}
		// The lease is still ours: a duplicate meets it.
		if _, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) {
			runs.Add(1)
			return []byte("second"), nil
		}); !errors.Is(err, idem.ErrInProgress) {
			return nil, fmt.Errorf("duplicate while the owner runs: %v, want ErrInProgress", err)
		}
		return []byte("done"), nil
	}
	got, err := idem.Do(context.Background(), st, "job", "fp", fn, idem.WithLockTTL(lockTTL))
	if err != nil || string(got) != "done" {
		t.Fatalf("Do = %q, %v; want done, nil", got, err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("work ran %d times, want 1", n)
	}
}

// heldHandler is a handler whose first run blocks until the test ends it
// with a chosen outcome, and whose later runs answer 201 at once.
type heldHandler struct {
	started chan struct{}
	finish  chan func(w http.ResponseWriter)
	runs    atomic.Int64
}

func newHeldHandler() *heldHandler {
	return &heldHandler{started: make(chan struct{}, 1), finish: make(chan func(http.ResponseWriter), 1)}
}

func (h *heldHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.runs.Add(1)
	if n == 1 {
		h.started <- struct{}{}
		(<-h.finish)(w)
		return
	}
	w.Header().Set("Location", "/payments/"+itoa(n))
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "run "+itoa(n))
}

// WithWait: when the request a duplicate waits for is released (it
// answered 5xx, or panicked), the waiting duplicate takes the key over as
// its owner: it runs the handler, its response is recorded, and later
// retries get that response.
func TestWaitingDuplicateTakesOverReleasedKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish func(w http.ResponseWriter)
	}{
		{"5xx", func(w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) }},
		{"panic", func(http.ResponseWriter) { panic(http.ErrAbortHandler) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := newCountingStore(t)
			var ev events
			h := newHeldHandler()
			mw := idem.New(st, idem.WithWait(30*time.Second), idem.WithHook(ev.hook))(h)
			first := make(chan int, 1)
			go func() {
				defer func() {
					if v := recover(); v != nil {
						first <- -1
					}
				}()
				first <- do(mw, "POST", "/pay", "k", "x").Code
			}()
			<-h.started
			second := make(chan *httptest.ResponseRecorder, 1)
			go func() { second <- do(mw, "POST", "/pay", "k", "x") }()
			// The duplicate has met the running request and polls again.
			waitFor(t, "the duplicate to poll", func() bool { return st.claims.Load() >= 3 })
			h.finish <- tc.finish
			<-first
			w := <-second
			if w.Code != http.StatusCreated || w.Body.String() != "run 2" || w.Header().Get("Idempotent-Replayed") != "" {
				t.Fatalf("waiting duplicate got %d %q (replayed %q); want its own run's 201", w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
			}
			if e := ev.last(); e.Outcome != idem.OutcomeExecuted || !e.Stored || e.Err != nil {
				t.Fatalf("hook saw %+v for the take-over, want executed and stored", e)
			}
			r := do(mw, "POST", "/pay", "k", "x")
			if r.Body.String() != "run 2" || r.Header().Get("Idempotent-Replayed") != "true" || r.Header().Get("Location") != "/payments/2" {
				t.Fatalf("retry after the take-over: %d %q %v, want the replay of run 2", r.Code, r.Body, r.Header())
			}
			if n := h.runs.Load(); n != 2 {
				t.Fatalf("handler ran %d times, want 2 (the released run and the take-over)", n)
			}
		})
	}
}

// The same through Do: a caller waiting for a key whose work fails runs
// the work itself as the key's owner and stores its result.
func TestDoWaitingCallerTakesOverReleasedKey(t *testing.T) {
	st, _ := newCountingStore(t)
	started, fail := make(chan struct{}), make(chan struct{})
	firstErr := make(chan error, 1)
	go func() {
		_, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) {
			close(started)
			<-fail
			return nil, errors.New("card declined by a flaky provider")
		})
		firstErr <- err
	}()
	<-started
	type result struct {
		b   []byte
		err error
	}
	second := make(chan result, 1)
	go func() {
		b, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) {
			return []byte("second"), nil
		}, idem.WithWait(30*time.Second))
		second <- result{b, err}
	}()
	waitFor(t, "the waiting caller to poll", func() bool { return st.claims.Load() >= 3 })
	close(fail)
	if err := <-firstErr; err == nil {
		t.Fatal("first Do returned no error")
	}
	r := <-second
	if r.err != nil || string(r.b) != "second" {
		t.Fatalf("waiting caller: %q, %v; want its own result", r.b, r.err)
	}
	b, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) {
		return []byte("third"), nil
	})
	if err != nil || string(b) != "second" {
		t.Fatalf("later caller: %q, %v; want the stored %q", b, err, "second")
	}
}

// WithWait waits only for a duplicate of the running request: a request
// that reuses its key with another payload gets its 422 at once, after one
// store call, and so does a retry of a completed request.
func TestWaitIsOnlyForDuplicates(t *testing.T) {
	st, _ := newCountingStore(t)
	h := newHeldHandler()
	mw := idem.New(st, idem.WithWait(30*time.Second))(h)
	first := make(chan int, 1)
	go func() { first <- do(mw, "POST", "/pay", "k", "x").Code }()
	<-h.started
	before := st.claims.Load()
	wantProblem(t, do(mw, "POST", "/pay", "k", "another payload"), http.StatusUnprocessableEntity, "key-reused")
	if n := st.claims.Load() - before; n != 1 {
		t.Fatalf("a reused key under WithWait cost %d claims, want 1: it was polled as if it were a duplicate", n)
	}
	h.finish <- func(w http.ResponseWriter) { w.WriteHeader(http.StatusCreated) }
	<-first
	before = st.claims.Load()
	if w := do(mw, "POST", "/pay", "k", "x"); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after completion: %d, want the replay", w.Code)
	}
	if n := st.claims.Load() - before; n != 1 {
		t.Fatalf("a replay under WithWait cost %d claims, want 1", n)
	}
}
