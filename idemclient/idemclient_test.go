package idemclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemclient"
	"github.com/idemgo/idem/memstore"
)

// payments is a handler that counts its executions, checks that every
// execution saw the same body, and answers 201 with a body unique to the
// execution.
type payments struct {
	executions atomic.Int64
	mu         sync.Mutex
	bodies     []string // request bodies seen, in order
	keys       []string // idempotency keys seen, in order
	answers    []string // response bodies written, in order
	fail       func(n int64) int
}

func (p *payments) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.executions.Add(1)
	b, _ := io.ReadAll(r.Body)
	key, _ := idem.KeyFromContext(r.Context())
	answer := fmt.Sprintf(`{"id":"pay_%d"}`, n)
	p.mu.Lock()
	p.bodies = append(p.bodies, string(b))
	p.keys = append(p.keys, key)
	p.answers = append(p.answers, answer)
	p.mu.Unlock()
	if p.fail != nil {
		if status := p.fail(n); status != 0 {
			w.WriteHeader(status)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, answer)
}

// server starts h behind the idem middleware over a memstore, on a real
// listener.
func server(t *testing.T, h http.Handler, opts ...idem.Option) *httptest.Server {
	t.Helper()
	return serverOver(t, memstore.New(), h, opts...)
}

func serverOver(t *testing.T, store idem.Store, h http.Handler, opts ...idem.Option) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(idem.New(store, opts...)(h))
	t.Cleanup(srv.Close)
	return srv
}

// attempts records the attempts a transport reports.
type attempts struct {
	mu   sync.Mutex
	list []idemclient.Attempt
}

func (a *attempts) record(at idemclient.Attempt) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.list = append(a.list, at)
}

func (a *attempts) get() []idemclient.Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]idemclient.Attempt(nil), a.list...)
}

// sameKey fails t unless every attempt sent one non-empty key, and returns
// it.
func sameKey(t *testing.T, list []idemclient.Attempt) string {
	t.Helper()
	if len(list) == 0 {
		t.Fatal("no attempt reported")
	}
	key := list[0].Key
	for _, a := range list {
		if a.Key == "" || a.Key != key || a.Request.Header.Get("Idempotency-Key") != key {
			t.Fatalf("attempt %d sent key %q (header %q), attempt 1 sent %q", a.Number, a.Key, a.Request.Header.Get("Idempotency-Key"), key)
		}
	}
	return key
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dropFirstResponse is a listener whose first connection is closed when the
// server starts writing its response: the handler has run, the client gets
// a broken connection.
type dropFirstResponse struct {
	net.Listener
	accepted atomic.Int64
}

func (l *dropFirstResponse) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.accepted.Add(1) == 1 {
		return &dropOnWrite{Conn: c}, nil
	}
	return c, nil
}

type dropOnWrite struct{ net.Conn }

func (c *dropOnWrite) Write([]byte) (int, error) {
	c.Conn.Close()
	return 0, net.ErrClosed
}

func TestLostResponseRunsOnceAndReturnsTheOriginal(t *testing.T) {
	h := &payments{}
	srv := httptest.NewUnstartedServer(idem.New(memstore.New())(h))
	srv.Listener = &dropFirstResponse{Listener: srv.Listener}
	srv.Start()
	defer srv.Close()

	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, OnAttempt: seen.record})
	resp, err := client.Post(srv.URL+"/payments", "application/json", strings.NewReader(`{"amount":1000}`))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)

	if n := h.executions.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	list := seen.get()
	if len(list) != 2 || list[0].Err == nil || !list[0].Retry {
		t.Fatalf("attempts = %+v, want a failed first attempt and a retry", list)
	}
	key := sameKey(t, list)
	if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "true" || body != h.answers[0] {
		t.Fatalf("got %d replayed=%q %s, want the first answer %s replayed", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body, h.answers[0])
	}
	if h.keys[0] != key || h.bodies[0] != `{"amount":1000}` {
		t.Fatalf("handler saw key %q body %q", h.keys[0], h.bodies[0])
	}
}

func TestKeyInUseStormWaitsForTheFirstAnswer(t *testing.T) {
	const dups = 6
	started := make(chan struct{})
	release := make(chan struct{})
	h := &payments{fail: func(n int64) int {
		if n == 1 {
			close(started)
			<-release
		}
		return 0
	}}
	var conflicts atomic.Int64
	var once sync.Once
	srv := server(t, h,
		idem.WithLockTTL(time.Second), idem.WithStoreTimeout(250*time.Millisecond),
		idem.WithHook(func(ev idem.Event) {
			// The first request finishes once every duplicate has met it.
			if ev.Outcome == idem.OutcomeConflict && conflicts.Add(1) >= dups {
				once.Do(func() { close(release) })
			}
		}))
	defer once.Do(func() { close(release) })

	post := func(seen *attempts) (*http.Response, error) {
		req, _ := http.NewRequest("POST", srv.URL+"/payments", strings.NewReader(`{"amount":7}`))
		req.Header.Set("Idempotency-Key", "storm-1")
		tr := &idemclient.Transport{BaseDelay: time.Millisecond, MaxAttempts: 20}
		if seen != nil {
			tr.OnAttempt = seen.record
		}
		return idemclient.NewClient(tr).Do(req)
	}
	type result struct {
		status int
		body   string
		seen   *attempts
		err    error
	}
	first := make(chan result, 1)
	go func() {
		resp, err := post(nil)
		if err != nil {
			first <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		first <- result{status: resp.StatusCode, body: string(b)}
	}()
	<-started

	results := make(chan result, dups)
	for i := 0; i < dups; i++ {
		go func() {
			seen := new(attempts)
			resp, err := post(seen)
			if err != nil {
				results <- result{err: err, seen: seen}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			results <- result{status: resp.StatusCode, body: string(b), seen: seen}
		}()
	}
	f := <-first
	if f.err != nil || f.status != 201 {
		t.Fatalf("first request: %d %v", f.status, f.err)
	}
	for i := 0; i < dups; i++ {
		r := <-results
		if r.err != nil || r.status != 201 || r.body != f.body {
			t.Fatalf("duplicate got %d %q %v, want the first answer %q", r.status, r.body, r.err, f.body)
		}
		list := r.seen.get()
		if len(list) < 2 || list[0].Response == nil || list[0].Response.StatusCode != http.StatusConflict || list[0].Wait < time.Second {
			t.Fatalf("duplicate's first attempt: %+v, want a 409 followed by a wait of at least Retry-After (1s)", list[0])
		}
		for _, a := range list[:len(list)-1] {
			if a.Response == nil || a.Response.StatusCode != http.StatusConflict {
				t.Fatalf("a duplicate's attempt got %v %v before the end, want only 409s", a.Response, a.Err)
			}
		}
	}
	if n := h.executions.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

func TestNeverRetriesFinalClientErrors(t *testing.T) {
	h := &payments{fail: func(n int64) int {
		return 0
	}}
	srv := server(t, h, idem.WithMaxBodySize(64))
	big := strings.Repeat("x", 100)
	notFound := httptest.NewServer(idem.New(memstore.New())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusNotFound
		if r.URL.Path == "/busy" {
			status = http.StatusTooManyRequests
		}
		http.Error(w, "no", status)
	})))
	defer notFound.Close()
	// The key "reused" is used once, so that the cases below reuse it.
	pre, _ := http.NewRequest("POST", srv.URL+"/p", strings.NewReader(`{"a":1}`))
	pre.Header.Set("Idempotency-Key", "reused")
	if resp, err := http.DefaultClient.Do(pre); err != nil || resp.StatusCode != 201 {
		t.Fatalf("setting up: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	cases := []struct {
		name, url, key, body string
		status               int
	}{
		{"400 invalid key", srv.URL + "/p", "bad key", `{}`, 400},
		{"413 body too large", srv.URL + "/p", "", big, 413},
		{"422 key reused", srv.URL + "/p", "reused", `{"a":2}`, 422},
		{"404 from the handler", notFound.URL + "/p", "", `{}`, 404},
		{"429 from the handler", notFound.URL + "/busy", "", `{}`, 429},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var seen attempts
			client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, OnAttempt: seen.record})
			req, _ := http.NewRequest("POST", tc.url, strings.NewReader(tc.body))
			if tc.key != "" {
				req.Header.Set("Idempotency-Key", tc.key)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, body, tc.status)
			}
			if list := seen.get(); len(list) != 1 || list[0].Retry {
				t.Fatalf("%d attempts (retry %v), want exactly 1", len(list), list[0].Retry)
			}
		})
	}
}

func TestNotReplayableConflictIsNotRetried(t *testing.T) {
	// A response too large to keep makes the key's duplicates a 409 of
	// another type than key-in-use: final.
	srv := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("y", 200))
	}), idem.WithMaxResponseSize(100))
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, OnAttempt: seen.record})
	for i := 0; i < 2; i++ {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("{}"))
		req.Header.Set("Idempotency-Key", "streamed")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if i == 1 && (resp.StatusCode != 409 || !strings.Contains(body, "response-not-replayable")) {
			t.Fatalf("second request: %d %s, want the 409 response-not-replayable problem, body intact", resp.StatusCode, body)
		}
	}
	if list := seen.get(); len(list) != 2 {
		t.Fatalf("%d attempts for 2 requests, want 2", len(list))
	}
}

func TestRetriesServerErrorsWithTheSameKeyAndBody(t *testing.T) {
	bodies := map[string]func(url string) *http.Request{
		// http.NewRequest sets GetBody for a strings.Reader.
		"GetBody": func(url string) *http.Request {
			req, _ := http.NewRequest("POST", url, strings.NewReader(`{"amount":5}`))
			return req
		},
		// Without GetBody the transport keeps the body itself.
		"kept": func(url string) *http.Request {
			req, _ := http.NewRequest("POST", url, io.NopCloser(strings.NewReader(`{"amount":5}`)))
			return req
		},
	}
	for name, newReq := range bodies {
		t.Run(name, func(t *testing.T) {
			h := &payments{fail: func(n int64) int {
				if n <= 2 {
					return http.StatusInternalServerError // not stored: the key is free again
				}
				return 0
			}}
			srv := server(t, h)
			var seen attempts
			client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, OnAttempt: seen.record})
			req := newReq(srv.URL)
			if name == "GetBody" && req.GetBody == nil {
				t.Fatal("the request has no GetBody")
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != 201 || body != h.answers[2] {
				t.Fatalf("got %d %s, want the third execution's 201", resp.StatusCode, body)
			}
			list := seen.get()
			key := sameKey(t, list)
			if len(list) != 3 {
				t.Fatalf("%d attempts, want 3", len(list))
			}
			for i := range h.keys {
				if h.keys[i] != key || h.bodies[i] != `{"amount":5}` {
					t.Fatalf("execution %d saw key %q body %q, want %q and the original body", i+1, h.keys[i], h.bodies[i], key)
				}
			}
		})
	}
}

// flakyStore fails its first Claim.
type flakyStore struct {
	idem.Store
	claims atomic.Int64
}

func (s *flakyStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	if s.claims.Add(1) == 1 {
		return nil, errors.New("store down")
	}
	return s.Store.Claim(ctx, key, token, fp, lease)
}

func TestStoreOutageIsRetriedAfterRetryAfter(t *testing.T) {
	h := &payments{}
	srv := serverOver(t, &flakyStore{Store: memstore.New()}, h)
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, OnAttempt: seen.record})
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 201 || body != h.answers[0] {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	list := seen.get()
	if len(list) != 2 || list[0].Response.StatusCode != 503 || list[0].Wait < time.Second {
		t.Fatalf("attempts %+v, want a 503 then a retry after at least its Retry-After of 1s", list)
	}
	if n := h.executions.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// lossyStore never records a response: every Complete fails.
type lossyStore struct{ idem.Store }

func (lossyStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return errors.New("store down")
}

// A 503 response-not-recorded says the request ran but its answer is not
// stored: a retry after the lease (here 1s, inside the budget) would run it
// again. The caller gets it after the first attempt.
func TestNotRecordedIsNotRetried(t *testing.T) {
	h := &payments{}
	srv := serverOver(t, lossyStore{memstore.New()}, h, idem.WithLockTTL(time.Second), idem.WithStoreTimeout(100*time.Millisecond))
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{BaseDelay: time.Millisecond, Budget: 10 * time.Second, OnAttempt: seen.record})
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 503 || !strings.Contains(body, "response-not-recorded") {
		t.Fatalf("got %d %s, want the 503 response-not-recorded problem, body intact", resp.StatusCode, body)
	}
	if n := len(seen.get()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
	if n := h.executions.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// unavailable answers 503 with Retry-After: 1, always.
func unavailable(calls *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "later", http.StatusServiceUnavailable)
	})
}

func TestBudgetEndsRetrying(t *testing.T) {
	var calls atomic.Int64
	srv := server(t, unavailable(&calls))
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{Budget: 1900 * time.Millisecond, MaxAttempts: 100, OnAttempt: seen.record})
	resp, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	// The caller gets the last answer, body intact.
	if body := readAll(t, resp); resp.StatusCode != 503 || !strings.Contains(body, "later") {
		t.Fatalf("got %d %q, want the last 503", resp.StatusCode, body)
	}
	list := seen.get()
	// Attempt 1 waits 1s; a second wait of 1s would end after 2s > 1.9s.
	if len(list) != 2 || list[1].Retry || calls.Load() != 2 {
		t.Fatalf("%d attempts, %d calls, last retry %v; want 2 attempts within the budget", len(list), calls.Load(), list[len(list)-1].Retry)
	}
}

func TestMaxAttempts(t *testing.T) {
	h := &payments{fail: func(int64) int { return http.StatusBadGateway }}
	srv := server(t, h)
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{MaxAttempts: 3, BaseDelay: time.Millisecond, OnAttempt: seen.record})
	resp, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || len(seen.get()) != 3 || h.executions.Load() != 3 {
		t.Fatalf("status %d after %d attempts, %d executions; want 502 after 3", resp.StatusCode, len(seen.get()), h.executions.Load())
	}
}

func TestCancelStopsRetrying(t *testing.T) {
	h := &payments{fail: func(int64) int { return http.StatusInternalServerError }}
	srv := server(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{
		BaseDelay: time.Hour, MaxDelay: time.Hour, Budget: 2 * time.Hour, // a pause that only cancellation ends
		OnAttempt: func(a idemclient.Attempt) {
			seen.record(a)
			if a.Retry {
				cancel()
			}
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL, strings.NewReader("x"))
	done := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if resp != nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("RoundTrip did not return after its context was cancelled")
	}
	// The pause may have been cut very short by jitter; either way no
	// attempt starts after the cancellation.
	if n := len(seen.get()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestOversizedBodyWithoutGetBodyIsSentOnce(t *testing.T) {
	h := &payments{fail: func(int64) int { return http.StatusInternalServerError }}
	srv := server(t, h)
	var seen attempts
	client := idemclient.NewClient(&idemclient.Transport{MaxBodySize: 8, BaseDelay: time.Millisecond, OnAttempt: seen.record})
	body := strings.Repeat("z", 100)
	req, _ := http.NewRequest("POST", srv.URL, io.NopCloser(strings.NewReader(body)))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(seen.get()) != 1 || h.executions.Load() != 1 {
		t.Fatalf("%d attempts, want 1: a body too large to keep cannot be sent again", len(seen.get()))
	}
	if h.bodies[0] != body {
		t.Fatalf("server got %d bytes, want all %d", len(h.bodies[0]), len(body))
	}
}

func TestKeysOnlyOnProtectedMethods(t *testing.T) {
	got := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Method + " " + r.Header.Get("Idempotency-Key")
	}))
	defer srv.Close()
	seq := 0
	client := idemclient.NewClient(&idemclient.Transport{NewKey: func() (string, error) {
		seq++
		return fmt.Sprintf("gen-%d", seq), nil
	}})
	send := func(method, key string) string {
		req, _ := http.NewRequest(method, srv.URL, nil)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return <-got
	}
	for _, c := range []struct{ method, key, want string }{
		{"GET", "", "GET "},
		{"POST", "", "POST gen-1"},
		{"PATCH", "", "PATCH gen-2"},
		{"PUT", "", "PUT "},
		{"POST", "mine", "POST mine"},
	} {
		if s := send(c.method, c.key); s != c.want {
			t.Fatalf("server saw %q, want %q", s, c.want)
		}
	}

	// The default generator: 128 bits as 32 hex digits, new each time.
	a, err1 := idemclient.NewKey()
	b, err2 := idemclient.NewKey()
	if err1 != nil || err2 != nil || len(a) != 32 || strings.Trim(a, "0123456789abcdef") != "" || a == b {
		t.Fatalf("NewKey: %q %v, %q %v", a, err1, b, err2)
	}
}

func TestKeyGeneratorFailureSendsNothing(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }))
	defer srv.Close()
	client := idemclient.NewClient(&idemclient.Transport{NewKey: func() (string, error) { return "", errors.New("no entropy") }})
	_, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err == nil || !strings.Contains(err.Error(), "no entropy") || calls.Load() != 0 {
		t.Fatalf("err %v, %d calls; want the generator's error and no request", err, calls.Load())
	}
}

// A request built without a header map, which http.Transport sends as it
// is, gets its key too instead of a panic.
func TestRequestWithoutHeaderMapGetsAKey(t *testing.T) {
	p := &payments{}
	srv := server(t, p)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &idemclient.Transport{NewKey: func() (string, error) { return "k-nil-header", nil }}
	req := &http.Request{Method: http.MethodPost, URL: u, Body: io.NopCloser(strings.NewReader(`{"amount":1}`)), ContentLength: 12}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || len(p.keys) != 1 || p.keys[0] != "k-nil-header" {
		t.Fatalf("status %d, keys seen %q; want 201 under k-nil-header", resp.StatusCode, p.keys)
	}
	if req.Header != nil {
		t.Fatalf("RoundTrip changed the caller's request: Header %v", req.Header)
	}
}
