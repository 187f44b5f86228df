// Package rueidisstore_test holds the tests of rueidisstore against a real
// Redis node, a real Redis Cluster and miniredis, and the tests that
// rueidisstore and redisstore read each other's records. It is a module of
// its own so that miniredis, go-redis and the test helpers never reach the
// module graph of rueidisstore's users.
package rueidisstore_test
