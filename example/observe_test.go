package main

import (
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem/sqlstore"
)

// stderrText returns what the example has written to stderr so far.
func (p *proc) stderrText() string {
	lw := p.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return p.stderr.String()
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

func TestMetricsEndpoint(t *testing.T) {
	p := startExample(t, "-metrics")
	body := `{"amount": 10, "currency": "eur"}`
	p.mustPost("m1", "", body)
	p.mustPost("m1", "", body)
	p.mustPost("m1", "", `{"amount": 11, "currency": "eur"}`)
	out := get(t, p.URL+"/metrics")
	for _, want := range []string{
		`idem_requests_total{outcome="executed",route="/payments"} 1`,
		`idem_requests_total{outcome="replayed",route="/payments"} 1`,
		`idem_requests_total{outcome="mismatch",route="/payments"} 1`,
		`idem_store_call_duration_seconds_count{operation="claim",result="ok"} 3`,
		`idem_store_call_duration_seconds_count{operation="complete",result="ok"} 1`,
		`idem_keys_in_flight 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Without the flag there is no /metrics.
	q := startExample(t)
	resp, err := client.Get(q.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("GET /metrics without -metrics: %d, want 404", resp.StatusCode)
	}
}

func TestAdminLooksUpAndDeletesAClientsKey(t *testing.T) {
	p := startExample(t, "-admin", "127.0.0.1:0")
	var admin string
	for _, line := range strings.Split(p.stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "admin listening on "); ok {
			admin = "http://" + strings.TrimSpace(rest)
		}
	}
	if admin == "" {
		t.Fatalf("no admin address in %q", p.stdout.String())
	}
	body := `{"amount": 500, "currency": "eur"}`
	first := p.mustPost("order|7", "Bearer alice", body)

	lookup := func(auth string) map[string]any {
		req, _ := http.NewRequest("GET", admin+"/keys/order%7C7", nil)
		req.Header.Set("Authorization", auth)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
			t.Fatalf("lookup: %d %v", resp.StatusCode, err)
		}
		return out
	}
	got := lookup("Bearer alice")
	if got["state"] != "completed" || got["status"] != float64(201) || got["body"] != string(first.Body) {
		t.Fatalf("lookup = %v, want the completed 201 with the first body", got)
	}
	if got := lookup("Bearer bob"); got["state"] != "absent" {
		t.Fatalf("another principal's lookup = %v, want absent", got)
	}

	req, _ := http.NewRequest("DELETE", admin+"/keys/order%7C7", nil)
	req.Header.Set("Authorization", "Bearer alice")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(b)) != `{"deleted":true}` {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, b)
	}
	again := p.mustPost("order|7", "Bearer alice", body)
	if again.Header.Get("Idempotent-Replayed") != "" || decodePayment(t, again).ID == decodePayment(t, first).ID {
		t.Fatalf("after DELETE the key was replayed; want a new run")
	}
	if l := p.ledger(); l.Executions != 2 {
		t.Fatalf("%d executions, want 2", l.Executions)
	}
}

// Every outcome is logged; a store that fails (here its table is gone) is
// logged with its error, at the quietest level too.
func TestOutcomesAndStoreErrorsAreLogged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	p := startExample(t, "-store", "sqlite:"+path, "-log-level", "error")
	q := startExample(t)
	body := `{"amount": 1, "currency": "eur"}`
	q.mustPost("l1", "", body)
	q.mustPost("l1", "", body)
	waitLog(t, q, "outcome=executed key=l1")
	waitLog(t, q, "outcome=replayed key=l1")

	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DROP TABLE idem_keys`); err != nil {
		t.Fatal(err)
	}
	if r := p.mustPost("l2", "", body); r.Status != 503 {
		t.Fatalf("status %d without a table, want 503", r.Status)
	}
	waitLog(t, p, "outcome=store_error key=l2")
	waitLog(t, p, "no such table")
}

// waitLog polls p's stderr until it holds want.
func waitLog(t *testing.T, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.stderrText(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("stderr lacks %q after 10s:\n%s", want, p.stderrText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
