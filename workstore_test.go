package idem_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/worktest"
	"github.com/idemgo/idem/memstore"
)

// ledgerStore is the shared fake transactional store, an Inspector too
// like the memstore that keeps its records.
type ledgerStore = worktest.Inspecting

func newLedgerStore(t *testing.T) *ledgerStore {
	ms := memstore.New()
	t.Cleanup(func() { ms.Close() })
	return &ledgerStore{Store: worktest.New(ms), Inspector: ms}
}

// ledgerState returns the rows s has committed, and how many units it
// began and rolled back.
func ledgerState(s *ledgerStore) (rows []string, begins, rollbacks int) {
	c := s.Counts()
	return c.Rows, c.Begins, c.Rollbacks
}

// ledgerHandler stages one row in the request's unit of work and answers
// status; it fails the request if there is no unit.
func ledgerHandler(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := idem.KeyFromContext(r.Context())
		if !worktest.Stage(r.Context(), "payment "+key) {
			http.Error(w, "no unit of work", http.StatusTeapot)
			return
		}
		w.WriteHeader(status)
		w.Write([]byte("paid " + key))
	})
}

// A kept response commits with the handler's unit of work, and its replay
// runs nothing.
func TestWorkStoreCommitsKeptResponseWithTheWork(t *testing.T) {
	s := newLedgerStore(t)
	h := idem.New(s)(ledgerHandler(http.StatusCreated))
	for i := 0; i < 2; i++ {
		w := do(h, "POST", "/pay", "k1", `{}`)
		if w.Code != http.StatusCreated || w.Body.String() != "paid k1" {
			t.Fatalf("request %d: %d %q, want 201 paid k1", i, w.Code, w.Body)
		}
	}
	rows, begins, rollbacks := ledgerState(s)
	if len(rows) != 1 || begins != 1 || rollbacks != 0 {
		t.Fatalf("rows %q, %d units begun, %d rolled back; want one row from one committed unit", rows, begins, rollbacks)
	}
}

// A response that is not kept rolls the unit back and frees the key.
func TestWorkStoreRollsBackAnErrorStatus(t *testing.T) {
	s := newLedgerStore(t)
	h := idem.New(s)(ledgerHandler(http.StatusInternalServerError))
	for i := 0; i < 2; i++ {
		if w := do(h, "POST", "/pay", "k1", `{}`); w.Code != http.StatusInternalServerError {
			t.Fatalf("request %d: %d, want the handler's 500 each time", i, w.Code)
		}
	}
	rows, begins, rollbacks := ledgerState(s)
	if len(rows) != 0 || begins != 2 || rollbacks != 2 {
		t.Fatalf("rows %q, %d units begun, %d rolled back; want no row, two units rolled back", rows, begins, rollbacks)
	}
}

// A commit that fails answers 503 response-not-recorded, keeps nothing and
// frees the key, so that the retry runs the handler again.
func TestWorkStoreFailedCommitIsNotRecordedAndRetrySafe(t *testing.T) {
	s := newLedgerStore(t)
	var ev events
	h := idem.New(s, idem.WithHook(ev.hook))(ledgerHandler(http.StatusCreated))
	s.FailCommit(errors.New("connection reset during COMMIT"))
	wantProblem(t, do(h, "POST", "/pay", "k1", `{}`), http.StatusServiceUnavailable, "response-not-recorded")
	if got := ev.last(); got.Outcome != idem.OutcomeStoreError || got.Stored {
		t.Fatalf("event %v stored=%v, want store-error, not stored", got.Outcome, got.Stored)
	}
	if rows, _, rollbacks := ledgerState(s); len(rows) != 0 || rollbacks != 1 {
		t.Fatalf("rows %q, %d rolled back; want no row, the unit rolled back", rows, rollbacks)
	}
	s.FailCommit(nil)
	if w := do(h, "POST", "/pay", "k1", `{}`); w.Code != http.StatusCreated {
		t.Fatalf("retry: %d %s, want 201 at once (the key was released)", w.Code, w.Body)
	}
	if rows, begins, _ := ledgerState(s); len(rows) != 1 || begins != 2 {
		t.Fatalf("rows %q after %d units, want one row", rows, begins)
	}
}

// A unit that cannot begin answers 503 store-unavailable without running
// the handler, and frees the key.
func TestWorkStoreBeginFailureRunsNothing(t *testing.T) {
	s := newLedgerStore(t)
	var p payments
	h := idem.New(s)(&p)
	s.FailBeginWork(errors.New("too many connections"))
	wantProblem(t, do(h, "POST", "/pay", "k1", `{}`), http.StatusServiceUnavailable, "store-unavailable")
	if n := p.runs.Load(); n != 0 {
		t.Fatalf("the handler ran %d times, want 0", n)
	}
	s.FailBeginWork(nil)
	if w := do(h, "POST", "/pay", "k1", `{}`); w.Code != http.StatusCreated {
		t.Fatalf("retry: %d %s, want 201 at once (the key was released)", w.Code, w.Body)
	}
}

// A panicking handler's unit is rolled back before the panic goes on.
func TestWorkStoreRollsBackOnPanic(t *testing.T) {
	s := newLedgerStore(t)
	h := idem.New(s)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }))
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not go on")
			}
		}()
		do(h, "POST", "/pay", "k1", `{}`)
	}()
	if _, begins, rollbacks := ledgerState(s); begins != 1 || rollbacks != 1 {
		t.Fatalf("%d units begun, %d rolled back; want the one rolled back", begins, rollbacks)
	}
}

// A Runner's work runs in the unit too; a failed work rolls it back.
func TestWorkStoreRunner(t *testing.T) {
	s := newLedgerStore(t)
	r, err := idem.NewRunner(s)
	if err != nil {
		t.Fatal(err)
	}
	work := func(fail bool) func(ctx context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) {
			if !worktest.Stage(ctx, "job") {
				return nil, errors.New("no unit of work")
			}
			if fail {
				return nil, errors.New("failed")
			}
			return []byte("done"), nil
		}
	}
	if _, err := r.Do(context.Background(), "job1", "fp", work(true)); err == nil || err.Error() != "failed" {
		t.Fatalf("failing work: %v", err)
	}
	for i := 0; i < 2; i++ {
		if res, err := r.Do(context.Background(), "job1", "fp", work(false)); err != nil || string(res) != "done" {
			t.Fatalf("call %d: %q %v", i, res, err)
		}
	}
	if rows, begins, rollbacks := ledgerState(s); len(rows) != 1 || begins != 2 || rollbacks != 1 {
		t.Fatalf("rows %q, %d begun, %d rolled back; want one row, one unit rolled back", rows, begins, rollbacks)
	}
}
