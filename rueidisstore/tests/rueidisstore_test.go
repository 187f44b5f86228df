package rueidisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/rueidisstore"
	"github.com/idemgo/idem/storetest"
)

// The conformance suite on miniredis, one server per sub-test; FastForward
// moves its clock, so the expiry tests are instant.
func TestConformanceMiniredis(t *testing.T) {
	var servers sync.Map // *testing.T -> *miniredis.Miniredis
	storetest.RunConfig(t, storetest.Config{
		NewStore: func(t *testing.T) idem.Store {
			m, c := newMini(t)
			servers.Store(t, m)
			return rueidisstore.New(c)
		},
		Wait: func(t *testing.T, d time.Duration) {
			m, ok := servers.Load(t)
			if !ok {
				t.Fatal("Wait before NewStore")
			}
			m.(*miniredis.Miniredis).FastForward(d)
		},
	})
}

// The conformance suite on a real Redis, in real time.
func TestConformanceRedis(t *testing.T) {
	c := realClient(t)
	prefix := runPrefix(t, c)
	storetest.Run(t, func(t *testing.T) idem.Store {
		return rueidisstore.New(c, rueidisstore.WithPrefix(prefix))
	})
}

// The conformance suite on a real three-node Redis Cluster.
func TestConformanceCluster(t *testing.T) {
	c := clusterClient(t)
	prefix := runPrefix(t, c)
	storetest.Run(t, func(t *testing.T) idem.Store {
		return rueidisstore.New(c, rueidisstore.WithPrefix(prefix))
	})
}

// In a Cluster the records spread over every master: the store puts no hash
// tag in its keys.
func TestClusterSpreadsKeys(t *testing.T) {
	c := clusterClient(t)
	prefix := runPrefix(t, c)
	st := rueidisstore.New(c, rueidisstore.WithPrefix(prefix))
	ctx := context.Background()
	const n = 60
	for i := 0; i < n; i++ {
		if rec, err := st.Claim(ctx, fmt.Sprintf("key-%d", i), "tok", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim %d: %v %v", i, rec, err)
		}
	}
	counts := map[string]int{}
	total := 0
	for addr, node := range c.Nodes() {
		keys, err := node.Do(ctx, node.B().Keys().Pattern(prefix+"*").Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		counts[addr] = len(keys)
		total += len(keys)
	}
	for addr, k := range counts {
		if k == 0 {
			t.Errorf("master %s holds none of the %d records: %v", addr, n, counts)
		}
	}
	if len(counts) != 3 || total != n {
		t.Fatalf("records per node = %v, want %d records over 3 masters", counts, n)
	}
}

// Every operation is one round trip once the scripts are on the server: a
// new key costs 2, a replay 1, a conflict 1.
func TestRoundTrips(t *testing.T) {
	t.Run("miniredis", func(t *testing.T) {
		_, c := newMini(t)
		testRoundTrips(t, c, "idem:")
	})
	t.Run("redis", func(t *testing.T) {
		c := realClient(t)
		testRoundTrips(t, c, runPrefix(t, c))
	})
	t.Run("cluster", func(t *testing.T) {
		c := clusterClient(t)
		testRoundTrips(t, c, runPrefix(t, c))
	})
}

func testRoundTrips(t *testing.T, c rueidis.Client, prefix string) {
	ctx := context.Background()
	cnt := &counter{Client: c}
	st := rueidisstore.New(cnt, rueidisstore.WithPrefix(prefix))
	// Bring every script onto the server: on a fresh server each one's
	// first use costs an extra EVAL.
	if err := st.Load(ctx); err != nil {
		t.Fatal(err)
	}
	cnt.take()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, want ...string) {
		t.Helper()
		if got := cnt.take(); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s sent %q, want %q", what, got, want)
		}
	}

	rec, err := st.Claim(ctx, "new", "tok", "fp", time.Minute)
	must(err)
	if rec != nil {
		t.Fatalf("Claim of a new key returned %+v", rec)
	}
	must(st.Complete(ctx, "new", "tok", []byte("result"), time.Hour))
	check("a new key (Claim + Complete)", "evalsha", "evalsha")

	rec, err = st.Claim(ctx, "new", "tok2", "fp", time.Minute)
	must(err)
	if rec == nil || rec.State != idem.StateCompleted || string(rec.Result) != "result" {
		t.Fatalf("replay Claim returned %+v", rec)
	}
	check("a replay (Claim of a completed key)", "evalsha")

	_, err = st.Claim(ctx, "busy", "tok", "fp", time.Minute)
	must(err)
	cnt.take()
	rec, err = st.Claim(ctx, "busy", "tok2", "fp", time.Minute)
	must(err)
	if rec == nil || rec.State != idem.StateInProgress {
		t.Fatalf("conflicting Claim returned %+v", rec)
	}
	check("a conflict (Claim of an in-progress key)", "evalsha")

	must(st.Renew(ctx, "busy", "tok", time.Minute))
	check("Renew", "evalsha")
	if err := st.Complete(ctx, "busy", "stale", []byte("x"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("stale Complete: %v", err)
	}
	check("a fenced-out Complete", "evalsha")
	must(st.Release(ctx, "busy", "tok"))
	check("Release", "evalsha")
}

// Without Load, the first use of a script on a fresh server costs one extra
// round trip (EVALSHA answers NOSCRIPT, rueidis sends EVAL), and only the
// first; after Load, none does.
func TestFirstUseOfScript(t *testing.T) {
	ctx := context.Background()
	_, c := newMini(t)
	cnt := &counter{Client: c}
	st := rueidisstore.New(cnt)
	if _, err := st.Claim(ctx, "a", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := cnt.take(); strings.Join(got, " ") != "evalsha eval" {
		t.Errorf("first Claim on a fresh server sent %q, want [evalsha eval]", got)
	}
	if _, err := st.Claim(ctx, "b", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := cnt.take(); strings.Join(got, " ") != "evalsha" {
		t.Errorf("second Claim sent %q, want [evalsha]", got)
	}

	m, c := newMini(t)
	if err := rueidisstore.New(c).Load(ctx); err != nil {
		t.Fatal(err)
	}
	cnt = &counter{Client: c}
	st = rueidisstore.New(cnt)
	if _, err := st.Claim(ctx, "a", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Renew(ctx, "a", "tok", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx, "a", "tok", nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Claim(ctx, "b", "tok", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Release(ctx, "b", "tok"); err != nil {
		t.Fatal(err)
	}
	if got := cnt.take(); strings.Join(got, " ") != "evalsha evalsha evalsha evalsha evalsha" {
		t.Errorf("operations after Load sent %q, want one evalsha each", got)
	}
	if m.Exists("idem:b") {
		t.Error("Release left the key")
	}
}

// When Redis fails, every operation returns an error, and never ErrLockLost
// (which would mean "someone else owns the key") nor a claim.
func TestBackendFailure(t *testing.T) {
	ctx := context.Background()
	ops := []struct {
		name string
		call func(ctx context.Context, st *rueidisstore.Store) error
	}{
		{"Claim", func(ctx context.Context, st *rueidisstore.Store) error {
			rec, err := st.Claim(ctx, "free", "tok", "fp", time.Minute)
			if err == nil {
				return fmt.Errorf("no error, record %v", rec)
			}
			return err
		}},
		{"Complete", func(ctx context.Context, st *rueidisstore.Store) error {
			return st.Complete(ctx, "owned", "tok", []byte("r"), time.Hour)
		}},
		{"Release", func(ctx context.Context, st *rueidisstore.Store) error { return st.Release(ctx, "owned", "tok") }},
		{"Renew", func(ctx context.Context, st *rueidisstore.Store) error {
			return st.Renew(ctx, "owned", "tok", time.Minute)
		}},
	}
	faults := []struct {
		name   string
		inject func(m *miniredis.Miniredis)
	}{
		{"error reply", func(m *miniredis.Miniredis) { m.SetError("LOADING Redis is loading the dataset in memory") }},
		{"server gone", func(m *miniredis.Miniredis) { m.Close() }},
	}
	for _, f := range faults {
		for _, op := range ops {
			t.Run(f.name+"/"+op.name, func(t *testing.T) {
				m := miniredis.RunT(t)
				c := newClient(t, m.Addr())
				st := rueidisstore.New(c)
				if _, err := st.Claim(ctx, "owned", "tok", "fp", time.Minute); err != nil {
					t.Fatal(err)
				}
				f.inject(m)
				// rueidis redials a lost server until the context ends: the
				// bound turns that into an error, as the middleware's store
				// timeout does.
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				err := op.call(cctx, st)
				switch {
				case err == nil:
					t.Fatalf("%s returned no error", op.name)
				case errors.Is(err, idem.ErrLockLost):
					t.Fatalf("%s returned ErrLockLost for a failing server: %v", op.name, err)
				case !strings.HasPrefix(err.Error(), "rueidisstore: "+strings.ToLower(op.name)+": "):
					t.Fatalf("error %q is not wrapped as rueidisstore: %s", err, strings.ToLower(op.name))
				}
			})
		}
	}
}
