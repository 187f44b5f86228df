package rueidisstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines are still running once every test
// has finished: a store, client or server left behind by a test, or by the
// package under test. Two kinds are let go, both rueidis's own and both
// ending by themselves after a delay, whatever the client's state: after a
// connection fails (the fault tests stop their server) it waits before it
// refreshes its view of the servers, and a cluster client that refreshed
// its slots sleeps (5s) before it may refresh again.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"))
}
