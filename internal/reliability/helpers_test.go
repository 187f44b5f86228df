// Package reliability_test holds fault tests of the idem middleware against
// real servers: Redis (and PostgreSQL once its store exists) reached through
// a fault-injecting TCP proxy (Shopify's toxiproxy, run in-process), and
// throwaway redis-server processes that the tests stop, kill and restart.
//
// The servers come from ./scripts/test.sh (IDEM_REDIS_ADDR,
// IDEM_POSTGRES_DSN, IDEM_REDIS_SERVER). Without them a test is skipped
// locally and fails under CI=true.
package reliability_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/sqlstore"
)

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newRedisClient connects to addr. ContextTimeoutEnabled makes go-redis
// honour the deadline of the context of each call, which is how
// idem.WithStoreTimeout bounds a store call; without it a call to a server
// that stopped answering lasts go-redis's ReadTimeout (3s by default)
// whatever the context says.
func newRedisClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// newRedisStore returns a store over c whose keys are under a prefix of
// their own, so that runs and tests sharing one server never meet.
func newRedisStore(c redis.UniversalClient) *redisstore.Store {
	return redisstore.New(c, redisstore.WithPrefix("idem-rel:"+randomHex(4)+":"))
}

// --- the fault-injecting proxy ------------------------------------------------

// faultProxy is a toxiproxy proxy in front of one upstream server.
type faultProxy struct {
	p *toxiproxy.Proxy
}

var (
	toxiOnce   sync.Once
	toxiServer *toxiproxy.ApiServer
)

// newProxy starts a proxy on a free loopback port in front of upstream and
// stops it at the end of the test.
func newProxy(t testing.TB, upstream string) *faultProxy {
	t.Helper()
	toxiOnce.Do(func() {
		toxiServer = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	})
	p := toxiproxy.NewProxy(toxiServer, "idem-"+randomHex(4), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("starting the proxy to %s: %v", upstream, err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{p: p}
}

// Addr is where clients connect.
func (f *faultProxy) Addr() string { return f.p.Listen }

// add adds a toxic. stream is "upstream" (client to server) or
// "downstream" (server to client). It may be called from any goroutine.
func (f *faultProxy) add(name, typ, stream string, attrs map[string]int) error {
	b, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
	if err != nil {
		return err
	}
	_, err = f.p.Toxics.AddToxicJson(strings.NewReader(string(b)))
	return err
}

func (f *faultProxy) remove(name string) error {
	return f.p.Toxics.RemoveToxic(context.Background(), name)
}

// The faults the tests inject.
const (
	faultLatency   = "latency"   // every reply delayed past the store timeout
	faultBlackhole = "blackhole" // requests dropped, connections kept open
	faultReset     = "reset"     // every connection cut at its next request
	faultReplyLost = "replylost" // requests reach the server, replies are cut
	faultDown      = "down"      // proxy stopped: connections closed, new ones refused
)

// set turns fault on. Only one fault at a time is on.
func (f *faultProxy) set(fault string, storeTimeout time.Duration) error {
	switch fault {
	case faultLatency:
		return f.add(fault, "latency", "downstream", map[string]int{"latency": int(5 * storeTimeout / time.Millisecond)})
	case faultBlackhole:
		return f.add(fault, "timeout", "upstream", map[string]int{"timeout": 0})
	case faultReset:
		return f.add(fault, "reset_peer", "upstream", map[string]int{"timeout": 0})
	case faultReplyLost:
		return f.add(fault, "reset_peer", "downstream", map[string]int{"timeout": 0})
	case faultDown:
		f.p.Stop()
		return nil
	}
	return fmt.Errorf("unknown fault %q", fault)
}

// clear turns fault off.
func (f *faultProxy) clear(fault string) error {
	if fault == faultDown {
		return f.p.Start()
	}
	return f.remove(fault)
}

// --- the service under test -----------------------------------------------------

// app is an HTTP server whose POST handler is protected by idem and counts
// its runs per key. Each run answers 201 with a body unique to that run, so
// that a replay can be told from a second run.
type app struct {
	t   testing.TB
	srv *httptest.Server

	mu     sync.Mutex
	runs   map[string]int
	events []idem.Event
	// during, if set for a key, runs inside the handler before it answers.
	during map[string]func() int
	// delay is how long the handler sleeps; set it before the first request.
	delay time.Duration
	// pause, when set, is taken by the next run of the handler (see
	// pauseNext).
	pause *pausedRun
}

// pausedRun is one run of the handler held at a known point: it has read
// its request and counted its run, and waits before it answers.
type pausedRun struct {
	started chan string   // receives the run's key once it is held
	resume  chan struct{} // closed by the test to let it answer
}

// pauseNext makes the next run of the handler, whatever its key, stop
// before it answers: the returned run's started channel gets its key then,
// and the run goes on when resume is closed. It gives a test a request
// that is known to be in flight, with its key claimed and its response not
// yet recorded.
func (a *app) pauseNext() *pausedRun {
	p := &pausedRun{started: make(chan string, 1), resume: make(chan struct{})}
	a.mu.Lock()
	a.pause = p
	a.mu.Unlock()
	return p
}

func newApp(t testing.TB, store idem.Store, opts ...idem.Option) *app {
	a := &app{t: t, runs: map[string]int{}, during: map[string]func() int{}}
	opts = append([]idem.Option{idem.WithHook(func(ev idem.Event) {
		ev.Request = nil
		a.mu.Lock()
		a.events = append(a.events, ev)
		a.mu.Unlock()
	})}, opts...)
	mw, err := idem.NewMiddleware(store, opts...)
	if err != nil {
		t.Fatal(err)
	}
	a.srv = httptest.NewServer(mw.Handler(http.HandlerFunc(a.handle)))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) handle(w http.ResponseWriter, r *http.Request) {
	key, _ := idem.KeyFromContext(r.Context())
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.runs[key]++
	run := a.runs[key]
	during := a.during[key]
	pause := a.pause
	a.pause = nil
	a.mu.Unlock()
	if pause != nil {
		pause.started <- key
		<-pause.resume
	}
	time.Sleep(a.delay)
	status := http.StatusCreated
	if during != nil {
		if s := during(); s != 0 {
			status = s
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"key":%q,"run":%d,"nonce":%q,"request":%q}`+"\n", key, run, randomHex(8), body)
}

// onRun sets what the handler does for key before it answers; f returns
// the status to answer, or 0 for 201.
func (a *app) onRun(key string, f func() int) {
	a.mu.Lock()
	a.during[key] = f
	a.mu.Unlock()
}

func (a *app) runsOf(key string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[key]
}

func (a *app) lastEvent(key string) (idem.Event, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.events) - 1; i >= 0; i-- {
		switch a.events[i].Outcome {
		case idem.OutcomeRenewFailed, idem.OutcomeReleaseFailed:
			// Not a request's outcome: reported on their own, by the lease
			// or by a release in the background, possibly after it.
			continue
		}
		if a.events[i].Key == key {
			return a.events[i], true
		}
	}
	return idem.Event{}, false
}

// reply is one answer of the app.
type reply struct {
	Status  int
	Header  http.Header
	Body    []byte
	Elapsed time.Duration
}

var httpClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// post sends POST / with key and body. It is safe to call from any
// goroutine: it returns errors rather than failing the test.
func (a *app) post(key, body string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, a.srv.URL+"/", strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Idempotency-Key", key)
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b, time.Since(start)}, err
}

func (a *app) mustPost(key, body string) reply {
	a.t.Helper()
	r, err := a.post(key, body)
	if err != nil {
		a.t.Fatalf("POST key %s: %v", key, err)
	}
	return r
}

// problemType returns the name of the problem r carries (the part after
// "#problem-" of its type), or an error when r is not a valid problem.
func problemType(r reply) (string, error) {
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		return "", fmt.Errorf("%d with Content-Type %q, want application/problem+json: %s", r.Status, ct, r.Body)
	}
	var p struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(r.Body, &p); err != nil {
		return "", fmt.Errorf("problem body %q: %v", r.Body, err)
	}
	if p.Status != r.Status || p.Title == "" || p.Detail == "" || !strings.HasPrefix(p.Type, idem.ProblemTypeBase) {
		return "", fmt.Errorf("problem %+v sent with status %d", p, r.Status)
	}
	return strings.TrimPrefix(p.Type, idem.ProblemTypeBase), nil
}

// wantProblem fails unless r is the problem name with status.
func wantProblem(t testing.TB, r reply, status int, name string) {
	t.Helper()
	got, err := problemType(r)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != status || got != name {
		t.Fatalf("got %d problem %q, want %d %q: %s", r.Status, got, status, name, r.Body)
	}
}

// retryAfter returns the Retry-After of r in seconds, or -1.
func retryAfter(r reply) int {
	n, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil {
		return -1
	}
	return n
}

// isStoreUnavailable reports whether r is the 503 that says the key could
// not be checked: the answer a client retries after Retry-After.
func isStoreUnavailable(r reply) bool {
	return r.Status == http.StatusServiceUnavailable && bytes.Contains(r.Body, []byte("problem-store-unavailable"))
}

// pollUntil calls f every interval until it returns true or the deadline
// passes; it reports whether f returned true.
func pollUntil(deadline time.Duration, interval time.Duration, f func() bool) bool {
	end := time.Now().Add(deadline)
	for {
		if f() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(interval)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// quietLogger drops go-redis's own log lines ("failed to dial after 5
// attempts"), which the faults provoke by design.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...interface{}) {}

func init() { redis.SetLogger(quietLogger{}) }

// --- PostgreSQL ------------------------------------------------------------------

// postgresUpstream returns the DSN of IDEM_POSTGRES_DSN and its host:port.
func postgresUpstream(t testing.TB) (dsn, hostPort string) {
	t.Helper()
	dsn = testenv.Server(t, testenv.PostgresDSN, "a PostgreSQL server")
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Fatalf("IDEM_POSTGRES_DSN %q is not a postgres:// URL with a host: %v", dsn, err)
	}
	return dsn, u.Host
}

// dsnVia returns dsn with its host:port replaced by addr.
func dsnVia(t testing.TB, dsn, addr string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

// newPostgresTable creates a fresh idempotency table in the database of
// dsn, dropped when t ends, and returns its name.
func newPostgresTable(t testing.TB, dsn string) string {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	table := "idem_rel_" + randomHex(6)
	s, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.WithTable(table), sqlstore.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		db.Close()
		t.Fatalf("creating table %s: %v", table, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP TABLE IF EXISTS `+table); err != nil {
			t.Errorf("dropping %s: %v", table, err)
		}
		db.Close()
	})
	return table
}

// newPostgresStore opens dsn and returns a store over table.
func newPostgresStore(t testing.TB, dsn, table string) *sqlstore.Store {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	// database/sql keeps 2 idle connections by default and opens as many
	// as are asked for: with more concurrent requests than that, most store
	// calls open a new PostgreSQL connection (a process fork on the
	// server). After a fault has emptied the pool on a loaded machine,
	// connection set-up can outlast a short store timeout; the abandoned
	// connections then queue in the server's listen backlog ahead of new
	// ones, and retrying clients keep it full. A bounded pool keeps the
	// connections and bounds the set-ups in flight.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	s, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.WithTable(table), sqlstore.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		db.Close()
	})
	return s
}
