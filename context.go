package idem

// What the middleware and a Runner tell the work they run through its
// context. The three accessors agree: each reports whether ctx belongs to
// such work.
//
//	                    KeyFromContext  ScopeFromContext  MarkCommitted
//	HTTP handler        key, true       scope, true       true (keeps the response)
//	  run by fail-open  key, true       scope, true       false (nothing is recorded)
//	Runner/Do work      key, true       "", false         false (does nothing)
//	anything else       "", false       "", false         false

import (
	"context"
	"sync/atomic"
)

// requestInfo is what the middleware tells the handler through the
// request's context.
type requestInfo struct {
	key       string
	scope     string
	http      bool // an HTTP request under the middleware
	unguarded bool // run with fail-open: nothing will be recorded
	committed atomic.Bool
}

type infoKey struct{}

func withInfo(ctx context.Context, info *requestInfo) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(infoKey{}).(*requestInfo)
	return info
}

// KeyFromContext returns the idempotency key of the request (or Do call)
// that ctx belongs to, as the client sent it, without the scope. A handler
// can pass it on, for example as the idempotency key of a downstream
// provider. ok is false outside the middleware and a Runner's (or Do's)
// work.
func KeyFromContext(ctx context.Context) (key string, ok bool) {
	if info := infoFrom(ctx); info != nil {
		return info.key, true
	}
	return "", false
}

// ScopeFromContext returns the scope the key of ctx's request is stored
// under, as WithScope named it ("" without WithScope). ok is false outside
// the middleware, including inside a Runner's work, which has no scope.
func ScopeFromContext(ctx context.Context) (scope string, ok bool) {
	if info := infoFrom(ctx); info != nil && info.http {
		return info.scope, true
	}
	return "", false
}

// MarkCommitted tells the middleware that the side effects of ctx's request
// have happened, so that its response is stored and replayed whatever its
// status, even a 5xx that the response policy would not keep. A handler calls
// it once the charge, write or message it stands for cannot be undone. It
// reports false, and does nothing, when ctx does not belong to a request
// under the middleware, including inside a Runner's (or Do's) work, which
// keeps its result by returning a nil error, and in a request run without
// protection by WithFailOpen, whose response is not recorded.
func MarkCommitted(ctx context.Context) bool {
	if info := infoFrom(ctx); info != nil && info.http && !info.unguarded {
		info.committed.Store(true)
		return true
	}
	return false
}
