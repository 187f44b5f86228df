package sqlstore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// sweepFixture is a migrated SQLite table opened through a faultConnector,
// with no sweeper of its own.
func sweepFixture(t *testing.T) (fixture, *faultConnector) {
	t.Helper()
	return backends[0].faultFixture(t)
}

// Without an error handler the sweeper drops its errors and sweeps again
// at the next tick.
func TestSweepErrorsWithoutHandlerAreDropped(t *testing.T) {
	f, fc := sweepFixture(t)
	third := make(chan struct{})
	var sweeps atomic.Int64
	fc.inject(func(q string) error {
		if !isSweep(q) {
			return nil
		}
		if sweeps.Add(1) == 3 {
			close(third)
		}
		return errors.New("injected sweep failure")
	})
	defer fc.inject(nil)
	s := newStore(t, f.db, sqlstore.SQLite, f.table, sqlstore.WithSweepInterval(time.Millisecond))
	select {
	case <-third: // two failed sweeps are behind it
	case <-time.After(10 * time.Second):
		t.Fatalf("the sweeper ran %d statements in 10s, want 3", sweeps.Load())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// sweepDB is a database, in memory, that knows only the statements of
// the sweeper: each deletes the next count of deleted, or none once they
// are used up. With hold set, each waits for hold to be closed first.
// Being in memory, it runs in a synctest bubble, whose clock is the
// sweeper's.
type sweepDB struct {
	deleted []int64
	hold    chan struct{}

	mu        sync.Mutex
	limits    []int64 // the limit of each statement run
	cancelled bool    // a statement's context was done when it ended
}

func (d *sweepDB) Connect(context.Context) (driver.Conn, error) { return sweepConn{d}, nil }
func (d *sweepDB) Driver() driver.Driver                        { return nil }

// statements returns the limits of the statements run so far.
func (d *sweepDB) statements() []int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.limits)
}

type sweepConn struct{ d *sweepDB }

func (c sweepConn) Prepare(query string) (driver.Stmt, error) {
	if !isSweep(query) {
		return nil, errors.New("sweepDB: not a sweep statement: " + query)
	}
	return sweepStmt(c), nil
}
func (c sweepConn) Close() error              { return nil }
func (c sweepConn) Begin() (driver.Tx, error) { return nil, errors.New("sweepDB: no transactions") }

type sweepStmt struct{ d *sweepDB }

func (s sweepStmt) Close() error  { return nil }
func (s sweepStmt) NumInput() int { return 1 }
func (s sweepStmt) Exec([]driver.Value) (driver.Result, error) {
	return nil, errors.New("sweepDB: Exec without a context")
}
func (s sweepStmt) Query([]driver.Value) (driver.Rows, error) {
	return nil, errors.New("sweepDB: no queries")
}

func (s sweepStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	d := s.d
	if d.hold != nil {
		<-d.hold
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	limit, _ := args[0].Value.(int64)
	d.limits = append(d.limits, limit)
	d.cancelled = d.cancelled || ctx.Err() != nil
	var n int64
	if len(d.deleted) > 0 {
		n, d.deleted = d.deleted[0], d.deleted[1:]
	}
	return driver.RowsAffected(n), nil
}

// newSweeping returns a Store over d that sweeps every minute; it
// belongs to the bubble it is made in.
func newSweeping(t *testing.T, d *sweepDB) *sqlstore.Store {
	db := sql.OpenDB(d)
	t.Cleanup(func() { db.Close() })
	s, err := sqlstore.New(db, sqlstore.SQLite, sqlstore.WithSweepInterval(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A sweep deletes batches of 1000 rows, one after the other, until a
// batch comes back short; then it waits for the next tick.
func TestSweepRunsBatchesUntilOneIsShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &sweepDB{deleted: []int64{1000, 1000, 7}}
		newSweeping(t, d)
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		if got, want := d.statements(), []int64{1000, 1000, 1000}; !slices.Equal(got, want) {
			t.Fatalf("the first sweep ran statements with limits %v, want %v", got, want)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(d.statements()); got != 4 {
			t.Fatalf("%d statements after two sweeps, want 4 (the second finds nothing)", got)
		}
	})
}

// Close waits for a sweep batch under way, which it does not cancel: the
// batch finishes, and no sweep statement runs after Close has returned.
func TestCloseWaitsForSweepBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &sweepDB{deleted: []int64{1000}, hold: make(chan struct{})}
		s := newSweeping(t, d)
		time.Sleep(time.Minute + time.Second)
		synctest.Wait() // the first batch waits for hold
		closed := make(chan struct{})
		go func() {
			s.Close()
			close(closed)
		}()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while a sweep batch was running")
		default:
		}
		close(d.hold)
		<-closed
		if got := d.statements(); len(got) != 1 || d.cancelled {
			t.Fatalf("statements with limits %v, cancelled: %v; want the batch under way alone, not cancelled", got, d.cancelled)
		}
	})
}
