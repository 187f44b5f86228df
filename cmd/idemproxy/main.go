// Command idemproxy puts idempotency keys in front of any HTTP service: a
// reverse proxy that runs each keyed POST or PATCH upstream at most once
// per key and replays the recorded response to retries, with the stores of
// the idem library.
//
//	idemproxy -addr 127.0.0.1:8081 -upstream http://127.0.0.1:9000 -store redis://127.0.0.1:6379/0
//
// Flags:
//
//	-addr ADDR              listen address (default 127.0.0.1:8081)
//	-upstream URL           the service behind the proxy (required)
//	-store URL              memory, sqlite:PATH, redis://…, redis-cluster://…,
//	                        postgres://…, mysql://… (default memory)
//	-redis-client NAME      rueidis (default) or go-redis, for redis:// stores
//	-ttl D                  how long responses are replayed (default 24h)
//	-lock-ttl D             lease of a request in flight (default 30s)
//	-scope-header NAMES     headers whose digest scopes keys (default Authorization;
//	                        "" for one scope)
//	-config FILE            per-route settings (JSON); without it POST and PATCH
//	                        are protected on every path
//	-admin-addr ADDR        listen address of /healthz, /metrics and /keys/{key}
//	                        (default: none; keep it private)
//	-upstream-timeout D     wait for the upstream's response headers (default 60s)
//	-max-body N             largest keyed request body (default 1 MiB)
//	-max-response N         largest response kept for replay (default 1 MiB)
//	-shutdown-timeout D     on SIGTERM, wait this long for requests in flight
//	-log-level LEVEL        debug, info, warn or error (default info)
//
// Requests that are not protected pass through untouched. Logs are JSON
// lines on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemprom"
	"github.com/idemgo/idem/internal/storeurl"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "idemproxy:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("idemproxy", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	upstream := fs.String("upstream", "", "URL of the service behind the proxy (required), e.g. http://127.0.0.1:9000")
	storeSpec := fs.String("store", "memory", "store: "+storeurl.Usage)
	redisClient := fs.String("redis-client", storeurl.ClientRueidis, "Redis client of redis:// stores: rueidis or go-redis")
	ttl := fs.Duration("ttl", idem.DefaultTTL, "how long completed responses are kept for replay")
	lockTTL := fs.Duration("lock-ttl", idem.DefaultLockTTL, "lease of a request in flight")
	scopeHeader := fs.String("scope-header", "Authorization", "comma-separated request headers whose digest scopes keys (\"\": one scope for all)")
	configFile := fs.String("config", "", "JSON file of per-route settings (default: POST and PATCH protected on every path)")
	adminAddr := fs.String("admin-addr", "", "listen address of the admin endpoints (/healthz, /metrics, /keys/{key}); empty: none; keep it private")
	upstreamTimeout := fs.Duration("upstream-timeout", 60*time.Second, "how long to wait for the upstream's response headers")
	maxBody := fs.Int64("max-body", idem.DefaultMaxBodySize, "largest request body of a keyed request, in bytes")
	maxResponse := fs.Int64("max-response", idem.DefaultMaxResponseSize, "largest response body kept for replay, in bytes")
	storeTimeout := fs.Duration("store-timeout", 0, "bound of every store call, at most a third of the lock TTL (default 2s, or a third of the lock TTL if shorter)")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "on SIGTERM, how long requests in flight may take to finish")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := storeurl.CheckRedisClient(*redisClient); err != nil {
		return err
	}
	target, err := parseUpstream(*upstream)
	if err != nil {
		return err
	}
	if *upstreamTimeout <= 0 || *shutdownTimeout <= 0 {
		return errors.New("-upstream-timeout and -shutdown-timeout must be positive")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level %q: want debug, info, warn or error", *logLevel)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	routes := []routeConfig{{Path: "/"}}
	if *configFile != "" {
		c, err := loadConfig(*configFile)
		if err != nil {
			return err
		}
		routes = c.Routes
	}
	d := defaults{
		ttl: *ttl, lockTTL: *lockTTL, storeTimeout: *storeTimeout,
		maxBody: *maxBody, maxResponse: *maxResponse, logger: logger,
	}
	if names := splitNames(*scopeHeader); len(names) > 0 {
		d.scope = scopeFunc(names)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Check the settings before the store is opened: a typo should not
	// wait for a database.
	if _, err := newProxy(target, nil, checkStore{}, routes, d, logger); err != nil {
		return err
	}
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	store, closeStore, err := storeurl.Open(openCtx, *storeSpec, storeurl.Options{Logger: logger, RedisClient: *redisClient})
	cancel()
	if err != nil {
		return err
	}
	defer closeStore()

	adm := &admin{reg: prometheus.NewRegistry(), scope: d.scope, log: logger}
	metrics, err := idemprom.New(adm.reg, idemprom.WithRoute(routeOf))
	if err != nil {
		return err
	}
	store = metrics.Store(store)
	adm.ins, _ = store.(idem.Inspector)
	d.hook = metrics.Hook

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256 // the default of 2 would reconnect under load
	transport.ResponseHeaderTimeout = *upstreamTimeout
	p, err := newProxy(target, transport, store, routes, d, logger)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	var adminSrv *http.Server
	var adminLn net.Listener
	if *adminAddr != "" {
		if adminLn, err = net.Listen("tcp", *adminAddr); err != nil {
			ln.Close()
			return err
		}
		adminSrv = &http.Server{Handler: adm.handler(), ReadHeaderTimeout: 10 * time.Second}
	}
	// The tests read these lines to learn the ports of 127.0.0.1:0.
	fmt.Printf("listening on %s (store %s, upstream %s)\n", ln.Addr(), storeurl.Kind(*storeSpec), target.Redacted())
	logger.Info("idemproxy started", "addr", ln.Addr().String(), "store", storeurl.Kind(*storeSpec), "upstream", target.Redacted(), "routes", len(routes))
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if adminSrv != nil {
		fmt.Printf("admin on %s\n", adminLn.Addr())
		go func() { errc <- adminSrv.Serve(adminLn) }()
	}

	select {
	case err := <-errc:
		srv.Close()
		if adminSrv != nil {
			adminSrv.Close()
		}
		return err
	case <-ctx.Done():
	}
	// SIGTERM: /healthz turns 503 so that a load balancer stops sending,
	// and the requests in flight finish (and are recorded) before the exit.
	adm.stopping.Store(true)
	logger.Info("stopping: finishing requests in flight", "timeout", shutdownTimeout.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if adminSrv != nil {
		adminSrv.Shutdown(shutdownCtx)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("stopped")
	fmt.Println("stopped")
	return nil
}

// parseUpstream checks the -upstream URL.
func parseUpstream(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("-upstream is required, e.g. -upstream http://127.0.0.1:9000")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("-upstream: want an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
	}
	return u, nil
}

func splitNames(s string) []string {
	var names []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, http.CanonicalHeaderKey(n))
		}
	}
	return names
}

// admin serves the admin endpoints:
//
//	GET    /healthz      200 "ok" while the proxy serves, 503 "stopping" after SIGTERM
//	GET    /metrics      Prometheus metrics of the middleware (idemprom)
//	GET    /keys/{key}   the state of a client's key (if the store can tell)
//	DELETE /keys/{key}   delete it: the next request with it runs upstream again
//
// /keys names the principal as the client would: with the -scope-header
// headers. It shows what clients did and lets a request run twice: serve
// it on a private address only.
type admin struct {
	stopping atomic.Bool
	reg      *prometheus.Registry
	ins      idem.Inspector // nil when the store cannot inspect keys
	scope    func(*http.Request) string
	log      *slog.Logger
}

func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if a.stopping.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("stopping\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		if a.ins == nil {
			writeProblem(w, http.StatusNotImplemented, "Not Implemented", "This store cannot look keys up.")
			return
		}
		ks, err := a.ins.Lookup(r.Context(), a.storeKey(r))
		if err != nil {
			a.storeError(w, err)
			return
		}
		out := map[string]any{"state": "absent"}
		if ks != nil {
			out = map[string]any{"state": ks.State.String(), "expires_in": ks.ExpiresIn.String()}
			if resp, err := ks.Response(); err == nil {
				out["status"] = resp.Status
				out["replayable"] = !resp.BodyOmitted
			}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("DELETE /keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		if a.ins == nil {
			writeProblem(w, http.StatusNotImplemented, "Not Implemented", "This store cannot delete keys.")
			return
		}
		deleted, err := a.ins.Delete(r.Context(), a.storeKey(r))
		if err != nil {
			a.storeError(w, err)
			return
		}
		a.log.Info("admin: key deleted", "key", r.PathValue("key"), "deleted", deleted)
		writeJSON(w, map[string]bool{"deleted": deleted})
	})
	return mux
}

// storeKey is the stored key of the client key in the path, under the
// admin request's scope.
func (a *admin) storeKey(r *http.Request) string {
	scope := ""
	if a.scope != nil {
		scope = a.scope(r)
	}
	return idem.StoreKey(scope, r.PathValue("key"))
}

func (a *admin) storeError(w http.ResponseWriter, err error) {
	a.log.Error("admin: store call failed", "error", err.Error())
	writeProblem(w, http.StatusServiceUnavailable, "Service Unavailable", "The idempotency store could not answer; see the proxy's log.")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

// checkStore is a Store that is never called: it lets the settings be
// checked before the real store is opened.
type checkStore struct{ idem.Store }
