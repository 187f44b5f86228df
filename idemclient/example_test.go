package idemclient_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemclient"
	"github.com/idemgo/idem/memstore"
)

// A client whose POSTs carry a key and survive a failed first attempt: the
// server's first answer is a 500 (not stored, so the key is free again);
// the retry, with the same key and body, is the one that charges.
func ExampleNewClient() {
	store := memstore.New()
	defer store.Close()
	calls := 0
	srv := httptest.NewServer(idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			http.Error(w, "provider timeout", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"pay_1"}`)
	})))
	defer srv.Close()

	client := idemclient.NewClient(nil)
	resp, err := client.Post(srv.URL+"/payments", "application/json", strings.NewReader(`{"amount":1000}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body), "after", calls, "calls")
	// Output:
	// 201 {"id":"pay_1"} after 2 calls
}

// Every attempt is visible to OnAttempt, with the one key they share.
func ExampleTransport() {
	store := memstore.New()
	defer store.Close()
	calls := 0
	srv := httptest.NewServer(idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls++; calls < 3 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))
	defer srv.Close()

	key := ""
	client := &http.Client{
		Timeout: time.Minute, // bounds the whole call, every attempt included
		Transport: &idemclient.Transport{
			MaxAttempts: 4,
			BaseDelay:   50 * time.Millisecond,
			Budget:      10 * time.Second,
			OnAttempt: func(a idemclient.Attempt) {
				if key == "" {
					key = a.Key
				}
				fmt.Printf("attempt %d: %d, same key %v, retry %v\n", a.Number, a.Response.StatusCode, a.Key == key, a.Retry)
			},
		},
	}
	resp, err := client.Post(srv.URL+"/orders", "application/json", strings.NewReader(`{"sku":"A1"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println("final:", resp.StatusCode)
	// Output:
	// attempt 1: 502, same key true, retry true
	// attempt 2: 502, same key true, retry true
	// attempt 3: 201, same key true, retry false
	// final: 201
}
