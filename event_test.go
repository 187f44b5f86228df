package idem_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/idemgo/idem"
)

// A refused request says what was refused and why, in the event and the
// log; before, it logged key="" status=400 and nothing else.
func TestRejectionSaysWhy(t *testing.T) {
	st, _ := newCountingStore(t)
	var evs events
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	mw := idem.New(st, idem.WithHook(evs.hook), idem.WithLogger(logger), idem.WithMaxBodySize(8), idem.WithRequiredKey())(&payments{})

	cases := []struct {
		key, body, problem, reason string
		status                     int
	}{
		{"a,b", "", "key-invalid", "comma", 400},
		{"", "", "key-missing", "requires an Idempotency-Key", 400},
		{"k", "0123456789", "body-too-large", "at most 8 bytes", 413},
	}
	for _, c := range cases {
		buf.Reset()
		do(mw, "POST", "/pay", c.key, c.body)
		ev := evs.last()
		if ev.Outcome != idem.OutcomeRejected || ev.Status != c.status || ev.Problem != idem.ProblemTypeBase+c.problem || !strings.Contains(ev.Reason, c.reason) {
			t.Errorf("key %q: event %+v, want rejected %d %s with a reason about %q", c.key, ev, c.status, c.problem, c.reason)
		}
		if out := buf.String(); !strings.Contains(out, "problem="+c.problem) || !strings.Contains(out, c.reason) {
			t.Errorf("key %q: log %q lacks problem=%s and the reason", c.key, out, c.problem)
		}
	}

	// The same for a body of unknown length found too large as it is read,
	// and for a body that cannot be read.
	for _, c := range []struct {
		name, problem, reason string
		body                  io.Reader
		status                int
	}{
		{"unknown length", "body-too-large", "at most 8 bytes", iotest.HalfReader(strings.NewReader("0123456789")), 413},
		{"unreadable", "body-unreadable", "could not be read", iotest.ErrReader(errors.New("connection reset")), 400},
	} {
		r := httptest.NewRequest("POST", "/pay", c.body) // ContentLength -1
		r.Header.Set("Idempotency-Key", "k-"+c.problem)
		mw.ServeHTTP(httptest.NewRecorder(), r)
		ev := evs.last()
		if ev.Outcome != idem.OutcomeRejected || ev.Status != c.status || ev.Problem != idem.ProblemTypeBase+c.problem || !strings.Contains(ev.Reason, c.reason) {
			t.Errorf("%s: event %+v, want rejected %d %s with a reason about %q", c.name, ev, c.status, c.problem, c.reason)
		}
	}

	// Answers of other problems carry their type; the handler's own answers
	// and replays carry none.
	do(mw, "POST", "/pay", "k2", "a")
	if ev := evs.last(); ev.Outcome != idem.OutcomeExecuted || ev.Problem != "" || ev.Reason != "" {
		t.Errorf("execution: %+v", ev)
	}
	do(mw, "POST", "/pay", "k2", "b")
	if ev := evs.last(); ev.Outcome != idem.OutcomeMismatch || ev.Problem != idem.ProblemTypeBase+"key-reused" || ev.Reason != "" {
		t.Errorf("mismatch: %+v", ev)
	}
}

// The event tells how long the handler ran and how long the whole request
// took in the middleware.
func TestEventTimesTheHandler(t *testing.T) {
	st, _ := newCountingStore(t)
	var evs events
	const nap = 30 * time.Millisecond
	mw := idem.New(st, idem.WithHook(evs.hook))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(nap)
		w.WriteHeader(201)
	}))
	do(mw, "POST", "/pay", "k", "x")
	ev := evs.last()
	if ev.Outcome != idem.OutcomeExecuted || ev.HandlerDuration < nap || ev.Duration < ev.HandlerDuration {
		t.Fatalf("execution: handler %v, total %v; want handler >= %v and total >= handler", ev.HandlerDuration, ev.Duration, nap)
	}
	do(mw, "POST", "/pay", "k", "x")
	if ev := evs.last(); ev.Outcome != idem.OutcomeReplayed || ev.HandlerDuration != 0 || ev.Duration <= 0 {
		t.Fatalf("replay: handler %v, total %v; want 0 and a positive total", ev.HandlerDuration, ev.Duration)
	}

	var dev events
	_, err := idem.Do(context.Background(), st, "job-1", "fp", func(context.Context) ([]byte, error) {
		time.Sleep(nap)
		return []byte("ok"), nil
	}, idem.WithHook(dev.hook))
	if ev := dev.last(); err != nil || ev.HandlerDuration < nap || ev.Duration < ev.HandlerDuration {
		t.Fatalf("Do: %v, handler %v, total %v", err, ev.HandlerDuration, ev.Duration)
	}
}

// Without WithLogger, a failing store is still logged, through
// slog.Default; executions are not. (Not parallel: it swaps the default
// logger.)
func TestStoreErrorsReachTheDefaultLogger(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer slog.SetDefault(old)

	st, _ := newCountingStore(t)
	mw := idem.New(st)(&payments{})
	do(mw, "POST", "/pay", "k1", "a")
	if buf.Len() != 0 {
		t.Fatalf("an execution was logged without a logger: %s", buf.String())
	}
	st.set(func(s *countingStore) { s.claimErr = errors.New("no such table: idem_keys") })
	if w := do(mw, "POST", "/pay", "k2", "a"); w.Code != 503 {
		t.Fatalf("status %d, want 503", w.Code)
	}
	out := buf.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "outcome=store_error") || !strings.Contains(out, "no such table: idem_keys") {
		t.Fatalf("default log %q lacks the store error", out)
	}
}
