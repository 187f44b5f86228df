package linearize_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/memstore"
	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/sqlstore"
)

// serverEnv returns the value of env, naming a server of scripts/test.sh
// (see testenv.Server: skipped when unset, failed under CI=true).
func serverEnv(t testing.TB, env string) string {
	t.Helper()
	return testenv.Server(t, env, "the server "+env+" names")
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// target is a store under test. faulty, when set, opens the same store
// through fault-injecting proxies and returns it with the function that
// injects faults for as long as its context lasts.
type target struct {
	name   string
	open   func(t testing.TB) idem.Store
	faulty func(t testing.TB) (idem.Store, func(ctx context.Context))
}

var targets = []target{
	{name: "memstore", open: openMemstore, faulty: faultyMemstore},
	{name: "Redis", open: openRedis, faulty: faultyRedis},
	{name: "RedisCluster", open: openCluster, faulty: faultyCluster},
	{name: "Postgres", open: openPostgres, faulty: faultyPostgres},
	{name: "SQLite", open: openSQLite, faulty: faultySQLite},
}

// --- memstore and SQLite: faults are calls cut short -------------------------

func openMemstore(t testing.TB) idem.Store {
	s := memstore.New()
	t.Cleanup(func() { s.Close() })
	return s
}

// cutShort wraps a store so that, while cutting is on, calls run with a
// context that has ended (half of them) or that ends at a random instant
// of their first millisecond: some end before the store starts, some while
// it works, some not at all.
type cutShort struct {
	idem.Store
	mu  sync.Mutex
	on  bool
	rnd *mrand.Rand
}

func (c *cutShort) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		return ctx, func() {}
	}
	if c.rnd.Intn(2) == 0 {
		return context.WithTimeout(ctx, 0)
	}
	return context.WithTimeout(ctx, time.Duration(c.rnd.Int63n(int64(time.Millisecond))))
}

func (c *cutShort) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Store.Claim(ctx, key, token, fp, lease)
}

func (c *cutShort) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Store.Complete(ctx, key, token, result, ttl)
}

func (c *cutShort) Release(ctx context.Context, key, token string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Store.Release(ctx, key, token)
}

func (c *cutShort) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Store.Renew(ctx, key, token, lease)
}

// toggle turns cutting on and off at random until ctx ends.
func (c *cutShort) toggle(ctx context.Context) {
	rnd := mrand.New(mrand.NewSource(time.Now().UnixNano()))
	for on := true; ; on = !on {
		c.mu.Lock()
		c.on = on
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			c.mu.Lock()
			c.on = false
			c.mu.Unlock()
			return
		case <-time.After(time.Duration(20+rnd.Intn(60)) * time.Millisecond):
		}
	}
}

func newCutShort(s idem.Store) (*cutShort, func(ctx context.Context)) {
	c := &cutShort{Store: s, rnd: mrand.New(mrand.NewSource(time.Now().UnixNano()))}
	return c, c.toggle
}

func faultyMemstore(t testing.TB) (idem.Store, func(ctx context.Context)) {
	c, f := newCutShort(openMemstore(t))
	return c, f
}

func openSQLite(t testing.TB) idem.Store {
	dsn := sqlstore.SQLiteDSN(filepath.Join(t.TempDir(), "idem.db"))
	return openSQL(t, "sqlite", dsn, sqlstore.SQLite)
}

func faultySQLite(t testing.TB) (idem.Store, func(ctx context.Context)) {
	c, f := newCutShort(openSQLite(t))
	return c, f
}

// --- PostgreSQL ----------------------------------------------------------------

func openPostgres(t testing.TB) idem.Store {
	return openSQL(t, "pgx", serverEnv(t, "IDEM_POSTGRES_DSN"), sqlstore.Postgres)
}

func faultyPostgres(t testing.TB) (idem.Store, func(ctx context.Context)) {
	dsn := serverEnv(t, "IDEM_POSTGRES_DSN")
	u, err := parseHostPort(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u)
	return openSQL(t, "pgx", strings.Replace(dsn, u, p.Addr(), 1), sqlstore.Postgres), p.storm(stormFaults)
}

// parseHostPort returns the host:port of a postgres:// URL.
func parseHostPort(dsn string) (string, error) {
	rest, ok := strings.CutPrefix(dsn, "postgres://")
	if !ok {
		return "", fmt.Errorf("IDEM_POSTGRES_DSN %q: want a postgres:// URL", dsn)
	}
	if i := strings.Index(rest, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	return rest, nil
}

// openSQL opens a store on a table of its own, dropped when t ends.
func openSQL(t testing.TB, driver, dsn string, d sqlstore.Dialect) idem.Store {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxIdleConns(16)
	table := "idem_lin_" + randomHex(6)
	s, err := sqlstore.New(db, d, sqlstore.WithTable(table), sqlstore.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("%s: migrate: %v", d, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP TABLE IF EXISTS `+table); err != nil {
			t.Errorf("drop %s: %v", table, err)
		}
	})
	return s
}

// --- Redis ---------------------------------------------------------------------

// Redis clients are built with retries off (MaxRetries, MaxRedirects -1):
// go-redis sends a command again when the reply to the first one was lost,
// so one call of the store can run its script twice, which no single-call
// model allows. The histories check the store, one script per call.

func openRedis(t testing.TB) idem.Store {
	return redisOver(t, serverEnv(t, "IDEM_REDIS_ADDR"), nil)
}

func faultyRedis(t testing.TB) (idem.Store, func(ctx context.Context)) {
	p := newProxy(t, serverEnv(t, "IDEM_REDIS_ADDR"))
	return redisOver(t, p.Addr(), nil), p.storm(stormFaults)
}

func openCluster(t testing.TB) idem.Store {
	addrs := strings.Split(serverEnv(t, "IDEM_REDIS_CLUSTER_ADDRS"), ",")
	return clusterOver(t, addrs, nil)
}

// faultyCluster puts a proxy in front of each node. The client learns the
// nodes' own addresses from the Cluster; its dialer sends each connection
// to the proxy of the node it is meant for.
func faultyCluster(t testing.TB) (idem.Store, func(ctx context.Context)) {
	addrs := strings.Split(serverEnv(t, "IDEM_REDIS_CLUSTER_ADDRS"), ",")
	proxies := map[string]*faultProxy{}
	for _, a := range addrs {
		proxies[a] = newProxy(t, a)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		p, ok := proxies[addr]
		if !ok {
			return nil, fmt.Errorf("no proxy for cluster node %s", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, p.Addr())
	}
	storms := make([]func(context.Context), 0, len(proxies))
	for _, p := range proxies {
		storms = append(storms, p.storm(stormFaults))
	}
	return clusterOver(t, addrs, dial), func(ctx context.Context) {
		var wg sync.WaitGroup
		for _, s := range storms {
			wg.Add(1)
			go func(s func(context.Context)) {
				defer wg.Done()
				s(ctx)
			}(s)
		}
		wg.Wait()
	}
}

type dialer = func(ctx context.Context, network, addr string) (net.Conn, error)

func redisOver(t testing.TB, addr string, dial dialer) idem.Store {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1, Dialer: dial})
	t.Cleanup(func() { c.Close() })
	return redisStore(t, c)
}

func clusterOver(t testing.TB, addrs []string, dial dialer) idem.Store {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true, MaxRetries: -1, MaxRedirects: -1, Dialer: dial})
	t.Cleanup(func() { c.Close() })
	return redisStore(t, c)
}

// redisStore returns a store over c under a prefix of its own; the keys it
// leaves expire with their TTLs (longLease at most).
func redisStore(t testing.TB, c redis.UniversalClient) idem.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis server unreachable: %v", err)
	}
	s := redisstore.New(c, redisstore.WithPrefix("idem-lin:"+randomHex(4)+":"))
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// --- the fault-injecting proxy -------------------------------------------------

// faultProxy is a toxiproxy proxy in front of one server, run in-process.
type faultProxy struct {
	p *toxiproxy.Proxy
}

var (
	toxiOnce   sync.Once
	toxiServer *toxiproxy.ApiServer
)

func newProxy(t testing.TB, upstream string) *faultProxy {
	t.Helper()
	toxiOnce.Do(func() {
		toxiServer = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	})
	p := toxiproxy.NewProxy(toxiServer, "idem-lin-"+randomHex(4), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("starting a proxy to %s: %v", upstream, err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{p: p}
}

func (f *faultProxy) Addr() string { return f.p.Listen }

// toxic is one fault: a toxiproxy toxic.
type toxic struct {
	typ, stream string
	attrs       map[string]int
}

// The faults of the storms. Each is on for a short while, then off.
var (
	// Replies held longer than a call may wait: the calls time out, having
	// (most likely) taken effect.
	slowReplies = toxic{"latency", "downstream", map[string]int{"latency": int(3 * faultCallTimeout / time.Millisecond)}}
	// Connections cut at the next request: calls fail before reaching
	// the server.
	resetRequests = toxic{"reset_peer", "upstream", map[string]int{"timeout": 0}}
	// Connections cut when the reply comes: the call took effect, its
	// reply is lost.
	resetReplies = toxic{"reset_peer", "downstream", map[string]int{"timeout": 0}}
	// Requests swallowed, connections kept open: the calls time out.
	blackhole = toxic{"timeout", "upstream", map[string]int{"timeout": 0}}
	// Requests delayed a little on their way: calls race their deadline.
	slowRequests = toxic{"latency", "upstream", map[string]int{"latency": int(faultCallTimeout / time.Millisecond), "jitter": int(faultCallTimeout / time.Millisecond)}}
)

var stormFaults = []toxic{slowReplies, resetRequests, resetReplies, blackhole, slowRequests}

// faultCallTimeout bounds each call of the histories with faults.
const faultCallTimeout = 100 * time.Millisecond

// storm returns a function that, until its context ends, turns one of
// faults on at a time for 20-80 ms, with 20-80 ms without fault between.
func (f *faultProxy) storm(faults []toxic) func(ctx context.Context) {
	return func(ctx context.Context) {
		rnd := mrand.New(mrand.NewSource(time.Now().UnixNano()))
		wait := func(d time.Duration) bool {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(d):
				return true
			}
		}
		for {
			if !wait(time.Duration(20+rnd.Intn(60)) * time.Millisecond) {
				return
			}
			tx := faults[rnd.Intn(len(faults))]
			name := "fault-" + randomHex(3)
			b, _ := json.Marshal(map[string]any{"name": name, "type": tx.typ, "stream": tx.stream, "toxicity": 1.0, "attributes": tx.attrs})
			if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(string(b))); err != nil {
				panic(fmt.Sprintf("adding toxic %s: %v", tx.typ, err))
			}
			ok := wait(time.Duration(20+rnd.Intn(60)) * time.Millisecond)
			if err := f.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
				panic(fmt.Sprintf("removing toxic %s: %v", tx.typ, err))
			}
			if !ok {
				return
			}
		}
	}
}
