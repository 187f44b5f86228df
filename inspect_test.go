package idem_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// A key a client sent can be found, read and deleted through StoreKey and
// the store's Inspector; after Delete the next request with it runs again.
func TestInspectorFindsTheKeyAClientSent(t *testing.T) {
	store := memstore.New()
	defer store.Close()
	runs := 0
	h := idem.New(store, idem.WithScope(func(r *http.Request) string { return r.Header.Get("X-Account") }))(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs++
			w.Header().Set("Location", "/orders/1")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, "run %d", runs)
		}))
	send := func(account string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/orders", strings.NewReader("{}"))
		r.Header.Set("Idempotency-Key", "k|1")
		r.Header.Set("X-Account", account)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	send("acct|a")
	send("acct|b")

	var ins idem.Inspector = store
	ctx := context.Background()
	ks, err := ins.Lookup(ctx, idem.StoreKey("acct|a", "k|1"))
	if err != nil || ks == nil || ks.State != idem.StateCompleted {
		t.Fatalf("Lookup = %+v, %v; want the completed key", ks, err)
	}
	resp, err := ks.Response()
	if err != nil || resp.Status != 201 || string(resp.Body) != "run 1" || resp.Header.Get("Location") != "/orders/1" {
		t.Fatalf("stored response = %+v, %v", resp, err)
	}
	// Scopes stay apart: the other account's record is its own.
	if ks, _ := ins.Lookup(ctx, idem.StoreKey("acct|b", "k|1")); ks == nil {
		t.Fatal("the second account's key is not found")
	} else if r, _ := ks.Response(); string(r.Body) != "run 2" {
		t.Fatalf("second account's record holds %q", r.Body)
	}
	if ks, _ := ins.Lookup(ctx, idem.StoreKey("acct", "a|k|1")); ks != nil {
		t.Fatal("another scope and key that join to the same text found a record")
	}

	if ok, err := ins.Delete(ctx, idem.StoreKey("acct|a", "k|1")); err != nil || !ok {
		t.Fatalf("Delete = %v, %v", ok, err)
	}
	if w := send("acct|a"); w.Body.String() != "run 3" || w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("after Delete the key was replayed (%q), want a new run", w.Body)
	}
}

func TestKeyStateResponseOfAnInProgressKey(t *testing.T) {
	ks := &idem.KeyState{State: idem.StateInProgress}
	if _, err := ks.Response(); err == nil {
		t.Fatal("Response of an in-progress key returned no error")
	}
}
