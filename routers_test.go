package idem_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// http.ServeMux works in front of idem, with Go 1.22 method patterns.
func TestServeMuxMethodPatterns(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	h := &payments{}
	m := http.NewServeMux()
	m.Handle("POST /payments", idem.New(st)(h))
	do(m, "POST", "/payments", "k", "x")
	if w := do(m, "POST", "/payments", "k", "x"); w.Header().Get("Idempotent-Replayed") != "true" || h.runs.Load() != 1 {
		t.Fatalf("ServeMux: %d runs", h.runs.Load())
	}
}

// End to end over real HTTP: 50 goroutines send one key at once; the
// handler runs once and every answer is the same 201 or a 409.
func TestEndToEndConcurrentClients(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	var mu sync.Mutex
	runs := 0
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		runs++
		n := runs
		mu.Unlock()
		<-release
		w.WriteHeader(201)
		io.WriteString(w, "payment "+itoa(int64(n)))
	})
	srv := httptest.NewServer(idem.New(st)(h))
	defer srv.Close()
	const n = 50
	var wg sync.WaitGroup
	codes := make([]int, n)
	bodies := make([][]byte, n)
	errs := make([]error, n)
	start := make(chan struct{})
	answered := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { answered <- struct{}{} }()
			<-start
			req, _ := http.NewRequest("POST", srv.URL+"/payments", strings.NewReader(`{"amount":1}`))
			req.Header.Set("Idempotency-Key", "storm")
			resp, err := srv.Client().Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			codes[i] = resp.StatusCode
			bodies[i], errs[i] = io.ReadAll(resp.Body)
		}(i)
	}
	close(start)
	// The first request holds the key until the other 49 have been
	// answered; then it may finish.
	for i := 0; i < n-1; i++ {
		<-answered
	}
	close(release)
	wg.Wait()
	var created []byte
	conflicts := 0
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		switch codes[i] {
		case 201:
			if created != nil && !bytes.Equal(created, bodies[i]) {
				t.Fatalf("different 201 bodies: %q %q", created, bodies[i])
			}
			created = bodies[i]
		case 409:
			conflicts++
		default:
			t.Fatalf("status %d: %s", codes[i], bodies[i])
		}
	}
	if conflicts != n-1 {
		t.Fatalf("%d conflicts, want %d", conflicts, n-1)
	}
	if runs != 1 || string(created) != "payment 1" {
		t.Fatalf("runs = %d, created %q", runs, created)
	}
}
