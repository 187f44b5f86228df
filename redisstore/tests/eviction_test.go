package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/redisstore"
)

// startRedis starts a redis-server of its own ($IDEM_REDIS_SERVER) on a
// free loopback port, with the extra config args, and stops it when t
// ends; the test may then change its configuration freely.
func startRedis(t *testing.T, args ...string) *redis.Client {
	t.Helper()
	bin := testenv.Server(t, testenv.RedisServer, "the path of redis-server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--save", "", "--appendonly", "no", "--logfile", filepath.Join(dir, "redis.log")}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server on port %d did not answer PING within 10s:\n%s", port, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// logTo returns a logger writing text lines into buf.
func logTo(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, nil))
}

// Every record has a TTL, so any maxmemory-policy but noeviction may evict a
// record in flight and let a retry run the handler twice: Load refuses
// every such policy, naming it, and accepts noeviction.
func TestLoadRefusesEvictionPolicies(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	for _, policy := range []string{
		"volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
		"allkeys-lru", "allkeys-lfu", "allkeys-random",
		"noeviction",
	} {
		if err := c.ConfigSet(ctx, "maxmemory-policy", policy).Err(); err != nil {
			t.Fatalf("CONFIG SET maxmemory-policy %s: %v", policy, err)
		}
		var logs bytes.Buffer
		err := redisstore.New(c, redisstore.WithLogger(logTo(&logs))).Load(ctx)
		if policy == "noeviction" {
			if err != nil {
				t.Fatalf("Load with noeviction: %v", err)
			}
			continue
		}
		if !errors.Is(err, redisstore.ErrUnsafeEviction) {
			t.Fatalf("Load with maxmemory-policy %s: %v, want ErrUnsafeEviction", policy, err)
		}
		if !strings.Contains(err.Error(), policy) || !strings.Contains(err.Error(), "noeviction") {
			t.Fatalf("Load's error %q names neither the policy found nor the one to set", err)
		}
	}
}

// Where CONFIG is disabled (renamed away, as managed services do), Load
// cannot read the policy: it does its work, does not fail, and says clearly
// what to check by hand.
func TestLoadWarnsWhenPolicyUnreadable(t *testing.T) {
	t.Run("redis-server without CONFIG", func(t *testing.T) {
		c := startRedis(t, "--rename-command", "CONFIG", "")
		checkUnreadable(t, c)
	})
	t.Run("miniredis", func(t *testing.T) {
		_, c := newMini(t)
		checkUnreadable(t, c)
	})
}

func checkUnreadable(t *testing.T, c *redis.Client) {
	t.Helper()
	var logs bytes.Buffer
	st := redisstore.New(c, redisstore.WithLogger(logTo(&logs)))
	if err := st.Load(context.Background()); err != nil {
		t.Fatalf("Load where CONFIG is unavailable: %v, want nil and a warning", err)
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "maxmemory-policy") || !strings.Contains(out, "noeviction") {
		t.Fatalf("Load logged %q, want a warning naming maxmemory-policy and noeviction", out)
	}
	// The store works all the same.
	if rec, err := st.Claim(context.Background(), "k", "tok", "fp", time.Minute); rec != nil || err != nil {
		t.Fatalf("Claim after Load: %v, %v", rec, err)
	}
}

// On a Cluster every master is checked: one master with an eviction
// policy is enough to refuse. This test changes the shared cluster's
// configuration and puts it back; it runs alone (not in parallel).
func TestLoadChecksEveryClusterMaster(t *testing.T) {
	c := clusterClient(t)
	ctx := context.Background()
	if err := redisstore.New(c).Load(ctx); err != nil {
		t.Fatalf("Load on the cluster as started (noeviction): %v", err)
	}
	var (
		mu      sync.Mutex
		masters []*redis.Client
		addrs   []string
	)
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		masters = append(masters, m)
		addrs = append(addrs, m.Options().Addr)
		return nil
	})
	if err != nil || len(masters) < 2 {
		t.Fatalf("masters: %v, %v", addrs, err)
	}
	// ForEachMaster runs its function concurrently; pick one by address.
	last := masters[0]
	for _, m := range masters {
		if m.Options().Addr > last.Options().Addr {
			last = m
		}
	}
	if err := last.ConfigSet(ctx, "maxmemory-policy", "volatile-ttl").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { last.ConfigSet(context.Background(), "maxmemory-policy", "noeviction") })
	err = redisstore.New(c).Load(ctx)
	if !errors.Is(err, redisstore.ErrUnsafeEviction) || !strings.Contains(err.Error(), last.Options().Addr) {
		t.Fatalf("Load with volatile-ttl on %s: %v, want ErrUnsafeEviction naming that master", last.Options().Addr, err)
	}
}
