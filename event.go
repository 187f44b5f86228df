package idem

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Outcome is what happened to one request (or one call of Do).
type Outcome uint8

const (
	// OutcomeExecuted: the key was claimed and the handler ran. Event.Stored
	// tells whether its response was kept for replay.
	OutcomeExecuted Outcome = iota + 1
	// OutcomeReplayed: the key was completed; the stored response was sent
	// again and the handler did not run.
	OutcomeReplayed
	// OutcomeNotReplayable: the key was completed, but its response was
	// streamed or too large to keep; the duplicate got a 409 problem.
	OutcomeNotReplayable
	// OutcomeConflict: the key is in flight; the duplicate got a 409
	// problem with Retry-After.
	OutcomeConflict
	// OutcomeMismatch: the key was used for a different request; 422.
	OutcomeMismatch
	// OutcomeRejected: the request was refused before any store call: a
	// malformed or missing required key (400), or a body over the limit
	// (413).
	OutcomeRejected
	// OutcomeStoreError: the store failed or timed out. Event.Err holds its
	// error. The client got a 503 problem, or, with WithFailOpen, an
	// unprotected run of the handler.
	OutcomeStoreError
	// OutcomeLockLost: the handler ran but its lease was lost (it expired or
	// was taken over) before the response could be recorded; the client got
	// a 503 problem.
	OutcomeLockLost
	// OutcomeCancelled: the handler returned without writing a response
	// while its request's context was done (the client hung up). Nothing
	// was recorded and the key was released, so the client's retry runs
	// the handler again. A handler that has done its side effect by then
	// calls MarkCommitted, and its empty 200 is recorded instead.
	OutcomeCancelled
	// OutcomeRenewFailed: a renewal of the lease failed (Err holds the
	// store's error) while the handler ran. It is tried again at once
	// within the lease; if none succeeds, OutcomeLockLost follows. Reported
	// from the lease's own goroutine, with no Request.
	OutcomeRenewFailed
	// OutcomeReleaseFailed: a key could not be released (Err says why): the
	// store failed, or, during an outage, too many releases of failed claims
	// were already in flight. The key stays locked until its lease ends, and
	// duplicates get 409 until then. Reported in addition to the request's
	// own outcome; a release after a failed claim runs in the background and
	// is reported with no Request.
	OutcomeReleaseFailed
	// OutcomePanic: the handler (or Do's work) panicked. The key was
	// released and the panic goes on; Err describes the panic value.
	OutcomePanic
)

var outcomeNames = [...]string{
	OutcomeExecuted:      "executed",
	OutcomeReplayed:      "replayed",
	OutcomeNotReplayable: "not_replayable",
	OutcomeConflict:      "conflict",
	OutcomeMismatch:      "mismatch",
	OutcomeRejected:      "rejected",
	OutcomeStoreError:    "store_error",
	OutcomeLockLost:      "lock_lost",
	OutcomeCancelled:     "cancelled",
	OutcomeRenewFailed:   "renew_failed",
	OutcomeReleaseFailed: "release_failed",
	OutcomePanic:         "panic",
}

// Final reports whether o is a request's own outcome: every keyed request
// (and every call of Do) reports exactly one final outcome. The others,
// OutcomeRenewFailed and OutcomeReleaseFailed, are incidents reported
// besides it; counting requests means counting final outcomes only.
func (o Outcome) Final() bool {
	return o != OutcomeRenewFailed && o != OutcomeReleaseFailed
}

// String returns the outcome's snake_case name, as logged.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && outcomeNames[o] != "" {
		return outcomeNames[o]
	}
	return "unknown"
}

// Event reports one outcome to the hook set with WithHook.
type Event struct {
	Outcome Outcome
	// Key is the client's idempotency key (empty when it was missing or
	// malformed).
	Key string
	// Scope is the scope the key was stored under, as WithScope returned
	// it. It may be derived from a credential: do not log it or send it
	// anywhere in clear (WithLogger logs the first 16 hex digits of its
	// SHA-256 as scope_digest instead).
	Scope string
	// Status is the status code sent to the client; 0 when the middleware
	// sent nothing itself (fail-open runs, and Do).
	Status int
	// Stored reports, for OutcomeExecuted, whether the response was kept
	// for replay.
	Stored bool
	// Err is the store's error for OutcomeStoreError, OutcomeLockLost,
	// OutcomeRenewFailed and OutcomeReleaseFailed, and describes the panic
	// for OutcomePanic. For OutcomeExecuted with Stored false it may hold
	// ErrLockLost: the lease was lost while a response that was not to be
	// recorded (a 5xx) ran, and the client got that response. It is never
	// sent to the client.
	Err error
	// Request is the request, or nil for Do.
	Request *http.Request

	// Problem is the type of the problem response the middleware sent
	// itself (ProblemTypeBase + "key-invalid", ...), or "" when the client
	// got the handler's response (or a replay of it). For OutcomeRejected
	// it says what was refused.
	Problem string
	// Reason is, for OutcomeRejected, why the request was refused, in the
	// words sent to the client (for example "The Idempotency-Key holds a
	// comma: send one key, not a list."). It never holds the key itself.
	Reason string
	// Duration is the time from the middleware (or Do) receiving the
	// request to this report, the handler and every store call included;
	// the response is sent after it.
	Duration time.Duration
	// HandlerDuration is the time the handler (or Do's fn) ran; zero when
	// it did not run under the key. Duration - HandlerDuration is the
	// overhead of idempotency: the body read, the fingerprint and the store
	// calls (see the store wrappers of idemprom and idemotel for each
	// call's own time).
	HandlerDuration time.Duration

	// start is when the middleware or Do received the request.
	start time.Time
}

func (c *config) report(ev Event) {
	if !ev.start.IsZero() {
		ev.Duration = time.Since(ev.start)
	}
	if c.hook != nil {
		c.hook(ev)
	}
	level := slog.LevelDebug
	switch ev.Outcome {
	case OutcomeConflict, OutcomeMismatch, OutcomeRejected, OutcomeNotReplayable, OutcomeCancelled:
		level = slog.LevelInfo
	case OutcomeRenewFailed, OutcomeReleaseFailed:
		level = slog.LevelWarn
	case OutcomeStoreError, OutcomeLockLost, OutcomePanic:
		level = slog.LevelError
	}
	logger := c.logger
	if logger == nil {
		if level < slog.LevelError {
			return
		}
		// Without WithLogger, failures of the store still reach the
		// program's default logger: a 503 must never be silent.
		logger = slog.Default()
	}
	ctx := context.Background()
	if ev.Request != nil {
		ctx = ev.Request.Context()
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("outcome", ev.Outcome.String()),
		slog.String("key", ev.Key),
	}
	if ev.Scope != "" {
		// The scope may be a credential: only a short digest is logged (the
		// start of the digest in the stored key).
		attrs = append(attrs, slog.String("scope_digest", scopeDigest(ev.Scope)[:16]))
	}
	if ev.Status != 0 {
		attrs = append(attrs, slog.Int("status", ev.Status))
	}
	if ev.Outcome == OutcomeExecuted {
		attrs = append(attrs, slog.Bool("stored", ev.Stored))
	}
	if ev.Err != nil {
		attrs = append(attrs, slog.String("error", ev.Err.Error()))
	}
	if ev.Request != nil {
		attrs = append(attrs, slog.String("method", ev.Request.Method), slog.String("path", ev.Request.URL.Path))
	}
	if ev.Problem != "" {
		attrs = append(attrs, slog.String("problem", strings.TrimPrefix(ev.Problem, ProblemTypeBase)))
	}
	if ev.Reason != "" {
		attrs = append(attrs, slog.String("reason", ev.Reason))
	}
	// Every event has its start, hence a duration.
	attrs = append(attrs, slog.Duration("duration", ev.Duration))
	if ev.HandlerDuration > 0 {
		attrs = append(attrs, slog.Duration("handler", ev.HandlerDuration))
	}
	logger.LogAttrs(ctx, level, "idempotency", attrs...)
}
