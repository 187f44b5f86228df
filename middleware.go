package idem

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"time"
)

// Middleware protects handlers with idempotency keys. Build it with
// NewMiddleware (or New) and wrap handlers with Handler. One Middleware
// holds one set of settings; build one per route to give routes different
// settings over one store.
type Middleware struct {
	e     engine
	cfg   *config
	cache *replayCache // nil unless WithReplayCache
}

// New returns middleware that protects the handlers it wraps with
// idempotency keys kept in store. It has the func(http.Handler)
// http.Handler shape of net/http, chi (r.Use, r.With) and gorilla/mux
// (r.Use). It panics if an option is invalid, as a configuration error
// should stop a program at start-up; NewMiddleware returns the error
// instead.
func New(store Store, opts ...Option) func(http.Handler) http.Handler {
	m, err := NewMiddleware(store, opts...)
	if err != nil {
		panic(err)
	}
	return m.Handler
}

// NewMiddleware returns a Middleware over store, or an error naming every
// invalid option.
func NewMiddleware(store Store, opts ...Option) (*Middleware, error) {
	if store == nil {
		return nil, errNilStore
	}
	cfg, err := build(opts, forMiddleware)
	if err != nil {
		return nil, err
	}
	return &Middleware{e: newEngine(store, cfg, newBackgroundSlots()), cfg: cfg, cache: newReplayCache(cfg.replayCache)}, nil
}

// Handler wraps next. Requests whose method is protected (WithMethods) and
// that carry a key run next at most once per key and scope; every other
// request goes straight to next.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.serve(w, r, next)
	})
}

func (m *Middleware) protects(method string) bool {
	for _, p := range m.cfg.methods {
		if p == method {
			return true
		}
	}
	return false
}

// request is the state of one keyed request, allocated once.
type request struct {
	m     *Middleware
	next  http.Handler
	r     *http.Request // the request as the handler sees it
	c     *capture
	info  requestInfo
	body  bodyReader
	lease lease
	limit io.LimitedReader
	// cancelled: the handler wrote nothing while its request context was
	// done; nothing is recorded.
	cancelled bool
	kept      bool          // the response was to be recorded
	ran       time.Duration // how long the handler ran
	fp        string
	asked     time.Time // before the claim, for the replay cache
}

func (m *Middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	cfg := m.cfg
	if !m.protects(r.Method) {
		next.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	key, err := parseKey(r.Header.Values(cfg.header), cfg.maxKeyLen)
	if err != nil {
		if err == errKeyMissing && !cfg.requireKey {
			next.ServeHTTP(w, r)
			return
		}
		m.answer(w, cfg.probs.key(err), 0, Event{Outcome: OutcomeRejected, Request: r, start: start})
		return
	}
	q := &request{m: m, next: next}
	q.info.key, q.info.http = key, true
	if cfg.scope != nil {
		q.info.scope = cfg.scope(r)
	}
	ev := Event{Key: key, Scope: q.info.scope, Request: r, start: start}

	body, ok := q.readBody(w, r, ev)
	if !ok {
		return
	}
	q.body.Reset(body)
	fp := cfg.fingerprint(r, body)
	skey := scopedKey(q.info.scope, key)
	if m.cache.replay(w, m, skey, fp, ev) {
		return
	}
	q.fp, q.asked = fp, m.cache.clock()

	token, rec, since, err := m.e.claim(r.Context(), skey, fp, ev)
	if err != nil {
		ev.Outcome, ev.Err = OutcomeStoreError, err
		// A record the store cannot read may stand for a completed
		// request: it is never a reason to run the handler.
		if cfg.failOpen && !errors.Is(err, ErrCorruptRecord) {
			cfg.report(ev)
			q.info.unguarded = true
			r2 := r.WithContext(withInfo(r.Context(), &q.info))
			r2.Body = &q.body
			next.ServeHTTP(w, r2)
			return
		}
		m.answer(w, cfg.probs.storeUnavailable, cfg.storeRetryAfter, ev)
		return
	}
	if rec != nil {
		m.cache.addRecord(skey, rec, q.asked)
		m.answerExisting(w, rec, fp, ev)
		return
	}
	q.execute(w, r, skey, token, since, ev)
}

// execute runs the handler as the owner of the key, records its response,
// then sends it.
func (q *request) execute(w http.ResponseWriter, r *http.Request, skey, token string, since time.Time, ev Event) {
	m, cfg := q.m, q.m.cfg
	q.r = r
	q.c = newCapture(w, cfg.captureMax)
	defer q.c.free()

	result, stored, err := m.e.execute(withInfo(r.Context(), &q.info), skey, token, since, &q.lease, ev, q)
	ev.Outcome, ev.Err, ev.Stored, ev.HandlerDuration = outcomeOf(err), err, stored, q.ran
	if stored && err == nil {
		m.cache.addResult(skey, q.fp, result, cfg.ttl, q.asked)
	}
	if err != nil && !q.kept && errors.Is(err, ErrLockLost) {
		// The response was not to be recorded (a 5xx, say): the lost lease
		// changes nothing for the client, who gets the handler's answer as
		// under net/http. The event keeps the loss in Err.
		ev.Outcome, err = OutcomeExecuted, nil
	}
	c := q.c
	var begin *beginError
	if errors.As(err, &begin) {
		// The store could not begin the handler's unit of work: the
		// handler did not run and the key is released.
		m.answer(w, cfg.probs.storeUnavailable, cfg.storeRetryAfter, ev)
		return
	}
	if c.streaming {
		// Already sent; nothing more can be said to the client.
		ev.Status = c.status
		cfg.report(ev)
		return
	}
	if err != nil {
		// The handler ran but its response is not recorded: sending it would
		// give the client an answer that a retry cannot get again. The key
		// stays locked until its lease ends (with a WorkStore, whose unit of
		// work was rolled back, it is released). The answer carries the
		// headers of the outer handlers, not the handler's.
		c.restoreOuter()
		m.answer(w, cfg.probs.notRecorded, cfg.lockRetryAfter, ev)
		return
	}
	if q.cancelled {
		// net/http ends the response as it would have for the bare
		// handler; the client is gone.
		ev.Outcome = OutcomeCancelled
		cfg.report(ev)
		return
	}
	ev.Status = c.status
	cfg.report(ev)
	c.send()
}

// run is the work of the engine: the handler, writing into the capture,
// on the engine's context (cancelled if the lease is lost).
func (q *request) run(ctx context.Context) ([]byte, bool) {
	returned := false
	defer func() {
		if !returned && q.c.wroteHeader && !q.c.streaming {
			// The handler panicked. net/http would have held, or already
			// sent, what it wrote: hand it over, so that the client (and an
			// outer handler that recovers the panic) meets what it would
			// without the middleware. The key is released as the panic goes
			// on.
			q.c.stream()
		}
	}()
	r := q.r.WithContext(ctx)
	r.Body = &q.body
	start := time.Now()
	q.next.ServeHTTP(q.c, r)
	q.ran = time.Since(start)
	returned = true
	if !q.c.wroteHeader && q.r.Context().Err() != nil && !q.info.committed.Load() {
		// The handler gave up without an answer because its request was
		// cancelled (the client hung up): an empty 200 is not its answer.
		// The key is released, so that the client's retry runs it.
		q.cancelled = true
		return nil, false
	}
	q.c.finish()
	// A streamed response has reached the client in part: it is recorded
	// whatever its status, so that it is never run twice.
	if !q.c.streaming && !q.m.cfg.keep(q.c.status) && !q.info.committed.Load() {
		return nil, false
	}
	q.kept = true
	return q.c.record(), true
}

// readBody reads the whole body of r, up to the limit. On failure it has
// answered the request and returns false. The body is not pooled: the
// handler, or anything it hands r.Body to, may read it after the request
// is over.
func (q *request) readBody(w http.ResponseWriter, r *http.Request, ev Event) ([]byte, bool) {
	m := q.m
	limit := m.cfg.maxBody
	if r.ContentLength > limit {
		ev.Outcome = OutcomeRejected
		m.answer(w, probBodyTooLarge(limit), 0, ev)
		return nil, false
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	// The buffer starts small and grows with the bytes that arrive, never
	// beyond the announced length (plus a byte to see EOF): a client that
	// announces a large body and stalls holds no more memory than it sent.
	size, max := int64(512), int64(0)
	if r.ContentLength > 0 {
		max = r.ContentLength + 1
		size = min(max, initialBodyBuffer)
	}
	q.limit = io.LimitedReader{R: r.Body, N: limit + 1}
	body, err := readAll(&q.limit, size, max)
	q.limit.R = nil
	switch {
	case int64(len(body)) > limit || isMaxBytes(err):
		ev.Outcome = OutcomeRejected
		m.answer(w, probBodyTooLarge(limit), 0, ev)
		return nil, false
	case err != nil:
		ev.Outcome = OutcomeRejected
		m.answer(w, probBodyUnreadable, 0, ev)
		return nil, false
	}
	return body, true
}

// isMaxBytes reports whether err comes from an outer http.MaxBytesReader.
func isMaxBytes(err error) bool {
	if err == nil {
		return false
	}
	var tooLarge *http.MaxBytesError
	return errors.As(err, &tooLarge)
}

// initialBodyBuffer is the most that reading a body allocates before its
// first bytes arrive.
const initialBodyBuffer = 4 << 10

// readAll reads r to its end into a slice of initial capacity size that
// doubles as bytes arrive, up to max when max > 0 (the announced length plus
// one), so that a body of known length is never over-allocated.
func readAll(r io.Reader, size, max int64) ([]byte, error) {
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			grow := int64(cap(b))
			if int64(cap(b)) < max { // never when max is 0
				grow = min(grow, max-int64(cap(b)))
			}
			b = slices.Grow(b, int(grow))
		}
	}
}

// bodyReader hands the handler the body the middleware read, so that it
// reads the same bytes it would have read without the middleware.
type bodyReader struct{ bytes.Reader }

func (*bodyReader) Close() error { return nil }
