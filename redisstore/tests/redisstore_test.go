package redisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/storetest"
)

// Environment variables naming the real servers that ./scripts/test.sh
// starts.

// realClient connects to the single node named by IDEM_REDIS_ADDR.
func realClient(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: testenv.Server(tb, testenv.RedisAddr, "a Redis node")})
	tb.Cleanup(func() { c.Close() })
	ping(tb, c)
	return c
}

// clusterClient connects to the Cluster named by IDEM_REDIS_CLUSTER_ADDRS.
func clusterClient(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	addrs := strings.Split(testenv.Server(tb, testenv.RedisClusterAddrs, "a Redis Cluster"), ",")
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	tb.Cleanup(func() { c.Close() })
	ping(tb, c)
	return c
}

func ping(tb testing.TB, c redis.UniversalClient) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		tb.Fatalf("redis server unreachable: %v", err)
	}
}

// runPrefix returns a key prefix no other test run uses, and removes every
// key under it when tb ends.
func runPrefix(tb testing.TB, c redis.UniversalClient) string {
	var b [6]byte
	rand.Read(b[:])
	prefix := "idemtest:" + hex.EncodeToString(b[:]) + ":"
	tb.Cleanup(func() {
		if err := deletePrefix(c, prefix); err != nil {
			tb.Errorf("removing the test keys under %q: %v", prefix, err)
		}
	})
	return prefix
}

func deletePrefix(c redis.UniversalClient, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	del := func(ctx context.Context, node *redis.Client) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, prefix+"*", 1000).Result()
			if err != nil {
				return err
			}
			// One UNLINK per key: in a Cluster, keys of one node may lie in
			// different slots.
			pipe := node.Pipeline()
			for _, k := range keys {
				pipe.Unlink(ctx, k)
			}
			if _, err := pipe.Exec(ctx); err != nil && len(keys) > 0 {
				return err
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	switch c := c.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, del)
	case *redis.Client:
		return del(ctx, c)
	}
	return fmt.Errorf("unexpected client %T", c)
}

// newMini starts a miniredis for tb and returns it with a client on it.
func newMini(tb testing.TB) (*miniredis.Miniredis, *redis.Client) {
	m := miniredis.RunT(tb)
	c := redis.NewClient(&redis.Options{Addr: m.Addr()})
	tb.Cleanup(func() { c.Close() })
	return m, c
}

// The conformance suite on miniredis, one server per
// sub-test; FastForward moves its clock, so the expiry tests are instant.
func TestConformanceMiniredis(t *testing.T) {
	var servers sync.Map // *testing.T -> *miniredis.Miniredis
	storetest.RunConfig(t, storetest.Config{
		NewStore: func(t *testing.T) idem.Store {
			m, c := newMini(t)
			servers.Store(t, m)
			return redisstore.New(c)
		},
		Wait: func(t *testing.T, d time.Duration) {
			m, ok := servers.Load(t)
			if !ok {
				t.Fatal("Wait before NewStore")
			}
			m.(*miniredis.Miniredis).FastForward(d)
		},
		// miniredis runs every script under one lock, and slowly: a
		// few rounds check the store's side.
		ClaimRounds: 30,
	})
}

// The conformance suite on a real Redis, in real time.
func TestConformanceRedis(t *testing.T) {
	c := realClient(t)
	prefix := runPrefix(t, c)
	storetest.RunConfig(t, storetest.Config{
		NewStore: func(t *testing.T) idem.Store {
			return redisstore.New(c, redisstore.WithPrefix(prefix))
		},
		ClaimRounds: 200, // 16 round trips each
	})
}

// The conformance suite on a real three-node Redis Cluster.
func TestConformanceCluster(t *testing.T) {
	c := clusterClient(t)
	prefix := runPrefix(t, c)
	storetest.RunConfig(t, storetest.Config{
		NewStore: func(t *testing.T) idem.Store {
			return redisstore.New(c, redisstore.WithPrefix(prefix))
		},
		ClaimRounds: 100, // 16 round trips each, spread over the masters
	})
}

// In a Cluster the records spread over every master: the store puts no hash
// tag in its keys.
func TestClusterSpreadsKeys(t *testing.T) {
	c := clusterClient(t)
	prefix := runPrefix(t, c)
	st := redisstore.New(c, redisstore.WithPrefix(prefix))
	ctx := context.Background()
	const n = 60
	for i := 0; i < n; i++ {
		if rec, err := st.Claim(ctx, fmt.Sprintf("key-%d", i), "tok", "fp", time.Minute); err != nil || rec != nil {
			t.Fatalf("Claim %d: %v %v", i, rec, err)
		}
	}
	var (
		mu     sync.Mutex
		counts = map[string]int{}
	)
	err := c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		keys, err := node.Keys(ctx, prefix+"*").Result()
		mu.Lock()
		counts[node.Options().Addr] = len(keys)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for addr, k := range counts {
		total += k
		if k == 0 {
			t.Errorf("master %s holds none of the %d records: %v", addr, n, counts)
		}
	}
	if len(counts) != 3 || total != n {
		t.Fatalf("records per master = %v, want %d records over 3 masters", counts, n)
	}
}

// counter is a go-redis hook that records every command the client sends
// (a pipeline counts as one round trip).
type counter struct {
	mu   sync.Mutex
	cmds []string
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd.Name())
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add("pipeline")
		return next(ctx, cmds)
	}
}

func (c *counter) add(name string) {
	c.mu.Lock()
	c.cmds = append(c.cmds, name)
	c.mu.Unlock()
}

// take returns the commands sent since the last call.
func (c *counter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmds := c.cmds
	c.cmds = nil
	return cmds
}

// Every operation is one round trip once the scripts are on
// the server; a new key costs 2, a replay 1, a conflict 1.
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

func testRoundTrips(t *testing.T, c redis.UniversalClient, prefix string) {
	st := redisstore.New(c, redisstore.WithPrefix(prefix))
	ctx := context.Background()
	// Bring every script onto the server (on a fresh server each one's
	// first use costs an extra EVAL) and open the connection (its handshake
	// is not counted).
	if err := st.Load(ctx); err != nil {
		t.Fatal(err)
	}
	cnt := &counter{}
	c.AddHook(cnt)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, want int) {
		t.Helper()
		if got := cnt.take(); len(got) != want {
			t.Errorf("%s sent %d commands %q, want %d", what, len(got), got, want)
		}
	}

	rec, err := st.Claim(ctx, "new", "tok", "fp", time.Minute)
	must(err)
	if rec != nil {
		t.Fatalf("Claim of a new key returned %+v", rec)
	}
	must(st.Complete(ctx, "new", "tok", []byte("result"), time.Hour))
	check("a new key (Claim + Complete)", 2)

	rec, err = st.Claim(ctx, "new", "tok2", "fp", time.Minute)
	must(err)
	if rec == nil || rec.State != idem.StateCompleted {
		t.Fatalf("replay Claim returned %+v", rec)
	}
	check("a replay (Claim of a completed key)", 1)

	_, err = st.Claim(ctx, "busy", "tok", "fp", time.Minute)
	must(err)
	cnt.take()
	rec, err = st.Claim(ctx, "busy", "tok2", "fp", time.Minute)
	must(err)
	if rec == nil || rec.State != idem.StateInProgress {
		t.Fatalf("conflicting Claim returned %+v", rec)
	}
	check("a conflict (Claim of an in-progress key)", 1)

	must(st.Renew(ctx, "busy", "tok", time.Minute))
	check("Renew", 1)
	if err := st.Complete(ctx, "busy", "stale", []byte("x"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("stale Complete: %v", err)
	}
	check("a fenced-out Complete", 1)
	must(st.Release(ctx, "busy", "tok"))
	check("Release", 1)
}

// Without Load, the first use of a script on a fresh server costs one extra
// round trip (EVALSHA answers NOSCRIPT, go-redis sends EVAL), and only the
// first.
func TestFirstUseOfScript(t *testing.T) {
	ctx := context.Background()
	_, c := newMini(t)
	ping(t, c) // connect: the connection's handshake is not counted
	cnt := &counter{}
	c.AddHook(cnt)
	st := redisstore.New(c)
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

	// After Load, no operation needs EVAL.
	_, c = newMini(t)
	ping(t, c)
	c.AddHook(cnt)
	st = redisstore.New(c)
	if err := st.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cnt.take(); strings.Join(got, " ") != "script script script script config" {
		t.Errorf("Load sent %q, want one SCRIPT LOAD per script and CONFIG GET", got)
	}
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
}

// When Redis fails, every operation returns an error, and never
// ErrLockLost (which would mean "someone else owns the key") nor a claim.
func TestBackendFailure(t *testing.T) {
	ctx := context.Background()
	ops := []struct {
		name string
		call func(st *redisstore.Store) error
	}{
		{"Claim", func(st *redisstore.Store) error {
			rec, err := st.Claim(ctx, "free", "tok", "fp", time.Minute)
			if err == nil {
				return fmt.Errorf("no error, record %v", rec)
			}
			return err
		}},
		{"Complete", func(st *redisstore.Store) error {
			return st.Complete(ctx, "owned", "tok", []byte("r"), time.Hour)
		}},
		{"Release", func(st *redisstore.Store) error { return st.Release(ctx, "owned", "tok") }},
		{"Renew", func(st *redisstore.Store) error { return st.Renew(ctx, "owned", "tok", time.Minute) }},
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
				c := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: 1, DialerRetries: 1})
				defer c.Close()
				st := redisstore.New(c)
				if _, err := st.Claim(ctx, "owned", "tok", "fp", time.Minute); err != nil {
					t.Fatal(err)
				}
				f.inject(m)
				err := op.call(st)
				switch {
				case err == nil:
					t.Fatalf("%s returned no error", op.name)
				case errors.Is(err, idem.ErrLockLost):
					t.Fatalf("%s returned ErrLockLost for a failing server: %v", op.name, err)
				case !strings.HasPrefix(err.Error(), "redisstore: "+strings.ToLower(op.name)+": "):
					t.Fatalf("error %q is not wrapped as redisstore: %s", err, strings.ToLower(op.name))
				}
			})
		}
	}
}
