package idem

import (
	"context"
	"errors"
	"time"
)

// Inspector is the optional part of a Store that lets an operator look at
// one key and delete it. memstore, redisstore and sqlstore implement it;
// find out with a type assertion:
//
//	if ins, ok := store.(idem.Inspector); ok { ... }
//
// Keys are the keys the Store is given: for a request under the
// middleware, StoreKey(scope, key).
type Inspector interface {
	// Lookup returns the live record of key, or nil if the key is absent
	// (never used, released, or expired). It changes nothing.
	Lookup(ctx context.Context, key string) (*KeyState, error)

	// Delete removes the record of key, whatever its state, and reports
	// whether there was a live one. The next request with the key runs
	// again, as if it were new. Deleting an in-progress key lets a new
	// request run while the first may still be running; the first's
	// response is then not stored (its Complete fails with ErrLockLost).
	// Deleting an absent key is not an error.
	Delete(ctx context.Context, key string) (bool, error)
}

// KeyState is what Inspector.Lookup tells of a live key.
type KeyState struct {
	// State is StateInProgress or StateCompleted.
	State State
	// Fingerprint is the fingerprint of the request that claimed the key.
	Fingerprint string
	// ExpiresIn is the time left on the record, as the store sees it: the
	// owner's lease for an in-progress key (renewed while its handler
	// runs), the retention for a completed one.
	ExpiresIn time.Duration
	// Result is the stored result of a completed key (for the middleware,
	// an encoded Response: see Response), nil while in progress.
	Result []byte
}

// Response decodes the stored response of a completed key written by the
// middleware. It fails for an in-progress key and for results written by
// Do, which are not responses.
func (k *KeyState) Response() (*Response, error) {
	if k.State != StateCompleted {
		return nil, errNotCompleted
	}
	return DecodeResponse(k.Result)
}

var errNotCompleted = errors.New("idem: the key is not completed")

// StoreKey returns the key under which the middleware stores the record of
// a request whose scope (see WithScope; "" without it) is scope and whose
// Idempotency-Key is key: the key to give an Inspector to look at what a
// client's key did.
func StoreKey(scope, key string) string {
	return scopedKey(scope, key)
}
