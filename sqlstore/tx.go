package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"

	"github.com/idemgo/idem"
)

// TxStore is a Store in transactional mode: an idem.WorkStore. Given to
// the middleware (or a Runner), it runs every handler that owns a key
// inside a transaction on the Store's database, which the handler finds
// with TxFromContext and writes its rows in. When the handler returns, its
// response is recorded in the same transaction (fenced by the owner's
// token, as CompleteTx does) and the transaction commits; only then is the
// response sent. The handler's rows and the completed record are committed
// together or not at all:
//
//   - A response that is not recorded (an error status that the response
//     policy does not keep, a client that hung up, a panic) rolls the
//     transaction back and releases the key.
//   - A commit that fails, or an owner whose lease was lost meanwhile (an
//     owner that lost its key cannot complete it inside the transaction
//     either), rolls back: the client gets 503 response-not-recorded and
//     nothing of the request was kept, so its retry is safe.
//   - A process killed before the commit leaves neither the rows nor the
//     record; the key comes free when its lease ends.
//
// The claim is committed on its own before the transaction begins, and
// the transaction touches the record only at the end, so a duplicate of a
// running request gets 409 at once rather than waiting for the
// transaction. Each running handler holds a connection of the pool for
// its whole run. On SQLite a transaction holds the database's write lock
// (SQLiteDSN begins transactions IMMEDIATE): other writers, claims of
// other keys and lease renewals included, wait for it up to busy_timeout,
// so keep such handlers short (well under the busy timeout and the lock
// TTL), and never limit the pool to one connection.
//
// Get one from Store.Transactional. Its other methods are the Store's.
type TxStore struct {
	*Store
	opts *sql.TxOptions
}

// Transactional returns s in transactional mode (see TxStore). opts are
// the options of each transaction; nil means READ COMMITTED on PostgreSQL
// and MySQL (what CompleteTx needs) and the driver's default on SQLite.
func (s *Store) Transactional(opts *sql.TxOptions) *TxStore {
	if opts == nil && s.dialect != SQLite {
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	return &TxStore{Store: s, opts: opts}
}

// DB returns the database the Store keeps its records in.
func (s *Store) DB() *sql.DB { return s.db }

// Dialect returns the dialect the Store speaks.
func (s *Store) Dialect() Dialect { return s.dialect }

// BeginWork implements idem.WorkStore: it takes a connection from the pool
// (within ctx) and begins a transaction on it. The transaction is not
// bound to ctx: it ends when the middleware commits or rolls it back.
func (s *TxStore) BeginWork(ctx context.Context, key, token string) (idem.Work, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: begin: %w", err)
	}
	tx, err := conn.BeginTx(context.WithoutCancel(ctx), s.opts)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("sqlstore: begin: %w", err)
	}
	return &txWork{s: s.Store, conn: conn, tx: tx, key: key, token: token}, nil
}

// txWork is the transaction of one owner of a key.
type txWork struct {
	s          *Store
	conn       *sql.Conn
	tx         *sql.Tx
	key, token string
	once       sync.Once
}

type txKey struct{}

// TxFromContext returns the transaction that a TxStore began for the
// request (or Runner work) that ctx belongs to. ok is false outside such
// work, for example in a request run without protection by
// idem.WithFailOpen: a handler that needs the transaction should then fail
// rather than write outside it.
//
// The handler must neither commit nor roll back tx: the middleware does,
// after recording the response.
func TxFromContext(ctx context.Context) (tx *sql.Tx, ok bool) {
	tx, ok = ctx.Value(txKey{}).(*sql.Tx)
	return tx, ok
}

func (w *txWork) Context(ctx context.Context) context.Context {
	return context.WithValue(ctx, txKey{}, w.tx)
}

func (w *txWork) Commit(ctx context.Context, result []byte, ttl time.Duration) error {
	if err := w.s.CompleteTx(ctx, w.tx, w.key, w.token, result, ttl); err != nil {
		return err
	}
	if err := w.tx.Commit(); err != nil {
		return fmt.Errorf("sqlstore: commit: %w", err)
	}
	w.end()
	return nil
}

func (w *txWork) Rollback() error {
	err := w.tx.Rollback()
	w.end()
	if err != nil && err != sql.ErrTxDone {
		return fmt.Errorf("sqlstore: rollback: %w", err)
	}
	return nil
}

// end returns the connection to the pool.
func (w *txWork) end() { w.once.Do(func() { w.conn.Close() }) }

var _ idem.WorkStore = (*TxStore)(nil)
