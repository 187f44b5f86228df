package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/idempotency"
	fiberredis "github.com/gofiber/storage/redis/v3"
)

// The two servers the harness compares idem with. Both answer the example's
// POST /payments with the same JSON as the example's handler, and GET
// /healthz.

type paymentRequest struct {
	Amount   *int64  `json:"amount"`
	Currency *string `json:"currency"`
}

type payment struct {
	ID       string `json:"id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Created  string `json:"created"`
}

// ledger counts payments as the example's does (it keeps them all).
type ledger struct {
	mu       sync.Mutex
	payments []payment
}

// create makes the payment of body, or returns false for a bad request.
func (l *ledger) create(body []byte) (payment, bool) {
	var req paymentRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Amount == nil || req.Currency == nil || strings.TrimSpace(*req.Currency) == "" {
		return payment{}, false
	}
	var b [12]byte
	rand.Read(b[:])
	p := payment{ID: "pay_" + hex.EncodeToString(b[:]), Amount: *req.Amount, Currency: *req.Currency, Created: time.Now().UTC().Format(time.RFC3339Nano)}
	l.mu.Lock()
	l.payments = append(l.payments, p)
	l.mu.Unlock()
	return p, true
}

// serveBare serves the payments API on bare net/http: no idempotency.
func serveBare(ln net.Listener) error {
	var l ledger
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /payments", func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		p, ok := l.create(body)
		if !ok {
			http.Error(w, "bad payment", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/payments/"+p.ID)
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(p)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// readBody reads the body in one allocation when its length is known, as
// idem does.
func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength > 0 {
		b := make([]byte, r.ContentLength)
		_, err := io.ReadFull(r.Body, b)
		return b, err
	}
	return io.ReadAll(r.Body)
}

// serveFiber serves the payments API on Fiber v2 behind its idempotency
// middleware, whose records are kept in Redis at redisAddr
// (gofiber/storage/redis, on go-redis).
func serveFiber(ln net.Listener, redisAddr string) error {
	host, port, err := net.SplitHostPort(redisAddr)
	if err != nil {
		return err
	}
	portN, err := strconv.Atoi(port)
	if err != nil {
		return err
	}
	storage := fiberredis.New(fiberredis.Config{Host: host, Port: portN})
	defer storage.Close()
	var l ledger
	app := fiber.New(fiber.Config{DisableStartupMessage: true, BodyLimit: 4 << 20})
	app.Use(idempotency.New(idempotency.Config{Lifetime: 24 * time.Hour, KeyHeader: "Idempotency-Key", Storage: storage}))
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	app.Post("/payments", func(c *fiber.Ctx) error {
		p, ok := l.create(c.Body())
		if !ok {
			return c.Status(fiber.StatusBadRequest).SendString("bad payment")
		}
		c.Set("Location", "/payments/"+p.ID)
		return c.Status(fiber.StatusCreated).JSON(p)
	})
	return app.Listener(ln)
}
