package redisstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
)

// hash returns the fields of the hash at key, as miniredis holds them.
func hash(t *testing.T, m *miniredis.Miniredis, key string) map[string]string {
	t.Helper()
	fields, err := m.HKeys(key)
	if err != nil {
		t.Fatalf("HKeys(%q): %v", key, err)
	}
	h := make(map[string]string, len(fields))
	for _, f := range fields {
		h[f] = m.HGet(key, f)
	}
	return h
}

// The documented key layout: one hash per key under the prefix, its fields,
// and the lease and retention as Redis TTLs.
func TestKeyLayout(t *testing.T) {
	m, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	key := "acct 1|pay{x}é"
	rkey := "idem:" + key

	if _, err := st.Claim(ctx, key, "tok", "fp", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := m.Keys(); len(got) != 1 || got[0] != rkey {
		t.Fatalf("Redis keys = %q, want [%q]", got, rkey)
	}
	want := map[string]string{"v": "1", "s": "1", "t": "tok", "f": "fp"}
	if got := hash(t, m, rkey); !equal(got, want) {
		t.Fatalf("in-progress hash = %q, want %q", got, want)
	}
	if ttl := m.TTL(rkey); ttl != 30*time.Second {
		t.Fatalf("lease TTL = %v, want 30s", ttl)
	}

	if err := st.Renew(ctx, key, "tok", 45*time.Second); err != nil {
		t.Fatal(err)
	}
	if ttl := m.TTL(rkey); ttl != 45*time.Second {
		t.Fatalf("TTL after Renew = %v, want 45s", ttl)
	}

	result := []byte("\x00\xff binary\r\n")
	if err := st.Complete(ctx, key, "tok", result, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{"v": "1", "s": "2", "t": "tok", "f": "fp", "r": string(result)}
	if got := hash(t, m, rkey); !equal(got, want) {
		t.Fatalf("completed hash = %q, want %q", got, want)
	}
	if ttl := m.TTL(rkey); ttl != 24*time.Hour {
		t.Fatalf("retention TTL = %v, want 24h", ttl)
	}

	if _, err := st.Claim(ctx, "other", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Release(ctx, "other", "tok"); err != nil {
		t.Fatal(err)
	}
	if m.Exists("idem:other") {
		t.Fatal("Release left the key in Redis")
	}
}

// The key the middleware stores for a request: the prefix, 32 hex digits of
// the SHA-256 of the scope, '|', the client's key. The scope, here a bearer
// token, appears nowhere in Redis: not in a key, not in a field.
func TestMiddlewareKeyLayout(t *testing.T) {
	m, c := newMini(t)
	const auth = "Bearer sk_live_TOPSECRET"
	mw := idem.New(redisstore.New(c),
		idem.WithScope(func(r *http.Request) string { return r.Header.Get("Authorization") }),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(201) }))
	for _, scoped := range []bool{true, false} {
		r := httptest.NewRequest("POST", "/payments", strings.NewReader("{}"))
		r.Header.Set("Idempotency-Key", "order-42")
		if scoped {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		mw.ServeHTTP(w, r)
		if w.Code != 201 {
			t.Fatalf("status %d", w.Code)
		}
	}
	digest := func(scope string) string {
		sum := sha256.Sum256([]byte(scope))
		return hex.EncodeToString(sum[:16])
	}
	for _, want := range []string{"idem:" + digest(auth) + "|order-42", "idem:" + digest("") + "|order-42"} {
		if !m.Exists(want) {
			t.Fatalf("Redis keys %q lack %q", m.Keys(), want)
		}
	}
	for _, k := range m.Keys() {
		if strings.Contains(k, "TOPSECRET") || strings.Contains(hashOrString(t, m, k), "TOPSECRET") {
			t.Fatalf("the scope is stored in clear in %q", k)
		}
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestWithPrefix(t *testing.T) {
	m, c := newMini(t)
	ctx := context.Background()
	a := redisstore.New(c, redisstore.WithPrefix("app-a/"))
	b := redisstore.New(c, redisstore.WithPrefix("app-b/"))
	if _, err := a.Claim(ctx, "k", "tok-a", "fp-a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if !m.Exists("app-a/k") {
		t.Fatalf("keys = %q, want app-a/k", m.Keys())
	}
	// Two prefixes are two namespaces.
	if rec, err := b.Claim(ctx, "k", "tok-b", "fp-b", time.Minute); err != nil || rec != nil {
		t.Fatalf("Claim under another prefix: %v %v, want the key free", rec, err)
	}
	if err := b.Complete(ctx, "k", "tok-a", nil, time.Minute); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Complete with the other namespace's token: %v, want ErrLockLost", err)
	}
}

// Durations become whole milliseconds, rounded up: a lease is never 0 ms
// (which Redis would take as "expire now"), and zero or less counts as 1 ms.
func TestMillisecondsRoundUp(t *testing.T) {
	m, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	for _, tc := range []struct {
		lease time.Duration
		want  time.Duration
	}{
		{-time.Second, time.Millisecond},
		{0, time.Millisecond},
		{time.Nanosecond, time.Millisecond},
		{999 * time.Microsecond, time.Millisecond},
		{time.Millisecond, time.Millisecond},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{2*time.Second + time.Nanosecond, 2001 * time.Millisecond},
	} {
		key := tc.lease.String()
		if _, err := st.Claim(ctx, key, "tok", "fp", tc.lease); err != nil {
			t.Fatal(err)
		}
		if got := m.TTL("idem:" + key); got != tc.want {
			t.Errorf("lease %v: TTL %v, want %v", tc.lease, got, tc.want)
		}
		if err := st.Renew(ctx, key, "tok", tc.lease); err != nil {
			t.Fatal(err)
		}
		if got := m.TTL("idem:" + key); got != tc.want {
			t.Errorf("renewed lease %v: TTL %v, want %v", tc.lease, got, tc.want)
		}
		if err := st.Complete(ctx, key, "tok", nil, tc.lease); err != nil {
			t.Fatal(err)
		}
		if got := m.TTL("idem:" + key); got != tc.want {
			t.Errorf("retention %v: TTL %v, want %v", tc.lease, got, tc.want)
		}
	}
}

// A record in format 1, as an earlier release wrote it, reads back.
func TestReadsFormatVersion1(t *testing.T) {
	m, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	m.HSet("idem:done", "v", "1", "s", "2", "f", "fp-1", "r", "stored\x00bytes")
	m.SetTTL("idem:done", time.Hour)
	m.HSet("idem:busy", "v", "1", "s", "1", "t", "owner", "f", "fp-2")
	m.SetTTL("idem:busy", 20*time.Second)

	rec, err := st.Claim(ctx, "done", "tok", "fp", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.State != idem.StateCompleted || rec.Fingerprint != "fp-1" ||
		string(rec.Result) != "stored\x00bytes" || rec.LeaseLeft != 0 {
		t.Fatalf("completed v1 record read as %+v", rec)
	}
	rec, err = st.Claim(ctx, "busy", "tok", "fp", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.State != idem.StateInProgress || rec.Fingerprint != "fp-2" ||
		rec.Token != "owner" || rec.LeaseLeft != 20*time.Second || rec.Result != nil {
		t.Fatalf("in-progress v1 record read as %+v", rec)
	}
	if err := st.Complete(ctx, "busy", "owner", []byte("r"), time.Hour); err != nil {
		t.Fatalf("owner's Complete of a v1 record: %v", err)
	}

	// Fencing looks at the state, not only at the token: a completed record
	// that still names its owner (this release removes t on Complete) is not
	// the owner's any more.
	m.HSet("idem:done-tok", "v", "1", "s", "2", "t", "owner", "f", "fp", "r", "first")
	m.SetTTL("idem:done-tok", time.Hour)
	for name, err := range map[string]error{
		"Complete": st.Complete(ctx, "done-tok", "owner", []byte("second"), time.Hour),
		"Renew":    st.Renew(ctx, "done-tok", "owner", time.Millisecond),
		"Release":  st.Release(ctx, "done-tok", "owner"),
	} {
		if !errors.Is(err, idem.ErrLockLost) {
			t.Errorf("%s of a completed record by its former owner: %v, want ErrLockLost", name, err)
		}
	}
	if r := m.HGet("idem:done-tok", "r"); r != "first" || m.TTL("idem:done-tok") != time.Hour {
		t.Errorf("completed record changed: r=%q ttl=%v", r, m.TTL("idem:done-tok"))
	}
}

// What this release cannot read is an error (the middleware
// answers 503), never a free key, a wrong record or ErrLockLost; the record
// stays as it is.
func TestRejectsUnknownRecords(t *testing.T) {
	m, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	m.HSet("idem:v2", "v", "2", "s", "1", "t", "owner", "f", "fp")
	m.HSet("idem:noversion", "s", "2", "f", "fp", "r", "x")
	m.HSet("idem:badstate", "v", "1", "s", "9", "f", "fp")
	m.HSet("idem:noresult", "v", "1", "s", "2", "f", "fp")
	m.HSet("idem:nofingerprint", "v", "1", "s", "1", "t", "owner")
	if err := m.Set("idem:string", "not a hash"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, msg string }{
		{"v2", `record format version "2" unknown`},
		{"noversion", `record format version "" unknown`},
		{"badstate", `record state "9"`},
		{"noresult", "malformed record"},
		{"nofingerprint", "malformed record"},
		{"string", "WRONGTYPE"},
	} {
		before := hashOrString(t, m, "idem:"+tc.key)
		rec, err := st.Claim(ctx, tc.key, "tok", "fp", time.Minute)
		switch {
		case err == nil:
			t.Errorf("%s: Claim returned no error, record %+v", tc.key, rec)
			continue
		case errors.Is(err, idem.ErrLockLost):
			t.Errorf("%s: Claim returned ErrLockLost", tc.key)
		case !strings.HasPrefix(err.Error(), "redisstore: claim: ") || !strings.Contains(err.Error(), tc.msg):
			t.Errorf("%s: error %q, want it to say %q", tc.key, err, tc.msg)
		}
		if tc.key != "string" && !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("%s: error %q does not wrap idem.ErrCorruptRecord", tc.key, err)
		}
		if after := hashOrString(t, m, "idem:"+tc.key); after != before {
			t.Errorf("%s: Claim changed the record from %s to %s", tc.key, before, after)
		}
	}
	// A record of an unknown version is not the caller's, whatever its token.
	for name, err := range map[string]error{
		"Complete": st.Complete(ctx, "v2", "owner", []byte("r"), time.Hour),
		"Renew":    st.Renew(ctx, "v2", "owner", time.Hour),
		"Release":  st.Release(ctx, "v2", "owner"),
	} {
		if !errors.Is(err, idem.ErrLockLost) {
			t.Errorf("%s of a version 2 record: %v, want ErrLockLost", name, err)
		}
	}
	if got := m.HGet("idem:v2", "s"); got != "1" || !m.Exists("idem:v2") {
		t.Errorf("version 2 record changed by fenced calls")
	}
}

// hashOrString renders the value at key, a string or a hash, for comparing.
func hashOrString(t *testing.T, m *miniredis.Miniredis, key string) string {
	t.Helper()
	if s, err := m.Get(key); err == nil {
		return s
	}
	var b strings.Builder
	fields, _ := m.HKeys(key)
	for _, f := range fields {
		b.WriteString(f + "=" + m.HGet(key, f) + ";")
	}
	return b.String()
}

// A nil client is refused when the store is built, with a message that
// says so, not on the first request.
func TestNewRefusesNilClient(t *testing.T) {
	for name, client := range map[string]redis.UniversalClient{
		"nil interface":      nil,
		"nil *redis.Client":  (*redis.Client)(nil),
		"nil *ClusterClient": (*redis.ClusterClient)(nil),
	} {
		func() {
			defer func() {
				msg, _ := recover().(string)
				if !strings.Contains(msg, "redisstore: New: nil client") {
					t.Errorf("%s: New panicked with %q, want a message naming the nil client", name, msg)
				}
			}()
			redisstore.New(client)
		}()
	}
}
