package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemprom"
)

// payment is one payment the service has made.
type payment struct {
	ID       string `json:"id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Created  string `json:"created"`
}

// paymentRequest is the body of POST /payments. DelayMS and Fail exist for
// tests: the handler sleeps DelayMS milliseconds, and answers 500 if Fail.
type paymentRequest struct {
	Amount   *int64  `json:"amount"`
	Currency *string `json:"currency"`
	DelayMS  int     `json:"delay_ms"`
	Fail     bool    `json:"fail"`
}

// service is the payments API. Its ledger lives in the process, or with
// -ledger sql in the store's database (sql); the idempotency records live
// in the store, which several processes may share.
type service struct {
	mu         sync.Mutex
	payments   []payment
	sql        *sqlLedger
	executions atomic.Int64
}

// newService returns the routes of the example API, POST /payments protected
// by idem with keys scoped by the caller (see scopeOf).
//
// With metrics, the store calls and outcomes are counted by idemprom and
// served on GET /metrics. A positive replayCache turns on idem's replay
// cache with that many bytes.
func newService(store idem.Store, ttl, lockTTL, storeTimeout time.Duration, logger *slog.Logger, metrics bool, replayCache int64) (http.Handler, error) {
	ledger := ledgerOf(store)
	opts := []idem.Option{
		idem.WithTTL(ttl),
		idem.WithLockTTL(lockTTL),
		idem.WithScope(scopeOf),
		idem.WithLogger(logger),
	}
	if storeTimeout > 0 {
		opts = append(opts, idem.WithStoreTimeout(storeTimeout))
	}
	var reg *prometheus.Registry
	if metrics {
		reg = prometheus.NewRegistry()
		m, err := idemprom.New(reg, idemprom.WithRoute(func(r *http.Request) string {
			return chi.RouteContext(r.Context()).RoutePattern()
		}))
		if err != nil {
			return nil, err
		}
		store = m.Store(store)
		opts = append(opts, idem.WithHook(m.Hook))
	}
	if replayCache > 0 {
		opts = append(opts, idem.WithReplayCache(replayCache, 1_000_000, 5*time.Minute))
	}
	protect, err := idem.NewMiddleware(store, opts...)
	if err != nil {
		return nil, err
	}
	s := &service{sql: ledger}
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	r.With(protect.Handler).Post("/payments", s.create)
	r.Get("/payments", s.list)
	if reg != nil {
		r.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	return r, nil
}

// scopeOf names the caller a request acts for: the principal the middleware
// scopes keys by, and the one the admin endpoints look keys up under. The
// example has no accounts: the caller is whoever holds the Authorization
// header's credential, named by a SHA-256 digest of it, so that the
// credential itself is never kept, logged or handed to the store. A real
// service would return the account ID its authentication middleware
// established.
func scopeOf(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(auth))
	return "caller-" + hex.EncodeToString(sum[:12])
}

func (s *service) create(w http.ResponseWriter, r *http.Request) {
	s.executions.Add(1)
	var req paymentRequest
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&req); err != nil {
		writeProblem(w, http.StatusBadRequest, "Malformed JSON", "The body must be a JSON object such as {\"amount\": 1000, \"currency\": \"eur\"}.")
		return
	}
	if req.Amount == nil || req.Currency == nil || strings.TrimSpace(*req.Currency) == "" {
		writeProblem(w, http.StatusBadRequest, "Missing field", "Both \"amount\" (an integer) and \"currency\" (a string) are required.")
		return
	}
	p := payment{ID: newID(), Amount: *req.Amount, Currency: *req.Currency, Created: time.Now().UTC().Format(time.RFC3339Nano)}
	if s.sql != nil {
		// Written first, in the request's transaction: a delay, a failure
		// or a crash after it shows that the row commits with the
		// response or not at all.
		if err := s.sql.add(r, p); err != nil {
			slog.Error("writing the payment failed", "err", err)
			writeProblem(w, http.StatusInternalServerError, "Payment failed", "The payment could not be written; nothing was charged. Retry with the same key.")
			return
		}
	}
	if req.DelayMS > 0 {
		time.Sleep(time.Duration(req.DelayMS) * time.Millisecond)
	}
	if req.Fail {
		writeProblem(w, http.StatusInternalServerError, "Payment failed", "The payment provider failed; nothing was charged. Retry with the same key.")
		return
	}
	if s.sql == nil {
		s.mu.Lock()
		s.payments = append(s.payments, p)
		s.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/payments/"+p.ID)
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(p)
}

func (s *service) list(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	list := append([]payment{}, s.payments...)
	s.mu.Unlock()
	if s.sql != nil {
		var err error
		if list, err = s.sql.list(r.Context()); err != nil {
			slog.Error("listing payments failed", "err", err)
			writeProblem(w, http.StatusServiceUnavailable, "Ledger unavailable", "The payments could not be read. Retry later.")
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Count      int       `json:"count"`
		Executions int64     `json:"executions"`
		Payments   []payment `json:"payments"`
	}{len(list), s.executions.Load(), list})
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
}

// newID returns a payment ID unique across processes.
func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return "pay_" + hex.EncodeToString(b[:])
}
