package main

import (
	"net/url"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// mysqlURL turns a go-sql-driver DSN (IDEM_MYSQL_DSN) into the example's
// -store mysql://user:pass@host:port/db.
func mysqlURL(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("IDEM_MYSQL_DSN: %v", err)
	}
	u := url.URL{Scheme: "mysql", User: url.UserPassword(cfg.User, cfg.Passwd), Host: cfg.Addr, Path: "/" + cfg.DBName}
	if cfg.Passwd == "" {
		u.User = url.User(cfg.User)
	}
	return u.String()
}

// The test helper turns the driver's DSN into the URL -store takes, the
// password percent-encoded.
func TestMySQLURLHelper(t *testing.T) {
	if got := mysqlURL(t, "root:se%cret@tcp(127.0.0.1:3306)/idem?parseTime=true"); got != "mysql://root:se%25cret@127.0.0.1:3306/idem" {
		t.Fatalf("mysqlURL = %s", got)
	}
}
