package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// -pprof serves Go's profiles on a listener of its own: the API's address
// never exposes them.
func TestPprofOnItsOwnListener(t *testing.T) {
	p := startExample(t, "-pprof", "127.0.0.1:0", "-log-level", "info")
	var pprofURL string
	for _, line := range strings.Split(p.stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "pprof listening on "); ok {
			pprofURL = "http://" + strings.TrimSpace(rest)
		}
	}
	if pprofURL == "" {
		t.Fatalf("no pprof address in the output:\n%s", p.stdout.String())
	}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(pprofURL + "/debug/pprof/allocs?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Fatalf("allocs profile: %d %.200s", code, body)
	}
	if code, body := get(pprofURL + "/debug/pprof/"); code != 200 || !strings.Contains(body, "profile") {
		t.Fatalf("index: %d %.200s", code, body)
	}
	if code, _ := get(p.URL + "/debug/pprof/"); code == 200 {
		t.Fatal("the API's address serves the profiles")
	}
}
