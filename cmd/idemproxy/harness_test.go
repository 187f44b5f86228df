package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/testenv"
)

// proxyBin is the idemproxy binary built once for the black-box tests.
var proxyBin string

func TestMain(m *testing.M) {
	bin, remove, err := testenv.BuildCommand("idemproxy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	proxyBin = bin
	code := m.Run()
	remove()
	os.Exit(code)
}

// uniqueKey returns an idempotency key no other test or run uses, for tests
// that share a durable store.
func uniqueKey(name string) string {
	var b [6]byte
	rand.Read(b[:])
	return name + "-" + hex.EncodeToString(b[:])
}

// --- processes ----------------------------------------------------------------

// proc is one running process: a proxy or the Python backend.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	URL    string // of its first "listening on" line
	Admin  string // of its "admin on" line, if any
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProc starts name with args and waits for its "listening on" line
// (and "admin on" line when wantAdmin). It is killed at the end of the test.
func startProc(t *testing.T, wantAdmin bool, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, stderr: new(syncBuffer), stdout: new(syncBuffer), done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var a [2]string
		sent := false
		for sc.Scan() {
			line := sc.Text()
			p.stdout.Write([]byte(line + "\n"))
			if rest, ok := strings.CutPrefix(line, "listening on "); ok {
				a[0] = strings.Fields(rest)[0]
			}
			if rest, ok := strings.CutPrefix(line, "admin on "); ok {
				a[1] = strings.Fields(rest)[0]
			}
			if !sent && a[0] != "" && (!wantAdmin || a[1] != "") {
				addrs <- a
				sent = true
			}
		}
	}()
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		p.done <- nil
	})
	select {
	case a := <-addrs:
		p.URL = "http://" + a[0]
		if a[1] != "" {
			p.Admin = "http://" + a[1]
		}
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s %v exited before listening: %v\n%s", filepath.Base(name), args, err, p.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("%s %v did not start within 60s\n%s", filepath.Base(name), args, p.stderr)
	}
	return p
}

// startProxy starts idemproxy in front of upstream with the given flags.
func startProxy(t *testing.T, upstream string, args ...string) *proc {
	t.Helper()
	return startProc(t, false, proxyBin, append([]string{"-addr", "127.0.0.1:0", "-upstream", upstream}, args...)...)
}

// startProxyAdmin is startProxy with an admin listener.
func startProxyAdmin(t *testing.T, upstream string, args ...string) *proc {
	t.Helper()
	return startProc(t, true, proxyBin, append([]string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-upstream", upstream}, args...)...)
}

// stop sends SIGTERM and waits for the exit.
func (p *proc) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("no exit within 60s of SIGTERM")
	}
}

// kill9 kills p with SIGKILL, as a crash or the OOM killer would.
func (p *proc) kill9() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		p.t.Fatal("the killed process did not exit within 10s")
	}
}

// --- requests -------------------------------------------------------------------

// reply is one answer through the proxy.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

var client = &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// do sends method url with the key and Authorization (none if empty).
func do(method, url, key, auth, body string) (reply, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}, err
}

// post sends POST /payments through p.
func (p *proc) post(key, auth, body string) (reply, error) {
	return do("POST", p.URL+"/payments", key, auth, body)
}

func (p *proc) mustPost(key, auth, body string) reply {
	p.t.Helper()
	r, err := p.post(key, auth, body)
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

func mustDo(t *testing.T, method, url, key, body string) reply {
	t.Helper()
	r, err := do(method, url, key, "", body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func wantProblem(t *testing.T, r reply, status int) {
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

// pollUntil calls f every 10ms until it returns true or d passes.
func pollUntil(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// --- backends -------------------------------------------------------------------

// ledger is GET /payments of a backend.
type ledger struct {
	Count      int              `json:"count"`
	Executions int64            `json:"executions"`
	Keys       map[string]int64 `json:"keys"`
}

// backend is a service behind the proxy with no idempotency of its own.
type backend interface {
	url() string
	ledger(t *testing.T) ledger
}

func getLedger(t *testing.T, url string) ledger {
	t.Helper()
	resp, err := client.Get(url + "/payments")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l ledger
	if resp.StatusCode != 200 {
		t.Fatalf("GET /payments: %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatal(err)
	}
	return l
}

// pyBackend is testdata/backend.py on Python's http.server.
type pyBackend struct{ p *proc }

func startPython(t *testing.T) *pyBackend {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		testenv.Unavailable(t, "python3 not found")
	}
	return &pyBackend{startProc(t, false, py, "testdata/backend.py")}
}

func (b *pyBackend) url() string                { return b.p.URL }
func (b *pyBackend) ledger(t *testing.T) ledger { return getLedger(t, b.p.URL) }

// goBackend is a net/http service in the test process. Besides the
// payments of backend.py it has endpoints for the tests of streaming,
// large and broken responses, and hooks that make its next answer fail.
type goBackend struct {
	srv *httptest.Server

	mu         sync.Mutex
	payments   int
	executions int64
	keys       map[string]int64
	// inflight and maxInflight count the delayed runs of each key.
	inflight, maxInflight map[string]int
	seen                  []http.Header // headers of POST /payments, in order

	// hangUpNext makes the next POST /payments close the connection
	// without answering; holdNext makes it wait until release is closed.
	hangUpNext atomic.Bool
	holdNext   atomic.Bool
	release    chan struct{}
	// proceed gates the second half of the /events and /chunked answers.
	proceed chan struct{}
}

func startGoBackend(t *testing.T) *goBackend {
	t.Helper()
	b := &goBackend{keys: map[string]int64{}, inflight: map[string]int{}, maxInflight: map[string]int{}, release: make(chan struct{}), proceed: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /payments", b.create)
	mux.HandleFunc("GET /payments", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"count": b.payments, "executions": b.executions, "keys": b.keys})
	})
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		b.count(r)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		<-b.proceed
		fmt.Fprint(w, "data: two\n\n")
	})
	mux.HandleFunc("POST /chunked", func(w http.ResponseWriter, r *http.Request) {
		// A JSON answer of unknown length, sent in flushed parts.
		b.count(r)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"part1":`)
		http.NewResponseController(w).Flush()
		fmt.Fprintf(w, `"%s"}`, uniqueKey("body"))
	})
	mux.HandleFunc("POST /big", func(w http.ResponseWriter, r *http.Request) {
		b.count(r)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "4096")
		w.WriteHeader(201)
		w.Write(bytes.Repeat([]byte("x"), 4096))
	})
	mux.HandleFunc("POST /die", func(w http.ResponseWriter, r *http.Request) {
		// 201 and the start of a body, then the connection drops: with a
		// declared length (?framing=length) or chunked.
		b.count(r)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("framing") == "length" {
			w.Header().Set("Content-Length", "1000")
		}
		w.WriteHeader(201)
		w.Write([]byte(`{"id": "pay_partial", `))
		http.NewResponseController(w).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	mux.HandleFunc("/duplex", func(w http.ResponseWriter, r *http.Request) {
		// Echoes each line of the body as it comes.
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(200)
		rc.Flush()
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			fmt.Fprintf(w, "echo %s\n", sc.Text())
			rc.Flush()
		}
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		// Answers what arrived: method, path, query, headers, body.
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "uri": r.RequestURI, "host": r.Host, "header": r.Header, "body": string(body)})
	})
	b.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		b.releaseHeld()
		close(b.proceed)
		b.srv.CloseClientConnections()
		b.srv.Close()
	})
	return b
}

var releaseOnce sync.Map

func (b *goBackend) releaseHeld() {
	if _, done := releaseOnce.LoadOrStore(b, true); !done {
		close(b.release)
	}
}

func (b *goBackend) url() string                { return b.srv.URL }
func (b *goBackend) ledger(t *testing.T) ledger { return getLedger(t, b.srv.URL) }

// count records one execution of r.
func (b *goBackend) count(r *http.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.executions++
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		b.keys[k]++
	}
	b.seen = append(b.seen, r.Header.Clone())
}

func (b *goBackend) keyCount(k string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.keys[k]
}

func (b *goBackend) create(w http.ResponseWriter, r *http.Request) {
	if b.hangUpNext.CompareAndSwap(true, false) {
		b.count(r)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	if b.holdNext.CompareAndSwap(true, false) {
		b.count(r)
		select {
		case <-b.release:
		case <-r.Context().Done():
		}
		return
	}
	b.count(r)
	var req struct {
		Amount   *int64  `json:"amount"`
		Currency *string `json:"currency"`
		DelayMS  int     `json:"delay_ms"`
		Fail     bool    `json:"fail"`
	}
	problem := func(status int, title string) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": status})
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		problem(400, "Malformed JSON")
		return
	}
	if req.Amount == nil || req.Currency == nil || *req.Currency == "" {
		problem(400, "Missing field")
		return
	}
	if req.DelayMS > 0 {
		// The work goes on if the proxy goes away, as a call to a payment
		// provider would.
		key := r.Header.Get("Idempotency-Key")
		b.mu.Lock()
		b.inflight[key]++
		b.maxInflight[key] = max(b.maxInflight[key], b.inflight[key])
		b.mu.Unlock()
		time.Sleep(time.Duration(req.DelayMS) * time.Millisecond)
		b.mu.Lock()
		b.inflight[key]--
		b.mu.Unlock()
	}
	if req.Fail {
		problem(500, "Payment failed")
		return
	}
	id := uniqueKey("pay")
	b.mu.Lock()
	b.payments++
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/payments/"+id)
	w.WriteHeader(201)
	json.NewEncoder(w).Encode(map[string]any{"id": id, "amount": *req.Amount, "currency": *req.Currency})
}

// ctxTimeout is the bound of a test step that would otherwise hang.
func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
