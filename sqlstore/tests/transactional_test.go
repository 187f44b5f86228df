package sqlstore_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// ledger is a payments table next to a fixture's records table.
type ledger struct {
	f     fixture
	d     sqlstore.Dialect
	table string
}

func (b backend) ledger(t *testing.T, f fixture, extra string) ledger {
	t.Helper()
	name := f.table + "_payments"
	if _, err := f.db.ExecContext(testCtx(t), `CREATE TABLE `+name+` (idem_key varchar(200) NOT NULL, ref varchar(64) NOT NULL`+extra+`)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.db.Exec(`DROP TABLE ` + name) })
	return ledger{f: f, d: b.dialect, table: name}
}

// count returns how many payment rows key has, as committed.
func (l ledger) count(t *testing.T, key string) int {
	t.Helper()
	var n int
	if err := l.f.db.QueryRowContext(testCtx(t), `SELECT count(*) FROM `+l.table+` WHERE idem_key = `+ph(l.d, 1), key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// handler writes a payment row in the request's transaction, then waits
// for gate (if not nil) and answers status. ref names the row.
func (l ledger) handler(t *testing.T, status int, ref string, started chan<- struct{}, gate <-chan struct{}) http.Handler {
	insert := `INSERT INTO ` + l.table + ` (idem_key, ref) VALUES (` + ph(l.d, 1) + `, ` + ph(l.d, 2) + `)`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tx, ok := sqlstore.TxFromContext(r.Context())
		if !ok {
			http.Error(w, "no transaction", http.StatusTeapot)
			return
		}
		key, _ := idem.KeyFromContext(r.Context())
		if _, err := tx.ExecContext(r.Context(), insert, key, ref); err != nil {
			t.Errorf("insert: %v", err)
			http.Error(w, "insert failed", http.StatusInternalServerError)
			return
		}
		if started != nil {
			started <- struct{}{}
		}
		if gate != nil {
			<-gate
		}
		w.WriteHeader(status)
		io.WriteString(w, "paid "+key)
	})
}

func post(h http.Handler, key string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("POST", "/payments", strings.NewReader(`{"amount":1}`))
	r.Header.Set("Idempotency-Key", key)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// In transactional mode the handler's row and the completed record commit
// together: a kept response leaves one row and replays; a 500 leaves no
// row and frees the key.
func TestTransactionalCommitsRowsWithTheRecord(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		l := b.ledger(t, f, "")
		mw := idem.New(f.store.Transactional(nil))
		ok := mw(l.handler(t, http.StatusCreated, "r", nil, nil))
		for i := 0; i < 2; i++ {
			if w := post(ok, "k-ok"); w.Code != http.StatusCreated || w.Body.String() != "paid k-ok" {
				t.Fatalf("request %d: %d %q", i, w.Code, w.Body)
			}
		}
		if n := l.count(t, "k-ok"); n != 1 {
			t.Fatalf("%d rows for k-ok, want 1", n)
		}
		failing := mw(l.handler(t, http.StatusInternalServerError, "r", nil, nil))
		for i := 0; i < 2; i++ {
			if w := post(failing, "k-fail"); w.Code != http.StatusInternalServerError {
				t.Fatalf("request %d: %d %q, want the handler's 500 each time", i, w.Code, w.Body)
			}
		}
		if n := l.count(t, "k-fail"); n != 0 {
			t.Fatalf("%d rows for a failed payment, want its writes rolled back", n)
		}
		if n := f.rows(t); n != 1 {
			t.Fatalf("%d records, want k-ok's only (k-fail released)", n)
		}
	})
}

// A duplicate of a request whose transaction is open gets 409 at once: the
// claim was committed on its own and the transaction has not touched the
// record yet, so the duplicate does not wait for its locks.
func TestTransactionalDuplicateDoesNotWaitForTheTransaction(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		l := b.ledger(t, f, "")
		started, gate := make(chan struct{}, 1), make(chan struct{})
		h := idem.New(f.store.Transactional(nil))(l.handler(t, http.StatusCreated, "r", started, gate))
		first := make(chan *httptest.ResponseRecorder, 1)
		go func() { first <- post(h, "k") }()
		<-started
		dup := make(chan *httptest.ResponseRecorder, 1)
		go func() { dup <- post(h, "k") }()
		select {
		case w := <-dup:
			if w.Code != http.StatusConflict {
				t.Errorf("duplicate: %d %s, want 409", w.Code, w.Body)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("the duplicate got no answer while the first request's transaction was open")
		}
		close(gate)
		if w := <-first; w.Code != http.StatusCreated {
			t.Fatalf("first: %d %s", w.Code, w.Body)
		}
		select {
		case <-dup: // answered after the gate opened: already reported
		default:
		}
		if n := l.count(t, "k"); n != 1 {
			t.Fatalf("%d rows, want 1", n)
		}
	})
}

// A transaction that outlives its owner's lease cannot complete the key,
// whether or not another owner took it over meanwhile: Commit reports
// ErrLockLost and nothing of the transaction is kept.
func TestTransactionalLostLeaseCannotComplete(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		f := b.fixture(t)
		l := b.ledger(t, f, "")
		ctx := testCtx(t)
		ts := f.store.Transactional(nil)
		if rec, err := ts.Claim(ctx, "k", "old", "fp", 300*time.Millisecond); err != nil || rec != nil {
			t.Fatalf("Claim: %v %v", rec, err)
		}
		work, err := ts.BeginWork(ctx, "k", "old")
		if err != nil {
			t.Fatal(err)
		}
		defer work.Rollback()
		tx, _ := sqlstore.TxFromContext(work.Context(ctx))
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+l.table+` (idem_key, ref) VALUES (`+ph(b.dialect, 1)+`, 'old')`, "k"); err != nil {
			t.Fatal(err)
		}
		// Wait (polling with reads, which never wait for the transaction)
		// until the lease has run out.
		deadline := time.Now().Add(20 * time.Second)
		for {
			ks, err := ts.Lookup(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			if ks == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the lease never ran out")
			}
			time.Sleep(20 * time.Millisecond)
		}
		takenOver := false
		if b.dialect != sqlstore.SQLite {
			// SQLite's one writer is the open transaction: no takeover can
			// happen until it ends.
			if rec, err := ts.Claim(ctx, "k", "new", "fp", time.Minute); err != nil || rec != nil {
				t.Fatalf("takeover: %v %v", rec, err)
			}
			takenOver = true
		}
		if err := work.Commit(ctx, []byte("old result"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
			t.Fatalf("Commit after the lease ran out: %v, want ErrLockLost", err)
		}
		if err := work.Rollback(); err != nil {
			t.Fatal(err)
		}
		if n := l.count(t, "k"); n != 0 {
			t.Fatalf("%d rows of the old owner kept, want 0", n)
		}
		ks, err := ts.Lookup(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if takenOver && (ks == nil || ks.State != idem.StateInProgress) {
			t.Fatalf("the new owner's record is %+v, want in progress", ks)
		}
		if !takenOver && ks != nil {
			t.Fatalf("record %+v, want none (expired)", ks)
		}
	})
}

// On PostgreSQL a commit that fails (here a deferred constraint checked at
// COMMIT) answers 503 response-not-recorded, keeps no row and no record,
// and frees the key at once.
func TestTransactionalFailedCommitKeepsNothing(t *testing.T) {
	b := backends[1]
	f := b.fixture(t)
	l := b.ledger(t, f, `, UNIQUE (ref) DEFERRABLE INITIALLY DEFERRED`)
	h := idem.New(f.store.Transactional(nil))(l.handler(t, http.StatusCreated, "same-ref", nil, nil))
	if w := post(h, "k1"); w.Code != http.StatusCreated {
		t.Fatalf("first payment: %d %s", w.Code, w.Body)
	}
	w := post(h, "k2") // the same ref: COMMIT fails
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "response-not-recorded") {
		t.Fatalf("failed commit: %d %s, want 503 response-not-recorded", w.Code, w.Body)
	}
	if n := l.count(t, "k2"); n != 0 {
		t.Fatalf("%d rows for k2, want 0", n)
	}
	ks, err := f.store.Lookup(testCtx(t), idem.StoreKey("", "k2"))
	if err != nil || ks != nil {
		t.Fatalf("k2's record: %+v %v, want none (released)", ks, err)
	}
	if n := f.rows(t); n != 1 {
		t.Fatalf("%d records, want k1's only", n)
	}
}

// A handler outside transactional mode finds no transaction.
func TestTxFromContextOutsideTransactionalMode(t *testing.T) {
	if tx, ok := sqlstore.TxFromContext(context.Background()); ok || tx != nil {
		t.Fatalf("TxFromContext = %v, %v outside the mode", tx, ok)
	}
}
