package memstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
	"github.com/idemgo/idem/storetest"
)

// memstore passes the shared conformance suite, in real time.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) idem.Store {
		s := memstore.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// fakeClock is a clock each test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// The suite again on a fake clock: the expiry rules hold however time is
// told.
func TestConformanceFakeClock(t *testing.T) {
	var clocks sync.Map // *testing.T -> *fakeClock
	storetest.RunConfig(t, storetest.Config{
		NewStore: func(t *testing.T) idem.Store {
			c := &fakeClock{now: time.Unix(1_700_000_000, 0)}
			clocks.Store(t, c)
			s := memstore.New(memstore.WithClock(c.Now), memstore.WithSweepInterval(0))
			t.Cleanup(func() { s.Close() })
			return s
		},
		Wait: func(t *testing.T, d time.Duration) {
			c, _ := clocks.Load(t)
			c.(*fakeClock).Advance(d)
		},
	})
}

// Expired records are swept, and an expired record counts as
// absent even before the sweep.
func TestSweep(t *testing.T) {
	c := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := memstore.New(memstore.WithClock(c.Now), memstore.WithSweepInterval(0))
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Claim(ctx, "lease", "tok", "fp", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "done", "tok", "fp", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "done", "tok", []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Second)
	if got := s.Len(); got != 2 {
		t.Fatalf("Len before sweep = %d, want 2", got)
	}
	if rec, err := s.Claim(ctx, "lease", "tok2", "fp", time.Second); err != nil || rec != nil {
		t.Fatalf("expired record not absent before sweep: %v %v", rec, err)
	}
	c.Advance(2 * time.Second)
	if n, err := s.DeleteExpired(ctx, 0); err != nil || n != 1 {
		t.Fatalf("DeleteExpired removed %d (%v), want 1 (the re-claimed lease, not the completed record)", n, err)
	}
	if got := s.Len(); got != 1 {
		t.Fatalf("Len after sweep = %d, want 1", got)
	}
}

// DeleteExpired removes no more than limit expired records at a time, as
// sqlstore's does.
func TestDeleteExpiredLimit(t *testing.T) {
	c := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := memstore.New(memstore.WithClock(c.Now), memstore.WithSweepInterval(0))
	defer s.Close()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if _, err := s.Claim(ctx, k, "tok", "fp", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Claim(ctx, "live", "tok", "fp", time.Hour); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Second)
	if n, err := s.DeleteExpired(ctx, 2); err != nil || n != 2 {
		t.Fatalf("DeleteExpired(2) = %d, %v; want 2", n, err)
	}
	if n, err := s.DeleteExpired(ctx, 0); err != nil || n != 3 {
		t.Fatalf("DeleteExpired(0) = %d, %v; want the 3 other expired records", n, err)
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want the live record only", s.Len())
	}
}

// The background sweeper runs on its own and stops on Close.
func TestSweeperRunsAndCloses(t *testing.T) {
	s := memstore.New(memstore.WithSweepInterval(5 * time.Millisecond))
	if _, err := s.Claim(context.Background(), "k", "tok", "fp", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("sweeper did not remove the expired record within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

func BenchmarkStore(b *testing.B) {
	s := memstore.New()
	defer s.Close()
	storetest.Bench(b, s)
}
