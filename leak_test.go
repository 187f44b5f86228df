package idem_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain runs the tests, then fails the run if goroutines they started
// are still running: a lease renewer, a background release or a handler
// that outlives its request. The root module requires nothing, so this is
// a small stand-in for goleak, built on runtime.Stack.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaks := settledLeaks(10 * time.Second); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "goroutines still running after the tests:\n\n%s\n", strings.Join(leaks, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// benignGoroutines are functions whose goroutines belong to the runtime or
// the testing package, not to the code under test.
var benignGoroutines = []string{
	"testing.(*M).",
	"testing.tRunner(",
	"testing.runFuzzing(",
	"testing.(*F).Fuzz",
	"runtime.goexit0",
	"os/signal.signal_recv(",
	"os/signal.loop(",
	"runtime.ensureSigM",
}

// goroutines returns the stack of every goroutine but the caller's, minus
// the benign ones.
func goroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	// The first stack is the caller's own.
	stacks := bytes.Split(buf, []byte("\n\n"))[1:]
	var out []string
next:
	for _, s := range stacks {
		st := string(bytes.TrimSpace(s))
		if st == "" {
			continue
		}
		for _, b := range benignGoroutines {
			if strings.Contains(st, b) {
				continue next
			}
		}
		out = append(out, st)
	}
	return out
}

// settledLeaks polls until no goroutine is left but benign ones, and
// returns what is still there after wait. Idle keep-alive connections of
// http.DefaultTransport are closed first: their reader goroutines belong to
// the client, not to the code under test.
func settledLeaks(wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		left := goroutines()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// parkedForLeakCheck blocks until release is closed. It has a name of its
// own so that TestLeakCheckFindsALeftGoroutine can find its stack.
func parkedForLeakCheck(started chan<- struct{}, release <-chan struct{}, done chan<- struct{}) {
	close(started)
	<-release
	close(done)
}

// TestLeakCheckFindsALeftGoroutine: the check TestMain runs reports a
// goroutine that is still blocked, names where it is blocked, and no
// longer reports it once it has ended.
func TestLeakCheckFindsALeftGoroutine(t *testing.T) {
	started, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go parkedForLeakCheck(started, release, done)
	<-started

	found := func() bool {
		for _, g := range goroutines() {
			if strings.Contains(g, "parkedForLeakCheck") {
				return true
			}
		}
		return false
	}
	if !found() {
		close(release)
		t.Fatalf("a goroutine blocked on a channel is not reported: %q", goroutines())
	}
	close(release)
	<-done
	deadline := time.Now().Add(10 * time.Second)
	for found() {
		if time.Now().After(deadline) {
			t.Fatal("a goroutine that ended is still reported after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
