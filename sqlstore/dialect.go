package sqlstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"
)

// Dialect names the SQL database a Store talks to. Every statement of a
// dialect lives in this file.
type Dialect uint8

const (
	// Postgres is PostgreSQL 11 or later, through any database/sql driver
	// that takes $1 placeholders (for example github.com/jackc/pgx/v5/stdlib,
	// driver name "pgx").
	Postgres Dialect = 1
	// SQLite is SQLite 3.35 or later (for UPSERT … RETURNING), through any
	// database/sql driver (for example modernc.org/sqlite, driver name
	// "sqlite"). See SQLiteDSN for the connection settings it needs.
	SQLite Dialect = 2
	// MySQL is MySQL 5.7 or later or MariaDB 10.3 or later, with InnoDB,
	// through any database/sql driver that takes ? placeholders (for
	// example github.com/go-sql-driver/mysql, driver name "mysql"). A
	// schema-qualified table name ("db.idem_keys") names a database. See
	// the package documentation for the DSN settings it advises.
	MySQL Dialect = 3
)

// String returns "postgres", "sqlite", "mysql" or "Dialect(N)".
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	case MySQL:
		return "mysql"
	}
	return fmt.Sprintf("Dialect(%d)", uint8(d))
}

// Schema returns the statements that Migrate runs for a table named table
// (DefaultTable unless WithTable says otherwise), separated by semicolons:
// the DDL to give a database administrator who creates the table by hand.
// It fails for an unknown dialect or a name that WithTable would refuse.
func (d Dialect) Schema(table string) (string, error) {
	q, err := d.queries(table)
	if err != nil {
		return "", err
	}
	return strings.Join(q.schema, ";\n\n") + ";\n", nil
}

// SQLiteDSN returns a modernc.org/sqlite data source name (driver name
// "sqlite") for the database file at path, with the settings sqlstore needs
// for concurrent use:
//
//	file:PATH?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate
//
// busy_timeout makes a connection wait up to 5 s for another writer
// instead of failing at once with "database is locked"; WAL lets readers
// and one writer work at the same time and is kept in the file; _txlock
// makes transactions (Migrate, and yours around CompleteTx) take the write
// lock when they begin, so they never fail half way when another writer
// got in first. The characters % ? and # in path are escaped.
//
// With github.com/mattn/go-sqlite3 (driver name "sqlite3") the same
// settings read file:PATH?_busy_timeout=5000&_journal_mode=WAL&_txlock=immediate.
func SQLiteDSN(path string) string {
	path = strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(path)
	return "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate"
}

// queries holds the statements of one dialect for one table.
//
// Every statement that reads a record returns the same columns, in this
// order: won (whether this call claimed the key), version, state, token,
// fingerprint, left (what remains of the record's life, in unit), result.
type queries struct {
	schema []string
	// lockKey is the argument of the advisory lock Migrate takes
	// (PostgreSQL and MySQL), so that two processes migrating at once do not
	// collide. unlock, if set, releases it: the lock belongs to the
	// connection rather than to a transaction (MySQL's GET_LOCK), and
	// Migrate then runs on a connection of its own.
	lockKey string
	lock    string
	unlock  string
	// unit is the unit of durations passed to and returned by the
	// statements.
	unit time.Duration
	// readFirst makes Claim run read before claim.
	readFirst bool

	claim  string // $1 key, $2 token, $3 fingerprint, $4 lease: won, or the record, or no row
	read   string // $1 key: the live record, with won false, or no row
	finish string // $1 key, $2 token, $3 result, $4 ttl: Complete
	renew  string // $1 key, $2 token, $3 lease
	delete string // $1 key, $2 token: Release
	sweep  string // $1 limit (see noLimit)
	remove string // $1 key: Delete of a live record

	// takeover, if set, makes claim an insert that changes no row if the
	// key exists, run with Exec, and takeover the UPDATE that takes over an
	// expired record (MySQL; same arguments as claim). Each wins if it
	// changed one row.
	takeover string

	noLimit any // the limit argument of sweep that means "no limit"

	// argOrder maps a statement whose placeholders are positional (MySQL's
	// ?) to the order in which it takes the arguments the Store passes in
	// the order documented above (for example finish: 2, 3, 0, 1).
	argOrder map[string][]int

	// maxKey and maxField bound the length in bytes of a key and of a
	// token or fingerprint (0: no bound), so that Claim refuses what the
	// columns would not hold rather than let a server in a non-strict SQL
	// mode cut it short.
	maxKey, maxField int
}

// bind returns args in the order query takes them.
func (q *queries) bind(query string, args []any) []any {
	order, ok := q.argOrder[query]
	if !ok {
		return args
	}
	out := make([]any, len(order))
	for i, j := range order {
		out[i] = args[j]
	}
	return out
}

// DefaultTable is the table a Store uses unless WithTable says otherwise.
const DefaultTable = "idem_keys"

// Values of the state column (the values of idem.State) and of the version
// column.
const (
	stateInProgress = 1
	stateCompleted  = 2
	formatVersion   = 1
)

// fenced is the condition under which Complete, Release and Renew act: the
// record is in progress, of this format version, owned by the caller's token
// and its lease has not run out.
const fenced = `key = {p1} AND token = {p2} AND state = 1 AND version = 1 AND expires_at > {now}`

// PostgreSQL. Times are timestamptz taken from the server's clock; clock_timestamp()
// rather than now() so that a statement inside a long transaction
// (CompleteTx) judges leases by the time it runs. Durations are in
// microseconds.
//
// Claim is one statement. upd takes over an expired record; ins (which runs
// only if upd did not, since it reads upd) inserts a new one, doing nothing
// if the key exists, so that a live record is neither written nor locked. If
// neither did anything the key is taken and the last SELECT returns the
// record. That SELECT reads the statement's snapshot, which under READ
// COMMITTED may not show a record that a concurrent transaction committed
// while ins waited for it, or may show an expired version that a concurrent
// Claim has just taken over: the Store then reads again (see Claim).
var postgres = map[string]string{
	"table": `CREATE TABLE IF NOT EXISTS {table} (
    key         bytea       PRIMARY KEY,  -- the idempotency key (scope|key), byte for byte
    state       smallint    NOT NULL,     -- 1 in progress, 2 completed
    version     smallint    NOT NULL,     -- record format version, 1
    token       bytea       NOT NULL,     -- owner token while in progress, empty once completed
    fingerprint bytea       NOT NULL,     -- request fingerprint
    expires_at  timestamptz NOT NULL,     -- lease end (in progress) or retention end (completed)
    created_at  timestamptz NOT NULL,     -- when the current owner claimed the key
    result      bytea                     -- stored result once completed, else NULL
)`,
	"index": `CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)`,
	"lock":  `SELECT pg_advisory_xact_lock(hashtext($1))`,
	"claim": `WITH upd AS (
    UPDATE {table}
    SET state = 1, version = 1, token = $2, fingerprint = $3,
        expires_at = clock_timestamp() + interval '1 microsecond' * $4::float8,
        created_at = clock_timestamp(), result = NULL
    WHERE key = $1 AND expires_at <= clock_timestamp()
    RETURNING 1
), ins AS (
    INSERT INTO {table} (key, state, version, token, fingerprint, expires_at, created_at, result)
    SELECT $1, 1, 1, $2, $3, clock_timestamp() + interval '1 microsecond' * $4::float8, clock_timestamp(), NULL
    WHERE NOT EXISTS (SELECT 1 FROM upd)
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
), won AS (
    SELECT 1 FROM upd UNION ALL SELECT 1 FROM ins
)
SELECT true, 0::smallint, 0::smallint, ''::bytea, ''::bytea, 0::bigint, NULL::bytea FROM won
UNION ALL
SELECT false, version, state, token, fingerprint,
       (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint, result
FROM {table} WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM won)`,
	"read": `SELECT false, version, state, token, fingerprint,
       (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint, result
FROM {table} WHERE key = $1 AND expires_at > clock_timestamp()`,
	"finish": `UPDATE {table}
SET state = 2, token = ''::bytea, result = $3,
    expires_at = clock_timestamp() + interval '1 microsecond' * $4::float8
WHERE ` + fenced,
	"renew": `UPDATE {table}
SET expires_at = clock_timestamp() + interval '1 microsecond' * $3::float8
WHERE ` + fenced,
	"delete": `DELETE FROM {table} WHERE ` + fenced,
	"remove": `DELETE FROM {table} WHERE key = $1 AND expires_at > clock_timestamp()`,
	// The rows are picked through the expires_at index, locked so that a
	// concurrent takeover waits (and rows another sweeper holds are
	// skipped), and checked again as they are deleted.
	"sweep": `DELETE FROM {table}
WHERE key IN (
    SELECT key FROM {table} WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AND expires_at <= now()`,
}

// sqliteNow is the current time in Unix milliseconds, from the clock of the
// host running SQLite. SQLite gives one value of 'now' to a whole statement.
const sqliteNow = `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`

// SQLite. Times are INTEGER Unix milliseconds; durations are milliseconds.
//
// Claim reads first and writes only if the key is free, because SQLite
// cannot return a row that an UPSERT left alone: one statement that always
// returns the record has to rewrite it (and its index entry), turning every
// replay into a write transaction, a WAL frame and, under
// synchronous=FULL, an fsync. The read is a plain SELECT, which in WAL mode
// neither waits for nor blocks the writer. The UPSERT then inserts the
// record or takes over an expired one and returns a row exactly when it
// did; if it returns none, a concurrent Claim won and the Store reads its
// record. SQLite runs one writer at a time and a write statement sees the
// latest data, so the UPSERT's decision is never stale.
var sqlite = map[string]string{
	"table": `CREATE TABLE IF NOT EXISTS {table} (
    key         BLOB    NOT NULL PRIMARY KEY, -- the idempotency key (scope|key), byte for byte
    state       INTEGER NOT NULL,             -- 1 in progress, 2 completed
    version     INTEGER NOT NULL,             -- record format version, 1
    token       BLOB    NOT NULL,             -- owner token while in progress, empty once completed
    fingerprint BLOB    NOT NULL,             -- request fingerprint
    expires_at  INTEGER NOT NULL,             -- Unix ms: lease end (in progress) or retention end (completed)
    created_at  INTEGER NOT NULL,             -- Unix ms: when the current owner claimed the key
    result      BLOB                          -- stored result once completed, else NULL; last, so that
                                              -- reading the other columns never walks its overflow pages
)`,
	"index": `CREATE INDEX IF NOT EXISTS {index} ON {tablename} (expires_at)`,
	"claim": `INSERT INTO {table} AS t (key, state, version, token, fingerprint, expires_at, created_at, result)
VALUES (?1, 1, 1, ?2, ?3, {now} + ?4, {now}, NULL)
ON CONFLICT (key) DO UPDATE SET
    state = excluded.state, version = excluded.version, token = excluded.token,
    fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
    created_at = excluded.created_at, result = NULL
WHERE t.expires_at <= {now}
RETURNING 1, 0, 0, X'', X'', 0, NULL`,
	"read": `SELECT 0, version, state, token, fingerprint, expires_at - {now}, result
FROM {table} WHERE key = ?1 AND expires_at > {now}`,
	"finish": `UPDATE {table}
SET state = 2, token = X'', result = ?3, expires_at = {now} + ?4
WHERE ` + fenced,
	"renew":  `UPDATE {table} SET expires_at = {now} + ?3 WHERE ` + fenced,
	"delete": `DELETE FROM {table} WHERE ` + fenced,
	"remove": `DELETE FROM {table} WHERE key = ?1 AND expires_at > {now}`,
	"sweep": `DELETE FROM {table}
WHERE rowid IN (
    SELECT rowid FROM {table} WHERE expires_at <= {now}
    ORDER BY expires_at LIMIT ?1
)`,
}

// mysqlNow is the current time in UTC, from the MySQL server's clock, as
// a DATETIME(6). MySQL gives one value to a whole statement (the time it
// started); UTC_TIMESTAMP rather than NOW() so that the session's
// time_zone, which a DSN may set per client, does not shift it.
const mysqlNow = `UTC_TIMESTAMP(6)`

// mysqlMaxKey is the longest key InnoDB can index: 3072 bytes, its limit
// on an index key with 16 KiB pages and the DYNAMIC or COMPRESSED row
// format (the defaults since MySQL 5.7 and MariaDB 10.2).
const mysqlMaxKey = 3072

// mysqlMaxField is the longest token or fingerprint a BLOB holds.
const mysqlMaxField = 65535

// MySQL and MariaDB (InnoDB). Times are DATETIME(6) in UTC from the
// server's clock; durations are microseconds. Placeholders are written ?N
// here and become positional ? (see queries.argOrder).
//
// Claim reads first and writes only when the key is free, as on SQLite.
// MySQL cannot return a row from a write (it has no RETURNING), so a claim
// that finds the key taken needs a read anyway; reading first makes a
// replay or a conflict a single consistent read, which takes no lock and
// never waits for a writer (for example a CompleteTx whose transaction
// holds the row). MariaDB's INSERT … ON DUPLICATE KEY UPDATE … RETURNING
// would return the record in one statement, but it locks the row even
// when it leaves it alone, so replays would queue behind writers. If the read finds no live
// record, claim inserts with INSERT IGNORE, which changes no row when the
// key exists; if it changed none, takeover overwrites the record only if
// it has expired. Each is one atomic statement that judges the latest
// committed row under its lock, and wins exactly when it changed one row.
// INSERT … ON DUPLICATE KEY UPDATE would do both in one statement, but the
// driver's clientFoundRows setting makes it report a live record it left
// alone exactly as it reports an insert, which would make two owners.
var mysql = map[string]string{
	"table": `CREATE TABLE IF NOT EXISTS {table} (
    ` + "`key`" + `       VARBINARY(3072) NOT NULL, -- the idempotency key (scope|key), byte for byte; 3072 bytes is InnoDB's limit
    state       TINYINT         NOT NULL, -- 1 in progress, 2 completed
    version     TINYINT         NOT NULL, -- record format version, 1
    token       BLOB            NOT NULL, -- owner token while in progress, empty once completed
    fingerprint BLOB            NOT NULL, -- request fingerprint
    expires_at  DATETIME(6)     NOT NULL, -- UTC: lease end (in progress) or retention end (completed)
    created_at  DATETIME(6)     NOT NULL, -- UTC: when the current owner claimed the key
    result      LONGBLOB,                 -- stored result once completed, else NULL
    PRIMARY KEY (` + "`key`" + `),
    KEY expires_at (expires_at)
) ENGINE=InnoDB`,
	"lock":   `SELECT GET_LOCK(?1, 60)`,
	"unlock": `SELECT RELEASE_LOCK(?1)`,
	"claim": `INSERT IGNORE INTO {table} (` + "`key`" + `, state, version, token, fingerprint, expires_at, created_at, result)
VALUES (?1, 1, 1, ?2, ?3, {now} + INTERVAL ?4 MICROSECOND, {now}, NULL)`,
	"takeover": `UPDATE {table}
SET state = 1, version = 1, token = ?2, fingerprint = ?3,
    created_at = {now}, result = NULL, expires_at = {now} + INTERVAL ?4 MICROSECOND
WHERE ` + "`key`" + ` = ?1 AND expires_at <= {now}`,
	"read": `SELECT 0, version, state, token, fingerprint, TIMESTAMPDIFF(MICROSECOND, {now}, expires_at), result
FROM {table} WHERE ` + "`key`" + ` = ?1 AND expires_at > {now}`,
	"finish": `UPDATE {table}
SET state = 2, token = X'', result = ?3, expires_at = {now} + INTERVAL ?4 MICROSECOND
WHERE {fenced}`,
	"renew":  `UPDATE {table} SET expires_at = {now} + INTERVAL ?3 MICROSECOND WHERE {fenced}`,
	"delete": `DELETE FROM {table} WHERE {fenced}`,
	"remove": `DELETE FROM {table} WHERE ` + "`key`" + ` = ?1 AND expires_at > {now}`,
	// Picked in expires_at order through its index.
	"sweep": `DELETE FROM {table} WHERE expires_at <= {now} ORDER BY expires_at LIMIT ?1`,
}

// placeholder is a ?N placeholder of a MySQL statement in this file.
var placeholder = regexp.MustCompile(`\?[1-9]`)

// positional rewrites the ?N placeholders of q as ? and returns the
// argument order they make (see queries.argOrder).
func positional(q string) (string, []int) {
	var order []int
	out := placeholder.ReplaceAllStringFunc(q, func(p string) string {
		order = append(order, int(p[1]-'1'))
		return "?"
	})
	return out, order
}

// queries returns the statements of d for table, or an error if d is
// unknown or table is not a valid name.
func (d Dialect) queries(table string) (*queries, error) {
	schemaName, name, err := parseTable(table)
	if err != nil {
		return nil, err
	}
	qualified := quoteIdent(name)
	if schemaName != "" {
		qualified = quoteIdent(schemaName) + "." + qualified
	}
	switch d {
	case Postgres:
		r := strings.NewReplacer(
			"{table}", qualified,
			"{index}", quoteIdent(indexName(name, maxIdent)),
			"{now}", "clock_timestamp()",
			"{p1}", "$1", "{p2}", "$2",
		)
		p := func(k string) string { return r.Replace(postgres[k]) }
		return &queries{
			schema:  []string{p("table"), p("index")},
			lock:    p("lock"),
			lockKey: "idem sqlstore migrate " + qualified,
			unit:    time.Microsecond,
			claim:   p("claim"),
			read:    p("read"),
			finish:  p("finish"),
			renew:   p("renew"),
			delete:  p("delete"),
			remove:  p("remove"),
			sweep:   p("sweep"),
			noLimit: nil, // LIMIT NULL
		}, nil
	case SQLite:
		// SQLite puts the schema on the index name and wants the table
		// unqualified in CREATE INDEX.
		qindex := quoteIdent(indexName(name, 0))
		if schemaName != "" {
			qindex = quoteIdent(schemaName) + "." + qindex
		}
		r := strings.NewReplacer(
			"{table}", qualified,
			"{tablename}", quoteIdent(name),
			"{index}", qindex,
			"{now}", sqliteNow,
			"{p1}", "?1", "{p2}", "?2",
		)
		p := func(k string) string { return r.Replace(sqlite[k]) }
		return &queries{
			schema:    []string{p("table"), p("index")},
			unit:      time.Millisecond,
			readFirst: true,
			claim:     p("claim"),
			read:      p("read"),
			finish:    p("finish"),
			renew:     p("renew"),
			delete:    p("delete"),
			remove:    p("remove"),
			sweep:     p("sweep"),
			noLimit:   int64(-1), // LIMIT -1
		}, nil
	case MySQL:
		return mysqlQueries(schemaName, name), nil
	}
	return nil, fmt.Errorf("sqlstore: unknown dialect %v", d)
}

// mysqlQueries returns the MySQL statements for the table name in the
// database schemaName (the connection's database if empty).
func mysqlQueries(schemaName, name string) *queries {
	qualified := "`" + name + "`"
	if schemaName != "" {
		qualified = "`" + schemaName + "`." + qualified
	}
	r := strings.NewReplacer(
		"{fenced}", "`key` = ?1 AND token = ?2 AND state = 1 AND version = 1 AND expires_at > {now}",
	)
	r2 := strings.NewReplacer("{table}", qualified, "{now}", mysqlNow)
	q := &queries{
		lockKey:   "idem sqlstore migrate",
		unit:      time.Microsecond,
		readFirst: true,
		noLimit:   int64(math.MaxInt64),
		argOrder:  map[string][]int{},
		maxKey:    mysqlMaxKey,
		maxField:  mysqlMaxField,
	}
	p := func(k string) string {
		stmt, order := positional(r2.Replace(r.Replace(mysql[k])))
		q.argOrder[stmt] = order
		return stmt
	}
	q.schema = []string{p("table")}
	q.lock, q.unlock = p("lock"), p("unlock")
	q.claim, q.takeover = p("claim"), p("takeover")
	q.read, q.finish, q.renew, q.delete, q.sweep = p("read"), p("finish"), p("renew"), p("delete"), p("sweep")
	q.remove = p("remove")
	return q
}

// maxIdent is PostgreSQL's limit on identifier length, applied to both
// dialects so that a name works everywhere.
const maxIdent = 63

// indexSuffix ends the name of the expires_at index of a table.
const indexSuffix = "_expires_at_idx"

// indexName returns the name of the expires_at index of table name, at
// most limit bytes long (no limit if limit is 0): name+"_expires_at_idx"
// when it fits, else the start of name, "_", 8 hex digits of the SHA-256 of
// name and the suffix. PostgreSQL would cut a longer name at 63 bytes
// without an error; for a 63-byte table name that leaves the table's own
// name, and CREATE INDEX IF NOT EXISTS then creates nothing.
func indexName(name string, limit int) string {
	if limit == 0 || len(name)+len(indexSuffix) <= limit {
		return name + indexSuffix
	}
	sum := sha256.Sum256([]byte(name))
	tag := "_" + hex.EncodeToString(sum[:4])
	return name[:limit-len(tag)-len(indexSuffix)] + tag + indexSuffix
}

// parseTable splits a table name, "table" or "schema.table", into its
// parts. Each part is an ASCII letter or underscore followed by letters,
// digits and underscores, at most 63 of them.
func parseTable(table string) (schemaName, name string, err error) {
	name = table
	if before, after, ok := strings.Cut(table, "."); ok {
		schemaName, name = before, after
		if !isIdent(schemaName) {
			return "", "", fmt.Errorf("sqlstore: invalid table name %q: the schema part must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most %d characters)", table, maxIdent)
		}
	}
	if !isIdent(name) {
		return "", "", fmt.Errorf("sqlstore: invalid table name %q: want a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most %d characters), optionally schema-qualified", table, maxIdent)
	}
	return schemaName, name, nil
}

func isIdent(s string) bool {
	if s == "" || len(s) > maxIdent {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		digit := '0' <= c && c <= '9'
		if !letter && (!digit || i == 0) {
			return false
		}
	}
	return true
}

// quoteIdent quotes a name checked by isIdent, so that names that are
// keywords ("order", "user") work too. Both dialects quote with double
// quotes; a quoted name keeps its case.
func quoteIdent(s string) string { return `"` + s + `"` }
