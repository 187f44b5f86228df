package idemotel_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemotel"
	"github.com/idemgo/idem/internal/worktest"
	"github.com/idemgo/idem/memstore"
)

// storeCalls returns the number of store calls recorded in
// idem.store.duration, by "operation result".
func storeCalls(t *testing.T, reader *sdkmetric.ManualReader) map[string]uint64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			d, ok := m.Data.(metricdata.Histogram[float64])
			if !ok || m.Name != "idem.store.duration" {
				continue
			}
			for _, p := range d.DataPoints {
				op, _ := p.Attributes.Value("idem.operation")
				res, _ := p.Attributes.Value("idem.result")
				out[op.AsString()+" "+res.AsString()] += p.Count
			}
		}
	}
	return out
}

// spansNamed returns the ended spans named name.
func (r *rig) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// The wrapper implements the optional interfaces of the store it wraps,
// no more and no fewer: a wrapped transactional store stays transactional.
func TestWrapperKeepsExactlyTheStoresOptionalInterfaces(t *testing.T) {
	in, err := idemotel.New()
	if err != nil {
		t.Fatal(err)
	}
	worktest.CheckWrapperKeepsOptionalInterfaces(t, in.Store)
}

// Through the middleware, a wrapped WorkStore runs the handler inside its
// unit of work and records the response with the unit's Commit, never
// with Store.Complete. BeginWork and Commit are child spans of the
// request's span, and recorded in idem.store.duration.
func TestWrappedWorkStoreCommitsTheHandlersUnit(t *testing.T) {
	mem := memstore.New()
	defer mem.Close()
	us := worktest.New(mem)
	r := setup(t, worktest.Inspecting{Store: us, Inspector: mem}, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !worktest.Stage(req.Context(), "pay-"+req.Header.Get("Idempotency-Key")) {
			http.Error(w, "no unit of work in the handler's context", http.StatusTeapot)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	if s := r.post(t, "k1", "a"); s != http.StatusCreated {
		t.Fatalf("status %d, want 201", s)
	}
	if s := r.post(t, "k1", "a"); s != http.StatusCreated {
		t.Fatalf("replay status %d, want 201", s)
	}
	got := us.Counts()
	rows, completes, commits, rollbacks := got.Rows, got.Completes, got.Commits, got.Rollbacks
	if len(rows) != 1 || rows[0] != "pay-k1" {
		t.Fatalf("ledger %q, want the one row the handler staged", rows)
	}
	if commits != 1 || completes != 0 || rollbacks != 0 {
		t.Fatalf("commits %d, Store.Completes %d, rollbacks %d; want 1, 0, 0", commits, completes, rollbacks)
	}
	ks, err := mem.Lookup(context.Background(), idem.StoreKey("", "k1"))
	if err != nil || ks == nil || ks.State != idem.StateCompleted {
		t.Fatalf("the key's record: %+v %v, want completed", ks, err)
	}

	roots := r.roots()
	if len(roots) != 2 {
		t.Fatalf("%d request spans, want 2", len(roots))
	}
	if got, want := strings.Join(r.children(roots[0]), " "), "idem.store.claim idem.store.begin_work idem.store.commit"; got != want {
		t.Errorf("the execution's child spans %q, want %q", got, want)
	}
	if got, want := strings.Join(r.children(roots[1]), " "), "idem.store.claim"; got != want {
		t.Errorf("the replay's child spans %q, want %q", got, want)
	}
	for _, name := range []string{"idem.store.begin_work", "idem.store.commit"} {
		spans := r.spansNamed(name)
		if len(spans) != 1 {
			t.Fatalf("%d spans %s, want 1", len(spans), name)
		}
		if v, _ := attr(spans[0].Attributes(), "idem.result"); v.AsString() != "ok" {
			t.Errorf("%s: idem.result %q, want ok", name, v.AsString())
		}
		if v, _ := attr(spans[0].Attributes(), "idem.operation"); "idem.store."+v.AsString() != name {
			t.Errorf("%s: idem.operation %q", name, v.AsString())
		}
	}
	calls := storeCalls(t, r.reader)
	if calls["begin_work ok"] != 1 || calls["commit ok"] != 1 || calls["complete ok"] != 0 {
		t.Errorf("idem.store.duration counts %v, want one begin_work, one commit, no complete", calls)
	}
	if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 0 {
		t.Errorf("in flight after the commit = %d, want 0", n)
	}
}

// However a unit of work ends, its key leaves the in-flight gauge, and
// the spans say how it ended: a rollback is a child of the request's span
// like the other store calls.
func TestKeysInFlightAfterWorkEnds(t *testing.T) {
	for _, c := range []struct {
		name      string
		status    int  // the handler's
		answer    int  // the client's
		loseKey   bool // the handler deletes the key's record: Commit gets ErrLockLost
		commitErr error
		beginErr  error
		span      string // the span of the call that ended the unit
		res       string // its idem.result
		failed    bool   // its status is Error
		commits   int
		rollbacks int
		releases  int
	}{
		{name: "committed", status: 201, answer: 201, span: "commit", res: "ok", commits: 1},
		{name: "rolled back and released", status: 500, answer: 500, span: "release", res: "ok", rollbacks: 1, releases: 1},
		{name: "commit failed", status: 201, answer: 503, commitErr: errDown, span: "commit", res: "error", failed: true, rollbacks: 1, releases: 1},
		{name: "commit found the key lost", status: 201, answer: 503, loseKey: true, span: "commit", res: "lock_lost", rollbacks: 1},
		{name: "begin failed", status: 201, answer: 503, beginErr: errDown, span: "begin_work", res: "error", failed: true, releases: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			mem := memstore.New()
			defer mem.Close()
			us := worktest.New(mem)
			us.FailCommit(c.commitErr)
			us.FailBeginWork(c.beginErr)
			started, release := make(chan struct{}, 1), make(chan struct{})
			r := setup(t, us, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				started <- struct{}{}
				<-release
				if c.loseKey {
					if _, err := mem.Delete(req.Context(), idem.StoreKey("", "k")); err != nil {
						t.Error(err)
					}
				}
				w.WriteHeader(c.status)
			}))
			done := make(chan int, 1)
			go func() { done <- r.post(t, "k", "a") }()
			if c.beginErr == nil {
				<-started
				if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 1 {
					close(release)
					t.Fatalf("in flight while the handler runs = %d, want 1", n)
				}
			}
			close(release)
			if s := <-done; s != c.answer {
				t.Errorf("status %d, want %d", s, c.answer)
			}
			if n := gauge(t, r.reader, "idem.keys.in_flight"); n != 0 {
				t.Errorf("in flight after = %d, want 0", n)
			}
			spans := r.spansNamed("idem.store." + c.span)
			if len(spans) != 1 {
				t.Fatalf("%d spans idem.store.%s, want 1", len(spans), c.span)
			}
			if v, _ := attr(spans[0].Attributes(), "idem.result"); v.AsString() != c.res {
				t.Errorf("idem.store.%s: idem.result %q, want %q", c.span, v.AsString(), c.res)
			}
			if failed := spans[0].Status().Code == codes.Error; failed != c.failed {
				t.Errorf("idem.store.%s: status Error %v, want %v", c.span, failed, c.failed)
			}
			if n := storeCalls(t, r.reader)[c.span+" "+c.res]; n != 1 {
				t.Errorf("%d %s %s calls recorded, want 1", n, c.span, c.res)
			}
			if n := len(r.spansNamed("idem.store.release")); n != c.releases {
				t.Errorf("%d releases, want %d", n, c.releases)
			}
			rbSpans := r.spansNamed("idem.store.rollback")
			if len(rbSpans) != c.rollbacks {
				t.Errorf("%d rollback spans, want %d", len(rbSpans), c.rollbacks)
			}
			if roots := r.roots(); len(roots) != 1 {
				t.Errorf("%d request spans, want 1", len(roots))
			} else {
				for _, s := range rbSpans {
					if s.Parent().SpanID() != roots[0].SpanContext().SpanID() {
						t.Errorf("the rollback span's parent is %v, not the request's span", s.Parent().SpanID())
					}
				}
			}
			if n := storeCalls(t, r.reader)["rollback ok"]; n != uint64(c.rollbacks) {
				t.Errorf("%d rollbacks recorded, want %d", n, c.rollbacks)
			}
			got := us.Counts()
			completes, commits, rollbacks := got.Completes, got.Commits, got.Rollbacks
			if commits != c.commits || rollbacks != c.rollbacks || completes != 0 {
				t.Errorf("commits %d, rollbacks %d, Store.Completes %d; want %d, %d, 0", commits, rollbacks, completes, c.commits, c.rollbacks)
			}
		})
	}
}
