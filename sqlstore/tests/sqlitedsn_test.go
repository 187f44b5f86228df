package sqlstore_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// SQLiteDSN escapes the characters a file: URI gives a meaning to, so a
// path holding % ? or # names exactly that file, with the settings still
// applied (WAL mode here) rather than swallowed into the name.
func TestSQLiteDSNEscapesPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a%41b?c#d.db")
	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := sqlstore.New(db, sqlstore.SQLite, sqlstore.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, err := s.Claim(ctx, "k", "tok", "fp", time.Minute); rec != nil || err != nil {
		t.Fatalf("Claim: %v %v", rec, err)
	}
	if _, err := os.Stat(path); err != nil {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("no file at %s (%v); the directory holds %q", path, err, names)
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
}
