// Package redisstore_test holds the tests of redisstore against a real Redis
// node, a real Redis Cluster and miniredis. It is a module of its own so
// that miniredis and the servers' test helpers never reach the module graph
// of redisstore's users.
package redisstore_test
