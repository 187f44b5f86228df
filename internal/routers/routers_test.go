// Package routers_test checks that the middleware drops into the routers
// Go teams use most. It is a module of its own so that chi and gorilla/mux
// never enter the module graph of idem's users.
package routers_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/mux"
	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// chi: r.Use on a group and r.With on one route, each with its own TTL.
func TestChiRoutesKeepTheirOwnTTL(t *testing.T) {
	clock := newFakeClock()
	st := memstore.New(memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	defer st.Close()
	h := &payments{}
	r := chi.NewRouter()
	r.Group(func(r chi.Router) {
		r.Use(idem.New(st, idem.WithTTL(time.Hour)))
		r.Post("/orders", h.ServeHTTP)
	})
	r.With(idem.New(st, idem.WithTTL(time.Minute))).Post("/payments", h.ServeHTTP)

	do(r, "POST", "/orders", "o", "")
	do(r, "POST", "/payments", "p", "")
	if w := do(r, "POST", "/orders", "o", ""); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("chi r.Use route did not replay")
	}
	if w := do(r, "POST", "/payments", "p", ""); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("chi r.With route did not replay")
	}
	clock.Advance(2 * time.Minute)
	do(r, "POST", "/orders", "o", "")
	do(r, "POST", "/payments", "p", "")
	if got := h.runs.Load(); got != 3 {
		t.Fatalf("runs = %d, want 3: only the 1-minute route's record expired", got)
	}
}

// gorilla/mux: r.Use, path variables, and a reused key on another path.
func TestGorillaMuxReplaysAndRejectsReuse(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	h := &payments{}
	r := mux.NewRouter()
	r.Use(idem.New(st))
	r.Handle("/payments/{id}", h).Methods("POST", "PATCH")
	first := do(r, "PATCH", "/payments/7", "k", "x")
	second := do(r, "PATCH", "/payments/7", "k", "x")
	if h.runs.Load() != 1 || second.Body.String() != first.Body.String() {
		t.Fatalf("gorilla/mux: runs %d", h.runs.Load())
	}
	if w := do(r, "PATCH", "/payments/8", "k", "x"); w.Code != http.StatusUnprocessableEntity ||
		w.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("reused key on another path: %d %q, want a 422 problem", w.Code, w.Header().Get("Content-Type"))
	}
}

// Give each chi route its own settings over one store: here payments are
// replayable for 24 hours and exports for 10 minutes, and exports must
// carry a key.
func Example_chi() {
	store := memstore.New()
	defer store.Close()

	r := chi.NewRouter()
	r.With(idem.New(store, idem.WithTTL(24*time.Hour))).
		Post("/payments", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	r.With(idem.New(store, idem.WithTTL(10*time.Minute), idem.WithRequiredKey())).
		Post("/exports", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })

	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest("POST", "/exports", nil)) // no key
	fmt.Println(w.Code, w.Header().Get("Content-Type"))
	// Output:
	// 400 application/problem+json
}

// gorilla/mux: the middleware on a subrouter protects every route under it,
// path variables included; other routes are untouched.
func Example_gorillaMux() {
	store := memstore.New()
	defer store.Close()

	r := mux.NewRouter()
	api := r.PathPrefix("/orders").Subrouter()
	api.Use(idem.New(store, idem.WithTTL(time.Hour)))
	created := 0
	api.HandleFunc("/{id}/refunds", func(w http.ResponseWriter, req *http.Request) {
		created++
		fmt.Fprintf(w, "refund %d of order %s", created, mux.Vars(req)["id"])
	}).Methods("POST")

	for i := 0; i < 2; i++ {
		req := httptest.NewRequest("POST", "/orders/42/refunds", strings.NewReader(`{"amount":5}`))
		req.Header.Set("Idempotency-Key", "refund-42-a")
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		fmt.Printf("%s (replayed=%q)\n", w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// refund 1 of order 42 (replayed="")
	// refund 1 of order 42 (replayed="true")
}

// payments counts its runs and answers 201 with a body that differs on
// every run.
type payments struct{ runs atomic.Int64 }

func (p *payments) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	echo, _ := json.Marshal(string(body))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, `{"run":`+strconv.FormatInt(n, 10)+`,"echo":`+string(echo)+`}`)
}

// do sends a request through h and returns the recorded response.
func do(h http.Handler, method, target, key, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

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
