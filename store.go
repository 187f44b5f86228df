package idem

import (
	"context"
	"time"
)

// State is the life-cycle state of a stored record.
type State uint8

const (
	// StateInProgress marks a key whose work is running. The record carries
	// the owner's token and expires when its lease runs out.
	StateInProgress State = 1
	// StateCompleted marks a key whose work has finished. The record carries
	// the encoded result and expires when its retention TTL runs out.
	StateCompleted State = 2
)

// String returns "in_progress", "completed" or "unknown".
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in_progress"
	case StateCompleted:
		return "completed"
	}
	return "unknown"
}

// Record is what a Store returns for a key that is already taken.
//
// Stores return records by value; the Result slice belongs to the store and
// must be treated as read-only.
type Record struct {
	// State is StateInProgress or StateCompleted.
	State State
	// Fingerprint is the fingerprint given to the Claim that created the
	// record. Callers compare it with the fingerprint of a new request to
	// tell a retry from a reuse of the key for a different payload.
	Fingerprint string
	// Token is the owner token given to that Claim. Stores may leave it
	// empty for completed records.
	Token string
	// LeaseLeft is the time left on the owner's lease of an in-progress
	// record, as the store sees it. Zero for completed records.
	LeaseLeft time.Duration
	// ExpiresIn is the time left before the record expires, as the store
	// sees it: the lease of an in-progress record (equal to LeaseLeft), the
	// retention of a completed one. Zero means the store cannot tell. A
	// completed record never changes until it expires, so a caller may keep
	// a copy of it for up to ExpiresIn (the replay cache does).
	ExpiresIn time.Duration
	// Result is the stored result of a completed record (for the middleware,
	// an encoded Response; see EncodeResponse). Nil for in-progress records.
	Result []byte
}

// Store keeps idempotency records. Every method is one atomic operation on
// one key; implementations must be safe for concurrent use by many goroutines
// and, for shared stores, by many processes.
//
// A record that has expired (its lease for an in-progress record, its
// retention TTL for a completed one) counts as absent for every method, no
// matter when the store physically removes it.
//
// Errors other than ErrLockLost mean the store could not answer (it is down,
// timed out, or returned something it could not read); callers treat them as
// "unknown" and never as "absent". Implementations wrap backend errors with
// their package name and %w. A record that exists but that the store cannot
// read (an unknown format version or state, written by a newer release) is
// reported by Claim as an error wrapping ErrCorruptRecord: callers never run
// the work over it, not even with WithFailOpen, since it may stand for a
// completed request.
type Store interface {
	// Claim atomically takes key for the caller: if no live record exists,
	// it stores a new in-progress record holding token and fingerprint whose
	// lease ends after lease, and returns (nil, nil). If a live record
	// exists, it leaves it untouched and returns a copy of it. No other
	// outcome is possible: two concurrent Claims of one key never both
	// return nil.
	Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*Record, error)

	// Complete turns the in-progress record of key owned by token into a
	// completed record holding result, kept for ttl from now. The store may
	// keep the result slice; the caller must not modify it afterwards. If the
	// record is absent, expired, completed, or owned by another token,
	// Complete changes nothing and returns ErrLockLost. One exception is
	// allowed: a store whose client sends a command again after losing its
	// reply may return nil, changing nothing, to a Complete with the token
	// and result of the Complete that completed the record.
	Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error

	// Release deletes the in-progress record of key owned by token, so that
	// the key can be claimed again at once. If the record is absent,
	// expired, completed, or owned by another token, Release changes nothing
	// and returns ErrLockLost.
	Release(ctx context.Context, key, token string) error

	// Renew extends the lease of the in-progress record of key owned by
	// token to end after lease from now. If the record is absent, expired,
	// completed, or owned by another token, Renew changes nothing and
	// returns ErrLockLost.
	Renew(ctx context.Context, key, token string, lease time.Duration) error
}

// WorkStore is a Store that can run an owner's work inside a unit of work
// of its own, such as a transaction of the database that holds the
// records, so that the work's writes to that database and the completed
// record become durable together or not at all.
//
// When the Store given to the middleware or a Runner implements WorkStore,
// every owner of a key, once its Claim has succeeded, begins a Work with
// BeginWork and runs the handler (or the Runner's work) on the context that
// Work.Context returns, where the store's package lets the work find the
// unit (for sqlstore, TxFromContext). Then:
//
//   - A result that is to be kept is recorded by Work.Commit, inside the
//     unit and fenced by the owner's token, before anything is sent. If
//     Commit fails, the unit is rolled back, the key is released (unless
//     the failure was ErrLockLost: the key is then someone else's) and the
//     caller is told that nothing was recorded; since nothing of the work
//     was kept either, a retry runs it again safely.
//   - A result that is not to be kept (an error status, a failed Runner
//     work, a client that hung up, a panic) rolls the unit back, then
//     releases the key as usual.
//   - If BeginWork fails, the key is released and the caller gets a store
//     error; the work does not run.
//
// A process killed before Commit has committed leaves nothing of the
// work's unit behind, and the key comes free when its lease ends. The
// unit must not touch the key's record before Commit, so that a duplicate
// request meets the committed in-progress record at once rather than
// waiting for the unit. Effects outside the unit (calls to other services)
// are not covered: they still need the other side to deduplicate.
type WorkStore interface {
	Store
	// BeginWork begins a unit of work for the owner (token) of key. ctx
	// bounds the call; the unit itself lives until Commit or Rollback.
	BeginWork(ctx context.Context, key, token string) (Work, error)
}

// Work is a unit of work begun by WorkStore.BeginWork. Exactly one of
// Commit (when it returns nil) and Rollback ends it.
type Work interface {
	// Context returns a child of ctx that carries the unit, for the work
	// to find through the store's package.
	Context(ctx context.Context) context.Context
	// Commit records result as Complete would (fenced by the owner's token,
	// kept for ttl) inside the unit and then makes the unit durable. It
	// returns ErrLockLost, keeping nothing, if the owner no longer holds
	// the key. After an error the caller calls Rollback.
	Commit(ctx context.Context, result []byte, ttl time.Duration) error
	// Rollback discards the unit. It is safe to call after a failed Commit.
	Rollback() error
}
