package idem

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Runner runs units of work at most once per key, without HTTP: for job
// workers and queue consumers. It is the flow of the middleware over the
// same stores: the first caller of a key claims it, runs the work while
// renewing its lease, stores the result and returns it; later callers get
// the stored result while it is kept (WithTTL, default 24h).
//
// Build one with NewRunner and share it: its options are checked once, and
// it is safe for concurrent use.
type Runner struct {
	e engine
}

// NewRunner returns a Runner over store, or an error naming every invalid
// option. Options that concern HTTP only (WithMethods, WithHeader,
// WithMaxBodySize, WithMaxResponseSize, WithRequiredKey, WithFailOpen,
// WithScope, WithFingerprint, WithResponsePolicy) are refused, since a
// Runner would silently ignore them. The others apply: WithTTL,
// WithLockTTL, WithStoreTimeout, WithWait, WithMaxKeyLength, WithHook and
// WithLogger.
func NewRunner(store Store, opts ...Option) (*Runner, error) {
	return newRunner(store, opts, newBackgroundSlots())
}

func newRunner(store Store, opts []Option, bg chan struct{}) (*Runner, error) {
	if store == nil {
		return nil, errNilStore
	}
	cfg, err := build(opts, forRunner)
	if err != nil {
		return nil, err
	}
	return &Runner{e: newEngine(store, cfg, bg)}, nil
}

// Do runs fn at most once per key among all callers that share the store,
// and returns fn's result to every later caller of the same key while it is
// kept.
//
//   - The first caller claims key, runs fn while renewing its lease
//     (WithLockTTL), stores the result and returns it.
//   - A caller that finds the result stored gets it without running fn.
//   - A caller that finds fn running gets an *InProgressError (or, with
//     WithWait, waits for the result).
//   - A caller whose fingerprint differs from the stored one gets
//     ErrFingerprintMismatch. The fingerprint names the work's input, so
//     that a key reused for other work is caught; FingerprintBytes makes
//     one from a payload.
//   - If fn returns an error, nothing is stored, the key is released, and
//     the error is returned: a later call runs fn again. To keep a failure,
//     encode it in the result and return a nil error.
//   - If fn panics, the key is released and the panic goes on.
//   - Store failures are returned wrapped in ErrStoreUnavailable. If fn ran
//     but its result could not be stored (the store failed, or the lease
//     was lost), Do returns fn's result together with the error; if fn
//     failed too, the error holds both (errors.Is finds each).
//   - A key that is empty, longer than WithMaxKeyLength (default 255) or not
//     visible ASCII is refused with ErrInvalidKey, a nil fn with an error,
//     and a ctx that has already ended with its error, all before any store
//     call.
//
// If the caller dies while fn runs, its lease expires after the lock TTL
// and the next caller runs fn again: at-least-once, never concurrently. If
// the lease is lost while fn runs, fn's context is cancelled with cause
// ErrLockLost. ctx is passed to fn (with KeyFromContext set); store calls
// use a copy of ctx that is not cancelled with it, bounded by
// WithStoreTimeout. Keys of a Runner are stored as "do|" + key, a
// namespace of their own: they never meet the keys of HTTP requests.
func (r *Runner) Do(ctx context.Context, key, fingerprint string, fn func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	e := &r.e
	if fn == nil {
		return nil, errNilWork
	}
	if err := checkJobKey(key, e.cfg.maxKeyLen); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	skey := jobKeyPrefix + key
	ev := Event{Key: key, start: time.Now()}
	token, rec, since, err := e.claim(ctx, skey, fingerprint, ev)
	if err != nil {
		ev.Outcome, ev.Err = OutcomeStoreError, err
		e.cfg.report(ev)
		return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	if rec != nil {
		ev.Outcome = decide(rec, fingerprint)
		e.cfg.report(ev)
		switch ev.Outcome {
		case OutcomeMismatch:
			return nil, ErrFingerprintMismatch
		case OutcomeConflict:
			return nil, &InProgressError{RetryAfter: rec.LeaseLeft}
		}
		return bytes.Clone(rec.Result), nil // the store's copy stays intact
	}
	var (
		fnErr  error
		result []byte
		ran    time.Duration
	)
	ctx = withInfo(ctx, &requestInfo{key: key})
	_, stored, err := e.execute(ctx, skey, token, since, new(lease), ev, workFunc(func(ctx context.Context) ([]byte, bool) {
		t0 := time.Now()
		result, fnErr = fn(ctx)
		ran = time.Since(t0)
		// The store keeps its own copy, so that neither fn nor the caller can
		// change what later callers get.
		return bytes.Clone(result), fnErr == nil
	}))
	ev.Outcome, ev.Err, ev.Stored, ev.HandlerDuration = outcomeOf(err), err, stored, ran
	e.cfg.report(ev)
	switch ev.Outcome {
	case OutcomeLockLost:
		return result, errors.Join(err, fnErr)
	case OutcomeStoreError:
		return result, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	if fnErr != nil {
		return nil, fnErr
	}
	return result, nil
}

// Do runs fn at most once per key among all callers that share store: it is
// NewRunner(store, opts...) followed by its Do, with the options checked on
// every call. A program that calls it often should build one Runner and
// share it. The background releases of failed claims of all calls of Do
// share one bound.
func Do(ctx context.Context, store Store, key, fingerprint string, fn func(ctx context.Context) ([]byte, error), opts ...Option) ([]byte, error) {
	r, err := newRunner(store, opts, doReleases)
	if err != nil {
		return nil, err
	}
	return r.Do(ctx, key, fingerprint, fn)
}

// FingerprintBytes returns a fingerprint of a payload for Runner.Do: its
// SHA-256 in lowercase hex. Two payloads share a fingerprint only if they
// are equal byte for byte.
func FingerprintBytes(payload []byte) string {
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:])
}

var (
	errNilStore = errors.New("idem: nil Store")
	errNilWork  = errors.New("idem: nil work function")
)

// jobKeyPrefix starts the stored key of every key of a Runner. Stored keys
// of HTTP requests start with 32 hex digits and '|', so the two never meet.
const jobKeyPrefix = "do|"

// checkJobKey refuses a key of a Runner that is empty, longer than maxLen
// bytes, or holds a byte outside visible ASCII.
func checkJobKey(key string, maxLen int) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > maxLen:
		return fmt.Errorf("%w: %d bytes long, over the limit of %d", ErrInvalidKey, len(key), maxLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: byte %d is %#x; keys hold visible ASCII only", ErrInvalidKey, i, c)
		}
	}
	return nil
}
