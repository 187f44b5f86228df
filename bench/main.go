// Command bench is the load harness: it compares the example payments
// service on idem (over each Redis client) with the same API on bare
// net/http, on Fiber v2's idempotency middleware and behind idemproxy (in
// front of the bare server), all on one local redis-server, and writes a
// markdown table and an SVG chart.
//
//	cd bench && go run . -quick     # about a minute
//	cd bench && go run .            # the full sweep, about ten minutes
//	cd bench && go run . -conns 128 -sizes 1024 -only 'bare net/http;idem rueidis' -profile /tmp/prof
//
// -profile DIR writes a CPU and an allocation profile of every Go server
// over every measurement (go tool pprof reads them); every measurement
// also reports the CPU time per request of the server, redis-server and
// the harness itself, which generates the load.
//
// Everything runs on 127.0.0.1: one redis-server on a free port (no
// persistence), one process per server, and vegeta as a library for the
// load. Each measurement is one run of -duration at a fixed number of
// connections, as fast as the server answers; the servers take turns in
// every round, in an order that rotates, so that a noisy neighbour hurts all
// of them alike. Results are the medians over -rounds rounds.
//
// "new" sends a fresh Idempotency-Key with every request; "replay" first
// creates a set of keys, then sends them again and again. Round trips per
// request are the commands the servers' Redis clients sent, from INFO
// commandstats before and after the run (a script counts once, not the
// commands it runs).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	quick       bool
	duration    time.Duration
	rounds      int
	conns       []int
	sizes       []int
	sizeConns   int
	out         string
	redisServer string
	noCache     bool
	profile     string   // directory for CPU and allocation profiles ("": none)
	only        []string // servers to measure (nil: all)
	scenarios   []string // "new", "replay"
}

func run(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	serve := fs.String("serve", "", "internal: serve bare or fiber on -addr")
	addr := fs.String("addr", "", "internal: listen address of -serve")
	redisAddr := fs.String("redis", "", "internal: Redis address of -serve fiber")
	pprofAddr := fs.String("pprof", "", "internal: listen address of Go's profiles for -serve")
	var o options
	fs.BoolVar(&o.quick, "quick", false, "a short run: 32 and 128 connections, 1 KiB bodies, one round of 2s")
	fs.DurationVar(&o.duration, "duration", 4*time.Second, "length of one measurement")
	fs.IntVar(&o.rounds, "rounds", 2, "rounds; every server is measured once per round and configuration")
	conns := fs.String("conns", "1,32,128,256", "connection counts of the concurrency sweep (1 KiB bodies)")
	sizes := fs.String("sizes", "1024,65536,1040384", "request body sizes of the size sweep, in bytes (at -size-conns)")
	fs.IntVar(&o.sizeConns, "size-conns", 32, "connections of the body size sweep")
	fs.StringVar(&o.out, "out", "results", "directory for results.md and chart.svg")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server binary")
	fs.BoolVar(&o.noCache, "no-cache-run", true, "also measure idem on rueidis without the replay cache")
	fs.StringVar(&o.profile, "profile", "", "directory: take a CPU and an allocation profile of every Go server over every measurement (pprof)")
	only := fs.String("only", "", "names of the servers to measure, separated by semicolons (names hold commas), e.g. 'bare net/http;idem rueidis' (default all)")
	scenarios := fs.String("scenarios", "new,replay", "scenarios to measure: new, replay or both")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *serve {
	case "bare", "fiber":
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return err
		}
		if *pprofAddr != "" {
			pln, err := net.Listen("tcp", *pprofAddr)
			if err != nil {
				return err
			}
			go servePprof(pln)
		}
		if *serve == "bare" {
			return serveBare(ln)
		}
		return serveFiber(ln, *redisAddr)
	case "":
	default:
		return fmt.Errorf("-serve %q: want bare or fiber", *serve)
	}
	var err error
	if o.quick {
		o.duration, o.rounds, *conns, *sizes = 2*time.Second, 1, "32,128", "1024"
		o.noCache = false
	}
	if o.conns, err = ints(*conns); err != nil {
		return fmt.Errorf("-conns: %w", err)
	}
	if o.sizes, err = ints(*sizes); err != nil {
		return fmt.Errorf("-sizes: %w", err)
	}
	if *only != "" {
		for _, n := range strings.Split(*only, ";") {
			o.only = append(o.only, strings.TrimSpace(n))
		}
	}
	for _, sc := range strings.Split(*scenarios, ",") {
		switch sc = strings.TrimSpace(sc); sc {
		case "new", "replay":
			o.scenarios = append(o.scenarios, sc)
		default:
			return fmt.Errorf("-scenarios: %q is not new or replay", sc)
		}
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
	}
	return bench(o)
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// upstreamBare, as an argument of a server, is replaced by the URL of the
// bare net/http server.
const upstreamBare = "{bare}"

// target is one server under test.
type target struct {
	name  string
	url   string
	pprof string // base URL of its /debug/pprof/ ("": none)
	cmd   *exec.Cmd
}

func bench(o options) error {
	tmp, err := os.MkdirTemp("", "idem-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	redisAddr, redisPID, stopRedis, err := startRedis(o.redisServer, tmp)
	if err != nil {
		return err
	}
	defer stopRedis()

	fmt.Fprintln(os.Stderr, "building the example ...")
	example := filepath.Join(tmp, "example")
	build := exec.Command("go", "build", "-o", example, ".")
	build.Dir = filepath.Join("..", "example")
	build.Env = append(os.Environ(), "GOWORK=off")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building ../example: %w", err)
	}
	fmt.Fprintln(os.Stderr, "building idemproxy ...")
	proxy := filepath.Join(tmp, "idemproxy")
	build = exec.Command("go", "build", "-o", proxy, ".")
	build.Dir = filepath.Join("..", "cmd", "idemproxy")
	build.Env = append(os.Environ(), "GOWORK=off")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building ../cmd/idemproxy: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	store := "redis://" + redisAddr + "/0"
	const cache = "67108864" // 64 MiB
	// The example logs every execution and replay at Debug by default, a
	// line written to its log per request that Fiber and bare net/http do
	// not pay: the servers log at Info here (conflicts, refusals, errors),
	// as a production service would.
	const logLevel = "info"
	specs := []struct {
		name string
		bin  string
		args []string
	}{
		{"bare net/http", self, []string{"-serve", "bare"}}, // first: idemproxy's upstream
		{"Fiber", self, []string{"-serve", "fiber", "-redis", redisAddr}},
		{"idem go-redis", example, []string{"-store", store, "-redis-client", "go-redis", "-replay-cache", cache, "-log-level", logLevel}},
		{"idem rueidis", example, []string{"-store", store, "-redis-client", "rueidis", "-replay-cache", cache, "-log-level", logLevel}},
		// idemproxy in front of the bare net/http server above (upstreamBare
		// stands for its URL): the same API with the idempotency in a
		// separate process, one more HTTP hop.
		{"idemproxy → bare", proxy, []string{"-upstream", upstreamBare, "-store", store, "-redis-client", "rueidis", "-log-level", "error"}},
	}
	if o.noCache {
		specs = append(specs, struct {
			name string
			bin  string
			args []string
		}{"idem rueidis, no cache", example, []string{"-store", store, "-redis-client", "rueidis", "-log-level", logLevel}})
	}
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.cmd.Process.Kill()
			t.cmd.Wait()
		}
	}()
	for i, s := range specs {
		if i > 0 && !wanted(o.only, s.name) && !(s.name == "bare net/http" && wanted(o.only, "idemproxy → bare")) {
			continue
		}
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		args := append([]string{"-addr", addr}, s.args...)
		pprofURL := ""
		if o.profile != "" && s.bin != proxy {
			paddr, err := freeAddr()
			if err != nil {
				return err
			}
			args = append(args, "-pprof", paddr)
			pprofURL = "http://" + paddr
		}
		for i, arg := range args {
			if arg == upstreamBare {
				args[i] = targets[0].url // "bare net/http", started first
			}
		}
		cmd := exec.Command(s.bin, args...)
		cmd.SysProcAttr = childAttr()
		logf, err := os.Create(filepath.Join(tmp, fileName(s.name)+".log"))
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", s.name, err)
		}
		t := &target{name: s.name, url: "http://" + addr, pprof: pprofURL, cmd: cmd}
		targets = append(targets, t)
		if err := waitHealthy(t.url + "/healthz"); err != nil {
			out, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("%s did not come up: %w\n%s", s.name, err, out)
		}
	}
	if len(o.only) > 0 && !wanted(o.only, "bare net/http") {
		targets[0].cmd.Process.Kill() // started only as idemproxy's upstream
		targets[0].cmd.Wait()
		targets = targets[1:]
	}
	if len(targets) == 0 {
		return fmt.Errorf("-only %q: no such server", strings.Join(o.only, ","))
	}

	type config struct {
		scenario string
		conns    int
		size     int
	}
	var configs []config
	for _, sc := range o.scenarios {
		for _, c := range o.conns {
			configs = append(configs, config{sc, c, 1024})
		}
		for _, s := range o.sizes {
			if s != 1024 {
				configs = append(configs, config{sc, o.sizeConns, s})
			}
		}
	}
	total := o.rounds * len(configs) * len(targets)
	fmt.Fprintf(os.Stderr, "%d measurements of %v: about %v, plus warm-up\n", total, o.duration,
		(time.Duration(total) * o.duration).Round(time.Second))

	res := newResults()
	n := 0
	for round := 0; round < o.rounds; round++ {
		for ci, c := range configs {
			for k := range targets {
				t := targets[(k+round+ci)%len(targets)]
				n++
				if err := flushRedis(redisAddr); err != nil {
					return err
				}
				var prof *profiler
				if o.profile != "" && t.pprof != "" {
					name := fmt.Sprintf("%s.%s.c%d.%s.r%d", fileName(t.name), c.scenario, c.conns, sizeName(c.size), round+1)
					prof = startProfiles(t.pprof, o.duration, o.profile, strings.ReplaceAll(name, " ", ""))
				}
				m, err := measure(t, c.scenario, c.conns, c.size, o.duration, redisAddr, redisPID)
				if err != nil {
					return fmt.Errorf("%s %s c=%d: %w", t.name, c.scenario, c.conns, err)
				}
				if prof != nil {
					if err := prof.wait(); err != nil {
						return fmt.Errorf("profiling %s: %w", t.name, err)
					}
				}
				res.add(key{c.scenario, c.conns, c.size, t.name}, m)
				fmt.Fprintf(os.Stderr, "[%d/%d] round %d %-6s c=%-3d body %-8s %-24s %8.0f req/s  p50 %-8v p99 %-8v %.2f cmds/req  CPU µs/req server %.0f redis %.0f load %.0f%s\n",
					n, total, round+1, c.scenario, c.conns, sizeName(c.size), t.name, m.rps,
					m.p50.Round(10*time.Microsecond), m.p99.Round(10*time.Microsecond), m.cmds, m.cpuServer, m.cpuRedis, m.cpuLoad, m.errNote())
			}
		}
	}

	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.name
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	info := machineInfo(o)
	md := res.markdown(names, o, info)
	if err := os.WriteFile(filepath.Join(o.out, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "chart.svg"), []byte(res.svg(names, o)), 0o644); err != nil {
		return err
	}
	fmt.Println(md)
	fmt.Fprintf(os.Stderr, "wrote %s and %s\n", filepath.Join(o.out, "results.md"), filepath.Join(o.out, "chart.svg"))
	return nil
}

// wanted reports whether the server name is among only (all are when only
// is empty).
func wanted(only []string, name string) bool {
	if len(only) == 0 {
		return true
	}
	for _, n := range only {
		if n == name {
			return true
		}
	}
	return false
}

func machineInfo(o options) string {
	v, _ := exec.Command(o.redisServer, "--version").Output()
	return fmt.Sprintf("%s, %d CPUs, %s/%s, %s; %s", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(),
		runtime.GOOS, runtime.GOARCH, runtime.Version(), strings.TrimSpace(strings.Fields(string(v) + " ? ? ?")[2]))
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20-(64<<10):
		return "1 MiB"
	case n >= 1<<10:
		return strconv.Itoa(n>>10) + " KiB"
	}
	return strconv.Itoa(n) + " B"
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitHealthy(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRedis starts a redis-server without persistence on a free loopback
// port.
func startRedis(bin, dir string) (string, int, func(), error) {
	addr, err := freeAddr()
	if err != nil {
		return "", 0, nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	cmd.SysProcAttr = childAttr()
	logf, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return "", 0, nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("starting %s (install redis-server, or give -redis-server): %w", bin, err)
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := redisCommand(addr, "PING"); err == nil {
			break
		} else if time.Now().After(deadline) {
			stop()
			return "", 0, nil, fmt.Errorf("redis-server on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "redis-server on %s\n", addr)
	return addr, cmd.Process.Pid, stop, nil
}

func flushRedis(addr string) error {
	_, err := redisCommand(addr, "FLUSHALL")
	return err
}

// redisCommand sends one command on a new connection and returns its reply
// as text: enough RESP for PING, FLUSHALL and INFO.
func redisCommand(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", errors.New(line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("unexpected reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// commandStats returns the calls of every command so far.
func commandStats(addr string) (map[string]int64, error) {
	info, err := redisCommand(addr, "INFO", "commandstats")
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out, nil
}

// clientCommands returns the commands the servers' clients sent between two
// snapshots. Commands that Lua scripts run are counted by Redis too: when
// scripts ran, only the script calls count (idem's clients send nothing
// else); the harness's own INFO and FLUSHALL never count.
func clientCommands(before, after map[string]int64) int64 {
	delta := map[string]int64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			delta[k] = d
		}
	}
	scripts := delta["evalsha"] + delta["eval"] + delta["evalsha_ro"] + delta["eval_ro"] + delta["fcall"]
	if scripts > 0 {
		return scripts
	}
	var n int64
	keys := make([]string, 0, len(delta))
	for k := range delta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "info", "flushall", "ping", "hello", "client|setinfo", "client|setname", "cluster|slots", "cluster|shards", "command", "select":
			continue
		}
		n += delta[k]
	}
	return n
}
