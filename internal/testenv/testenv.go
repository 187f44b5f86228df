// Package testenv tells the tests of this repository where the servers
// that scripts/test.sh (through scripts/services.sh) starts are, and what
// a test does when one is missing: it is skipped locally, and fails under
// CI=true, where a missing server is a broken set-up rather than a choice.
//
// Under go test -short, tests that need a server or a long run are skipped,
// so that `go test -short ./...` runs in every module in seconds with no
// server at all.
//
// The package is internal to the repository: every module of it may import
// it (the internal rule is path based), no user can.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The environment variables scripts/services.sh sets.
const (
	// RedisAddr is host:port of a single Redis node.
	RedisAddr = "IDEM_REDIS_ADDR"
	// RedisClusterAddrs is host:port,host:port,host:port of a 3-master
	// Redis Cluster.
	RedisClusterAddrs = "IDEM_REDIS_CLUSTER_ADDRS"
	// PostgresDSN is a postgres:// URL of an empty database.
	PostgresDSN = "IDEM_POSTGRES_DSN"
	// MySQLDSN is the go-sql-driver/mysql DSN of an empty MariaDB database.
	MySQLDSN = "IDEM_MYSQL_DSN"
	// RedisServer is the path of redis-server, for tests that run their own.
	RedisServer = "IDEM_REDIS_SERVER"
	// PGBinDir is the directory of pg_ctl, postgres and initdb.
	PGBinDir = "IDEM_PG_BIN_DIR"
)

// InCI reports whether the tests run in CI (CI=true), where every server is
// expected.
func InCI() bool { return os.Getenv("CI") == "true" }

// Server returns the value of the environment variable env, which names a
// server the test needs; what describes it for the message ("a Redis
// node"). When env is unset the test fails under CI=true and is skipped
// elsewhere; under -short it is skipped whether env is set or not.
func Server(tb testing.TB, env, what string) string {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("needs %s (%s); skipped under -short", what, env)
	}
	v := os.Getenv(env)
	if v == "" {
		Unavailable(tb, fmt.Sprintf("%s not set: this test needs %s; run ./scripts/test.sh or scripts/services.sh", env, what))
	}
	return v
}

// Unavailable stops a test that cannot run here: under CI=true it fails
// with msg, elsewhere it is skipped with msg.
func Unavailable(tb testing.TB, msg string) {
	tb.Helper()
	if InCI() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// SkipShort skips a long test under -short; why says what makes it long.
func SkipShort(tb testing.TB, why string) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("%s; skipped under -short", why)
	}
}

// BuildCommand builds the main package in the current directory (go build)
// into a new temporary directory, for black-box tests that run the command
// as a user would. It returns the binary's path and a function that removes
// the directory; the error carries the compiler's output.
func BuildCommand(name string) (path string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "idem-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	path = filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("building %s: %v\n%s", name, err, out)
	}
	return path, remove, nil
}
