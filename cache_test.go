package idem_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// cached builds middleware with a replay cache over st around h.
func cached(t *testing.T, st idem.Store, h http.Handler, opts ...idem.Option) (*idem.Middleware, http.Handler) {
	t.Helper()
	m, err := idem.NewMiddleware(st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m, m.Handler(h)
}

func TestReplayCacheAnswersWithoutStoreCall(t *testing.T) {
	st, _ := newCountingStore(t)
	p := &payments{}
	var ev events
	_, h := cached(t, st, p, idem.WithReplayCache(1<<20, 100, time.Hour), idem.WithHook(ev.hook))

	first := do(h, "POST", "/pay", "k1", `{"amount":1}`)
	if first.Code != http.StatusCreated {
		t.Fatalf("first answer %d", first.Code)
	}
	before := st.calls()
	for i := 0; i < 3; i++ {
		again := do(h, "POST", "/pay", "k1", `{"amount":1}`)
		if again.Code != first.Code || again.Body.String() != first.Body.String() ||
			again.Header().Get("Location") != first.Header().Get("Location") ||
			strings.Join(again.Header().Values("X-Multi"), ",") != "one,two" ||
			again.Header().Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay %d = %d %v %s, want the first answer %d %v %s", i, again.Code, again.Header(), again.Body, first.Code, first.Header(), first.Body)
		}
	}
	if got := st.calls() - before; got != 0 {
		t.Fatalf("replays made %d store calls, want 0", got)
	}
	if p.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", p.runs.Load())
	}
	if ev.last().Outcome != idem.OutcomeReplayed || ev.last().Status != http.StatusCreated {
		t.Fatalf("last event %+v, want a replay of 201", ev.last())
	}
}

// A replay the store answered (another process completed the key) is
// cached too: the next one makes no store call.
func TestReplayCacheKeepsRecordsReadFromStore(t *testing.T) {
	st, _ := newCountingStore(t)
	p := &payments{}
	other := idem.New(st)(p) // another process, without a cache
	first := do(other, "POST", "/pay", "k1", "body")
	_, h := cached(t, st, p, idem.WithReplayCache(1<<20, 100, time.Hour))
	do(h, "POST", "/pay", "k1", "body")
	before := st.calls()
	again := do(h, "POST", "/pay", "k1", "body")
	if again.Body.String() != first.Body.String() || again.Code != first.Code {
		t.Fatalf("replay %d %s, want %d %s", again.Code, again.Body, first.Code, first.Body)
	}
	if got := st.calls() - before; got != 0 {
		t.Fatalf("second replay made %d store calls, want 0", got)
	}
}

func TestReplayCacheMismatchIs422(t *testing.T) {
	st, _ := newCountingStore(t)
	p := &payments{}
	var ev events
	_, h := cached(t, st, p, idem.WithReplayCache(1<<20, 100, time.Hour), idem.WithHook(ev.hook))
	do(h, "POST", "/pay", "k1", `{"amount":1}`)
	before := st.calls()
	wantProblem(t, do(h, "POST", "/pay", "k1", `{"amount":2}`), http.StatusUnprocessableEntity, "key-reused")
	if got := st.calls() - before; got != 0 {
		t.Fatalf("mismatch answered from the cache made %d store calls, want 0", got)
	}
	if ev.last().Outcome != idem.OutcomeMismatch {
		t.Fatalf("outcome %v, want mismatch", ev.last().Outcome)
	}
	if p.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", p.runs.Load())
	}
}

// Entries end when the store's record ends: the time the store says it has
// left for a record read from it, the retention TTL for one this process
// stored; and never later than the cache's max age.
func TestReplayCacheHonoursExpiry(t *testing.T) {
	clock := newFakeClock()
	setup := func(t *testing.T, maxAge time.Duration, opts ...idem.Option) (*countingStore, *payments, http.Handler, *idem.Middleware) {
		st, _ := newCountingStore(t, memstore.WithClock(clock.Now))
		p := &payments{}
		m, h := cached(t, st, p, append(opts, idem.WithReplayCache(1<<20, 100, maxAge))...)
		idem.SetReplayCacheClock(m, clock.Now)
		return st, p, h, m
	}

	t.Run("record read from the store", func(t *testing.T) {
		st, p, h, _ := setup(t, 24*time.Hour)
		writer := idem.New(st, idem.WithTTL(time.Hour))(p)
		do(writer, "POST", "/pay", "k", "b")
		clock.Advance(59 * time.Minute)
		do(h, "POST", "/pay", "k", "b") // read from the store: 1 minute left
		clock.Advance(59 * time.Second)
		before := st.calls()
		do(h, "POST", "/pay", "k", "b")
		if st.calls() != before {
			t.Fatal("replay within the record's life went to the store")
		}
		clock.Advance(2 * time.Second) // the record has expired in the store
		w := do(h, "POST", "/pay", "k", "b")
		if st.calls() == before || p.runs.Load() != 2 || w.Header().Get("Idempotent-Replayed") != "" {
			t.Fatalf("after the store's expiry: %d store calls, %d runs, replayed %q; want the request run again",
				st.calls()-before, p.runs.Load(), w.Header().Get("Idempotent-Replayed"))
		}
	})

	t.Run("result stored by this process", func(t *testing.T) {
		_, p, h, _ := setup(t, 24*time.Hour, idem.WithTTL(time.Minute))
		do(h, "POST", "/pay", "k", "b")
		clock.Advance(61 * time.Second)
		do(h, "POST", "/pay", "k", "b")
		if p.runs.Load() != 2 {
			t.Fatalf("handler ran %d times, want 2: the cache replayed past the retention TTL", p.runs.Load())
		}
	})

	t.Run("max age", func(t *testing.T) {
		st, p, h, _ := setup(t, 10*time.Second)
		do(h, "POST", "/pay", "k", "b")
		clock.Advance(11 * time.Second)
		before := st.calls()
		w := do(h, "POST", "/pay", "k", "b")
		if st.calls()-before != 1 || p.runs.Load() != 1 || w.Header().Get("Idempotent-Replayed") != "true" {
			t.Fatalf("after max age: %d store calls, %d runs; want one Claim and a replay from the store", st.calls()-before, p.runs.Load())
		}
	})
}

// A store that cannot tell when a record expires gets no cache entries
// from its records.
func TestReplayCacheSkipsRecordsWithoutExpiry(t *testing.T) {
	st, _ := newCountingStore(t)
	p := &payments{}
	do(idem.New(st)(p), "POST", "/pay", "k", "b")
	_, h := cached(t, noExpiry{st}, p, idem.WithReplayCache(1<<20, 100, time.Hour))
	do(h, "POST", "/pay", "k", "b")
	before := st.calls()
	do(h, "POST", "/pay", "k", "b")
	if st.calls() == before {
		t.Fatal("a record without ExpiresIn was cached")
	}
}

type noExpiry struct{ idem.Store }

func (s noExpiry) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	rec, err := s.Store.Claim(ctx, key, token, fp, lease)
	if rec != nil {
		rec.ExpiresIn = 0
	}
	return rec, err
}

func TestReplayCacheBounds(t *testing.T) {
	t.Run("entries", func(t *testing.T) {
		st, _ := newCountingStore(t)
		m, h := cached(t, st, &payments{}, idem.WithReplayCache(1<<20, 3, time.Hour))
		for i := 0; i < 5; i++ {
			do(h, "POST", "/pay", fmt.Sprint("k", i), "b")
		}
		if n, _ := idem.ReplayCacheStats(m); n != 3 {
			t.Fatalf("%d entries, want the bound 3", n)
		}
		// The least recently used went first.
		before := st.calls()
		do(h, "POST", "/pay", "k4", "b")
		do(h, "POST", "/pay", "k2", "b")
		if st.calls() != before {
			t.Fatal("a recent key left the cache")
		}
		do(h, "POST", "/pay", "k0", "b")
		if st.calls() == before {
			t.Fatal("the oldest key is still cached")
		}
		// k0 took the place of k3, the least recently used once k2 was.
		before = st.calls()
		do(h, "POST", "/pay", "k2", "b")
		if st.calls() != before {
			t.Fatal("k2, used after k3, was evicted before it")
		}
		do(h, "POST", "/pay", "k3", "b")
		if st.calls() == before {
			t.Fatal("k3, the least recently used, is still cached")
		}
	})
	t.Run("bytes", func(t *testing.T) {
		st, _ := newCountingStore(t)
		const maxBytes = 64 << 10
		big := &sized{n: 1 << 10}
		m, h := cached(t, st, big, idem.WithReplayCache(maxBytes, 1000, time.Hour))
		for i := 0; i < 200; i++ {
			do(h, "POST", "/pay", fmt.Sprint("k", i), "b")
		}
		n, b := idem.ReplayCacheStats(m)
		if b > maxBytes || n == 0 || n >= 200 {
			t.Fatalf("%d entries of %d bytes, want some entries within %d bytes", n, b, maxBytes)
		}
		// A response larger than a sixteenth of the cache is not kept.
		huge := &sized{n: maxBytes / 8}
		_, hh := cached(t, st, huge, idem.WithReplayCache(maxBytes, 1000, time.Hour))
		do(hh, "POST", "/pay", "huge", "b")
		before := st.calls()
		do(hh, "POST", "/pay", "huge", "b")
		if st.calls() == before {
			t.Fatal("a response of an eighth of the cache was kept")
		}
	})
}

// sized answers 200 with n bytes.
type sized struct{ n int }

func (s *sized) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Write([]byte(strings.Repeat("x", s.n)))
}

// Something that changes the headers of a replayed response after the
// middleware wrote them cannot change what later replays send.
func TestReplayCacheHitsDoNotShareHeaders(t *testing.T) {
	st, _ := newCountingStore(t)
	_, h := cached(t, st, &payments{}, idem.WithReplayCache(1<<20, 100, time.Hour))
	meddle := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if vv := w.Header()["X-Multi"]; len(vv) > 0 {
			vv[0] = "changed"
		}
	})
	do(meddle, "POST", "/pay", "k", "b")
	do(meddle, "POST", "/pay", "k", "b")
	if got := do(h, "POST", "/pay", "k", "b").Header().Values("X-Multi"); strings.Join(got, ",") != "one,two" {
		t.Fatalf("X-Multi = %q after an outer handler changed an earlier replay", got)
	}
}

// Many goroutines create and replay keys through a small cache that evicts
// all the time: every answer is the one of its own key.
func TestReplayCacheConcurrent(t *testing.T) {
	st, _ := newCountingStore(t)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Key", r.Header.Get("Idempotency-Key"))
		w.Write([]byte("for " + r.Header.Get("Idempotency-Key")))
	})
	_, h := cached(t, st, echo, idem.WithReplayCache(16<<10, 8, time.Hour))
	const workers, rounds, keys = 8, 200, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				key := fmt.Sprint("k", (g*7+i)%keys)
				w := do(h, "POST", "/pay", key, "same")
				if w.Code == http.StatusConflict {
					continue // another goroutine holds the key right now
				}
				if w.Code != http.StatusOK || w.Body.String() != "for "+key || w.Header().Get("X-Key") != key {
					errs <- fmt.Errorf("key %s got %d %q X-Key %q", key, w.Code, w.Body, w.Header().Get("X-Key"))
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestReplayCacheOptionChecked(t *testing.T) {
	for _, o := range []idem.Option{
		idem.WithReplayCache(0, 10, time.Minute),
		idem.WithReplayCache(1<<20, 0, time.Minute),
		idem.WithReplayCache(1<<20, 10, 0),
	} {
		st, _ := newCountingStore(t)
		if _, err := idem.NewMiddleware(st, o); err == nil || !strings.Contains(err.Error(), "WithReplayCache") {
			t.Errorf("NewMiddleware: %v, want an error naming WithReplayCache", err)
		}
	}
}

// A replay from the cache is the replay the store would give: the same
// status, headers (outer ones kept, the handler's appended and removed ones
// applied), body and trailers, through a real server.
func TestReplayCacheHitEqualsStoreReplay(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Add("Vary", "Accept")
		w.Header().Del("X-Outer-Removed")
		w.Header()["Date"] = nil
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte("accepted"))
		w.Header().Set("X-Sum", "42")
	})
	outer := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Vary", "Origin")
			w.Header().Set("X-Outer-Removed", "1")
			h.ServeHTTP(w, r)
		})
	}
	st, _ := newCountingStore(t)
	_, withCache := cached(t, st, handler, idem.WithReplayCache(1<<20, 100, time.Hour))
	plain := idem.New(st)(handler)
	srvCache := httptest.NewServer(outer(withCache))
	defer srvCache.Close()
	srvPlain := httptest.NewServer(outer(plain))
	defer srvPlain.Close()

	post := func(url string) (*http.Response, string) {
		req, _ := http.NewRequest("POST", url, strings.NewReader("b"))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	post(srvCache.URL) // executes and fills the cache
	before := st.calls()
	fromCache, cacheBody := post(srvCache.URL)
	if st.calls() != before {
		t.Fatal("the second request was not answered from the cache")
	}
	fromStore, storeBody := post(srvPlain.URL)
	if fromStore.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("the plain middleware did not replay")
	}
	if fromCache.StatusCode != fromStore.StatusCode || cacheBody != storeBody ||
		!reflect.DeepEqual(fromCache.Header, fromStore.Header) || !reflect.DeepEqual(fromCache.Trailer, fromStore.Trailer) {
		t.Fatalf("cached replay %d %v %q trailer %v\nstore replay  %d %v %q trailer %v",
			fromCache.StatusCode, fromCache.Header, cacheBody, fromCache.Trailer,
			fromStore.StatusCode, fromStore.Header, storeBody, fromStore.Trailer)
	}
	if fromCache.Trailer.Get("X-Sum") != "42" || strings.Join(fromCache.Header.Values("Vary"), ",") != "Origin,Accept" {
		t.Fatalf("replay lost the trailer or the appended Vary: %v %v", fromCache.Header, fromCache.Trailer)
	}
}

// An entry found expired gives its room back, even when the request it
// met brings no new entry (here the store cannot tell the record's expiry).
func TestReplayCacheDropsExpiredEntries(t *testing.T) {
	clock := newFakeClock()
	st, _ := newCountingStore(t, memstore.WithClock(clock.Now))
	p := &payments{}
	m, h := cached(t, noExpiry{st}, p, idem.WithReplayCache(1<<20, 100, 10*time.Second))
	idem.SetReplayCacheClock(m, clock.Now)
	do(h, "POST", "/pay", "k", "b")
	if n, _ := idem.ReplayCacheStats(m); n != 1 {
		t.Fatalf("%d entries after the first request, want 1", n)
	}
	clock.Advance(11 * time.Second)
	if w := do(h, "POST", "/pay", "k", "b"); w.Header().Get("Idempotent-Replayed") != "true" || p.runs.Load() != 1 {
		t.Fatalf("after max age: replayed %q, %d runs; want a replay from the store", w.Header().Get("Idempotent-Replayed"), p.runs.Load())
	}
	if n, b := idem.ReplayCacheStats(m); n != 0 || b != 0 {
		t.Fatalf("%d entries of %d bytes after the only entry expired, want none", n, b)
	}
}

// The byte bound is what the cache may hold: an entry of exactly a
// sixteenth of it is kept, and sixteen such entries fill it without an
// eviction; the seventeenth evicts the least recently used.
func TestReplayCacheFillsItsByteBound(t *testing.T) {
	h200 := &sized{n: 100}
	st, _ := newCountingStore(t)
	probe, ph := cached(t, st, h200, idem.WithReplayCache(1<<20, 1000, time.Hour))
	do(ph, "POST", "/pay", "k00", "b")
	_, size := idem.ReplayCacheStats(probe)
	if size == 0 {
		t.Fatal("the probe cached nothing")
	}

	st, _ = newCountingStore(t)
	m, h := cached(t, st, h200, idem.WithReplayCache(16*size, 1000, time.Hour))
	for i := 0; i < 16; i++ {
		do(h, "POST", "/pay", fmt.Sprintf("k%02d", i), "b")
	}
	if n, b := idem.ReplayCacheStats(m); n != 16 || b != 16*size {
		t.Fatalf("%d entries of %d bytes, want 16 entries filling the bound %d", n, b, 16*size)
	}
	before := st.calls()
	do(h, "POST", "/pay", "k00", "b")
	if st.calls() != before {
		t.Fatal("the oldest of 16 entries that fit the bound was evicted")
	}
	do(h, "POST", "/pay", "k16", "b")
	if n, b := idem.ReplayCacheStats(m); n != 16 || b != 16*size {
		t.Fatalf("after a 17th key: %d entries of %d bytes, want 16 within %d", n, b, 16*size)
	}
	before = st.calls()
	do(h, "POST", "/pay", "k00", "b") // used recently: still there
	if st.calls() != before {
		t.Fatal("the 17th key evicted a recently used entry")
	}
	do(h, "POST", "/pay", "k01", "b") // the least recently used: evicted
	if st.calls() == before {
		t.Fatal("the 17th key evicted nothing")
	}
}

// Every entry counts its key, its fingerprint and a fixed overhead against
// the byte bound: a fingerprint function that returns long strings gets
// fewer entries, never more memory.
func TestReplayCacheBoundCountsFingerprintsAndOverhead(t *testing.T) {
	const maxBytes, fpLen, keys = 64 << 10, 2 << 10, 100
	long := func(r *http.Request, body []byte) string {
		return strings.Repeat("f", fpLen-len(body)) + string(body)
	}
	st, _ := newCountingStore(t)
	m, h := cached(t, st, &sized{n: 1}, idem.WithFingerprint(long), idem.WithReplayCache(maxBytes, 1000, time.Hour))
	for i := 0; i < keys; i++ {
		do(h, "POST", "/pay", fmt.Sprint("k", i), fmt.Sprint("b", i))
	}
	n, b := idem.ReplayCacheStats(m)
	const least = int64(len("k0")) + fpLen + 256 // key, fingerprint, overhead
	if n == 0 || b > maxBytes || int64(n)*least > maxBytes {
		t.Fatalf("%d entries of %d bytes; want some, each counting at least %d bytes, within %d", n, b, least, maxBytes)
	}
}

// A request that completes while another with the same key is replayed
// from the store leaves one entry for the key, counted once.
func TestReplayCacheCountsAReplacedEntryOnce(t *testing.T) {
	st, _ := newCountingStore(t)
	gate := &completeGate{Store: st, completed: make(chan struct{}), release: make(chan struct{})}
	m, h := cached(t, gate, &sized{n: 10}, idem.WithReplayCache(1<<20, 100, time.Hour))
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- do(h, "POST", "/pay", "k", "b") }()
	<-gate.completed // stored, not yet cached by the request that ran
	second := do(h, "POST", "/pay", "k", "b")
	if second.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("second request: %d %v, want a replay", second.Code, second.Header())
	}
	n, size := idem.ReplayCacheStats(m)
	if n != 1 || size == 0 {
		t.Fatalf("%d entries of %d bytes after the replay, want one", n, size)
	}
	close(gate.release)
	if w := <-first; w.Code != http.StatusOK || w.Body.String() != second.Body.String() {
		t.Fatalf("first request: %d %q, want 200 %q", w.Code, w.Body, second.Body)
	}
	if n, b := idem.ReplayCacheStats(m); n != 1 || b != size {
		t.Fatalf("%d entries of %d bytes once both requests cached the key, want 1 of %d", n, b, size)
	}
}

// completeGate holds the first Complete after the store took it, until
// release is closed.
type completeGate struct {
	idem.Store
	once               sync.Once
	completed, release chan struct{}
}

func (g *completeGate) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	err := g.Store.Complete(ctx, key, token, result, ttl)
	g.once.Do(func() {
		close(g.completed)
		<-g.release
	})
	return err
}

// A streamed response is recorded without its body: a retry gets the
// response-not-replayable problem from the store, and the cache keeps no
// entry that would replay it with an empty body.
func TestReplayCacheLeavesStreamedResponsesUnreplayable(t *testing.T) {
	st, _ := newCountingStore(t)
	stream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		w.Write([]byte("rest"))
	})
	var ev events
	m, h := cached(t, st, stream, idem.WithReplayCache(1<<20, 100, time.Hour), idem.WithHook(ev.hook))
	if w := do(h, "POST", "/pay", "k", "b"); w.Body.String() != "partrest" {
		t.Fatalf("first answer %q", w.Body)
	}
	for i := 0; i < 2; i++ {
		p := wantProblem(t, do(h, "POST", "/pay", "k", "b"), http.StatusConflict, "response-not-replayable")
		if p.OriginalStatus != http.StatusOK {
			t.Fatalf("original_status %d, want 200", p.OriginalStatus)
		}
		if e := ev.last(); e.Outcome != idem.OutcomeNotReplayable || e.Status != http.StatusConflict {
			t.Fatalf("retry reported as %v %d, want not_replayable 409", e.Outcome, e.Status)
		}
	}
	if n, _ := idem.ReplayCacheStats(m); n != 0 {
		t.Fatalf("%d entries for a streamed response, want none", n)
	}
}

// A response the store did not record is not cached either: a retry must
// not be answered with a response that the store cannot give again.
func TestReplayCacheKeepsOnlyRecordedResponses(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.completeErr = errors.New("store down") })
	p := &payments{}
	m, h := cached(t, st, p, idem.WithReplayCache(1<<20, 100, time.Hour))
	wantProblem(t, do(h, "POST", "/pay", "k", "b"), http.StatusServiceUnavailable, "response-not-recorded")
	if n, _ := idem.ReplayCacheStats(m); n != 0 {
		t.Fatalf("%d entries after a failed Complete, want none", n)
	}
	st.set(func(s *countingStore) { s.completeErr = nil })
	// The key stays locked until its lease ends: the retry learns that,
	// and is not told of a response that was never recorded.
	wantProblem(t, do(h, "POST", "/pay", "k", "b"), http.StatusConflict, "key-in-use")
}
