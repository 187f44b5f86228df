package idem_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// A duplicate that waited (WithWait) longer than a whole lease before it
// took a released key over holds a lease of its own from its winning
// claim, not from its first try: its renewals keep the key, and its
// response is recorded.
func TestTakeOverAfterLongWaitKeepsItsLease(t *testing.T) {
	st, _ := newCountingStore(t)
	const lockTTL = 1500 * time.Millisecond
	started := make(chan struct{})
	finish := make(chan struct{})
	var runs atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			close(started)
			<-finish
			w.WriteHeader(http.StatusBadGateway) // not kept: the key is released
			return
		}
		// The take-over runs until its lease has been renewed once (or is
		// lost).
		n := st.renews.Load()
		for st.renews.Load() == n && r.Context().Err() == nil {
			time.Sleep(time.Millisecond)
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte("taken over"))
	})
	mw := idem.New(st, idem.WithLockTTL(lockTTL), idem.WithWait(time.Minute))(h)
	first := make(chan int, 1)
	go func() { first <- do(mw, "POST", "/pay", "k", "x").Code }()
	<-started
	second := make(chan *httptest.ResponseRecorder, 1)
	go func() { second <- do(mw, "POST", "/pay", "k", "x") }()
	// Twelve claims: the owner's, the duplicate's first, and ten polls
	// after pauses of at least 10+20+40+80+160+5*250 ms, longer than the
	// lock TTL.
	waitFor(t, "the duplicate to poll for longer than a lease", func() bool { return st.claims.Load() >= 12 })
	close(finish)
	if code := <-first; code != http.StatusBadGateway {
		t.Fatalf("first request got %d, want its 502", code)
	}
	if w := <-second; w.Code != http.StatusCreated || w.Body.String() != "taken over" {
		t.Fatalf("take-over after a long wait got %d %q, want its own 201 recorded", w.Code, w.Body)
	}
	if w := do(mw, "POST", "/pay", "k", "x"); w.Header().Get("Idempotent-Replayed") != "true" || w.Body.String() != "taken over" {
		t.Fatalf("retry: %d %q, want the replay of the take-over", w.Code, w.Body)
	}
}

// A waiting duplicate polls the store with growing pauses, not every 10ms:
// a second of WithWait costs a handful of claims.
func TestWaitPollsWithGrowingPauses(t *testing.T) {
	st, _ := newCountingStore(t)
	h := newHeldHandler()
	mw := idem.New(st, idem.WithWait(time.Second))(h)
	first := make(chan int, 1)
	go func() { first <- do(mw, "POST", "/pay", "k", "x").Code }()
	<-h.started
	defer func() {
		h.finish <- func(w http.ResponseWriter) { w.WriteHeader(http.StatusCreated) }
		<-first
	}()
	before := st.claims.Load()
	wantProblem(t, do(mw, "POST", "/pay", "k", "x"), http.StatusConflict, "key-in-use")
	// Pauses of 10, 20, 40, 80, 160, 250, 250 ms and the rest of the second
	// allow at most nine claims; polling every 10ms would make a hundred.
	if n := st.claims.Load() - before; n < 2 || n > 12 {
		t.Fatalf("a duplicate waiting one second made %d claims, want from 2 to 12", n)
	}
}

// blipCompleteStore fails every Complete made within blip of the first one,
// as a store does during a short failover.
type blipCompleteStore struct {
	*countingStore
	blip time.Duration

	mu    sync.Mutex
	first time.Time
}

func (s *blipCompleteStore) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = time.Now()
	}
	down := time.Since(s.first) < s.blip
	s.mu.Unlock()
	if down {
		s.completes.Add(1)
		return errors.New("READONLY You can't write against a read only replica")
	}
	return s.countingStore.Complete(ctx, key, token, result, ttl)
}

// A store that cannot record a result for a moment does not cost the
// result: Complete is tried again after short pauses (20ms, then 100ms),
// so a blip of 110ms is ridden out. A store that stays down gets three
// tries in all.
func TestCompleteRidesOutShortBlip(t *testing.T) {
	base, _ := newCountingStore(t)
	st := &blipCompleteStore{countingStore: base, blip: 110 * time.Millisecond}
	runs := 0
	fn := func(context.Context) ([]byte, error) { runs++; return []byte("charged"), nil }
	if b, err := idem.Do(context.Background(), st, "job", "fp", fn); err != nil || string(b) != "charged" {
		t.Fatalf("Do during a 110ms blip = %q, %v; want the result recorded", b, err)
	}
	if b, err := idem.Do(context.Background(), st, "job", "fp", fn); err != nil || string(b) != "charged" || runs != 1 {
		t.Fatalf("later call = %q, %v, runs %d; want the stored result", b, err, runs)
	}

	down, _ := newCountingStore(t)
	down.set(func(s *countingStore) { s.completeErr = errors.New("connection refused") })
	if _, err := idem.Do(context.Background(), down, "job", "fp", fn); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Do with Complete down: %v, want ErrStoreUnavailable", err)
	}
	if n := down.completes.Load(); n != 3 {
		t.Fatalf("a store that stays down got %d tries of Complete, want 3", n)
	}
}

// When no renewal succeeds within the lease, the lease is given up and the
// error says why: ErrLockLost, wrapping the last renewal's error.
func TestLeaseGivenUpNamesLastRenewalError(t *testing.T) {
	st, _ := newCountingStore(t)
	timeout := errors.New("redis: i/o timeout")
	st.set(func(s *countingStore) { s.renewErr = timeout })
	var ev events
	b, err := idem.Do(context.Background(), st, "job", "fp", func(ctx context.Context) ([]byte, error) {
		<-ctx.Done()
		if cause := context.Cause(ctx); !errors.Is(cause, idem.ErrLockLost) {
			return nil, cause
		}
		return []byte("late"), nil
	}, idem.WithLockTTL(300*time.Millisecond), idem.WithHook(ev.hook))
	if string(b) != "late" || !errors.Is(err, idem.ErrLockLost) || !errors.Is(err, timeout) {
		t.Fatalf("Do = %q, %v; want the result with ErrLockLost wrapping the renewal's error", b, err)
	}
	if e := ev.last(); e.Outcome != idem.OutcomeLockLost || !errors.Is(e.Err, timeout) {
		t.Fatalf("final event %v %v, want lock_lost with the renewal's error", e.Outcome, e.Err)
	}
}

// requestHook records whether each event of an outcome carried a Request.
type requestHook struct {
	mu   sync.Mutex
	with map[idem.Outcome][]bool
}

func (h *requestHook) hook(ev idem.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.with == nil {
		h.with = map[idem.Outcome][]bool{}
	}
	h.with[ev.Outcome] = append(h.with[ev.Outcome], ev.Request != nil)
}

func (h *requestHook) get(o idem.Outcome) []bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]bool(nil), h.with[o]...)
}

// Incidents reported from the engine's own goroutines, after or beside the
// request (a failed renewal, the background release of a failed claim),
// carry no Request: the request may be over, and its fields must not be
// read from another goroutine. The request's own outcome carries it.
func TestBackgroundEventsCarryNoRequest(t *testing.T) {
	base, _ := newCountingStore(t)
	st := failingReleaseStore{base}
	var rh requestHook

	// A failed renewal, reported while the handler runs.
	base.set(func(s *countingStore) { s.renewErr = errors.New("i/o timeout") })
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for len(rh.get(idem.OutcomeRenewFailed)) == 0 && r.Context().Err() == nil {
			time.Sleep(time.Millisecond)
		}
		w.WriteHeader(http.StatusCreated)
	})
	do(idem.New(st, idem.WithLockTTL(300*time.Millisecond), idem.WithHook(rh.hook))(h), "POST", "/", "renew", "")
	if got := rh.get(idem.OutcomeRenewFailed); len(got) == 0 || got[0] {
		t.Fatalf("renew_failed events with a Request: %v, want some, none with it", got)
	}

	// The background release of a failed claim, which fails too.
	rh = requestHook{}
	base.set(func(s *countingStore) { s.claimErr = errors.New("i/o timeout") })
	wantProblem(t, do(idem.New(st, idem.WithHook(rh.hook))(&payments{}), "POST", "/", "claim", ""), 503, "store-unavailable")
	waitFor(t, "the background release to be reported", func() bool { return len(rh.get(idem.OutcomeReleaseFailed)) == 1 })
	if got := rh.get(idem.OutcomeReleaseFailed); got[0] {
		t.Fatal("the background release_failed event carries the request")
	}
	if got := rh.get(idem.OutcomeStoreError); len(got) != 1 || !got[0] {
		t.Fatalf("store_error events with a Request: %v, want one, with it", got)
	}
}

// Each background release gives its place back when it is over: however
// many claims fail one after the other, every one that landed is freed
// again, and none is skipped.
func TestBackgroundReleasesFreeTheirSlots(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	h := &payments{}
	failing := idem.New(lostReplyStore{st}, idem.WithHook(ev.hook))(h)
	const n = 100 // over the bound of releases in flight at once
	for i := 0; i < n; i++ {
		wantProblem(t, do(failing, "POST", "/", "k"+itoa(int64(i)), ""), 503, "store-unavailable")
		want := int64(i + 1)
		waitFor(t, "the failed claim's release", func() bool { return st.releases.Load() == want })
	}
	for _, o := range ev.outcomes() {
		if o == idem.OutcomeReleaseFailed {
			t.Fatalf("a background release was skipped or failed: outcomes %v", ev.outcomes())
		}
	}
	// The releases have run; each key is free for the client's retry.
	mw := idem.New(st)(h)
	for i := 0; i < n; i++ {
		key := "k" + itoa(int64(i))
		waitFor(t, "key "+key+" to come free", func() bool {
			w := do(mw, "POST", "/", key, "")
			if w.Code != http.StatusConflict && w.Code != http.StatusCreated {
				t.Fatalf("retry of %s: %d %s", key, w.Code, w.Body)
			}
			return w.Code == http.StatusCreated
		})
	}
	if runs := h.runs.Load(); runs != n {
		t.Fatalf("handler ran %d times, want %d", runs, n)
	}
}

// lockLostReleaseStore answers every Release with ErrLockLost, as a store
// does whose record is no longer the caller's.
type lockLostReleaseStore struct{ *countingStore }

func (s lockLostReleaseStore) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	return idem.ErrLockLost
}

// A release meant to free the key after an unkept response fails with
// ErrLockLost only if the lease was lost meanwhile: when the owner still
// believed it held the key, that is an incident, and it is reported.
func TestUnexpectedLockLostOnReleaseReported(t *testing.T) {
	base, _ := newCountingStore(t)
	var ev events
	do(idem.New(lockLostReleaseStore{base}, idem.WithHook(ev.hook))(&payments{status: 503}), "POST", "/", "k", "")
	got := ev.outcomes()
	if len(got) != 2 || got[0] != idem.OutcomeReleaseFailed || got[1] != idem.OutcomeExecuted {
		t.Fatalf("outcomes %v, want release_failed then executed", got)
	}
	if e := ev.evs[0]; !errors.Is(e.Err, idem.ErrLockLost) {
		t.Fatalf("release_failed carries %v, want ErrLockLost", e.Err)
	}
}

// failingReleaseLedger is a ledgerStore whose Release fails with err.
type failingReleaseLedger struct {
	*ledgerStore
	releaseErr error
	releases   atomic.Int64
}

func (s *failingReleaseLedger) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	return s.releaseErr
}

// After a failed commit the key is released for a retry. A release that
// fails leaves the key locked until its lease ends and is reported; one
// that finds the key completed (the commit landed although it was reported
// as failed) is fenced and changes nothing, so it is no incident. A commit
// that failed because the lease was lost leaves the key to its new owner.
func TestFailedCommitReleaseReporting(t *testing.T) {
	for _, tc := range []struct {
		name         string
		commitErr    error
		releaseErr   error
		wantReleases int64
		want         []idem.Outcome
	}{
		{"release fails", errors.New("connection reset during COMMIT"), errors.New("pool timeout"), 1,
			[]idem.Outcome{idem.OutcomeReleaseFailed, idem.OutcomeStoreError}},
		{"commit landed", errors.New("connection reset during COMMIT"), idem.ErrLockLost, 1,
			[]idem.Outcome{idem.OutcomeStoreError}},
		{"lease lost", idem.ErrLockLost, errors.New("pool timeout"), 0,
			[]idem.Outcome{idem.OutcomeLockLost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &failingReleaseLedger{ledgerStore: newLedgerStore(t), releaseErr: tc.releaseErr}
			s.FailCommit(tc.commitErr)
			var ev events
			do(idem.New(s, idem.WithHook(ev.hook))(ledgerHandler(http.StatusCreated)), "POST", "/pay", "k1", `{}`)
			got := ev.outcomes()
			if len(got) != len(tc.want) {
				t.Fatalf("outcomes %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("outcomes %v, want %v", got, tc.want)
				}
			}
			if n := s.releases.Load(); n != tc.wantReleases {
				t.Fatalf("%d releases, want %d", n, tc.wantReleases)
			}
		})
	}
}

// Work that ends its goroutine with runtime.Goexit (t.FailNow in a test
// handler) neither panics nor is reported as a panic, and its key is
// released.
func TestGoexitInWorkReleasesWithoutPanic(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	ended := make(chan any, 1)
	go func() {
		returned := false
		defer func() {
			if returned {
				ended <- "Do returned"
				return
			}
			ended <- recover()
		}()
		idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) {
			runtime.Goexit()
			return nil, nil
		}, idem.WithHook(ev.hook))
		returned = true
	}()
	if v := <-ended; v != nil {
		t.Fatalf("work that called Goexit ended with %v, want a plain Goexit", v)
	}
	for _, o := range ev.outcomes() {
		if o == idem.OutcomePanic || o == idem.OutcomeReleaseFailed {
			t.Fatalf("outcomes %v after Goexit, want no panic and no failed release", ev.outcomes())
		}
	}
	if b, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return []byte("again"), nil }); err != nil || string(b) != "again" {
		t.Fatalf("next call: %q, %v; want the work run again on the released key", b, err)
	}
}

// A panic with an error value is reported with that error wrapped, so a
// hook can tell http.ErrAbortHandler from a bug.
func TestPanicEventWrapsErrorValue(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	func() {
		defer func() { recover() }()
		do(idem.New(st, idem.WithHook(ev.hook))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			panic(http.ErrAbortHandler)
		})), "POST", "/", "k", "")
	}()
	if e := ev.last(); e.Outcome != idem.OutcomePanic || !errors.Is(e.Err, http.ErrAbortHandler) {
		t.Fatalf("event %v %v, want panic wrapping http.ErrAbortHandler", e.Outcome, e.Err)
	}
}

// After a lost lease, the release of an unkept response is expected to
// find the key gone (ErrLockLost): that is no incident, and only the
// request's own outcome is reported.
func TestReleaseAfterLostLeaseNotAnIncident(t *testing.T) {
	base, _ := newCountingStore(t)
	base.set(func(s *countingStore) { s.renewErr = idem.ErrLockLost })
	st := lockLostReleaseStore{base}
	var ev events
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // until the lease is lost
		w.WriteHeader(http.StatusBadGateway)
	})
	if w := do(idem.New(st, idem.WithLockTTL(300*time.Millisecond), idem.WithHook(ev.hook))(h), "POST", "/", "k", ""); w.Code != http.StatusBadGateway {
		t.Fatalf("client got %d, want the handler's 502", w.Code)
	}
	if got := ev.outcomes(); len(got) != 1 || got[0] != idem.OutcomeExecuted || st.releases.Load() != 1 {
		t.Fatalf("outcomes %v after %d releases, want executed alone after one release", got, st.releases.Load())
	}
}

// ctxRecorder is a WorkStore over a ledgerStore that keeps the context of
// every call it gets.
type ctxRecorder struct {
	*ledgerStore

	mu   sync.Mutex
	ctxs map[string][]context.Context
}

func (s *ctxRecorder) keep(method string, ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctxs == nil {
		s.ctxs = map[string][]context.Context{}
	}
	s.ctxs[method] = append(s.ctxs[method], ctx)
}

func (s *ctxRecorder) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.keep("Claim", ctx)
	return s.ledgerStore.Claim(ctx, key, token, fp, lease)
}

func (s *ctxRecorder) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.keep("Complete", ctx)
	return s.ledgerStore.Complete(ctx, key, token, result, ttl)
}

func (s *ctxRecorder) Release(ctx context.Context, key, token string) error {
	s.keep("Release", ctx)
	return s.ledgerStore.Release(ctx, key, token)
}

func (s *ctxRecorder) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.keep("Renew", ctx)
	return s.ledgerStore.Renew(ctx, key, token, lease)
}

func (s *ctxRecorder) BeginWork(ctx context.Context, key, token string) (idem.Work, error) {
	s.keep("BeginWork", ctx)
	u, err := s.ledgerStore.BeginWork(ctx, key, token)
	if err != nil {
		return nil, err
	}
	return recordedUnit{u, s}, nil
}

type recordedUnit struct {
	idem.Work
	s *ctxRecorder
}

func (u recordedUnit) Commit(ctx context.Context, result []byte, ttl time.Duration) error {
	u.s.keep("Commit", ctx)
	return u.Work.Commit(ctx, result, ttl)
}

// plainStore hides the WorkStore of a ctxRecorder.
type plainStore struct{ idem.Store }

// The context of each store call ends (Canceled) once the call has
// returned, as a context of a call does: a store that ties something to
// it (a socket deadline, a watcher) is not left with a live one. The
// contexts of the unit of work's calls end too.
func TestStoreCallContextsEndWithTheirCalls(t *testing.T) {
	rec := &ctxRecorder{ledgerStore: newLedgerStore(t)}
	// A kept response (Claim, Complete) and an unkept one (Release), with
	// a renewal while each runs.
	renewed := func(w http.ResponseWriter, r *http.Request, status int) {
		waitFor(t, "a renewal", func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			return len(rec.ctxs["Renew"]) > 0
		})
		w.WriteHeader(status)
	}
	mw := idem.New(plainStore{rec}, idem.WithLockTTL(300*time.Millisecond))
	do(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { renewed(w, r, 201) })), "POST", "/", "kept", "")
	do(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })), "POST", "/", "unkept", "")
	// A unit of work begun and committed.
	do(idem.New(rec)(ledgerHandler(http.StatusCreated)), "POST", "/pay", "unit", `{}`)
	// A failed claim, released in the background.
	failing := idem.New(lostReplyStore{&countingStore{Store: plainStore{rec}}})(&payments{})
	wantProblem(t, do(failing, "POST", "/", "lost-reply", ""), 503, "store-unavailable")
	waitFor(t, "the background release", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.ctxs["Release"]) >= 2
	})

	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, m := range []string{"Claim", "Complete", "Release", "Renew", "BeginWork", "Commit"} {
		if len(rec.ctxs[m]) == 0 {
			t.Errorf("no %s call seen", m)
		}
	}
	for m, ctxs := range rec.ctxs {
		for i, ctx := range ctxs {
			if m == "Release" && i == 1 {
				// The background release may still be returning.
				waitFor(t, "the background release's context to end", func() bool { return ctx.Err() != nil })
			}
			if !errors.Is(ctx.Err(), context.Canceled) {
				t.Errorf("context of %s call %d: Err = %v after the call, want Canceled", m, i, ctx.Err())
			}
		}
	}
}

// renewLostLedger is a ledgerStore whose renewals find the key taken.
type renewLostLedger struct{ *ledgerStore }

func (s renewLostLedger) Renew(context.Context, string, string, time.Duration) error {
	return idem.ErrLockLost
}

// A unit of work whose lease was lost while its handler ran is rolled
// back, even for a response that was to be kept: nothing of it is kept,
// since the key may be another owner's by now.
func TestWorkStoreRollsBackWhenLeaseLost(t *testing.T) {
	s := newLedgerStore(t)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ledgerHandler(http.StatusCreated).ServeHTTP(w, r)
		<-r.Context().Done() // until the lease is lost
	})
	wantProblem(t, do(idem.New(renewLostLedger{s}, idem.WithLockTTL(300*time.Millisecond))(h), "POST", "/pay", "k1", `{}`),
		http.StatusServiceUnavailable, "response-not-recorded")
	if rows, begins, rollbacks := ledgerState(s); len(rows) != 0 || begins != 1 || rollbacks != 1 {
		t.Fatalf("rows %q, %d units begun, %d rolled back; want no row and the unit rolled back", rows, begins, rollbacks)
	}
}

// The context given to Do's work ends when Do returns, as a request's
// context ends when its handler returns: whatever the work left watching
// it stops, and nothing stays registered with the caller's context.
func TestDoWorkContextEndsWhenDoReturns(t *testing.T) {
	st, _ := newCountingStore(t)
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, fail := range []bool{false, true} {
		var workCtx context.Context
		key := "job-ok"
		if fail {
			key = "job-fail"
		}
		idem.Do(parent, st, key, "fp", func(ctx context.Context) ([]byte, error) {
			workCtx = ctx
			if fail {
				return nil, errors.New("declined")
			}
			return []byte("ok"), nil
		})
		if workCtx.Err() == nil {
			t.Fatalf("work (failing %v): its context is still live after Do returned", fail)
		}
	}
}
