package idem

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/clock"
)

// vclock is a clock that moves only when a test fires its next timer, so
// that a lease's schedule can be followed exactly.
type vclock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*vtimer
}

type vtimer struct {
	c     *vclock
	at    time.Time
	f     func()
	armed bool
}

func newVclock() *vclock { return &vclock{now: time.Unix(1_700_000_000, 0)} }

func (c *vclock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *vclock) AfterFunc(d time.Duration, f func()) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &vtimer{c: c, at: c.now.Add(d), f: f, armed: true}
	c.timers = append(c.timers, t)
	return t
}

// Sleep moves the clock by d: nothing else runs on virtual time.
func (c *vclock) Sleep(ctx context.Context, d time.Duration) bool {
	c.mu.Lock()
	c.now = c.now.Add(max(d, 0))
	c.mu.Unlock()
	return ctx.Err() == nil
}

func (t *vtimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.armed
	t.armed = false
	return was
}

func (t *vtimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.armed
	t.at, t.armed = t.c.now.Add(d), true
	return was
}

// fireNext moves the clock to the earliest armed timer and runs it in the
// caller's goroutine. It reports false when no timer is armed.
func (c *vclock) fireNext() bool {
	c.mu.Lock()
	var next *vtimer
	for _, t := range c.timers {
		if t.armed && (next == nil || t.at.Before(next.at)) {
			next = t
		}
	}
	if next == nil {
		c.mu.Unlock()
		return false
	}
	next.armed = false
	if next.at.After(c.now) {
		c.now = next.at
	}
	c.mu.Unlock()
	next.f()
	return true
}

// renewScript is a Store on a vclock whose Renew answers from a script
// and records when it was called, with the deadline of its context.
type renewScript struct {
	clk     *vclock
	answers []error // one per Renew; nil when the script has run out
	calls   []time.Time
	bounds  []time.Duration // the time each call's context had left
	ctxs    []context.Context
	claims  []time.Time                  // when each Claim was made
	claim   func(n int) (*Record, error) // answers the nth Claim; nil wins
}

func (s *renewScript) Clock() clock.Clock { return s.clk }

func (s *renewScript) Claim(context.Context, string, string, string, time.Duration) (*Record, error) {
	s.claims = append(s.claims, s.clk.Now())
	if len(s.claims) > 100 {
		return nil, errors.New("a hundred claims: polling without pause")
	}
	if s.claim != nil {
		return s.claim(len(s.claims))
	}
	return nil, nil
}

func (s *renewScript) Complete(context.Context, string, string, []byte, time.Duration) error {
	return nil
}

func (s *renewScript) Release(context.Context, string, string) error { return nil }

func (s *renewScript) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	now := s.clk.Now()
	s.calls = append(s.calls, now)
	d, _ := ctx.Deadline()
	s.bounds = append(s.bounds, d.Sub(now))
	s.ctxs = append(s.ctxs, ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(s.answers) == 0 {
		return nil
	}
	err := s.answers[0]
	s.answers = s.answers[1:]
	return err
}

// startLease starts a lease of lockTTL on store at the clock's now, and
// returns it with its work's context and the events it reported.
func startLease(t *testing.T, store *renewScript, lockTTL time.Duration) (*lease, context.Context, *[]Event) {
	t.Helper()
	var evs []Event
	cfg, err := build([]Option{WithLockTTL(lockTTL), WithHook(func(ev Event) { evs = append(evs, ev) })}, forRunner)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(store, cfg, newBackgroundSlots())
	wctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	l := new(lease)
	l.start(&e, context.Background(), "k", "tok", clock.Now(e.clk), cancel, Event{Key: "k"})
	return l, wctx, &evs
}

// The lease's schedule on virtual time, as its documentation gives it: the
// first renewal a third of the lock TTL after the claim was sent; a failed
// renewal tried again after pauses that double from a sixteenth of that
// interval up to half of it, each try bounded by the time the lease has
// left; a success counts the owner's lease again from when it was sent and
// starts the pauses afresh; and at the owner's deadline (the lock TTL less
// a tenth, from the last success) the lease is given up without another
// store call, the work's context cancelled with cause ErrLockLost, and the
// error naming the last failure.
func TestLeaseScheduleOnVirtualTime(t *testing.T) {
	clk := newVclock()
	fail := errors.New("i/o timeout")
	st := &renewScript{clk: clk, answers: []error{
		nil,                          // at 100ms: renewed until 100+270ms
		fail, fail, fail, fail, fail, // the pauses grow to 50ms
		nil,  // renewed again
		fail, // the pauses start afresh
	}}
	t0 := clk.Now()
	l, wctx, evs := startLease(t, st, 300*time.Millisecond)
	ms := func(d float64) time.Duration { return time.Duration(d * float64(time.Millisecond)) }
	// Each try (and the time its call had left): the first success at 100ms
	// sets the deadline to 370ms; tries after a failure at +6.25, +12.5,
	// +25, +50ms.
	want := []struct{ at, bound time.Duration }{
		{ms(100), ms(100)},    // success: deadline 370
		{ms(200), ms(100)},    // fail
		{ms(206.25), ms(100)}, // fail
		{ms(218.75), ms(100)}, // fail
		{ms(243.75), ms(100)}, // fail
		{ms(293.75), ms(76.25)},
		{ms(343.75), ms(26.25)}, // success: deadline 613.75
		{ms(443.75), ms(100)},   // fail
		{ms(450), ms(100)},      // fail: the pause is a sixteenth again
		{ms(462.5), ms(100)},
		{ms(487.5), ms(100)},
		{ms(537.5), ms(76.25)},
		{ms(587.5), ms(26.25)},
	}
	st.answers = append(st.answers, fail, fail, fail, fail, fail)
	for clk.fireNext() {
		if len(st.calls) > len(want) {
			break
		}
	}
	if len(st.calls) != len(want) {
		t.Fatalf("%d renewals tried at %v, want %d", len(st.calls), offsets(st.calls, t0), len(want))
	}
	for i, w := range want {
		if got := st.calls[i].Sub(t0); got != w.at || st.bounds[i] != w.bound {
			t.Fatalf("renewal %d at %v bounded by %v, want at %v bounded by %v; all at %v", i, got, st.bounds[i], w.at, w.bound, offsets(st.calls, t0))
		}
	}
	if got := clk.Now().Sub(t0); got != ms(613.75) {
		t.Fatalf("lease given up at %v, want at the owner's deadline 613.75ms", got)
	}
	if cause := context.Cause(wctx); !errors.Is(cause, ErrLockLost) {
		t.Fatalf("work's context ended with %v, want cause ErrLockLost", cause)
	}
	lost := l.stop()
	if !errors.Is(lost, ErrLockLost) || !errors.Is(lost, fail) {
		t.Fatalf("stop = %v, want ErrLockLost wrapping the last failure", lost)
	}
	// Every store call's context ends when the call has returned.
	for i, ctx := range st.ctxs {
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("context of renewal %d: Err = %v after the call, want Canceled", i, ctx.Err())
		}
	}
	failed := 0
	for _, ev := range *evs {
		if ev.Outcome == OutcomeRenewFailed && errors.Is(ev.Err, fail) && ev.Key == "k" {
			failed++
		}
	}
	if failed != 11 {
		t.Fatalf("%d renew_failed events, want one for each of the 11 failures", failed)
	}
}

func offsets(ts []time.Time, t0 time.Time) []time.Duration {
	out := make([]time.Duration, len(ts))
	for i, t := range ts {
		out[i] = t.Sub(t0)
	}
	return out
}

// A lease whose renewals all fail is given up at the owner's deadline from
// the claim, even if no renewal has been tried by then; the error is a
// plain ErrLockLost when no renewal failed.
func TestLeaseGivenUpAtDeadlineWithoutRenewal(t *testing.T) {
	clk := newVclock()
	st := &renewScript{clk: clk}
	l, wctx, _ := startLease(t, st, 300*time.Millisecond)
	// The machine stalled: the first renewal runs after the deadline.
	clk.mu.Lock()
	clk.now = clk.now.Add(270 * time.Millisecond)
	clk.mu.Unlock()
	clk.fireNext()
	if len(st.calls) != 0 {
		t.Fatalf("%d renewals tried at the deadline, want none", len(st.calls))
	}
	if cause := context.Cause(wctx); !errors.Is(cause, ErrLockLost) {
		t.Fatalf("work's context ended with %v, want cause ErrLockLost", cause)
	}
	if lost := l.stop(); lost != ErrLockLost {
		t.Fatalf("stop = %v, want ErrLockLost itself", lost)
	}
}

// A renewal whose timer fired just as the lease was stopped, or after the
// lease was lost, does nothing: no store call, no report.
func TestLeaseRenewalAfterStopOrLossDoesNothing(t *testing.T) {
	clk := newVclock()
	st := &renewScript{clk: clk}
	l, _, evs := startLease(t, st, 300*time.Millisecond)
	if err := l.stop(); err != nil {
		t.Fatalf("stop = %v", err)
	}
	if clk.fireNext() {
		t.Fatal("a renewal was still armed after stop")
	}
	if err := l.renewOnce(); err != nil || len(st.calls) != 0 || len(*evs) != 0 {
		t.Fatalf("renewal after stop: %v, %d store calls, events %v; want nothing", err, len(st.calls), *evs)
	}

	st = &renewScript{clk: clk, answers: []error{ErrLockLost}}
	l, wctx, evs := startLease(t, st, 300*time.Millisecond)
	clk.fireNext()
	if cause := context.Cause(wctx); !errors.Is(cause, ErrLockLost) || len(st.calls) != 1 {
		t.Fatalf("after the store answered ErrLockLost: cause %v, %d calls", cause, len(st.calls))
	}
	if clk.fireNext() {
		t.Fatal("a renewal was armed after the lease was lost")
	}
	if err := l.renewOnce(); err != nil || len(st.calls) != 1 {
		t.Fatalf("renewal after the loss: %v, %d store calls; want nothing", err, len(st.calls))
	}
	if len(*evs) != 0 {
		t.Fatalf("events %v, want none: a lost lease is the request's outcome, not an incident", *evs)
	}
	if lost := l.stop(); lost != ErrLockLost {
		t.Fatalf("stop = %v, want the store's ErrLockLost", lost)
	}
}

// The context of a store call on a store's own clock keeps the values of
// its parent, drops its cancellation, and ends at its deadline on that
// clock, whether the store asks Err or watches Done.
func TestClockCallCtx(t *testing.T) {
	clk := newVclock()
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	cancelParent()

	c := newStoreCall(parent, clk, time.Second)
	if c.Value(ctxKey{}) != "v" {
		t.Fatal("value of the parent lost")
	}
	if d, ok := c.Deadline(); !ok || !d.Equal(clk.Now().Add(time.Second)) {
		t.Fatalf("Deadline = %v %v, want the clock's now + 1s", d, ok)
	}
	if c.Err() != nil {
		t.Fatal("parent's cancellation reached the store call")
	}
	if s, ok := c.(interface{ String() string }); !ok || s.String() != "idem.storeCall" {
		t.Fatal("String does not name the store call")
	}
	c.cancel()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after cancel: %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after cancel")
	}

	// Err alone notices the deadline on the clock, at the deadline itself.
	c = newStoreCall(parent, clk, time.Second)
	clk.Sleep(context.Background(), time.Second-1)
	if c.Err() != nil {
		t.Fatal("ended before its deadline")
	}
	clk.Sleep(context.Background(), 1)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err at the deadline = %v", c.Err())
	}
	mustBeDone(t, c, "Done made after the end")
	c.cancel()
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatal("cancel after the deadline changed Err")
	}

	// Done closes when the clock reaches the deadline; a derived context
	// ends with it.
	c = newStoreCall(parent, clk, time.Second)
	child, stop := context.WithCancel(c)
	defer stop()
	done := c.Done()
	select {
	case <-done:
		t.Fatal("Done closed before the deadline")
	default:
	}
	if !clk.fireNext() {
		t.Fatal("Done armed no timer for the deadline")
	}
	mustBeDone(t, c, "Done at the deadline")
	select { // a derived context learns of the end from a goroutine
	case <-child.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a derived context outlived the call")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", c.Err())
	}
	c.cancel()
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatal("cancel after the deadline changed Err")
	}

	// Done asked after the deadline has passed closes at once; cancel
	// stops the timer of a Done asked before.
	c = newStoreCall(parent, clk, time.Second)
	clk.Sleep(context.Background(), time.Second)
	mustBeDone(t, c, "Done asked at the deadline")
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err after a Done asked at the deadline = %v", c.Err())
	}
	c = newStoreCall(parent, clk, time.Second)
	c.Done()
	c.cancel()
	if clk.fireNext() {
		t.Fatal("the deadline's timer still armed after cancel")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", c.Err())
	}
}

func mustBeDone(t *testing.T, c context.Context, what string) {
	t.Helper()
	select {
	case <-c.Done():
	default:
		t.Fatalf("%s: not closed", what)
	}
}

// However the work ends (a result, a panic), its lease stops with it: no
// renewal stays armed for a key that is completed or released.
func TestExecuteStopsLeaseWhenWorkEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		work workFunc
	}{
		{"result", func(context.Context) ([]byte, bool) { return []byte("r"), true }},
		{"not kept", func(context.Context) ([]byte, bool) { return nil, false }},
		{"panic", func(context.Context) ([]byte, bool) { panic("boom") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newVclock()
			st := &renewScript{clk: clk}
			cfg, err := build([]Option{WithLockTTL(300 * time.Millisecond)}, forRunner)
			if err != nil {
				t.Fatal(err)
			}
			e := newEngine(st, cfg, newBackgroundSlots())
			func() {
				defer func() { recover() }()
				e.execute(context.Background(), "k", "tok", clk.Now(), new(lease), Event{Key: "k"}, tc.work)
			}()
			if clk.fireNext() {
				t.Fatalf("a renewal was still armed after the work ended (%d renewals made)", len(st.calls))
			}
		})
	}
}

// A duplicate under WithWait polls on virtual time after pauses of 10ms,
// doubling up to 250ms, each cut to the lease the record has left and to
// the end of the wait; it stops at the end of the wait with the record it
// last met, or takes the key over, with its lease counted from the
// winning claim.
func TestWaitScheduleOnVirtualTime(t *testing.T) {
	ms := func(d float64) time.Duration { return time.Duration(d * float64(time.Millisecond)) }
	running := &Record{State: StateInProgress, Fingerprint: "fp", Token: "other", LeaseLeft: time.Hour}
	for _, tc := range []struct {
		name  string
		wait  time.Duration
		claim func(n int) (*Record, error)
		want  []time.Duration // when each claim was made
		won   bool
	}{
		{"wait ends", time.Second, func(int) (*Record, error) { return running, nil },
			[]time.Duration{0, ms(10), ms(30), ms(70), ms(150), ms(310), ms(560), ms(810), ms(1000)}, false},
		{"short wait", ms(25), func(int) (*Record, error) { return running, nil },
			[]time.Duration{0, ms(10), ms(25)}, false},
		{"short lease", time.Second, func(n int) (*Record, error) {
			if n == 4 {
				return nil, nil // the lease ended: the key is the caller's
			}
			r := *running
			r.LeaseLeft = ms(15)
			return &r, nil
		}, []time.Duration{0, ms(10), ms(25), ms(40)}, true},
		{"key reused meanwhile", time.Second, func(n int) (*Record, error) {
			if n == 2 {
				return &Record{State: StateInProgress, Fingerprint: "another", Token: "third", LeaseLeft: time.Hour}, nil
			}
			return running, nil
		}, []time.Duration{0, ms(10)}, false},
		{"completed meanwhile", time.Second, func(n int) (*Record, error) {
			if n == 3 {
				return &Record{State: StateCompleted, Fingerprint: "fp", ExpiresIn: time.Hour, Result: []byte("r")}, nil
			}
			return running, nil
		}, []time.Duration{0, ms(10), ms(30)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newVclock()
			st := &renewScript{clk: clk, claim: tc.claim}
			cfg, err := build([]Option{WithWait(tc.wait)}, forRunner)
			if err != nil {
				t.Fatal(err)
			}
			e := newEngine(st, cfg, newBackgroundSlots())
			t0 := clk.Now()
			_, rec, since, err := e.claim(context.Background(), "k", "fp", Event{})
			if err != nil || (rec == nil) != tc.won {
				t.Fatalf("claim = %v, %v; want the key won: %v", rec, err, tc.won)
			}
			got := offsets(st.claims, t0)
			if len(got) != len(tc.want) {
				t.Fatalf("claims at %v, want at %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("claims at %v, want at %v", got, tc.want)
				}
			}
			if last := st.claims[len(st.claims)-1]; tc.won && !since.Equal(last) {
				t.Fatalf("the lease counts from %v, want from the winning claim at %v", since.Sub(t0), last.Sub(t0))
			}
		})
	}
}
