package reliability_test

import (
	"bytes"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
)

// Settings of the fault tests: short, so that waiting for a lease to end
// costs a second.
const (
	faultStoreTimeout = 200 * time.Millisecond
	faultLockTTL      = time.Second
	// callBound is the longest a request that meets a fault may take: a
	// claim (one store timeout), or a claim, the handler and three
	// Complete attempts 20ms and 100ms apart, with room for a slow machine.
	callBound = 5 * faultStoreTimeout
)

// storeOver makes the store under test, connected to addr (the proxy).
type storeOver func(t *testing.T, addr string) idem.Store

// Store faults through a real TCP proxy between the middleware and Redis.
func TestRedisStoreFaults(t *testing.T) {
	addr := testenv.Server(t, testenv.RedisAddr, "a Redis server")
	runFaultSuite(t, addr, func(t *testing.T, addr string) idem.Store {
		return newRedisStore(newRedisClient(t, addr))
	})
}

// Store faults through a real TCP proxy between the middleware and
// PostgreSQL; the proxy being stopped stands for the server's outage.
func TestPostgresStoreFaults(t *testing.T) {
	dsn, upstream := postgresUpstream(t)
	table := newPostgresTable(t, dsn)
	runFaultSuite(t, upstream, func(t *testing.T, addr string) idem.Store {
		return newPostgresStore(t, dsnVia(t, dsn, addr), table)
	})
}

func runFaultSuite(t *testing.T, upstream string, newStore storeOver) {
	setupLock := func(t *testing.T, lockTTL time.Duration) (*faultProxy, *app) {
		p := newProxy(t, upstream)
		a := newApp(t, newStore(t, p.Addr()), idem.WithStoreTimeout(faultStoreTimeout), idem.WithLockTTL(lockTTL))
		// Warm up: the connection pool is filled and the scripts are loaded.
		if r := a.mustPost("warm-"+randomHex(4), "{}"); r.Status != http.StatusCreated {
			t.Fatalf("warm-up: %d %s", r.Status, r.Body)
		}
		return p, a
	}
	setup := func(t *testing.T) (*faultProxy, *app) { return setupLock(t, faultLockTTL) }

	// A claim that meets a fault: 503 store-unavailable with Retry-After,
	// within the bound, handler not run. After recovery the key runs once.
	// A claim whose request reached the server (the reply was late or lost)
	// may leave an orphan lease: the middleware releases it in the
	// background, but that release meets the same fault and may fail, in
	// which case retries get 409 until the lease ends.
	for _, tc := range []struct {
		fault   string
		reached bool // the claim reached the server before the fault hit it
	}{
		{faultLatency, true},
		{faultBlackhole, false},
		{faultReset, false},
		{faultReplyLost, true},
		{faultDown, false},
	} {
		t.Run("claim/"+tc.fault, func(t *testing.T) {
			p, a := setup(t)
			key := "claim-" + randomHex(6)
			if err := p.set(tc.fault, faultStoreTimeout); err != nil {
				t.Fatal(err)
			}
			r := a.mustPost(key, "{}")
			wantProblem(t, r, http.StatusServiceUnavailable, "store-unavailable")
			if ra := retryAfter(r); ra != 1 {
				t.Fatalf("Retry-After = %q, want 1", r.Header.Get("Retry-After"))
			}
			if r.Elapsed > callBound {
				t.Fatalf("the failed claim took %v, more than %v (store timeout %v)", r.Elapsed, callBound, faultStoreTimeout)
			}
			if n := a.runsOf(key); n != 0 {
				t.Fatalf("handler ran %d times on a failed claim", n)
			}
			if ev, _ := a.lastEvent(key); ev.Outcome != idem.OutcomeStoreError || ev.Err == nil {
				t.Fatalf("hook got %v (err %v), want store_error with the error", ev.Outcome, ev.Err)
			}
			if err := p.clear(tc.fault); err != nil {
				t.Fatal(err)
			}

			first := a.mustPost(key, "{}")
			switch {
			case tc.reached && first.Status == http.StatusConflict:
				wantProblem(t, first, http.StatusConflict, "key-in-use")
			case first.Status != http.StatusCreated:
				t.Fatalf("first request after recovery: %d %s, want 201", first.Status, first.Body)
			}
			final := first
			conflicts := 0
			if !pollUntil(faultLockTTL+3*time.Second, 50*time.Millisecond, func() bool {
				if final.Status == http.StatusConflict {
					conflicts++
					final = a.mustPost(key, "{}")
				}
				return final.Status != http.StatusConflict
			}) {
				t.Fatalf("key still in use %v after recovery", faultLockTTL+3*time.Second)
			}
			if final.Status != http.StatusCreated {
				t.Fatalf("after recovery: %d %s", final.Status, final.Body)
			}
			if n := a.runsOf(key); n != 1 {
				t.Fatalf("handler ran %d times, want 1", n)
			}
			if again := a.mustPost(key, "{}"); !bytes.Equal(again.Body, final.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("replay: %d %s, want %s", again.Status, again.Body, final.Body)
			}
			t.Logf("%s on claim: 503 in %v; after recovery %d conflicts (orphan lease), then 1 execution", tc.fault, r.Elapsed.Round(time.Millisecond), conflicts)
		})
	}

	// The connection is cut while the response is being recorded: the request
	// never reaches the server. The client gets 503 response-not-recorded with
	// Retry-After = lock TTL, not the unrecorded answer; the key stays in
	// progress until the lease ends; then a retry runs the handler again.
	// The three Complete attempts take up to about 3 store timeouts, which
	// here is most of a 1s lease: the lease is 2s, so that the key is
	// certainly still in progress when the client retries.
	const completeLockTTL = 2 * time.Second
	t.Run("complete/reset", func(t *testing.T) {
		p, a := setupLock(t, completeLockTTL)
		key := "complete-reset-" + randomHex(6)
		var faultErr error
		a.onRun(key, func() int {
			faultErr = p.set(faultReset, faultStoreTimeout)
			return 0
		})
		r := a.mustPost(key, "{}")
		if faultErr != nil {
			t.Fatal(faultErr)
		}
		wantProblem(t, r, http.StatusServiceUnavailable, "response-not-recorded")
		if ra := retryAfter(r); ra != int(completeLockTTL/time.Second) {
			t.Fatalf("Retry-After = %q, want the lock TTL, %v", r.Header.Get("Retry-After"), completeLockTTL)
		}
		if r.Elapsed > 3*faultStoreTimeout+120*time.Millisecond+callBound {
			t.Fatalf("the failed Complete took %v", r.Elapsed)
		}
		if ev, _ := a.lastEvent(key); ev.Outcome != idem.OutcomeStoreError || ev.Err == nil {
			t.Fatalf("hook got %v, want store_error", ev.Outcome)
		}
		a.onRun(key, nil)
		if err := p.clear(faultReset); err != nil {
			t.Fatal(err)
		}
		dup := a.mustPost(key, "{}")
		wantProblem(t, dup, http.StatusConflict, "key-in-use")
		if ra := retryAfter(dup); ra < 1 || ra > int(completeLockTTL/time.Second) {
			t.Fatalf("Retry-After of the 409 = %q", dup.Header.Get("Retry-After"))
		}
		var final reply
		if !pollUntil(completeLockTTL+3*time.Second, 50*time.Millisecond, func() bool {
			final = a.mustPost(key, "{}")
			return final.Status != http.StatusConflict
		}) {
			t.Fatal("key still in use long after its lease")
		}
		if final.Status != http.StatusCreated || a.runsOf(key) != 2 {
			t.Fatalf("after the lease: %d, %d runs; want 201 and a second run", final.Status, a.runsOf(key))
		}
		t.Logf("reset during Complete: 503 response-not-recorded after %v, Retry-After %s; 409 until the lease ended; then the handler ran a second time",
			r.Elapsed.Round(time.Millisecond), r.Header.Get("Retry-After"))
		if again := a.mustPost(key, "{}"); !bytes.Equal(again.Body, final.Body) {
			t.Fatal("the second run's response is not replayed")
		}
	})

	// The Complete reaches the server but its reply is lost: the client
	// gets 503 response-not-recorded, yet the response is recorded and a
	// retry replays it; the handler ran once.
	t.Run("complete/replylost", func(t *testing.T) {
		p, a := setupLock(t, completeLockTTL)
		key := "complete-lost-" + randomHex(6)
		var faultErr error
		a.onRun(key, func() int {
			faultErr = p.set(faultReplyLost, faultStoreTimeout)
			return 0
		})
		r := a.mustPost(key, "{}")
		if faultErr != nil {
			t.Fatal(faultErr)
		}
		wantProblem(t, r, http.StatusServiceUnavailable, "response-not-recorded")
		if err := p.clear(faultReplyLost); err != nil {
			t.Fatal(err)
		}
		// The retry replays; a 503 store-unavailable first (the pool still
		// holding a connection the fault broke) is retried, as a client would.
		var again reply
		pollUntil(10*time.Second, 50*time.Millisecond, func() bool {
			again = a.mustPost(key, "{}")
			return !isStoreUnavailable(again)
		})
		if again.Status != http.StatusCreated || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry: %d %s, want the replay of the recorded 201", again.Status, again.Body)
		}
		if n := a.runsOf(key); n != 1 {
			t.Fatalf("handler ran %d times", n)
		}
		t.Logf("reply of Complete lost: 503 response-not-recorded after %v; the retry replayed the recorded 201; 1 execution", r.Elapsed.Round(time.Millisecond))
	})

	t.Run("chaos", func(t *testing.T) { chaos(t, setup) })
}

// chaos sends many keys, each retried (after Retry-After) until it gets a 2xx, while the proxy
// cycles through every fault. Afterwards every key got one response, byte
// for byte the same on every 2xx, and a key ran its handler more than once
// only if one of its requests was answered response-not-recorded.
func chaos(t *testing.T, setup func(t *testing.T) (*faultProxy, *app)) {
	const (
		keys    = 150
		workers = 12
		phase   = 150 * time.Millisecond
		rounds  = 2 // each fault is on this many times
	)
	p, a := setup(t)
	// A handler that takes a while, so that faults also hit leases and
	// Completes, not only claims.
	a.delay = 30 * time.Millisecond
	faults := []string{faultLatency, faultBlackhole, faultReset, faultReplyLost, faultDown}
	prefix := "chaos-" + randomHex(4) + "-"

	type keyLog struct {
		created     []byte
		mismatch    bool
		notRecorded int
		attempts    int
		err         error
	}
	logs := make([]keyLog, keys)
	var (
		mu      sync.Mutex
		counts  = map[string]int{}
		slowest time.Duration
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range jobs {
				l := &logs[k]
				key := fmt.Sprintf("%s%d", prefix, k)
				deadline := time.Now().Add(20 * time.Second)
				for {
					l.attempts++
					r, err := a.post(key, "{}")
					if err != nil {
						l.err = err
						break
					}
					name := fmt.Sprint(r.Status)
					if r.Status >= 300 {
						if name, err = problemType(r); err != nil {
							l.err = err
							break
						}
					}
					mu.Lock()
					counts[name]++
					slowest = max(slowest, r.Elapsed)
					mu.Unlock()
					if r.Status == http.StatusCreated {
						if l.created == nil {
							// Once more: a client that got it gets it again.
							l.created = r.Body
							continue
						}
						l.mismatch = !bytes.Equal(l.created, r.Body)
						break
					}
					switch name {
					case "response-not-recorded":
						l.notRecorded++
					case "key-in-use", "store-unavailable":
					default:
						l.err = fmt.Errorf("unexpected answer %d %s: %s", r.Status, name, r.Body)
					}
					if l.err != nil {
						break
					}
					if time.Now().After(deadline) {
						ev, _ := a.lastEvent(key)
						l.err = fmt.Errorf("no 201 after %d attempts; last answer %d %s; last outcome %v: %v", l.attempts, r.Status, name, ev.Outcome, ev.Err)
						break
					}
					// As a client should: wait as long as Retry-After says
					// (at most a second here) before trying again.
					pause := time.Duration(retryAfter(r)) * time.Second
					time.Sleep(min(max(pause, 20*time.Millisecond), time.Second))
				}
			}
		}()
	}

	start := time.Now()
	chaosDone := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < rounds*len(faults) && err == nil; i++ {
			f := faults[i%len(faults)]
			if err = p.set(f, faultStoreTimeout); err == nil {
				time.Sleep(phase)
				err = p.clear(f)
			}
			time.Sleep(phase)
		}
		chaosDone <- err
	}()
	go func() {
		// Spread the keys over the faults.
		every := time.Duration(rounds*len(faults)) * 2 * phase / keys
		for k := 0; k < keys; k++ {
			jobs <- k
			time.Sleep(every)
		}
		close(jobs)
	}()
	wg.Wait()
	if err := <-chaosDone; err != nil {
		t.Fatal(err)
	}

	executions, twice, withNotRecorded := 0, 0, 0
	for k := range logs {
		l := &logs[k]
		key := fmt.Sprintf("%s%d", prefix, k)
		if l.err != nil {
			t.Fatalf("key %s: %v", key, l.err)
		}
		if l.mismatch {
			t.Fatalf("key %s: two different 201 bodies", key)
		}
		runs := a.runsOf(key)
		executions += runs
		if l.notRecorded > 0 {
			withNotRecorded++
		}
		if runs > 1 {
			twice++
		}
		if runs < 1 || runs > 1+l.notRecorded {
			t.Fatalf("key %s ran %d times with %d response-not-recorded answers: a key whose response reached a client ran again", key, runs, l.notRecorded)
		}
		if r := a.mustPost(key, "{}"); !bytes.Equal(r.Body, l.created) {
			t.Fatalf("key %s: final replay %d %s differs from %s", key, r.Status, r.Body, l.created)
		}
	}
	if counts["store-unavailable"] == 0 {
		t.Fatal("no request met a fault: the chaos did not happen")
	}
	if slowest > 3*callBound {
		t.Fatalf("a request took %v under faults", slowest)
	}
	t.Logf("chaos: %d keys, %d requests in %v; answers %v; %d executions; %d keys got response-not-recorded, %d of them ran twice; slowest answer %v",
		keys, sum(counts), time.Since(start).Round(time.Millisecond), counts, executions, withNotRecorded, twice, slowest.Round(time.Millisecond))
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
