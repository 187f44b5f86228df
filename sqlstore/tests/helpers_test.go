package sqlstore_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/sqlstore"
	"github.com/idemgo/idem/storetest"
)

// backend is one database the tests run against.
type backend struct {
	name    string
	dialect sqlstore.Dialect
	// dsn returns the data source name of a database for t (skipping t if
	// there is none).
	dsn    func(t testing.TB) string
	driver string
	// claimRounds is the number of rounds of storetest's
	// ConcurrentClaimRounds: each costs 16 transactions.
	claimRounds int
}

var backends = []backend{
	{name: "SQLite", dialect: sqlstore.SQLite, dsn: sqliteDSN, driver: "sqlite", claimRounds: 50},
	{name: "Postgres", dialect: sqlstore.Postgres, dsn: postgresDSN, driver: "pgx", claimRounds: 100},
	{name: "MySQL", dialect: sqlstore.MySQL, dsn: mysqlDSN, driver: "mysql", claimRounds: 100},
}

// conformance runs storetest's suite over stores made by newStore.
func (b backend) conformance(t *testing.T, newStore func(t *testing.T) idem.Store) {
	storetest.RunConfig(t, storetest.Config{NewStore: newStore, ClaimRounds: b.claimRounds})
}

// mysqlBackend is the MySQL entry of backends.
var mysqlBackend = backends[2]

// forEach runs fn as a sub-test per backend.
func forEach(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// sqliteDSN returns the DSN of a fresh SQLite file in t's temporary
// directory.
func sqliteDSN(t testing.TB) string {
	return sqlstore.SQLiteDSN(filepath.Join(t.TempDir(), "idem.db"))
}

// postgresDSN returns the DSN of the PostgreSQL server scripts/test.sh
// starts. Without one, t is skipped, or fails in CI.
func postgresDSN(t testing.TB) string {
	t.Helper()
	return testenv.Server(t, testenv.PostgresDSN, "a PostgreSQL server")
}

// mysqlDSN returns the DSN (go-sql-driver/mysql form) of the MariaDB server
// scripts/test.sh starts. Without one, t is skipped, or fails in CI.
func mysqlDSN(t testing.TB) string {
	t.Helper()
	return testenv.Server(t, testenv.MySQLDSN, "a MySQL (MariaDB) server")
}

// withParams returns dsn with the query parameters params
// ("a=1&b=2") added.
func withParams(dsn, params string) string {
	if strings.Contains(dsn, "?") {
		return dsn + "&" + params
	}
	return dsn + "?" + params
}

// keyColumn is the key column of the store's table as d's SQL names it
// (key is a reserved word in MySQL).
func keyColumn(d sqlstore.Dialect) string {
	if d == sqlstore.MySQL {
		return "`key`"
	}
	return "key"
}

// open opens the database named by dsn and closes it when t ends.
func (b backend) open(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(b.driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxIdleConns(64) // keep the connections of a burst of goroutines
	if err := db.PingContext(testCtx(t)); err != nil {
		t.Fatalf("%s: %v", b.name, err)
	}
	return db
}

// table returns a table name no other test or run uses, and drops the table
// when t ends.
func table(t testing.TB, db *sql.DB) string {
	var r [6]byte
	rand.Read(r[:])
	name := "idem_test_" + hex.EncodeToString(r[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP TABLE IF EXISTS `+name); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

// newStore returns a store on db over table (not migrated), closed when t
// ends.
func newStore(t testing.TB, db *sql.DB, d sqlstore.Dialect, table string, opts ...sqlstore.Option) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.New(db, d, append([]sqlstore.Option{sqlstore.WithTable(table)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fixture is a migrated store on a fresh table of backend b.
type fixture struct {
	db    *sql.DB
	table string
	store *sqlstore.Store
}

func (b backend) fixture(t testing.TB, opts ...sqlstore.Option) fixture {
	t.Helper()
	db := b.open(t, b.dsn(t))
	tbl := table(t, db)
	s := newStore(t, db, b.dialect, tbl, opts...)
	if err := s.Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return fixture{db: db, table: tbl, store: s}
}

// ph returns the n-th placeholder of d.
func ph(d sqlstore.Dialect, n int) string {
	switch d {
	case sqlstore.Postgres:
		return "$" + string(rune('0'+n))
	case sqlstore.MySQL:
		return "?" // positional only
	}
	return "?" + string(rune('0'+n))
}

// rows counts the rows of f's table.
func (f fixture) rows(t testing.TB) int {
	t.Helper()
	var n int
	if err := f.db.QueryRowContext(testCtx(t), `SELECT count(*) FROM `+f.table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dsnConnector is the connector of a driver that has none of its own.
type dsnConnector struct {
	drv driver.Driver
	dsn string
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }
