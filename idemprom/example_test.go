package idemprom_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/idemprom"
	"github.com/idemgo/idem/memstore"
)

// Count outcomes by route, time every store call, and serve /metrics.
func ExampleNew() {
	store := memstore.New()
	defer store.Close()
	reg := prometheus.NewRegistry()
	m, err := idemprom.New(reg, idemprom.WithRoute(func(r *http.Request) string {
		return "/payments" // r.Pattern on Go 1.23+, chi's RoutePattern with chi
	}))
	if err != nil {
		panic(err)
	}
	pay := idem.New(m.Store(store), idem.WithHook(m.Hook))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	mux := http.NewServeMux()
	mux.Handle("/payments", pay)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	for i := 0; i < 2; i++ {
		r := httptest.NewRequest("POST", "/payments", strings.NewReader(`{"amount":1}`))
		r.Header.Set("Idempotency-Key", "k-1")
		mux.ServeHTTP(httptest.NewRecorder(), r)
	}
	n, _ := testutil.GatherAndCount(reg, "idem_requests_total")
	fmt.Println("series:", n)
	// Output:
	// series: 2
}
