package idem_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/clock"
	"github.com/idemgo/idem/memstore"
)

// virtualClock is an engine clock that moves only when the test moves it;
// a timer fires, in a goroutine of its own, when the clock passes its time.
type virtualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*virtualTimer]bool // the armed ones
}

type virtualTimer struct {
	c    *virtualClock
	when time.Time
	f    func()
}

func newVirtualClock() *virtualClock {
	return &virtualClock{now: time.Unix(1_700_000_000, 0), timers: map[*virtualTimer]bool{}}
}

func (c *virtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock by d and fires the timers it passes.
func (c *virtualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*virtualTimer
	for t := range c.timers {
		if !t.when.After(c.now) {
			due = append(due, t)
			delete(c.timers, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		go t.f()
	}
}

func (c *virtualClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	t := &virtualTimer{c: c, f: f}
	t.Reset(d)
	return t
}

func (c *virtualClock) Sleep(ctx context.Context, d time.Duration) bool {
	woke := make(chan struct{})
	t := c.AfterFunc(d, func() { close(woke) })
	select {
	case <-woke:
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

func (t *virtualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	armed := t.c.timers[t]
	delete(t.c.timers, t)
	return armed
}

func (t *virtualTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	armed := t.c.timers[t]
	t.when = t.c.now.Add(d)
	t.c.timers[t] = true
	t.c.mu.Unlock()
	if d <= 0 {
		t.c.Advance(0)
	}
	return armed
}

// virtualTimeStore gives the engine its clock (clock.Source).
type virtualTimeStore struct {
	idem.Store
	clk *virtualClock
}

func (s virtualTimeStore) Clock() clock.Clock { return s.clk }

// An owner whose renewals all fail gives its key up, cancelling its
// handler's context with ErrLockLost, when nine tenths of the lock TTL
// have passed since its last good renewal or claim: not a moment later,
// so that it stops before the store's lease ends and a retry may run; and
// not sooner, while a renewal could still save the lease.
func TestOwnerGivesUpAtNineTenthsOfTheLease(t *testing.T) {
	clk := newVirtualClock()
	mem := memstore.New(memstore.WithClock(clk.Now), memstore.WithSweepInterval(0))
	t.Cleanup(func() { mem.Close() })
	blips := newBlipStore(mem, 1<<30) // every renewal fails
	st := virtualTimeStore{Store: blips, clk: clk}

	const lockTTL = time.Minute
	started := make(chan struct{})
	lost := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		lost <- context.Cause(r.Context())
	})
	mw := idem.New(st, idem.WithLockTTL(lockTTL))(h)
	done := make(chan struct{})
	go func() { do(mw, "POST", "/", "k", "x"); close(done) }()
	<-started

	clk.Advance(lockTTL*9/10 - 1)
	waitFor(t, "a failed renewal", func() bool { return blips.failedRenews.Load() >= 1 })
	select {
	case err := <-lost:
		t.Fatalf("the owner gave up before nine tenths of the lease: %v", err)
	default:
	}

	clk.Advance(1)
	select {
	case err := <-lost:
		if !errors.Is(err, idem.ErrLockLost) {
			t.Fatalf("handler context ended with %v, want ErrLockLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the owner still held the key at nine tenths of the lease")
	}
	<-done
}

// renewTimesStore records the engine clock's time of every Renew.
type renewTimesStore struct {
	idem.Store
	clk *virtualClock

	mu sync.Mutex
	at []time.Time
}

func (s *renewTimesStore) Clock() clock.Clock { return s.clk }

func (s *renewTimesStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.at = append(s.at, s.clk.Now())
	s.mu.Unlock()
	return s.Store.Renew(ctx, key, token, lease)
}

func (s *renewTimesStore) times() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.at...)
}

// While its handler runs, an owner renews its lease every third of the
// lock TTL, counted from the claim and then from each renewal: never
// sooner, which would only load the store.
func TestOwnerRenewsEveryThirdOfTheLease(t *testing.T) {
	clk := newVirtualClock()
	mem := memstore.New(memstore.WithClock(clk.Now), memstore.WithSweepInterval(0))
	t.Cleanup(func() { mem.Close() })
	st := &renewTimesStore{Store: mem, clk: clk}

	const lockTTL = time.Minute
	claimed := clk.Now()
	started, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		w.WriteHeader(http.StatusCreated)
	})
	mw := idem.New(st, idem.WithLockTTL(lockTTL))(h)
	done := make(chan struct{})
	go func() { do(mw, "POST", "/", "k", "x"); close(done) }()
	<-started
	for i := 1; i <= 3; i++ {
		clk.Advance(lockTTL / 3)
		waitFor(t, "a renewal", func() bool { return len(st.times()) >= i })
	}
	close(release)
	<-done
	for i, at := range st.times()[:3] {
		if want := claimed.Add(time.Duration(i+1) * lockTTL / 3); !at.Equal(want) {
			t.Errorf("renewal %d at %v after the claim, want %v", i+1, at.Sub(claimed), want.Sub(claimed))
		}
	}
}
