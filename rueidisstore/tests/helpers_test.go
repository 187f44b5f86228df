package rueidisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/idemgo/idem/internal/testenv"
)

// Environment variables naming the real servers that ./scripts/test.sh
// starts.
const (
	envAddr         = "IDEM_REDIS_ADDR"          // host:port of a single node
	envClusterAddrs = "IDEM_REDIS_CLUSTER_ADDRS" // host:port,host:port,host:port
)

// serverEnv returns the value of env (see testenv.Server: skipped when
// unset, failed under CI=true).
func serverEnv(tb testing.TB, env string) string {
	tb.Helper()
	return testenv.Server(tb, env, "the server "+env+" names")
}

// newClient connects to addrs (one address for a node; rueidis finds a
// Cluster by itself) without client-side caching, which the store does not
// use.
func newClient(tb testing.TB, addrs ...string) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs, DisableCache: true})
	if err != nil {
		tb.Fatalf("rueidis client for %v: %v", addrs, err)
	}
	tb.Cleanup(c.Close)
	return c
}

// realClient connects to the single node named by IDEM_REDIS_ADDR.
func realClient(tb testing.TB) rueidis.Client {
	tb.Helper()
	return newClient(tb, serverEnv(tb, envAddr))
}

// clusterClient connects to the Cluster named by IDEM_REDIS_CLUSTER_ADDRS.
func clusterClient(tb testing.TB) rueidis.Client {
	tb.Helper()
	c := newClient(tb, strings.Split(serverEnv(tb, envClusterAddrs), ",")...)
	if c.Mode() != rueidis.ClientModeCluster {
		tb.Fatalf("client for %s is in mode %v, want cluster", os.Getenv(envClusterAddrs), c.Mode())
	}
	return c
}

// newMini starts a miniredis for tb and returns it with a client on it.
func newMini(tb testing.TB) (*miniredis.Miniredis, rueidis.Client) {
	m := miniredis.RunT(tb)
	return m, newClient(tb, m.Addr())
}

// runPrefix returns a key prefix no other test run uses, and removes every
// key under it from every master when tb ends.
func runPrefix(tb testing.TB, c rueidis.Client) string {
	var b [6]byte
	rand.Read(b[:])
	prefix := "idemtest:" + hex.EncodeToString(b[:]) + ":"
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for addr, node := range c.Nodes() {
			if err := deletePrefix(ctx, node, prefix); err != nil {
				tb.Errorf("removing the test keys under %q from %s: %v", prefix, addr, err)
			}
		}
	})
	return prefix
}

func deletePrefix(ctx context.Context, node rueidis.Client, prefix string) error {
	var cursor uint64
	for {
		e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			// A replica answers MOVED for nothing but may refuse nothing
			// either; a node that fails here fails the cleanup.
			return err
		}
		for _, k := range e.Elements {
			// One UNLINK per key: keys of one node may lie in different slots.
			if err := node.Do(ctx, node.B().Unlink().Key(k).Build()).Error(); err != nil {
				return err
			}
		}
		if cursor = e.Cursor; cursor == 0 {
			return nil
		}
	}
}

// counter is a rueidis.Client that records the name of every command sent
// through Do (the store sends nothing else).
type counter struct {
	rueidis.Client
	mu   sync.Mutex
	cmds []string
}

func (c *counter) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.mu.Lock()
	c.cmds = append(c.cmds, strings.ToLower(cmd.Commands()[0]))
	c.mu.Unlock()
	return c.Client.Do(ctx, cmd)
}

// take returns the commands sent since the last call.
func (c *counter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmds := c.cmds
	c.cmds = nil
	return cmds
}
