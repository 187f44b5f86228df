package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/storeurl"
	"github.com/idemgo/idem/internal/testenv"
)

// uniqueKey returns an idempotency key no other test or run uses, for tests
// that share a durable store.
func uniqueKey(name string) string {
	var b [6]byte
	rand.Read(b[:])
	return name + "-" + hex.EncodeToString(b[:])
}

type createdPayment struct {
	ID       string `json:"id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

func decodePayment(t *testing.T, r reply) createdPayment {
	t.Helper()
	var p createdPayment
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatalf("body %s: %v", r.Body, err)
	}
	return p
}

func wantProblemReply(t *testing.T, r reply, status int) {
	t.Helper()
	if r.Status != status || r.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %s %s, want a %d problem", r.Status, r.Header.Get("Content-Type"), r.Body, status)
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(r.Body, &p); err != nil || p.Status != status || p.Title == "" || p.Type == "" {
		t.Fatalf("problem body %s (%v)", r.Body, err)
	}
}

// The example's interface, on the in-memory store.
func TestServiceInterface(t *testing.T) {
	p := startExample(t)
	body := `{"amount": 1000, "currency": "eur"}`

	first := p.mustPost("k1", "", body)
	if first.Status != 201 {
		t.Fatalf("POST: %d %s", first.Status, first.Body)
	}
	pay := decodePayment(t, first)
	if pay.ID == "" || pay.Amount != 1000 || pay.Currency != "eur" {
		t.Fatalf("payment %+v", pay)
	}
	if loc := first.Header.Get("Location"); loc != "/payments/"+pay.ID {
		t.Fatalf("Location = %q, want /payments/%s", loc, pay.ID)
	}

	again := p.mustPost("k1", "", body)
	if again.Status != 201 || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d replayed=%q %s", again.Status, again.Header.Get("Idempotent-Replayed"), again.Body)
	}
	if again.Header.Get("Location") != first.Header.Get("Location") {
		t.Fatal("replay lost the Location header")
	}
	wantProblemReply(t, p.mustPost("k1", "", `{"amount": 2000, "currency": "eur"}`), 422)

	// A new payment is new: a new key gets a new ID.
	other := decodePayment(t, p.mustPost("k2", "", body))
	if other.ID == pay.ID {
		t.Fatal("two keys produced one payment ID")
	}

	// Malformed JSON and missing fields: 400, and the 400 is kept too.
	wantProblemReply(t, p.mustPost("bad1", "", `{"amount":`), 400)
	wantProblemReply(t, p.mustPost("bad2", "", `{"amount": 5}`), 400)
	wantProblemReply(t, p.mustPost("bad3", "", `{"currency": "eur"}`), 400)

	// A failing handler answers 500, which is not kept: the retry runs.
	before := p.ledger().Executions
	wantProblemReply(t, p.mustPost("f1", "", `{"amount": 1, "currency": "eur", "fail": true}`), 500)
	wantProblemReply(t, p.mustPost("f1", "", `{"amount": 1, "currency": "eur", "fail": true}`), 500)
	if got := p.ledger().Executions - before; got != 2 {
		t.Fatalf("a retried 500 ran %d times, want 2", got)
	}

	// Without a key the request is not protected.
	before = p.ledger().Executions
	p.mustPost("", "", body)
	p.mustPost("", "", body)
	if got := p.ledger().Executions - before; got != 2 {
		t.Fatalf("keyless requests ran %d times, want 2", got)
	}

	// Keys are scoped by Authorization.
	a := p.mustPost("shared", "Bearer alice", body)
	b := p.mustPost("shared", "Bearer bob", body)
	if a.Status != 201 || b.Status != 201 || decodePayment(t, a).ID == decodePayment(t, b).ID {
		t.Fatal("two principals with one key shared a payment")
	}
	if r := p.mustPost("shared", "Bearer alice", body); !bytes.Equal(r.Body, a.Body) {
		t.Fatal("same principal and key did not replay")
	}

	l := p.ledger()
	// k1, k2, 2 keyless, alice, bob: 6 payments; executions add the three 400s
	// and the two 500s.
	if l.Count != 6 || len(l.Payments) != 6 || l.Executions != 11 {
		t.Fatalf("ledger count %d (%d listed), executions %d; want 6, 6, 11", l.Count, len(l.Payments), l.Executions)
	}

	// SIGTERM stops it cleanly.
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "stopped") {
		t.Fatalf("no clean stop: %q", p.stdout.String())
	}
}

// A duplicate of a payment in flight gets 409 with
// Retry-After no larger than the -lock-ttl.
func TestServiceConflictAndLockTTL(t *testing.T) {
	p := startExample(t, "-lock-ttl", "3s")
	done := make(chan reply, 1)
	go func() {
		r, _ := p.post("slow", "", `{"amount": 1, "currency": "eur", "delay_ms": 1500}`)
		done <- r
	}()
	// Wait until the slow request has started.
	for p.ledger().Executions == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	dup := p.mustPost("slow", "", `{"amount": 1, "currency": "eur", "delay_ms": 1500}`)
	wantProblemReply(t, dup, 409)
	if ra, err := strconv.Atoi(dup.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3 {
		t.Fatalf("Retry-After = %q, want 1..3 under -lock-ttl 3s", dup.Header.Get("Retry-After"))
	}
	if r := <-done; r.Status != 201 {
		t.Fatalf("slow request: %d", r.Status)
	}
	if r := p.mustPost("slow", "", `{"amount": 1, "currency": "eur", "delay_ms": 1500}`); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after completion: %d", r.Status)
	}
}

// -ttl sets the retention.
func TestServiceTTLFlag(t *testing.T) {
	p := startExample(t, "-ttl", "1s", "-lock-ttl", "500ms")
	body := `{"amount": 1, "currency": "eur"}`
	first := p.mustPost("k", "", body)
	if r := p.mustPost("k", "", body); !bytes.Equal(r.Body, first.Body) {
		t.Fatal("no replay within the TTL")
	}
	time.Sleep(1200 * time.Millisecond) // let the 1s retention run out
	if r := p.mustPost("k", "", body); r.Status != 201 || bytes.Equal(r.Body, first.Body) {
		t.Fatalf("after the TTL: %d %s, want a new payment", r.Status, r.Body)
	}
}

// Bad flags and unknown stores fail with a clear message.
func TestServiceBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-store", "mongodb://x"}, `unknown store "mongodb"`},
		{[]string{"-ttl", "soon"}, "invalid value"},
		{[]string{"-lock-ttl", "1ms"}, "lock TTL"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-redis-client", "jedis"}, "want rueidis or go-redis"},
	} {
		out, err := exec.Command(exampleBin, append([]string{"-addr", "127.0.0.1:0"}, tc.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err %v, output %q; want a failure saying %q", tc.args, err, out, tc.want)
		}
	}
}

// End to end: 50 concurrent copies of one request on
// one process run the handler once; every answer is the same 201 or a 409.
func TestServiceConcurrentDuplicates(t *testing.T) {
	p := startExample(t)
	checkStorm(t, []*proc{p}, uniqueKey("storm"), 50)
}

// checkStorm fires n concurrent copies of one payment spread over procs and
// checks that exactly one execution happened among them and that every
// answer is the same 201 or a 409 problem.
func checkStorm(t *testing.T, procs []*proc, key string, n int) {
	t.Helper()
	before := int64(0)
	for _, p := range procs {
		before += p.ledger().Executions
	}
	body := `{"amount": 4200, "currency": "usd", "delay_ms": 300}`
	var wg sync.WaitGroup
	start := make(chan struct{})
	replies := make([]reply, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			replies[i], errs[i] = procs[i%len(procs)].post(key, "Bearer storm", body)
		}(i)
	}
	close(start)
	wg.Wait()
	var created []byte
	conflicts := 0
	for i, r := range replies {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		switch r.Status {
		case 201:
			if created == nil {
				created = r.Body
			} else if !bytes.Equal(created, r.Body) {
				t.Fatalf("two different 201 bodies for one key:\n%s\n%s", created, r.Body)
			}
		case 409:
			wantProblemReply(t, r, 409)
			conflicts++
		default:
			t.Fatalf("request %d: %d %s", i, r.Status, r.Body)
		}
	}
	after := int64(0)
	for _, p := range procs {
		after += p.ledger().Executions
	}
	if after-before != 1 {
		t.Fatalf("%d copies over %d processes ran the handler %d times, want 1", n, len(procs), after-before)
	}
	if created == nil {
		t.Fatal("no copy got the 201")
	}
	// Once done, every copy replays it.
	for _, p := range procs {
		if r := p.mustPost(key, "Bearer storm", body); !bytes.Equal(r.Body, created) || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay after the storm: %d %s", r.Status, r.Body)
		}
	}
	t.Logf("%d copies over %d processes: 1 execution, %d got 201, %d got 409", n, len(procs), n-conflicts, conflicts)
}

// durableStores lists the -store values of the durable stores this run can
// reach. A store whose server is not configured is skipped locally and
// fails under CI=true.
func durableStores(t *testing.T) map[string]string {
	specs := map[string]string{
		"sqlite": "sqlite:" + filepath.Join(t.TempDir(), "idem.db"),
	}
	need := func(name, env string, spec func(v string) string) {
		if testing.Short() {
			t.Logf("skipping %s under -short", name)
			return
		}
		v := os.Getenv(env)
		if v == "" {
			if testenv.InCI() {
				t.Errorf("%s not set: the %s tests need it; run ./scripts/test.sh", env, name)
			} else {
				t.Logf("%s not set: skipping %s; run ./scripts/test.sh to start the servers", env, name)
			}
			return
		}
		specs[name] = spec(v)
	}
	need("redis", testenv.RedisAddr, func(v string) string { return "redis://" + v + "/0" })
	need("redis-cluster", testenv.RedisClusterAddrs, func(v string) string {
		addrs := strings.Split(v, ",")
		s := "redis-cluster://" + addrs[0]
		for i, a := range addrs[1:] {
			sep := "&"
			if i == 0 {
				sep = "?"
			}
			s += sep + "addr=" + a
		}
		return s
	})
	need("postgres", testenv.PostgresDSN, func(v string) string { return v })
	need("mysql", testenv.MySQLDSN, func(v string) string { return mysqlURL(t, v) })
	return specs
}

// Several processes share one durable store, and a restarted
// process replays what an earlier one recorded, whichever Redis client each
// process uses.
func TestServiceSharedDurableStores(t *testing.T) {
	for name, spec := range durableStores(t) {
		t.Run(name, func(t *testing.T) {
			if !slices.Contains(storeurl.Schemes(), storeurl.Kind(spec)) {
				t.Fatalf("store %s is not built into the example", name)
			}
			// On Redis the two processes use the two clients (go-redis and
			// the default, rueidis) over one store, and the restarted one
			// reads with rueidis what go-redis wrote.
			argsA := []string{"-store", spec}
			if strings.HasPrefix(spec, "redis") {
				argsA = append(argsA, "-redis-client", "go-redis")
			}
			a := startExample(t, argsA...)
			b := startExample(t, "-store", spec)
			key := uniqueKey("shared-" + name)
			checkStorm(t, []*proc{a, b}, key, 50)

			body := `{"amount": 7, "currency": "eur"}`
			restartKey := uniqueKey("restart-" + name)
			first := a.mustPost(restartKey, "", body)
			if first.Status != 201 {
				t.Fatalf("POST: %d %s", first.Status, first.Body)
			}
			for _, p := range []*proc{a, b} {
				if err := p.stop(); err != nil {
					t.Fatalf("stop: %v\n%s", err, p.stderr)
				}
			}
			c := startExample(t, "-store", spec)
			r := c.mustPost(restartKey, "", body)
			if !bytes.Equal(r.Body, first.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("restarted process: %d %s, want the replay of %s", r.Status, r.Body, first.Body)
			}
			if l := c.ledger(); l.Executions != 0 {
				t.Fatalf("restarted process ran the handler %d times", l.Executions)
			}
		})
	}
}
