package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/idemgo/idem"
)

// DefaultSweepInterval is how often the background sweeper deletes expired
// records unless WithSweepInterval says otherwise.
const DefaultSweepInterval = time.Minute

// sweepBatch is how many rows one sweeper statement deletes at most, so that
// no statement holds many row locks or a long write lock.
const sweepBatch = 1000

// maxAttempts bounds the statements one Claim runs when the record of its
// key keeps changing under it (see Claim).
const maxAttempts = 5

// Store is an idem.Store on a SQL database. Create it with New, create its
// table with Migrate (or by hand, see Dialect.Schema), and stop its sweeper
// with Close. A Store is safe for concurrent use, and any number of Stores,
// in any number of processes, may share one table.
type Store struct {
	db      *sql.DB
	q       *queries
	dialect Dialect

	onSweepError func(error)
	cancel       context.CancelFunc // stops the sweeper
	done         chan struct{}      // closed when the sweeper has stopped
}

// Option configures a Store.
type Option func(*config)

type config struct {
	table        string
	sweep        time.Duration
	onSweepError func(error)
}

// WithTable sets the table the Store uses (default DefaultTable,
// "idem_keys"). name is a plain identifier, optionally qualified by a
// schema ("idem.keys" on PostgreSQL, an attached database on SQLite): ASCII
// letters, digits and underscores, not starting with a digit, at most 63
// characters per part. It is quoted in every statement, so its case is
// kept and keywords are allowed. New refuses any other name.
func WithTable(name string) Option {
	return func(c *config) { c.table = name }
}

// WithSweepInterval sets how often the Store's background sweeper deletes
// expired records (default DefaultSweepInterval), in batches of 1000 rows.
// Zero or less turns the sweeper off: expired records still count as absent
// and are overwritten by the next Claim of their key, and DeleteExpired
// removes them when called (for example from a cron job).
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) { c.sweep = d }
}

// WithSweepErrorHandler sets a function that the background sweeper calls
// with each error it meets (for example to log it). By default sweep errors
// are dropped; the next sweep tries again.
func WithSweepErrorHandler(f func(error)) Option {
	return func(c *config) { c.onSweepError = f }
}

// New returns a Store that keeps its records in db, speaking dialect. It
// checks its arguments but does not touch the database; call Migrate to
// create the table. Unless WithSweepInterval turns it off, New starts a
// background sweeper: call Close to stop it. The Store never closes db.
func New(db *sql.DB, dialect Dialect, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("sqlstore: New: nil *sql.DB")
	}
	c := config{table: DefaultTable, sweep: DefaultSweepInterval}
	for _, o := range opts {
		o(&c)
	}
	q, err := dialect.queries(c.table)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		db:           db,
		q:            q,
		dialect:      dialect,
		onSweepError: c.onSweepError,
		cancel:       cancel,
		done:         make(chan struct{}),
	}
	if c.sweep > 0 {
		go s.sweepLoop(ctx, c.sweep)
	} else {
		close(s.done)
	}
	return s, nil
}

// Close stops the background sweeper and waits for it to exit. A batch
// under way is left to finish (it is bounded by sweepBatchTimeout), so that
// no sweep statement reaches the database after Close has returned. It
// does not close the *sql.DB; the Store stays usable. Close is safe to call
// more than once.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// sweepBatchTimeout bounds one batch of the background sweeper.
const sweepBatchTimeout = 30 * time.Second

func (s *Store) sweepLoop(stop context.Context, every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop.Done():
			return
		case <-t.C:
			s.sweep(stop)
		}
	}
}

// sweep deletes expired records in batches until a batch comes back short
// or stop is done. A batch is not cancelled by stop: a statement cancelled
// by the client may still run on the server after the client has given up.
func (s *Store) sweep(stop context.Context) {
	for stop.Err() == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(stop), sweepBatchTimeout)
		n, err := s.DeleteExpired(ctx, sweepBatch)
		cancel()
		if err != nil {
			if stop.Err() == nil && s.onSweepError != nil {
				s.onSweepError(err)
			}
			return
		}
		if n < sweepBatch {
			return
		}
	}
}

// Migrate creates the Store's table and its index on expires_at if they do
// not exist, in one transaction. It leaves an existing table as it is and
// may run any number of times, from several processes at once (on
// PostgreSQL and MySQL it takes an advisory lock for the duration).
func (s *Store) Migrate(ctx context.Context) error {
	if s.q.unlock != "" {
		return s.migrateLocked(ctx)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if s.q.lock != "" {
		if _, err := tx.ExecContext(ctx, s.q.lock, s.q.lockKey); err != nil {
			return fmt.Errorf("sqlstore: migrate: %w", err)
		}
	}
	for _, stmt := range s.q.schema {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("sqlstore: migrate: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	return nil
}

// migrateLocked is Migrate on a database whose DDL commits on its own
// (MySQL): on one connection, under a named lock that belongs to that
// connection. If anything fails, the connection is closed rather than
// returned to the pool, which releases the lock whatever state the
// session is in.
func (s *Store) migrateLocked(ctx context.Context) (err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	defer func() {
		if err != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn }) //nolint:errcheck // discards conn
		}
		conn.Close()
	}()
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, s.q.lock, s.q.bind(s.q.lock, []any{s.q.lockKey})...).Scan(&got); err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	if got.Int64 != 1 {
		return fmt.Errorf("sqlstore: migrate: the lock %q was not granted (GET_LOCK returned %v); another Migrate may be stuck", s.q.lockKey, got)
	}
	for _, stmt := range s.q.schema {
		if _, err := conn.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("sqlstore: migrate: %w", err)
		}
	}
	if err := conn.QueryRowContext(ctx, s.q.unlock, s.q.bind(s.q.unlock, []any{s.q.lockKey})...).Scan(&got); err != nil {
		return fmt.Errorf("sqlstore: migrate: releasing the lock: %w", err)
	}
	return nil
}

// DeleteExpired deletes up to limit expired records (every expired record
// if limit is zero or less) and returns how many it deleted. It picks them
// through the index on expires_at, so a call costs in proportion to what
// it deletes. On PostgreSQL, rows that another DeleteExpired is deleting at
// the same time are skipped rather than waited for.
func (s *Store) DeleteExpired(ctx context.Context, limit int) (int64, error) {
	arg := s.q.noLimit
	if limit > 0 {
		arg = int64(limit)
	}
	res, err := s.db.ExecContext(ctx, s.q.sweep, s.q.bind(s.q.sweep, []any{arg})...)
	if err != nil {
		return 0, fmt.Errorf("sqlstore: delete expired: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlstore: delete expired: %w", err)
	}
	return n, nil
}

// Claim implements idem.Store. On PostgreSQL it runs one statement, which
// reads a live record without writing or locking it; on SQLite and MySQL a
// read, and a write only when the key is free (see the package
// documentation). When
// the record of key changes while Claim runs (a concurrent Claim commits
// first, a record is released or expires), Claim reads the record as it is
// now, and claims again if that record is gone too, at most 5 times. A
// statement that fails with a serialization failure or a deadlock is run
// again too, within the same 5 attempts; when they run out, the error
// wraps the last such failure.
func (s *Store) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	if err := s.checkLengths(key, token, fingerprint); err != nil {
		return nil, err
	}
	k := []byte(key)
	read := s.q.readFirst
	var failure error // the last serialization failure or deadlock
	for i := 0; i < maxAttempts; i++ {
		if read {
			_, rec, err := s.queryRecord(ctx, s.q.read, k)
			if err != nil {
				if retryable(err) && ctx.Err() == nil {
					failure = err
					continue
				}
				return nil, fmt.Errorf("sqlstore: claim: %w", err)
			}
			if rec != nil {
				return rec, nil
			}
		}
		var (
			won bool
			rec *idem.Record
			err error
		)
		if s.q.takeover != "" {
			won, err = s.claimExec(ctx, k, []byte(token), []byte(fingerprint), s.duration(lease))
		} else {
			won, rec, err = s.queryRecord(ctx, s.q.claim, k, []byte(token), []byte(fingerprint), s.duration(lease))
		}
		if err != nil {
			if retryable(err) && ctx.Err() == nil {
				failure = err
				continue
			}
			return nil, fmt.Errorf("sqlstore: claim: %w", err)
		}
		if won {
			return nil, nil
		}
		if rec != nil {
			return rec, nil
		}
		read = true
	}
	if failure != nil {
		return nil, fmt.Errorf("sqlstore: claim: giving up after %d attempts: %w", maxAttempts, failure)
	}
	return nil, fmt.Errorf("sqlstore: claim: the record changed under %d attempts in a row; giving up", maxAttempts)
}

// claimExec runs the dialect's claim (an insert that does nothing if the
// key exists) and, if that changed no row, its takeover of an expired
// record. It reports whether either changed a row.
func (s *Store) claimExec(ctx context.Context, args ...any) (bool, error) {
	for _, query := range []string{s.q.claim, s.q.takeover} {
		res, err := s.db.ExecContext(ctx, query, s.q.bind(query, args)...)
		if err != nil {
			return false, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return false, err
		}
		if n > 0 {
			return true, nil
		}
	}
	return false, nil
}

// checkLengths refuses a key, token or fingerprint longer than the
// dialect's columns hold.
func (s *Store) checkLengths(key, token, fingerprint string) error {
	if s.q.maxKey > 0 && len(key) > s.q.maxKey {
		return fmt.Errorf("sqlstore: claim: the key is %d bytes long; %v indexes at most %d", len(key), s.dialect, s.q.maxKey)
	}
	if s.q.maxField > 0 && (len(token) > s.q.maxField || len(fingerprint) > s.q.maxField) {
		return fmt.Errorf("sqlstore: claim: the token or fingerprint is longer than the %d bytes %v stores", s.q.maxField, s.dialect)
	}
	return nil
}

// queryRecord runs a statement that returns the record columns (see
// queries). It reports won, or the live record the statement returned, or
// neither when the statement returned no row or a record already expired
// (a stale read).
func (s *Store) queryRecord(ctx context.Context, query string, args ...any) (won bool, rec *idem.Record, err error) {
	var (
		version, state, left int64
		token, fp, result    []byte
	)
	err = s.db.QueryRowContext(ctx, query, s.q.bind(query, args)...).Scan(&won, &version, &state, &token, &fp, &left, &result)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil, nil
	case err != nil:
		return false, nil, err
	case won:
		return true, nil, nil
	case left <= 0:
		return false, nil, nil
	case version != formatVersion:
		return false, nil, fmt.Errorf("the record has format version %d, this release reads version %d: %w", version, formatVersion, idem.ErrCorruptRecord)
	}
	rec = &idem.Record{Fingerprint: string(fp), ExpiresIn: time.Duration(left) * s.q.unit}
	switch state {
	case stateInProgress:
		rec.State = idem.StateInProgress
		rec.Token = string(token)
		rec.LeaseLeft = rec.ExpiresIn
	case stateCompleted:
		rec.State = idem.StateCompleted
		rec.Result = nonNil(result)
	default:
		return false, nil, fmt.Errorf("the record has unknown state %d: %w", state, idem.ErrCorruptRecord)
	}
	return false, rec, nil
}

// Complete implements idem.Store with one UPDATE fenced by the token.
func (s *Store) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	return s.execFenced(ctx, s.db, true, "complete", s.q.finish, []byte(key), []byte(token), nonNil(result), s.duration(ttl))
}

// CompleteTx is Complete run inside tx, for a caller that writes its own
// data in the same database: the result becomes visible, and the key
// completed, exactly when tx commits; if tx rolls back, the record stays in
// progress and its lease runs on. Until tx ends, the record's row is locked,
// so Renew, Release and Claims that would take over the key wait for it.
//
// It returns idem.ErrLockLost, changing nothing, if the caller no longer
// owns the key; the caller should then roll tx back, since another owner
// may be running the same work. tx should use the READ COMMITTED isolation
// level (PostgreSQL's default); under a stricter level a concurrent Renew
// of the record can make the statement fail.
func (s *Store) CompleteTx(ctx context.Context, tx *sql.Tx, key, token string, result []byte, ttl time.Duration) error {
	if tx == nil {
		return errors.New("sqlstore: complete: nil *sql.Tx")
	}
	return s.execFenced(ctx, tx, false, "complete", s.q.finish, []byte(key), []byte(token), nonNil(result), s.duration(ttl))
}

// Release implements idem.Store with one DELETE fenced by the token.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.execFenced(ctx, s.db, true, "release", s.q.delete, []byte(key), []byte(token))
}

// Renew implements idem.Store with one UPDATE fenced by the token.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	return s.execFenced(ctx, s.db, true, "renew", s.q.renew, []byte(key), []byte(token), s.duration(lease))
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// execFenced runs a statement that changes one row only if the caller owns
// it, and returns idem.ErrLockLost if it changed none. A statement run on
// its own (retry) is run again after a serialization failure, which changed
// nothing.
func (s *Store) execFenced(ctx context.Context, db execer, retry bool, op, query string, args ...any) error {
	var (
		res sql.Result
		err error
	)
	for i := 0; i < maxAttempts; i++ {
		res, err = db.ExecContext(ctx, query, s.q.bind(query, args)...)
		if err == nil || !retry || !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("sqlstore: %s: %w", op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlstore: %s: %w", op, err)
	}
	if n == 0 {
		return idem.ErrLockLost
	}
	return nil
}

// duration converts d to the dialect's unit, rounding up so that a positive
// lease never becomes zero; a negative one counts as zero.
func (s *Store) duration(d time.Duration) int64 {
	d = max(d, 0)
	n := d / s.q.unit
	if d%s.q.unit != 0 {
		n++
	}
	return int64(n)
}

// nonNil keeps an empty result from being stored as NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// retryable reports whether err is a serialization failure or deadlock
// (SQLSTATE 40001, or PostgreSQL's 40P01): the statement changed nothing
// and may run again. On PostgreSQL these happen only when the server's
// default isolation level is stricter than READ COMMITTED; on MySQL InnoDB
// may choose a claim as the victim of a deadlock with the sweeper or a
// caller's transaction. Drivers expose the code through a SQLState method
// (pgx's *pgconn.PgError does) or, as github.com/go-sql-driver/mysql's
// *MySQLError does, a SQLState field of 5 bytes.
func retryable(err error) bool {
	var code string
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		code = e.SQLState()
	} else {
		code = sqlStateField(err)
	}
	return code == "40001" || code == "40P01"
}

// sqlStateField returns the SQLState field of the first error in err's
// chain that is a struct (or pointer to one) with a [5]byte field of that
// name, or "".
func sqlStateField(err error) string {
	for ; err != nil; err = errors.Unwrap(err) {
		v := reflect.ValueOf(err)
		if v.Kind() == reflect.Pointer {
			v = v.Elem() // the zero Value, no struct, for a nil pointer
		}
		if v.Kind() != reflect.Struct {
			continue
		}
		f := v.FieldByName("SQLState")
		if f.IsValid() && f.Kind() == reflect.Array && f.Len() == 5 && f.Type().Elem().Kind() == reflect.Uint8 {
			var b [5]byte
			for i := range b {
				b[i] = byte(f.Index(i).Uint())
			}
			return string(b[:])
		}
	}
	return ""
}

// Lookup implements idem.Inspector with one SELECT that neither writes nor
// locks the record.
func (s *Store) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	var (
		won                  bool
		version, state, left int64
		token, fp, result    []byte
	)
	err := s.db.QueryRowContext(ctx, s.q.read, s.q.bind(s.q.read, []any{[]byte(key)})...).Scan(&won, &version, &state, &token, &fp, &left, &result)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("sqlstore: lookup: %w", err)
	case left <= 0:
		return nil, nil
	case version != formatVersion:
		return nil, fmt.Errorf("sqlstore: lookup: the record has format version %d, this release reads version %d: %w", version, formatVersion, idem.ErrCorruptRecord)
	}
	ks := &idem.KeyState{Fingerprint: string(fp), ExpiresIn: time.Duration(left) * s.q.unit}
	switch state {
	case stateInProgress:
		ks.State = idem.StateInProgress
	case stateCompleted:
		ks.State = idem.StateCompleted
		ks.Result = nonNil(result)
	default:
		return nil, fmt.Errorf("sqlstore: lookup: the record has unknown state %d: %w", state, idem.ErrCorruptRecord)
	}
	return ks, nil
}

// Delete implements idem.Inspector with one DELETE of the key's live row.
// An expired row is left to the sweeper: it counts as absent already.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.q.remove, s.q.bind(s.q.remove, []any{[]byte(key)})...)
	if err != nil {
		return false, fmt.Errorf("sqlstore: delete: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("sqlstore: delete: %w", err)
	}
	return n > 0, nil
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)
