package storetest_test

import (
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
	"github.com/idemgo/idem/storetest"
)

// A store's own test runs the whole suite in one call, with a fresh store
// per sub-test. Put this in a _test.go file of the store's package, as
// func TestConformance(t *testing.T).
func ExampleRun() {
	conformance := func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) idem.Store {
			st := memstore.New()
			t.Cleanup(func() { st.Close() })
			return st
		})
	}
	_ = conformance
}

// A store with a clock of its own makes the expiry cases instant, and a
// store over the network may race for fewer rounds.
func ExampleRunConfig() {
	conformance := func(t *testing.T) {
		var clock *fakeClock
		storetest.RunConfig(t, storetest.Config{
			NewStore: func(t *testing.T) idem.Store {
				clock = &fakeClock{now: time.Unix(1_700_000_000, 0)}
				st := memstore.New(memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
				t.Cleanup(func() { st.Close() })
				return st
			},
			Wait:        func(_ *testing.T, d time.Duration) { clock.now = clock.now.Add(d) },
			ClaimRounds: 200,
		})
	}
	_ = conformance
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
