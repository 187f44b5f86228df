package idem

import "time"

// SetReplayCacheClock gives the replay cache of m the clock now, so that
// tests can move it with the store's.
func SetReplayCacheClock(m *Middleware, now func() time.Time) { m.cache.now = now }

// ReplayCacheStats returns the number of entries in the replay cache of m
// and the bytes they count for.
func ReplayCacheStats(m *Middleware) (entries int, bytes int64) { return m.cache.stats() }

// JobKeyForTest names the store key of a key of Do.
func JobKeyForTest(key string) string { return jobKeyPrefix + key }
