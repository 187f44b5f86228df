package main

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// measurement is one run of one server.
type measurement struct {
	rps      float64 // successful requests per second
	p50, p99 time.Duration
	cmds     float64 // Redis commands sent per request
	requests uint64
	bad      map[string]int // unexpected status codes and errors
	// CPU time per successful request, in µs, of the server's process, of
	// redis-server and of the harness, which generates the load (0 where
	// /proc is missing).
	cpuServer, cpuRedis, cpuLoad float64
}

func (m measurement) errNote() string {
	if len(m.bad) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m.bad))
	for k := range m.bad {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("  UNEXPECTED:")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s×%d", k, m.bad[k])
	}
	return b.String()
}

var runSeq atomic.Uint64

// key returns an Idempotency-Key of 36 characters, the form of a UUID (Fiber
// accepts nothing else), unique in this process.
func newKey(run, n uint64) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", uint32(run), n)
}

// paymentBody returns a payment of size bytes, padded with a memo field the
// handlers ignore.
func paymentBody(size int) []byte {
	head := `{"amount":1000,"currency":"eur","memo":"`
	tail := `"}`
	pad := size - len(head) - len(tail)
	if pad < 0 {
		pad = 0
	}
	return []byte(head + strings.Repeat("x", pad) + tail)
}

// measure runs scenario against t for d at conns connections.
func measure(t *target, scenario string, conns, size int, d time.Duration, redisAddr string, redisPID int) (measurement, error) {
	run := runSeq.Add(1)
	body := paymentBody(size)
	url := t.url + "/payments"
	hdr := func(key string) http.Header {
		return http.Header{"Content-Type": {"application/json"}, "Idempotency-Key": {key}}
	}
	var targeter vegeta.Targeter
	var seq atomic.Uint64
	switch scenario {
	case "new":
		targeter = func(tg *vegeta.Target) error {
			tg.Method, tg.URL, tg.Body, tg.Header = "POST", url, body, hdr(newKey(run, seq.Add(1)))
			return nil
		}
	case "replay":
		// Keys made beforehand, one request each, then sent round robin.
		n := max(64, 4*conns)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = newKey(run, uint64(i))
			req, _ := http.NewRequest("POST", url, strings.NewReader(string(body)))
			req.Header = hdr(keys[i])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return measurement{}, err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				return measurement{}, fmt.Errorf("creating replay key: %s", resp.Status)
			}
		}
		targeter = func(tg *vegeta.Target) error {
			tg.Method, tg.URL, tg.Body, tg.Header = "POST", url, body, hdr(keys[seq.Add(1)%uint64(n)])
			return nil
		}
	default:
		return measurement{}, fmt.Errorf("unknown scenario %q", scenario)
	}

	before, err := commandStats(redisAddr)
	if err != nil {
		return measurement{}, err
	}
	serverCPU0, _ := procCPU(t.cmd.Process.Pid)
	redisCPU0, _ := procCPU(redisPID)
	loadCPU0, _ := procCPU(os.Getpid())
	atk := vegeta.NewAttacker(
		vegeta.Connections(conns), vegeta.MaxConnections(conns),
		vegeta.Workers(uint64(conns)), vegeta.MaxWorkers(uint64(conns)),
		vegeta.KeepAlive(true), vegeta.HTTP2(false), vegeta.Timeout(30*time.Second),
		vegeta.MaxBody(64<<10),
	)
	var metrics vegeta.Metrics
	bad := map[string]int{}
	for res := range atk.Attack(targeter, vegeta.Rate{Freq: 0}, d, t.name) {
		metrics.Add(res)
		if res.Code != http.StatusCreated {
			k := strconv.Itoa(int(res.Code))
			if res.Error != "" {
				k += " " + res.Error
				if len(k) > 60 {
					k = k[:60]
				}
			}
			bad[k]++
		}
	}
	metrics.Close()
	serverCPU1, okServer := procCPU(t.cmd.Process.Pid)
	redisCPU1, okRedis := procCPU(redisPID)
	loadCPU1, okLoad := procCPU(os.Getpid())
	after, err := commandStats(redisAddr)
	if err != nil {
		return measurement{}, err
	}
	m := measurement{
		rps:      metrics.Throughput,
		p50:      metrics.Latencies.P50,
		p99:      metrics.Latencies.P99,
		requests: metrics.Requests,
		bad:      bad,
	}
	if metrics.Requests > 0 {
		m.cmds = float64(clientCommands(before, after)) / float64(metrics.Requests)
	}
	if n := float64(metrics.Requests) * metrics.Success; n > 0 {
		if okServer {
			m.cpuServer = float64((serverCPU1 - serverCPU0).Microseconds()) / n
		}
		if okRedis {
			m.cpuRedis = float64((redisCPU1 - redisCPU0).Microseconds()) / n
		}
		if okLoad {
			m.cpuLoad = float64((loadCPU1 - loadCPU0).Microseconds()) / n
		}
	}
	return m, nil
}
