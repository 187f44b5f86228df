package memstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem/memstore"
)

// Close waits for a sweep in progress to end: once Close has returned, the
// sweeper touches the store no more.
func TestCloseWaitsForSweep(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	blocking := true
	var mu sync.Mutex
	// Only the sweeper reads the clock in this test: its first sweep
	// blocks inside DeleteExpired until the test releases it.
	clock := func() time.Time {
		mu.Lock()
		b := blocking
		mu.Unlock()
		if b {
			once.Do(func() { close(entered) })
			<-release
		}
		return time.Unix(1_700_000_000, 0)
	}
	s := memstore.New(memstore.WithClock(clock), memstore.WithSweepInterval(time.Millisecond))
	<-entered
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	// Close must not return while the sweep runs. Waiting cannot make
	// this check fail on a slow machine, only miss a fault.
	select {
	case <-closed:
		t.Fatal("Close returned while the sweeper was still sweeping")
	case <-time.After(200 * time.Millisecond):
	}
	mu.Lock()
	blocking = false
	mu.Unlock()
	close(release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s of the sweep's end")
	}
}
