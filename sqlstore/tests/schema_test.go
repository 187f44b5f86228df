package sqlstore_test

import (
	"os"
	"strings"
	"testing"

	"github.com/idemgo/idem/sqlstore"
)

// The schema printed in the package documentation is the one Migrate runs.
func TestDocumentedSchema(t *testing.T) {
	src, err := os.ReadFile("../doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		code, ok := strings.CutPrefix(line, "//\t")
		if strings.HasPrefix(code, "CREATE TABLE") {
			in = true
		}
		if in && ok {
			doc = append(doc, code)
		}
		if in && strings.HasPrefix(code, "CREATE INDEX") {
			break
		}
	}
	want, err := sqlstore.Postgres.Schema(sqlstore.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	want = strings.ReplaceAll(strings.TrimSpace(want), "\n\n", "\n")
	if got := strings.Join(doc, "\n"); got != want {
		t.Fatalf("doc.go shows\n%s\n\nbut Postgres.Schema returns\n%s", got, want)
	}
}

// The MySQL schema printed in the README is the one Migrate runs.
func TestDocumentedMySQLSchema(t *testing.T) {
	src, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := sqlstore.MySQL.Schema(sqlstore.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(src), "```sql\nCREATE TABLE IF NOT EXISTS `idem_keys`")
	if start < 0 {
		t.Fatal("the README shows no MySQL CREATE TABLE of `idem_keys`")
	}
	block := string(src)[start+len("```sql\n"):]
	block = block[:strings.Index(block, "```")]
	if block != want {
		t.Fatalf("the README shows\n%s\nbut MySQL.Schema returns\n%s", block, want)
	}
}
