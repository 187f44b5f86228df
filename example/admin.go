package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"

	"github.com/idemgo/idem"
)

// newAdmin returns the key inspection endpoints, for operators:
//
//	GET    /keys/{key}   the state of the key a client sent
//	DELETE /keys/{key}   delete it: the next request with it runs again
//
// The request names the client's principal as the client would: with its
// Authorization header (the example's scope). These endpoints show stored
// responses and let a payment run twice: serve them only on a private
// address (-admin).
func newAdmin(ins idem.Inspector) http.Handler {
	r := chi.NewRouter()
	r.Get("/keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		ks, err := ins.Lookup(r.Context(), storeKey(r))
		if err != nil {
			adminError(w, err)
			return
		}
		out := map[string]any{"state": "absent"}
		if ks != nil {
			out = map[string]any{"state": ks.State.String(), "expires_in": ks.ExpiresIn.String()}
			if resp, err := ks.Response(); err == nil {
				out["status"] = resp.Status
				out["replayable"] = !resp.BodyOmitted
				out["body"] = string(resp.Body)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	r.Delete("/keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		deleted, err := ins.Delete(r.Context(), storeKey(r))
		if err != nil {
			adminError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]bool{"deleted": deleted})
	})
	return r
}

// storeKey names the stored key of the client key in the path under the
// request's scope, by the middleware's rule.
func storeKey(r *http.Request) string {
	key := chi.URLParam(r, "key")
	if r.URL.RawPath != "" {
		// chi matched the escaped path: undo the escaping.
		if k, err := url.PathUnescape(key); err == nil {
			key = k
		}
	}
	return idem.StoreKey(scopeOf(r), key)
}

// adminError logs err and answers 503 without its text.
func adminError(w http.ResponseWriter, err error) {
	slog.Error("admin: store call failed", "err", err)
	writeProblem(w, http.StatusServiceUnavailable, "Store unavailable", "The idempotency store could not answer; see the server log.")
}
