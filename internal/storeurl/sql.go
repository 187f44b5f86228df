package storeurl

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// SQL stores: "sqlite:PATH" for a SQLite file (created if absent, in WAL
// mode, shareable by processes on this host) and "postgres://…" or
// "postgresql://…" for PostgreSQL (pgx URL or key=value form after the
// scheme), "mysql://user:pass@host:port/db" for MySQL or MariaDB. All
// create their table on start.
func init() {
	openers["sqlite"] = openSQLite
	openers["postgres"] = openPostgres
	openers["mysql"] = openMySQL
}

func openSQLite(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	path := strings.TrimPrefix(spec, "sqlite:")
	if path == "" {
		return nil, nil, errors.New("-store sqlite:PATH: the path is empty")
	}
	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(path))
	if err != nil {
		return nil, nil, fmt.Errorf("-store: sqlite file %s: %w", path, err)
	}
	return openSQL(ctx, o, db, sqlstore.SQLite, "sqlite file "+path)
}

func openPostgres(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	// pgx's errors leave the password out of the URL they quote.
	db, err := sql.Open("pgx", spec)
	if err != nil {
		return nil, nil, fmt.Errorf("-store: postgres: %w", err)
	}
	// A bounded pool that stays open: a burst of requests queues for a few
	// connections (each store call holds one for about a millisecond)
	// instead of opening one connection per request, and the next burst
	// finds them ready (database/sql keeps only 2 idle by default).
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	return openSQL(ctx, o, db, sqlstore.Postgres, "postgres")
}

func openMySQL(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	cfg, err := mysqlConfig(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("-store: %w", err)
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("-store: mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(16) // as for PostgreSQL
	db.SetMaxIdleConns(16)
	return openSQL(ctx, o, db, sqlstore.MySQL, "mysql "+cfg.Addr+"/"+cfg.DBName)
}

// mysqlConfig turns mysql://user:pass@host[:port]/db[?param=value&…] into
// the configuration of github.com/go-sql-driver/mysql, the equivalent of
// the driver's DSN user:pass@tcp(host:port)/db?interpolateParams=true&….
// The port defaults to 3306; the query parameters are the driver's DSN
// parameters (tls, timeout, …). interpolateParams makes every store call
// one round trip (the driver escapes the arguments into the statement)
// instead of two (prepare, then execute); a parameter given in the URL
// wins. User and password are percent-decoded; errors never quote them.
func mysqlConfig(spec string) (*mysql.Config, error) {
	u, err := url.Parse(spec)
	if err != nil {
		// url's errors quote the whole URL, password included.
		return nil, errors.New("mysql: the store URL does not parse; want mysql://user:pass@host:port/db")
	}
	db := strings.TrimPrefix(u.Path, "/")
	if u.Scheme != "mysql" || u.Host == "" || db == "" || strings.Contains(db, "/") {
		return nil, errors.New("mysql: want mysql://user:pass@host:port/db")
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "3306")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("mysql: the store URL's parameters: %w", err)
	}
	if !q.Has("interpolateParams") {
		q.Set("interpolateParams", "true")
	}
	// The password is set on the parsed configuration, never written into
	// a DSN string that an error could quote.
	cfg, err := mysql.ParseDSN("tcp(" + addr + ")/" + db + "?" + q.Encode())
	if err != nil {
		return nil, fmt.Errorf("mysql: the store URL's parameters: %w", err)
	}
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	return cfg, nil
}

// openSQL checks that the database answers, creates the table if needed
// and returns the store; closing it stops the sweeper and closes db.
func openSQL(ctx context.Context, o Options, db *sql.DB, dialect sqlstore.Dialect, what string) (idem.Store, func() error, error) {
	store, err := sqlstore.New(db, dialect, sqlstore.WithSweepErrorHandler(func(err error) {
		o.logger().Warn("deleting expired idempotency records failed", "store", what, "err", err)
	}))
	if err == nil {
		err = db.PingContext(ctx)
	}
	if err == nil {
		err = store.Migrate(ctx)
	}
	if err != nil {
		if store != nil {
			store.Close()
		}
		db.Close()
		return nil, nil, fmt.Errorf("-store: %s unusable: %w", what, err)
	}
	return store, func() error {
		store.Close()
		return db.Close()
	}, nil
}
