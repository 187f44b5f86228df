package idem_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/idemgo/idem"
)

// Each outcome has its snake_case name; a value outside the list is
// "unknown". Only the two incidents are not final outcomes.
func TestOutcomeNamesAndFinality(t *testing.T) {
	names := map[idem.Outcome]string{
		idem.OutcomeExecuted:      "executed",
		idem.OutcomeReplayed:      "replayed",
		idem.OutcomeNotReplayable: "not_replayable",
		idem.OutcomeConflict:      "conflict",
		idem.OutcomeMismatch:      "mismatch",
		idem.OutcomeRejected:      "rejected",
		idem.OutcomeStoreError:    "store_error",
		idem.OutcomeLockLost:      "lock_lost",
		idem.OutcomeCancelled:     "cancelled",
		idem.OutcomeRenewFailed:   "renew_failed",
		idem.OutcomeReleaseFailed: "release_failed",
		idem.OutcomePanic:         "panic",
	}
	for o := idem.Outcome(0); o < 20; o++ {
		want, known := names[o]
		if !known {
			want = "unknown"
		}
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", o, got, want)
		}
		if !known {
			continue
		}
		if final := o != idem.OutcomeRenewFailed && o != idem.OutcomeReleaseFailed; o.Final() != final {
			t.Errorf("%v.Final() = %v, want %v", o, o.Final(), final)
		}
	}
}

// logLine returns the one line of out that holds outcome=name key=key.
func logLine(t *testing.T, out, name, key string) string {
	t.Helper()
	var found []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "outcome="+name+" key="+key+" ") {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d log lines for outcome=%s key=%s, want 1:\n%s", len(found), name, key, out)
	}
	return found[0]
}

// A log line carries the attributes that speak for its outcome and no
// empty ones: stored only for an execution, a handler time only when the
// handler ran, a status only when the middleware answered, the request's
// method and path only under the middleware, a scope only as a digest.
func TestLogLineAttributes(t *testing.T) {
	st, _ := newCountingStore(t)
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mw := idem.New(st, idem.WithLogger(logger))(&payments{})
	do(mw, "POST", "/pay", "k1", "a")
	do(mw, "POST", "/pay", "k1", "a")
	scoped := idem.New(st, idem.WithLogger(logger), idem.WithScope(func(*http.Request) string { return "acct_42" }))(&payments{})
	do(scoped, "POST", "/pay", "k2", "a")
	if _, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return []byte("r"), nil }, idem.WithLogger(logger)); err != nil {
		t.Fatal(err)
	}
	out := buf.String()

	has := func(line string, attrs ...string) {
		t.Helper()
		for _, a := range attrs {
			if !strings.Contains(line, " "+a) {
				t.Errorf("log line %q lacks %q", line, a)
			}
		}
	}
	lacks := func(line string, attrs ...string) {
		t.Helper()
		for _, a := range attrs {
			if strings.Contains(line, " "+a) {
				t.Errorf("log line %q holds %q", line, a)
			}
		}
	}
	exec := logLine(t, out, "executed", "k1")
	has(exec, "status=201", "stored=true", "method=POST", "path=/pay", "duration=", "handler=")
	lacks(exec, "scope_digest=", "error=", "problem=", "reason=")

	replay := logLine(t, out, "replayed", "k1")
	has(replay, "status=201", "method=POST", "duration=")
	lacks(replay, "stored=", "handler=", "scope_digest=", "error=")

	scope := logLine(t, out, "executed", "k2")
	if !regexp.MustCompile(` scope_digest=[0-9a-f]{16} `).MatchString(scope) || strings.Contains(scope, "acct_42") {
		t.Errorf("log line %q: want a scope_digest of 16 hex digits and not the scope", scope)
	}

	job := logLine(t, out, "executed", "job")
	has(job, "stored=true", "duration=", "handler=")
	lacks(job, "status=", "method=", "path=", "scope_digest=", "error=")
}

// A key of a Runner may hold any visible ASCII byte, '!' (0x21) to '~'
// (0x7e), and nothing outside.
func TestJobKeyVisibleASCIIBounds(t *testing.T) {
	st, _ := newCountingStore(t)
	work := func(context.Context) ([]byte, error) { return []byte("ok"), nil }
	for _, key := range []string{"!", "~", "job!~"} {
		if _, err := idem.Do(context.Background(), st, key, "fp", work); err != nil {
			t.Errorf("key %q: %v, want it accepted", key, err)
		}
	}
	for _, key := range []string{" ", "\x7f", "job\x20", "job\x7f"} {
		if _, err := idem.Do(context.Background(), st, key, "fp", work); err == nil {
			t.Errorf("key %q accepted, want ErrInvalidKey", key)
		}
	}
}

// ctxHandler is a slog.Handler that keeps, for each record, the value a
// context carries under traceKey, as a handler that adds trace IDs does.
type ctxHandler struct {
	mu     *sync.Mutex
	traces *[]any
}

type traceKey struct{}

func (h ctxHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.traces = append(*h.traces, ctx.Value(traceKey{}))
	return nil
}
func (h ctxHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h ctxHandler) WithGroup(string) slog.Handler      { return h }

// A request's outcome is logged with the request's context, so that a
// log handler can add what it carries (a trace ID, a tenant).
func TestLogCarriesRequestContext(t *testing.T) {
	st, _ := newCountingStore(t)
	var (
		mu     sync.Mutex
		traces []any
	)
	logger := slog.New(ctxHandler{&mu, &traces})
	mw := idem.New(st, idem.WithLogger(logger))(&payments{})
	r := httptest.NewRequest("POST", "/pay", strings.NewReader("a"))
	r.Header.Set("Idempotency-Key", "k1")
	r = r.WithContext(context.WithValue(r.Context(), traceKey{}, "trace-7"))
	mw.ServeHTTP(httptest.NewRecorder(), r)
	mu.Lock()
	defer mu.Unlock()
	if len(traces) != 1 || traces[0] != "trace-7" {
		t.Fatalf("log records carried %v from their context, want the request's trace-7", traces)
	}
}

// Incidents beside a request's outcome (a failed release, a failed
// renewal) are logged at Warn: the key stays locked, or may be lost, but
// the request itself was answered.
func TestIncidentsLoggedAtWarn(t *testing.T) {
	base, _ := newCountingStore(t)
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	do(idem.New(failingReleaseStore{base}, idem.WithLogger(logger))(&payments{status: 503}), "POST", "/", "k1", "")
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if !strings.Contains(out, "level=WARN msg=idempotency outcome=release_failed key=k1") {
		t.Fatalf("log lacks the failed release at WARN:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
