package idem

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"time"
)

// Defaults of the settings that options change.
const (
	DefaultTTL             = 24 * time.Hour
	DefaultLockTTL         = 30 * time.Second
	DefaultStoreTimeout    = 2 * time.Second
	DefaultHeader          = "Idempotency-Key"
	DefaultMaxKeyLength    = 255
	DefaultMaxBodySize     = 1 << 20
	DefaultMaxResponseSize = 1 << 20
)

// Option changes one setting of a middleware (New, NewMiddleware) or of a
// Runner (NewRunner, Do). Each setting has one option, whose documentation
// names its default. Options are checked when the middleware or Runner is
// built: an invalid one makes NewMiddleware or NewRunner return an error
// (New panics), never a request fail.
type Option func(*config)

// option names one option, to tell which were given.
type option uint32

const (
	optTTL option = 1 << iota
	optLockTTL
	optStoreTimeout
	optWait
	optMethods
	optHeader
	optMaxKeyLength
	optMaxBodySize
	optMaxResponseSize
	optRequiredKey
	optFailOpen
	optScope
	optFingerprint
	optResponsePolicy
	optHook
	optLogger
	optReplayCache
)

// httpOnly are the options that concern HTTP requests only, with the names
// a Runner's error gives them.
var httpOnly = []struct {
	opt  option
	name string
}{
	{optMethods, "WithMethods"},
	{optHeader, "WithHeader"},
	{optMaxBodySize, "WithMaxBodySize"},
	{optMaxResponseSize, "WithMaxResponseSize"},
	{optRequiredKey, "WithRequiredKey"},
	{optFailOpen, "WithFailOpen"},
	{optScope, "WithScope"},
	{optFingerprint, "WithFingerprint"},
	{optResponsePolicy, "WithResponsePolicy"},
	{optReplayCache, "WithReplayCache"},
}

// config is the settings of one middleware or Runner. Options only record
// what they were given; build checks everything, in one place.
type config struct {
	given        option
	nilOption    bool
	ttl          time.Duration
	lockTTL      time.Duration
	storeTimeout time.Duration
	wait         time.Duration
	methods      []string
	header       string
	maxKeyLen    int
	maxBody      int64
	maxResponse  int64
	requireKey   bool
	failOpen     bool
	scope        func(*http.Request) string
	fingerprint  FingerprintFunc
	keep         func(status int) bool
	hook         func(Event)
	logger       *slog.Logger
	replayCache  cacheLimits

	// Derived by build.
	renewEvery      time.Duration
	leaseMargin     time.Duration
	lockRetryAfter  int
	storeRetryAfter int
	captureMax      int // maxResponse as an int, for the capture
	probs           *problems
}

func defaultConfig() config {
	return config{
		ttl:          DefaultTTL,
		lockTTL:      DefaultLockTTL,
		storeTimeout: DefaultStoreTimeout,
		methods:      []string{http.MethodPost, http.MethodPatch},
		header:       DefaultHeader,
		maxKeyLen:    DefaultMaxKeyLength,
		maxBody:      DefaultMaxBodySize,
		maxResponse:  DefaultMaxResponseSize,
		fingerprint:  Fingerprint,
		keep:         KeepBelow500,
	}
}

// use is what a config is built for.
type use uint8

const (
	forMiddleware use = iota
	forRunner
)

// build applies opts and checks every setting, returning an error that
// names each invalid one.
func build(opts []Option, u use) (*config, error) {
	c := defaultConfig()
	for _, o := range opts {
		if o == nil {
			c.nilOption = true
			continue
		}
		o(&c)
	}
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("idem: "+format, args...))
	}
	if c.nilOption {
		fail("nil Option")
	}
	if u == forRunner {
		for _, h := range httpOnly {
			if c.given&h.opt != 0 {
				fail("%s concerns HTTP requests only; a Runner (and Do) does not use it", h.name)
			}
		}
	}
	if c.ttl <= 0 {
		fail("WithTTL(%v): want a positive duration", c.ttl)
	}
	if c.lockTTL < 10*time.Millisecond {
		fail("lock TTL %v is shorter than 10ms", c.lockTTL)
	}
	if c.ttl > 0 && c.ttl < c.lockTTL {
		fail("retention TTL %v is shorter than the lock TTL %v", c.ttl, c.lockTTL)
	}
	if c.storeTimeout <= 0 {
		fail("WithStoreTimeout(%v): want a positive duration", c.storeTimeout)
	}
	// A renewal is due every third of the lock TTL. A store call that may
	// take longer than that could let the lease lapse while the work runs,
	// so the store timeout must fit: set explicitly it is refused, the
	// default one is shortened.
	if c.storeTimeout > c.lockTTL/3 {
		if c.given&optStoreTimeout != 0 {
			fail("store timeout %v is longer than a third of the lock TTL %v: one slow renewal could let the lease lapse while the handler runs", c.storeTimeout, c.lockTTL)
		} else {
			c.storeTimeout = c.lockTTL / 3
		}
	}
	if c.wait < 0 {
		fail("WithWait(%v): want zero or a positive duration", c.wait)
	}
	if len(c.methods) == 0 {
		fail("WithMethods: no method given")
	}
	for _, m := range c.methods {
		if !isToken(m) || strings.ToUpper(m) != m {
			fail("WithMethods: %q is not an upper-case method name", m)
		}
	}
	if !isToken(c.header) {
		fail("WithHeader(%q): not a header name", c.header)
	}
	c.header = http.CanonicalHeaderKey(c.header)
	if c.maxKeyLen <= 0 {
		fail("WithMaxKeyLength(%d): want a positive length", c.maxKeyLen)
	}
	if c.maxBody <= 0 {
		fail("WithMaxBodySize(%d): want a positive size", c.maxBody)
	}
	if c.maxResponse <= 0 {
		fail("WithMaxResponseSize(%d): want a positive size", c.maxResponse)
	}
	if c.given&optScope != 0 && c.scope == nil {
		fail("WithScope(nil)")
	}
	if c.fingerprint == nil {
		fail("WithFingerprint(nil)")
	}
	if c.keep == nil {
		fail("WithResponsePolicy(nil)")
	}
	if l := c.replayCache; c.given&optReplayCache != 0 && (l.maxBytes <= 0 || l.maxEntries <= 0 || l.maxAge <= 0) {
		fail("WithReplayCache(%d, %d, %v): want positive bounds", l.maxBytes, l.maxEntries, l.maxAge)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.renewEvery = c.lockTTL / 3
	c.leaseMargin = c.lockTTL / 10
	c.lockRetryAfter = ceilSeconds(c.lockTTL)
	c.storeRetryAfter = 1
	c.captureMax = int(min(c.maxResponse, math.MaxInt))
	if u == forMiddleware {
		c.probs = newProblems(c.header, c.maxKeyLen)
	}
	return &c, nil
}

// ceilSeconds rounds d up to whole seconds, at least 1: the form of
// Retry-After.
func ceilSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// WithTTL sets how long a completed response is kept and replayed
// (default DefaultTTL, 24h). Give each route its own middleware to give it
// its own TTL.
func WithTTL(d time.Duration) Option {
	return func(c *config) { c.ttl, c.given = d, c.given|optTTL }
}

// WithLockTTL sets the lease of an in-flight request (default
// DefaultLockTTL, 30s). The lease is renewed every third of it while the
// handler runs, so a slow handler keeps its key; if the process dies, the key
// is free again after at most this long. Must be at least 10ms.
//
// If no renewal succeeds for nine tenths of it, the owner gives the lease up
// before the store can: the handler's context is cancelled with cause
// ErrLockLost (see context.Cause), so that a handler that watches its
// context stops before a retry can run it again, and the response is not
// recorded. The store timeout must be at most a third of the lock TTL; the
// default one (2s) is shortened to that when the lock TTL is below 6s.
func WithLockTTL(d time.Duration) Option {
	return func(c *config) { c.lockTTL, c.given = d, c.given|optLockTTL }
}

// WithStoreTimeout bounds every store call (default DefaultStoreTimeout,
// 2s, or a third of the lock TTL if that is shorter). Store calls run on a
// context detached from the client's, so a client that hangs up never stops
// a response from being recorded. It must be at most a third of the lock
// TTL, so that a slow renewal leaves time to try again within the lease.
func WithStoreTimeout(d time.Duration) Option {
	return func(c *config) { c.storeTimeout, c.given = d, c.given|optStoreTimeout }
}

// WithWait makes a duplicate of an in-flight request wait up to d for the
// first one to finish and then get its response, instead of an immediate
// 409 (default 0: no waiting). While waiting, the store is polled with
// growing intervals; when d runs out the duplicate gets the 409.
func WithWait(d time.Duration) Option {
	return func(c *config) { c.wait, c.given = d, c.given|optWait }
}

// WithMethods sets the request methods that the middleware protects
// (default POST and PATCH). Requests with other methods pass straight
// through with no store call. Method names are case-sensitive: each must be
// an upper-case token such as "PUT" ("put" would never match a request and
// is refused). The slice is copied.
func WithMethods(methods ...string) Option {
	methods = append([]string(nil), methods...)
	return func(c *config) { c.methods, c.given = methods, c.given|optMethods }
}

// WithHeader sets the name of the request header that carries the key
// (default DefaultHeader, "Idempotency-Key"). The middleware's problem
// responses name it.
func WithHeader(name string) Option {
	return func(c *config) { c.header, c.given = name, c.given|optHeader }
}

// WithMaxKeyLength sets the longest key accepted, in bytes, not counting the
// quotes of the quoted form (default DefaultMaxKeyLength, 255). Longer keys
// are answered 400 with a detail that states the limit (Do refuses them
// with ErrInvalidKey).
func WithMaxKeyLength(n int) Option {
	return func(c *config) { c.maxKeyLen, c.given = n, c.given|optMaxKeyLength }
}

// WithMaxBodySize sets the largest request body of a keyed request, in
// bytes (default DefaultMaxBodySize, 1 MiB). The body is read once to be
// fingerprinted and then handed to the handler; a larger body is answered
// 413 and the handler does not run.
func WithMaxBodySize(n int64) Option {
	return func(c *config) { c.maxBody, c.given = n, c.given|optMaxBodySize }
}

// WithMaxResponseSize sets the largest response body kept for replay, in
// bytes (default DefaultMaxResponseSize, 1 MiB). A handler that writes more
// has its response streamed to the client as it is written; the key is then
// recorded as done without its body, and duplicates get a 409
// response-not-replayable problem instead of the body.
func WithMaxResponseSize(n int64) Option {
	return func(c *config) { c.maxResponse, c.given = n, c.given|optMaxResponseSize }
}

// WithRequiredKey makes the key mandatory: a protected request without the
// key header is answered 400 (default: such requests pass through
// unprotected).
func WithRequiredKey() Option {
	return func(c *config) { c.requireKey, c.given = true, c.given|optRequiredKey }
}

// WithFailOpen makes the middleware run the handler without protection when
// the store cannot be reached (default: fail closed, answering 503 with
// Retry-After and not running the handler). Fail-open keeps the API up during
// a store outage at the price of possible duplicate executions; each such
// request is reported to the hook as OutcomeStoreError. A record the store
// holds but cannot read (ErrCorruptRecord: written by a newer release, or
// damaged) is not an outage: it is answered 503 with or without fail-open,
// since it may stand for a completed request.
func WithFailOpen() Option {
	return func(c *config) { c.failOpen, c.given = true, c.given|optFailOpen }
}

// WithScope sets the function that names the principal a request acts for,
// such as an account ID from authentication (default: one scope for all).
// The scope's digest is part of the stored key, so two principals sending
// the same key never see each other's records. The scope itself is neither
// stored nor logged (only a SHA-256 digest of it), so it may be derived from
// a credential; still, prefer a stable principal ID to a raw token, whose
// rotation would start a new scope.
func WithScope(f func(r *http.Request) string) Option {
	return func(c *config) { c.scope, c.given = f, c.given|optScope }
}

// WithFingerprint replaces the fingerprint function (default Fingerprint;
// see also FingerprintHeaders and CanonicalJSON).
func WithFingerprint(f FingerprintFunc) Option {
	return func(c *config) { c.fingerprint, c.given = f, c.given|optFingerprint }
}

// WithResponsePolicy sets which responses are stored and replayed, by
// status (default KeepBelow500). A response that is not kept releases the
// key, so a retry runs the handler again, unless the handler called
// MarkCommitted for its request.
func WithResponsePolicy(keep func(status int) bool) Option {
	return func(c *config) { c.keep, c.given = keep, c.given|optResponsePolicy }
}

// KeepBelow500 is the default response policy: 2xx, 3xx and 4xx responses
// are stored; 5xx responses are not, so the client may retry.
func KeepBelow500(status int) bool { return status < 500 }

// WithHook sets a function called once for every outcome (see Event). It
// runs on the request's goroutine, before the response is sent, and must be
// quick and must not keep the event's Request. Failed renewals and
// background releases are reported from their own goroutines, so the hook
// must be safe for concurrent use.
func WithHook(f func(Event)) Option {
	return func(c *config) { c.hook, c.given = f, c.given|optHook }
}

// WithLogger logs every outcome through l: executions and replays at Debug,
// conflicts, mismatches and refused keys at Info, failed renewals and
// releases at Warn, store errors, lost locks and panics at Error. By
// default (or with a nil l) only what is logged at Error is, through
// slog.Default(), so that a store that fails is never silent; to drop it
// too, pass a logger whose handler discards it. A scope is never logged,
// only the first 16 hex digits of its SHA-256 (scope_digest).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger, c.given = l, c.given|optLogger }
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
