package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// With -ledger sql, payments are exactly once across kill -9: many
// payments, each sent until it is answered, by clients of a process that
// is killed at random moments (and started again) while they run. In the
// end every key has exactly one payment row, and every process replays
// that payment for it, including answers clients got before a kill.
func TestLedgerSQLExactlyOnceAcrossKill9(t *testing.T) {
	for _, name := range []string{"postgres", "sqlite", "mysql"} {
		t.Run(name, func(t *testing.T) {
			spec := relStoreSpec(t, name)
			runLedgerKills(t, name, spec, ledgerDB(t, name, spec))
		})
	}
}

// ledgerDB opens the database of a -store value, to read the ledger.
func ledgerDB(t *testing.T, name, spec string) *sql.DB {
	t.Helper()
	var driver, dsn string
	switch name {
	case "postgres":
		driver, dsn = "pgx", spec
	case "sqlite":
		driver, dsn = "sqlite", sqlstore.SQLiteDSN(strings.TrimPrefix(spec, "sqlite:"))
	case "mysql":
		driver, dsn = "mysql", os.Getenv("IDEM_MYSQL_DSN")
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func runLedgerKills(t *testing.T, name, spec string, db *sql.DB) {
	const (
		keys    = 80
		kills   = 8
		workers = 8
		lockTTL = time.Second
	)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	args := []string{"-store", spec, "-ledger", "sql", "-lock-ttl", lockTTL.String(), "-log-level", "error"}
	type payment struct {
		key, body string
	}
	pays := make([]payment, keys)
	for i := range pays {
		pays[i] = payment{
			key:  relKey(fmt.Sprintf("ledger-%s-%d", name, i)),
			body: fmt.Sprintf(`{"amount": %d, "currency": "eur", "delay_ms": %d}`, 100+i, rng.Intn(60)),
		}
	}
	var (
		mu      sync.Mutex
		answers = make(map[string][]byte) // the first 201 body of each key
		sent    int
	)
	pending := func() []payment {
		mu.Lock()
		defer mu.Unlock()
		var out []payment
		for _, p := range pays {
			if _, ok := answers[p.key]; !ok {
				out = append(out, p)
			}
		}
		return out
	}
	// round sends every pending payment once through p, workers at a time.
	round := func(p *proc, todo []payment) {
		ch := make(chan payment)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for pay := range ch {
					r, err := p.post(pay.key, "", pay.body)
					mu.Lock()
					sent++
					if err == nil && r.Status == http.StatusCreated {
						if prev, ok := answers[pay.key]; ok && !bytes.Equal(prev, r.Body) {
							t.Errorf("key %s answered %s, then %s", pay.key, prev, r.Body)
						} else if !ok {
							answers[pay.key] = r.Body
						}
					}
					mu.Unlock()
				}
			}()
		}
		for _, pay := range todo {
			ch <- pay
		}
		close(ch)
		wg.Wait()
	}

	for k := 0; k < kills; k++ {
		p := startExample(t, args...)
		killed := make(chan struct{})
		go func() {
			defer close(killed)
			// A random moment while payments are in flight.
			time.Sleep(time.Duration(20+rng.Intn(300)) * time.Millisecond)
			p.cmd.Process.Kill()
			p.done <- <-p.done // the harness's cleanup waits for it too
		}()
		round(p, pending())
		<-killed
	}
	// Then a process that lives: every payment is sent until it is
	// answered (a key its killed owner held is free when its lease ends).
	p := startExample(t, args...)
	deadline := time.Now().Add(lockTTL + 60*time.Second)
	for todo := pending(); len(todo) > 0; todo = pending() {
		if time.Now().After(deadline) {
			t.Fatalf("%d payments still unanswered; e.g. %s", len(todo), todo[0].key)
		}
		round(p, todo)
		time.Sleep(50 * time.Millisecond)
	}

	q := `SELECT count(*), min(id) FROM example_payments WHERE idem_key = ?`
	if name == "postgres" {
		q = strings.Replace(q, "?", "$1", 1)
	}
	fresh := startExample(t, args...)
	for _, pay := range pays {
		var (
			n  int
			id sql.NullString
		)
		if err := db.QueryRow(q, idem.StoreKey("", pay.key)).Scan(&n, &id); err != nil {
			t.Fatal(err)
		}
		var got struct{ ID string }
		if err := json.Unmarshal(answers[pay.key], &got); err != nil {
			t.Fatalf("key %s: answer %s: %v", pay.key, answers[pay.key], err)
		}
		if n != 1 || id.String != got.ID {
			t.Fatalf("key %s: %d payment rows (first %q), want exactly one, the answered %s", pay.key, n, id.String, got.ID)
		}
		if r := fresh.mustPost(pay.key, "", pay.body); r.Status != http.StatusCreated || !bytes.Equal(r.Body, answers[pay.key]) {
			t.Fatalf("key %s on a fresh process: %d %s, want the replay of %s", pay.key, r.Status, r.Body, answers[pay.key])
		}
	}
	t.Logf("%s: %d payments, %d kill -9 at random moments, %d requests sent: one row per key, every answer replayed", name, keys, kills, sent)
}

// -ledger sql goes with -metrics: the metrics wrapper keeps the store's
// transactional mode, so each payment's row is written in the transaction
// that records its response (the handler finds it, or it answers 500),
// and /metrics times those transactions' beginnings, commits and
// rollbacks, and no Complete.
func TestLedgerSQLWithMetrics(t *testing.T) {
	for _, name := range []string{"postgres", "sqlite", "mysql"} {
		t.Run(name, func(t *testing.T) {
			spec := relStoreSpec(t, name)
			db := ledgerDB(t, name, spec)
			p := startExample(t, "-store", spec, "-ledger", "sql", "-metrics", "-log-level", "error")
			const paid = 3
			for i := 0; i < paid; i++ {
				key := relKey(fmt.Sprintf("ledger-metrics-%s-%d", name, i))
				body := fmt.Sprintf(`{"amount": %d, "currency": "eur"}`, 100+i)
				first := p.mustPost(key, "", body)
				if first.Status != http.StatusCreated {
					t.Fatalf("key %s: %d %s, want 201", key, first.Status, first.Body)
				}
				again := p.mustPost(key, "", body)
				if again.Status != http.StatusCreated || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
					t.Fatalf("key %s again: %d %s (replayed %q), want the replay of %s", key, again.Status, again.Body, again.Header.Get("Idempotent-Replayed"), first.Body)
				}
				q := `SELECT count(*), min(id) FROM example_payments WHERE idem_key = ?`
				if name == "postgres" {
					q = strings.Replace(q, "?", "$1", 1)
				}
				var (
					n  int
					id sql.NullString
				)
				if err := db.QueryRow(q, idem.StoreKey("", key)).Scan(&n, &id); err != nil {
					t.Fatal(err)
				}
				if want := decodePayment(t, first).ID; n != 1 || id.String != want {
					t.Fatalf("key %s: %d payment rows (first %q), want exactly one, %s", key, n, id.String, want)
				}
			}
			// A payment that fails is rolled back: no row, the key released.
			failed := relKey("ledger-metrics-" + name + "-failed")
			if r := p.mustPost(failed, "", `{"amount": 1, "currency": "eur", "fail": true}`); r.Status != http.StatusInternalServerError {
				t.Fatalf("failing payment: %d %s, want 500", r.Status, r.Body)
			}
			var n int
			q := `SELECT count(*) FROM example_payments WHERE idem_key = ?`
			if name == "postgres" {
				q = strings.Replace(q, "?", "$1", 1)
			}
			if err := db.QueryRow(q, idem.StoreKey("", failed)).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("the failed payment left %d rows, want 0", n)
			}

			out := get(t, p.URL+"/metrics")
			for _, want := range []string{
				fmt.Sprintf(`idem_store_call_duration_seconds_count{operation="begin_work",result="ok"} %d`, paid+1),
				fmt.Sprintf(`idem_store_call_duration_seconds_count{operation="commit",result="ok"} %d`, paid),
				`idem_store_call_duration_seconds_count{operation="rollback",result="ok"} 1`,
				`idem_store_call_duration_seconds_count{operation="release",result="ok"} 1`,
				fmt.Sprintf(`idem_requests_total{outcome="executed",route="/payments"} %d`, paid+1),
				fmt.Sprintf(`idem_requests_total{outcome="replayed",route="/payments"} %d`, paid),
				`idem_keys_in_flight 0`,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
			if strings.Contains(out, `operation="complete"`) {
				t.Errorf("/metrics times Completes; the transactional store records responses with Commit:\n%s", grepLines(out, "idem_store_call"))
			}
		})
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
