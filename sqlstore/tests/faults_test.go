package sqlstore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// faultConnector opens connections on which every statement is prepared
// and then run, and goes first through the hook, if one is set: a hook
// that returns an error fails the statement with it before it reaches the
// database, as a driver reports what the server answered; a hook may also
// block, to hold a statement where the test wants it. It counts the
// statements the Store runs (each Exec and Query, not the preparing),
// those the hook failed included; with no hook it only counts. Forcing
// every statement through a prepared one changes no count: a driver that
// could run a statement directly would run it once either way.
type faultConnector struct {
	driver.Connector
	mu    sync.Mutex
	hook  func(query string) error
	row   func(dest []driver.Value) // rewrites each row read, if set
	stmts atomic.Int64
}

// openFaulty opens dsn through a faultConnector.
func (b backend) openFaulty(t testing.TB, dsn string) (*sql.DB, *faultConnector) {
	t.Helper()
	c := &faultConnector{Connector: b.connector(t, dsn)}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// connector returns the driver's connector for dsn.
func (b backend) connector(t testing.TB, dsn string) driver.Connector {
	t.Helper()
	plain, err := sql.Open(b.driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	drv := plain.Driver()
	plain.Close()
	if dc, ok := drv.(driver.DriverContext); ok {
		c, err := dc.OpenConnector(dsn)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return dsnConnector{drv: drv, dsn: dsn}
}

// inject sets the hook (nil: none) for the statements that start from now.
func (c *faultConnector) inject(hook func(query string) error) {
	c.mu.Lock()
	c.hook = hook
	c.mu.Unlock()
}

// rewrite sets the function (nil: none) that rewrites every row read from
// now on, as a driver would hand it to database/sql.
func (c *faultConnector) rewrite(row func(dest []driver.Value)) {
	c.mu.Lock()
	c.row = row
	c.mu.Unlock()
}

// before runs the hook for query.
func (c *faultConnector) before(query string) error {
	c.stmts.Add(1)
	c.mu.Lock()
	hook := c.hook
	c.mu.Unlock()
	if hook == nil {
		return nil
	}
	return hook(query)
}

func (c *faultConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: conn, c: c}, nil
}

// faultConn has no ExecContext or QueryContext: database/sql prepares
// every statement, and the hook runs when the statement runs.
type faultConn struct {
	driver.Conn
	c *faultConnector
}

func (c *faultConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var (
		st  driver.Stmt
		err error
	)
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = c.Conn.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &faultStmt{Stmt: st, query: query, c: c.c}, nil
}

func (c *faultConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	//lint:ignore SA1019 the fallback for drivers without BeginTx
	return c.Conn.Begin()
}

func (c *faultConn) CheckNamedValue(v *driver.NamedValue) error {
	if ch, ok := c.Conn.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(v)
	}
	return driver.ErrSkip
}

func (c *faultConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *faultConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *faultConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

type faultStmt struct {
	driver.Stmt
	query string
	c     *faultConnector
}

func (s *faultStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.c.before(s.query); err != nil {
		return nil, err
	}
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		return e.ExecContext(ctx, args)
	}
	return nil, errors.New("faultStmt: the driver's statement lacks ExecContext")
}

func (s *faultStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.c.before(s.query); err != nil {
		return nil, err
	}
	q, ok := s.Stmt.(driver.StmtQueryContext)
	if !ok {
		return nil, errors.New("faultStmt: the driver's statement lacks QueryContext")
	}
	rows, err := q.QueryContext(ctx, args)
	if err != nil {
		return nil, err
	}
	s.c.mu.Lock()
	row := s.c.row
	s.c.mu.Unlock()
	if row == nil {
		return rows, nil
	}
	return rewrittenRows{Rows: rows, row: row}, nil
}

// rewrittenRows hands each row to row before database/sql scans it.
type rewrittenRows struct {
	driver.Rows
	row func(dest []driver.Value)
}

func (r rewrittenRows) Next(dest []driver.Value) error {
	if err := r.Rows.Next(dest); err != nil {
		return err
	}
	r.row(dest)
	return nil
}
