package memstore_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// The in-memory store, for one process, tests and development: records live
// as long as the process, and the sweeper drops expired ones (Close stops
// it). Several instances of a service need a shared store instead.
func ExampleNew() {
	store := memstore.New()
	defer store.Close()

	runs := 0
	h := idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		fmt.Fprintf(w, "run %d", runs)
	}))
	for i := 0; i < 2; i++ {
		r := httptest.NewRequest("POST", "/jobs", strings.NewReader("{}"))
		r.Header.Set("Idempotency-Key", "job-1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%s (replayed=%q)\n", w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// run 1 (replayed="")
	// run 1 (replayed="true")
}
