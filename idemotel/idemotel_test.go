package idemotel_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemotel"
	"github.com/idemgo/idem/memstore"
)

type rig struct {
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	srv    *httptest.Server
}

// setup serves h behind the middleware, instrumented, on a real listener;
// each request runs in a server span, as otelhttp would start.
func setup(t *testing.T, store idem.Store, h http.Handler) *rig {
	t.Helper()
	r := &rig{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	in, err := idemotel.New(idemotel.WithTracerProvider(tp), idemotel.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /payments", idem.New(in.Store(store), idem.WithHook(in.Hook))(h))
	tracer := tp.Tracer("server")
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx, span := tracer.Start(req.Context(), "POST /payments")
		defer span.End()
		mux.ServeHTTP(w, req.WithContext(ctx))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *rig) post(t *testing.T, key, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", r.srv.URL+"/payments", strings.NewReader(body))
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// roots returns the request spans, in the order they ended.
func (r *rig) roots() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == "POST /payments" {
			out = append(out, s)
		}
	}
	return out
}

// children returns the names of the spans whose parent is root.
func (r *rig) children(root sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range r.spans.Ended() {
		if s.Parent().SpanID() == root.SpanContext().SpanID() {
			out = append(out, s.Name())
		}
	}
	return out
}

func attr(attrs []attribute.KeyValue, key string) (attribute.Value, bool) {
	for _, a := range attrs {
		if string(a.Key) == key {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

func TestSpansOfAnExecutionAndAReplay(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	r := setup(t, store, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(201) }))
	r.post(t, "k1", "a")
	r.post(t, "k1", "a")
	r.post(t, "k1", "b")

	roots := r.roots()
	if len(roots) != 3 {
		t.Fatalf("%d request spans, want 3", len(roots))
	}
	want := []struct {
		outcome  string
		status   int64
		children string
		problem  string
	}{
		{"executed", 201, "idem.store.claim idem.store.complete", ""},
		{"replayed", 201, "idem.store.claim", ""},
		{"mismatch", 422, "idem.store.claim", "key-reused"},
	}
	for i, w := range want {
		s := roots[i]
		if v, _ := attr(s.Attributes(), "idem.outcome"); v.AsString() != w.outcome {
			t.Errorf("span %d: idem.outcome = %q, want %q", i, v.AsString(), w.outcome)
		}
		if v, _ := attr(s.Attributes(), "idem.status"); v.AsInt64() != w.status {
			t.Errorf("span %d: idem.status = %d, want %d", i, v.AsInt64(), w.status)
		}
		if v, ok := attr(s.Attributes(), "idem.problem"); w.problem != "" && v.AsString() != w.problem || w.problem == "" && ok {
			t.Errorf("span %d: idem.problem = %q, want %q", i, v.AsString(), w.problem)
		}
		if got := strings.Join(r.children(s), " "); got != w.children {
			t.Errorf("span %d (%s): child spans %q, want %q", i, w.outcome, got, w.children)
		}
		if evs := s.Events(); len(evs) != 1 || evs[0].Name != "idem.outcome" {
			t.Errorf("span %d: events %+v, want one idem.outcome", i, evs)
		}
		for _, a := range s.Attributes() {
			if v := a.Value.Emit(); v == "k1" {
				t.Errorf("span %d: the raw key is recorded as %s", i, a.Key)
			}
		}
	}
	if v, ok := attr(roots[0].Attributes(), "idem.stored"); !ok || !v.AsBool() {
		t.Error("the execution's span lacks idem.stored=true")
	}
	if _, ok := attr(roots[0].Attributes(), "idem.handler_duration_ms"); !ok {
		t.Error("the execution's span lacks idem.handler_duration_ms")
	}
}

// failingStore fails every call.
type failingStore struct{}

var errDown = errors.New("store down")

func (failingStore) Claim(context.Context, string, string, string, time.Duration) (*idem.Record, error) {
	return nil, errDown
}
func (failingStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return errDown
}
func (failingStore) Release(context.Context, string, string) error { return errDown }
func (failingStore) Renew(context.Context, string, string, time.Duration) error {
	return errDown
}

func TestStoreFailureIsAnErrorSpan(t *testing.T) {
	r := setup(t, failingStore{}, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(201) }))
	if s := r.post(t, "k", "a"); s != 503 {
		t.Fatalf("status %d", s)
	}
	var claim sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == "idem.store.claim" {
			claim = s
		}
	}
	if claim == nil || claim.Status().Code != codes.Error {
		t.Fatalf("claim span %v, want one with status Error", claim)
	}
	if v, _ := attr(claim.Attributes(), "idem.result"); v.AsString() != "error" {
		t.Fatalf("idem.result = %q", v.AsString())
	}
	root := r.roots()[0]
	if v, _ := attr(root.Attributes(), "idem.outcome"); v.AsString() != "store_error" {
		t.Fatalf("request span outcome %q", v.AsString())
	}
}

func TestMetrics(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	started, release := make(chan struct{}, 1), make(chan struct{})
	r := setup(t, store, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Idempotency-Key") == "slow" {
			started <- struct{}{}
			<-release
		}
		w.WriteHeader(201)
	}))
	done := make(chan int, 1)
	go func() { done <- r.post(t, "slow", "a") }()
	<-started
	if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 1 {
		close(release)
		t.Fatalf("in flight while a handler runs = %d, want 1", n)
	}
	close(release)
	<-done
	r.post(t, "slow", "a") // replayed
	if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 0 {
		t.Fatalf("in flight after = %d, want 0", n)
	}

	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	storeCalls := map[string]uint64{}
	var handled uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					o, _ := p.Attributes.Value("idem.outcome")
					route, _ := p.Attributes.Value("http.route")
					counts[o.AsString()+" "+route.AsString()] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if m.Name == "idem.store.duration" {
						op, _ := p.Attributes.Value("idem.operation")
						res, _ := p.Attributes.Value("idem.result")
						storeCalls[op.AsString()+" "+res.AsString()] += p.Count
					} else if m.Name == "idem.handler.duration" {
						handled += p.Count
					}
				}
			}
		}
	}
	if counts["executed POST /payments"] != 1 || counts["replayed POST /payments"] != 1 {
		t.Fatalf("idem.requests = %v, want one executed and one replayed on route POST /payments", counts)
	}
	if storeCalls["claim ok"] != 2 || storeCalls["complete ok"] != 1 {
		t.Fatalf("idem.store.duration counts = %v, want 2 claims and 1 complete", storeCalls)
	}
	if handled != 1 {
		t.Fatalf("idem.handler.duration holds %d, want 1", handled)
	}
}

func gauge(t *testing.T, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == name && len(g.DataPoints) == 1 {
				return g.DataPoints[0].Value
			}
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// resentClaim is a store whose client sends every Claim twice, as go-redis
// does when the reply to the first is lost: the second finds the record
// the first made, with the caller's own token, which the middleware
// counts as won.
type resentClaim struct{ idem.Store }

func (s resentClaim) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	if _, err := s.Store.Claim(ctx, key, token, fp, lease); err != nil {
		return nil, err
	}
	return s.Store.Claim(ctx, key, token, fp, lease)
}

// A key the middleware owns through a claim sent again by the store client
// is in flight like any other, its claim span says won, and it leaves the
// gauge with its Complete.
func TestKeysInFlightAfterResentClaim(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	started, release := make(chan struct{}), make(chan struct{})
	r := setup(t, resentClaim{store}, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		close(started)
		<-release
		w.WriteHeader(201)
	}))
	done := make(chan int, 1)
	go func() { done <- r.post(t, "k", "a") }()
	<-started
	n := gauge(t, r.reader, "idem.keys.in_flight")
	close(release)
	if code := <-done; code != 201 {
		t.Fatalf("status %d, want 201", code)
	}
	if n != 1 {
		t.Fatalf("in flight while the handler ran = %d, want 1", n)
	}
	if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 0 {
		t.Fatalf("in flight after = %d, want 0", n)
	}
	var claims []string
	for _, s := range r.spans.Ended() {
		if s.Name() == "idem.store.claim" {
			v, _ := attr(s.Attributes(), "idem.claim")
			claims = append(claims, v.AsString())
		}
	}
	if len(claims) != 1 || claims[0] != "won" {
		t.Fatalf("claim spans say %q, want one that says won", claims)
	}
}

// releaseFailingStore cannot release a key.
type releaseFailingStore struct{ idem.Store }

func (releaseFailingStore) Release(context.Context, string, string) error {
	return errors.New("store down")
}

// A failed release is an incident besides the request's outcome: the
// request span keeps outcome executed and gains an idem.incident event, and
// idem.requests counts the request once.
func TestIncidentsAreNotRequests(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	r := setup(t, releaseFailingStore{store}, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.WriteHeader(http.StatusInternalServerError) // released, not kept
	}))
	if s := r.post(t, "k", "a"); s != 500 {
		t.Fatalf("status %d, want 500", s)
	}
	roots := r.roots()
	if len(roots) != 1 {
		t.Fatalf("%d request spans, want 1", len(roots))
	}
	if o, _ := attr(roots[0].Attributes(), "idem.outcome"); o.AsString() != "executed" {
		t.Fatalf("idem.outcome = %q, want executed", o.AsString())
	}
	incidents := 0
	for _, e := range roots[0].Events() {
		if k, _ := attr(e.Attributes, "idem.kind"); e.Name == "idem.incident" && k.AsString() == "release_failed" {
			incidents++
		}
	}
	if incidents != 1 {
		t.Fatalf("%d idem.incident events of kind release_failed, want 1", incidents)
	}
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var requests, counted int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			d, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, p := range d.DataPoints {
				switch m.Name {
				case "idem.requests":
					requests += p.Value
				case "idem.incidents":
					if k, _ := p.Attributes.Value("idem.kind"); k.AsString() == "release_failed" {
						counted += p.Value
					}
				}
			}
		}
	}
	if requests != 1 || counted != 1 {
		t.Fatalf("idem.requests = %d, idem.incidents{release_failed} = %d; want 1 and 1", requests, counted)
	}
}
