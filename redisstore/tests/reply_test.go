package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
)

// scriptReplies is a go-redis hook standing for a proxy, or a server,
// that answers the store's scripts with something else: every EVALSHA or
// EVAL the client sends runs script instead (with no keys), on the real
// server, and its reply goes back to the store.
type scriptReplies struct{ script string }

func (h scriptReplies) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h scriptReplies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c, ok := cmd.(*redis.Cmd)
		if !ok || (cmd.Name() != "evalsha" && cmd.Name() != "eval") {
			return next(ctx, cmd)
		}
		other := redis.NewCmd(ctx, "eval", h.script, 0)
		err := next(ctx, other)
		c.SetVal(other.Val())
		c.SetErr(other.Err())
		return err
	}
}

func (h scriptReplies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A reply of another shape than the record the scripts return (a proxy in
// the way, a server running other scripts) is an error wrapping
// idem.ErrCorruptRecord, for Claim and Lookup alike: never a panic, a free
// key or a record made up from part of the reply.
func TestRejectsScriptRepliesOfAnotherShape(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ name, script string }{
		{"five fields", `return {'1', '2', 'tok', 'fp', 'r'}`},
		{"seven fields", `return {'1', '2', 'tok', 'fp', 'r', 60000, 'more'}`},
		{"a string", `return 'OK'`},
		{"an integer", `return 6`},
		{"an empty array", `return {}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c := newMini(t)
			c.AddHook(scriptReplies{tc.script})
			st := redisstore.New(c)
			rec, err := st.Claim(ctx, "k", "tok", "fp", time.Minute)
			if err == nil || !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "redisstore: claim: ") {
				t.Errorf("Claim answered by %s: %+v, %v; want an error wrapping ErrCorruptRecord", tc.script, rec, err)
			}
			ks, err := st.Lookup(ctx, "k")
			if err == nil || !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "redisstore: lookup: ") {
				t.Errorf("Lookup answered by %s: %+v, %v; want an error wrapping ErrCorruptRecord", tc.script, ks, err)
			}
		})
	}
}

// A fenced call answered with neither 1 (done) nor 0 (not the owner) fails
// with an error: it neither claims success nor says that another owner
// holds the key.
func TestFencedCallsRejectUnexpectedReplies(t *testing.T) {
	ctx := context.Background()
	_, c := newMini(t)
	c.AddHook(scriptReplies{`return 2`})
	st := redisstore.New(c)
	for name, err := range map[string]error{
		"Complete": st.Complete(ctx, "k", "tok", []byte("r"), time.Hour),
		"Renew":    st.Renew(ctx, "k", "tok", time.Minute),
		"Release":  st.Release(ctx, "k", "tok"),
	} {
		if err == nil || errors.Is(err, idem.ErrLockLost) || !strings.Contains(err.Error(), "unexpected script reply 2") {
			t.Errorf("%s answered 2: %v, want an error naming the reply", name, err)
		}
	}
}

// A record without a TTL (an operator's PERSIST, a copy restored by hand)
// has no known expiry: ExpiresIn and LeaseLeft are 0, "cannot tell", as
// the Record contract says, never negative.
func TestRecordWithoutTTLHasNoKnownExpiry(t *testing.T) {
	m, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	m.HSet("idem:busy", "v", "1", "s", "1", "t", "owner", "f", "fp")
	m.HSet("idem:done", "v", "1", "s", "2", "f", "fp", "r", "result")

	rec, err := st.Claim(ctx, "busy", "tok", "fp", time.Minute)
	if err != nil || rec == nil || rec.State != idem.StateInProgress || rec.Token != "owner" ||
		rec.LeaseLeft != 0 || rec.ExpiresIn != 0 {
		t.Errorf("Claim of an in-progress record without a TTL: %+v, %v; want LeaseLeft and ExpiresIn 0", rec, err)
	}
	rec, err = st.Claim(ctx, "done", "tok", "fp", time.Minute)
	if err != nil || rec == nil || rec.State != idem.StateCompleted || string(rec.Result) != "result" ||
		rec.LeaseLeft != 0 || rec.ExpiresIn != 0 {
		t.Errorf("Claim of a completed record without a TTL: %+v, %v; want ExpiresIn 0", rec, err)
	}
	for _, key := range []string{"busy", "done"} {
		ks, err := st.Lookup(ctx, key)
		if err != nil || ks == nil || ks.ExpiresIn != 0 {
			t.Errorf("Lookup of %s without a TTL: %+v, %v; want ExpiresIn 0", key, ks, err)
		}
	}
}

// mapReplies is a go-redis hook standing for a server that does not know
// maxmemory-policy: it asks CONFIG GET for a parameter no server has, and
// gives its (empty) reply to the store.
type mapReplies struct{}

func (mapReplies) DialHook(next redis.DialHook) redis.DialHook { return next }

func (mapReplies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c, ok := cmd.(*redis.MapStringStringCmd)
		if !ok || cmd.Name() != "config" {
			return next(ctx, cmd)
		}
		other := redis.NewMapStringStringCmd(ctx, "config", "get", "idem-no-such-parameter")
		err := next(ctx, other)
		c.SetVal(other.Val())
		c.SetErr(other.Err())
		return err
	}
}

func (mapReplies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A server that answers CONFIG GET without maxmemory-policy (a
// Redis-compatible server or a proxy that does not have it) leaves the
// policy unknown: Load does not fail, and says what to check by hand.
func TestLoadWarnsWhenPolicyNotReported(t *testing.T) {
	c := realClient(t)
	c.AddHook(mapReplies{})
	var logs bytes.Buffer
	st := redisstore.New(c, redisstore.WithLogger(logTo(&logs)))
	if err := st.Load(context.Background()); err != nil {
		t.Fatalf("Load where the server does not report maxmemory-policy: %v, want nil and a warning", err)
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "did not report maxmemory-policy") || !strings.Contains(out, "noeviction") {
		t.Fatalf("Load logged %q, want a warning that the server did not report maxmemory-policy", out)
	}
}
