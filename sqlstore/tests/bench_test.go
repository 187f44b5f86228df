package sqlstore_test

import (
	"testing"

	"github.com/idemgo/idem/sqlstore"
	"github.com/idemgo/idem/storetest"
)

// BenchmarkStore reports the cost of one new key and one replay (claim,
// complete, claim again) on each dialect. SQLite runs with the default
// pool (a connection per goroutine, serialized by the file lock) and with
// one connection (serialized by database/sql).
func BenchmarkStore(b *testing.B) {
	b.Run("SQLite", func(b *testing.B) {
		benchStore(b, backends[0], 0)
	})
	b.Run("SQLite/MaxOpenConns=1", func(b *testing.B) {
		benchStore(b, backends[0], 1)
	})
	b.Run("Postgres", func(b *testing.B) {
		benchStore(b, backends[1], 0)
	})
	b.Run("MySQL", func(b *testing.B) {
		benchStore(b, mysqlBackend, 0)
	})
	// Statements sent as text with their arguments in them: one round
	// trip each instead of a prepare and an execute.
	b.Run("MySQL/interpolateParams", func(b *testing.B) {
		be := mysqlBackend
		dsn := be.dsn
		be.dsn = func(t testing.TB) string { return withParams(dsn(t), "interpolateParams=true") }
		benchStore(b, be, 0)
	})
}

func benchStore(b *testing.B, be backend, maxOpen int) {
	db := be.open(b, be.dsn(b))
	db.SetMaxOpenConns(maxOpen)
	s := newStore(b, db, be.dialect, table(b, db), sqlstore.WithSweepInterval(0))
	if err := s.Migrate(testCtx(b)); err != nil {
		b.Fatal(err)
	}
	storetest.Bench(b, s)
}
