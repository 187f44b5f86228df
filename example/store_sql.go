package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// SQL stores: "sqlite:PATH" for a SQLite file (created if absent, in WAL
// mode, shareable by processes on this host) and "postgres://…" or
// "postgresql://…" for PostgreSQL (pgx URL or key=value form after the
// scheme). Both create their table on start.
func init() {
	storeOpeners["sqlite"] = openSQLite
	storeOpeners["postgres"] = openPostgres
}

func openSQLite(ctx context.Context, spec string) (idem.Store, func() error, error) {
	path := strings.TrimPrefix(spec, "sqlite:")
	if path == "" {
		return nil, nil, errors.New("-store sqlite:PATH: the path is empty")
	}
	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(path))
	if err != nil {
		return nil, nil, fmt.Errorf("-store: sqlite file %s: %w", path, err)
	}
	return openSQL(ctx, db, sqlstore.SQLite, "sqlite file "+path)
}

func openPostgres(ctx context.Context, spec string) (idem.Store, func() error, error) {
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
	return openSQL(ctx, db, sqlstore.Postgres, "postgres")
}

// openSQL checks that the database answers, creates the table if needed
// and returns the store; closing it stops the sweeper and closes db.
func openSQL(ctx context.Context, db *sql.DB, dialect sqlstore.Dialect, what string) (idem.Store, func() error, error) {
	store, err := sqlstore.New(db, dialect, sqlstore.WithSweepErrorHandler(func(err error) {
		slog.Warn("deleting expired idempotency records failed", "store", what, "err", err)
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
