package redisstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines are still running once every test
// has finished: a store, client or sweeper left behind by a test, or by
// the package under test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
