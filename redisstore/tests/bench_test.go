package redisstore_test

import (
	"testing"

	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/storetest"
)

// The store's share of a new request and a replay (Claim, Complete,
// Claim), under parallel load.

func BenchmarkMiniredis(b *testing.B) {
	_, c := newMini(b)
	storetest.Bench(b, redisstore.New(c))
}

func BenchmarkRedis(b *testing.B) {
	c := realClient(b)
	storetest.Bench(b, redisstore.New(c, redisstore.WithPrefix(runPrefix(b, c))))
}

func BenchmarkCluster(b *testing.B) {
	c := clusterClient(b)
	storetest.Bench(b, redisstore.New(c, redisstore.WithPrefix(runPrefix(b, c))))
}
