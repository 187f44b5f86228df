package idem_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// The differential tests run one handler twice over real connections: bare
// under net/http, and behind the middleware with a fresh key. They compare
// the raw bytes each server wrote (1xx responses, status line, every header
// line in order, body with its chunking, trailers, and whether the server
// kept the connection open for the next request) and what the handler
// observed (the header map it was handed, the results of its writes,
// flushes and hijacks). Only the Date header's value is normalised: the two
// runs happen at different moments. Where the middleware differs by design,
// a test names the difference and checks exactly it.

// opKind is one thing a scripted handler does.
type opKind uint8

const (
	opSet         opKind = iota // w.Header().Set(name, value)
	opAdd                       // w.Header().Add(name, value)
	opDel                       // w.Header().Del(name)
	opNil                       // w.Header()[name] = nil
	opWriteHeader               // w.WriteHeader(code)
	opWrite                     // w.Write(n bytes)
	opFlush                     // http.NewResponseController(w).Flush()
	opHijack                    // Hijack, write raw bytes, close
	opPanic                     // panic
	opLook                      // observe the whole header map
	numOps
)

type op struct {
	kind  opKind
	name  string
	value string
	code  int
	n     int
}

func (o op) String() string {
	switch o.kind {
	case opSet:
		return fmt.Sprintf("Set(%q, %q)", o.name, o.value)
	case opAdd:
		return fmt.Sprintf("Add(%q, %q)", o.name, o.value)
	case opDel:
		return fmt.Sprintf("Del(%q)", o.name)
	case opNil:
		return fmt.Sprintf("[%q]=nil", o.name)
	case opWriteHeader:
		return fmt.Sprintf("WriteHeader(%d)", o.code)
	case opWrite:
		return fmt.Sprintf("Write(%d)", o.n)
	case opFlush:
		return "Flush"
	case opHijack:
		return "Hijack"
	case opPanic:
		return "panic"
	default:
		return "Look"
	}
}

// script is a handler that runs its ops in order and logs what it saw.
type script []op

// bodyBytes returns n bytes of a body whose start net/http sniffs as HTML,
// varied by seed so that separate writes are told apart.
func bodyBytes(n, seed int) []byte {
	const text = "<html><body>idem differential body "
	b := make([]byte, n)
	for i := range b {
		if i < len(text) {
			b[i] = text[i]
		} else {
			b[i] = byte('a' + (i+seed)%26)
		}
	}
	return b
}

// run executes s on w and returns the log of what it observed.
func (s script) run(w http.ResponseWriter, log *[]string) {
	logf := func(format string, args ...any) { *log = append(*log, fmt.Sprintf(format, args...)) }
	logf("start: %s", dumpHeader(w.Header()))
	_, flusher := w.(http.Flusher)
	_, hijacker := w.(http.Hijacker)
	logf("flusher %v hijacker %v", flusher, hijacker)
	for i, o := range s {
		switch o.kind {
		case opSet:
			w.Header().Set(o.name, o.value)
		case opAdd:
			w.Header().Add(o.name, o.value)
		case opDel:
			w.Header().Del(o.name)
		case opNil:
			w.Header()[o.name] = nil
		case opWriteHeader:
			w.WriteHeader(o.code)
		case opWrite:
			n, err := w.Write(bodyBytes(o.n, i))
			logf("%v: %d %v", o, n, err)
		case opFlush:
			logf("%v: %v", o, http.NewResponseController(w).Flush())
		case opHijack:
			conn, brw, err := http.NewResponseController(w).Hijack()
			logf("%v: %v", o, err)
			if err == nil {
				brw.WriteString("raw bytes after hijack\n")
				brw.Flush()
				conn.Close()
			}
		case opPanic:
			panic(http.ErrAbortHandler) // net/http closes the connection without logging a stack
		case opLook:
			logf("%v: %s", o, dumpHeader(w.Header()))
		}
	}
	logf("end: %s", dumpHeader(w.Header()))
}

func dumpHeader(h http.Header) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q ", k, h[k])
	}
	return b.String()
}

// outerHeaders is middleware in front of the one under test that sets the
// headers a session layer, CORS and a request ID layer set.
func outerHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Request-Id", "req-"+r.Header.Get("X-Seq"))
		h.Add("Set-Cookie", "session=s1; Path=/; HttpOnly")
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Allow-Origin", "https://shop.example")
		next.ServeHTTP(w, r)
	})
}

// diffServer serves the current script of a differential test, bare or
// behind the middleware, with GET /probe answered 204 to tell whether the
// connection stayed open.
type diffServer struct {
	srv     *httptest.Server
	current atomic.Pointer[diffRun]
}

// diffRun is one run of a script: its log and when it ended.
type diffRun struct {
	s    script
	log  []string
	done chan struct{}
}

func newDiffServer(t testing.TB, wrap func(http.Handler) http.Handler, outer bool) *diffServer {
	d := &diffServer{}
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		run := d.current.Load()
		defer close(run.done)
		run.s.run(w, &run.log)
	})
	if wrap != nil {
		h = wrap(h)
	}
	if outer {
		h = outerHeaders(h)
	}
	d.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	}))
	// net/http logs superfluous WriteHeader calls and the like; they are
	// not part of the wire.
	d.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	d.srv.Start()
	t.Cleanup(d.srv.Close)
	return d
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r\n]*\r$`)

// exchange sends one request for s, then a probe on the same connection,
// and returns every byte the server wrote until it closed the connection,
// Date values normalised, and the handler's log.
func (d *diffServer) exchange(t testing.TB, s script, req string) (wire string, seen []string) {
	t.Helper()
	run := &diffRun{s: s, done: make(chan struct{})}
	d.current.Store(run)
	conn, err := net.Dial("tcp", d.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Generous bound: the server always closes the connection (the probe
	// asks for it); this only turns a bug into a failure instead of a hang.
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req+"GET /probe HTTP/1.1\r\nHost: idem.test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%v: the server did not close the connection; read %q", s, raw)
	}
	// A connection reset after the response ends the transcript as EOF does.
	select {
	case <-run.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%v: the handler did not return", s)
	}
	return dateLine.ReplaceAllString(string(raw), "Date: <date>\r"), run.log
}

var keySeq atomic.Int64

// post returns a POST request with a fresh idempotency key and body.
func post(extra string) string {
	n := keySeq.Add(1)
	body := `{"amount":` + strconv.FormatInt(n, 10) + `}`
	return "POST /payments HTTP/1.1\r\nHost: idem.test\r\nIdempotency-Key: diff-" + strconv.FormatInt(n, 10) +
		"\r\nX-Seq: 1\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n" + extra + "\r\n" + body
}

// differential runs s bare and behind the middleware and reports every
// difference.
type differential struct {
	bare, idem *diffServer
}

func newDifferential(t testing.TB, outer bool, opts ...idem.Option) *differential {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	return &differential{
		bare: newDiffServer(t, nil, outer),
		idem: newDiffServer(t, idem.New(st, opts...), outer),
	}
}

func (d *differential) check(t testing.TB, s script) {
	t.Helper()
	wantWire, wantLog := d.bare.exchange(t, s, post(""))
	gotWire, gotLog := d.idem.exchange(t, s, post(""))
	if gotWire != wantWire {
		t.Errorf("%v: wire differs\nbare net/http:\n%s\nbehind idem:\n%s", s, showWire(wantWire), showWire(gotWire))
	}
	if strings.Join(gotLog, "\n") != strings.Join(wantLog, "\n") {
		t.Errorf("%v: the handler saw\n\t%s\nbehind idem, and\n\t%s\nunder bare net/http", s,
			strings.Join(gotLog, "\n\t"), strings.Join(wantLog, "\n\t"))
	}
}

func showWire(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if len(line) > 120 {
			line = line[:120] + "…"
		}
		b.WriteString("\t" + strconv.Quote(line) + "\n")
	}
	return b.String()
}

// wireCases are the handler behaviours of the differential table.
var wireCases = map[string]script{
	"nothing written":                 {},
	"headers only":                    {{kind: opSet, name: "X-A", value: "1"}},
	"201 JSON with Location":          {{kind: opSet, name: "Content-Type", value: "application/json"}, {kind: opSet, name: "Location", value: "/payments/1"}, {kind: opWriteHeader, code: 201}, {kind: opWrite, n: 40}},
	"sniffed type":                    {{kind: opWrite, n: 100}},
	"type suppressed with nil":        {{kind: opNil, name: "Content-Type"}, {kind: opWrite, n: 100}},
	"Date suppressed with nil":        {{kind: opNil, name: "Date"}, {kind: opWrite, n: 10}},
	"several writes":                  {{kind: opWrite, n: 10}, {kind: opWrite, n: 0}, {kind: opWrite, n: 300}},
	"chunked: 3 KiB in pieces":        {{kind: opWrite, n: 1500}, {kind: opWrite, n: 1000}, {kind: opWrite, n: 700}},
	"chunked: one 5 KiB write":        {{kind: opWrite, n: 5000}},
	"header set after WriteHeader":    {{kind: opSet, name: "X-A", value: "before"}, {kind: opWriteHeader, code: 202}, {kind: opSet, name: "X-A", value: "after"}, {kind: opSet, name: "X-B", value: "late"}, {kind: opLook}, {kind: opWrite, n: 5}},
	"write after 204":                 {{kind: opWriteHeader, code: 204}, {kind: opWrite, n: 5}},
	"write after 304":                 {{kind: opSet, name: "Etag", value: `"v1"`}, {kind: opWriteHeader, code: 304}, {kind: opWrite, n: 5}},
	"204 with Content-Length":         {{kind: opSet, name: "Content-Length", value: "0"}, {kind: opWriteHeader, code: 204}},
	"superfluous WriteHeader":         {{kind: opWriteHeader, code: 201}, {kind: opWriteHeader, code: 500}, {kind: opWrite, n: 3}},
	"Content-Length right":            {{kind: opSet, name: "Content-Length", value: "12"}, {kind: opWrite, n: 12}},
	"Content-Length too small":        {{kind: opSet, name: "Content-Length", value: "5"}, {kind: opWrite, n: 3}, {kind: opWrite, n: 4}, {kind: opWrite, n: 1}},
	"Content-Length exact then more":  {{kind: opSet, name: "Content-Length", value: "5"}, {kind: opWrite, n: 5}, {kind: opWrite, n: 1}},
	"Content-Length exceeded, flush":  {{kind: opSet, name: "Content-Length", value: "5"}, {kind: opWrite, n: 5000}, {kind: opFlush}, {kind: opWrite, n: 1}},
	"Content-Length too large":        {{kind: opSet, name: "Content-Length", value: "50"}, {kind: opWrite, n: 10}},
	"Content-Length invalid":          {{kind: opSet, name: "Content-Length", value: "abc"}, {kind: opWrite, n: 10}, {kind: opLook}},
	"declared trailer":                {{kind: opSet, name: "Trailer", value: "X-Checksum"}, {kind: opWriteHeader, code: 200}, {kind: opWrite, n: 20}, {kind: opSet, name: "X-Checksum", value: "abc"}},
	"TrailerPrefix trailer":           {{kind: opSet, name: http.TrailerPrefix + "X-Late", value: "1"}, {kind: opWrite, n: 20}, {kind: opSet, name: http.TrailerPrefix + "X-Late", value: "2"}},
	"TrailerPrefix after WriteHeader": {{kind: opWrite, n: 20}, {kind: opSet, name: http.TrailerPrefix + "X-Late", value: "2"}},
	"103 Early Hints":                 {{kind: opSet, name: "Link", value: "</style.css>; rel=preload"}, {kind: opWriteHeader, code: 103}, {kind: opSet, name: "X-A", value: "1"}, {kind: opWriteHeader, code: 201}, {kind: opWrite, n: 10}},
	"102 then 100 then 200":           {{kind: opWriteHeader, code: 102}, {kind: opWriteHeader, code: 100}, {kind: opWrite, n: 10}},
	"flush":                           {{kind: opSet, name: "Content-Type", value: "text/event-stream"}, {kind: opWrite, n: 10}, {kind: opFlush}, {kind: opWrite, n: 10}},
	"flush before anything":           {{kind: opFlush}, {kind: opWrite, n: 10}},
	"flush with trailer":              {{kind: opSet, name: "Trailer", value: "X-Sum"}, {kind: opWrite, n: 10}, {kind: opFlush}, {kind: opSet, name: "X-Sum", value: "9"}},
	"over the response limit":         {{kind: opWrite, n: 3000}, {kind: opWrite, n: 3000}, {kind: opWrite, n: 10}},
	"hijack first":                    {{kind: opHijack}, {kind: opWrite, n: 5}},
	"hijack after WriteHeader":        {{kind: opWriteHeader, code: 201}, {kind: opHijack}},
	"hijack after buffered writes":    {{kind: opWrite, n: 1500}, {kind: opWrite, n: 1000}, {kind: opHijack}, {kind: opWrite, n: 5}},
	"101 and hijack":                  {{kind: opSet, name: "Upgrade", value: "idem-test"}, {kind: opSet, name: "Connection", value: "Upgrade"}, {kind: opWriteHeader, code: 101}, {kind: opHijack}},
	"Connection: close":               {{kind: opSet, name: "Connection", value: "close"}, {kind: opWrite, n: 5}},
	"Transfer-Encoding: identity":     {{kind: opSet, name: "Transfer-Encoding", value: "identity"}, {kind: opWrite, n: 5}},
	"Content-Encoding, no sniffing":   {{kind: opSet, name: "Content-Encoding", value: "gzip"}, {kind: opWrite, n: 5}},
	"panic before writing":            {{kind: opSet, name: "X-A", value: "1"}, {kind: opPanic}},
	"panic after writing":             {{kind: opWrite, n: 50}, {kind: opPanic}},
	"panic after flush":               {{kind: opWrite, n: 50}, {kind: opFlush}, {kind: opPanic}},
	"panic after 2 KiB written":       {{kind: opWrite, n: 2100}, {kind: opPanic}},
	"handler extends outer headers":   {{kind: opAdd, name: "Set-Cookie", value: "pref=1"}, {kind: opAdd, name: "Vary", value: "Accept-Encoding"}, {kind: opLook}, {kind: opWrite, n: 5}},
	"handler replaces outer headers":  {{kind: opSet, name: "Set-Cookie", value: "pref=1"}, {kind: opDel, name: "Access-Control-Allow-Origin"}, {kind: opWrite, n: 5}},
}

// The first answer behind the middleware is, on the wire and as the handler
// sees it, the answer of bare net/http, for every behaviour in the table,
// with and without outer middleware that sets headers.
func TestWireMatchesNetHTTP(t *testing.T) {
	for _, outer := range []bool{false, true} {
		d := newDifferential(t, outer, idem.WithMaxResponseSize(4096))
		names := make([]string, 0, len(wireCases))
		for name := range wireCases {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			t.Run(fmt.Sprintf("outer=%v/%s", outer, name), func(t *testing.T) {
				d.check(t, wireCases[name])
			})
		}
	}
}

// Named difference: the middleware reads the whole body before the handler
// runs, to fingerprint it. A client that sends "Expect: 100-continue" is
// therefore always told to continue, even when the handler would not read
// the body; net/http would answer without 100 Continue and close the
// connection, since the body was never read.
func TestWireDifferenceExpectContinue(t *testing.T) {
	d := newDifferential(t, false)
	s := script{{kind: opWriteHeader, code: 201}}
	bare, _ := d.bare.exchange(t, s, post("Expect: 100-continue\r\n"))
	wrapped, _ := d.idem.exchange(t, s, post("Expect: 100-continue\r\n"))
	const cont = "HTTP/1.1 100 Continue\r\n\r\n"
	if strings.HasPrefix(bare, cont) || !strings.HasPrefix(wrapped, cont) {
		t.Fatalf("want 100 Continue behind idem only:\nbare:\n%s\nidem:\n%s", showWire(bare), showWire(wrapped))
	}
	wrapped = strings.TrimPrefix(wrapped, cont)
	// Bare net/http closes the connection (Connection: close, and the probe
	// is not answered); behind idem the body was read, so the connection
	// stays open.
	kept := strings.Replace(bare, "Connection: close\r\n", "", 1)
	if kept == bare || !strings.HasPrefix(wrapped, kept) || !strings.HasPrefix(wrapped[len(kept):], "HTTP/1.1 204 No Content") {
		t.Fatalf("want the same 201, then the probe answered behind idem only:\nbare:\n%s\nidem:\n%s", showWire(bare), showWire(wrapped))
	}
}

// Vocabulary of the scripts FuzzWireMatchesNetHTTP generates.
var (
	fuzzNames = []string{"X-A", "Set-Cookie", "Vary", "Content-Type", "Content-Length", "Trailer", "X-T",
		http.TrailerPrefix + "X-P", "Date", "Connection", "Transfer-Encoding", "Content-Encoding",
		"X-Request-Id", "Access-Control-Allow-Origin", "Location", "Etag"}
	fuzzValues = []string{"1", "close", "text/plain", "X-T", "5", "0", "abc", "identity", "chunked", "gzip",
		"X-T, X-A", "keep-alive", "12", "-1", "<html>", ""}
	fuzzCodes = []int{200, 201, 204, 304, 404, 500, 103, 100, 102, 101, 202, 206, 299, 999, 99, 418}
	fuzzSizes = []int{0, 1, 5, 12, 100, 600, 2100, 5000}
)

// decodeScript turns fuzz input into at most 12 handler operations, two
// bytes each: the kind, then its argument.
func decodeScript(data []byte) script {
	var s script
	for i := 0; i+1 < len(data) && len(s) < 12; i += 2 {
		kind, arg := opKind(data[i]%byte(numOps)), int(data[i+1])
		o := op{kind: kind}
		switch kind {
		case opSet, opAdd, opDel, opNil:
			o.name, o.value = fuzzNames[arg%len(fuzzNames)], fuzzValues[arg/16%len(fuzzValues)]
		case opWriteHeader:
			o.code = fuzzCodes[arg%len(fuzzCodes)]
		case opWrite:
			o.n = fuzzSizes[arg%len(fuzzSizes)]
		}
		s = append(s, o)
	}
	return s
}

// FuzzWireMatchesNetHTTP generates handler scripts (headers set, added,
// deleted or set to nil before and after WriteHeader, writes, flushes, 1xx
// responses, trailers, hijacks, panics, writes after 204 and 304,
// Content-Length right or wrong) and checks that the first answer behind
// the middleware is, on the wire and as the handler sees it, the answer of
// bare net/http. The first byte chooses whether outer middleware sets
// headers.
func FuzzWireMatchesNetHTTP(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{1, byte(opSet), 0x10, byte(opWriteHeader), 1, byte(opWrite), 2})
	f.Add([]byte{0, byte(opSet), 5 + 3*16, byte(opWrite), 3, byte(opSet), 6, byte(opWrite), 1})                   // declared trailer
	f.Add([]byte{1, byte(opSet), 7, byte(opWrite), 4, byte(opSet), 7 + 16, byte(opFlush), 0})                     // TrailerPrefix, flush
	f.Add([]byte{0, byte(opWriteHeader), 6, byte(opAdd), 1, byte(opWriteHeader), 1, byte(opWrite), 4})            // 103 then 201
	f.Add([]byte{0, byte(opSet), 4 + 4*16, byte(opWrite), 3, byte(opWrite), 2, byte(opWrite), 1})                 // Content-Length 5, too much
	f.Add([]byte{1, byte(opWriteHeader), 2, byte(opWrite), 2, byte(opLook), 0})                                   // write after 204
	f.Add([]byte{0, byte(opWrite), 6, byte(opWrite), 6, byte(opHijack), 0, byte(opWrite), 1})                     // hijack after writes
	f.Add([]byte{1, byte(opWrite), 7, byte(opWrite), 7, byte(opPanic), 0})                                        // streamed, then panic
	f.Add([]byte{0, byte(opSet), 9 + 1*16, byte(opNil), 8, byte(opNil), 3, byte(opWrite), 4})                     // Connection: close, no Date, no type
	f.Add([]byte{1, byte(opDel), 1, byte(opSet), 2 + 2*16, byte(opWriteHeader), 0, byte(opSet), 0, byte(opLook)}) // outer changed, late set
	d := [2]*differential{newDifferential(f, false, idem.WithMaxResponseSize(4096)), newDifferential(f, true, idem.WithMaxResponseSize(4096))}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		d[data[0]&1].check(t, decodeScript(data[1:]))
	})
}
