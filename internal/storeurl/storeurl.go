// Package storeurl opens the idem store that a -store flag value names, for
// the commands of this repository (the example service and idemproxy), so
// that they accept exactly the same forms:
//
//	memory                                        in-process (memstore)
//	sqlite:PATH                                   SQLite file
//	redis://host:port/db, rediss://…              one Redis node
//	redis-cluster://host:port?addr=host2:port2    Redis Cluster (rediss-cluster:// with TLS)
//	postgres://… or postgresql://…                PostgreSQL
//	mysql://user:pass@host:port/db                MySQL or MariaDB
//
// It is internal: the URL forms and the drivers they pull in are a choice
// of these commands, not an API that programs importing idem should build
// on (they construct their store directly).
package storeurl

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// Usage lists the forms Open accepts, for a flag's help text.
const Usage = "memory, sqlite:PATH, redis://host:port/db, redis-cluster://host:port?addr=host2:port2, postgres://..., mysql://user:pass@host:port/db"

// Options are the settings of Open beyond the URL.
type Options struct {
	// Logger receives what a store reports in the background, such as a
	// failed sweep of expired SQL records (default slog.Default()).
	Logger *slog.Logger
	// RedisClient is the client of redis:// and redis-cluster:// stores:
	// ClientRueidis (the default when empty) or ClientGoRedis.
	RedisClient string
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.Default()
	}
	return o.Logger
}

// opener opens the store that a -store value names. spec is the whole
// value (for example "redis://127.0.0.1:6379/0"). The returned close
// function releases the store's connections.
type opener func(ctx context.Context, spec string, o Options) (st idem.Store, close func() error, err error)

// openers maps a scheme ("memory", "redis", "sqlite", …) to its opener.
// Each backend registers itself from its own file.
var openers = map[string]opener{
	"memory": func(context.Context, string, Options) (idem.Store, func() error, error) {
		s := memstore.New()
		return s, s.Close, nil
	},
}

// Kind returns the scheme of a -store value ("redis", "postgres", …), which
// can be printed: unlike the value, it never holds a password.
func Kind(spec string) string {
	scheme, _, _ := strings.Cut(spec, ":")
	if scheme == "postgresql" {
		scheme = "postgres"
	}
	return scheme
}

// Schemes returns the schemes Open knows, sorted.
func Schemes() []string {
	known := make([]string, 0, len(openers))
	for k := range openers {
		known = append(known, k)
	}
	sort.Strings(known)
	return known
}

// Open opens the store named by spec (see the package documentation), checks
// that it answers, and prepares it (loads scripts, creates tables). The
// returned close function releases its connections. Errors never quote a
// password of spec.
func Open(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	if err := CheckRedisClient(o.RedisClient); err != nil {
		return nil, nil, err
	}
	scheme := Kind(spec)
	open, ok := openers[scheme]
	if !ok {
		return nil, nil, fmt.Errorf("-store %q: unknown store %q (this build knows: %s)", scheme+":…", scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, spec, o)
}
