package main

// Several proxies over one shared store, driven as black boxes: a storm of
// duplicates spread over them runs the upstream once per key, and a proxy
// killed mid-request leaves its key locked for the lease only.

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/testenv"
)

// sharedStore returns the -store value of a shared store ("redis" or
// "postgres"). A store whose server is not configured fails the test under
// CI=true and skips it elsewhere (scripts/services.sh starts them).
func sharedStore(t *testing.T, name string) string {
	t.Helper()
	env := map[string]string{"redis": testenv.RedisAddr, "postgres": testenv.PostgresDSN}[name]
	v := testenv.Server(t, env, "a "+name+" server")
	if name == "redis" {
		return "redis://" + v + "/0"
	}
	return v
}

// A storm: keys × copies concurrent requests spread over three proxies
// sharing one store, in front of a backend with no idempotency of its own.
// Each key runs upstream exactly once; every copy gets the same 201 or a
// 409; afterwards every proxy replays it.
func TestStormOverSharedStore(t *testing.T) {
	for _, store := range []string{"redis", "postgres"} {
		for _, kind := range []string{"go", "python"} {
			t.Run(store+"/"+kind, func(t *testing.T) {
				spec := sharedStore(t, store)
				var b backend
				if kind == "go" {
					b = startGoBackend(t)
				} else {
					b = startPython(t)
				}
				var procs []*proc
				for i := 0; i < 3; i++ {
					args := []string{"-store", spec}
					if store == "redis" && i == 0 {
						// One proxy on go-redis, two on rueidis, over one store.
						args = append(args, "-redis-client", "go-redis")
					}
					procs = append(procs, startProxy(t, b.url(), args...))
				}
				runStorm(t, b, procs, 30, 12)
			})
		}
	}
}

func runStorm(t *testing.T, b backend, procs []*proc, keys, copies int) {
	body := `{"amount": 4200, "currency": "usd", "delay_ms": 200}`
	names := make([]string, keys)
	for k := range names {
		names[k] = uniqueKey("storm-" + strconv.Itoa(k))
	}
	type result struct {
		key int
		r   reply
		err error
	}
	results := make(chan result, keys*copies)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < keys*copies; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			// Copy c of key k goes to proxy c mod 3: each key's copies are
			// spread over every proxy.
			k, c := i%keys, i/keys
			r, err := procs[c%len(procs)].post(names[k], "Bearer storm", body)
			results <- result{k, r, err}
		}(i)
	}
	close(start)
	wg.Wait()
	close(results)
	created := make([][]byte, keys)
	conflicts := 0
	for res := range results {
		if res.err != nil {
			t.Fatalf("key %d: %v", res.key, res.err)
		}
		switch res.r.Status {
		case 201:
			if created[res.key] == nil {
				created[res.key] = res.r.Body
			} else if !bytes.Equal(created[res.key], res.r.Body) {
				t.Fatalf("two different 201 bodies for one key:\n%s\n%s", created[res.key], res.r.Body)
			}
		case 409:
			wantProblem(t, res.r, 409)
			conflicts++
		default:
			t.Fatalf("key %d: %d %s", res.key, res.r.Status, res.r.Body)
		}
	}
	l := b.ledger(t)
	for k, name := range names {
		if created[k] == nil {
			t.Fatalf("key %d: no copy got the 201", k)
		}
		if n := l.Keys[name]; n != 1 {
			t.Fatalf("key %d ran %d times upstream, want 1", k, n)
		}
		for _, p := range procs {
			if r := p.mustPost(name, "Bearer storm", body); !bytes.Equal(r.Body, created[k]) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("replay after the storm: %d %s", r.Status, r.Body)
			}
		}
	}
	t.Logf("%d keys × %d copies over %d proxies: %d upstream runs, %d answers 409", keys, copies, len(procs), keys, conflicts)
}

// A proxy killed mid-request: while its lease lives, retries on another
// proxy get 409; after it ends exactly one retry runs upstream again (the
// answer of the first run died with the proxy: at least once, never
// concurrently while the upstream is quicker than the lease); what the
// killed proxy completed before is still replayed.
func TestKill9MidRequest(t *testing.T) {
	for _, store := range []string{"redis", "postgres"} {
		t.Run(store, func(t *testing.T) {
			spec := sharedStore(t, store)
			b := startGoBackend(t)
			const lockTTL = 2 * time.Second
			args := []string{"-store", spec, "-lock-ttl", lockTTL.String()}
			a := startProxy(t, b.url(), args...)
			c := startProxy(t, b.url(), args...)

			done := make(map[string][]byte)
			quick := `{"amount": 10, "currency": "eur"}`
			for i := 0; i < 10; i++ {
				key := uniqueKey(fmt.Sprintf("kill-done-%d", i))
				r := a.mustPost(key, "", quick)
				if r.Status != 201 {
					t.Fatalf("POST: %d %s", r.Status, r.Body)
				}
				done[key] = r.Body
			}

			key := uniqueKey("kill-" + store)
			slow := `{"amount": 99, "currency": "eur", "delay_ms": 1500}`
			go a.post(key, "", slow) // its connection dies with a
			if !pollUntil(30*time.Second, func() bool { return b.keyCount(key) > 0 }) {
				t.Fatal("the slow request did not reach the upstream")
			}
			a.kill9()
			killed := time.Now()

			r := c.mustPost(key, "", slow)
			wantProblem(t, r, http.StatusConflict)
			if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > int(lockTTL/time.Second) {
				t.Fatalf("Retry-After = %q, want 1..%d", r.Header.Get("Retry-After"), int(lockTTL/time.Second))
			}
			var created reply
			if !pollUntil(lockTTL+30*time.Second, func() bool {
				created = c.mustPost(key, "", slow)
				return created.Status != http.StatusConflict
			}) {
				t.Fatalf("still 409 %v after the kill; the lease is %v", time.Since(killed), lockTTL)
			}
			if created.Status != 201 || created.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("retry after the lease: %d replayed=%q %s", created.Status, created.Header.Get("Idempotent-Replayed"), created.Body)
			}
			d := startProxy(t, b.url(), args...)
			for _, p := range []*proc{c, d} {
				if r := p.mustPost(key, "", slow); !bytes.Equal(r.Body, created.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
					t.Fatalf("after the takeover: %d %s", r.Status, r.Body)
				}
				for k, want := range done {
					if r := p.mustPost(k, "", quick); !bytes.Equal(r.Body, want) || r.Header.Get("Idempotent-Replayed") != "true" {
						t.Fatalf("record completed before the kill: %d %s", r.Status, r.Body)
					}
				}
			}
			b.mu.Lock()
			runs, overlap := b.keys[key], b.maxInflight[key]
			b.mu.Unlock()
			if runs != 2 || overlap != 1 {
				t.Fatalf("the orphaned key ran %d times upstream (at most %d at once); want 2 runs, one at a time", runs, overlap)
			}
			if strings.Contains(c.stderr.String(), `"level":"ERROR"`) {
				t.Fatalf("the surviving proxy logged errors:\n%s", c.stderr)
			}
		})
	}
}
