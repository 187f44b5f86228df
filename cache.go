package idem

import (
	"net/http"
	"sync"
	"time"
)

// WithReplayCache keeps completed responses in this process, so that a
// replay is answered with no store call. The cache holds at most maxEntries
// responses and maxBytes bytes (response bytes plus a fixed overhead per
// entry, see the README); a response larger than a sixteenth of maxBytes is
// not kept. It is off by default.
//
// A completed record never changes until it expires, which makes this safe
// with one exception: an entry is kept for the time the store says the
// record has left, at most maxAge, so a record deleted in the store by hand
// (or lost by it) may still be replayed from the cache until its entry
// expires. The fingerprint is kept with the response: a request that reuses
// the key with another payload still gets 422. Entries are per Middleware
// and per scope.
func WithReplayCache(maxBytes int64, maxEntries int, maxAge time.Duration) Option {
	return func(c *config) {
		c.replayCache = cacheLimits{maxBytes: maxBytes, maxEntries: maxEntries, maxAge: maxAge}
		c.given |= optReplayCache
	}
}

type cacheLimits struct {
	maxBytes   int64
	maxEntries int
	maxAge     time.Duration
}

// entryOverhead is what an entry costs besides its key, fingerprint and
// encoded response: the entry, the decoded headers, the map slot.
const entryOverhead = 256

// replayCache is a bounded LRU of completed responses by scoped key. A nil
// *replayCache is a cache that is off: every method does nothing.
type replayCache struct {
	limits cacheLimits
	now    func() time.Time

	mu    sync.Mutex
	m     map[string]*cacheEntry
	lru   cacheEntry // sentinel: lru.next is the most recently used
	bytes int64
}

type cacheEntry struct {
	key, fp    string
	resp       *Response // decoded, read-only
	values     int       // header and trailer values in resp, for one allocation on a hit
	expires    time.Time
	size       int64
	prev, next *cacheEntry
}

func newReplayCache(l cacheLimits) *replayCache {
	if l == (cacheLimits{}) {
		// WithReplayCache was not given (when it is, its bounds are
		// checked positive).
		return nil
	}
	c := &replayCache{limits: l, now: time.Now, m: make(map[string]*cacheEntry)}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

// clock returns the time before a store call, from which an entry made of
// its reply expires; zero when the cache is off.
func (c *replayCache) clock() time.Time {
	if c == nil {
		return time.Time{}
	}
	return c.now()
}

// replay answers the request from the cache and reports whether it did: a
// replay of the cached response, or 422 for another fingerprint.
func (c *replayCache) replay(w http.ResponseWriter, m *Middleware, key, fp string, ev Event) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	e := c.m[key]
	if e != nil && !c.now().Before(e.expires) {
		c.remove(e)
		e = nil
	}
	if e == nil {
		c.mu.Unlock()
		return false
	}
	c.touch(e)
	c.mu.Unlock()

	if ev.Outcome = decide(&Record{State: StateCompleted, Fingerprint: e.fp}, fp); ev.Outcome == OutcomeMismatch {
		m.answer(w, m.cfg.probs.keyReused, 0, ev)
		return true
	}
	ev.Outcome, ev.Status = OutcomeReplayed, e.resp.Status
	m.cfg.report(ev)
	writeReplay(w, e.replayCopy())
	return true
}

// replayCopy returns the entry's response with header and trailer values
// of its own, in one allocation: writeReplay hands them to w.Header(), and
// nothing that writes there later may change what other hits send.
func (e *cacheEntry) replayCopy() *Response {
	r := *e.resp
	vals := make([]string, e.values)
	clone := func(h http.Header) http.Header {
		if h == nil {
			return nil
		}
		out := make(http.Header, len(h))
		for k, vv := range h {
			if vv == nil {
				out[k] = nil // set to nil: keeps net/http from adding its own
				continue
			}
			n := copy(vals, vv)
			out[k] = vals[:n:n]
			vals = vals[n:]
		}
		return out
	}
	r.Header, r.Trailer = clone(e.resp.Header), clone(e.resp.Trailer)
	return &r
}

// addRecord keeps a completed record read from the store at asked (the time
// before the call), until the store's expiry or the cache's max age. A
// record without the store's expiry (ExpiresIn zero) gives an entry that
// ends at asked, which add does not keep: it might outlive the record.
func (c *replayCache) addRecord(key string, rec *Record, asked time.Time) {
	if c == nil || rec.State != StateCompleted {
		return
	}
	c.add(key, rec.Fingerprint, rec.Result, asked.Add(min(rec.ExpiresIn, c.limits.maxAge)))
}

// addResult keeps the response this process just stored with ttl. asked is
// a time before the Complete call, so the entry ends no later than the
// record.
func (c *replayCache) addResult(key, fp string, result []byte, ttl time.Duration, asked time.Time) {
	if c == nil {
		return
	}
	c.add(key, fp, result, asked.Add(min(ttl, c.limits.maxAge)))
}

func (c *replayCache) add(key, fp string, result []byte, expires time.Time) {
	size := int64(len(key)+len(fp)+len(result)) + entryOverhead
	if size > c.limits.maxBytes/16 || !c.now().Before(expires) {
		return
	}
	resp, err := DecodeResponse(result)
	if err != nil || resp.BodyOmitted {
		return
	}
	values := 0
	for _, h := range []http.Header{resp.Header, resp.Trailer} {
		for _, vv := range h {
			values += len(vv)
		}
	}
	e := &cacheEntry{key: key, fp: fp, resp: resp, values: values, expires: expires, size: size}

	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[key]; old != nil {
		c.remove(old)
	}
	c.m[key] = e
	c.bytes += size
	c.link(e)
	for c.bytes > c.limits.maxBytes || len(c.m) > c.limits.maxEntries {
		c.remove(c.lru.prev)
	}
}

// link puts e at the front of the LRU list. c.mu must be held.
func (c *replayCache) link(e *cacheEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	e.prev.next, e.next.prev = e, e
}

// touch moves e to the front. c.mu must be held.
func (c *replayCache) touch(e *cacheEntry) {
	if c.lru.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	c.link(e)
}

// remove drops e. c.mu must be held.
func (c *replayCache) remove(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(c.m, e.key)
	c.bytes -= e.size
}

// stats returns the number of entries and their bytes.
func (c *replayCache) stats() (entries int, bytes int64) {
	if c == nil {
		return 0, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m), c.bytes
}
