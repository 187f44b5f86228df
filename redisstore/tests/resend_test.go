package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
	"github.com/idemgo/idem/redisstore"
)

// lossyConn passes every command to Redis, but the first time a command
// containing marker is written, it lets Redis run it and read its reply,
// then drops the reply and the connection: a network that loses an answer.
type lossyConn struct {
	net.Conn
	marker []byte
	lost   *atomic.Bool // shared by the client's connections: one loss in all
	armed  bool
}

func (c *lossyConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, c.marker) && c.lost.CompareAndSwap(false, true) {
		c.armed = true
	}
	return c.Conn.Write(b)
}

func (c *lossyConn) Read(b []byte) (int, error) {
	if c.armed {
		c.armed = false
		// The reply of a fenced script is a few bytes; read it (Redis has
		// then run the command) and lose it.
		if _, err := c.Conn.Read(make([]byte, 512)); err != nil {
			return 0, err
		}
		c.Conn.Close()
		return 0, io.EOF
	}
	return c.Conn.Read(b)
}

// body is what the handler answers: only a Complete carries it to Redis.
const body = "payment-7f3a "

// lossyClient is a go-redis client of addr whose connections lose the
// reply to the first Complete; lost reports whether that happened.
func lossyClient(t *testing.T, addr string) (c *redis.Client, lost *atomic.Bool) {
	lost = new(atomic.Bool)
	marker := []byte(body)
	c = redis.NewClient(&redis.Options{
		Addr: addr,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &lossyConn{Conn: conn, marker: marker, lost: lost}, nil
		},
	})
	t.Cleanup(func() { c.Close() })
	return c, lost
}

// go-redis sends a command again when its reply is lost. A Complete that
// ran but whose reply was lost is sent again and must succeed, or the
// client would be told that its response was not recorded (503) although
// it was. The request runs once, answers 201, and its retry replays it.
func TestResentCompleteRecordsOnce(t *testing.T) {
	servers := map[string]func(t *testing.T) string{
		"miniredis": func(t *testing.T) string { return miniredis.RunT(t).Addr() },
		"redis":     func(t *testing.T) string { return testenv.Server(t, testenv.RedisAddr, "a Redis node") },
	}
	for name, server := range servers {
		t.Run(name, func(t *testing.T) {
			c, lost := lossyClient(t, server(t))
			store := redisstore.New(c, redisstore.WithPrefix(runPrefix(t, c)))
			// Loaded scripts: the first Complete is an EVALSHA that runs.
			if err := store.Load(context.Background()); err != nil {
				t.Fatal(err)
			}
			var runs atomic.Int32
			h := idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := runs.Add(1)
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, strings.Repeat(body, int(n)))
			}))
			send := func() *httptest.ResponseRecorder {
				r := httptest.NewRequest("POST", "/payments", strings.NewReader(`{"amount":5}`))
				r.Header.Set("Idempotency-Key", "resent-complete")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				return w
			}
			first := send()
			if !lost.Load() {
				t.Fatal("no Complete reply was lost: the test did not test anything")
			}
			if first.Code != http.StatusCreated || first.Body.String() != body {
				t.Fatalf("first answer: %d %q, want 201 %q", first.Code, first.Body, body)
			}
			retry := send()
			if retry.Code != http.StatusCreated || retry.Body.String() != body || retry.Header().Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry: %d %q replayed=%q, want the first answer replayed", retry.Code, retry.Body, retry.Header().Get("Idempotent-Replayed"))
			}
			if n := runs.Load(); n != 1 {
				t.Fatalf("handler ran %d times, want 1", n)
			}
		})
	}
}

// The same Complete sent twice succeeds twice and changes nothing; a
// second Complete with another result is refused, as any Complete of a
// completed record is.
func TestCompleteSentAgainSucceeds(t *testing.T) {
	_, c := newMini(t)
	st := redisstore.New(c)
	ctx := context.Background()
	if _, err := st.Claim(ctx, "k", "owner", "fp", time.Minute); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := st.Complete(ctx, "k", "owner", []byte("result"), time.Hour); err != nil {
			t.Fatalf("Complete #%d: %v", i+1, err)
		}
	}
	if err := st.Complete(ctx, "k", "owner", []byte("other"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Complete with another result: %v, want ErrLockLost", err)
	}
	if err := st.Complete(ctx, "k", "intruder", []byte("result"), time.Hour); !errors.Is(err, idem.ErrLockLost) {
		t.Fatalf("Complete by another token: %v, want ErrLockLost", err)
	}
	rec, err := st.Claim(ctx, "k", "late", "fp", time.Minute)
	if err != nil || rec == nil || rec.State != idem.StateCompleted || string(rec.Result) != "result" {
		t.Fatalf("record after the repeated Completes: %+v, %v", rec, err)
	}
}
