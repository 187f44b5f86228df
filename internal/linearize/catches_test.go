package linearize_test

import (
	"context"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/idemgo/idem"
)

// --- the model on histories written by hand ----------------------------------

const ms = int64(time.Millisecond)

// call1 is one call of a history written by hand: times in milliseconds,
// ret -1 for a reply that was lost.
type call1 struct {
	client    int
	call, ret int64
	in        input
	out       output
}

// hist builds a history from calls.
func hist(calls ...call1) []porcupine.Operation {
	r := &recorder{}
	for _, c := range calls {
		in := c.in
		in.call = c.call * ms
		in.ret = c.ret * ms
		if c.ret < 0 {
			in.ret = never
		}
		r.add(c.client, in, c.out)
	}
	return r.history()
}

func claim(key, token string, lease time.Duration) input {
	return input{op: opClaim, key: key, token: token, fp: "f" + token, dur: lease}
}
func complete(key, token, result string) input {
	return input{op: opComplete, key: key, token: token, result: result, dur: longLease}
}
func release(key, token string) input { return input{op: opRelease, key: key, token: token} }
func renew(key, token string, lease time.Duration) input {
	return input{op: opRenew, key: key, token: token, dur: lease}
}

var (
	ok      = output{kind: outOK}
	lost    = output{kind: outLost}
	unknown = output{kind: outUnknown, err: "timeout"}
)

func inProgress(token string, left time.Duration) output {
	return output{kind: outRecord, rec: recordView{state: idem.StateInProgress, token: token, fp: "f" + token, leaseLeft: left}}
}

func completed(fpToken, result string) output {
	return output{kind: outRecord, rec: recordView{state: idem.StateCompleted, fp: "f" + fpToken, result: result, hasResult: true}}
}

// TestModelAcceptsWhatTheContractAllows: histories a correct store can
// produce pass the checker.
func TestModelAcceptsWhatTheContractAllows(t *testing.T) {
	for name, h := range map[string][]porcupine.Operation{
		"concurrent claims, one wins": hist(
			call1{0, 0, 10, claim("k", "a", longLease), inProgress("b", longLease)},
			call1{1, 0, 10, claim("k", "b", longLease), ok},
		),
		"owner completes, stale owner is fenced": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{1, 2, 3, complete("k", "x", "rx"), lost},
			call1{0, 4, 5, complete("k", "a", "ra"), ok},
			call1{1, 6, 7, claim("k", "b", longLease), completed("a", "ra")},
			call1{0, 8, 9, renew("k", "a", longLease), lost},
		),
		"release frees the key at once": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, 3, release("k", "a"), ok},
			call1{1, 4, 5, claim("k", "b", longLease), ok},
			call1{0, 6, 7, release("k", "a"), lost},
		),
		"a lost claim may have landed": hist(
			call1{0, 0, -1, claim("k", "a", longLease), unknown},
			call1{1, 5, 6, claim("k", "b", longLease), inProgress("a", longLease)},
			call1{0, 7, 8, complete("k", "a", "ra"), ok},
		),
		"a lost claim may not have landed": hist(
			call1{0, 0, -1, claim("k", "a", longLease), unknown},
			call1{1, 5, 6, claim("k", "b", longLease), ok},
		),
		"a lease runs out": hist(
			call1{0, 0, 1, claim("k", "a", 50*time.Millisecond), ok},
			call1{1, 20, 21, claim("k", "b", longLease), inProgress("a", 30*time.Millisecond)},
			call1{1, 200, 201, claim("k", "b", longLease), ok},
			call1{0, 202, 203, complete("k", "a", "ra"), lost},
		),
		"a renewed lease runs on": hist(
			call1{0, 0, 1, claim("k", "a", 100*time.Millisecond), ok},
			call1{0, 90, 91, renew("k", "a", longLease), ok},
			call1{1, 300, 301, claim("k", "b", longLease), inProgress("a", longLease-210*time.Millisecond)},
		),
	} {
		if res, _ := verify(h); res != porcupine.Ok {
			t.Errorf("%s: %v, want Ok", name, res)
		}
	}
}

// TestModelRejectsWhatTheContractForbids: each history breaks one promise
// of store.go, and the checker says so.
func TestModelRejectsWhatTheContractForbids(t *testing.T) {
	for name, h := range map[string][]porcupine.Operation{
		"two concurrent claims both win": hist(
			call1{0, 0, 10, claim("k", "a", longLease), ok},
			call1{1, 0, 10, claim("k", "b", longLease), ok},
		),
		"complete with another owner's token": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{1, 2, 3, complete("k", "x", "rx"), ok},
		),
		"release by a stale owner": hist(
			call1{0, 0, 1, claim("k", "a", 10*time.Millisecond), ok},
			call1{1, 100, 101, claim("k", "b", longLease), ok},
			call1{0, 102, 103, release("k", "a"), ok},
		),
		"renew of a completed record": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, 3, complete("k", "a", "ra"), ok},
			call1{0, 4, 5, renew("k", "a", longLease), ok},
		),
		"the owner is told it lost a lock it holds": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, 3, renew("k", "a", longLease), lost},
		),
		"a released key still read as taken": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, 3, release("k", "a"), ok},
			call1{1, 4, 5, claim("k", "b", longLease), inProgress("a", longLease)},
		),
		"a completed record with another result": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, 3, complete("k", "a", "ra"), ok},
			call1{1, 4, 5, claim("k", "b", longLease), completed("a", "other")},
		),
		"a lease that ends early": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{1, 100, 101, claim("k", "b", longLease), ok},
		),
		"a lease that never ends": hist(
			call1{0, 0, 1, claim("k", "a", 20*time.Millisecond), ok},
			call1{1, 500, 501, claim("k", "b", longLease), inProgress("a", 10*time.Millisecond)},
		),
		"a lease left longer than the lease": hist(
			call1{0, 0, 1, claim("k", "a", time.Second), ok},
			call1{1, 2, 3, claim("k", "b", longLease), inProgress("a", time.Minute)},
		),
		"a lost call that took effect twice": hist(
			call1{0, 0, 1, claim("k", "a", longLease), ok},
			call1{0, 2, -1, release("k", "a"), unknown},
			call1{1, 3, 4, claim("k", "b", longLease), ok},
			call1{2, 5, 6, claim("k", "c", longLease), ok},
		),
	} {
		if res, _ := verify(h); res != porcupine.Illegal {
			t.Errorf("%s: %v, want Illegal", name, res)
		}
	}
}

// --- broken stores --------------------------------------------------------------

// brokenStore is a store with one planted bug, to show that the histories
// and the checker find such bugs in a real concurrent run.
type brokenStore struct {
	mu   sync.Mutex
	recs map[string]brokenRec
	// unfenced: Complete does not check the token.
	unfenced bool
	// racyClaim: Claim looks, lets go of the lock, then writes.
	racyClaim bool
}

type brokenRec struct {
	state     idem.State
	token, fp string
	result    []byte
	expires   time.Time
}

func (s *brokenStore) live(key string) (brokenRec, bool) {
	r, ok := s.recs[key]
	return r, ok && time.Now().Before(r.expires)
}

func (s *brokenStore) Claim(_ context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.mu.Lock()
	r, ok := s.live(key)
	if s.racyClaim && !ok {
		s.mu.Unlock()
		runtime.Gosched()
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if ok {
		rec := &idem.Record{State: r.state, Fingerprint: r.fp, Token: r.token, Result: r.result}
		if r.state == idem.StateInProgress {
			rec.LeaseLeft = time.Until(r.expires)
		}
		return rec, nil
	}
	s.recs[key] = brokenRec{state: idem.StateInProgress, token: token, fp: fp, expires: time.Now().Add(lease)}
	return nil, nil
}

func (s *brokenStore) owned(key, token string) (brokenRec, bool) {
	r, ok := s.live(key)
	return r, ok && r.state == idem.StateInProgress && r.token == token
}

func (s *brokenStore) Complete(_ context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.owned(key, token)
	if !ok && s.unfenced {
		r, ok = s.live(key)
	}
	if !ok {
		return idem.ErrLockLost
	}
	s.recs[key] = brokenRec{state: idem.StateCompleted, fp: r.fp, result: result, expires: time.Now().Add(ttl)}
	return nil
}

func (s *brokenStore) Release(_ context.Context, key, token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.owned(key, token); !ok {
		return idem.ErrLockLost
	}
	delete(s.recs, key)
	return nil
}

func (s *brokenStore) Renew(_ context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.owned(key, token)
	if !ok {
		return idem.ErrLockLost
	}
	r.expires = time.Now().Add(lease)
	s.recs[key] = r
	return nil
}

// TestCheckerCatchesBrokenStores runs the histories of
// TestStoresAreLinearizable against stores with a planted bug: each must
// be caught within a few histories, and the visualisation written.
func TestCheckerCatchesBrokenStores(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func() *brokenStore
	}{
		{"the fence only", func() *brokenStore { return &brokenStore{} }},
		{"Complete ignores the token", func() *brokenStore { return &brokenStore{unfenced: true} }},
		{"Claim is not atomic", func() *brokenStore { return &brokenStore{racyClaim: true} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const tries = 20
			for i := 0; i < tries; i++ {
				s := tc.store()
				s.recs = map[string]brokenRec{}
				h := record(t, s, "", noExpiry(clients, window, perKey, opsPerRun), int64(i))
				res, info := verify(h)
				if tc.name == "the fence only" {
					// The control: the same store without a bug passes.
					if res != porcupine.Ok {
						t.Fatalf("the store without a planted bug: %v, want Ok", res)
					}
					if i == 2 {
						return
					}
					continue
				}
				if res == porcupine.Illegal {
					path := visualise(t, t.TempDir(), "broken", info)
					if st, err := os.Stat(path); err != nil || st.Size() == 0 {
						t.Fatalf("no visualisation at %s: %v", path, err)
					}
					t.Logf("caught in history %d of %d (%v)", i+1, tries, statsOf(h))
					return
				}
			}
			t.Fatalf("the planted bug went unnoticed in %d histories", tries)
		})
	}
}
