package rueidisstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/idemgo/idem/rueidisstore"
)

// setPolicy sets maxmemory-policy on node and puts noeviction back when tb
// ends.
func setPolicy(tb testing.TB, node rueidis.Client, policy string) {
	tb.Helper()
	if err := node.Do(context.Background(), node.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", policy).Build()).Error(); err != nil {
		tb.Fatalf("CONFIG SET maxmemory-policy %s: %v", policy, err)
	}
	tb.Cleanup(func() {
		node.Do(context.Background(), node.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", "noeviction").Build())
	})
}

// Every record has a TTL, so any maxmemory-policy but noeviction may evict a
// record in flight and let a retry run the handler twice: Load refuses
// every such policy, naming it, and accepts noeviction. The shared node's
// policy is changed and put back; no memory limit is set, so nothing is
// evicted meanwhile.
func TestLoadRefusesEvictionPolicies(t *testing.T) {
	c := realClient(t)
	ctx := context.Background()
	for _, policy := range []string{
		"volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
		"allkeys-lru", "allkeys-lfu", "allkeys-random",
		"noeviction",
	} {
		setPolicy(t, c, policy)
		err := rueidisstore.New(c).Load(ctx)
		if policy == "noeviction" {
			if err != nil {
				t.Fatalf("Load with noeviction: %v", err)
			}
			continue
		}
		if !errors.Is(err, rueidisstore.ErrUnsafeEviction) {
			t.Fatalf("Load with maxmemory-policy %s: %v, want ErrUnsafeEviction", policy, err)
		}
		if !strings.Contains(err.Error(), policy) || !strings.Contains(err.Error(), "noeviction") {
			t.Fatalf("Load's error %q names neither the policy found nor the one to set", err)
		}
	}
}

// Where CONFIG cannot be read (miniredis has none, as managed services
// rename it away), Load does its work, does not fail, and says clearly what
// to check by hand.
func TestLoadWarnsWhenPolicyUnreadable(t *testing.T) {
	_, c := newMini(t)
	var logs bytes.Buffer
	st := rueidisstore.New(c, rueidisstore.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err := st.Load(context.Background()); err != nil {
		t.Fatalf("Load where CONFIG is unavailable: %v, want nil and a warning", err)
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "maxmemory-policy") || !strings.Contains(out, "noeviction") {
		t.Fatalf("Load logged %q, want a warning naming maxmemory-policy and noeviction", out)
	}
	if rec, err := st.Claim(context.Background(), "k", "tok", "fp", time.Minute); rec != nil || err != nil {
		t.Fatalf("Claim after Load: %v, %v", rec, err)
	}
}

// On a Cluster every master is checked: one with an eviction policy is
// enough to refuse, and the error names it.
func TestLoadChecksEveryClusterMaster(t *testing.T) {
	c := clusterClient(t)
	ctx := context.Background()
	if err := rueidisstore.New(c).Load(ctx); err != nil {
		t.Fatalf("Load on the cluster as started (noeviction): %v", err)
	}
	nodes := c.Nodes()
	addrs := make([]string, 0, len(nodes))
	for a := range nodes {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	if len(addrs) < 2 {
		t.Fatalf("cluster nodes %v, want several", addrs)
	}
	last := addrs[len(addrs)-1]
	setPolicy(t, nodes[last], "volatile-ttl")
	err := rueidisstore.New(c).Load(ctx)
	if !errors.Is(err, rueidisstore.ErrUnsafeEviction) || !strings.Contains(err.Error(), last) {
		t.Fatalf("Load with volatile-ttl on %s: %v, want ErrUnsafeEviction naming that node", last, err)
	}
}
