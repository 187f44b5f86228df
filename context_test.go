package idem_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/idemgo/idem"
)

// accessors is what the three context accessors report.
type accessors struct {
	key           string
	keyOK         bool
	scope         string
	scopeOK       bool
	markCommitted bool
}

func readAccessors(ctx context.Context) accessors {
	var a accessors
	a.key, a.keyOK = idem.KeyFromContext(ctx)
	a.scope, a.scopeOK = idem.ScopeFromContext(ctx)
	a.markCommitted = idem.MarkCommitted(ctx)
	return a
}

// KeyFromContext, ScopeFromContext and MarkCommitted agree on where they
// are: under the middleware all three report so (without WithScope the
// scope is ""); in a Runner's work there is a key but no scope and nothing
// for MarkCommitted to keep; in a fail-open run nothing is recorded, so
// MarkCommitted reports false; elsewhere all report false.
func TestContextAccessorsAgree(t *testing.T) {
	st, _ := newCountingStore(t)
	var got accessors
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = readAccessors(r.Context()) })

	do(idem.New(st)(h), "POST", "/", "k1", "")
	if want := (accessors{"k1", true, "", true, true}); got != want {
		t.Errorf("under the middleware: %+v, want %+v", got, want)
	}
	do(idem.New(st, idem.WithScope(func(*http.Request) string { return "acct" }))(h), "POST", "/", "k2", "")
	if want := (accessors{"k2", true, "acct", true, true}); got != want {
		t.Errorf("under the middleware with a scope: %+v, want %+v", got, want)
	}
	r, _ := idem.NewRunner(st)
	r.Do(context.Background(), "job", "fp", func(ctx context.Context) ([]byte, error) {
		got = readAccessors(ctx)
		return nil, nil
	})
	if want := (accessors{"job", true, "", false, false}); got != want {
		t.Errorf("in a Runner's work: %+v, want %+v", got, want)
	}
	st.set(func(s *countingStore) { s.claimErr = errors.New("down") })
	do(idem.New(st, idem.WithFailOpen())(h), "POST", "/", "k3", "")
	if want := (accessors{"k3", true, "", true, false}); got != want {
		t.Errorf("in a fail-open run: %+v, want %+v", got, want)
	}
	if got, want := readAccessors(context.Background()), (accessors{}); got != want {
		t.Errorf("outside: %+v, want %+v", got, want)
	}
}
