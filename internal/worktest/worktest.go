// Package worktest is a fake transactional store for the tests of this
// repository: an idem.WorkStore over another idem.Store (which keeps the
// records) whose units of work stage rows of a ledger. A unit's rows reach
// the ledger only when the unit commits, together with the completed
// record, as in a store whose records live in the application's database.
//
// The Store counts what the middleware asks of it and can be told to fail
// BeginWork or Commit; Inspecting is the same store with an Inspector.
package worktest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// Store is an idem.WorkStore over the idem.Store it embeds. It embeds an
// idem.Store, not the concrete store, so it is not an Inspector (see
// Inspecting). Its methods are safe for concurrent use.
type Store struct {
	idem.Store

	mu        sync.Mutex
	rows      []string // committed
	begins    int      // units begun
	completes int      // calls of Store.Complete
	commits   int      // Work.Commits that returned nil
	rollbacks int      // units rolled back before being committed
	beginErr  error
	commitErr error // returned by Commit without touching the record
}

// New returns a Store that keeps its records in records.
func New(records idem.Store) *Store {
	return &Store{Store: records}
}

// Counts is what a Store has seen: the committed rows of its ledger, in
// commit order, and how many times each call was made.
type Counts struct {
	Rows      []string // the rows of the committed units
	Begins    int      // units begun (BeginWork calls that returned nil)
	Completes int      // calls of Store.Complete (never by a unit's Commit)
	Commits   int      // Work.Commit calls that returned nil
	Rollbacks int      // units rolled back before being committed
}

// Counts returns what s has seen so far.
func (s *Store) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Counts{
		Rows:      append([]string(nil), s.rows...),
		Begins:    s.begins,
		Completes: s.completes,
		Commits:   s.commits,
		Rollbacks: s.rollbacks,
	}
}

// FailBeginWork makes every later BeginWork return err (nil: succeed).
func (s *Store) FailBeginWork(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beginErr = err
}

// FailCommit makes every later Work.Commit return err without touching the
// record or the ledger (nil: commit).
func (s *Store) FailCommit(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.commitErr = err
}

// Complete counts the call and completes the record in the embedded store.
func (s *Store) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.mu.Lock()
	s.completes++
	s.mu.Unlock()
	return s.Store.Complete(ctx, key, token, result, ttl)
}

// BeginWork starts a unit of work for key, owned by token, unless s was
// told to fail it.
func (s *Store) BeginWork(ctx context.Context, key, token string) (idem.Work, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.beginErr != nil {
		return nil, s.beginErr
	}
	s.begins++
	return &unit{s: s, key: key, token: token}, nil
}

type unitKey struct{}

// unit is a Store's unit of work; its fields are guarded by s.mu.
type unit struct {
	s          *Store
	key, token string
	staged     []string
	ended      bool
}

func (u *unit) Context(ctx context.Context) context.Context {
	return context.WithValue(ctx, unitKey{}, u)
}

func (u *unit) Commit(ctx context.Context, result []byte, ttl time.Duration) error {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	if u.s.commitErr != nil {
		return u.s.commitErr
	}
	// The record, fenced by the token, straight from the embedded store:
	// not through Store.Complete, which counts the middleware's own calls.
	if err := u.s.Store.Complete(ctx, u.key, u.token, result, ttl); err != nil {
		return err
	}
	u.s.rows = append(u.s.rows, u.staged...)
	u.s.commits++
	u.ended = true
	return nil
}

func (u *unit) Rollback() error {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	if !u.ended {
		u.ended = true
		u.s.rollbacks++
	}
	return nil
}

// Stage adds row to the unit of work of a Store that ctx carries, and
// reports whether ctx carries one.
func Stage(ctx context.Context, row string) bool {
	u, ok := ctx.Value(unitKey{}).(*unit)
	if !ok {
		return false
	}
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	u.staged = append(u.staged, row)
	return true
}

// Inspecting is a Store that is an idem.Inspector too: usually the
// Store's own record store, e.g. Inspecting{worktest.New(mem), mem}.
type Inspecting struct {
	*Store
	idem.Inspector
}

// CheckWrapperKeepsOptionalInterfaces checks that wrap, which wraps a
// store (for metrics or tracing, say), gives back a store with the
// optional interfaces of the one it wraps, no more and no fewer: a wrapped
// transactional store stays transactional, and a plain one does not
// become an Inspector.
func CheckWrapperKeepsOptionalInterfaces(t *testing.T, wrap func(idem.Store) idem.Store) {
	t.Helper()
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	for _, c := range []struct {
		name             string
		store            idem.Store
		inspector, works bool
	}{
		{"neither", struct{ idem.Store }{mem}, false, false},
		{"Inspector", mem, true, false},
		{"WorkStore", New(mem), false, true},
		{"both", Inspecting{Store: New(mem), Inspector: mem}, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The fakes are what they claim to be.
			_, ins := c.store.(idem.Inspector)
			_, ws := c.store.(idem.WorkStore)
			if ins != c.inspector || ws != c.works {
				t.Fatalf("the store: Inspector %v, WorkStore %v; the case wants %v, %v", ins, ws, c.inspector, c.works)
			}
			wrapped := wrap(c.store)
			if _, ok := wrapped.(idem.Inspector); ok != c.inspector {
				t.Errorf("the wrapper is an Inspector: %v, want %v", ok, c.inspector)
			}
			if _, ok := wrapped.(idem.WorkStore); ok != c.works {
				t.Errorf("the wrapper is a WorkStore: %v, want %v", ok, c.works)
			}
		})
	}
}
