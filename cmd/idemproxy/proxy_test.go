package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// checkPayments drives the payments interface of b through a proxy: the
// same behaviours as the example service's own tests, with the
// idempotency in the proxy only.
func checkPayments(t *testing.T, b backend) {
	p := startProxy(t, b.url())
	body := `{"amount": 1000, "currency": "eur"}`

	first := p.mustPost("k1", "", body)
	if first.Status != 201 {
		t.Fatalf("POST: %d %s", first.Status, first.Body)
	}
	var pay struct{ ID string }
	if err := json.Unmarshal(first.Body, &pay); err != nil || pay.ID == "" {
		t.Fatalf("body %s (%v)", first.Body, err)
	}
	if loc := first.Header.Get("Location"); loc != "/payments/"+pay.ID {
		t.Fatalf("Location = %q, want /payments/%s", loc, pay.ID)
	}
	if first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("a first answer says it is replayed")
	}
	again := p.mustPost("k1", "", body)
	if again.Status != 201 || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d replayed=%q %s", again.Status, again.Header.Get("Idempotent-Replayed"), again.Body)
	}
	if again.Header.Get("Location") != first.Header.Get("Location") || again.Header.Get("Content-Type") != first.Header.Get("Content-Type") {
		t.Fatalf("replay headers %v, first %v", again.Header, first.Header)
	}
	if l := b.ledger(t); l.Executions != 1 || l.Keys["k1"] != 1 {
		t.Fatalf("after a retry: %d executions, key k1 seen upstream %d times; want 1, 1", l.Executions, l.Keys["k1"])
	}
	wantProblem(t, p.mustPost("k1", "", `{"amount": 2000, "currency": "eur"}`), 422)

	if other := p.mustPost("k2", "", body); other.Status != 201 || bytes.Equal(other.Body, first.Body) {
		t.Fatalf("a new key: %d %s", other.Status, other.Body)
	}

	// The upstream's 400s are kept: a retry replays them.
	before := b.ledger(t).Executions
	for i, bad := range []string{`{"amount":`, `{"amount": 5}`} {
		r1 := p.mustPost("bad-"+strconv.Itoa(i), "", bad)
		r2 := p.mustPost("bad-"+strconv.Itoa(i), "", bad)
		if r1.Status != 400 || r2.Status != 400 || !bytes.Equal(r1.Body, r2.Body) || r2.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("400 and its retry: %d %d replayed=%q", r1.Status, r2.Status, r2.Header.Get("Idempotent-Replayed"))
		}
	}
	if got := b.ledger(t).Executions - before; got != 2 {
		t.Fatalf("two 400s and their retries ran %d times upstream, want 2", got)
	}

	// A 500 is not kept: the retry runs again.
	before = b.ledger(t).Executions
	fail := `{"amount": 1, "currency": "eur", "fail": true}`
	wantProblem(t, p.mustPost("f1", "", fail), 500)
	wantProblem(t, p.mustPost("f1", "", fail), 500)
	if got := b.ledger(t).Executions - before; got != 2 {
		t.Fatalf("a retried 500 ran %d times, want 2", got)
	}

	// Without a key the request is not protected.
	before = b.ledger(t).Executions
	p.mustPost("", "", body)
	p.mustPost("", "", body)
	if got := b.ledger(t).Executions - before; got != 2 {
		t.Fatalf("keyless requests ran %d times, want 2", got)
	}

	// Keys are scoped by Authorization.
	a := p.mustPost("shared", "Bearer alice", body)
	c := p.mustPost("shared", "Bearer bob", body)
	if a.Status != 201 || c.Status != 201 || bytes.Equal(a.Body, c.Body) {
		t.Fatal("two principals with one key shared a payment")
	}
	if r := p.mustPost("shared", "Bearer alice", body); !bytes.Equal(r.Body, a.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("same principal and key did not replay")
	}

	// GET passes through.
	l := b.ledger(t)
	r := mustDo(t, "GET", p.URL+"/payments", "", "")
	var viaProxy ledger
	if err := json.Unmarshal(r.Body, &viaProxy); err != nil || r.Status != 200 || viaProxy.Count != l.Count {
		t.Fatalf("GET through the proxy: %d %s", r.Status, r.Body)
	}
	// k1, k2, 2 keyless, alice, bob: 6 payments.
	if l.Count != 6 {
		t.Fatalf("ledger count %d, want 6", l.Count)
	}

	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "stopped") {
		t.Fatalf("no clean stop: %q", p.stdout.String())
	}
}

func TestPaymentsThroughProxyGoBackend(t *testing.T) {
	checkPayments(t, startGoBackend(t))
}

func TestPaymentsThroughProxyPythonBackend(t *testing.T) {
	checkPayments(t, startPython(t))
}

// The upstream gets the key, the Authorization and the rest of the request
// as the client sent them.
func TestProxyForwardsKeyAndRequest(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url())
	req, _ := http.NewRequest("POST", p.URL+"/headers?x=1&y=%2F", strings.NewReader(`{"a":1}`))
	req.Host = "api.example.test"
	req.Header.Set("Idempotency-Key", "fwd-1")
	req.Header.Set("Authorization", "Bearer s3cret-token")
	req.Header.Set("X-Custom", "v")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Method, URI, Host, Body string
		Header                  http.Header
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Method != "POST" || got.URI != "/headers?x=1&y=%2F" || got.Host != "api.example.test" || got.Body != `{"a":1}` {
		t.Fatalf("upstream saw %+v", got)
	}
	for k, v := range map[string]string{"Idempotency-Key": "fwd-1", "Authorization": "Bearer s3cret-token", "X-Custom": "v", "X-Forwarded-For": "127.0.0.1"} {
		if g := http.Header(got.Header).Get(k); g != v {
			t.Errorf("upstream saw %s: %q, want %q", k, g, v)
		}
	}
	if resp.Header.Get("X-Upstream") != "yes" {
		t.Fatal("the upstream's headers did not come back")
	}
}

// The scope header is digested: its value appears in no log line, even at
// debug level, which logs every outcome with a digest of its scope.
func TestScopeHeaderNeverLogged(t *testing.T) {
	b := startGoBackend(t)
	db := filepath.Join(t.TempDir(), "idem.db")
	p := startProxy(t, b.url(), "-log-level", "debug", "-store", "sqlite:"+db)
	body := `{"amount": 1, "currency": "eur"}`
	const secret = "Bearer sk_live_9f8e7d6c5b4a"
	r1 := p.mustPost("scoped", secret, body)
	r2 := p.mustPost("scoped", secret, body)
	if r1.Status != 201 || r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("%d, then replayed=%q", r1.Status, r2.Header.Get("Idempotent-Replayed"))
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, `"scope_digest":"`) {
		t.Fatalf("no scope digest logged at debug level; logs:\n%s", logs)
	}
	if strings.Contains(logs, "sk_live") {
		t.Fatalf("the Authorization value is in the logs:\n%s", logs)
	}
	// Nor is it in the store's file.
	for _, f := range []string{db, db + "-wal"} {
		raw, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("sk_live")) {
			t.Fatalf("the Authorization value is stored in clear in %s", f)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("log line is not JSON: %s", line)
		}
	}
}

// A duplicate of a request in flight gets 409 with a Retry-After within
// -lock-ttl; once the first is done, a retry replays it.
func TestProxyConflictAndLockTTL(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url(), "-lock-ttl", "3s")
	slow := `{"amount": 1, "currency": "eur", "delay_ms": 1500}`
	done := make(chan reply, 1)
	go func() {
		r, _ := p.post("slow", "", slow)
		done <- r
	}()
	if !pollUntil(30*time.Second, func() bool { return b.keyCount("slow") > 0 }) {
		t.Fatal("the slow request did not reach the upstream")
	}
	dup := p.mustPost("slow", "", slow)
	wantProblem(t, dup, 409)
	if ra, err := strconv.Atoi(dup.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3 {
		t.Fatalf("Retry-After = %q, want 1..3 under -lock-ttl 3s", dup.Header.Get("Retry-After"))
	}
	if r := <-done; r.Status != 201 {
		t.Fatalf("slow request: %d", r.Status)
	}
	if r := p.mustPost("slow", "", slow); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after completion: %d", r.Status)
	}
	if n := b.keyCount("slow"); n != 1 {
		t.Fatalf("the upstream ran the key %d times, want 1", n)
	}
}

// -ttl sets the retention.
func TestProxyTTLFlag(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url(), "-ttl", "1s", "-lock-ttl", "500ms")
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

// Bad flags, configurations and stores fail at start with a clear message.
func TestProxyBadFlags(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	up := []string{"-upstream", "http://127.0.0.1:9"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "-upstream is required"},
		{[]string{"-upstream", "ftp://x"}, "want an http:// or https:// URL"},
		{append(up, "-store", "mongodb://admin:pw@x"), `unknown store "mongodb"`},
		{append(up, "-ttl", "soon"), "invalid value"},
		{append(up, "-lock-ttl", "1ms"), "lock TTL"},
		{append(up, "extra"), "unexpected arguments"},
		{append(up, "-log-level", "loud"), "-log-level"},
		{append(up, "-redis-client", "jedis"), "want rueidis or go-redis"},
		{append(up, "-config", filepath.Join(dir, "absent.json")), "no such file"},
		{append(up, "-config", write("typo.json", `{"routes": [{"path": "/p", "methds": ["POST"]}]}`)), `unknown field "methds"`},
		{append(up, "-config", write("empty.json", `{"routes": []}`)), "no routes"},
		{append(up, "-config", write("rel.json", `{"routes": [{"path": "p"}]}`)), "must start with /"},
		{append(up, "-config", write("ttl.json", `{"routes": [{"path": "/p", "ttl": "forever"}]}`)), "invalid duration"},
		{append(up, "-config", write("method.json", `{"routes": [{"path": "/p", "methods": ["PO ST"]}]}`)), "route 1 (/p)"},
		{append(up, "-config", write("lock.json", `{"routes": [{"path": "/a"}, {"path": "/p", "ttl": "1s", "lock_ttl": "1m"}]}`)), "route 2 (/p)"},
	} {
		out, err := exec.Command(proxyBin, append([]string{"-addr", "127.0.0.1:0"}, tc.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err %v, output %q; want a failure saying %q", tc.args, err, out, tc.want)
		}
		if strings.Contains(string(out), "pw@") {
			t.Errorf("%v: output quotes the store's password: %s", tc.args, out)
		}
	}
}

// 50 concurrent copies of one request on one proxy run the upstream once;
// every answer is the same 201 or a 409.
func TestProxyConcurrentDuplicates(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url())
	checkStorm(t, b, []*proc{p}, uniqueKey("storm"), 50)
}

// checkStorm fires n concurrent copies of one payment spread over procs and
// checks that the upstream ran the key exactly once and that every answer
// is the same 201 or a 409 problem.
func checkStorm(t *testing.T, b *goBackend, procs []*proc, key string, n int) {
	t.Helper()
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
			wantProblem(t, r, 409)
		default:
			t.Fatalf("request %d: %d %s", i, r.Status, r.Body)
		}
	}
	if got := b.keyCount(key); got != 1 {
		t.Fatalf("%d copies over %d proxies ran the upstream %d times, want 1", n, len(procs), got)
	}
	if created == nil {
		t.Fatal("no copy got the 201")
	}
	for _, p := range procs {
		if r := p.mustPost(key, "Bearer storm", body); !bytes.Equal(r.Body, created) || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay after the storm: %d %s", r.Status, r.Body)
		}
	}
}

// An upstream that cannot be reached gives a 502 problem, and one that
// does not answer in time a 504; both release the key, so the retry runs.
func TestUpstreamErrorsReleaseKey(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url(), "-upstream-timeout", "1s")
	body := `{"amount": 3, "currency": "eur"}`

	b.hangUpNext.Store(true)
	r := p.mustPost("hangup", "", body)
	wantProblem(t, r, http.StatusBadGateway)
	if strings.Contains(string(r.Body), "127.0.0.1") || strings.Contains(string(r.Body), "EOF") {
		t.Fatalf("the problem tells internal error text: %s", r.Body)
	}
	if r := p.mustPost("hangup", "", body); r.Status != 201 || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after a 502: %d replayed=%q, want a new execution", r.Status, r.Header.Get("Idempotent-Replayed"))
	}

	b.holdNext.Store(true) // answers only when the test ends
	wantProblem(t, p.mustPost("timeout", "", body), http.StatusGatewayTimeout)
	if r := p.mustPost("timeout", "", body); r.Status != 201 {
		t.Fatalf("retry after a 504: %d %s", r.Status, r.Body)
	}
	if b.keyCount("hangup") != 2 || b.keyCount("timeout") != 2 {
		t.Fatalf("upstream runs: hangup %d, timeout %d; want 2, 2", b.keyCount("hangup"), b.keyCount("timeout"))
	}

	// Nothing listens: 502.
	ln := startGoBackend(t)
	dead := ln.url()
	ln.srv.Close()
	q := startProxy(t, dead)
	wantProblem(t, q.mustPost("refused", "", body), http.StatusBadGateway)
	wantProblem(t, mustDo(t, "GET", q.URL+"/payments", "", ""), http.StatusBadGateway)
}

// A text/event-stream answer reaches the client as it comes and is
// recorded as not replayable; so is one larger than -max-response. A
// chunked answer of ordinary type is held, and replayed.
func TestStreamingAndLargeResponses(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url(), "-max-response", "1024")

	// Events: the first arrives before the upstream sends the second.
	req, _ := http.NewRequestWithContext(ctxTimeout(t), "POST", p.URL+"/events", strings.NewReader("{}"))
	req.Header.Set("Idempotency-Key", "ev")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: one\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	b.proceed <- struct{}{}
	rest, _ := io.ReadAll(br)
	resp.Body.Close()
	if !strings.Contains(string(rest), "data: two") {
		t.Fatalf("second event missing: %q", rest)
	}
	wantProblem(t, mustDo(t, "POST", p.URL+"/events", "ev", "{}"), http.StatusConflict)

	big := mustDo(t, "POST", p.URL+"/big", "big", "{}")
	if big.Status != 201 || len(big.Body) != 4096 {
		t.Fatalf("large answer: %d, %d bytes", big.Status, len(big.Body))
	}
	wantProblem(t, mustDo(t, "POST", p.URL+"/big", "big", "{}"), http.StatusConflict)

	c1 := mustDo(t, "POST", p.URL+"/chunked", "ch", "{}")
	c2 := mustDo(t, "POST", p.URL+"/chunked", "ch", "{}")
	if c1.Status != 200 || !bytes.Equal(c1.Body, c2.Body) || c2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("chunked answer and retry: %d %s / %d %s", c1.Status, c1.Body, c2.Status, c2.Body)
	}
	for _, k := range []string{"ev", "big", "ch"} {
		if n := b.keyCount(k); n != 1 {
			t.Errorf("key %s ran %d times upstream, want 1", k, n)
		}
	}
}

// An upstream that dies after it began its answer has acted: the client
// sees a broken response (never one that looks complete), and a retry gets
// 409 not replayable rather than a second execution.
func TestUpstreamDiesMidResponse(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url())
	for _, framing := range []string{"length", "chunked"} {
		t.Run(framing, func(t *testing.T) {
			key := "die-" + framing
			url := p.URL + "/die?framing=" + framing
			resp, err := do("POST", url, key, "", "{}")
			if err == nil {
				t.Fatalf("the broken answer arrived as complete: %d %q", resp.Status, resp.Body)
			}
			r := mustDo(t, "POST", url, key, "{}")
			wantProblem(t, r, http.StatusConflict)
			if n := b.keyCount(key); n != 1 {
				t.Fatalf("the upstream ran %d times, want 1", n)
			}
		})
	}
}

// Requests that are not protected stream both ways: the upstream's echo of
// each line of the body arrives before the next line is sent.
func TestPassThroughStreamsBothWays(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url())
	for _, method := range []string{"PUT", "POST"} { // POST without a key
		pr, pw := io.Pipe()
		ctx := ctxTimeout(t)
		go func() {
			<-ctx.Done() // unblock a write the transport no longer reads
			pr.CloseWithError(ctx.Err())
		}()
		req, _ := http.NewRequestWithContext(ctx, method, p.URL+"/duplex", pr)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		for i := 0; i < 3; i++ {
			if _, err := io.WriteString(pw, "line"+strconv.Itoa(i)+"\n"); err != nil {
				t.Fatal(err)
			}
			got, err := br.ReadString('\n')
			if want := "echo line" + strconv.Itoa(i) + "\n"; got != want || err != nil {
				t.Fatalf("%s: read %q (%v), want %q", method, got, err, want)
			}
		}
		pw.Close()
		resp.Body.Close()
	}
}

// With -config, only the listed routes are protected, each with its own
// methods, key requirement, key header and fingerprint headers.
func TestConfigRoutes(t *testing.T) {
	b := startGoBackend(t)
	cfg := filepath.Join(t.TempDir(), "idemproxy.json")
	os.WriteFile(cfg, []byte(`{"routes": [
		{"path": "/payments", "methods": ["POST"], "require_key": true, "fingerprint_headers": ["X-Api-Version"]},
		{"path": "/headers", "methods": ["PUT"], "key_header": "X-Request-Id", "ttl": "1h"}
	]}`), 0o600)
	p := startProxy(t, b.url(), "-config", cfg)
	body := `{"amount": 1, "currency": "eur"}`

	wantProblem(t, mustDo(t, "POST", p.URL+"/payments", "", body), 400) // key required
	send := func(method, path, header, key, version string) reply {
		req, _ := http.NewRequest(method, p.URL+path, strings.NewReader(body))
		req.Header.Set(header, key)
		if version != "" {
			req.Header.Set("X-Api-Version", version)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bb, _ := io.ReadAll(resp.Body)
		return reply{resp.StatusCode, resp.Header, bb}
	}
	if r := send("POST", "/payments", "Idempotency-Key", "v", "1"); r.Status != 201 {
		t.Fatalf("POST /payments: %d", r.Status)
	}
	wantProblem(t, send("POST", "/payments", "Idempotency-Key", "v", "2"), 422) // another version: another request

	// PUT /headers keyed by X-Request-Id.
	h1 := send("PUT", "/headers", "X-Request-Id", "r1", "")
	h2 := send("PUT", "/headers", "X-Request-Id", "r1", "")
	if !bytes.Equal(h1.Body, h2.Body) || h2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("PUT /headers with X-Request-Id was not replayed: %q", h2.Header.Get("Idempotent-Replayed"))
	}
	// Not protected: POST /headers, PATCH /payments, other paths.
	for _, c := range [][2]string{{"POST", "/headers"}, {"PATCH", "/payments/x"}, {"POST", "/headers/sub"}} {
		r1 := send(c[0], c[1], "Idempotency-Key", "same", "")
		r2 := send(c[0], c[1], "Idempotency-Key", "same", "")
		if r2.Header.Get("Idempotent-Replayed") != "" || r1.Status == 409 || r2.Status == 409 {
			t.Fatalf("%s %s is protected: %d %d replayed=%q", c[0], c[1], r1.Status, r2.Status, r2.Header.Get("Idempotent-Replayed"))
		}
	}
}

// On SIGTERM /healthz turns 503 and a request in flight is finished and
// recorded before the exit.
func TestGracefulShutdownFinishesInFlight(t *testing.T) {
	b := startGoBackend(t)
	db := "sqlite:" + filepath.Join(t.TempDir(), "idem.db")
	p := startProxyAdmin(t, b.url(), "-store", db)
	if r := mustDo(t, "GET", p.Admin+"/healthz", "", ""); r.Status != 200 || string(r.Body) != "ok\n" {
		t.Fatalf("/healthz: %d %q", r.Status, r.Body)
	}
	body := `{"amount": 5, "currency": "eur"}`
	b.holdNext.Store(true) // the upstream answers when released
	done := make(chan reply, 1)
	go func() {
		r, err := p.post("inflight", "", body)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	if !pollUntil(30*time.Second, func() bool { return b.keyCount("inflight") > 0 }) {
		t.Fatal("the request did not reach the upstream")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if !pollUntil(30*time.Second, func() bool {
		r, err := do("GET", p.Admin+"/healthz", "", "", "")
		return err == nil && r.Status == 503
	}) {
		t.Fatal("/healthz did not turn 503 after SIGTERM")
	}
	b.releaseHeld()
	r := <-done
	if r.Status != 200 {
		t.Fatalf("the request in flight at SIGTERM got %d %s", r.Status, r.Body)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "stopped") {
		t.Fatalf("no clean stop: %q", p.stdout.String())
	}
	// Its answer was recorded: a new proxy replays it.
	q := startProxy(t, b.url(), "-store", db)
	if again := q.mustPost("inflight", "", body); again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after the restart: %d %s", again.Status, again.Body)
	}
	if n := b.keyCount("inflight"); n != 1 {
		t.Fatalf("the upstream ran %d times, want 1", n)
	}
}

// A client that hangs up while the upstream works does not cancel the
// upstream call: its answer is recorded, and the retry gets it.
func TestClientHangUpStillRecorded(t *testing.T) {
	b := startGoBackend(t)
	p := startProxy(t, b.url())
	body := `{"amount": 8, "currency": "eur", "delay_ms": 500}`
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", p.URL+"/payments", strings.NewReader(body))
	req.Header.Set("Idempotency-Key", "hangup-client")
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	if !pollUntil(30*time.Second, func() bool { return b.keyCount("hangup-client") > 0 }) {
		t.Fatal("the request did not reach the upstream")
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("the request finished before the client hung up")
	}
	var r reply
	if !pollUntil(30*time.Second, func() bool {
		r = p.mustPost("hangup-client", "", body)
		return r.Status != http.StatusConflict
	}) {
		t.Fatal("the key stayed in progress")
	}
	if r.Status != 201 || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after the hang-up: %d replayed=%q %s", r.Status, r.Header.Get("Idempotent-Replayed"), r.Body)
	}
	if n := b.keyCount("hangup-client"); n != 1 {
		t.Fatalf("the upstream ran %d times, want 1", n)
	}
}

// The admin address serves the middleware's metrics and looks keys up and
// deletes them under the scope the admin request names, as a client would.
func TestAdminMetricsAndKeys(t *testing.T) {
	b := startGoBackend(t)
	p := startProxyAdmin(t, b.url(), "-store", "sqlite:"+filepath.Join(t.TempDir(), "idem.db"))
	body := `{"amount": 2, "currency": "eur"}`
	first := p.mustPost("adm-1", "Bearer alice", body)
	p.mustPost("adm-1", "Bearer alice", body)
	if first.Status != 201 {
		t.Fatalf("POST: %d", first.Status)
	}
	m := mustDo(t, "GET", p.Admin+"/metrics", "", "")
	for _, want := range []string{`idem_requests_total{outcome="executed",route="/"} 1`, `idem_requests_total{outcome="replayed",route="/"} 1`, `idem_store_call_duration_seconds_count{operation="claim",result="ok"} 2`} {
		if !strings.Contains(string(m.Body), want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, m.Body)
		}
	}
	admin := func(method, auth string) map[string]any {
		req, _ := http.NewRequest(method, p.Admin+"/keys/adm-1", nil)
		req.Header.Set("Authorization", auth)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s /keys: %d %v", method, resp.StatusCode, err)
		}
		return out
	}
	if ks := admin("GET", "Bearer alice"); ks["state"] != "completed" || ks["status"] != 201.0 || ks["replayable"] != true {
		t.Fatalf("alice's key: %v", ks)
	}
	if ks := admin("GET", "Bearer bob"); ks["state"] != "absent" {
		t.Fatalf("bob sees alice's key: %v", ks)
	}
	if d := admin("DELETE", "Bearer alice"); d["deleted"] != true {
		t.Fatalf("DELETE: %v", d)
	}
	if r := p.mustPost("adm-1", "Bearer alice", body); r.Status != 201 || r.Header.Get("Idempotent-Replayed") != "" || bytes.Equal(r.Body, first.Body) {
		t.Fatalf("after DELETE: %d replayed=%q", r.Status, r.Header.Get("Idempotent-Replayed"))
	}
	if n := b.keyCount("adm-1"); n != 2 {
		t.Fatalf("the upstream ran %d times, want 2", n)
	}
}
