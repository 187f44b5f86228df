package idem_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// Build the middleware once at start-up; an invalid option is an error
// there, never a failed request.
func ExampleNewMiddleware() {
	store := memstore.New()
	defer store.Close()

	if _, err := idem.NewMiddleware(store, idem.WithMethods("post")); err != nil {
		fmt.Println(err)
	}
	m, err := idem.NewMiddleware(store, idem.WithMethods("POST", "PUT"), idem.WithTTL(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("PUT /profiles/{id}", m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "saved %s", r.PathValue("id"))
	})))

	r := httptest.NewRequest("PUT", "/profiles/42", strings.NewReader(`{"name":"Ada"}`))
	r.Header.Set("Idempotency-Key", "k-1")
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Body)
	// Output:
	// idem: WithMethods: "post" is not an upper-case method name
	// 200 saved 42
}

// Count outcomes for metrics or alerts. The hook runs for every outcome,
// on the request's goroutine for the request's own outcome.
func ExampleWithHook() {
	store := memstore.New()
	defer store.Close()

	h := idem.New(store, idem.WithHook(func(ev idem.Event) {
		fmt.Printf("%s key=%s status=%d\n", ev.Outcome, ev.Key, ev.Status)
	}))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	for _, body := range []string{"a", "a", "b"} {
		r := httptest.NewRequest("POST", "/orders", strings.NewReader(body))
		r.Header.Set("Idempotency-Key", "order-7")
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	// Output:
	// executed key=order-7 status=201
	// replayed key=order-7 status=201
	// mismatch key=order-7 status=422
}

// Let a duplicate that arrives while the first request runs wait for its
// answer instead of getting 409.
func ExampleWithWait() {
	store := memstore.New()
	defer store.Close()

	started, finish := make(chan struct{}), make(chan struct{})
	h := idem.New(store, idem.WithWait(10*time.Second))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-finish // a slow payment provider
		fmt.Fprint(w, "paid")
	}))
	send := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/payments", nil)
		r.Header.Set("Idempotency-Key", "pay-1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send() }()
	<-started
	go func() { time.Sleep(50 * time.Millisecond); close(finish) }()
	dup := send() // waits for the first, then gets its answer
	fmt.Println((<-first).Body, dup.Body, dup.Header().Get("Idempotent-Replayed"))
	// Output:
	// paid paid true
}

// During a store outage, run handlers unprotected rather than answer 503:
// availability over at-most-once. Each such run is reported.
func ExampleWithFailOpen() {
	h := idem.New(downStore{}, idem.WithFailOpen(), idem.WithHook(func(ev idem.Event) {
		fmt.Println("hook:", ev.Outcome)
	}))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ran without protection")
	}))
	r := httptest.NewRequest("POST", "/orders", nil)
	r.Header.Set("Idempotency-Key", "o-1")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Body)
	// Output:
	// hook: store_error
	// 200 ran without protection
}

// downStore is a store that cannot be reached.
type downStore struct{ idem.Store }

func (downStore) Claim(context.Context, string, string, string, time.Duration) (*idem.Record, error) {
	return nil, errors.New("dial tcp 10.0.0.7:6379: connection refused")
}

func (downStore) Release(context.Context, string, string) error { return idem.ErrLockLost }

// Cover a header that changes what a request means, here an API version:
// the same key and body under another version is a different request (422).
func ExampleFingerprintHeaders() {
	store := memstore.New()
	defer store.Close()

	h := idem.New(store, idem.WithFingerprint(idem.FingerprintHeaders("Api-Version")))(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	for _, version := range []string{"2024-01-01", "2024-01-01", "2025-06-30"} {
		r := httptest.NewRequest("POST", "/charges", strings.NewReader(`{"amount":1}`))
		r.Header.Set("Idempotency-Key", "c-1")
		r.Header.Set("Api-Version", version)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%s %d replayed=%q\n", version, w.Code, w.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// 2024-01-01 200 replayed=""
	// 2024-01-01 200 replayed="true"
	// 2025-06-30 422 replayed=""
}

// Build one Runner for a queue consumer: the message ID is the key, the
// payload's digest the fingerprint. A redelivered message gets the first
// result without running the work again.
func ExampleNewRunner() {
	store := memstore.New()
	defer store.Close()

	runner, err := idem.NewRunner(store, idem.WithTTL(72*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := idem.NewRunner(store, idem.WithScope(func(*http.Request) string { return "" })); err != nil {
		fmt.Println(err)
	}

	payload := []byte(`{"invoice":"inv_7","to":"ada@example.com"}`)
	for _, delivery := range []string{"first delivery", "redelivery"} {
		res, err := runner.Do(context.Background(), "msg-1234", idem.FingerprintBytes(payload),
			func(ctx context.Context) ([]byte, error) {
				fmt.Println("sending invoice")
				return []byte("inv_7 sent"), nil
			})
		fmt.Printf("%s: %s %v\n", delivery, res, err)
	}
	// Output:
	// idem: WithScope concerns HTTP requests only; a Runner (and Do) does not use it
	// sending invoice
	// first delivery: inv_7 sent <nil>
	// redelivery: inv_7 sent <nil>
}

// A message whose work is still running elsewhere, or whose ID was reused
// for another payload, is not run: the errors say which.
func ExampleRunner_Do() {
	store := memstore.New()
	defer store.Close()
	runner, err := idem.NewRunner(store)
	if err != nil {
		log.Fatal(err)
	}

	ship := func(ctx context.Context) ([]byte, error) { return []byte("shipped"), nil }
	runner.Do(context.Background(), "order-9", idem.FingerprintBytes([]byte("2 books")), ship)
	_, err = runner.Do(context.Background(), "order-9", idem.FingerprintBytes([]byte("3 books")), ship)
	fmt.Println(errors.Is(err, idem.ErrFingerprintMismatch))
	_, err = runner.Do(context.Background(), "", idem.FingerprintBytes(nil), ship)
	fmt.Println(errors.Is(err, idem.ErrInvalidKey))
	// Output:
	// true
	// true
}

// A worker loop: every message is handled at most once per id among all
// workers that share the store, even when the queue delivers it twice. A
// message whose id another worker is running goes back to the queue.
func ExampleRunner_Do_workerLoop() {
	store := memstore.New()
	defer store.Close()
	runner, err := idem.NewRunner(store, idem.WithTTL(7*24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}

	type message struct{ id, body string }
	queue := []message{{"m-1", "ship 2 books"}, {"m-2", "ship 1 pen"}, {"m-1", "ship 2 books"}} // m-1 delivered twice
	for _, m := range queue {
		result, err := runner.Do(context.Background(), m.id, idem.FingerprintBytes([]byte(m.body)),
			func(ctx context.Context) ([]byte, error) {
				fmt.Println("handling", m.id)
				return []byte("done " + m.id), nil
			})
		var inProgress *idem.InProgressError
		switch {
		case errors.As(err, &inProgress):
			// Another worker runs it: requeue it after inProgress.RetryAfter.
		case err != nil:
			log.Printf("message %s: %v", m.id, err) // retried by the queue
		default:
			fmt.Println("ack", m.id, string(result))
		}
	}
	// Output:
	// handling m-1
	// ack m-1 done m-1
	// handling m-2
	// ack m-2 done m-2
	// ack m-1 done m-1
}
