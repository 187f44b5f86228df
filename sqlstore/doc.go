// Package sqlstore is an idem.Store on a SQL database through database/sql:
// PostgreSQL, SQLite, and MySQL or MariaDB. Any number of processes may
// share one table.
//
//	db, err := sql.Open("pgx", "postgres://app@db/app") // import _ "github.com/jackc/pgx/v5/stdlib"
//	...
//	store, err := sqlstore.New(db, sqlstore.Postgres)
//	...
//	defer store.Close() // stops the sweeper; db stays open
//	if err := store.Migrate(ctx); err != nil { ... }
//	mux.Handle("POST /payments", idem.New(store)(payments))
//
// The package imports no driver: bring your own (github.com/jackc/pgx/v5/stdlib,
// modernc.org/sqlite, github.com/mattn/go-sqlite3, github.com/go-sql-driver/mysql,
// …) and pass its *sql.DB.
// New does not touch the database; Migrate creates the table.
//
// # The table
//
// One row per key (default table "idem_keys", see WithTable). On
// PostgreSQL:
//
//	CREATE TABLE IF NOT EXISTS "idem_keys" (
//	    key         bytea       PRIMARY KEY,  -- the idempotency key (scope|key), byte for byte
//	    state       smallint    NOT NULL,     -- 1 in progress, 2 completed
//	    version     smallint    NOT NULL,     -- record format version, 1
//	    token       bytea       NOT NULL,     -- owner token while in progress, empty once completed
//	    fingerprint bytea       NOT NULL,     -- request fingerprint
//	    expires_at  timestamptz NOT NULL,     -- lease end (in progress) or retention end (completed)
//	    created_at  timestamptz NOT NULL,     -- when the current owner claimed the key
//	    result      bytea                     -- stored result once completed, else NULL
//	);
//	CREATE INDEX IF NOT EXISTS "idem_keys_expires_at_idx" ON "idem_keys" (expires_at);
//
// On SQLite the same columns are BLOB and INTEGER, times being Unix
// milliseconds. On MySQL the key is VARBINARY(3072), token and fingerprint
// BLOB, the result LONGBLOB and times DATETIME(6) in UTC, with the index
// on expires_at declared in the CREATE TABLE (MySQL has no CREATE INDEX IF
// NOT EXISTS). Dialect.Schema returns the exact statements for any table
// name, for a database administrator who creates the table by hand.
//
// Keys, tokens and fingerprints are stored as bytes, so any Go string comes
// back exactly: PostgreSQL's text type would refuse NUL and invalid UTF-8,
// which a scope taken from a request header may hold. In psql,
// convert_from(key, 'UTF8') shows a key as text and
// WHERE key = convert_to('acct|abc', 'UTF8') finds one. PostgreSQL caps an
// index entry at about 2.7 kB, and with it the length of a key. InnoDB
// caps an index key at 3072 bytes (16 KiB pages, DYNAMIC rows, the
// defaults): on MySQL, Claim refuses a longer key, or a token or
// fingerprint longer than a BLOB's 65535 bytes, with an error, rather than
// let a server in a non-strict SQL mode cut it short.
//
// Every record carries a format version. This release writes
// and reads version 1; Claim answers a record of any other version (or an
// unknown state) with an error wrapping idem.ErrCorruptRecord, never with a
// record it cannot read, and Complete, Release and Renew treat it as not
// owned. A later release that changes the format adds a version and keeps
// reading this one.
//
// # Time
//
// Leases and retention are judged by the database's clock, never by the
// application's: PostgreSQL's clock_timestamp(), MySQL's UTC_TIMESTAMP(6)
// (UTC, so that a time_zone set per session does not shift it; one value
// per statement), and on SQLite the clock of the host that holds the file
// (every process sharing a SQLite file runs on that host). Application servers whose clocks disagree therefore still
// agree on when a lease ends; with their own clocks, a server running a few
// seconds fast would take over keys whose owners are still working.
// Record.LeaseLeft is expires_at minus the database's now, so it is right
// on every server too.
//
// # Statements
//
// Each method is one statement, so each is atomic without a transaction:
//
//   - Claim on PostgreSQL: one statement that takes over an expired record
//     (UPDATE … WHERE expires_at <= now), otherwise inserts
//     (INSERT … ON CONFLICT DO NOTHING), and otherwise returns the existing
//     record. A live record is only read: a replay or a conflict writes
//     nothing and locks nothing. Under READ COMMITTED the statement's
//     snapshot can miss a record that a concurrent Claim committed while
//     this one waited for it; Claim then reads the record again (a second
//     statement, only under contention). Serialization failures under a
//     stricter default isolation level are retried.
//   - Claim on SQLite: a SELECT of the live record; if there is none, an
//     UPSERT (INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now
//     RETURNING) that creates or takes over the record and returns a row
//     exactly when it did. A new key therefore costs SQLite three
//     statements (read, claim, complete) and a replay or a conflict one.
//     SQLite cannot return a row that an UPSERT left alone, so a single
//     statement would have to rewrite the record on every replay: a write
//     transaction, a WAL frame and, under synchronous=FULL, an fsync,
//     where the SELECT costs tens of microseconds, in-process, and never
//     waits for a writer.
//   - Claim on MySQL: a SELECT of the live record, a consistent read that
//     takes no lock; if there is none, INSERT IGNORE, which changes no row
//     if the key exists, and if it changed none, an UPDATE … WHERE
//     expires_at <= now that takes over an expired record. Each write is
//     one atomic statement judging the latest committed row, and wins
//     exactly when it changed a row. A new key costs three statements
//     (read, insert, complete), a replay or a conflict one, the takeover
//     of an expired record one more. MySQL has no RETURNING, so a claim
//     that finds the key taken must read anyway; reading first keeps
//     replays and conflicts from locking the row and from queueing behind
//     a transaction that holds it (MariaDB's INSERT … ON DUPLICATE KEY
//     UPDATE … RETURNING locks the row even when it leaves it alone). An
//     ON DUPLICATE KEY UPDATE claim would also report a live record it
//     left alone exactly as an insert under the driver's clientFoundRows
//     setting; the statements used here count the same with or without
//     it. A deadlock victim (SQLSTATE 40001, for example against the
//     sweeper) is retried.
//   - Complete, Release and Renew: one UPDATE or DELETE fenced by
//     key, token, state = in progress, version and expires_at > now. If it
//     changes no row, the caller no longer owns the key and gets
//     idem.ErrLockLost.
//
// Errors are wrapped with the operation ("sqlstore: claim: …"). A
// cancelled or expired context makes a call fail, never claim.
//
// # PostgreSQL connections
//
// Each store call holds a connection for one statement, about a
// millisecond. Bound the pool and keep it open, so that a burst of requests
// queues for a few warm connections rather than opening one each (which
// under load can take longer than the middleware's store timeout) and the
// next burst finds them ready: database/sql keeps only 2 idle connections
// unless told otherwise.
//
//	db.SetMaxOpenConns(16)
//	db.SetMaxIdleConns(16)
//
// With pgx, the first use of each statement on a connection costs one more
// round trip to prepare it; behind PgBouncer in transaction mode add
// default_query_exec_mode=exec to the DSN.
//
// # MySQL and MariaDB connections
//
// With github.com/go-sql-driver/mysql, add interpolateParams=true to the
// DSN: the driver then escapes the arguments into each statement and sends
// it in one round trip, where by default it prepares, executes and closes
// a server-side statement (two round trips). It refuses the setting for
// the few connection character sets where escaping is unsafe. parseTime
// and clientFoundRows make no difference to the Store. Bound the pool as
// for PostgreSQL. Migrate holds GET_LOCK('idem sqlstore migrate') on a
// connection of its own while it creates the table. A result must fit in
// the server's max_allowed_packet (16 MiB on MariaDB, 64 MiB on MySQL 8
// by default); a larger one fails to complete, answered 503.
//
// # Expiry and sweeping
//
// An expired record counts as absent at once: Claim takes it over and the
// other methods ignore it. Rows are deleted by the background sweeper that
// New starts (every minute, WithSweepInterval; batches of 1000 rows picked
// through the expires_at index; on PostgreSQL rows another sweeper holds
// are skipped, so every instance may sweep; on MySQL concurrent sweepers
// wait for each other, and a sweep that loses a deadlock reports the error
// and runs again at the next tick) or by calling DeleteExpired,
// for example from a cron job after WithSweepInterval(0). Keys are rarely
// reused, so without sweeping the table only grows.
//
// # SQLite
//
// Use WAL mode and a busy timeout: SQLiteDSN returns a modernc.org/sqlite
// DSN with both. In WAL mode replays read while a claim writes; the busy
// timeout makes a writer wait for the one before it instead of failing at
// once with "database is locked" (SQLITE_BUSY). If the lock is held longer
// than the timeout, the call fails with that error, an ordinary store error
// that the middleware answers with 503; it never claims. Note that the
// driver does not cut a busy wait short when the call's context ends, so a
// call can block for up to the busy timeout. Use modernc.org/sqlite v1.57.0
// or later: earlier versions can keep the write lock on a pooled
// connection after a call whose context ended as a row came back.
//
// Several processes may share the file, on one host (not over a network
// file system). Within a process, the default pool (a connection per
// concurrent call) lets reads run in parallel while writes queue on the
// file lock; db.SetMaxOpenConns(1) queues everything in database/sql
// instead, which avoids lock waits but also serializes reads. Measure
// both if it matters (BenchmarkStore does). synchronous=NORMAL (add
// &_pragma=synchronous(NORMAL) to the DSN) makes commits much cheaper in
// WAL mode at the price of the last commits on power loss.
//
// # Completing inside your own transaction
//
// A caller that drives the Store itself (rather than through idem.Do or the
// middleware) and keeps its own data in the same database can complete the
// record in the transaction that writes that data, with CompleteTx: the
// result is stored if and only if the business write commits.
//
//	rec, err := store.Claim(ctx, key, token, fp, time.Minute)
//	// rec == nil: we own key
//	tx, err := db.BeginTx(ctx, nil)
//	_, err = tx.ExecContext(ctx, `INSERT INTO payments …`)
//	err = store.CompleteTx(ctx, tx, key, token, result, 24*time.Hour)
//	// err == idem.ErrLockLost: roll back, another owner has the key
//	err = tx.Commit()
package sqlstore
