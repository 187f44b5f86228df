// Command benchbackend is the plain service behind idemproxy in
// scripts/proxybench.sh: POST /payments reads the body and answers 201 with
// a small JSON payment, GET /payments answers 200. It has no idempotency of
// its own and prints "listening on ADDR".
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
)

func main() {
	addr := "127.0.0.1:0"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("POST /payments", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		var b [12]byte
		rand.Read(b[:])
		id := "pay_" + hex.EncodeToString(b[:])
		body := `{"id":"` + id + `","amount":1000,"currency":"eur"}`
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/payments/"+id)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, body)
	})
	mux.HandleFunc("GET /payments", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"count":0}`)
	})
	fmt.Fprintln(os.Stderr, http.Serve(ln, mux))
	os.Exit(1)
}
