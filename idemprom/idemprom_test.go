package idemprom_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemprom"
	"github.com/idemgo/idem/memstore"
)

// setup serves h behind the middleware over a memstore, wired to fresh
// metrics, on a real listener.
func setup(t *testing.T, store idem.Store, h http.Handler, opts ...idem.Option) (*prometheus.Registry, *idemprom.Metrics, *httptest.Server) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := idemprom.New(reg, idemprom.WithRoute(func(r *http.Request) string { return r.URL.Path }))
	if err != nil {
		t.Fatal(err)
	}
	mw := idem.New(m.Store(store), append([]idem.Option{idem.WithHook(m.Hook)}, opts...)...)
	srv := httptest.NewServer(mw(h))
	t.Cleanup(srv.Close)
	return reg, m, srv
}

func post(t *testing.T, url, key, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

var created = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusCreated)
})

func TestOutcomesByRouteAndOutcome(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	reg, _, srv := setup(t, store, created)
	post(t, srv.URL+"/payments", "k1", "a")  // executed
	post(t, srv.URL+"/payments", "k1", "a")  // replayed
	post(t, srv.URL+"/payments", "k1", "b")  // mismatch
	post(t, srv.URL+"/payments", "a,b", "a") // rejected
	post(t, srv.URL+"/refunds", "k2", "a")   // executed (another route)

	want := `
# HELP idem_requests_total Keyed requests (and Do calls) by route and outcome.
# TYPE idem_requests_total counter
idem_requests_total{outcome="executed",route="/payments"} 1
idem_requests_total{outcome="executed",route="/refunds"} 1
idem_requests_total{outcome="mismatch",route="/payments"} 1
idem_requests_total{outcome="rejected",route="/payments"} 1
idem_requests_total{outcome="replayed",route="/payments"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "idem_requests_total"); err != nil {
		t.Fatal(err)
	}
	// The handler ran twice, once per route.
	for _, route := range []string{"/payments", "/refunds"} {
		if n := histogramCount(t, reg, "idem_handler_duration_seconds", map[string]string{"route": route}); n != 1 {
			t.Fatalf("handler histogram of %s holds %d observations, want 1", route, n)
		}
	}
	// Every request that reached the store made one claim; the two
	// executions completed.
	if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "claim", "result": "ok"}); n != 4 {
		t.Fatalf("%d claims timed, want 4", n)
	}
	if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "complete", "result": "ok"}); n != 2 {
		t.Fatalf("%d completes timed, want 2", n)
	}
}

// histogramCount returns the number of observations of the histogram
// series of name whose labels include labels (all series if nil).
func histogramCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	found := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok && v == lp.GetValue() {
			found++
		}
	}
	return found == len(labels)
}

func TestKeysInFlight(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	started, release := make(chan struct{}, 2), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // never leave a handler blocked when a check fails
	reg, _, srv := setup(t, store, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		w.WriteHeader(201)
	}))
	gauge := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "idem_keys_in_flight" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no idem_keys_in_flight")
		return 0
	}
	done := make(chan int, 2)
	for _, k := range []string{"a", "b"} {
		go func(k string) { done <- post(t, srv.URL+"/p", k, "x") }(k)
	}
	<-started
	<-started
	if g := gauge(); g != 2 {
		t.Fatalf("in flight while two handlers run = %v, want 2", g)
	}
	unblock()
	<-done
	<-done
	if g := gauge(); g != 0 {
		t.Fatalf("in flight after both finished = %v, want 0", g)
	}

	// A handler that fails (500, not kept) releases its key: not in flight.
	reg, _, srv2 := setup(t, store, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	post(t, srv2.URL+"/p", "c", "x")
	if g := gauge(); g != 0 {
		t.Fatalf("in flight after a released key = %v, want 0", g)
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

func TestStoreErrorsAreLabelled(t *testing.T) {
	reg, m, srv := setup(t, failingStore{}, created)
	if s := post(t, srv.URL+"/p", "k", "x"); s != 503 {
		t.Fatalf("status %d, want 503", s)
	}
	if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "claim", "result": "error"}); n != 1 {
		t.Fatalf("%d failed claims timed, want 1", n)
	}
	if n := testutil.ToFloat64(counter(t, reg, "store_error")); n != 1 {
		t.Fatalf("store_error outcomes = %v, want 1", n)
	}
	// A store without Inspector stays without it; one with it keeps it.
	if _, ok := m.Store(failingStore{}).(idem.Inspector); ok {
		t.Fatal("the wrapper of a store without Inspector claims to be one")
	}
	store := memstore.New()
	defer store.Close()
	ins, ok := m.Store(store).(idem.Inspector)
	if !ok {
		t.Fatal("the wrapper of a memstore is not an Inspector")
	}
	if _, err := ins.Lookup(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "lookup"}); n != 1 {
		t.Fatalf("%d lookups timed, want 1", n)
	}
}

// counter returns a collector of the one idem_requests_total series with
// outcome, for testutil.ToFloat64.
func counter(t *testing.T, reg *prometheus.Registry, outcome string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "idem_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, map[string]string{"outcome": outcome}) {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no idem_requests_total{outcome=%q}", outcome)
	return nil
}

// releaseFailingStore cannot release a key.
type releaseFailingStore struct{ idem.Store }

func (releaseFailingStore) Release(context.Context, string, string) error {
	return errors.New("store down")
}

// A failed release is an incident besides the request's own outcome: the
// request is counted once, as executed, and the release in its own series.
func TestIncidentsAreNotRequests(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError) // a 5xx is released, not kept
	})
	reg, _, srv := setup(t, releaseFailingStore{store}, failing)
	if s := post(t, srv.URL+"/p", "k", "x"); s != 500 {
		t.Fatalf("status %d, want 500", s)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var requests, incidents float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "idem_requests_total":
				requests += m.GetCounter().GetValue()
			case "idem_incidents_total":
				if hasLabels(m, map[string]string{"kind": "release_failed", "route": "/p"}) {
					incidents += m.GetCounter().GetValue()
				}
			}
		}
	}
	if requests != 1 || testutil.ToFloat64(counter(t, reg, "executed")) != 1 {
		t.Fatalf("idem_requests_total sums to %v, want the one executed request", requests)
	}
	if incidents != 1 {
		t.Fatalf("idem_incidents_total{kind=release_failed} = %v, want 1", incidents)
	}
}

func TestRegisteringTwiceFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := idemprom.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := idemprom.New(reg); err == nil {
		t.Fatal("a second New on one registry succeeded")
	}
	if _, err := idemprom.New(reg, idemprom.WithNamespace("orders")); err != nil {
		t.Fatalf("a namespaced second set: %v", err)
	}
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
// is in flight like any other, and leaves with its Complete.
func TestKeysInFlightAfterResentClaim(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	reg, _, srv := setup(t, resentClaim{store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		w.WriteHeader(201)
	}))
	done := make(chan int, 1)
	go func() { done <- post(t, srv.URL+"/p", "a", "x") }()
	<-started
	if g := inFlight(t, reg); g != 1 {
		t.Fatalf("in flight while the handler runs = %v, want 1", g)
	}
	unblock()
	if code := <-done; code != 201 {
		t.Fatalf("status %d, want 201", code)
	}
	if g := inFlight(t, reg); g != 0 {
		t.Fatalf("in flight after the handler finished = %v, want 0", g)
	}
}

func inFlight(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "idem_keys_in_flight" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no idem_keys_in_flight")
	return 0
}
