package idem_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// keyRecorder records every key the middleware hands the store.
type keyRecorder struct {
	*countingStore
	mu   sync.Mutex
	keys []string
}

func (s *keyRecorder) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	s.mu.Lock()
	s.keys = append(s.keys, key)
	s.mu.Unlock()
	return s.countingStore.Claim(ctx, key, token, fp, lease)
}

// A scope taken from a credential never reaches the log, on any outcome,
// and is stored only as a fixed-length digest: a dump of the store's keys
// does not yield the credential.
func TestScopeNeverLoggedOrStoredInClear(t *testing.T) {
	const secret = "Bearer sk_live_51HxQ9TOPSECRET"
	base, _ := newCountingStore(t)
	st := &keyRecorder{countingStore: base}
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		w.WriteHeader(201)
	})
	mw := idem.New(st, idem.WithLogger(logger),
		idem.WithScope(func(r *http.Request) string { return r.Header.Get("Authorization") }))(h)
	auth := []string{"Authorization", secret}
	do(mw, "POST", "/", "k1", "a", auth...)                                    // executed
	do(mw, "POST", "/", "k1", "a", auth...)                                    // replayed
	wantProblem(t, do(mw, "POST", "/", "k1", "b", auth...), 422, "key-reused") // mismatch
	done := make(chan struct{})
	go func() { do(mw, "POST", "/slow", "k2", "", auth...); close(done) }()
	waitFor(t, "the slow request's claim", func() bool { return st.claims.Load() >= 4 })
	wantProblem(t, do(mw, "POST", "/slow", "k2", "", auth...), 409, "key-in-use") // conflict
	close(release)
	<-done
	st.set(func(s *countingStore) { s.claimErr = errors.New("connection refused") })
	wantProblem(t, do(mw, "POST", "/", "k3", "", auth...), 503, "store-unavailable") // store error

	if strings.Contains(buf.String(), "TOPSECRET") {
		t.Fatalf("the scope reached the log:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "outcome=conflict") || !strings.Contains(buf.String(), "outcome=store_error") {
		t.Fatalf("log lacks the outcomes:\n%s", buf.String())
	}
	layout := regexp.MustCompile(`^[0-9a-f]{32}\|k[0-9]$`)
	st.mu.Lock()
	defer st.mu.Unlock()
	var scoped string
	for _, k := range st.keys {
		if strings.Contains(k, "TOPSECRET") || !layout.MatchString(k) {
			t.Fatalf("stored key %q: want 32 hex digits of the scope's digest, '|', the key", k)
		}
		if scoped == "" {
			scoped = k[:32]
		} else if k[:32] != scoped {
			t.Fatalf("one scope stored under two digests: %q and %q", scoped, k[:32])
		}
	}
}
