package rueidisstore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/rueidisstore"
)

// The two Redis stores keep the same records: what one writes, the other
// reads and fences, on miniredis and on a real Redis.
func TestInteropWithRedisstore(t *testing.T) {
	t.Run("miniredis", func(t *testing.T) {
		m, rc := newMini(t)
		gc := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { gc.Close() })
		testInterop(t, rc, gc, "idem:")
	})
	t.Run("redis", func(t *testing.T) {
		rc := realClient(t)
		gc := redis.NewClient(&redis.Options{Addr: serverEnv(t, envAddr)})
		t.Cleanup(func() { gc.Close() })
		testInterop(t, rc, gc, runPrefix(t, rc))
	})
}

func testInterop(t *testing.T, rc rueidis.Client, gc *redis.Client, prefix string) {
	ctx := context.Background()
	ru := rueidisstore.New(rc, rueidisstore.WithPrefix(prefix))
	gr := redisstore.New(gc, redisstore.WithPrefix(prefix))
	result := idem.EncodeResponse(&idem.Response{Status: 201, Body: []byte("\x00\xffpaid\r\n")})

	for _, dir := range []struct {
		name          string
		writer, other idem.Store
	}{
		{"go-redis writes, rueidis reads", gr, ru},
		{"rueidis writes, go-redis reads", ru, gr},
	} {
		key := dir.name
		if rec, err := dir.writer.Claim(ctx, key, "owner", "fp-1", time.Minute); err != nil || rec != nil {
			t.Fatalf("%s: Claim: %+v %v", dir.name, rec, err)
		}
		// The other store sees the owner's record and does not take the key.
		rec, err := dir.other.Claim(ctx, key, "intruder", "fp-2", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil || rec.State != idem.StateInProgress || rec.Token != "owner" || rec.Fingerprint != "fp-1" ||
			rec.LeaseLeft <= 0 || rec.LeaseLeft > time.Minute {
			t.Fatalf("%s: other store read the in-progress record as %+v", dir.name, rec)
		}
		// Fencing holds across clients: a stale token fails, the owner's works.
		if err := dir.other.Complete(ctx, key, "intruder", []byte("x"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
			t.Fatalf("%s: Complete with another token: %v, want ErrLockLost", dir.name, err)
		}
		if err := dir.other.Renew(ctx, key, "owner", time.Minute); err != nil {
			t.Fatalf("%s: owner's Renew through the other store: %v", dir.name, err)
		}
		if err := dir.writer.Complete(ctx, key, "owner", bytes.Clone(result), time.Hour); err != nil {
			t.Fatal(err)
		}
		rec, err = dir.other.Claim(ctx, key, "late", "fp-1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil || rec.State != idem.StateCompleted || rec.Fingerprint != "fp-1" || !bytes.Equal(rec.Result, result) {
			t.Fatalf("%s: other store read the completed record as %+v", dir.name, rec)
		}
	}
}

// The scripts are the same text, so the scripts one store loads serve the
// other: after redisstore's Load, rueidisstore never needs EVAL.
func TestScriptsAreShared(t *testing.T) {
	ctx := context.Background()
	m, rc := newMini(t)
	gc := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { gc.Close() })
	if err := redisstore.New(gc).Load(ctx); err != nil {
		t.Fatal(err)
	}
	cnt := &counter{Client: rc}
	st := rueidisstore.New(cnt)
	if _, err := st.Claim(ctx, "k", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Renew(ctx, "k", "tok", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx, "k", "tok", []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Claim(ctx, "k2", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Release(ctx, "k2", "tok"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cnt.take(), " "); got != "evalsha evalsha evalsha evalsha evalsha" {
		t.Fatalf("operations after redisstore's Load sent %q, want only evalsha", got)
	}
}

// The documented key layout, read with miniredis: one hash per key, its
// fields, and the lease and retention as Redis TTLs in whole milliseconds.
func TestKeyLayout(t *testing.T) {
	m, c := newMini(t)
	st := rueidisstore.New(c)
	ctx := context.Background()
	key := "acct 1|pay{x}é"
	rkey := "idem:" + key
	fields := func() string {
		names, _ := m.HKeys(rkey)
		var b strings.Builder
		for _, f := range names {
			b.WriteString(f + "=" + m.HGet(rkey, f) + ";")
		}
		return b.String()
	}
	if _, err := st.Claim(ctx, key, "tok", "fp", 1500*time.Microsecond); err != nil {
		t.Fatal(err)
	}
	if got, want := fields(), "f=fp;s=1;t=tok;v=1;"; got != want {
		t.Fatalf("in-progress hash = %q, want %q", got, want)
	}
	if ttl := m.TTL(rkey); ttl != 2*time.Millisecond {
		t.Fatalf("lease 1.5ms became TTL %v, want 2ms (rounded up)", ttl)
	}
	if err := st.Renew(ctx, key, "tok", 45*time.Second); err != nil {
		t.Fatal(err)
	}
	if ttl := m.TTL(rkey); ttl != 45*time.Second {
		t.Fatalf("TTL after Renew = %v, want 45s", ttl)
	}
	if err := st.Complete(ctx, key, "tok", []byte("\x00\xff r"), 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if got, want := fields(), "f=fp;r=\x00\xff r;s=2;t=tok;v=1;"; got != want {
		t.Fatalf("completed hash = %q, want %q", got, want)
	}
	if ttl := m.TTL(rkey); ttl != 24*time.Hour {
		t.Fatalf("retention TTL = %v, want 24h", ttl)
	}
}

// What this release cannot read is an error wrapping idem.ErrCorruptRecord,
// never a free key or a wrong record, and the record stays as it is.
func TestRejectsUnknownRecords(t *testing.T) {
	m, c := newMini(t)
	st := rueidisstore.New(c)
	ctx := context.Background()
	m.HSet("idem:v2", "v", "2", "s", "1", "t", "owner", "f", "fp")
	m.HSet("idem:badstate", "v", "1", "s", "9", "f", "fp")
	m.HSet("idem:noresult", "v", "1", "s", "2", "f", "fp")
	m.HSet("idem:nofingerprint", "v", "1", "s", "1", "t", "owner")
	for _, tc := range []struct{ key, msg string }{
		{"v2", `record format version "2" unknown`},
		{"badstate", `record state "9"`},
		{"noresult", "malformed record"},
		{"nofingerprint", "malformed record"},
	} {
		rec, err := st.Claim(ctx, tc.key, "tok", "fp", time.Minute)
		switch {
		case err == nil:
			t.Errorf("%s: Claim returned no error, record %+v", tc.key, rec)
			continue
		case !errors.Is(err, idem.ErrCorruptRecord):
			t.Errorf("%s: error %q does not wrap idem.ErrCorruptRecord", tc.key, err)
		case !strings.HasPrefix(err.Error(), "rueidisstore: claim: ") || !strings.Contains(err.Error(), tc.msg):
			t.Errorf("%s: error %q, want it to say %q", tc.key, err, tc.msg)
		}
	}
	if err := st.Complete(ctx, "v2", "owner", []byte("r"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Errorf("Complete of a version 2 record: %v, want ErrLockLost", err)
	}
	if got := m.HGet("idem:v2", "s"); got != "1" {
		t.Errorf("version 2 record changed: s=%q", got)
	}
}

// Durations become whole milliseconds, rounded up: a lease is never 0 ms
// (which Redis would take as "expire now"), and zero or less counts as 1 ms.
func TestMillisecondsRoundUp(t *testing.T) {
	m, c := newMini(t)
	st := rueidisstore.New(c)
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
