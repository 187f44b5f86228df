package idemprom

import (
	"sync"
	"time"
)

// owned tracks the keys this process owns: claimed and not yet completed,
// released, lost or expired. Each entry ends at its lease's end unless
// renewed, so that a key whose owner never reports back (a lease lost
// without a store call saying so) stops counting when its lease ends.
type owned struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[ownerKey]time.Time // lease end
}

type ownerKey struct{ key, token string }

func newOwned(now func() time.Time) *owned {
	return &owned{now: now, m: make(map[ownerKey]time.Time)}
}

func (o *owned) claimed(key, token string, until time.Time) {
	o.mu.Lock()
	o.m[ownerKey{key, token}] = until
	o.mu.Unlock()
}

func (o *owned) renewed(key, token string, until time.Time) {
	o.mu.Lock()
	if _, ok := o.m[ownerKey{key, token}]; ok {
		o.m[ownerKey{key, token}] = until
	}
	o.mu.Unlock()
}

func (o *owned) done(key, token string) {
	o.mu.Lock()
	delete(o.m, ownerKey{key, token})
	o.mu.Unlock()
}

// count returns the number of live entries and forgets the expired ones.
func (o *owned) count() int {
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, until := range o.m {
		if !now.Before(until) {
			delete(o.m, k)
		}
	}
	return len(o.m)
}
