package main

// Reliability tests: several example processes on one shared store, driven
// as black boxes. They prove exactly-once execution under a storm of
// duplicates spread over processes, at-least-once after a process is killed
// mid-handler, and lease renewal for handlers slower than the lock TTL.

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/storeurl"
	"github.com/idemgo/idem/internal/testenv"
)

// relStoreSpec returns the -store value of the shared store name
// ("redis", "redis-cluster", "postgres", "mysql" or "sqlite"). A store whose server
// is not configured, or that this build of the example does not open,
// fails the test under CI=true and skips it elsewhere.
func relStoreSpec(t *testing.T, name string) string {
	t.Helper()
	env := map[string]string{
		"redis":         testenv.RedisAddr,
		"redis-cluster": testenv.RedisClusterAddrs,
		"postgres":      testenv.PostgresDSN,
		"mysql":         testenv.MySQLDSN,
	}[name]
	v := ""
	if env != "" {
		v = testenv.Server(t, env, "a "+name+" server")
	}
	var spec string
	switch name {
	case "redis":
		spec = "redis://" + v + "/0"
	case "redis-cluster":
		addrs := strings.Split(v, ",")
		spec = "redis-cluster://" + addrs[0]
		for i, a := range addrs[1:] {
			sep := "&"
			if i == 0 {
				sep = "?"
			}
			spec += sep + "addr=" + a
		}
	case "postgres":
		spec = v
	case "mysql":
		spec = mysqlURL(t, v)
	case "sqlite":
		spec = "sqlite:" + filepath.Join(t.TempDir(), "idem.db")
	default:
		t.Fatalf("unknown store %q", name)
	}
	if !slices.Contains(storeurl.Schemes(), storeurl.Kind(spec)) {
		testenv.Unavailable(t, fmt.Sprintf("the example does not open %q stores (no opener registered for %q)", name, storeurl.Kind(spec)))
	}
	return spec
}

// relKey returns a key no other test or run uses.
func relKey(name string) string { return uniqueKey("rel-" + name) }

func totalExecutions(procs ...*proc) int64 {
	var n int64
	for _, p := range procs {
		n += p.ledger().Executions
	}
	return n
}

// The storm: 1,000 keys, each sent 8 times at once, spread over 3
// processes that share one store. The handler sleeps, so that the copies of
// a key overlap. Exactly 1,000 executions in all; for each key every 201 is
// byte-identical; every other answer is a 409 problem; no 5xx.
//
// Client concurrency is bounded: 96 requests in flight on the servers, 24
// on SQLite, where every claim and every completion takes the one write
// lock of the file. SQLite gets a store timeout of 5s, the busy_timeout of
// sqlstore.SQLiteDSN: a writer queued behind the others on a loaded machine
// is given the wait the database itself allows.
//
// The storm checks what the library promises, not how fast the machine is:
// a 503 store-unavailable (the store did not answer in time; the handler
// did not run) is retried with the same key after its Retry-After, as a
// client does, and must end in the key's one 201 or a 409. Any other
// answer, and any second execution, fails the test.
func TestReliabilityStorm(t *testing.T) {
	for _, tc := range []struct {
		name         string
		inFlight     int
		storeTimeout string
	}{
		{"redis", 96, "2s"},
		{"redis-cluster", 96, "2s"},
		{"postgres", 96, "2s"},
		{"mysql", 96, "2s"},
		{"sqlite", 24, "5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testenv.SkipShort(t, "the storm sends 8,000 requests to 3 processes")
			spec := relStoreSpec(t, tc.name)
			runStorm(t, tc.name, spec, tc.inFlight, tc.storeTimeout)
		})
	}
}

// storeUnavailable reports whether r is the 503 store-unavailable problem,
// and the Retry-After it asks for.
func storeUnavailable(r reply) (bool, time.Duration) {
	if r.Status != http.StatusServiceUnavailable || !bytes.Contains(r.Body, []byte(`#problem-store-unavailable"`)) {
		return false, 0
	}
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra < 1 {
		return false, 0
	}
	return true, time.Duration(ra) * time.Second
}

// warmUp sends rounds of n concurrent new keys to each process until a
// round gets no 503, so that connection pools are filled before a test
// measures anything. It returns how many 503s the cold start cost.
func warmUp(t *testing.T, procs []*proc, n int) int {
	t.Helper()
	cold := 0
	prefix := relKey("warm")
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; ; round++ {
		var (
			mu   sync.Mutex
			fail int
			wg   sync.WaitGroup
		)
		for i, p := range procs {
			for j := 0; j < n; j++ {
				wg.Add(1)
				go func(p *proc, key string) {
					defer wg.Done()
					r, err := p.post(key, "", `{"amount": 1, "currency": "eur"}`)
					if err != nil || r.Status != http.StatusCreated {
						mu.Lock()
						fail++
						mu.Unlock()
					}
				}(p, fmt.Sprintf("%s-%d-%d-%d", prefix, round, i, j))
			}
		}
		wg.Wait()
		cold += fail
		if fail == 0 {
			return cold
		}
		if time.Now().After(deadline) {
			t.Fatalf("the processes still fail requests after 20s of warm-up:\n%s", errorLines(procs))
		}
	}
}

func runStorm(t *testing.T, name, spec string, inFlight int, storeTimeout string) {
	const (
		keys    = 1000
		dups    = 8
		delayMS = 25
	)
	procs := []*proc{
		startExample(t, "-store", spec, "-store-timeout", storeTimeout),
		startExample(t, "-store", spec, "-store-timeout", storeTimeout),
		startExample(t, "-store", spec, "-store-timeout", storeTimeout),
	}
	cold := warmUp(t, procs, inFlight/len(procs))
	before := totalExecutions(procs...)
	prefix := relKey("storm-" + name)
	body := func(k int) string {
		return fmt.Sprintf(`{"amount": %d, "currency": "eur", "delay_ms": %d}`, k+1, delayMS)
	}

	type job struct{ k, d int }
	replies := make([][dups]reply, keys)
	errs := make([][dups]error, keys)
	jobs := make(chan job)
	var (
		wg      sync.WaitGroup
		retried atomic.Int64
	)
	start := time.Now()
	for w := 0; w < inFlight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				// The copies of key k go to the processes in turn, starting
				// at a different one for each key.
				p := procs[(j.k+j.d)%len(procs)]
				for attempt := 1; ; attempt++ {
					r, err := p.post(fmt.Sprintf("%s-%d", prefix, j.k), "Bearer storm", body(j.k))
					replies[j.k][j.d], errs[j.k][j.d] = r, err
					if retry, after := storeUnavailable(r); err == nil && retry && attempt < 10 {
						retried.Add(1)
						time.Sleep(after)
						continue
					}
					break
				}
			}
		}()
	}
	// Key-major order: the 8 copies of a key are taken by 8 workers at
	// about the same moment.
	for k := 0; k < keys; k++ {
		for d := 0; d < dups; d++ {
			jobs <- job{k, d}
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	created, replayed, conflicts := 0, 0, 0
	for k := 0; k < keys; k++ {
		var first []byte
		for d := 0; d < dups; d++ {
			r, err := replies[k][d], errs[k][d]
			if err != nil {
				t.Fatalf("key %d copy %d: %v", k, d, err)
			}
			switch r.Status {
			case http.StatusCreated:
				created++
				if r.Header.Get("Idempotent-Replayed") == "true" {
					replayed++
				}
				if first == nil {
					first = r.Body
				} else if !bytes.Equal(first, r.Body) {
					t.Fatalf("key %d: two different 201 bodies:\n%s\n%s", k, first, r.Body)
				}
			case http.StatusConflict:
				wantProblemReply(t, r, http.StatusConflict)
				if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 {
					t.Fatalf("key %d: 409 with Retry-After %q", k, r.Header.Get("Retry-After"))
				}
				conflicts++
			default:
				t.Fatalf("key %d copy %d: %d %s\nprocess logs:\n%s", k, d, r.Status, r.Body, errorLines(procs))
			}
		}
		if first == nil {
			t.Fatalf("key %d: no copy got the 201", k)
		}
	}
	executions := totalExecutions(procs...) - before
	if executions != keys {
		t.Fatalf("%d keys × %d copies over %d processes ran the handler %d times, want %d", keys, dups, len(procs), executions, keys)
	}
	t.Logf("storm on %s: %d keys × %d copies over %d processes, %d in flight, handler %dms, store timeout %s: %d executions; %d answers 201 (%d of them replays), %d answers 409, 0 others, after %d retries of a 503 store-unavailable; %v (warm-up: %d cold-start failures)",
		name, keys, dups, len(procs), inFlight, delayMS, storeTimeout, executions, created, replayed, conflicts, retried.Load(), elapsed.Round(time.Millisecond), cold)
}

// errorLines returns the first error lines the processes logged.
func errorLines(procs []*proc) string {
	var out []string
	for i, p := range procs {
		var log string
		if lw, ok := p.cmd.Stderr.(*lockedWriter); ok {
			lw.mu.Lock()
			log = p.stderr.String()
			lw.mu.Unlock()
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "level=ERROR") && len(out) < 10 {
				out = append(out, fmt.Sprintf("process %d: %s", i, line))
			}
		}
	}
	return strings.Join(out, "\n")
}

// kill9 kills p with SIGKILL, as a crash or the OOM killer would, and waits
// for it to exit.
func kill9(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the harness's cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the killed process did not exit within 10s")
	}
}

// A process killed mid-handler: while its lease lives, retries on a
// surviving process get 409; after it expires exactly one retry runs the
// handler; what the killed process completed before is still replayed.
func TestReliabilityCrash(t *testing.T) {
	for _, name := range []string{"redis", "postgres", "mysql"} {
		t.Run(name, func(t *testing.T) {
			runCrash(t, name, relStoreSpec(t, name))
		})
	}
}

func runCrash(t *testing.T, name, spec string) {
	const lockTTL = 2 * time.Second
	args := []string{"-store", spec, "-lock-ttl", lockTTL.String()}
	a := startExample(t, args...)
	b := startExample(t, args...)

	// Records completed by a before the crash.
	done := make(map[string][]byte)
	body := `{"amount": 10, "currency": "eur"}`
	for i := 0; i < 20; i++ {
		key := relKey(fmt.Sprintf("crash-done-%d", i))
		r := a.mustPost(key, "", body)
		if r.Status != http.StatusCreated {
			t.Fatalf("POST: %d %s", r.Status, r.Body)
		}
		done[key] = r.Body
	}

	// A slow payment on a, killed mid-handler (a handler of 1.5s, killed
	// as soon as it has started).
	key := relKey("crash-" + name)
	slow := `{"amount": 99, "currency": "eur", "delay_ms": 1500}`
	started := a.ledger().Executions
	go a.post(key, "", slow) // its connection dies with a
	if !pollUntilTrue(10*time.Second, func() bool { return a.ledger().Executions > started }) {
		t.Fatal("the slow payment did not start")
	}
	kill9(t, a)
	killed := time.Now()
	bBefore := b.ledger().Executions

	// While the lease lives: 409 on the survivor, with Retry-After within
	// the lock TTL.
	r := b.mustPost(key, "", slow)
	wantProblemReply(t, r, http.StatusConflict)
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > int(lockTTL/time.Second) {
		t.Fatalf("Retry-After = %q, want 1..%d", r.Header.Get("Retry-After"), int(lockTTL/time.Second))
	}

	// After it: one retry runs the handler (a retry is the same request,
	// delay included); later ones replay it.
	conflicts := 1
	var created reply
	var takeover time.Duration // from the kill to the retry that ran
	for {
		sent := time.Since(killed)
		r := b.mustPost(key, "", slow)
		if r.Status != http.StatusConflict {
			created, takeover = r, sent
			break
		}
		wantProblemReply(t, r, http.StatusConflict)
		conflicts++
		if time.Since(killed) > lockTTL+5*time.Second {
			t.Fatalf("still 409 %v after the kill; the lease is %v", time.Since(killed), lockTTL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if created.Status != http.StatusCreated {
		t.Fatalf("retry after the lease: %d %s", created.Status, created.Body)
	}
	// The handler had just started, with a fresh lease of lockTTL, when
	// it was killed: the key must have stayed locked for most of it.
	if takeover < lockTTL/2 {
		t.Fatalf("the key was free again %v after the kill, under a %v lease", takeover, lockTTL)
	}
	c := startExample(t, args...)
	for _, p := range []*proc{b, c} {
		if r := p.mustPost(key, "", slow); !bytes.Equal(r.Body, created.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("after the takeover: %d %s, want the replay of %s", r.Status, r.Body, created.Body)
		}
		for k, want := range done {
			if r := p.mustPost(k, "", body); !bytes.Equal(r.Body, want) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("record completed before the kill: %d %s, want the replay of %s", r.Status, r.Body, want)
			}
		}
	}
	if n := b.ledger().Executions - bBefore; n != 1 {
		t.Fatalf("the survivor ran the handler %d times for the orphaned key, want 1", n)
	}
	if n := c.ledger().Executions; n != 0 {
		t.Fatalf("a new process ran the handler %d times, want 0", n)
	}
	t.Logf("kill -9 mid-handler on %s, lock TTL %v: %d retries got 409, the retry sent %v after the kill ran the handler once more; %d records completed before the kill all replayed by 2 processes",
		name, lockTTL, conflicts, takeover.Round(time.Millisecond), len(done))
}

// pollUntilTrue calls f every 10ms until it returns true or d passes.
func pollUntilTrue(d time.Duration, f func() bool) bool {
	end := time.Now().Add(d)
	for !f() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// A handler that runs 3 times the lock TTL keeps its key: the lease is
// renewed, so duplicates sent meanwhile, to its process and to another,
// all get 409, and the handler runs once.
func TestReliabilitySlowHandlerKeepsLease(t *testing.T) {
	for _, name := range []string{"redis", "postgres", "mysql"} {
		t.Run(name, func(t *testing.T) {
			spec := relStoreSpec(t, name)
			const lockTTL = time.Second
			args := []string{"-store", spec, "-lock-ttl", lockTTL.String()}
			a := startExample(t, args...)
			b := startExample(t, args...)
			key := relKey("slow-" + name)
			body := `{"amount": 5, "currency": "eur", "delay_ms": 3000}`

			first := make(chan reply, 1)
			go func() {
				r, err := a.post(key, "", body)
				if err != nil {
					r.Status, r.Body = -1, []byte(err.Error())
				}
				first <- r
			}()
			if !pollUntilTrue(10*time.Second, func() bool { return a.ledger().Executions == 1 }) {
				t.Fatal("the slow payment did not start")
			}
			started := time.Now()
			dups := 0
			var created reply
		wait:
			for {
				select {
				case created = <-first:
					break wait
				case <-time.After(200 * time.Millisecond):
				}
				p := []*proc{a, b}[dups%2]
				r := p.mustPost(key, "", body)
				if r.Status == http.StatusCreated && r.Header.Get("Idempotent-Replayed") == "true" {
					// The handler has finished and its response is recorded
					// while its own answer is still on the way: a replay,
					// not a second run.
					created = <-first
					if !bytes.Equal(r.Body, created.Body) {
						t.Fatalf("replay %s differs from the first answer %s", r.Body, created.Body)
					}
					break wait
				}
				if r.Status != http.StatusConflict {
					t.Fatalf("duplicate %d, %v into the run: %d %s, want 409 (the lease was not kept)", dups, time.Since(started).Round(time.Millisecond), r.Status, r.Body)
				}
				wantProblemReply(t, r, http.StatusConflict)
				dups++
			}
			if created.Status != http.StatusCreated {
				t.Fatalf("the slow payment: %d %s", created.Status, created.Body)
			}
			if dups < 8 {
				t.Fatalf("only %d duplicates were sent during the run", dups)
			}
			if n := totalExecutions(a, b); n != 1 {
				t.Fatalf("%d executions, want 1", n)
			}
			if r := b.mustPost(key, "", body); !bytes.Equal(r.Body, created.Body) {
				t.Fatalf("after the run: %d %s", r.Status, r.Body)
			}
			t.Logf("handler of 3s under a %v lease on %s: %d duplicates during the run over 2 processes, all 409; 1 execution", lockTTL, name, dups)
		})
	}
}
