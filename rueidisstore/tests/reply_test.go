package rueidisstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/rueidisstore"
)

// scriptReplies is a rueidis.Client standing for a proxy, or a server,
// that answers the store's scripts with something else: every EVALSHA or
// EVAL runs script instead (with no keys), on the real server, and its
// reply goes back to the store.
type scriptReplies struct {
	rueidis.Client
	script string
}

func (c *scriptReplies) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	switch strings.ToUpper(cmd.Commands()[0]) {
	case "EVALSHA", "EVAL":
		return c.Client.Do(ctx, c.Client.B().Eval().Script(c.script).Numkeys(0).Build())
	}
	return c.Client.Do(ctx, cmd)
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
			st := rueidisstore.New(&scriptReplies{Client: c, script: tc.script})
			rec, err := st.Claim(ctx, "k", "tok", "fp", time.Minute)
			if err == nil || !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "rueidisstore: claim: ") {
				t.Errorf("Claim answered by %s: %+v, %v; want an error wrapping ErrCorruptRecord", tc.script, rec, err)
			}
			ks, err := st.Lookup(ctx, "k")
			if err == nil || !errors.Is(err, idem.ErrCorruptRecord) || !strings.HasPrefix(err.Error(), "rueidisstore: lookup: ") {
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
	st := rueidisstore.New(&scriptReplies{Client: c, script: `return 2`})
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
	st := rueidisstore.New(c)
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

// policyUnknown is a rueidis.Client standing for a server that does not
// know maxmemory-policy: it asks CONFIG GET, on every node, for a
// parameter no server has, and gives its (empty) reply to the store.
type policyUnknown struct{ rueidis.Client }

func (c *policyUnknown) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if args := cmd.Commands(); len(args) > 1 && strings.EqualFold(args[0], "CONFIG") && strings.EqualFold(args[1], "GET") {
		return c.Client.Do(ctx, c.Client.B().ConfigGet().Parameter("idem-no-such-parameter").Build())
	}
	return c.Client.Do(ctx, cmd)
}

func (c *policyUnknown) Nodes() map[string]rueidis.Client {
	nodes := map[string]rueidis.Client{}
	for addr, n := range c.Client.Nodes() {
		nodes[addr] = &policyUnknown{n}
	}
	return nodes
}

// A server that answers CONFIG GET without maxmemory-policy (a
// Redis-compatible server or a proxy that does not have it) leaves the
// policy unknown: Load does not fail, and says what to check by hand.
func TestLoadWarnsWhenPolicyNotReported(t *testing.T) {
	var logs bytes.Buffer
	st := rueidisstore.New(&policyUnknown{realClient(t)}, rueidisstore.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err := st.Load(context.Background()); err != nil {
		t.Fatalf("Load where the server does not report maxmemory-policy: %v, want nil and a warning", err)
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "did not report maxmemory-policy") || !strings.Contains(out, "noeviction") {
		t.Fatalf("Load logged %q, want a warning that the server did not report maxmemory-policy", out)
	}
}
