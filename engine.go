package idem

// The engine: claim, lease renewal, complete or release, shared by the
// middleware (middleware.go) and the Runner (runner.go). decide says what a
// caller that found a record gets; the lease type says when an owner gives
// its key up.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemgo/idem/internal/clock"
)

// engine runs the flow shared by Do and the middleware: claim, lease
// renewal, complete or release.
type engine struct {
	store Store
	cfg   *config
	// bg bounds the releases of failed claims running in the background.
	bg chan struct{}
	// clk is the store's clock (see clock.Source), nil for the real one.
	clk clock.Clock
}

// newEngine returns the engine of a middleware or Runner over store.
func newEngine(store Store, cfg *config, bg chan struct{}) engine {
	return engine{store: store, cfg: cfg, bg: bg, clk: clock.Of(store)}
}

// maxBackgroundReleases bounds the releases of failed claims that one
// middleware (or all calls of Do) runs in the background at once. Each
// lasts at most the store timeout; during an outage, releases beyond the
// bound are skipped and reported.
const maxBackgroundReleases = 64

func newBackgroundSlots() chan struct{} { return make(chan struct{}, maxBackgroundReleases) }

// doReleases bounds the background releases of all calls of Do.
var doReleases = newBackgroundSlots()

// errReleaseSkipped is the Err of an OutcomeReleaseFailed event whose
// release was not even tried.
var errReleaseSkipped = errors.New("idem: release of a failed claim skipped: too many releases in flight; the key stays locked until its lease ends")

// decide says what a caller gets that found rec under its own
// fingerprint: OutcomeMismatch (the key was used for other work),
// OutcomeConflict (the key's work is running) or OutcomeReplayed (its result
// is kept). It is the one place, for the middleware and the Runner.
func decide(rec *Record, fingerprint string) Outcome {
	switch {
	case rec.Fingerprint != fingerprint:
		return OutcomeMismatch
	case rec.State == StateInProgress:
		return OutcomeConflict
	}
	return OutcomeReplayed
}

// outcomeOf is the outcome of work that execute ran and that ended with
// err: executed, its lease lost, or its result not stored.
func outcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return OutcomeExecuted
	case errors.Is(err, ErrLockLost):
		return OutcomeLockLost
	}
	return OutcomeStoreError
}

// storeCtx returns the context of one store call: ctx's values without its
// cancellation, bounded by the store timeout. The caller calls its cancel
// method when the call has returned.
func (e *engine) storeCtx(ctx context.Context) storeCall {
	return newStoreCall(ctx, e.clk, e.cfg.storeTimeout)
}

// work is what execute runs as the owner of a key: it returns the result
// and whether to keep it.
type work interface {
	run(ctx context.Context) (result []byte, keep bool)
}

type workFunc func(ctx context.Context) ([]byte, bool)

func (f workFunc) run(ctx context.Context) ([]byte, bool) { return f(ctx) }

// claim claims key with a new token. It returns the token and a nil record
// when the caller now owns the key, or the existing record. With WithWait, a
// record in progress under the same fingerprint is polled until it
// completes, is released (the caller then owns the key), or the wait ends.
//
// since is when the winning claim was sent: the store starts the lease when
// it executes the claim, which is later, so the owner's view of the lease
// never outlasts the store's.
func (e *engine) claim(ctx context.Context, key, fingerprint string, ev Event) (token string, rec *Record, since time.Time, err error) {
	token = newToken()
	since = clock.Now(e.clk)
	rec, err = e.claimOnce(ctx, key, token, fingerprint, ev)
	if err != nil || rec == nil || rec.State != StateInProgress || rec.Fingerprint != fingerprint {
		return token, rec, since, err
	}
	// Without WithWait the deadline is now, and the loop returns rec at
	// once.
	deadline := clock.Now(e.clk).Add(e.cfg.wait)
	interval := 10 * time.Millisecond
	for {
		pause := min(interval, rec.LeaseLeft, clock.Until(e.clk, deadline))
		if pause <= 0 {
			return token, rec, since, nil
		}
		if !clock.Sleep(e.clk, ctx, pause) {
			return token, rec, since, nil
		}
		since = clock.Now(e.clk)
		rec, err = e.claimOnce(ctx, key, token, fingerprint, ev)
		if err != nil || rec == nil || rec.State != StateInProgress || rec.Fingerprint != fingerprint {
			return token, rec, since, err
		}
		interval = min(2*interval, 250*time.Millisecond)
	}
}

func (e *engine) claimOnce(ctx context.Context, key, token, fingerprint string, ev Event) (*Record, error) {
	sctx := e.storeCtx(ctx)
	defer sctx.cancel()
	rec, err := e.store.Claim(sctx, key, token, fingerprint, e.cfg.lockTTL)
	if err != nil {
		if errors.Is(err, ErrCorruptRecord) {
			return nil, err // the store read a record: the claim did not land
		}
		// The claim may have landed although its reply was lost or late.
		// Free the key again, in the background, so that the caller's retry
		// does not meet this claim's record until its lease ends.
		e.releaseInBackground(ctx, key, token, ev)
		return nil, err
	}
	if rec != nil && rec.State != StateInProgress && rec.State != StateCompleted {
		return nil, fmt.Errorf("%w: the store returned a record in state %d", ErrCorruptRecord, rec.State)
	}
	if rec != nil && rec.State == StateInProgress && rec.Token == token {
		// A store client that sent the claim again after losing the reply
		// to the first one (go-redis retries, for one) finds the record that
		// the first one made. Tokens are unique per claim: it is ours.
		return nil, nil
	}
	return rec, err
}

// execute runs w as the owner of key, renewing the lease l, which started
// at since, while it runs. w runs on a child of ctx that is cancelled with
// cause ErrLockLost when the lease is lost. A kept result is stored (stored
// is true); otherwise the key is released. If w panics, the key is released
// and the panic goes on. The error is ErrLockLost when the lease was lost
// while w ran (also for a result that was not to be kept), or the store's
// error from Complete.
//
// With a WorkStore, w runs inside a unit of work begun after the claim:
// a kept result is committed with it, and anything else rolls it back
// before the key is released. If the unit cannot begin, the key is
// released, w does not run, and the error is a *beginError.
func (e *engine) execute(ctx context.Context, key, token string, since time.Time, l *lease, ev Event, w work) (result []byte, stored bool, err error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var unit Work
	if ws, ok := e.store.(WorkStore); ok {
		sctx := e.storeCtx(ctx)
		unit, err = ws.BeginWork(sctx, key, token)
		sctx.cancel()
		if err != nil {
			e.releaseReported(ctx, key, token, ev)
			return nil, false, &beginError{err: err}
		}
		wctx = unit.Context(wctx)
	}
	l.start(e, ctx, key, token, since, cancel, ev)
	returned := false
	defer func() {
		if returned {
			return
		}
		// The work panicked: free the key, report, and let the panic go on.
		// Re-panicking from this deferred call keeps the frames of the
		// original panic on the stack for whoever recovers it.
		r := recover()
		l.stop()
		e.rollback(unit)
		e.releaseReported(ctx, key, token, ev)
		if r == nil {
			return // runtime.Goexit (panic(nil) carries a *runtime.PanicNilError)
		}
		ev.Outcome, ev.Err = OutcomePanic, panicError(r)
		e.cfg.report(ev)
		panic(r)
	}()
	result, keep := w.run(wctx)
	returned = true
	lost := l.stop()
	if !keep || lost != nil {
		e.rollback(unit)
	}
	if !keep {
		// Nothing is to be recorded, so the key is released whether or not
		// the lease was lost; the release is fenced, and a lost lease makes
		// its ErrLockLost expected.
		if err := e.release(ctx, key, token); err != nil && (lost == nil || !errors.Is(err, ErrLockLost)) {
			ev.Outcome, ev.Err = OutcomeReleaseFailed, err
			e.cfg.report(ev)
		}
		return result, false, lost
	}
	if lost != nil {
		return result, false, lost
	}
	if unit != nil {
		err := e.commit(ctx, key, token, unit, result, ev)
		return result, err == nil, err
	}
	return result, true, e.complete(ctx, key, token, result)
}

// beginError is the error of execute when the unit of work of a WorkStore
// could not begin: the work did not run.
type beginError struct{ err error }

func (e *beginError) Error() string { return "idem: beginning the unit of work: " + e.err.Error() }
func (e *beginError) Unwrap() error { return e.err }

// commit records result in unit and commits it. It is tried once: a unit
// that failed cannot be committed again. After a failure the unit is
// rolled back and, since none of the work was kept, the key is released
// for a retry to run it again; a lost key is another owner's and stays.
// The release is fenced: if a commit reported as failed did land, the key
// is completed and the release changes nothing.
func (e *engine) commit(ctx context.Context, key, token string, unit Work, result []byte, ev Event) error {
	sctx := e.storeCtx(ctx)
	err := unit.Commit(sctx, result, e.cfg.ttl)
	sctx.cancel()
	if err == nil {
		return nil
	}
	e.rollback(unit)
	if !errors.Is(err, ErrLockLost) {
		if rerr := e.release(ctx, key, token); rerr != nil && !errors.Is(rerr, ErrLockLost) {
			ev.Outcome, ev.Err = OutcomeReleaseFailed, rerr
			e.cfg.report(ev)
		}
	}
	return err
}

// rollback ends a unit of work (if any) that is not to be committed. A
// failure leaves nothing to do: the unit is not committed, and the store
// discards it.
func (e *engine) rollback(unit Work) {
	if unit == nil {
		return
	}
	unit.Rollback() //nolint:errcheck // see above
}

// complete stores result, trying again twice after a store error: the
// handler has run, so its response is worth a short wait.
func (e *engine) complete(ctx context.Context, key, token string, result []byte) error {
	err := e.completeOnce(ctx, key, token, result)
	for _, pause := range [...]time.Duration{20 * time.Millisecond, 100 * time.Millisecond} {
		if err == nil || errors.Is(err, ErrLockLost) {
			return err
		}
		clock.Sleep(e.clk, context.Background(), pause)
		err = e.completeOnce(ctx, key, token, result)
	}
	return err
}

func (e *engine) completeOnce(ctx context.Context, key, token string, result []byte) error {
	sctx := e.storeCtx(ctx)
	defer sctx.cancel()
	return e.store.Complete(sctx, key, token, result, e.cfg.ttl)
}

func (e *engine) release(ctx context.Context, key, token string) error {
	sctx := e.storeCtx(ctx)
	defer sctx.cancel()
	return e.store.Release(sctx, key, token)
}

// releaseReported releases the key of an owner, reporting a failure: the
// key then stays locked until its lease ends.
func (e *engine) releaseReported(ctx context.Context, key, token string, ev Event) {
	if err := e.release(ctx, key, token); err != nil {
		ev.Outcome, ev.Err = OutcomeReleaseFailed, err
		e.cfg.report(ev)
	}
}

// releaseInBackground releases a claim that failed but may have landed,
// without holding up the caller, unless too many such releases are in
// flight already. A claim that did not land is not the caller's to release
// (ErrLockLost): that is the usual outcome, not a failure.
func (e *engine) releaseInBackground(ctx context.Context, key, token string, ev Event) {
	ev.Request = nil // the request is over by the time this is reported
	select {
	case e.bg <- struct{}{}:
	default:
		ev.Outcome, ev.Err = OutcomeReleaseFailed, errReleaseSkipped
		e.cfg.report(ev)
		return
	}
	// The store call drops ctx's cancellation (see storeCtx), so the
	// release goes on after the request has ended.
	//
	// A timer of zero runs the release in a goroutine of its own, as go
	// would, through the engine's clock.
	clock.AfterFunc(e.clk, 0, func() {
		defer func() { <-e.bg }()
		if err := e.release(ctx, key, token); err != nil && !errors.Is(err, ErrLockLost) {
			ev.Outcome, ev.Err = OutcomeReleaseFailed, err
			e.cfg.report(ev)
		}
	})
}

// panicError describes the value a panic carried.
func panicError(r any) error {
	if err, ok := r.(error); ok {
		return fmt.Errorf("idem: the work panicked: %w", err)
	}
	return fmt.Errorf("idem: the work panicked: %v", r)
}

// lease keeps the owner's lock while its work runs. The store counts a
// lease from when it executes a claim or renewal; the owner counts it from
// when it sent the call, which is earlier, and gives the lease up a safety
// margin (a tenth of the lock TTL) before even that count ends, so that
// the owner stops believing it holds the key before the store can hand the
// key to anyone else.
//
// The first renewal is due a third of the lock TTL after the claim was
// sent; a handler shorter than that costs a timer and no store call. A
// renewal that fails is tried again at once, with a short growing pause,
// each try bounded by the time the lease has left. When no renewal has
// succeeded by the owner's deadline, or the store answers ErrLockLost, the
// lease is lost: the work's context is cancelled with cause ErrLockLost and
// nothing is recorded.
type lease struct {
	e          *engine
	ctx        context.Context
	key, token string
	cancel     context.CancelCauseFunc
	ev         Event // reports failed renewals

	mu       sync.Mutex
	timer    clock.Timer
	stopped  bool
	lost     error
	deadline time.Time     // the owner holds the key until then
	pause    time.Duration // before the next try after a failed renewal
	lastErr  error         // of the last failed renewal
}

// start arms the first renewal of a lease that started at since. l must be
// new.
func (l *lease) start(e *engine, ctx context.Context, key, token string, since time.Time, cancel context.CancelCauseFunc, ev Event) {
	ev.Request = nil // reported from another goroutine while the handler runs
	l.mu.Lock()
	l.e, l.ctx, l.key, l.token, l.cancel, l.ev = e, ctx, key, token, cancel, ev
	l.deadline = since.Add(e.cfg.lockTTL - e.cfg.leaseMargin)
	l.timer = clock.AfterFunc(e.clk, clock.Until(e.clk, since.Add(e.cfg.renewEvery)), l.renew)
	l.mu.Unlock()
}

func (l *lease) renew() {
	if err := l.renewOnce(); err != nil {
		ev := l.ev
		ev.Outcome, ev.Err = OutcomeRenewFailed, err
		l.e.cfg.report(ev)
	}
}

// renewOnce tries one renewal, or gives the lease up at its deadline. It
// returns the error of a renewal that failed and will be tried again.
func (l *lease) renewOnce() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped || l.lost != nil {
		return nil
	}
	cfg, clk := l.e.cfg, l.e.clk
	sent := clock.Now(clk)
	left := l.deadline.Sub(sent)
	if left <= 0 {
		err := ErrLockLost
		if l.lastErr != nil {
			err = fmt.Errorf("%w: no renewal succeeded within the lease; the last one failed: %w", ErrLockLost, l.lastErr)
		}
		l.lose(err)
		return nil
	}
	sctx := newStoreCall(l.ctx, clk, min(cfg.storeTimeout, left))
	err := l.e.store.Renew(sctx, l.key, l.token, cfg.lockTTL)
	sctx.cancel()
	switch {
	case err == nil:
		l.deadline = sent.Add(cfg.lockTTL - cfg.leaseMargin)
		l.pause, l.lastErr = 0, nil
		l.timer.Reset(clock.Until(clk, sent.Add(cfg.renewEvery)))
	case errors.Is(err, ErrLockLost):
		l.lose(err)
	default:
		// Try again soon, within the lease; the try at the deadline, if it
		// comes to that, gives the lease up.
		l.lastErr = err
		l.pause = min(max(2*l.pause, cfg.renewEvery/16), cfg.renewEvery/2)
		next := min(l.pause, clock.Until(clk, l.deadline))
		l.timer.Reset(max(next, 0))
		return err
	}
	return nil
}

// lose marks the lease lost and cancels the work. l.mu must be held.
func (l *lease) lose(err error) {
	l.lost = err
	l.cancel(ErrLockLost)
}

// stop ends the renewals, waiting for one in flight, and reports whether
// the lease was lost.
func (l *lease) stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.timer.Stop()
	return l.lost
}

var (
	// tokenPrefix makes owner tokens unique across processes. Without
	// randomness two processes could share it, and a stale owner could then
	// complete or release a newer owner's record: a program that cannot
	// read crypto/rand stops at start-up rather than run without fencing.
	tokenPrefix = mustTokenPrefix()
	tokenSeq    atomic.Uint64
)

func mustTokenPrefix() string {
	p, err := newTokenPrefix(rand.Reader)
	if err != nil {
		panic(err)
	}
	return p
}

// newTokenPrefix reads 12 random bytes from r into a token prefix.
func newTokenPrefix(r io.Reader) (string, error) {
	var b [12]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("idem: cannot make owner tokens unique: reading random bytes: %w", err)
	}
	return hex.EncodeToString(b[:]) + "-", nil
}

// newToken returns an owner token unique across processes: a random
// per-process prefix and a counter.
func newToken() string {
	var buf [64]byte
	b := append(buf[:0], tokenPrefix...)
	b = strconv.AppendUint(b, tokenSeq.Add(1), 36)
	return string(b)
}
