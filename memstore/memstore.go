// Package memstore is an in-process idem.Store for a single instance and for
// tests. Records live in a map guarded by a mutex; expired records count as
// absent at once and are swept in the background.
//
// A memstore is not shared between processes: behind a load balancer with
// several instances, use redisstore or sqlstore.
package memstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/idemgo/idem"
)

// DefaultSweepInterval is how often expired records are removed unless
// WithSweepInterval says otherwise.
const DefaultSweepInterval = time.Minute

// Store is an in-memory idem.Store. Create it with New and stop its sweeper
// with Close.
type Store struct {
	mu      sync.Mutex
	records map[string]*entry
	now     func() time.Time

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

type entry struct {
	state       idem.State
	token       string
	fingerprint string
	result      []byte
	expires     time.Time // lease end (in progress) or retention end (completed)
}

// Option configures a Store.
type Option func(*config)

type config struct {
	sweep time.Duration
	now   func() time.Time
}

// WithSweepInterval sets how often expired records are deleted (default
// DefaultSweepInterval). Zero or less turns the sweeper off; expired records
// still count as absent and are overwritten by the next Claim of their key.
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) { c.sweep = d }
}

// WithClock replaces time.Now, for tests that move time by hand.
func WithClock(now func() time.Time) Option {
	return func(c *config) { c.now = now }
}

// New returns an empty Store and starts its sweeper.
func New(opts ...Option) *Store {
	c := config{sweep: DefaultSweepInterval, now: time.Now}
	for _, o := range opts {
		o(&c)
	}
	s := &Store{
		records: make(map[string]*entry),
		now:     c.now,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if c.sweep > 0 {
		go s.sweepLoop(c.sweep)
	} else {
		close(s.done)
	}
	return s
}

// Close stops the sweeper and waits for it to exit. The store stays usable.
// Close is safe to call more than once.
func (s *Store) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

func (s *Store) sweepLoop(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.DeleteExpired(context.Background(), 0)
		}
	}
}

// DeleteExpired removes up to limit expired records (every expired record
// if limit is zero or less) and returns how many it removed, in the shape of
// sqlstore's DeleteExpired; the error is always nil. The sweeper calls it;
// tests and programs that turned the sweeper off may too.
func (s *Store) DeleteExpired(ctx context.Context, limit int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var n int64
	for k, e := range s.records {
		if limit > 0 && n >= int64(limit) {
			break
		}
		if !now.Before(e.expires) {
			delete(s.records, k)
			n++
		}
	}
	return n, nil
}

// Len returns the number of records held, expired ones not yet swept
// included.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// live returns the unexpired entry of key, or nil. s.mu must be held.
func (s *Store) live(key string, now time.Time) *entry {
	e := s.records[key]
	if e == nil || !now.Before(e.expires) {
		return nil
	}
	return e
}

// owned returns the live in-progress entry of key owned by token, or nil.
// s.mu must be held.
func (s *Store) owned(key, token string, now time.Time) *entry {
	e := s.live(key, now)
	if e == nil || e.state != idem.StateInProgress || e.token != token {
		return nil
	}
	return e
}

// Claim implements idem.Store.
func (s *Store) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memstore: claim: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if e := s.live(key, now); e != nil {
		rec := &idem.Record{State: e.state, Fingerprint: e.fingerprint, Token: e.token, Result: e.result, ExpiresIn: e.expires.Sub(now)}
		if e.state == idem.StateInProgress {
			rec.LeaseLeft = rec.ExpiresIn
		}
		return rec, nil
	}
	s.records[key] = &entry{
		state:       idem.StateInProgress,
		token:       token,
		fingerprint: fingerprint,
		expires:     now.Add(lease),
	}
	return nil, nil
}

// Complete implements idem.Store.
func (s *Store) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: complete: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.owned(key, token, now)
	if e == nil {
		return idem.ErrLockLost
	}
	e.state = idem.StateCompleted
	e.result = result
	e.expires = now.Add(ttl)
	return nil
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: release: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owned(key, token, s.now()) == nil {
		return idem.ErrLockLost
	}
	delete(s.records, key)
	return nil
}

// Renew implements idem.Store.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: renew: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.owned(key, token, now)
	if e == nil {
		return idem.ErrLockLost
	}
	e.expires = now.Add(lease)
	return nil
}

// Lookup implements idem.Inspector.
func (s *Store) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memstore: lookup: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.live(key, now)
	if e == nil {
		return nil, nil
	}
	return &idem.KeyState{State: e.state, Fingerprint: e.fingerprint, ExpiresIn: e.expires.Sub(now), Result: e.result}, nil
}

// Delete implements idem.Inspector.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("memstore: delete: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	live := s.live(key, s.now()) != nil
	delete(s.records, key)
	return live, nil
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)
