// Command example is a small payments API protected by idem. It shows the
// middleware in use and is what the black-box tests drive.
//
//	go run ./example                                  # in-memory store
//	go run ./example -store sqlite:/tmp/idem.db       # SQLite file
//	go run ./example -store redis://127.0.0.1:6379/0  # Redis (rueidis client)
//	go run ./example -store redis://127.0.0.1:6379/0 -redis-client go-redis
//	go run ./example -store 'redis-cluster://127.0.0.1:7000?addr=127.0.0.1:7001'
//	go run ./example -store postgres://user@127.0.0.1:5432/db?sslmode=disable
//	go run ./example -store mysql://user:pass@127.0.0.1:3306/db  # MySQL, MariaDB
//	go run ./example -store sqlite:/tmp/idem.db -ledger sql  # payments as rows, exactly once
//	go run ./example -store sqlite:/tmp/idem.db -ledger sql -metrics  # the same, with its metrics
//
// -replay-cache 67108864 answers replays from 64 MiB of memory with no store
// call (idem.WithReplayCache).
//
// Endpoints: GET /healthz, POST /payments (JSON {"amount": int, "currency":
// string}, plus the test fields "delay_ms" and "fail"), GET /payments, and
// with -metrics, GET /metrics (Prometheus). With -admin ADDR, a second
// listener serves GET and DELETE /keys/{key} to look at a client's key and
// delete it (see admin.go). With -pprof ADDR, a third listener serves Go's
// profiles under /debug/pprof/ (the load harness's -profile uses it). Every idempotency outcome is logged to stderr
// (-log-level info hides executions and replays).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/storeurl"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	storeSpec := fs.String("store", "memory", "store: "+storeurl.Usage)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long completed responses are kept for replay")
	lockTTL := fs.Duration("lock-ttl", 30*time.Second, "lease of an in-flight request")
	metrics := fs.Bool("metrics", false, "serve Prometheus metrics on GET /metrics")
	ledgerKind := fs.String("ledger", "memory", "where payments are kept: memory (in the process) or sql (rows in the database of a SQL -store, written in the transaction that records each response: exactly once)")
	adminAddr := fs.String("admin", "", "listen address of the key inspection endpoints (off when empty); keep it private")
	var level slog.Level
	fs.TextVar(&level, "log-level", slog.LevelDebug, "lowest level logged: debug logs every outcome, info conflicts, mismatches and refusals, error store failures")
	redisClient := fs.String("redis-client", storeurl.ClientRueidis, "Redis client of redis:// stores: rueidis or go-redis")
	replayCache := fs.Int64("replay-cache", 0, "bytes of completed responses kept in memory to answer replays with no store call (0: off)")
	storeTimeout := fs.Duration("store-timeout", 0, "bound of every store call, a slower one is answered 503 (0: idem's default)")
	pprofAddr := fs.String("pprof", "", "listen address of Go's profiles, /debug/pprof/ (off when empty); keep it private")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := storeurl.CheckRedisClient(*redisClient); err != nil {
		return err
	}
	if *ledgerKind != "memory" && *ledgerKind != "sql" {
		return fmt.Errorf("-ledger %q: want memory or sql", *ledgerKind)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	store, closeStore, err := storeurl.Open(openCtx, *storeSpec, storeurl.Options{Logger: logger, RedisClient: *redisClient})
	cancel()
	if err != nil {
		return err
	}
	defer closeStore()
	if *ledgerKind == "sql" {
		openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		store, err = transactionalLedger(openCtx, store)
		cancel()
		if err != nil {
			return err
		}
	}

	handler, err := newService(store, *ttl, *lockTTL, *storeTimeout, logger, *metrics, *replayCache)
	if err != nil {
		return err
	}
	if *adminAddr != "" {
		ins, ok := store.(idem.Inspector)
		if !ok {
			return fmt.Errorf("-admin: store %s cannot inspect keys", storeurl.Kind(*storeSpec))
		}
		aln, err := net.Listen("tcp", *adminAddr)
		if err != nil {
			return err
		}
		admin := &http.Server{Handler: newAdmin(ins), ReadHeaderTimeout: 10 * time.Second}
		fmt.Printf("admin listening on %s\n", aln.Addr())
		go admin.Serve(aln)
		defer admin.Close()
	}
	if *pprofAddr != "" {
		pln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		fmt.Printf("pprof listening on %s\n", pln.Addr())
		go servePprof(pln)
		defer pln.Close()
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := newHTTPServer(handler)
	// The tests read this line to learn the port of -addr 127.0.0.1:0.
	fmt.Printf("listening on %s (store %s)\n", ln.Addr(), storeurl.Kind(*storeSpec))

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	fmt.Println("stopped")
	return nil
}

// newHTTPServer returns the server settings a production service needs in
// front of idem: the middleware reads a keyed request's whole body before
// the handler runs, so slow or stalled clients must be cut off by the
// server, not held open by it.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler: h,
		// A client has 5s to send its headers and 30s for the whole
		// request, body included; a stalled upload is dropped then.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// The response must be written within 60s of the request's
		// headers: keep this above the slowest handler. A handler that
		// runs longer still has its response recorded, and the client's
		// retry gets it.
		WriteTimeout: 60 * time.Second,
		// Idle keep-alive connections are closed after 2 minutes.
		IdleTimeout: 120 * time.Second,
		// Request headers are at most 64 KiB (net/http's default is 1 MiB).
		MaxHeaderBytes: 64 << 10,
	}
}
