package idem_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// Wrap a handler: the first request runs it, the retry gets the same answer.
func Example() {
	store := memstore.New()
	defer store.Close()

	charges := 0
	pay := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"pay_%d"}`, charges)
	})
	h := idem.New(store)(pay)

	for i := 0; i < 2; i++ {
		r := httptest.NewRequest("POST", "/payments", strings.NewReader(`{"amount":1000}`))
		r.Header.Set("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%d %s replayed=%q\n", w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("charges:", charges)
	// Output:
	// 201 {"id":"pay_1"} replayed=""
	// 201 {"id":"pay_1"} replayed="true"
	// charges: 1
}

// Scope keys by the authenticated account, so that two accounts sending the
// same key never see each other's records.
func ExampleWithScope() {
	store := memstore.New()
	defer store.Close()

	h := idem.New(store,
		idem.WithScope(func(r *http.Request) string {
			return r.Header.Get("X-Account-ID") // set by your authentication middleware
		}),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "order for %s", r.Header.Get("X-Account-ID"))
	}))

	for _, account := range []string{"acct_A", "acct_B", "acct_A"} {
		r := httptest.NewRequest("POST", "/orders", nil)
		r.Header.Set("Idempotency-Key", "order-1")
		r.Header.Set("X-Account-ID", account)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%s: %s (replayed=%q)\n", account, w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// acct_A: order for acct_A (replayed="")
	// acct_B: order for acct_B (replayed="")
	// acct_A: order for acct_A (replayed="true")
}

// Give each route its own settings over one store: here payments are
// replayable for 24 hours and exports for 10 minutes, and exports must
// carry a key. Routers with per-route middleware (chi's r.With, gorilla/mux
// subrouters) take the same values.
func ExampleNew_perRoute() {
	store := memstore.New()
	defer store.Close()

	mux := http.NewServeMux()
	mux.Handle("POST /payments", idem.New(store, idem.WithTTL(24*time.Hour))(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })))
	mux.Handle("POST /exports", idem.New(store, idem.WithTTL(10*time.Minute), idem.WithRequiredKey())(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })))

	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("POST", "/exports", nil)) // no key
	fmt.Println(w.Code, w.Header().Get("Content-Type"))
	// Output:
	// 400 application/problem+json
}

// A handler reads its key from the context, for example to pass it on as
// the idempotency key of the payment provider it calls.
func ExampleKeyFromContext() {
	store := memstore.New()
	defer store.Close()

	h := idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := idem.KeyFromContext(r.Context())
		fmt.Println("provider call with Idempotency-Key:", "checkout-"+key)
	}))
	r := httptest.NewRequest("POST", "/checkout", nil)
	r.Header.Set("Idempotency-Key", `"c-42"`)
	h.ServeHTTP(httptest.NewRecorder(), r)
	// Output:
	// provider call with Idempotency-Key: checkout-c-42
}

// A handler whose side effect has happened marks its request committed, so
// that even a 5xx it answers afterwards is kept and replayed, never re-run.
func ExampleMarkCommitted() {
	store := memstore.New()
	defer store.Close()

	runs := 0
	h := idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		// ... the charge went through ...
		idem.MarkCommitted(r.Context())
		// ... but writing the receipt failed:
		http.Error(w, "receipt unavailable", http.StatusBadGateway)
	}))
	for i := 0; i < 2; i++ {
		r := httptest.NewRequest("POST", "/charges", nil)
		r.Header.Set("Idempotency-Key", "ch-1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%d replayed=%q\n", w.Code, w.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("runs:", runs)
	// Output:
	// 502 replayed=""
	// 502 replayed="true"
	// runs: 1
}

// Run a job at most once per key without HTTP: a queue consumer that may
// see the same message twice.
func ExampleDo() {
	store := memstore.New()
	defer store.Close()

	sendInvoice := func(ctx context.Context) ([]byte, error) {
		fmt.Println("sending invoice")
		return []byte("invoice inv_7 sent"), nil
	}
	for _, delivery := range []string{"first delivery", "redelivery"} {
		// The message ID is the key; its payload hash is the fingerprint.
		res, err := idem.Do(context.Background(), store, "msg-1234", "sha256:ab12", sendInvoice)
		fmt.Printf("%s: %s %v\n", delivery, res, err)
	}
	// Output:
	// sending invoice
	// first delivery: invoice inv_7 sent <nil>
	// redelivery: invoice inv_7 sent <nil>
}

// Fingerprint JSON bodies by meaning, so that a client that re-encodes its
// payload on retry (other key order, other spacing) still gets a replay.
func ExampleCanonicalJSON() {
	store := memstore.New()
	defer store.Close()

	h := idem.New(store, idem.WithFingerprint(idem.CanonicalJSON()))(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	for _, body := range []string{`{"amount":1,"currency":"eur"}`, `{ "currency": "eur", "amount": 1 }`} {
		r := httptest.NewRequest("POST", "/p", strings.NewReader(body))
		r.Header.Set("Idempotency-Key", "k")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%d replayed=%q\n", w.Code, w.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// 200 replayed=""
	// 200 replayed="true"
}

// Look at the key a client sent, as an operator tool would, and delete it
// so that the next request with it runs again.
func ExampleInspector() {
	store := memstore.New()
	defer store.Close()
	scope := func(r *http.Request) string { return r.Header.Get("X-Account-ID") }
	h := idem.New(store, idem.WithScope(scope))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	r := httptest.NewRequest("POST", "/refunds", strings.NewReader(`{"charge":"ch_1"}`))
	r.Header.Set("Idempotency-Key", "refund-ch_1")
	r.Header.Set("X-Account-ID", "acct_A")
	h.ServeHTTP(httptest.NewRecorder(), r)

	ins, ok := idem.Store(store).(idem.Inspector)
	if !ok {
		return
	}
	ctx := context.Background()
	key := idem.StoreKey("acct_A", "refund-ch_1")
	ks, _ := ins.Lookup(ctx, key)
	resp, _ := ks.Response()
	fmt.Println(ks.State, resp.Status, ks.ExpiresIn > 23*time.Hour)

	deleted, _ := ins.Delete(ctx, key)
	ks, _ = ins.Lookup(ctx, key)
	fmt.Println(deleted, ks == nil)
	// Output:
	// completed 202 true
	// true true
}
