// Command webhook is an example webhook receiver protected by idem: each
// delivery is processed once, however often and however concurrently its
// sender retries it, and every attempt gets the first answer.
//
//	go run ./example/webhook -sender acme=s3cret                # in-memory store
//	go run ./example/webhook -sender acme=s3cret -store redis://127.0.0.1:6379/0
//
// A sender POSTs a JSON event to /webhooks/{sender} with X-Delivery-Id (the
// same on every attempt), X-Signature-Timestamp (Unix seconds) and
// X-Signature (hex HMAC-SHA256 of timestamp + "." + body under the sender's
// secret). For example:
//
//	body='{"id":"evt_1","type":"invoice.paid","attempt":1}'; ts=$(date +%s)
//	sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac s3cret -hex | cut -d' ' -f2)
//	curl -i localhost:8081/webhooks/acme -H 'X-Delivery-Id: dlv_1' \
//	  -H "X-Signature-Timestamp: $ts" -H "X-Signature: $sig" -d "$body"
//
// Each event processed is printed to stdout as "processed SENDER DELIVERY".
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/storeurl"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "webhook:", err)
		os.Exit(1)
	}
}

// senderFlags collects repeated -sender name=secret flags.
type senderFlags map[string][]byte

func (s senderFlags) String() string { return "" }

func (s senderFlags) Set(v string) error {
	name, secret, ok := strings.Cut(v, "=")
	if !ok || name == "" || secret == "" {
		return errors.New("want name=secret")
	}
	s[name] = []byte(secret)
	return nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	storeSpec := fs.String("store", "memory", "store: "+storeurl.Usage)
	senders := senderFlags{}
	fs.Var(senders, "sender", "a sender and its signing secret, name=secret (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(senders) == 0 {
		return errors.New("no -sender given")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	store, closeStore, err := storeurl.Open(openCtx, *storeSpec, storeurl.Options{})
	cancel()
	if err != nil {
		return err
	}
	defer closeStore()

	var (
		mu   sync.Mutex
		seen int
	)
	process := func(ctx context.Context, sender string, event []byte) (int, []byte) {
		var ev struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		}
		if err := json.Unmarshal(event, &ev); err != nil || ev.ID == "" {
			return http.StatusUnprocessableEntity, []byte(`{"error":"not an event"}` + "\n")
		}
		mu.Lock()
		seen++
		n := seen
		mu.Unlock()
		delivery, _ := idem.KeyFromContext(ctx)
		fmt.Printf("processed %s %s\n", sender, delivery)
		answer, _ := json.Marshal(map[string]any{"event": ev.ID, "type": ev.Type, "seq": n, "received_at": time.Now().UTC()})
		return http.StatusOK, append(answer, '\n')
	}
	h, err := newReceiver(store, senders, process)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s (store %s)\n", ln.Addr(), storeurl.Kind(*storeSpec))
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
