package sqlstore_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// sweepFixture is a migrated SQLite table opened through a faultConnector,
// with no sweeper of its own.
func sweepFixture(t *testing.T) (fixture, *faultConnector) {
	t.Helper()
	return backends[0].faultFixture(t)
}

// Without an error handler the sweeper drops its errors and sweeps again
// at the next tick.
func TestSweepErrorsWithoutHandlerAreDropped(t *testing.T) {
	f, fc := sweepFixture(t)
	third := make(chan struct{})
	var sweeps atomic.Int64
	fc.inject(func(q string) error {
		if !isSweep(q) {
			return nil
		}
		if sweeps.Add(1) == 3 {
			close(third)
		}
		return errors.New("injected sweep failure")
	})
	defer fc.inject(nil)
	s := newStore(t, f.db, sqlstore.SQLite, f.table, sqlstore.WithSweepInterval(time.Millisecond))
	select {
	case <-third: // two failed sweeps are behind it
	case <-time.After(10 * time.Second):
		t.Fatalf("the sweeper ran %d statements in 10s, want 3", sweeps.Load())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// Close waits for a sweep batch under way, which it does not cancel: the
// batch finishes, and once Close has returned no sweep statement runs.
func TestCloseWaitsForSweepBatch(t *testing.T) {
	f, fc := sweepFixture(t)
	ctx := testCtx(t)
	if rec, err := f.store.Claim(ctx, "k", "tok", "fp", time.Hour); err != nil || rec != nil {
		t.Fatalf("Claim: %v %v", rec, err)
	}
	f.expire(t, sqlstore.SQLite, "k")
	var (
		started = make(chan struct{})
		release = make(chan struct{})
		once    sync.Once
		closed  atomic.Bool
		late    atomic.Int64
	)
	fc.inject(func(q string) error {
		if !isSweep(q) {
			return nil
		}
		if closed.Load() {
			late.Add(1)
		}
		once.Do(func() {
			close(started)
			<-release
		})
		return nil
	})
	defer fc.inject(nil)
	s := newStore(t, f.db, sqlstore.SQLite, f.table, sqlstore.WithSweepInterval(time.Millisecond))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no sweep within 10s")
	}
	done := make(chan struct{})
	go func() {
		s.Close()
		closed.Store(true)
		close(done)
	}()
	// How long the test looks for a Close that does not wait; not a
	// bound on anything.
	select {
	case <-done:
		t.Fatal("Close returned while a sweep batch was running")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s of the batch's end")
	}
	if got := f.rows(t); got != 0 {
		t.Fatalf("%d rows after Close, want the batch under way to have deleted the expired one", got)
	}
	if n := late.Load(); n != 0 {
		t.Fatalf("%d sweep statements after Close returned", n)
	}
}
