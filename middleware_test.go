package idem_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// POST and PATCH are protected by default; other methods pass
// straight through, untouched, with no store call.
func TestProtectsPostAndPatchByDefault(t *testing.T) {
	for _, method := range []string{"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} {
		st, _ := newCountingStore(t)
		h := &payments{}
		mw := idem.New(st)(h)
		for i := 0; i < 2; i++ {
			do(mw, method, "/payments", "k1", "{}")
		}
		if h.runs.Load() != 2 || st.calls() != 0 {
			t.Errorf("%s: handler ran %d times with %d store calls, want 2 and 0", method, h.runs.Load(), st.calls())
		}
	}
	for _, method := range []string{"POST", "PATCH"} {
		st, _ := newCountingStore(t)
		h := &payments{}
		mw := idem.New(st)(h)
		for i := 0; i < 2; i++ {
			do(mw, method, "/payments", "k1", "{}")
		}
		if h.runs.Load() != 1 {
			t.Errorf("%s: handler ran %d times for one key, want 1", method, h.runs.Load())
		}
	}
}

// The set of methods is configurable.
func TestProtectsConfiguredMethods(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st, idem.WithMethods("PUT"))(h)
	do(mw, "PUT", "/x", "k", "a")
	do(mw, "PUT", "/x", "k", "a")
	do(mw, "POST", "/x", "k", "a")
	if got := h.runs.Load(); got != 2 {
		t.Fatalf("handler ran %d times, want 2 (PUT once, POST unprotected once)", got)
	}
}

// A passed-through request reaches the handler untouched.
func TestUnprotectedRequestPassesThroughUntouched(t *testing.T) {
	st, _ := newCountingStore(t)
	var gotBody io.ReadCloser
	var gotW http.ResponseWriter
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotBody, gotW = r.Body, w })
	mw := idem.New(st)(inner)
	r := httptest.NewRequest("GET", "/", strings.NewReader("x"))
	r.Header.Set("Idempotency-Key", "k")
	w := httptest.NewRecorder()
	body := r.Body
	mw.ServeHTTP(w, r)
	if gotBody != body || gotW != w {
		t.Fatal("GET request or writer was replaced on its way to the handler")
	}
}

// Each middleware carries its own settings over one store.
func TestEachMiddlewareKeepsItsOwnSettings(t *testing.T) {
	clock := newFakeClock()
	st, _ := newCountingStore(t, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	h := &payments{}
	short := idem.New(st, idem.WithTTL(time.Minute))(h)
	long := idem.New(st, idem.WithTTL(time.Hour), idem.WithLockTTL(2*time.Minute))(h)
	do(short, "POST", "/short", "a", "")
	do(long, "POST", "/long", "b", "")
	clock.Advance(2 * time.Minute)
	do(short, "POST", "/short", "a", "")
	do(long, "POST", "/long", "b", "")
	if got := h.runs.Load(); got != 3 {
		t.Fatalf("runs = %d, want 3: the 1-minute record expired, the 1-hour one did not", got)
	}
	// The lock TTL is per route too: it shows in Retry-After.
	block := make(chan struct{})
	started := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { close(started); <-block })
	done := make(chan struct{})
	go func() {
		defer close(done)
		do(idem.New(st, idem.WithLockTTL(2*time.Minute))(slow), "POST", "/slow", "c", "")
	}()
	<-started
	w := do(idem.New(st)(slow), "POST", "/slow", "c", "")
	close(block)
	<-done
	wantProblem(t, w, 409, "key-in-use")
	if ra := w.Header().Get("Retry-After"); ra != "120" {
		t.Fatalf("Retry-After = %q, want 120 (the 2-minute lock of the first route)", ra)
	}
}

// The header name is configurable.
func TestKeyHeaderNameIsConfigurable(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st, idem.WithHeader("x-request-key"))(h)
	for i := 0; i < 2; i++ {
		do(mw, "POST", "/", "", "", "X-Request-Key", "abc")
	}
	do(mw, "POST", "/", "abc", "") // Idempotency-Key is not the header here
	if got := h.runs.Load(); got != 2 {
		t.Fatalf("runs = %d, want 2", got)
	}
}

// The bare form and the sf-string form name the same key.
func TestBareAndQuotedKeysAreOneKey(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st)(h)
	first := do(mw, "POST", "/", "abc-123", "x")
	second := do(mw, "POST", "/", `"abc-123"`, "x")
	third := do(mw, "POST", "/", `"a\"b\\c"`, "x")
	fourth := do(mw, "POST", "/", `a"b\c`, "x")
	if h.runs.Load() != 2 {
		t.Fatalf("runs = %d, want 2", h.runs.Load())
	}
	if second.Header().Get("Idempotent-Replayed") != "true" || second.Body.String() != first.Body.String() {
		t.Fatalf("quoted key did not replay the bare key's response: %d %s", second.Code, second.Body)
	}
	if fourth.Header().Get("Idempotent-Replayed") != "true" || fourth.Body.String() != third.Body.String() {
		t.Fatalf("escaped sf-string did not name the same key as its bare form: %d %s", fourth.Code, fourth.Body)
	}
}

// A missing key passes through by default, 400 when required.
func TestMissingKeyPassesThroughUnlessRequired(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	do(idem.New(st)(h), "POST", "/", "", "x")
	do(idem.New(st)(h), "POST", "/", "", "x")
	if h.runs.Load() != 2 || st.calls() != 0 {
		t.Fatalf("without a key: runs %d, store calls %d; want 2 and 0", h.runs.Load(), st.calls())
	}
	var ev events
	w := do(idem.New(st, idem.WithRequiredKey(), idem.WithHook(ev.hook))(h), "POST", "/", "", "x")
	wantProblem(t, w, 400, "key-missing")
	if h.runs.Load() != 2 || st.calls() != 0 {
		t.Fatal("required key missing: handler ran or store was called")
	}
	if ev.last().Outcome != idem.OutcomeRejected {
		t.Fatalf("hook saw %v, want rejected", ev.last().Outcome)
	}
}

// Malformed keys are answered 400 with no handler run and no
// store call; two lines with the same value name one key.
func TestMalformedKeyAnswered400WithoutStoreCall(t *testing.T) {
	long := strings.Repeat("k", 256)
	cases := []struct {
		name   string
		values []string
	}{
		{"empty", []string{""}},
		{"blank", []string{"   "}},
		{"empty sf-string", []string{`""`}},
		{"too long", []string{long}},
		{"too long quoted", []string{`"` + long + `"`}},
		{"space inside", []string{"a b"}},
		{"space inside quoted", []string{`"a b"`}},
		{"control character", []string{"a\x01b"}},
		{"non-ASCII", []string{"clé"}},
		{"unterminated sf-string", []string{`"abc`}},
		{"data after sf-string", []string{`"abc"x`}},
		{"sf-string parameters", []string{`"abc";v=1`}},
		{"bad escape", []string{`"a\x"`}},
		{"merged list bare", []string{"a,b"}},
		{"merged list quoted", []string{`"a", "b"`}},
		{"two different lines", []string{"a", "b"}},
		{"one good one bad line", []string{"a", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := newCountingStore(t)
			h := &payments{}
			mw := idem.New(st)(h)
			r := httptest.NewRequest("POST", "/", strings.NewReader("x"))
			r.Header["Idempotency-Key"] = tc.values
			w := httptest.NewRecorder()
			mw.ServeHTTP(w, r)
			wantProblem(t, w, 400, "key-invalid")
			if h.runs.Load() != 0 || st.calls() != 0 {
				t.Fatalf("handler ran %d times, %d store calls; want none", h.runs.Load(), st.calls())
			}
		})
	}
	t.Run("limits and equal lines", func(t *testing.T) {
		st, _ := newCountingStore(t)
		h := &payments{}
		mw := idem.New(st)(h)
		ok := []string{strings.Repeat("k", 255), `"` + strings.Repeat("q", 255) + `"`, "~!#$%&'()*+-./:;<=>?@[]^_`{|}"}
		for _, k := range ok {
			if w := do(mw, "POST", "/", k, "x"); w.Code != 201 {
				t.Fatalf("key %q: status %d, want 201: %s", k, w.Code, w.Body)
			}
		}
		r := httptest.NewRequest("POST", "/", strings.NewReader("x"))
		r.Header["Idempotency-Key"] = []string{"same", `"same"`}
		w := httptest.NewRecorder()
		mw.ServeHTTP(w, r)
		if w.Code != 201 {
			t.Fatalf("two lines with the same key: %d %s", w.Code, w.Body)
		}
		if w := do(mw, "POST", "/", "same", "x"); w.Header().Get("Idempotent-Replayed") != "true" {
			t.Fatal("two equal lines did not name the key 'same'")
		}
		short := idem.New(st, idem.WithMaxKeyLength(4))(h)
		if w := do(short, "POST", "/", `"abcd"`, "x"); w.Code != 201 {
			t.Fatalf("4-character quoted key with limit 4: %d", w.Code)
		}
		wantProblem(t, do(short, "POST", "/", "abcde", "x"), 400, "key-invalid")
	})
}

// The scope is part of the stored key.
func TestScopeIsPartOfStoredKey(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st, idem.WithScope(func(r *http.Request) string { return r.Header.Get("Account") }))(h)
	a1 := do(mw, "POST", "/", "k", "x", "Account", "acct_a")
	b1 := do(mw, "POST", "/", "k", "x", "Account", "acct_b")
	a2 := do(mw, "POST", "/", "k", "x", "Account", "acct_a")
	if h.runs.Load() != 2 || b1.Body.String() == a1.Body.String() {
		t.Fatalf("two scopes with one key: runs %d, want 2 separate executions", h.runs.Load())
	}
	if a2.Body.String() != a1.Body.String() || a2.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("same scope and key did not replay")
	}
	// A separator inside scope or key cannot make two pairs meet.
	do(mw, "POST", "/", "b|c", "x", "Account", "a")
	do(mw, "POST", "/", "c", "x", "Account", "a|b")
	do(mw, "POST", "/", "25|c", "x", "Account", "a%")
	do(mw, "POST", "/", "bc", "x", "Account", "a")
	do(mw, "POST", "/", "c", "x", "Account", "ab")
	if h.runs.Load() != 7 {
		t.Fatalf("runs = %d, want 7: (a, b|c), (a|b, c), (a%%, 25|c), (a, bc) and (ab, c) are different keys", h.runs.Load())
	}
}

// The fingerprint covers method, path, query and body; a
// different one is a 422, without Retry-After.
func TestMismatchOnMethodPathQueryOrBodyIs422(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st, idem.WithMethods("POST", "PATCH"))(h)
	if w := do(mw, "POST", "/payments?x=1", "k", `{"amount":1}`); w.Code != 201 {
		t.Fatal(w.Code)
	}
	for _, tc := range []struct{ method, target, body string }{
		{"POST", "/payments?x=1", `{"amount":2}`},
		{"POST", "/payments?x=2", `{"amount":1}`},
		{"POST", "/refunds?x=1", `{"amount":1}`},
		{"PATCH", "/payments?x=1", `{"amount":1}`},
		{"POST", "/payments?x=1", `{"amount":1} `},
	} {
		w := do(mw, tc.method, tc.target, "k", tc.body)
		wantProblem(t, w, 422, "key-reused")
		// Retrying with this key never helps: nothing says when to retry.
		if ra, ok := w.Header()["Retry-After"]; ok {
			t.Fatalf("a 422 carries Retry-After %q", ra)
		}
	}
	if h.runs.Load() != 1 {
		t.Fatalf("runs = %d, want 1", h.runs.Load())
	}
}

// Chosen headers count; the function is replaceable, e.g. by
// canonical JSON.
func TestFingerprintOptionsChooseWhatCounts(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	withHdr := idem.New(st, idem.WithFingerprint(idem.FingerprintHeaders("api-version")))(h)
	do(withHdr, "POST", "/", "h", "x", "Api-Version", "1")
	wantProblem(t, do(withHdr, "POST", "/", "h", "x", "Api-Version", "2"), 422, "key-reused")
	wantProblem(t, do(withHdr, "POST", "/", "h", "x"), 422, "key-reused")

	canon := idem.New(st, idem.WithFingerprint(idem.CanonicalJSON()))(h)
	do(canon, "POST", "/", "c", `{"amount": 1, "currency": "eur", "meta": {"b": [1, 2], "a": null}}`)
	w := do(canon, "POST", "/", "c", `{"currency":"eur","meta":{"a":null,"b":[1,2]},"amount":1}`)
	if w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("re-encoded JSON was not a retry: %d %s", w.Code, w.Body)
	}
	wantProblem(t, do(canon, "POST", "/", "c", `{"amount":1,"currency":"eur","meta":{"a":null,"b":[2,1]}}`), 422, "key-reused")

	custom := idem.New(st, idem.WithFingerprint(func(r *http.Request, body []byte) string { return "same" }))(h)
	do(custom, "POST", "/a", "u", "1")
	if w := do(custom, "POST", "/b", "u", "2"); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("custom fingerprint function was not used")
	}
}

// The body is bounded (413, handler not run) and the handler
// reads the same bytes.
func TestBodyOverLimitIs413AndHandlerReadsSameBytes(t *testing.T) {
	st, _ := newCountingStore(t)
	var got []byte
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		w.WriteHeader(201)
	})
	mw := idem.New(st, idem.WithMaxBodySize(1000))(h)
	body := bytes.Repeat([]byte{0, 1, 2, 0xff}, 250)
	r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	r.Header.Set("Idempotency-Key", "fits")
	w := httptest.NewRecorder()
	mw.ServeHTTP(w, r)
	if w.Code != 201 || !bytes.Equal(got, body) {
		t.Fatalf("status %d; handler read %d bytes, want the 1000 sent", w.Code, len(got))
	}
	got = nil
	for _, chunked := range []bool{false, true} {
		r := httptest.NewRequest("POST", "/", bytes.NewReader(append(body, 'x')))
		if chunked {
			r.ContentLength = -1
			r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), strings.NewReader("x")))
		}
		r.Header.Set("Idempotency-Key", "big")
		w := httptest.NewRecorder()
		mw.ServeHTTP(w, r)
		wantProblem(t, w, 413, "body-too-large")
		if got != nil {
			t.Fatal("handler ran for a body over the limit")
		}
	}
	if st.calls() != 1+1 {
		t.Fatalf("store calls = %d, want 2 (one request claimed and completed; 413s make none)", st.calls())
	}
	// The default limit is 1 MiB.
	def := idem.New(st)(h)
	wantProblem(t, do(def, "POST", "/", "def", strings.Repeat("a", 1<<20+1)), 413, "body-too-large")
	if w := do(def, "POST", "/", "def2", strings.Repeat("a", 1<<20)); w.Code != 201 {
		t.Fatalf("1 MiB body: %d", w.Code)
	}
}

// A different fingerprint is a 422 whether the key is in flight
// or completed.
func TestMismatchIs422InFlightAndCompleted(t *testing.T) {
	st, _ := newCountingStore(t)
	release := make(chan struct{})
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		w.WriteHeader(201)
	})
	mw := idem.New(st)(h)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- do(mw, "POST", "/", "k", "first") }()
	<-started
	wantProblem(t, do(mw, "POST", "/", "k", "second"), 422, "key-reused")
	close(release)
	if w := <-done; w.Code != 201 {
		t.Fatalf("first request: %d", w.Code)
	}
	wantProblem(t, do(mw, "POST", "/", "k", "second"), 422, "key-reused")
}

// A duplicate of an in-flight request gets 409 with Retry-After
// (seconds left on the lease, rounded up, at least 1).
func TestDuplicateInFlightGets409WithRetryAfter(t *testing.T) {
	clock := newFakeClock()
	st, mem := newCountingStore(t, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	h := &payments{}
	mw := idem.New(st, idem.WithLockTTL(10*time.Second))(h)
	// An owner elsewhere holds the key with 10s on its lease.
	if rec, err := mem.Claim(context.Background(), idem.StoreKey("", "k"), "other", idem.Fingerprint(httptest.NewRequest("POST", "/", nil), nil), 10*time.Second); err != nil || rec != nil {
		t.Fatal(rec, err)
	}
	for _, tc := range []struct {
		advance time.Duration
		want    string
	}{{0, "10"}, {1500 * time.Millisecond, "9"}, {8200 * time.Millisecond, "1"}, {200 * time.Millisecond, "1"}} {
		clock.Advance(tc.advance)
		before := st.calls()
		w := do(mw, "POST", "/", "k", "")
		wantProblem(t, w, 409, "key-in-use")
		if ra := w.Header().Get("Retry-After"); ra != tc.want {
			t.Fatalf("Retry-After = %q, want %q", ra, tc.want)
		}
		if n := st.calls() - before; n != 1 {
			t.Fatalf("a conflict cost %d store calls, want 1", n)
		}
	}
	if h.runs.Load() != 0 {
		t.Fatal("handler ran while the key was in flight")
	}
}

// The optional wait mode waits for the first request and replays
// its response, bounded by a timeout.
func TestWaitModeReplaysFirstResponse(t *testing.T) {
	st, _ := newCountingStore(t)
	release := make(chan struct{})
	started := make(chan struct{})
	var runs int
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		close(started)
		<-release
		w.WriteHeader(201)
		io.WriteString(w, "paid")
	})
	mw := idem.New(st, idem.WithWait(5*time.Second))(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- do(mw, "POST", "/", "k", "x") }()
	<-started
	second := make(chan *httptest.ResponseRecorder)
	go func() { second <- do(mw, "POST", "/", "k", "x") }()
	// Let the duplicate poll at least once before the first one finishes.
	waitFor(t, "the duplicate to poll", func() bool { return st.claims.Load() >= 3 })
	close(release)
	w1, w2 := <-first, <-second
	if w1.Code != 201 || w2.Code != 201 || w2.Body.String() != "paid" || w2.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("first %d, waiting duplicate %d %q replayed=%q; want both 201 and a replay", w1.Code, w2.Code, w2.Body, w2.Header().Get("Idempotent-Replayed"))
	}
	if runs != 1 {
		t.Fatalf("runs = %d", runs)
	}
	// A wait that runs out ends in the 409.
	block := make(chan struct{})
	started2 := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { close(started2); <-block })
	short := idem.New(st, idem.WithWait(50*time.Millisecond))
	go func() { do(short(slow), "POST", "/", "k2", "x") }()
	<-started2
	wantProblem(t, do(short(slow), "POST", "/", "k2", "x"), 409, "key-in-use")
	close(block)
}

// A completed key replays status, headers and body byte for byte,
// with Idempotent-Replayed: true, without running the handler, in one store
// call.
func TestReplayIsByteForByte(t *testing.T) {
	st, _ := newCountingStore(t)
	body := make([]byte, 300)
	for i := range body {
		body[i] = byte(i)
	}
	runs := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
		w.Header().Set("X-Run", strconv.Itoa(runs))
		w.WriteHeader(202)
		w.Write(body[:100])
		w.Write(body[100:])
	})
	mw := idem.New(st)(h)
	first := do(mw, "POST", "/", "k", "")
	before := st.calls()
	second := do(mw, "POST", "/", "k", "")
	if runs != 1 {
		t.Fatalf("handler ran %d times", runs)
	}
	if n := st.calls() - before; n != 1 {
		t.Fatalf("replay cost %d store calls, want 1", n)
	}
	if second.Code != 202 || !bytes.Equal(second.Body.Bytes(), body) || !bytes.Equal(first.Body.Bytes(), body) {
		t.Fatalf("replay %d with %d bytes; want 202 and the 300 bytes", second.Code, second.Body.Len())
	}
	if second.Header().Get("Idempotent-Replayed") != "true" || first.Header().Get("Idempotent-Replayed") != "" {
		t.Fatal("Idempotent-Replayed must be on the replay only")
	}
	second.Header().Del("Idempotent-Replayed")
	for k, v := range first.Header() {
		if got := second.Header()[k]; strings.Join(got, "\n") != strings.Join(v, "\n") {
			t.Errorf("header %s: replay %q, first %q", k, got, v)
		}
	}
	if len(second.Header()) != len(first.Header()) {
		t.Errorf("replay headers %v, first %v", second.Header(), first.Header())
	}
}

// The response is recorded (COMPLETED, retention TTL) before it is
// sent.
func TestResponseRecordedBeforeSent(t *testing.T) {
	st, mem := newCountingStore(t)
	mw := idem.New(st)(&payments{})
	w := &checkingWriter{ResponseRecorder: httptest.NewRecorder(), check: func() {
		rec, err := mem.Claim(context.Background(), idem.StoreKey("", "k"), "probe", "x", time.Second)
		if err != nil || rec == nil || rec.State != idem.StateCompleted {
			panic("response sent before the record was completed")
		}
	}}
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Idempotency-Key", "k")
	mw.ServeHTTP(w, r)
	if w.Code != 201 || !w.checked {
		t.Fatalf("status %d, checked %v", w.Code, w.checked)
	}
}

type checkingWriter struct {
	*httptest.ResponseRecorder
	check   func()
	checked bool
}

func (w *checkingWriter) WriteHeader(code int) {
	w.check()
	w.checked = true
	w.ResponseRecorder.WriteHeader(code)
}

// The retention TTL is honoured: after it, the key is new again.
func TestKeyIsNewAgainAfterRetentionTTL(t *testing.T) {
	clock := newFakeClock()
	st, _ := newCountingStore(t, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	h := &payments{}
	mw := idem.New(st, idem.WithTTL(time.Hour))(h)
	do(mw, "POST", "/", "k", "")
	clock.Advance(59 * time.Minute)
	if w := do(mw, "POST", "/", "k", ""); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("record gone before its TTL")
	}
	clock.Advance(2 * time.Minute)
	do(mw, "POST", "/", "k", "")
	if h.runs.Load() != 2 {
		t.Fatalf("runs = %d, want 2: the record expired after 1h", h.runs.Load())
	}
}

// When the response cannot be
// recorded, the client gets a 503 problem, never the unrecorded response.
func TestUnrecordedResponseAnswered503(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.completeErr = errors.New("connection reset by peer") })
	var ev events
	h := &payments{}
	w := do(idem.New(st, idem.WithHook(ev.hook), idem.WithLockTTL(20*time.Second))(h), "POST", "/", "k", "")
	p := wantProblem(t, w, 503, "response-not-recorded")
	if w.Header().Get("Retry-After") != "20" {
		t.Fatalf("Retry-After = %q, want the lock TTL, 20", w.Header().Get("Retry-After"))
	}
	if strings.Contains(w.Body.String(), "connection reset") || strings.Contains(p.Detail, "reset") {
		t.Fatal("internal error text sent to the client")
	}
	if got := st.completes.Load(); got != 3 {
		t.Fatalf("Complete tried %d times, want 3", got)
	}
	if e := ev.last(); e.Outcome != idem.OutcomeStoreError || e.Err == nil {
		t.Fatalf("hook saw %+v", e)
	}
	// The key stays locked until its lease ends: a retry gets 409, not a
	// second run.
	st.set(func(s *countingStore) { s.completeErr = nil })
	wantProblem(t, do(idem.New(st)(h), "POST", "/", "k", ""), 409, "key-in-use")
	if h.runs.Load() != 1 {
		t.Fatal("handler ran twice")
	}
}

// The lease is renewed while the handler runs, so a handler
// slower than the lock TTL keeps its key.
func TestLeaseRenewedWhileHandlerRuns(t *testing.T) {
	st, _ := newCountingStore(t)
	release := make(chan struct{})
	started := make(chan struct{})
	var runs int
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		close(started)
		<-release
		w.WriteHeader(201)
	})
	mw := idem.New(st, idem.WithLockTTL(600*time.Millisecond))(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- do(mw, "POST", "/", "k", "") }()
	<-started
	// Wait for two lock TTLs' worth of renewals (one every 200ms).
	waitFor(t, "6 renewals", func() bool { return st.renews.Load() >= 6 })
	wantProblem(t, do(mw, "POST", "/", "k", ""), 409, "key-in-use")
	close(release)
	if w := <-first; w.Code != 201 {
		t.Fatalf("slow owner got %d", w.Code)
	}
	if runs != 1 {
		t.Fatalf("runs = %d", runs)
	}
}

// A handler shorter than the renewal interval costs no
// renewal: a new key costs exactly 2 store calls.
func TestShortHandlerCostsNoRenewal(t *testing.T) {
	st, _ := newCountingStore(t)
	mw := idem.New(st)(&payments{})
	do(mw, "POST", "/", "k", "")
	if st.claims.Load() != 1 || st.completes.Load() != 1 || st.calls() != 2 {
		t.Fatalf("claims %d completes %d total %d; want 1, 1, 2", st.claims.Load(), st.completes.Load(), st.calls())
	}
}

// If the owner dies, its lease expires after the lock TTL and a
// retry runs the handler again.
func TestDeadOwnersLeaseExpires(t *testing.T) {
	clock := newFakeClock()
	st, mem := newCountingStore(t, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	h := &payments{}
	mw := idem.New(st, idem.WithLockTTL(30*time.Second))(h)
	fp := idem.Fingerprint(httptest.NewRequest("POST", "/", nil), nil)
	if _, err := mem.Claim(context.Background(), idem.StoreKey("", "k"), "dead-owner", fp, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	clock.Advance(29 * time.Second)
	wantProblem(t, do(mw, "POST", "/", "k", ""), 409, "key-in-use")
	clock.Advance(2 * time.Second)
	if w := do(mw, "POST", "/", "k", ""); w.Code != 201 || h.runs.Load() != 1 {
		t.Fatalf("after the lease: %d, runs %d; want 201 and 1", w.Code, h.runs.Load())
	}
	if err := mem.Complete(context.Background(), idem.StoreKey("", "k"), "dead-owner", []byte("stale"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("dead owner's Complete: %v, want ErrLockLost", err)
	}
}

// An owner whose lease was lost does not record its response;
// the client gets a 503 and the hook reports lock lost.
func TestOwnerThatLostLeaseDoesNotRecord(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.renewErr = idem.ErrLockLost })
	var ev events
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.WriteHeader(201)
	})
	mw := idem.New(st, idem.WithLockTTL(300*time.Millisecond), idem.WithHook(ev.hook))(h)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- do(mw, "POST", "/", "k", "") }()
	waitFor(t, "a renewal", func() bool { return st.renews.Load() >= 1 })
	close(release)
	w := <-done
	wantProblem(t, w, 503, "response-not-recorded")
	if st.completes.Load() != 0 {
		t.Fatal("an owner that lost its lock called Complete")
	}
	if st.renews.Load() != 1 {
		t.Fatalf("renewals went on after the lock was lost: %d", st.renews.Load())
	}
	if e := ev.last(); e.Outcome != idem.OutcomeLockLost {
		t.Fatalf("hook saw %v, want lock_lost", e.Outcome)
	}
}

// By default 2xx-4xx are stored, 5xx are not and the key is
// released.
func TestDefaultPolicyKeeps2xxTo4xxReleases5xx(t *testing.T) {
	for _, tc := range []struct {
		status int
		stored bool
	}{{200, true}, {201, true}, {302, true}, {400, true}, {404, true}, {409, true}, {500, false}, {502, false}, {503, false}} {
		st, _ := newCountingStore(t)
		h := &payments{status: tc.status}
		mw := idem.New(st)(h)
		do(mw, "POST", "/", "k", "")
		w := do(mw, "POST", "/", "k", "")
		if w.Code != tc.status {
			t.Fatalf("%d: second answer %d", tc.status, w.Code)
		}
		runs := h.runs.Load()
		if tc.stored && (runs != 1 || w.Header().Get("Idempotent-Replayed") != "true") {
			t.Errorf("%d: runs %d, want 1 and a replay", tc.status, runs)
		}
		if !tc.stored && (runs != 2 || st.releases.Load() != 2) {
			t.Errorf("%d: runs %d releases %d, want 2 and 2", tc.status, runs, st.releases.Load())
		}
	}
}

// The policy is configurable, and a handler can mark its request
// committed so that even its 5xx is stored.
func TestResponsePolicyAndMarkCommitted(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{status: 404}
	mw := idem.New(st, idem.WithResponsePolicy(func(s int) bool { return s < 400 }))(h)
	do(mw, "POST", "/", "k", "")
	do(mw, "POST", "/", "k", "")
	if h.runs.Load() != 2 {
		t.Fatalf("404 under a 2xx/3xx-only policy: runs %d, want 2", h.runs.Load())
	}
	var runs int
	committed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		if !idem.MarkCommitted(r.Context()) {
			t.Error("MarkCommitted returned false under the middleware")
		}
		w.WriteHeader(502)
		io.WriteString(w, "charged, but the receipt service failed")
	})
	mw2 := idem.New(st)(committed)
	do(mw2, "POST", "/c", "c", "")
	w := do(mw2, "POST", "/c", "c", "")
	if runs != 1 || w.Code != 502 || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("committed 502: runs %d, replay %d %q", runs, w.Code, w.Header().Get("Idempotent-Replayed"))
	}
	if idem.MarkCommitted(context.Background()) {
		t.Fatal("MarkCommitted outside the middleware returned true")
	}
}

// A panic releases the key and goes on.
func TestPanicReleasesKey(t *testing.T) {
	st, _ := newCountingStore(t)
	panics := true
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if panics {
			panic("boom")
		}
		w.WriteHeader(201)
	})
	mw := idem.New(st)(h)
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want the handler's panic", v)
			}
		}()
		do(mw, "POST", "/", "k", "")
		t.Fatal("panic did not go on")
	}()
	if st.releases.Load() != 1 {
		t.Fatalf("releases = %d, want 1", st.releases.Load())
	}
	panics = false
	if w := do(mw, "POST", "/", "k", ""); w.Code != 201 {
		t.Fatalf("retry after a panic: %d, want 201", w.Code)
	}
}

// A client that disconnects does not stop the record from being
// written.
func TestClientDisconnectDoesNotStopRecording(t *testing.T) {
	st, _ := newCountingStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := &payments{}
	mw := idem.New(st)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		cancel() // the client hangs up while the handler finishes
	}))
	r := httptest.NewRequest("POST", "/", nil).WithContext(ctx)
	r.Header.Set("Idempotency-Key", "k")
	mw.ServeHTTP(httptest.NewRecorder(), r)
	if w := do(mw, "POST", "/", "k", ""); w.Header().Get("Idempotent-Replayed") != "true" || h.runs.Load() != 1 {
		t.Fatalf("retry after a disconnect: %d replayed=%q runs %d", w.Code, w.Header().Get("Idempotent-Replayed"), h.runs.Load())
	}
}

// Store down or timing out → 503 with Retry-After, handler not
// run; fail-open runs it.
func TestStoreFailureAnswered503HandlerNotRun(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.claimErr = errors.New("dial tcp 10.0.0.7:6379: connection refused") })
	h := &payments{}
	var ev events
	w := do(idem.New(st, idem.WithHook(ev.hook))(h), "POST", "/", "k", "")
	wantProblem(t, w, 503, "store-unavailable")
	if w.Header().Get("Retry-After") == "" || h.runs.Load() != 0 {
		t.Fatalf("Retry-After %q, runs %d", w.Header().Get("Retry-After"), h.runs.Load())
	}
	if strings.Contains(w.Body.String(), "10.0.0.7") {
		t.Fatal("internal error text sent to the client")
	}
	if e := ev.last(); e.Outcome != idem.OutcomeStoreError || e.Err == nil {
		t.Fatalf("hook saw %+v", e)
	}

	st.set(func(s *countingStore) { s.claimErr, s.blockClaim = nil, true })
	start := time.Now()
	w = do(idem.New(st, idem.WithStoreTimeout(50*time.Millisecond))(h), "POST", "/", "k", "")
	wantProblem(t, w, 503, "store-unavailable")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a hanging store held the request %v", d)
	}

	if w := do(idem.New(st, idem.WithStoreTimeout(10*time.Millisecond), idem.WithFailOpen())(h), "POST", "/", "k", "x"); w.Code != 201 || h.runs.Load() != 1 {
		t.Fatalf("fail-open: %d, runs %d", w.Code, h.runs.Load())
	}
}

// A response over the limit is streamed, never run twice; a
// duplicate gets a 409 response-not-replayable problem.
func TestLargeResponseStreamedAndNeverRerun(t *testing.T) {
	st, _ := newCountingStore(t)
	big := bytes.Repeat([]byte("0123456789"), 300)
	runs := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(200)
		for i := 0; i < len(big); i += 100 {
			w.Write(big[i : i+100])
		}
	})
	mw := idem.New(st, idem.WithMaxResponseSize(1000))(h)
	first := do(mw, "POST", "/", "k", "")
	if first.Code != 200 || !bytes.Equal(first.Body.Bytes(), big) {
		t.Fatalf("first: %d with %d bytes, want 200 and all %d", first.Code, first.Body.Len(), len(big))
	}
	p := wantProblem(t, do(mw, "POST", "/", "k", ""), 409, "response-not-replayable")
	if p.OriginalStatus != 200 || runs != 1 {
		t.Fatalf("original_status %d, runs %d", p.OriginalStatus, runs)
	}
}

// A handler that flushes streams; it is never run twice.
func TestFlushedResponseStreamedAndNeverRerun(t *testing.T) {
	st, _ := newCountingStore(t)
	runs := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("Flush through ResponseController: %v", err)
		}
		io.WriteString(w, "data: 2\n\n")
	})
	srv := httptest.NewServer(idem.New(st)(h))
	defer srv.Close()
	post := func() (*http.Response, string) {
		req, _ := http.NewRequest("POST", srv.URL, nil)
		req.Header.Set("Idempotency-Key", "k")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := post()
	if resp.StatusCode != 200 || body != "data: 1\n\ndata: 2\n\n" {
		t.Fatalf("streamed: %d %q", resp.StatusCode, body)
	}
	resp, body = post()
	if resp.StatusCode != 409 || !strings.Contains(body, "response-not-replayable") || runs != 1 {
		t.Fatalf("duplicate of a streamed response: %d %s, runs %d", resp.StatusCode, body, runs)
	}
}

// The handler reads its key and scope from the context.
func TestHandlerReadsKeyAndScopeFromContext(t *testing.T) {
	st, _ := newCountingStore(t)
	var key, scope string
	var ok, scoped bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok = idem.KeyFromContext(r.Context())
		scope, scoped = idem.ScopeFromContext(r.Context())
	})
	mw := idem.New(st, idem.WithScope(func(*http.Request) string { return "acct_9" }))(h)
	do(mw, "POST", "/", `"ord-1"`, "")
	if key != "ord-1" || !ok || scope != "acct_9" || !scoped {
		t.Fatalf("KeyFromContext = %q %v, ScopeFromContext = %q %v", key, ok, scope, scoped)
	}
	if k, ok := idem.KeyFromContext(context.Background()); k != "" || ok {
		t.Fatal("KeyFromContext outside the middleware")
	}
}

// Every outcome reaches the hook.
func TestHookSeesEveryOutcome(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	h := &payments{}
	mw := idem.New(st, idem.WithHook(ev.hook))(h)
	do(mw, "POST", "/", "k", "a")       // executed
	do(mw, "POST", "/", "k", "a")       // replayed
	do(mw, "POST", "/", "k", "b")       // mismatch
	do(mw, "POST", "/", "bad key", "a") // rejected
	do(mw, "GET", "/", "k", "a")        // not protected: no event
	do(mw, "POST", "/", "", "a")        // no key: no event
	want := []idem.Outcome{idem.OutcomeExecuted, idem.OutcomeReplayed, idem.OutcomeMismatch, idem.OutcomeRejected}
	got := ev.outcomes()
	if len(got) != len(want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("outcomes %v, want %v", got, want)
		}
	}
	if e := ev.evs[0]; e.Key != "k" || e.Status != 201 || !e.Stored {
		t.Fatalf("executed event %+v", e)
	}
}

// Invalid options fail at construction, never per request.
func TestInvalidOptions(t *testing.T) {
	st, _ := newCountingStore(t)
	bad := [][]idem.Option{
		{idem.WithTTL(0)},
		{idem.WithLockTTL(time.Millisecond)},
		{idem.WithTTL(time.Second), idem.WithLockTTL(time.Minute)},
		{idem.WithMethods()},
		{idem.WithMethods("PO ST")},
		{idem.WithHeader("Idem Key")},
		{idem.WithMaxKeyLength(0)},
		{idem.WithMaxBodySize(-1)},
		{idem.WithMaxResponseSize(0)},
		{idem.WithScope(nil)},
		{idem.WithFingerprint(nil)},
		{idem.WithResponsePolicy(nil)},
		{idem.WithStoreTimeout(0)},
		{idem.WithWait(-time.Second)},
		{nil},
	}
	for i, opts := range bad {
		if _, err := idem.NewMiddleware(st, opts...); err == nil {
			t.Errorf("case %d: NewMiddleware accepted invalid options", i)
		}
	}
	if _, err := idem.NewMiddleware(nil); err == nil {
		t.Error("NewMiddleware accepted a nil store")
	}
	defer func() {
		if recover() == nil {
			t.Error("New did not panic on an invalid option")
		}
	}()
	idem.New(st, idem.WithTTL(-1))
}

// Outcomes are logged through log/slog when a logger is given,
// store errors at Error without reaching the client.
func TestOutcomesLoggedThroughSlog(t *testing.T) {
	st, _ := newCountingStore(t)
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mw := idem.New(st, idem.WithLogger(logger))(&payments{})
	do(mw, "POST", "/pay", "k1", "a")
	do(mw, "POST", "/pay", "k1", "a")
	do(mw, "POST", "/pay", "k1", "b")
	st.set(func(s *countingStore) { s.claimErr = errors.New("redis: connection pool timeout") })
	do(mw, "POST", "/pay", "k2", "a")
	out := buf.String()
	for _, want := range []string{
		"level=DEBUG msg=idempotency outcome=executed key=k1 status=201 stored=true method=POST path=/pay",
		"level=DEBUG msg=idempotency outcome=replayed key=k1 status=201",
		"level=INFO msg=idempotency outcome=mismatch key=k1 status=422",
		`level=ERROR msg=idempotency outcome=store_error key=k2 status=503 error="redis: connection pool timeout"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// retryingStore sends every Claim twice, as a store client does that lost
// the reply to the first attempt and retried, and answers with the second.
type retryingStore struct{ idem.Store }

func (s retryingStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	if _, err := s.Store.Claim(ctx, key, token, fp, lease); err != nil {
		return nil, err
	}
	return s.Store.Claim(ctx, key, token, fp, lease)
}

// A claim that a store client retried after losing its reply
// still owns the key: the request runs, instead of meeting its own record
// as a 409 until the lease ends.
func TestRetriedClaimOwnsKey(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(retryingStore{st})(h)
	if w := do(mw, "POST", "/", "k", ""); w.Code != 201 {
		t.Fatalf("retried claim: %d %s", w.Code, w.Body)
	}
	if w := do(mw, "POST", "/", "k", ""); w.Header().Get("Idempotent-Replayed") != "true" || h.runs.Load() != 1 {
		t.Fatalf("after a retried claim: %d, runs %d", w.Code, h.runs.Load())
	}
}

// lostReplyStore makes each Claim on the store and then reports an error,
// as when the reply to a claim that landed is lost or late.
type lostReplyStore struct{ *countingStore }

func (s lostReplyStore) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.countingStore.Claim(ctx, key, token, fp, lease)
	return nil, errors.New("read tcp: i/o timeout")
}

// A claim that failed but may have landed is released again, so
// that the client's retry after Retry-After is not refused with 409 by the
// first attempt's record until its lease ends.
func TestFailedClaimReleasedAgain(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	wantProblem(t, do(idem.New(lostReplyStore{st})(h), "POST", "/", "k", ""), 503, "store-unavailable")
	waitFor(t, "the release of the failed claim", func() bool { return st.releases.Load() >= 1 })
	if w := do(idem.New(st)(h), "POST", "/", "k", ""); w.Code != 201 || h.runs.Load() != 1 {
		t.Fatalf("retry after a failed claim: %d, runs %d; want 201 and 1", w.Code, h.runs.Load())
	}
}

// The body a handler got stays its own after the request: nothing reuses
// it for a later request.
func TestBodyNotReusedAfterRequest(t *testing.T) {
	st, _ := newCountingStore(t)
	var bodies []io.Reader
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { bodies = append(bodies, r.Body) })
	mw := idem.New(st)(h)
	do(mw, "POST", "/", "a", "card=4242-AAAA")
	do(mw, "POST", "/", "b", "card=5500-BBBB")
	if got, _ := io.ReadAll(bodies[0]); string(got) != "card=4242-AAAA" {
		t.Fatalf("first request's body read after it ended: %q", got)
	}
}

// In fail-open mode the handler still gets the body and its
// key, and the caller's request is left as it was.
func TestFailOpenHandlerGetsBodyAndKey(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.claimErr = errors.New("down") })
	var key, body string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ = idem.KeyFromContext(r.Context())
		b, _ := io.ReadAll(r.Body)
		body = string(b)
	})
	r := httptest.NewRequest("POST", "/", strings.NewReader("payload"))
	r.Header.Set("Idempotency-Key", "k")
	orig := r.Body
	idem.New(st, idem.WithFailOpen())(h).ServeHTTP(httptest.NewRecorder(), r)
	if key != "k" || body != "payload" {
		t.Fatalf("fail-open handler saw key %q body %q", key, body)
	}
	if r.Body != orig {
		t.Fatal("the caller's request was modified")
	}
}

// A Content-Type an outer handler set is not replaced by a sniffed one, and
// the first answer and its replay agree; without any, the sniffed type is
// stored and replayed.
func TestContentTypeParity(t *testing.T) {
	st, _ := newCountingStore(t)
	plain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"ok":true}`) })
	outer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			next.ServeHTTP(w, r)
		})
	}
	h := outer(idem.New(st)(plain))
	for i := 0; i < 2; i++ {
		if ct := do(h, "POST", "/", "k", "").Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("answer %d: Content-Type %q, want the outer handler's application/json", i, ct)
		}
	}
	bare := idem.New(st)(plain)
	for i := 0; i < 2; i++ {
		if ct := do(bare, "POST", "/", "k2", "").Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Fatalf("answer %d: Content-Type %q, want the sniffed text/plain; charset=utf-8", i, ct)
		}
	}
}

// A streamed response is never run twice, whatever its status.
func TestStreamed5xxNeverRerun(t *testing.T) {
	st, _ := newCountingStore(t)
	runs := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.WriteHeader(502)
		w.Write(bytes.Repeat([]byte("x"), 2000))
	})
	mw := idem.New(st, idem.WithMaxResponseSize(1000))(h)
	do(mw, "POST", "/", "k", "")
	p := wantProblem(t, do(mw, "POST", "/", "k", ""), 409, "response-not-replayable")
	if runs != 1 || p.OriginalStatus != 502 {
		t.Fatalf("runs %d, original_status %d", runs, p.OriginalStatus)
	}
}

// Headers read after WriteHeader are those that were set, as under net/http.
func TestHeaderReadableAfterWriteHeader(t *testing.T) {
	st, _ := newCountingStore(t)
	var seen string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Etag", `"v1"`)
		w.WriteHeader(201)
		seen = w.Header().Get("Etag")
		w.Header().Set("Etag", `"changed"`)
	})
	w := do(idem.New(st)(h), "POST", "/", "k", "")
	if sent := w.Result().Header.Get("Etag"); seen != `"v1"` || sent != `"v1"` {
		t.Fatalf("after WriteHeader read %q, sent %q; want \"v1\" both", seen, sent)
	}
}

// An outer http.MaxBytesReader that trips is a 413, not a 400.
func TestOuterMaxBytesReader(t *testing.T) {
	st, _ := newCountingStore(t)
	mw := idem.New(st)(&payments{})
	r := httptest.NewRequest("POST", "/", strings.NewReader(strings.Repeat("a", 100)))
	r.Header.Set("Idempotency-Key", "k")
	r.ContentLength = -1
	w := httptest.NewRecorder()
	r.Body = http.MaxBytesReader(w, r.Body, 10)
	mw.ServeHTTP(w, r)
	wantProblem(t, w, 413, "body-too-large")
}
