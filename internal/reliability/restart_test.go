package reliability_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/redisstore"
)

// redisServer is a throwaway redis-server process with its data in a
// directory of the test.
type redisServer struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	args []string
	cmd  *exec.Cmd
	done chan error
}

// startRedisServer starts redis-server ($IDEM_REDIS_SERVER) on a free port
// with its files in a fresh directory and the extra args.
func startRedisServer(t *testing.T, args ...string) *redisServer {
	t.Helper()
	s := &redisServer{
		t:    t,
		bin:  testenv.Server(t, testenv.RedisServer, "the path of redis-server"),
		dir:  t.TempDir(),
		port: freePort(t),
		args: args,
	}
	s.start()
	t.Cleanup(func() {
		if s.cmd != nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

func (s *redisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// start starts the server on its port and directory and waits for PING.
func (s *redisServer) start() {
	s.t.Helper()
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--logfile", filepath.Join(s.dir, "redis.log"),
	}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting %s: %v", s.bin, err)
	}
	done := make(chan error, 1)
	s.done = done
	go func() { done <- s.cmd.Wait() }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	ok := pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	})
	if !ok {
		log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
		s.t.Fatalf("redis-server on %s did not answer PING within 10s:\n%s", s.Addr(), log)
	}
}

// shutdown stops the server gracefully (SHUTDOWN: the append-only file is
// flushed and fsynced) and waits for it to exit.
func (s *redisServer) shutdown() {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	c.Shutdown(context.Background()) // the connection closes: no reply
	s.wait()
}

// kill stops the server with SIGKILL, as a crash or an OOM kill would.
func (s *redisServer) kill() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.wait()
}

func (s *redisServer) wait() {
	s.t.Helper()
	select {
	case <-s.done:
		s.cmd = nil
	case <-time.After(10 * time.Second):
		s.t.Fatal("redis-server did not exit within 10s")
	}
}

// A Redis with the append-only file (appendfsync everysec, the usual
// production setting) stopped with SHUTDOWN and started again on the same
// directory: every completed record is replayed, and in-flight leases are
// kept too. SHUTDOWN flushes and fsyncs the file, so everysec loses nothing
// here and the test is deterministic.
func TestRedisGracefulRestartKeepsRecords(t *testing.T) {
	srv := startRedisServer(t, "--appendonly", "yes", "--appendfsync", "everysec")
	client := newRedisClient(t, srv.Addr())
	store := redisstore.New(client)
	a := newApp(t, store, idem.WithStoreTimeout(time.Second))

	const n = 50
	bodies := make([][]byte, n)
	for i := range bodies {
		r := a.mustPost(fmt.Sprintf("graceful-%d", i), "{}")
		if r.Status != http.StatusCreated {
			t.Fatalf("POST: %d %s", r.Status, r.Body)
		}
		bodies[i] = r.Body
	}
	srv.shutdown()
	// While it is down: fail closed, quickly.
	r := a.mustPost("graceful-0", "{}")
	wantProblem(t, r, http.StatusServiceUnavailable, "store-unavailable")
	srv.start()

	// A new process (new middleware, new handler counts) on the restarted
	// server replays every record.
	b := newApp(t, redisstore.New(newRedisClient(t, srv.Addr())))
	for i, want := range bodies {
		key := fmt.Sprintf("graceful-%d", i)
		for _, x := range []*app{a, b} {
			r := x.mustPost(key, "{}")
			if !bytes.Equal(r.Body, want) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("%s after the restart: %d %s, want the replay of %s", key, r.Status, r.Body, want)
			}
		}
		if a.runsOf(key) != 1 || b.runsOf(key) != 0 {
			t.Fatalf("%s ran %d+%d times", key, a.runsOf(key), b.runsOf(key))
		}
	}
	t.Logf("appendfsync everysec, SHUTDOWN and restart: %d of %d completed records replayed, 0 re-executions", n, n)
}

// A Redis with appendfsync always killed with SIGKILL under traffic and
// started again: every key whose 201 reached a client is replayed after the
// restart and never runs again. With appendfsync always, Redis writes and
// fsyncs a command to the append-only file before it replies, so an
// acknowledged Complete survives the crash; that makes this test
// deterministic. (With everysec, up to a second of acknowledged writes can
// be lost in a crash of the host: a completed record can come back absent,
// and its key then runs again.)
func TestRedisCrashWithAppendfsyncAlways(t *testing.T) {
	srv := startRedisServer(t, "--appendonly", "yes", "--appendfsync", "always")
	const storeTimeout = 200 * time.Millisecond
	a := newApp(t, redisstore.New(newRedisClient(t, srv.Addr())),
		idem.WithStoreTimeout(storeTimeout), idem.WithLockTTL(time.Second))
	a.delay = 5 * time.Millisecond

	type result struct {
		key  string
		r    reply
		err  error
		sent time.Time
	}
	var (
		mu      sync.Mutex
		results []result
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("crash-%d-%d", w, i)
				sent := time.Now()
				r, err := a.post(key, "{}")
				mu.Lock()
				results = append(results, result{key, r, err, sent})
				mu.Unlock()
				if r.Status != http.StatusCreated {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(w)
	}
	created := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, x := range results {
			if x.r.Status == http.StatusCreated {
				n++
			}
		}
		return n
	}
	if !pollUntil(10*time.Second, 5*time.Millisecond, func() bool { return created() >= 200 }) {
		close(stop)
		wg.Wait()
		t.Fatal("no traffic got through")
	}
	// Hold one request inside its handler, its key claimed and its
	// response not yet recorded, and kill the server under it: that request
	// is known to meet the dead server when it records its response.
	held := a.pauseNext()
	var heldKey string
	select {
	case heldKey = <-held.started:
	case <-time.After(30 * time.Second):
		close(stop)
		wg.Wait()
		t.Fatal("no request reached the handler within 30s")
	}
	srv.kill()
	killed := time.Now()
	close(held.resume)
	// While the server is down, the held request and new ones meet it.
	metDeadServer := func() (held bool, refused int) {
		mu.Lock()
		defer mu.Unlock()
		for _, x := range results {
			if x.key == heldKey {
				held = true
			} else if x.sent.After(killed) && x.r.Status == http.StatusServiceUnavailable {
				refused++
			}
		}
		return held, refused
	}
	if !pollUntil(30*time.Second, 5*time.Millisecond, func() bool {
		h, n := metDeadServer()
		return h && n >= 8
	}) {
		close(stop)
		wg.Wait()
		h, n := metDeadServer()
		t.Fatalf("after 30s with the server down: held request answered %v, %d requests sent since the kill answered 503", h, n)
	}
	srv.start()
	restarted := time.Now()
	// And the restarted one: new keys are acknowledged again.
	createdSince := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, x := range results {
			if x.sent.After(since) && x.r.Status == http.StatusCreated {
				n++
			}
		}
		return n
	}
	if !pollUntil(30*time.Second, 5*time.Millisecond, func() bool { return createdSince(restarted) >= 50 }) {
		close(stop)
		wg.Wait()
		t.Fatalf("only %d requests acknowledged within 30s of the restart", createdSince(restarted))
	}
	close(stop)
	wg.Wait()

	counts := map[string]int{}
	var slowest time.Duration
	for _, x := range results {
		if x.err != nil {
			t.Fatalf("%s: %v", x.key, x.err)
		}
		name := strconv.Itoa(x.r.Status)
		if x.r.Status != http.StatusCreated {
			var err error
			if name, err = problemType(x.r); err != nil {
				t.Fatalf("%s: %v", x.key, err)
			}
			if x.r.Status != http.StatusServiceUnavailable {
				t.Fatalf("%s: %d %s", x.key, x.r.Status, x.r.Body)
			}
		}
		counts[name]++
		if x.key == heldKey {
			// It met the dead server while recording its response: the
			// handler ran, its answer was not recorded.
			if name != "response-not-recorded" {
				t.Fatalf("the request held in its handler across the kill got %d %s, want 503 response-not-recorded", x.r.Status, x.r.Body)
			}
			continue // its time includes the hold
		}
		slowest = max(slowest, x.r.Elapsed)
	}

	// Every acknowledged key is replayed, byte for byte, and did not run
	// again. The check reads through a second process with a generous store
	// timeout: what is checked is what the restarted server holds, not how
	// fast a loaded machine fsyncs (appendfsync always fsyncs every write).
	b := newApp(t, redisstore.New(newRedisClient(t, srv.Addr())), idem.WithStoreTimeout(10*time.Second))
	replayed := 0
	for _, x := range results {
		if x.r.Status != http.StatusCreated {
			continue
		}
		r := b.mustPost(x.key, "{}")
		if !bytes.Equal(r.Body, x.r.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("%s (201 sent %v before the kill) after the restart: %d %s, want the replay of %s",
				x.key, killed.Sub(x.sent).Round(time.Millisecond), r.Status, r.Body, x.r.Body)
		}
		if n, m := a.runsOf(x.key), b.runsOf(x.key); n != 1 || m != 0 {
			t.Fatalf("%s ran %d+%d times", x.key, n, m)
		}
		replayed++
	}
	// No answer hung: the store calls of one request are bounded by a few
	// store timeouts (200ms each), and 10s is far beyond them on any
	// machine.
	if slowest > 10*time.Second {
		t.Fatalf("a request took %v while the server was down", slowest)
	}
	t.Logf("appendfsync always, SIGKILL under traffic, restart after %v: answers %v; all %d acknowledged keys replayed after the restart, 0 re-executions; slowest answer %v",
		restarted.Sub(killed).Round(time.Millisecond), counts, replayed, slowest.Round(time.Millisecond))
}
