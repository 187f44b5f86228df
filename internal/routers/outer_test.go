package routers_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/gorilla/mux"
	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// cors answers as a CORS layer does: the request's Origin echoed, and Vary.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" {
			w.Header().Set("Access-Control-Allow-Origin", o)
			w.Header().Add("Vary", "Origin")
		}
		next.ServeHTTP(w, r)
	})
}

// sessions returns a layer that sets a new session cookie on every
// response, as a session or CSRF layer does. (gorilla/mux builds its
// middleware chain per request, so the counter lives outside it.)
func sessions() func(http.Handler) http.Handler {
	var n atomic.Int64
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.SetCookie(w, &http.Cookie{Name: "session", Value: "s" + strconv.FormatInt(n.Add(1), 10)})
			next.ServeHTTP(w, r)
		})
	}
}

// echoRequestID puts chi's request ID on the response.
func echoRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", middleware.GetReqID(r.Context()))
		next.ServeHTTP(w, r)
	})
}

// createOrder sees the outer headers, adds its own cookie and Vary value,
// and answers 201.
func createOrder(w http.ResponseWriter, r *http.Request) {
	if len(w.Header()["Set-Cookie"]) != 1 {
		http.Error(w, "the outer session cookie is not visible", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: "cart", Value: "emptied"})
	w.Header().Add("Vary", "Accept-Language")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	w.Write([]byte(`{"order":"o_1"}`))
}

func send(h http.Handler, origin string) *http.Response {
	r := httptest.NewRequest("POST", "/orders", strings.NewReader(`{"sku":"x"}`))
	r.Header.Set("Idempotency-Key", "order-1")
	r.Header.Set("Origin", origin)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

// checkOuterHeaders sends a request and its retry through h: the first
// answer has the outer middleware's headers and the handler's additions;
// the replay has the outer middleware's headers of the retry (its own
// session cookie, origin and request ID) and the handler's additions from
// the record.
func checkOuterHeaders(t *testing.T, h http.Handler, requestIDs bool) {
	t.Helper()
	first := send(h, "https://a.example")
	replay := send(h, "https://b.example")
	for i, c := range []struct {
		resp                  *http.Response
		session, origin, repl string
	}{{first, "session=s1", "https://a.example", ""}, {replay, "session=s2", "https://b.example", "true"}} {
		h := c.resp.Header
		if c.resp.StatusCode != http.StatusCreated || !slices.Equal(h["Set-Cookie"], []string{c.session, "cart=emptied"}) ||
			h.Get("Access-Control-Allow-Origin") != c.origin || !slices.Equal(h["Vary"], []string{"Origin", "Accept-Language"}) ||
			h.Get("Idempotent-Replayed") != c.repl || h.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("answer %d: %d %v", i, c.resp.StatusCode, h)
		}
	}
	if requestIDs {
		a, b := first.Header.Get("X-Request-Id"), replay.Header.Get("X-Request-Id")
		if a == "" || a == b {
			t.Fatalf("request IDs %q and %q: the replay must carry its own", a, b)
		}
	}
}

// chi: RequestID, SetHeader, a CORS layer and a session layer outside the
// middleware; the handler extends their headers, and a replay carries
// theirs afresh.
func TestChiOuterMiddlewareHeaders(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	r := chi.NewRouter()
	r.Use(middleware.RequestID, echoRequestID, middleware.SetHeader("X-Frame-Options", "DENY"), cors, sessions())
	r.With(idem.New(st)).Post("/orders", createOrder)
	checkOuterHeaders(t, r, true)
}

// gorilla/mux: the same outer layers through r.Use, the middleware last.
func TestGorillaOuterMiddlewareHeaders(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	r := mux.NewRouter()
	frame := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Frame-Options", "DENY")
			next.ServeHTTP(w, r)
		})
	}
	r.Use(frame, cors, sessions(), idem.New(st))
	r.HandleFunc("/orders", createOrder).Methods("POST")
	checkOuterHeaders(t, r, false)
}

// chi's Recoverer outside the middleware: a panicking handler's key is
// released, the client gets Recoverer's 500, and the retry runs the
// handler again.
func TestChiRecovererAfterPanic(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	runs := 0
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.With(idem.New(st)).Post("/orders", func(w http.ResponseWriter, r *http.Request) {
		runs++
		if runs == 1 {
			panic("payment provider client bug")
		}
		w.WriteHeader(http.StatusCreated)
	})
	if resp := send(r, "https://a.example"); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("panic: %d, want Recoverer's 500", resp.StatusCode)
	}
	if resp := send(r, "https://a.example"); resp.StatusCode != http.StatusCreated || runs != 2 {
		t.Fatalf("retry: %d after %d runs, want 201 from a second run", resp.StatusCode, runs)
	}
}
