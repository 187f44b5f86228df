package sqlstore_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// longTable returns a table name of exactly n bytes, unique to this run,
// ending in tail, and drops the table when t ends.
func longTable(t *testing.T, db *sql.DB, n int, tail string) string {
	var r [4]byte
	rand.Read(r[:])
	head := "idem_long_" + hex.EncodeToString(r[:]) + "_"
	name := head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	if len(name) != n {
		t.Fatalf("built a %d-byte name, want %d", len(name), n)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		db.ExecContext(ctx, `DROP TABLE IF EXISTS `+name)
	})
	return name
}

// expiresIndexes returns the names of the indexes on table's expires_at
// column.
func expiresIndexes(t *testing.T, b backend, db *sql.DB, table string) []string {
	t.Helper()
	q := `SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 AND indexdef LIKE '%(expires_at)%'`
	switch b.dialect {
	case sqlstore.SQLite:
		q = `SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql LIKE '%(expires_at)%'`
	case sqlstore.MySQL:
		q = `SELECT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ? AND column_name = 'expires_at'`
	}
	rows, err := db.QueryContext(testCtx(t), q, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// Every table name WithTable accepts, up to the 63 bytes PostgreSQL allows,
// gets its expires_at index from Migrate, under a name that fits: a name
// cut at 63 bytes by the server would be the table's own for a 63-byte
// table, and the index would silently not be made. Tables whose long names
// share their start still get one index each.
func TestMigrateIndexesLongTableNames(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		db := b.open(t, b.dsn(t))
		for _, tc := range []struct {
			n    int
			tail string
		}{{47, ""}, {48, ""}, {49, ""}, {62, ""}, {63, "_a"}, {63, "_b"}} {
			name := longTable(t, db, tc.n, tc.tail)
			s, err := sqlstore.New(db, b.dialect, sqlstore.WithTable(name), sqlstore.WithSweepInterval(0))
			if err != nil {
				t.Fatalf("WithTable(%d bytes): %v", tc.n, err)
			}
			t.Cleanup(func() { s.Close() })
			if err := s.Migrate(testCtx(t)); err != nil {
				t.Fatalf("Migrate %d-byte table: %v", tc.n, err)
			}
			// Twice: the second run finds what the first made.
			if err := s.Migrate(testCtx(t)); err != nil {
				t.Fatalf("second Migrate of a %d-byte table: %v", tc.n, err)
			}
			idx := expiresIndexes(t, b, db, name)
			if len(idx) != 1 {
				t.Fatalf("%d-byte table %s has expires_at indexes %q, want one", tc.n, name, idx)
			}
			if b.dialect == sqlstore.MySQL {
				// MySQL names indexes per table: the schema calls it
				// expires_at whatever the table's name.
				if idx[0] != "expires_at" {
					t.Fatalf("%d-byte table: index %q, want expires_at", tc.n, idx[0])
				}
				continue
			}
			if idx[0] == name || !strings.HasSuffix(idx[0], "_expires_at_idx") {
				t.Fatalf("%d-byte table: index named %q", tc.n, idx[0])
			}
			// SQLite has no length limit: the index keeps the name it always
			// had. So does PostgreSQL's, where that name fits in 63 bytes.
			fits := b.dialect == sqlstore.SQLite || tc.n+len("_expires_at_idx") <= 63
			if fits && idx[0] != name+"_expires_at_idx" {
				t.Fatalf("%d-byte table: index %q, want the name it always had, %q", tc.n, idx[0], name+"_expires_at_idx")
			}
			if len(idx[0]) > 63 && b.dialect == sqlstore.Postgres {
				t.Fatalf("%d-byte table: index name %q is %d bytes", tc.n, idx[0], len(idx[0]))
			}
			// The published schema names the same index.
			ddl, err := b.dialect.Schema(name)
			if err != nil || !strings.Contains(ddl, `"`+idx[0]+`"`) {
				t.Fatalf("Schema(%q) = %s, %v; want it to create index %q", name, ddl, err, idx[0])
			}
		}
	})
}
