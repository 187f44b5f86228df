package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// storeOpener opens the store that a -store value names. spec is the whole
// flag value (for example "redis://127.0.0.1:6379/0"). The returned close
// function releases the store's connections.
type storeOpener func(ctx context.Context, spec string) (st idem.Store, close func() error, err error)

// storeOpeners maps a -store scheme ("memory", "redis", "sqlite", …) to its
// opener. Each backend registers itself from its own file.
var storeOpeners = map[string]storeOpener{
	"memory": func(context.Context, string) (idem.Store, func() error, error) {
		s := memstore.New()
		return s, s.Close, nil
	},
}

// openStore opens the store named by spec: "memory", "sqlite:PATH",
// "redis://…", "redis-cluster://…", "postgres://…" or "mysql://…".
func openStore(ctx context.Context, spec string) (idem.Store, func() error, error) {
	scheme := spec
	if i := strings.IndexAny(spec, ":"); i >= 0 {
		scheme = spec[:i]
	}
	if scheme == "postgresql" {
		scheme = "postgres"
	}
	open, ok := storeOpeners[scheme]
	if !ok {
		known := make([]string, 0, len(storeOpeners))
		for k := range storeOpeners {
			known = append(known, k)
		}
		sort.Strings(known)
		return nil, nil, fmt.Errorf("-store %q: unknown store %q (this build knows: %s)", spec, scheme, strings.Join(known, ", "))
	}
	return open(ctx, spec)
}
