package rueidisstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines are still running once every test
// has finished: a store, client or server left behind by a test, or by the
// package under test. One kind is let go: after a connection fails (the
// fault tests stop their server), rueidis waits in a goroutine of its own
// before it refreshes its view of the servers, and that goroutine ends by
// itself after its delay, whatever the client's state.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
}
