package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/storeurl"
	"github.com/idemgo/idem/internal/testenv"
)

var testSecrets = map[string][]byte{"acme": []byte("acme-secret"), "globex": []byte("globex-secret")}

// attempt is one attempt of a delivery as a sender makes it: the same
// delivery id and event, a new timestamp, signature and attempt count.
type attempt struct {
	sender, delivery, event string
	n                       int
	sentAt                  time.Time
}

func (a attempt) request(t *testing.T, base string) *http.Request {
	t.Helper()
	body := fmt.Sprintf(`{"id":%q,"type":"invoice.paid","attempt":%d,"data":{"amount":1000}}`, a.event, a.n)
	ts := strconv.FormatInt(a.sentAt.Unix(), 10)
	req, err := http.NewRequest("POST", base+"/webhooks/"+a.sender, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if a.delivery != "" {
		req.Header.Set(headerDelivery, a.delivery)
	}
	req.Header.Set(headerTimestamp, ts)
	req.Header.Set(headerSignature, sign(testSecrets[a.sender], ts, []byte(body)))
	return req
}

type answer struct {
	status   int
	body     string
	replayed string
	ctype    string
}

func send(t *testing.T, req *http.Request) (answer, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("Content-Type")}, err
}

// receiverStores are the stores the end-to-end test runs over: memory
// always, Redis and PostgreSQL when scripts/services.sh has started them
// (under CI=true a missing one fails the test).
func receiverStores(t *testing.T) map[string]string {
	stores := map[string]string{"memory": "memory"}
	for name, env := range map[string]string{"redis": "IDEM_REDIS_ADDR", "postgres": "IDEM_POSTGRES_DSN"} {
		v := os.Getenv(env)
		switch {
		case v == "" && testenv.InCI():
			t.Errorf("%s not set: the %s receiver test needs it", env, name)
		case v == "":
			t.Logf("%s not set: the receiver test runs without %s", env, name)
		case name == "redis":
			stores[name] = "redis://" + v + "/0"
		default:
			stores[name] = v
		}
	}
	return stores
}

// One delivery sent five times, at once and then again in sequence, each
// attempt with a new timestamp, signature and attempt count: it is processed
// once, and every attempt gets the first answer byte for byte.
func TestWebhookDeliveryProcessedOnceAndEveryAttemptGetsFirstAnswer(t *testing.T) {
	for name, spec := range receiverStores(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			store, closeStore, err := storeurl.Open(ctx, spec, storeurl.Options{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			defer closeStore()

			var (
				mu      sync.Mutex
				runs    = map[string]int{} // sender/delivery -> executions
				started = make(chan struct{}, 16)
				gate    = make(chan struct{})
				seq     atomic.Int64
			)
			process := func(ctx context.Context, sender string, event []byte) (int, []byte) {
				delivery, _ := idem.KeyFromContext(ctx)
				mu.Lock()
				runs[sender+"/"+delivery]++
				mu.Unlock()
				started <- struct{}{}
				<-gate
				return http.StatusAccepted, []byte(fmt.Sprintf(`{"seq":%d,"event":%q}`, seq.Add(1), event))
			}
			h, err := newReceiver(store, testSecrets, process)
			if err != nil {
				t.Fatal(err)
			}
			var arrived atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived.Add(1)
				h.ServeHTTP(w, r)
			}))
			defer srv.Close()
			runsOf := func(k string) int {
				mu.Lock()
				defer mu.Unlock()
				return runs[k]
			}
			run := strconv.FormatInt(time.Now().UnixNano(), 36) // fresh ids in a shared store
			now := time.Now()

			// Five attempts at once. The one that claims the delivery is held
			// until all five have reached the server; the others wait for it
			// (WithWait) or find its answer recorded.
			delivery := "dlv-" + run + "-a"
			answers := make([]answer, 5)
			errs := make([]error, 5)
			var wg sync.WaitGroup
			for i := range 5 {
				req := attempt{"acme", delivery, "evt_1", i + 1, now.Add(time.Duration(i) * time.Second)}.request(t, srv.URL)
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[i], errs[i] = send(t, req)
				}()
			}
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("no attempt was processed within 30s")
			}
			for deadline := time.Now().Add(30 * time.Second); arrived.Load() < 5 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			close(gate)
			wg.Wait()
			first := -1
			for i, a := range answers {
				if errs[i] != nil {
					t.Fatalf("attempt %d: %v", i+1, errs[i])
				}
				if a.replayed == "" {
					if first >= 0 {
						t.Errorf("attempts %d and %d were both answered as first", first+1, i+1)
					}
					first = i
				}
			}
			if first < 0 {
				t.Fatalf("no attempt got the first answer: %+v", answers)
			}
			for i, a := range answers {
				if a.status != http.StatusAccepted || a.body != answers[first].body || a.ctype != "application/json" {
					t.Errorf("attempt %d got %d %q %q, the first answer was %d %q", i+1, a.status, a.ctype, a.body, answers[first].status, answers[first].body)
				}
			}
			if n := runsOf("acme/" + delivery); n != 1 {
				t.Errorf("the delivery sent 5 times at once was processed %d times", n)
			}

			// Five attempts in sequence, of another delivery.
			delivery = "dlv-" + run + "-b"
			var firstSeq answer
			for i := range 5 {
				a, err := send(t, attempt{"acme", delivery, "evt_2", i + 1, now.Add(time.Duration(i) * time.Second)}.request(t, srv.URL))
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					firstSeq = a
					if a.status != http.StatusAccepted || a.replayed != "" {
						t.Fatalf("first attempt: %d replayed=%q %s", a.status, a.replayed, a.body)
					}
					continue
				}
				if a.status != firstSeq.status || a.body != firstSeq.body || a.replayed != "true" {
					t.Errorf("attempt %d got %d %q replayed=%q, the first %d %q", i+1, a.status, a.body, a.replayed, firstSeq.status, firstSeq.body)
				}
			}
			if n := runsOf("acme/" + delivery); n != 1 {
				t.Errorf("the delivery sent 5 times in sequence was processed %d times", n)
			}

			// Another sender's delivery of the same id is its own.
			a, err := send(t, attempt{"globex", delivery, "evt_2", 1, now}.request(t, srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			if a.status != http.StatusAccepted || a.replayed != "" || runsOf("globex/"+delivery) != 1 {
				t.Errorf("another sender's delivery with the same id: %d replayed=%q, processed %d times", a.status, a.replayed, runsOf("globex/"+delivery))
			}

			// The same delivery id with another event is refused, naming the header.
			a, err = send(t, attempt{"acme", delivery, "evt_3", 6, now}.request(t, srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, headerDelivery) {
				t.Errorf("a delivery id reused for another event: %d %s", a.status, a.body)
			}
		})
	}
}

// A delivery without its id is refused with a problem that names the
// header, and a delivery with a bad signature never reaches idem: it is
// not processed and does not claim its id.
func TestWebhookRefusesMissingIDAndBadSignatureBeforeProcessing(t *testing.T) {
	store, closeStore, err := storeurl.Open(context.Background(), "memory", storeurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore()
	var runs atomic.Int64
	h, err := newReceiver(store, testSecrets, func(context.Context, string, []byte) (int, []byte) {
		runs.Add(1)
		return http.StatusOK, []byte(`{}`)
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	a, err := send(t, attempt{"acme", "", "evt_1", 1, time.Now()}.request(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	var p struct{ Type, Title, Detail string }
	json.Unmarshal([]byte(a.body), &p)
	if a.status != http.StatusBadRequest || !strings.HasSuffix(p.Type, "#problem-key-missing") || !strings.Contains(p.Title+p.Detail, headerDelivery) || strings.Contains(a.body, "Idempotency-Key") {
		t.Errorf("a delivery without %s: %d %s", headerDelivery, a.status, a.body)
	}

	forged := attempt{"acme", "dlv-forged", "evt_1", 1, time.Now()}.request(t, srv.URL)
	forged.Header.Set(headerSignature, sign([]byte("wrong"), forged.Header.Get(headerTimestamp), []byte("x")))
	if a, err = send(t, forged); err != nil || a.status != http.StatusUnauthorized {
		t.Errorf("a forged delivery: %d %v", a.status, err)
	}
	stale := attempt{"acme", "dlv-forged", "evt_1", 1, time.Now().Add(-time.Hour)}.request(t, srv.URL)
	if a, err = send(t, stale); err != nil || a.status != http.StatusUnauthorized {
		t.Errorf("a delivery signed an hour ago: %d %v", a.status, err)
	}
	if runs.Load() != 0 {
		t.Fatalf("refused deliveries were processed %d times", runs.Load())
	}
	if a, err = send(t, attempt{"acme", "dlv-forged", "evt_1", 1, time.Now()}.request(t, srv.URL)); err != nil || a.status != http.StatusOK || a.replayed != "" || runs.Load() != 1 {
		t.Errorf("the genuine delivery after forged ones: %d replayed=%q, processed %d times (%v)", a.status, a.replayed, runs.Load(), err)
	}
}
