package idem_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// The replay differential runs each handler behaviour once behind the
// middleware, sends the same request again, and compares what a client
// reads from the two answers: the status, every header, the body and the
// trailers. What the README names as not replayed is left out: the framing
// (Content-Length or chunked, whether the connection stays open), the
// hop-by-hop headers, Date's value and Idempotent-Replayed itself.

// replayExchange sends req to d's server (on a connection of its own) and
// returns the bytes the server wrote. The handler must not run: it reports
// whether it did.
func replayExchange(t *testing.T, d *diffServer, s script, req string) (wire string, ran bool) {
	t.Helper()
	run := &diffRun{s: s, done: make(chan struct{})}
	d.current.Store(run)
	conn, err := net.Dial("tcp", d.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req+"GET /probe HTTP/1.1\r\nHost: idem.test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(conn)
	select {
	case <-run.done:
		ran = true
	default:
	}
	return string(raw), ran
}

// notCompared are the headers a replay is not expected to repeat.
var notCompared = map[string]bool{
	"Date": true, "Idempotent-Replayed": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Upgrade": true,
}

// clientView parses the final response on wire as a client reads it.
func clientView(t *testing.T, wire string) string {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(wire))
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
		if err != nil {
			t.Fatalf("reading %q: %v", wire, err)
		}
		if resp.StatusCode < 200 {
			continue // 1xx are not replayed
		}
		body, err := io.ReadAll(resp.Body)
		var lines []string
		for k, vv := range resp.Header {
			if !notCompared[k] {
				lines = append(lines, fmt.Sprintf("header %s: %q", k, vv))
			}
		}
		for k, vv := range resp.Trailer {
			lines = append(lines, fmt.Sprintf("trailer %s: %q", k, vv))
		}
		sort.Strings(lines)
		return fmt.Sprintf("status %d\n%s\nbody %q (%v)", resp.StatusCode, strings.Join(lines, "\n"), body, err)
	}
}

// replayCases add to wireCases behaviours whose replay needs a look of its
// own.
var replayCases = map[string]script{
	"Transfer-Encoding: chunked set": {{kind: opSet, name: "Transfer-Encoding", value: "chunked"}, {kind: opWrite, n: 5}},
	"two declared trailers":          {{kind: opSet, name: "Trailer", value: "X-A, X-B"}, {kind: opWrite, n: 5}, {kind: opSet, name: "X-A", value: "1"}, {kind: opSet, name: "X-B", value: "2"}},
	"trailer set before the body":    {{kind: opSet, name: "Trailer", value: "X-A"}, {kind: opSet, name: "X-A", value: "early"}, {kind: opWrite, n: 5}, {kind: opSet, name: "X-A", value: "late"}},
	"Content-Length 0, empty write":  {{kind: opSet, name: "Content-Length", value: "0"}, {kind: opWrite, n: 0}},
	"empty Content-Encoding":         {{kind: opSet, name: "Content-Encoding", value: ""}, {kind: opWrite, n: 5}},
}

// A replay reads, for the client, as the first answer did: same status,
// headers, body and trailers, for every recorded handler behaviour of the
// wire table, with and without outer middleware setting headers.
func TestReplayMatchesFirstAnswer(t *testing.T) {
	cases := map[string]script{}
	for name, s := range wireCases {
		cases[name] = s
	}
	for name, s := range replayCases {
		cases[name] = s
	}
	for _, outer := range []bool{false, true} {
		st := memstore.New()
		t.Cleanup(func() { st.Close() })
		d := newDiffServer(t, idem.New(st, idem.WithMaxResponseSize(4096)), outer)
		replayed := 0
		for name, s := range cases {
			req := post("")
			first, _ := d.exchange(t, s, req)
			second, ran := replayExchange(t, d, s, req)
			if ran || !strings.Contains(second, "Idempotent-Replayed: true\r\n") {
				continue // not recorded, or not replayable: nothing to compare
			}
			replayed++
			if got, want := clientView(t, second), clientView(t, first); got != want {
				t.Errorf("outer middleware %v, %s %v: the replay reads\n%s\nthe first answer read\n%s", outer, name, s, got, want)
			}
		}
		if replayed < len(cases)/2 {
			t.Fatalf("only %d of %d behaviours were replayed", replayed, len(cases))
		}
	}
}
