package idem_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// A response of exactly WithMaxResponseSize bytes is kept and replayed;
// one byte more is streamed and not replayable. Both ways of writing
// (Write, io.WriteString) and a body written in pieces count alike.
func TestResponseOfExactlyMaxSizeIsReplayed(t *testing.T) {
	const max = 64
	exact := strings.Repeat("e", max)
	for _, tc := range []struct {
		name  string
		write func(w http.ResponseWriter, body string)
	}{
		{"Write", func(w http.ResponseWriter, body string) { w.Write([]byte(body)) }},
		{"WriteString", func(w http.ResponseWriter, body string) { io.WriteString(w, body) }},
		{"pieces", func(w http.ResponseWriter, body string) {
			w.Write([]byte(body[:max/2]))
			io.WriteString(w, body[max/2:])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := newCountingStore(t)
			var runs atomic.Int64
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs.Add(1)
				body, _ := io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(http.StatusCreated)
				tc.write(w, string(body))
			})
			mw := idem.New(st, idem.WithMaxResponseSize(max))(h)
			do(mw, "POST", "/", "exact", exact)
			w := do(mw, "POST", "/", "exact", exact)
			if w.Code != http.StatusCreated || w.Body.String() != exact || w.Header().Get("Idempotent-Replayed") != "true" {
				t.Fatalf("%d-byte response under a %d-byte limit: retry got %d %q, want the replay", max, max, w.Code, w.Body)
			}
			over := exact + "!"
			if first := do(mw, "POST", "/", "over", over); first.Code != http.StatusCreated || first.Body.String() != over {
				t.Fatalf("%d-byte response: first answer %d %q", max+1, first.Code, first.Body)
			}
			p := wantProblem(t, do(mw, "POST", "/", "over", over), http.StatusConflict, "response-not-replayable")
			if p.OriginalStatus != http.StatusCreated {
				t.Fatalf("original_status = %d, want 201", p.OriginalStatus)
			}
			if n := runs.Load(); n != 2 {
				t.Fatalf("handler ran %d times, want 2", n)
			}
		})
	}
}

// A Date header the handler sets is neither stored nor replayed: a replay
// is dated when it is sent (net/http adds its own Date), never with the
// time of the first answer.
func TestReplayDoesNotCarryHandlersDate(t *testing.T) {
	const old = "Mon, 01 Jan 2001 00:00:00 GMT"
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	st := &resultStore{Store: mem}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", old)
		w.Header().Set("X-Kept", "yes")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "paid")
	})
	srv := httptest.NewServer(idem.New(st)(h))
	t.Cleanup(srv.Close)
	post := func() *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", "dated")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	post()
	replay := post()
	if replay.Header.Get("Idempotent-Replayed") != "true" || replay.Header.Get("X-Kept") != "yes" {
		t.Fatalf("second answer is not a replay: %v", replay.Header)
	}
	if d := replay.Header.Get("Date"); d == old || d == "" {
		t.Fatalf("replay Date = %q, want the time of the replay", d)
	}
	// And the record itself holds no Date.
	resp, err := idem.DecodeResponse(st.last())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.Header["Date"]; ok {
		t.Fatalf("the record holds Date %q", resp.Header["Date"])
	}
}

// resultStore keeps the last result completed through it.
type resultStore struct {
	idem.Store
	mu     sync.Mutex
	result []byte
}

func (s *resultStore) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.mu.Lock()
	s.result = bytes.Clone(result)
	s.mu.Unlock()
	return s.Store.Complete(ctx, key, token, result, ttl)
}

func (s *resultStore) last() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.result
}

// A replay keeps every header the handler set, Location first among them:
// the client of a retried POST must learn where its resource is.
func TestReplayKeepsLocation(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st)(h)
	first := do(mw, "POST", "/payments", "loc", `{"amount":1}`)
	if first.Header().Get("Location") != "/payments/1" {
		t.Fatalf("first answer Location = %q", first.Header().Get("Location"))
	}
	w := do(mw, "POST", "/payments", "loc", `{"amount":1}`)
	if w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("second answer is not a replay: %d", w.Code)
	}
	for _, name := range []string{"Location", "Content-Type"} {
		if got, want := w.Header().Get(name), first.Header().Get(name); got != want {
			t.Errorf("replay %s = %q, want %q", name, got, want)
		}
	}
	if got := w.Header()["X-Multi"]; len(got) != 2 || got[0] != "one" || got[1] != "two" {
		t.Errorf("replay X-Multi = %q, want [one two]", got)
	}
}

// The hook reports a 5xx that was released, not kept, as executed with
// Stored false, and a kept response as Stored true.
func TestHookReportsReleased5xxAsNotStored(t *testing.T) {
	for _, tc := range []struct {
		status int
		stored bool
	}{{http.StatusCreated, true}, {499, true}, {http.StatusInternalServerError, false}, {http.StatusServiceUnavailable, false}} {
		st, _ := newCountingStore(t)
		var ev events
		mw := idem.New(st, idem.WithHook(ev.hook))(&payments{status: tc.status})
		do(mw, "POST", "/", "k", "")
		e := ev.last()
		if e.Outcome != idem.OutcomeExecuted || e.Stored != tc.stored || e.Status != tc.status {
			t.Errorf("%d: hook saw outcome %v stored %v status %d; want executed, stored %v, status %d", tc.status, e.Outcome, e.Stored, e.Status, tc.stored, tc.status)
		}
	}
}

// KeepBelow500's boundary: 499 is kept, 500 is not.
func TestKeepBelow500Boundary(t *testing.T) {
	for status, want := range map[int]bool{100: true, 200: true, 499: true, 500: false, 501: false, 599: false} {
		if got := idem.KeepBelow500(status); got != want {
			t.Errorf("KeepBelow500(%d) = %v, want %v", status, got, want)
		}
	}
	for _, tc := range []struct {
		status int
		runs   int64
	}{{499, 1}, {500, 2}} {
		st, _ := newCountingStore(t)
		h := &payments{status: tc.status}
		mw := idem.New(st)(h)
		do(mw, "POST", "/", "k", "")
		do(mw, "POST", "/", "k", "")
		if got := h.runs.Load(); got != tc.runs {
			t.Errorf("%d twice: handler ran %d times, want %d", tc.status, got, tc.runs)
		}
	}
}

// readCounter is a request body that counts the bytes read from it.
type readCounter struct {
	r    io.Reader
	read atomic.Int64
}

func (c *readCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *readCounter) Close() error { return nil }

// A request whose Content-Length is over the body limit is refused with
// 413 before a byte of its body is read: a client announcing a large
// upload costs the server nothing.
func TestDeclaredOversizeBodyRefusedUnread(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st, idem.WithMaxBodySize(100))(h)
	body := &readCounter{r: strings.NewReader(strings.Repeat("a", 101))}
	r := httptest.NewRequest("POST", "/", nil)
	r.Body, r.ContentLength = body, 101
	r.Header.Set("Idempotency-Key", "big")
	w := httptest.NewRecorder()
	mw.ServeHTTP(w, r)
	wantProblem(t, w, http.StatusRequestEntityTooLarge, "body-too-large")
	if n := body.read.Load(); n != 0 {
		t.Fatalf("%d bytes of a body declared too large were read before the 413", n)
	}
	if h.runs.Load() != 0 || st.calls() != 0 {
		t.Fatalf("runs %d, store calls %d; want none", h.runs.Load(), st.calls())
	}
	// Exactly at the limit is fine.
	ok := httptest.NewRequest("POST", "/", strings.NewReader(strings.Repeat("a", 100)))
	ok.Header.Set("Idempotency-Key", "fits")
	w = httptest.NewRecorder()
	mw.ServeHTTP(w, ok)
	if w.Code != http.StatusCreated {
		t.Fatalf("a body of exactly the limit: %d", w.Code)
	}
}

// When the response cannot be recorded, a real client over net/http gets
// the 503 problem and nothing of the handler's answer: not its status, its
// headers or its body.
func TestUnrecordedResponseNeverReachesClient(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) {
		s.completeErr = errors.New("dial tcp 10.0.0.7:6379: connect: connection refused")
	})
	h := &payments{}
	srv := httptest.NewServer(idem.New(st, idem.WithLockTTL(5*time.Second))(h))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest("POST", srv.URL+"/payments", strings.NewReader(`{"amount":1}`))
	req.Header.Set("Idempotency-Key", "unrecorded")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %q %s, want the 503 problem", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp.Header.Get("Retry-After") != "5" {
		t.Fatalf("Retry-After = %q, want the lock TTL, 5", resp.Header.Get("Retry-After"))
	}
	if loc := resp.Header.Get("Location"); loc != "" || resp.Header.Get("X-Multi") != "" {
		t.Fatalf("the handler's headers reached the client: Location %q, X-Multi %q", loc, resp.Header.Get("X-Multi"))
	}
	if s := string(body); strings.Contains(s, `"run"`) || strings.Contains(s, "connection refused") || strings.Contains(s, "10.0.0.7") {
		t.Fatalf("body leaks the handler's answer or the store's error: %s", s)
	}
	if h.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", h.runs.Load())
	}
}

// ownTokenStore answers every winning Claim with the record it just made,
// as a store client that resent the claim after losing the reply does. It
// can also hand out another token's record, to check that only the
// caller's own token counts as ownership.
type ownTokenStore struct {
	idem.Store
	foreign atomic.Bool // answer with the record under another token
}

func (s *ownTokenStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	rec, err := s.Store.Claim(ctx, key, token, fp, lease)
	if err != nil || rec != nil {
		return rec, err
	}
	rec = &idem.Record{State: idem.StateInProgress, Fingerprint: fp, Token: token, LeaseLeft: lease}
	if s.foreign.Load() {
		rec.Token = token + "-someone-else"
	}
	return rec, nil
}

// Do, like the middleware, recognises its own token in the record a
// resent claim meets and goes on as the owner; a record under any other
// token is someone else's run.
func TestDoRecognisesOwnClaimOnly(t *testing.T) {
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	st := &ownTokenStore{Store: mem}
	runs := 0
	fn := func(context.Context) ([]byte, error) { runs++; return []byte("done"), nil }
	if b, err := idem.Do(context.Background(), st, "own", "fp", fn); err != nil || string(b) != "done" || runs != 1 {
		t.Fatalf("resent claim: Do = %q, %v, runs %d; want done, nil, 1", b, err, runs)
	}
	if b, err := idem.Do(context.Background(), st, "own", "fp", fn); err != nil || string(b) != "done" || runs != 1 {
		t.Fatalf("after it: Do = %q, %v, runs %d; want the stored result", b, err, runs)
	}
	st.foreign.Store(true)
	if _, err := idem.Do(context.Background(), st, "foreign", "fp", fn); !errors.Is(err, idem.ErrInProgress) || runs != 1 {
		t.Fatalf("another token's record: err %v, runs %d; want ErrInProgress and no run", err, runs)
	}
}
