package linearize_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines are still running once every test
// has finished: a store, client or fault storm left behind. Toxiproxy's
// own toxic goroutines are the exception: a stopped proxy may leave one
// blocked on a link it no longer reads.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"))
}
