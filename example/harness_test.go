package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/testenv"
)

// exampleBin is the example binary built once for the black-box tests.
var exampleBin string

func TestMain(m *testing.M) {
	bin, remove, err := testenv.BuildCommand("example")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	exampleBin = bin
	code := m.Run()
	remove()
	os.Exit(code)
}

// proc is one running example process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	URL    string
	stderr *bytes.Buffer
	done   chan error
	stdout *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startExample starts the example on a free port with the given flags and
// waits until /healthz answers. The process is killed at the end of the
// test if it is still running.
func startExample(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(exampleBin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, stderr: new(bytes.Buffer), done: make(chan error, 1), stdout: new(syncBuffer)}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			p.stdout.Write([]byte(line + "\n"))
			if rest, ok := strings.CutPrefix(line, "listening on "); ok {
				addr <- strings.Fields(rest)[0]
			}
		}
	}()
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	select {
	case a := <-addr:
		p.URL = "http://" + a
	case err := <-p.done:
		p.done <- err
		t.Fatalf("example %v exited before listening: %v\n%s", args, err, p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("example %v did not start within 30s\n%s", args, p.stderr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /healthz did not answer 200 within 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no exit within 30s of SIGTERM")
	}
}

// reply is one answer of the example.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

var client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// post sends POST /payments with the key (none if empty), the
// Authorization value (none if empty) and body.
func (p *proc) post(key, auth, body string) (reply, error) {
	req, err := http.NewRequest("POST", p.URL+"/payments", strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}, err
}

func (p *proc) mustPost(key, auth, body string) reply {
	p.t.Helper()
	r, err := p.post(key, auth, body)
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

// ledger is the answer of GET /payments.
type ledger struct {
	Count      int               `json:"count"`
	Executions int64             `json:"executions"`
	Payments   []json.RawMessage `json:"payments"`
}

func (p *proc) ledger() ledger {
	p.t.Helper()
	resp, err := client.Get(p.URL + "/payments")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var l ledger
	if resp.StatusCode != 200 {
		p.t.Fatalf("GET /payments: %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		p.t.Fatal(err)
	}
	return l
}
