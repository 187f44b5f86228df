package idem_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// Method names are case-sensitive upper-case tokens: "post" would never
// match a request, so it is refused rather than silently protect nothing.
// The slice given is copied.
func TestWithMethodsRefusesWhatNeverMatches(t *testing.T) {
	st, _ := newCountingStore(t)
	for _, m := range []string{"post", "Post", "P OST", ""} {
		if _, err := idem.NewMiddleware(st, idem.WithMethods(m)); err == nil {
			t.Errorf("WithMethods(%q) accepted", m)
		}
	}
	methods := []string{"POST"}
	mw := idem.New(st, idem.WithMethods(methods...))
	methods[0] = "GET"
	h := &payments{}
	do(mw(h), "POST", "/", "k", "")
	do(mw(h), "POST", "/", "k", "")
	if h.runs.Load() != 1 {
		t.Fatalf("runs %d: changing the caller's slice changed the protected methods", h.runs.Load())
	}
	if _, err := idem.NewMiddleware(st, idem.WithMethods("PUT", "DELETE", "M-SEARCH")); err != nil {
		t.Fatalf("upper-case method tokens refused: %v", err)
	}
}

// Each bound an option is checked against is inclusive: a lock TTL of
// exactly 10ms, a retention TTL equal to the lock TTL and a store timeout
// of exactly a third of the lock TTL are accepted; a step past any of them
// is refused.
func TestOptionsAcceptTheirBounds(t *testing.T) {
	st, _ := newCountingStore(t)
	for name, opts := range map[string][]idem.Option{
		"lock TTL 10ms":             {idem.WithLockTTL(10 * time.Millisecond)},
		"TTL equal to the lock TTL": {idem.WithTTL(time.Minute), idem.WithLockTTL(time.Minute)},
		"store timeout a third":     {idem.WithLockTTL(3 * time.Second), idem.WithStoreTimeout(time.Second)},
	} {
		if _, err := idem.NewMiddleware(st, opts...); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
	for name, opts := range map[string][]idem.Option{
		"lock TTL under 10ms":             {idem.WithLockTTL(10*time.Millisecond - 1)},
		"TTL under the lock TTL":          {idem.WithTTL(time.Minute - 1), idem.WithLockTTL(time.Minute)},
		"store timeout more than a third": {idem.WithLockTTL(3 * time.Second), idem.WithStoreTimeout(time.Second + 1)},
		"empty body limit":                {idem.WithMaxBodySize(0)},
		"method with a quote":             {idem.WithMethods(`"POST"`)},
		"header with a DEL":               {idem.WithHeader("Idempotency-Key\x7f")},
		"header with a separator":         {idem.WithHeader("Idempotency:Key")},
	} {
		if _, err := idem.NewMiddleware(st, opts...); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// An invalid setting is named once in the error, not again by the checks
// that compare it with other settings.
func TestInvalidOptionNamedOnce(t *testing.T) {
	st, _ := newCountingStore(t)
	for _, o := range []idem.Option{idem.WithTTL(0), idem.WithTTL(-time.Hour)} {
		_, err := idem.NewMiddleware(st, o)
		if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), "WithTTL") {
			t.Errorf("NewMiddleware: %q, want one error naming WithTTL", err)
		}
	}
}

// Problems name the header the middleware was configured with, in its
// canonical form, never the default one; a key refused for its length
// states the limit; the 422 detail says that the query counts.
func TestProblemsNameConfiguredHeader(t *testing.T) {
	st, _ := newCountingStore(t)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		w.WriteHeader(201)
	})
	mw := idem.New(st, idem.WithHeader("X-Delivery-Id"), idem.WithRequiredKey(), idem.WithMaxKeyLength(40))(h)
	send := func(path, key, body string) problemBody {
		r := newRequest("POST", path, body)
		if key != "" {
			r.Header.Set("X-Delivery-Id", key)
		}
		w := serve(mw, r)
		p := decodeProblem(t, w)
		if strings.Contains(p.Title+p.Detail, "Idempotency-Key") || !strings.Contains(p.Detail, "X-Delivery-Id") {
			t.Errorf("%d %s: %q / %q does not name X-Delivery-Id alone", p.Status, p.Type, p.Title, p.Detail)
		}
		return p
	}
	send("/", "", "")                           // 400 key-missing
	send("/", "bad key", "")                    // 400 key-invalid
	p := send("/", strings.Repeat("k", 41), "") // 400 key-invalid, too long
	if !strings.Contains(p.Detail, "40") {
		t.Errorf("too-long detail %q does not state the limit", p.Detail)
	}
	serve(mw, withKey(newRequest("POST", "/", "a"), "X-Delivery-Id", "d1"))
	p = send("/", "d1", "b") // 422
	if p.Status != 422 || !strings.Contains(p.Detail, "query") {
		t.Errorf("422 detail %q does not say the query counts", p.Detail)
	}
	done := make(chan struct{})
	go func() { serve(mw, withKey(newRequest("POST", "/slow", ""), "X-Delivery-Id", "d2")); close(done) }()
	waitFor(t, "the slow claim", func() bool { return st.claims.Load() >= 3 })
	send("/slow", "d2", "") // 409
	close(release)
	<-done
	st.set(func(s *countingStore) { s.claimErr = errors.New("down") })
	send("/", "d3", "") // 503
	st.set(func(s *countingStore) { s.claimErr, s.completeErr = nil, errors.New("down") })
	send("/", "d4", "") // 503 response-not-recorded

	// A header configured in lower case is named as it goes on the wire.
	lower := idem.New(st, idem.WithHeader("x-delivery-id"), idem.WithRequiredKey())(h)
	if p := decodeProblem(t, serve(lower, newRequest("POST", "/", ""))); !strings.Contains(p.Detail, "X-Delivery-Id") {
		t.Errorf("key-missing detail %q does not name X-Delivery-Id", p.Detail)
	}

	// The default header's length problem states its limit too.
	w := do(idem.New(st)(h), "POST", "/", strings.Repeat("k", 256), "")
	if p := wantProblem(t, w, 400, "key-invalid"); !strings.Contains(p.Detail, "255") {
		t.Errorf("too-long detail %q does not state the limit", p.Detail)
	}
}

func newRequest(method, target, body string) *http.Request {
	return httptest.NewRequest(method, target, strings.NewReader(body))
}

func withKey(r *http.Request, header, key string) *http.Request {
	r.Header.Set(header, key)
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// decodeProblem decodes the problem w holds, failing if it holds none.
func decodeProblem(t *testing.T, w *httptest.ResponseRecorder) problemBody {
	t.Helper()
	var p problemBody
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("status %d, Content-Type %q: not a problem", w.Code, ct)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Status != w.Code {
		t.Fatalf("problem %s: %v", w.Body, err)
	}
	return p
}
