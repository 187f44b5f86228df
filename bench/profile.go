package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// servePprof serves Go's runtime profiles on ln, apart from the API, for
// the servers the harness runs itself (-serve bare, -serve fiber).
func servePprof(ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// profiler takes a CPU and an allocation profile of one server over one
// measurement, from its /debug/pprof/ listener.
type profiler struct {
	done chan error
}

// startProfiles asks the server at pprofURL for a CPU profile and the
// allocations of the next d, and writes them to dir as
// NAME.cpu.pprof and NAME.allocs.pprof.
func startProfiles(pprofURL string, d time.Duration, dir, name string) *profiler {
	p := &profiler{done: make(chan error, 2)}
	secs := int((d + time.Second - 1) / time.Second)
	for _, kind := range []string{"profile", "allocs"} {
		file := "cpu"
		if kind == "allocs" {
			file = "allocs"
		}
		go func() {
			p.done <- fetchProfile(fmt.Sprintf("%s/debug/pprof/%s?seconds=%d", pprofURL, kind, secs),
				filepath.Join(dir, name+"."+file+".pprof"))
		}()
	}
	return p
}

func (p *profiler) wait() error {
	err1, err2 := <-p.done, <-p.done
	if err1 != nil {
		return err1
	}
	return err2
}

func fetchProfile(url, path string) error {
	c := http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fileName turns a server's name into part of a file name.
func fileName(s string) string {
	return strings.NewReplacer(" ", "_", "/", "_", ",", "", "→", "to").Replace(s)
}
