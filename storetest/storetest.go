// Package storetest is the conformance suite every idem.Store passes. A
// store's own test calls Run with a function that makes a fresh store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) idem.Store {
//			s := memstore.New()
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// The suite only uses the idem.Store methods, keys unique to each sub-test
// and real goroutines, so a store that passes it can back the middleware.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// Config describes the store under test for RunConfig.
type Config struct {
	// NewStore returns a fresh store for one sub-test. It is called once per
	// sub-test; clean up with t.Cleanup.
	NewStore func(t *testing.T) idem.Store

	// Wait lets d pass for the store made by the last NewStore call of t.
	// The default sleeps. Stores with a fake clock (memstore.WithClock,
	// miniredis FastForward) move their clock instead, which makes the
	// expiry tests instant.
	Wait func(t *testing.T, d time.Duration)

	// ClaimRounds is the number of rounds of ConcurrentClaimRounds, each a
	// race of ClaimRacers goroutines for a fresh key (default
	// DefaultClaimRounds). A store that is atomic only most of the time
	// (one that checks and then inserts in two steps) wins a race only
	// rarely, so the more rounds, the better the odds of catching it. Each
	// round costs ClaimRacers store calls: a store over the network may
	// choose fewer rounds. Under go test -short, a tenth of them run.
	ClaimRounds int
}

// DefaultClaimRounds is the number of concurrent-claim rounds run unless
// Config.ClaimRounds says otherwise: about 0.3s on memstore.
const DefaultClaimRounds = 2000

// ClaimRacers is the number of goroutines that race for the key of one
// concurrent-claim round.
const ClaimRacers = 16

// Run runs the conformance suite against stores made by newStore, letting
// real time pass in the expiry tests (a few seconds in all, in parallel).
func Run(t *testing.T, newStore func(t *testing.T) idem.Store) {
	RunConfig(t, Config{NewStore: newStore})
}

// RunConfig runs the conformance suite as Run does, with the store's own
// notion of waiting.
func RunConfig(t *testing.T, c Config) {
	if c.Wait == nil {
		c.Wait = func(_ *testing.T, d time.Duration) { time.Sleep(d) }
	}
	if c.ClaimRounds <= 0 {
		c.ClaimRounds = DefaultClaimRounds
	}
	if testing.Short() {
		c.ClaimRounds = max(1, c.ClaimRounds/10)
	}
	s := &suite{Config: c}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"ClaimNewKey", s.claimNewKey},
		{"ClaimTakenKeyReturnsRecord", s.claimTakenKey},
		{"CompleteKeepsResultAndFingerprint", s.completeKeepsResult},
		{"FencingStaleTokenChangesNothing", s.fencing},
		{"FencingCompletedRecord", s.fencingCompleted},
		{"ReleaseFreesKey", s.releaseFreesKey},
		{"LeaseExpiryFreesKey", s.leaseExpiry},
		{"RenewExtendsLease", s.renewExtendsLease},
		{"RetentionTTLHonoured", s.retention},
		{"ConcurrentClaimsOneWinner", s.concurrentClaims},
		{"ConcurrentClaimRounds", s.concurrentClaimRounds},
		{"ConcurrentCompleteAndClaim", s.concurrentCompleteAndClaim},
		{"ByteExactRoundTrip", s.byteExact},
		{"LargeRecord", s.largeRecord},
		{"AwkwardKeys", s.awkwardKeys},
		{"KeysAreIndependent", s.keysIndependent},
		{"CancelledContextIsAnError", s.cancelledContext},
		// The optional idem.Inspector part: skipped for stores without it.
		{"InspectorLookup", s.inspectLookup},
		{"InspectorLookupExpired", s.inspectExpired},
		{"InspectorDelete", s.inspectDelete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

type suite struct{ Config }

const (
	longLease = time.Minute
	longTTL   = time.Hour
)

// ctx returns a context for one store call, bounded so that a hanging store
// fails the test instead of stalling it.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// uniq returns a key no other sub-test or run uses.
func uniq(t *testing.T, name string) string {
	var b [8]byte
	rand.Read(b[:])
	return "storetest/" + t.Name() + "/" + name + "/" + hex.EncodeToString(b[:])
}

func mustClaim(t *testing.T, st idem.Store, key, token, fp string, lease time.Duration) {
	t.Helper()
	rec, err := st.Claim(ctx(t), key, token, fp, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	if rec != nil {
		t.Fatalf("Claim(%q) on a free key returned a record (state %v), want nil", key, rec.State)
	}
}

func mustRecord(t *testing.T, st idem.Store, key string) *idem.Record {
	t.Helper()
	rec, err := st.Claim(ctx(t), key, "probe-token", "probe-fp", longLease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	if rec == nil {
		t.Fatalf("Claim(%q) claimed the key, want the existing record", key)
	}
	return rec
}

func wantLockLost(t *testing.T, op string, err error) {
	t.Helper()
	if !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("%s: err = %v, want idem.ErrLockLost", op, err)
	}
}

func (s *suite) claimNewKey(t *testing.T) {
	st := s.NewStore(t)
	mustClaim(t, st, uniq(t, "k"), "tok-1", "fp-1", longLease)
}

func (s *suite) claimTakenKey(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "tok-1", "fp-1", 30*time.Second)
	rec, err := st.Claim(ctx(t), key, "tok-2", "fp-2", longLease)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil {
		t.Fatal("second Claim of a taken key returned nil: two owners")
	}
	if rec.State != idem.StateInProgress {
		t.Errorf("State = %v, want in_progress", rec.State)
	}
	if rec.Fingerprint != "fp-1" {
		t.Errorf("Fingerprint = %q, want the first claim's %q", rec.Fingerprint, "fp-1")
	}
	if rec.LeaseLeft <= 0 || rec.LeaseLeft > 30*time.Second {
		t.Errorf("LeaseLeft = %v, want within (0, 30s]", rec.LeaseLeft)
	}
	if rec.ExpiresIn != rec.LeaseLeft {
		t.Errorf("ExpiresIn = %v of an in-progress record, want its LeaseLeft %v", rec.ExpiresIn, rec.LeaseLeft)
	}
	if rec.Result != nil {
		t.Errorf("in-progress record has Result %q", rec.Result)
	}
	// The losing claim must not have changed the record: the first owner
	// still completes it.
	if err := st.Complete(ctx(t), key, "tok-1", []byte("r"), longTTL); err != nil {
		t.Fatalf("owner's Complete after a losing Claim: %v", err)
	}
}

func (s *suite) completeKeepsResult(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "tok-1", "fp-1", longLease)
	if err := st.Complete(ctx(t), key, "tok-1", []byte("result-1"), longTTL); err != nil {
		t.Fatal(err)
	}
	rec := mustRecord(t, st, key)
	if rec.State != idem.StateCompleted {
		t.Fatalf("State = %v, want completed", rec.State)
	}
	if string(rec.Result) != "result-1" {
		t.Errorf("Result = %q, want %q", rec.Result, "result-1")
	}
	if rec.Fingerprint != "fp-1" {
		t.Errorf("Fingerprint = %q, want %q", rec.Fingerprint, "fp-1")
	}
	if rec.LeaseLeft != 0 {
		t.Errorf("completed record has LeaseLeft %v, want 0", rec.LeaseLeft)
	}
	// The retention is what is left of the TTL given to Complete, not the
	// lease: a cache of completed records relies on it.
	if rec.ExpiresIn <= longTTL-time.Minute || rec.ExpiresIn > longTTL {
		t.Errorf("completed record has ExpiresIn %v, want about the retention TTL %v", rec.ExpiresIn, longTTL)
	}
}

func (s *suite) fencing(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "owner", "fp-1", longLease)
	wantLockLost(t, "Complete with a stale token", st.Complete(ctx(t), key, "stale", []byte("x"), longTTL))
	wantLockLost(t, "Release with a stale token", st.Release(ctx(t), key, "stale"))
	wantLockLost(t, "Renew with a stale token", st.Renew(ctx(t), key, "stale", longLease))
	rec := mustRecord(t, st, key)
	if rec.State != idem.StateInProgress || rec.Fingerprint != "fp-1" {
		t.Fatalf("record changed by stale calls: %+v", rec)
	}
	// The owner is unaffected.
	if err := st.Renew(ctx(t), key, "owner", longLease); err != nil {
		t.Fatalf("owner's Renew: %v", err)
	}
	if err := st.Complete(ctx(t), key, "owner", []byte("mine"), longTTL); err != nil {
		t.Fatalf("owner's Complete: %v", err)
	}
	if got := mustRecord(t, st, key).Result; string(got) != "mine" {
		t.Fatalf("Result = %q, want %q", got, "mine")
	}
	// Absent keys are not owned by anyone.
	absent := uniq(t, "absent")
	wantLockLost(t, "Complete of an absent key", st.Complete(ctx(t), absent, "owner", []byte("x"), longTTL))
	wantLockLost(t, "Release of an absent key", st.Release(ctx(t), absent, "owner"))
	wantLockLost(t, "Renew of an absent key", st.Renew(ctx(t), absent, "owner", longLease))
	mustClaim(t, st, absent, "tok", "fp", longLease)
}

func (s *suite) fencingCompleted(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "owner", "fp-1", longLease)
	if err := st.Complete(ctx(t), key, "owner", []byte("first"), longTTL); err != nil {
		t.Fatal(err)
	}
	// Even the former owner cannot touch a completed record.
	wantLockLost(t, "second Complete", st.Complete(ctx(t), key, "owner", []byte("second"), longTTL))
	wantLockLost(t, "Release of a completed record", st.Release(ctx(t), key, "owner"))
	wantLockLost(t, "Renew of a completed record", st.Renew(ctx(t), key, "owner", time.Millisecond))
	rec := mustRecord(t, st, key)
	if rec.State != idem.StateCompleted || string(rec.Result) != "first" {
		t.Fatalf("completed record changed: state %v result %q", rec.State, rec.Result)
	}
}

func (s *suite) releaseFreesKey(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "tok-1", "fp-1", longLease)
	if err := st.Release(ctx(t), key, "tok-1"); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, st, key, "tok-2", "fp-2", longLease)
	wantLockLost(t, "Complete by the released owner", st.Complete(ctx(t), key, "tok-1", []byte("x"), longTTL))
	if err := st.Complete(ctx(t), key, "tok-2", []byte("y"), longTTL); err != nil {
		t.Fatalf("new owner's Complete: %v", err)
	}
}

func (s *suite) leaseExpiry(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "dead-owner", "fp-1", time.Second)
	s.Wait(t, 1500*time.Millisecond)
	// An expired lease counts as absent: the next claim wins.
	mustClaim(t, st, key, "new-owner", "fp-2", longLease)
	wantLockLost(t, "Renew by the expired owner", st.Renew(ctx(t), key, "dead-owner", longLease))
	wantLockLost(t, "Complete by the expired owner", st.Complete(ctx(t), key, "dead-owner", []byte("x"), longTTL))
	wantLockLost(t, "Release by the expired owner", st.Release(ctx(t), key, "dead-owner"))
	rec := mustRecord(t, st, key)
	if rec.State != idem.StateInProgress || rec.Fingerprint != "fp-2" {
		t.Fatalf("new owner's record changed: %+v", rec)
	}
	// An expired owner that never got replaced is also fenced out.
	key2 := uniq(t, "k2")
	mustClaim(t, st, key2, "dead-owner", "fp-1", time.Second)
	s.Wait(t, 1500*time.Millisecond)
	wantLockLost(t, "Complete after the lease ran out", st.Complete(ctx(t), key2, "dead-owner", []byte("x"), longTTL))
}

func (s *suite) renewExtendsLease(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "owner", "fp-1", 2*time.Second)
	if err := st.Renew(ctx(t), key, "owner", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.Wait(t, 2500*time.Millisecond)
	rec := mustRecord(t, st, key)
	if rec.State != idem.StateInProgress {
		t.Fatalf("State = %v, want in_progress", rec.State)
	}
	if rec.LeaseLeft <= 5*time.Second || rec.LeaseLeft > 10*time.Second {
		t.Fatalf("LeaseLeft = %v after renewing to 10s and waiting 2.5s, want about 7.5s", rec.LeaseLeft)
	}
	if err := st.Complete(ctx(t), key, "owner", []byte("done"), longTTL); err != nil {
		t.Fatalf("Complete after renewal: %v", err)
	}
}

func (s *suite) retention(t *testing.T) {
	st := s.NewStore(t)
	short, long := uniq(t, "short"), uniq(t, "long")
	for _, k := range []string{short, long} {
		mustClaim(t, st, k, "owner", "fp", longLease)
	}
	// The retention TTL replaces the lease: a short TTL ends a record even
	// though its lease was long, a long one outlives a short lease.
	if err := st.Complete(ctx(t), short, "owner", []byte("r"), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx(t), long, "owner", []byte("r"), longTTL); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, st, short); rec.State != idem.StateCompleted {
		t.Fatalf("State = %v right after Complete, want completed", rec.State)
	}
	if rec := mustRecord(t, st, short); rec.ExpiresIn <= 0 || rec.ExpiresIn > time.Second {
		t.Fatalf("ExpiresIn = %v of a record kept for 1s, want within (0, 1s]", rec.ExpiresIn)
	}
	s.Wait(t, 1500*time.Millisecond)
	mustClaim(t, st, short, "next", "fp", longLease)
	if rec := mustRecord(t, st, long); rec.State != idem.StateCompleted || string(rec.Result) != "r" {
		t.Fatalf("long-lived record lost: %+v", rec)
	}
}

func (s *suite) concurrentClaims(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	const n = 100
	var (
		winners atomic.Int32
		wg      sync.WaitGroup
		start   = make(chan struct{})
		errs    = make(chan error, n)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			rec, err := st.Claim(context.Background(), key, fmt.Sprintf("tok-%d", i), "fp", longLease)
			switch {
			case err != nil:
				errs <- err
			case rec == nil:
				winners.Add(1)
			case rec.State != idem.StateInProgress || rec.Fingerprint != "fp":
				errs <- fmt.Errorf("loser saw record %+v", rec)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := winners.Load(); got != 1 {
		t.Fatalf("%d of %d concurrent claims won, want exactly 1", got, n)
	}
}

// concurrentClaimRounds races ClaimRacers goroutines for a fresh key, round
// after round: every round must have exactly one winner, and every loser
// must see the winner's record.
func (s *suite) concurrentClaimRounds(t *testing.T) {
	st := s.NewStore(t)
	base := uniq(t, "k")
	rounds := s.ClaimRounds
	// A check-then-insert race is lost only when two racers run at the
	// same moment: give them threads to run on even under GOMAXPROCS=1.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	type outcome struct {
		won bool
		err error
	}
	var (
		results = make([][ClaimRacers]outcome, rounds)
		round   atomic.Int64 // the round the racers may start: 1-based
		stop    atomic.Bool
		claimed sync.WaitGroup
		wg      sync.WaitGroup
	)
	// The racers live through every round. Between rounds they spin on
	// round rather than sleep on a channel, so that when a round starts
	// the racers that are running all claim at the same moment, instead
	// of one after the other as the scheduler wakes them.
	for g := 0; g < ClaimRacers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				for round.Load() <= int64(r) {
					if stop.Load() {
						return
					}
					runtime.Gosched()
				}
				key := base + "/" + strconv.Itoa(r)
				fp := "fp-" + strconv.Itoa(r)
				rec, err := st.Claim(context.Background(), key, fmt.Sprintf("tok-%d-%d", r, g), fp, longLease)
				switch {
				case err != nil:
					results[r][g].err = err
				case rec == nil:
					results[r][g].won = true
				case rec.State != idem.StateInProgress || rec.Fingerprint != fp:
					results[r][g].err = fmt.Errorf("loser saw record %+v", rec)
				}
				claimed.Done()
			}
		}(g)
	}
	for r := 0; r < rounds; r++ {
		claimed.Add(ClaimRacers)
		round.Store(int64(r + 1))
		claimed.Wait()
		winners := 0
		for _, o := range results[r] {
			if o.err != nil {
				t.Errorf("round %d: %v", r, o.err)
			}
			if o.won {
				winners++
			}
		}
		if winners != 1 {
			t.Errorf("round %d of %d: %d of %d concurrent claims of a fresh key won, want exactly 1", r+1, rounds, winners, ClaimRacers)
		}
		if t.Failed() {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
}

// concurrentCompleteAndClaim races the owner's Complete against many Claims:
// every Claim must see either the in-progress or the completed record, never
// a free key.
func (s *suite) concurrentCompleteAndClaim(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	mustClaim(t, st, key, "owner", "fp", longLease)
	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		if err := st.Complete(context.Background(), key, "owner", []byte("done"), longTTL); err != nil {
			errs <- fmt.Errorf("the owner's Complete: %w", err)
		}
	}()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			rec, err := st.Claim(context.Background(), key, fmt.Sprintf("tok-%d", i), "fp", longLease)
			switch {
			case err != nil:
				errs <- err
			case rec == nil:
				errs <- errors.New("a Claim won a key that was in progress or completed")
			case rec.State == idem.StateCompleted && string(rec.Result) != "done":
				errs <- fmt.Errorf("completed record has Result %q", rec.Result)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func (s *suite) byteExact(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	body := make([]byte, 0, 512)
	for i := 0; i < 512; i++ {
		body = append(body, byte(i))
	}
	resp := &idem.Response{
		Status: 201,
		Header: http.Header{
			"Set-Cookie":   {"a=1; Path=/", "b=2; HttpOnly"},
			"Content-Type": {"application/octet-stream"},
			"X-Empty":      {""},
			"X-Unicode":    {"prix \u20ac \u00e9t\u00e9"},
		},
		Body: body,
	}
	enc := idem.EncodeResponse(resp)
	mustClaim(t, st, key, "owner", "fp", longLease)
	if err := st.Complete(ctx(t), key, "owner", bytes.Clone(enc), longTTL); err != nil {
		t.Fatal(err)
	}
	rec := mustRecord(t, st, key)
	if !bytes.Equal(rec.Result, enc) {
		t.Fatalf("stored result differs from what was written (%d bytes back, %d written)", len(rec.Result), len(enc))
	}
	got, err := idem.DecodeResponse(rec.Result)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != 201 || !bytes.Equal(got.Body, body) {
		t.Fatalf("decoded status %d, body %d bytes; want 201 and the 512 bytes written", got.Status, len(got.Body))
	}
	if c := got.Header["Set-Cookie"]; len(c) != 2 || c[0] != "a=1; Path=/" || c[1] != "b=2; HttpOnly" {
		t.Fatalf("multi-value header = %q", c)
	}
	if v := got.Header.Get("X-Unicode"); v != resp.Header.Get("X-Unicode") {
		t.Fatalf("X-Unicode = %q", v)
	}
	// The empty result is a result too.
	empty := uniq(t, "empty")
	mustClaim(t, st, empty, "owner", "fp", longLease)
	if err := st.Complete(ctx(t), empty, "owner", []byte{}, longTTL); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, st, empty); rec.State != idem.StateCompleted || len(rec.Result) != 0 {
		t.Fatalf("empty result came back as state %v, %d bytes", rec.State, len(rec.Result))
	}
}

func (s *suite) largeRecord(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	big := make([]byte, 4<<20)
	rand.Read(big)
	mustClaim(t, st, key, "owner", "fp", longLease)
	if err := st.Complete(ctx(t), key, "owner", bytes.Clone(big), longTTL); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, st, key); !bytes.Equal(rec.Result, big) {
		t.Fatalf("4 MiB result came back as %d bytes, not byte-exact", len(rec.Result))
	}
}

func (s *suite) awkwardKeys(t *testing.T) {
	st := s.NewStore(t)
	base := uniq(t, "k")
	keys := []string{
		base + " with spaces",
		base + "|scope|sep:colon{hash}tag",
		base + "/\u00e9\u20ac\u65e5\u672c",
		base + "%25'\";--",
		base + strings.Repeat("x", 600),
	}
	for i, k := range keys {
		mustClaim(t, st, k, "owner", fmt.Sprintf("fp-%d", i), longLease)
	}
	for i, k := range keys {
		if err := st.Complete(ctx(t), k, "owner", []byte(k), longTTL); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	for i, k := range keys {
		rec := mustRecord(t, st, k)
		if string(rec.Result) != k || rec.Fingerprint != fmt.Sprintf("fp-%d", i) {
			t.Fatalf("key %d came back with result %q fingerprint %q", i, rec.Result, rec.Fingerprint)
		}
	}
}

func (s *suite) keysIndependent(t *testing.T) {
	st := s.NewStore(t)
	a, b := uniq(t, "a"), uniq(t, "b")
	mustClaim(t, st, a, "owner-a", "fp-a", longLease)
	mustClaim(t, st, b, "owner-b", "fp-b", longLease)
	wantLockLost(t, "Complete of b with a's token", st.Complete(ctx(t), b, "owner-a", []byte("x"), longTTL))
	if err := st.Release(ctx(t), a, "owner-a"); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, st, b); rec.Fingerprint != "fp-b" {
		t.Fatalf("releasing a changed b: %+v", rec)
	}
}

func (s *suite) cancelledContext(t *testing.T) {
	st := s.NewStore(t)
	key := uniq(t, "k")
	c, cancel := context.WithCancel(context.Background())
	cancel()
	rec, err := st.Claim(c, key, "owner", "fp", longLease)
	if err == nil {
		t.Fatalf("Claim with a cancelled context returned no error (record %v): a caller would think it owns the key", rec)
	}
	if errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Claim with a cancelled context returned ErrLockLost, want a store error")
	}
}

// inspector returns the store of a new sub-test as an idem.Inspector, or
// skips the sub-test if the store is not one.
func (s *suite) inspector(t *testing.T) (idem.Store, idem.Inspector) {
	st := s.NewStore(t)
	ins, ok := st.(idem.Inspector)
	if !ok {
		t.Skipf("%T does not implement idem.Inspector", st)
	}
	return st, ins
}

func mustLookup(t *testing.T, ins idem.Inspector, key string) *idem.KeyState {
	t.Helper()
	ks, err := ins.Lookup(ctx(t), key)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", key, err)
	}
	return ks
}

func (s *suite) inspectLookup(t *testing.T) {
	st, ins := s.inspector(t)
	key := uniq(t, "k")
	if ks := mustLookup(t, ins, key); ks != nil {
		t.Fatalf("Lookup of a key never used = %+v, want nil", ks)
	}
	mustClaim(t, st, key, "owner", "fp-1", 30*time.Second)
	ks := mustLookup(t, ins, key)
	if ks == nil || ks.State != idem.StateInProgress || ks.Fingerprint != "fp-1" || ks.Result != nil {
		t.Fatalf("Lookup of an in-progress key = %+v", ks)
	}
	if ks.ExpiresIn <= 0 || ks.ExpiresIn > 30*time.Second {
		t.Fatalf("in progress: ExpiresIn = %v, want the lease left, within (0, 30s]", ks.ExpiresIn)
	}
	// Looking changes nothing: the owner still owns the key.
	if err := st.Complete(ctx(t), key, "owner", []byte("result-1"), 2*time.Hour); err != nil {
		t.Fatalf("owner's Complete after Lookup: %v", err)
	}
	ks = mustLookup(t, ins, key)
	if ks == nil || ks.State != idem.StateCompleted || ks.Fingerprint != "fp-1" || string(ks.Result) != "result-1" {
		t.Fatalf("Lookup of a completed key = %+v", ks)
	}
	if ks.ExpiresIn <= time.Hour || ks.ExpiresIn > 2*time.Hour {
		t.Fatalf("completed: ExpiresIn = %v, want the retention left, within (1h, 2h]", ks.ExpiresIn)
	}
	if rec := mustRecord(t, st, key); rec.State != idem.StateCompleted || string(rec.Result) != "result-1" {
		t.Fatalf("record after Lookup: %+v", rec)
	}
	// Released keys are absent.
	other := uniq(t, "released")
	mustClaim(t, st, other, "owner", "fp", longLease)
	if err := st.Release(ctx(t), other, "owner"); err != nil {
		t.Fatal(err)
	}
	if ks := mustLookup(t, ins, other); ks != nil {
		t.Fatalf("Lookup of a released key = %+v, want nil", ks)
	}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if ks, err := ins.Lookup(c, key); err == nil {
		t.Fatalf("Lookup with a cancelled context returned %+v and no error", ks)
	}
}

func (s *suite) inspectExpired(t *testing.T) {
	st, ins := s.inspector(t)
	lease, done := uniq(t, "lease"), uniq(t, "done")
	mustClaim(t, st, lease, "owner", "fp", time.Second)
	mustClaim(t, st, done, "owner", "fp", longLease)
	if err := st.Complete(ctx(t), done, "owner", []byte("r"), time.Second); err != nil {
		t.Fatal(err)
	}
	s.Wait(t, 1500*time.Millisecond)
	for _, k := range []string{lease, done} {
		if ks := mustLookup(t, ins, k); ks != nil {
			t.Fatalf("Lookup of an expired key = %+v, want nil", ks)
		}
	}
	if ok, err := ins.Delete(ctx(t), lease); err != nil || ok {
		t.Fatalf("Delete of an expired key = %v, %v; want false, nil", ok, err)
	}
}

func (s *suite) inspectDelete(t *testing.T) {
	st, ins := s.inspector(t)
	done, running, absent := uniq(t, "done"), uniq(t, "running"), uniq(t, "absent")

	mustClaim(t, st, done, "owner", "fp-1", longLease)
	if err := st.Complete(ctx(t), done, "owner", []byte("first"), longTTL); err != nil {
		t.Fatal(err)
	}
	if ok, err := ins.Delete(ctx(t), done); err != nil || !ok {
		t.Fatalf("Delete of a completed key = %v, %v; want true, nil", ok, err)
	}
	if ks := mustLookup(t, ins, done); ks != nil {
		t.Fatalf("Lookup after Delete = %+v, want nil", ks)
	}
	// The next request with the key runs again.
	mustClaim(t, st, done, "next", "fp-2", longLease)

	mustClaim(t, st, running, "owner", "fp", longLease)
	if ok, err := ins.Delete(ctx(t), running); err != nil || !ok {
		t.Fatalf("Delete of an in-progress key = %v, %v; want true, nil", ok, err)
	}
	mustClaim(t, st, running, "second", "fp", longLease)
	// The first owner is fenced out; the second one is not disturbed.
	wantLockLost(t, "the deleted owner's Complete", st.Complete(ctx(t), running, "owner", []byte("x"), longTTL))
	if err := st.Complete(ctx(t), running, "second", []byte("y"), longTTL); err != nil {
		t.Fatalf("the new owner's Complete: %v", err)
	}

	if ok, err := ins.Delete(ctx(t), absent); err != nil || ok {
		t.Fatalf("Delete of an absent key = %v, %v; want false, nil", ok, err)
	}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ins.Delete(c, done); err == nil {
		t.Fatal("Delete with a cancelled context returned no error")
	}
	if ks := mustLookup(t, ins, done); ks == nil || ks.Fingerprint != "fp-2" {
		t.Fatalf("a Delete with a cancelled context changed the key: %+v", ks)
	}
}

// Bench measures a store under parallel load: each iteration claims a new
// key, completes it, and claims it again to read the completed record, the
// store's share of one new request and one replay. Report it from a store's
// own benchmark:
//
//	func BenchmarkStore(b *testing.B) { storetest.Bench(b, memstore.New()) }
func Bench(b *testing.B, st idem.Store) {
	var seq atomic.Int64
	var prefix [8]byte
	rand.Read(prefix[:])
	result := bytes.Repeat([]byte("r"), 256)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := context.Background()
		for pb.Next() {
			key := fmt.Sprintf("bench/%x/%d", prefix, seq.Add(1))
			if rec, err := st.Claim(c, key, "owner", "fp", longLease); err != nil || rec != nil {
				b.Errorf("Claim: %v %v", rec, err)
				return
			}
			if err := st.Complete(c, key, "owner", result, longTTL); err != nil {
				b.Errorf("Complete: %v", err)
				return
			}
			if rec, err := st.Claim(c, key, "other", "fp", longLease); err != nil || rec == nil {
				b.Errorf("replay Claim: %v %v", rec, err)
				return
			}
		}
	})
}
