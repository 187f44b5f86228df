package idemprom_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemprom"
	"github.com/idemgo/idem/internal/worktest"
	"github.com/idemgo/idem/memstore"
)

// The wrapper implements the optional interfaces of the store it wraps,
// no more and no fewer: a wrapped transactional store stays transactional.
func TestWrapperKeepsExactlyTheStoresOptionalInterfaces(t *testing.T) {
	m, err := idemprom.New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	worktest.CheckWrapperKeepsOptionalInterfaces(t, m.Store)
}

// BeginWork, Commit and Rollback are timed as begin_work, commit and
// rollback, with their results.
func TestBeginWorkAndCommitAreTimed(t *testing.T) {
	mem := memstore.New()
	defer mem.Close()
	reg := prometheus.NewRegistry()
	m, err := idemprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	us := worktest.New(mem)
	ws := m.Store(worktest.Inspecting{Store: us, Inspector: mem}).(idem.WorkStore)
	ctx := context.Background()
	count := func(op, res string) uint64 {
		t.Helper()
		return histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": op, "result": res})
	}

	// One unit committed.
	if rec, err := ws.Claim(ctx, "a", "t1", "fp", time.Minute); rec != nil || err != nil {
		t.Fatalf("claim: %v %v", rec, err)
	}
	w, err := ws.BeginWork(ctx, "a", "t1")
	if err != nil {
		t.Fatal(err)
	}
	if !worktest.Stage(w.Context(ctx), "row-a") {
		t.Fatal("the wrapped Work's context does not carry the store's unit")
	}
	if err := w.Commit(ctx, []byte("done"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if rows := us.Counts().Rows; len(rows) != 1 || rows[0] != "row-a" {
		t.Fatalf("ledger %q after the commit, want [row-a]", rows)
	}
	if n := count("begin_work", "ok"); n != 1 {
		t.Errorf("%d begin_work ok timed, want 1", n)
	}
	if n := count("commit", "ok"); n != 1 {
		t.Errorf("%d commit ok timed, want 1", n)
	}

	// A commit by an owner that lost the key: lock_lost.
	if _, err := ws.Claim(ctx, "b", "t2", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	w, err = ws.BeginWork(ctx, "b", "t2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mem.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, []byte("done"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("commit of a lost key: %v, want ErrLockLost", err)
	}
	if err := w.Rollback(); err != nil {
		t.Fatal(err)
	}
	if n := count("commit", "lock_lost"); n != 1 {
		t.Errorf("%d commit lock_lost timed, want 1", n)
	}
	if n := count("rollback", "ok"); n != 1 {
		t.Errorf("%d rollback ok timed, want 1", n)
	}

	// A unit that cannot begin, and a commit that fails: error.
	us.FailBeginWork(errDown)
	if _, err := ws.BeginWork(ctx, "c", "t3"); !errors.Is(err, errDown) {
		t.Fatalf("BeginWork: %v, want the store's error", err)
	}
	if n := count("begin_work", "error"); n != 1 {
		t.Errorf("%d begin_work error timed, want 1", n)
	}
	us.FailBeginWork(nil)
	us.FailCommit(errDown)
	w, err = ws.BeginWork(ctx, "c", "t3")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, []byte("done"), time.Hour); !errors.Is(err, errDown) {
		t.Fatalf("Commit: %v, want the store's error", err)
	}
	if n := count("commit", "error"); n != 1 {
		t.Errorf("%d commit error timed, want 1", n)
	}
	if n := count("begin_work", "ok"); n != 3 {
		t.Errorf("%d begin_work ok timed, want 3", n)
	}
}

// Through the middleware, a wrapped WorkStore runs the handler inside its
// unit of work and records the response with the unit's Commit, never
// with Store.Complete; the key leaves the in-flight gauge.
func TestWrappedWorkStoreCommitsTheHandlersUnit(t *testing.T) {
	mem := memstore.New()
	defer mem.Close()
	us := worktest.New(mem)
	var (
		mu   sync.Mutex
		runs int
	)
	reg, _, srv := setup(t, us, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		runs++
		mu.Unlock()
		key := r.Header.Get("Idempotency-Key")
		if !worktest.Stage(r.Context(), "pay-"+key) {
			http.Error(w, "no unit of work in the handler's context", http.StatusTeapot)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	if s := post(t, srv.URL+"/p", "k1", "x"); s != http.StatusCreated {
		t.Fatalf("status %d, want 201", s)
	}
	if s := post(t, srv.URL+"/p", "k1", "x"); s != http.StatusCreated {
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
	mu.Lock()
	if runs != 1 {
		t.Errorf("the handler ran %d times, want once (then a replay)", runs)
	}
	mu.Unlock()
	ks, err := mem.Lookup(context.Background(), idem.StoreKey("", "k1"))
	if err != nil || ks == nil || ks.State != idem.StateCompleted {
		t.Fatalf("the key's record: %+v %v, want completed", ks, err)
	}
	for op, want := range map[string]uint64{"begin_work": 1, "commit": 1, "complete": 0} {
		if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": op}); n != want {
			t.Errorf("%d %s calls timed, want %d", n, op, want)
		}
	}
	if g := inFlight(t, reg); g != 0 {
		t.Fatalf("in flight after the commit = %v, want 0", g)
	}
}

// However a unit of work ends, its key leaves the in-flight gauge: a
// committed unit, a rolled-back one whose key is released, a commit that
// fails (rolled back and released) and one that finds the key lost.
func TestKeysInFlightAfterWorkEnds(t *testing.T) {
	for _, c := range []struct {
		name      string
		status    int  // the handler's
		answer    int  // the client's
		loseKey   bool // the handler deletes the key's record: Commit gets ErrLockLost
		commitErr error
		beginErr  error
		op, res   string // a store call that must have been timed
		commits   int
		rollbacks int
		releases  uint64
	}{
		{name: "committed", status: 201, answer: 201, op: "commit", res: "ok", commits: 1},
		{name: "rolled back and released", status: 500, answer: 500, op: "release", res: "ok", rollbacks: 1, releases: 1},
		{name: "commit failed", status: 201, answer: 503, commitErr: errDown, op: "commit", res: "error", rollbacks: 1, releases: 1},
		{name: "commit found the key lost", status: 201, answer: 503, loseKey: true, op: "commit", res: "lock_lost", rollbacks: 1},
		{name: "begin failed", status: 201, answer: 503, beginErr: errDown, op: "begin_work", res: "error", releases: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			mem := memstore.New()
			defer mem.Close()
			us := worktest.New(mem)
			us.FailCommit(c.commitErr)
			us.FailBeginWork(c.beginErr)
			started, release := make(chan struct{}, 1), make(chan struct{})
			reg, _, srv := setup(t, us, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				started <- struct{}{}
				<-release
				if c.loseKey {
					if _, err := mem.Delete(r.Context(), idem.StoreKey("", "k")); err != nil {
						t.Error(err)
					}
				}
				w.WriteHeader(c.status)
			}))
			done := make(chan int, 1)
			go func() { done <- post(t, srv.URL+"/p", "k", "x") }()
			if c.beginErr == nil {
				<-started
				if g := inFlight(t, reg); g != 1 {
					close(release)
					t.Fatalf("in flight while the handler runs = %v, want 1", g)
				}
			}
			close(release)
			if s := <-done; s != c.answer {
				t.Errorf("status %d, want %d", s, c.answer)
			}
			if g := inFlight(t, reg); g != 0 {
				t.Errorf("in flight after = %v, want 0", g)
			}
			if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": c.op, "result": c.res}); n != 1 {
				t.Errorf("%d %s %s calls timed, want 1", n, c.op, c.res)
			}
			if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "release"}); n != c.releases {
				t.Errorf("%d releases timed, want %d", n, c.releases)
			}
			if n := histogramCount(t, reg, "idem_store_call_duration_seconds", map[string]string{"operation": "rollback", "result": "ok"}); n != uint64(c.rollbacks) {
				t.Errorf("%d rollbacks timed, want %d", n, c.rollbacks)
			}
			got := us.Counts()
			completes, commits, rollbacks := got.Completes, got.Commits, got.Rollbacks
			if commits != c.commits || rollbacks != c.rollbacks || completes != 0 {
				t.Errorf("commits %d, rollbacks %d, Store.Completes %d; want %d, %d, 0", commits, rollbacks, completes, c.commits, c.rollbacks)
			}
		})
	}
}
