package idem_test

import (
	"context"
	"encoding/json"
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

// countingStore wraps a store, counts its calls and can inject faults.
type countingStore struct {
	idem.Store
	claims, completes, releases, renews atomic.Int64

	mu          sync.Mutex
	claimErr    error // returned by Claim instead of calling the store
	completeErr error // returned by Complete instead of calling the store
	renewErr    error // returned by Renew instead of calling the store
	blockClaim  bool  // Claim waits for its context to end
}

func (s *countingStore) faults() (claimErr, completeErr, renewErr error, block bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claimErr, s.completeErr, s.renewErr, s.blockClaim
}

func (s *countingStore) set(f func(s *countingStore)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *countingStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.claims.Add(1)
	err, _, _, block := s.faults()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	return s.Store.Claim(ctx, key, token, fp, lease)
}

func (s *countingStore) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	s.completes.Add(1)
	if _, err, _, _ := s.faults(); err != nil {
		return err
	}
	return s.Store.Complete(ctx, key, token, result, ttl)
}

func (s *countingStore) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	return s.Store.Release(ctx, key, token)
}

func (s *countingStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.renews.Add(1)
	if _, _, err, _ := s.faults(); err != nil {
		return err
	}
	return s.Store.Renew(ctx, key, token, lease)
}

// calls returns the number of store calls made so far.
func (s *countingStore) calls() int64 {
	return s.claims.Load() + s.completes.Load() + s.releases.Load() + s.renews.Load()
}

func newCountingStore(t testing.TB, opts ...memstore.Option) (*countingStore, *memstore.Store) {
	m := memstore.New(opts...)
	t.Cleanup(func() { m.Close() })
	return &countingStore{Store: m}, m
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// payments is a handler that counts its runs and answers 201 with a body
// that differs on every run.
type payments struct {
	runs   atomic.Int64
	status int // 0 means 201
}

func (p *payments) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	status := p.status
	if status == 0 {
		status = http.StatusCreated
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Add("X-Multi", "one")
	w.Header().Add("X-Multi", "two")
	w.Header().Set("Location", "/payments/"+itoa(n))
	w.WriteHeader(status)
	io.WriteString(w, `{"run":`+itoa(n)+`,"echo":`+string(jsonString(string(body)))+`}`)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// do sends a request through h and returns the recorded response.
func do(h http.Handler, method, target, key, body string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// problemBody is an RFC 9457 problem details object.
type problemBody struct {
	Type           string `json:"type"`
	Title          string `json:"title"`
	Status         int    `json:"status"`
	Detail         string `json:"detail"`
	OriginalStatus int    `json:"original_status"`
}

// wantProblem checks that w is an RFC 9457 problem response with status
// and a type ending in slug, and returns it.
func wantProblem(t *testing.T, w *httptest.ResponseRecorder, status int, slug string) problemBody {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	var p problemBody
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body is not JSON: %v: %s", err, w.Body)
	}
	if p.Status != status || p.Title == "" || p.Detail == "" || p.Type != idem.ProblemTypeBase+slug {
		t.Fatalf("problem = %+v, want status %d, type %s, a title and a detail", p, status, idem.ProblemTypeBase+slug)
	}
	return p
}

// events collects hook events.
type events struct {
	mu  sync.Mutex
	evs []idem.Event
}

func (e *events) hook(ev idem.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev.Request = nil
	e.evs = append(e.evs, ev)
}

func (e *events) outcomes() []idem.Outcome {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]idem.Outcome, len(e.evs))
	for i, ev := range e.evs {
		out[i] = ev.Outcome
	}
	return out
}

func (e *events) last() idem.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.evs) == 0 {
		return idem.Event{}
	}
	return e.evs[len(e.evs)-1]
}

type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) next() int64 { return c.n.Add(1) }

// waitFor polls cond until it holds, failing the test after 10 seconds
// instead of hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
