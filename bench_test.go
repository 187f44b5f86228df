package idem_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// The benchmarks measure the middleware's own cost on memstore:
// time and allocations per request beyond the handler's, and store calls
// per request.

var benchBody = `{"amount": 1000, "currency": "eur", "customer": "cus_123", "description": "order 42"}`

// okHandler is the cheapest realistic handler: a fixed 201 JSON answer.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusCreated)
	w.Write([]byte(`{"id":"pay_1","status":"succeeded"}`))
})

// discard is a ResponseWriter that keeps nothing, so that only the
// middleware's work is measured.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header {
	if d.h == nil {
		d.h = make(http.Header, 8)
	}
	return d.h
}
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

func (d *discard) reset() {
	for k := range d.h {
		delete(d.h, k)
	}
}

type benchReq struct {
	r    *http.Request
	body *strings.Reader
}

func newBenchReq(method, key string) *benchReq {
	body := strings.NewReader(benchBody)
	r := httptest.NewRequest(method, "/payments?expand=customer", body)
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	return &benchReq{r: r, body: body}
}

func (b *benchReq) next() *http.Request {
	b.body.Reset(benchBody)
	return b.r
}

// benchServe times b.N requests req through h, the timer and allocation
// count starting here.
func benchServe(b *testing.B, h http.Handler, req *benchReq) {
	w := &discard{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.reset()
		h.ServeHTTP(w, req.next())
	}
}

func reportCalls(b *testing.B, st *countingStore) {
	b.ReportMetric(float64(st.calls())/float64(b.N), "store-calls/op")
}

func BenchmarkPassThroughNoKey(b *testing.B) {
	st, _ := newCountingStore(b)
	h := idem.New(st)(okHandler)
	req := newBenchReq("POST", "")
	benchServe(b, h, req)
	reportCalls(b, st)
}

func BenchmarkBaselineHandlerOnly(b *testing.B) {
	req := newBenchReq("POST", "k")
	w := &discard{}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		w.reset()
		okHandler.ServeHTTP(w, req.next())
	}
}

// BenchmarkNewKey measures a request with a key never seen before. Every
// 1024 requests the store's clock jumps past the retention TTL and the
// records are swept (outside the timer), so that the figure is the steady
// state of a store whose size is bounded by its TTL, not the cost of an
// ever-growing map.
func BenchmarkNewKey(b *testing.B) {
	clock := newFakeClock()
	st, mem := newCountingStore(b, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	h := idem.New(st)(okHandler)
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	req := newBenchReq("POST", "")
	w := &discard{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%1024 == 1023 {
			b.StopTimer()
			clock.Advance(25 * time.Hour)
			mem.DeleteExpired(context.Background(), 0)
			b.StartTimer()
		}
		w.reset()
		r := req.next()
		r.Header["Idempotency-Key"] = keys[i : i+1]
		h.ServeHTTP(w, r)
	}
	b.StopTimer()
	reportCalls(b, st)
}

func BenchmarkReplay(b *testing.B) { benchReplay(b) }

// BenchmarkReplayCached: replays answered by the replay cache, with no
// store call.
func BenchmarkReplayCached(b *testing.B) {
	benchReplay(b, idem.WithReplayCache(1<<20, 1000, time.Minute))
}

func benchReplay(b *testing.B, opts ...idem.Option) {
	st, _ := newCountingStore(b)
	h := idem.New(st, opts...)(okHandler)
	req := newBenchReq("POST", "k")
	h.ServeHTTP(&discard{}, req.next())
	st.claims.Store(0)
	st.completes.Store(0)
	benchServe(b, h, req)
	reportCalls(b, st)
}

// benchHeldKey measures requests for a key that another owner holds in
// progress under the fingerprint holderFP.
func benchHeldKey(b *testing.B, holderFP func(*benchReq) string) {
	st, mem := newCountingStore(b)
	h := idem.New(st)(okHandler)
	req := newBenchReq("POST", "k")
	if _, err := mem.Claim(context.Background(), idem.StoreKey("", "k"), "holder", holderFP(req), time.Hour); err != nil {
		b.Fatal(err)
	}
	benchServe(b, h, req)
	reportCalls(b, st)
}

// BenchmarkConflict: the same request is in flight (409).
func BenchmarkConflict(b *testing.B) {
	benchHeldKey(b, func(req *benchReq) string { return idem.Fingerprint(req.r, []byte(benchBody)) })
}

// BenchmarkMismatch: another request holds the key (422).
func BenchmarkMismatch(b *testing.B) {
	benchHeldKey(b, func(*benchReq) string { return "another request" })
}

func BenchmarkNewKeyParallel(b *testing.B) {
	st, _ := newCountingStore(b)
	h := idem.New(st)(okHandler)
	var seq atomicCounter
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := newBenchReq("POST", "")
		w := &discard{}
		for pb.Next() {
			w.reset()
			r := req.next()
			r.Header["Idempotency-Key"] = []string{"p-" + strconv.FormatInt(seq.next(), 10)}
			h.ServeHTTP(w, r)
		}
	})
	reportCalls(b, st)
}
