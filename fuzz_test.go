package idem_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// FuzzMiddleware drives the whole middleware over memstore with random
// methods, paths, key header lines, bodies, handler behaviours and
// settings. The handler under test always answers 2xx, so any 5xx is the
// middleware's own failure; memstore never fails. For every input:
//
//   - nothing panics, nothing answers 5xx;
//   - every answer of the middleware's own (every 4xx here) is an RFC 9457
//     problem: application/problem+json, valid JSON with type, title,
//     status (equal to the status sent) and detail, and Cache-Control:
//     no-store;
//   - the same request sent again gets the same answer: the replay of the
//     handler's response, byte for byte, when the key protected it (and the
//     handler does not run again), or the same refusal;
//   - the same key with another body gets 422 once the key is recorded.
func FuzzMiddleware(f *testing.F) {
	f.Add("POST", "/payments", "", "abc", []byte(`{"amount":1}`), byte(1), byte(0))
	f.Add("PATCH", "/a/b%20c", "x=1&y=2", `"abc"`, []byte(`{}`), byte(0), byte(8))
	f.Add("POST", "/", "", "a,b", []byte{}, byte(2), byte(1))
	f.Add("POST", "/", "", "abc\nabd", []byte("x"), byte(0), byte(0))
	f.Add("POST", "/", "", "abc\nabc", []byte("x"), byte(0), byte(0))
	f.Add("POST", "/", "", "", []byte("x"), byte(0), byte(1))
	f.Add("POST", "/", "", `"a\"b"`, bytes.Repeat([]byte("y"), 40), byte(3), byte(2))
	f.Add("POST", "/", "", "big", []byte("z"), byte(4|16), byte(4))
	f.Add("POST", "/", "", "flush", []byte("z"), byte(8), byte(0))
	f.Add("GET", "/", "", "abc", []byte("q"), byte(1), byte(0))
	f.Add("post", "/", "", "\x00\xff", []byte(nil), byte(0), byte(16))
	f.Add("POST", "/", "", strings.Repeat("k", 256), []byte(nil), byte(0), byte(0))

	f.Fuzz(func(t *testing.T, method, path, query, keys string, body []byte, handler, settings byte) {
		store := memstore.New()
		defer store.Close()

		opts := []idem.Option{}
		if settings&1 != 0 {
			opts = append(opts, idem.WithRequiredKey())
		}
		if settings&2 != 0 {
			opts = append(opts, idem.WithMaxBodySize(16))
		}
		maxResponse := idem.DefaultMaxResponseSize
		if settings&4 != 0 {
			maxResponse = 8
			opts = append(opts, idem.WithMaxResponseSize(int64(maxResponse)))
		}
		if settings&8 != 0 {
			opts = append(opts, idem.WithScope(func(r *http.Request) string { return r.Header.Get("Authorization") }))
		}
		if settings&16 != 0 {
			opts = append(opts, idem.WithFingerprint(idem.CanonicalJSON()))
		}
		mw, err := idem.NewMiddleware(store, opts...)
		if err != nil {
			t.Fatal(err)
		}

		// The handler: 200, 201, 202 or 204, with a body unique to each run
		// (except 204), written in one or two pieces, flushed or not.
		var (
			runs      int
			protected bool
			streamed  bool
		)
		h := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs++
			_, protected = idem.KeyFromContext(r.Context())
			got, err := io.ReadAll(r.Body)
			if err != nil || !bytes.Equal(got, body) {
				t.Errorf("handler read %q (%v), the client sent %q", got, err, body)
			}
			status := []int{200, 201, 202, 204}[handler&3]
			w.Header().Set("X-Run", strconv.Itoa(runs))
			if status != 204 {
				w.Header().Set("Content-Type", "text/plain")
			}
			w.WriteHeader(status)
			if status == 204 {
				return
			}
			out := "run " + strconv.Itoa(runs) + " of " + strconv.Quote(string(body))
			if handler&16 != 0 {
				out += strings.Repeat(".", 64)
			}
			streamed = handler&8 != 0 || len(out) > maxResponse
			if handler&8 != 0 {
				io.WriteString(w, out[:len(out)/2])
				w.(http.Flusher).Flush()
				io.WriteString(w, out[len(out)/2:])
				return
			}
			io.WriteString(w, out)
		}))

		send := func(b []byte) *httptest.ResponseRecorder {
			req := &http.Request{
				Method:     method,
				URL:        &url.URL{Path: path, RawQuery: query},
				Proto:      "HTTP/1.1",
				ProtoMajor: 1,
				ProtoMinor: 1,
				Header:     http.Header{"Authorization": {"Bearer fuzz"}},
				Host:       "example.com",
				RequestURI: path,
			}
			if keys != "" {
				req.Header["Idempotency-Key"] = strings.Split(keys, "\n")
			}
			req.Body = http.NoBody // as net/http's server gives
			if b != nil {
				req.Body = io.NopCloser(bytes.NewReader(b))
				req.ContentLength = int64(len(b))
				if handler&32 != 0 {
					req.ContentLength = -1 // chunked: length unknown
				}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			checkAnswer(t, w)
			return w
		}

		first := send(body)
		firstRuns, firstProtected, firstStreamed := runs, protected, streamed
		if firstRuns > 1 {
			t.Fatalf("the handler ran %d times for one request", firstRuns)
		}
		again := send(body)
		switch {
		case firstRuns == 1 && firstProtected && firstStreamed:
			if runs != 1 {
				t.Fatal("a streamed response's key ran again")
			}
			wantProblemStatus(t, again, http.StatusConflict, "response-not-replayable")
		case firstRuns == 1 && firstProtected:
			if runs != 1 {
				t.Fatal("the handler ran again for a recorded key")
			}
			if again.Code != first.Code || !bytes.Equal(again.Body.Bytes(), first.Body.Bytes()) ||
				again.Header().Get("X-Run") != first.Header().Get("X-Run") ||
				again.Header().Get("Idempotent-Replayed") != "true" {
				t.Fatalf("replay: %d %q %v, want %d %q", again.Code, again.Body, again.Header(), first.Code, first.Body)
			}
		case firstRuns == 1:
			// Not protected (another method, or no key): it runs again.
			if runs != 2 || again.Code != first.Code {
				t.Fatalf("an unprotected request: %d runs, %d then %d", runs, first.Code, again.Code)
			}
			return
		default:
			// Refused by the middleware: refused again, alike.
			if runs != 0 || again.Code != first.Code || !bytes.Equal(again.Body.Bytes(), first.Body.Bytes()) {
				t.Fatalf("refusal %d %q, then %d %q with %d runs", first.Code, first.Body, again.Code, again.Body, runs)
			}
			return
		}
		// The same key for another request: 422, handler not run. (The
		// other body starts with a byte no JSON text starts with, so that
		// it is another request under CanonicalJSON too.)
		other := send(append([]byte{'x'}, body...))
		if settings&2 != 0 && len(body)+1 > 16 {
			wantProblemStatus(t, other, http.StatusRequestEntityTooLarge, "body-too-large")
		} else {
			wantProblemStatus(t, other, http.StatusUnprocessableEntity, "key-reused")
		}
		if runs != 1 {
			t.Fatalf("the handler ran %d times", runs)
		}
	})
}

// checkAnswer checks what every answer must be: never 5xx, and a valid
// problem whenever the middleware answered itself.
func checkAnswer(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	if w.Code >= 500 {
		t.Fatalf("answered %d: %s", w.Code, w.Body)
	}
	ct := w.Header().Get("Content-Type")
	if w.Code < 400 && ct != "application/problem+json" {
		return
	}
	if ct != "application/problem+json" {
		t.Fatalf("%d with Content-Type %q, want a problem: %q", w.Code, ct, w.Body)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("problem with Cache-Control %q", cc)
	}
	var p map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q is not JSON: %v", w.Body, err)
	}
	typ, _ := p["type"].(string)
	title, _ := p["title"].(string)
	detail, _ := p["detail"].(string)
	status, _ := p["status"].(float64)
	if !strings.HasPrefix(typ, idem.ProblemTypeBase) || title == "" || detail == "" || int(status) != w.Code {
		t.Fatalf("problem %q sent with status %d", w.Body, w.Code)
	}
	if n, err := strconv.Atoi(w.Header().Get("Content-Length")); err != nil || n != w.Body.Len() {
		t.Fatalf("problem Content-Length %q for %d bytes", w.Header().Get("Content-Length"), w.Body.Len())
	}
}

func wantProblemStatus(t *testing.T, w *httptest.ResponseRecorder, status int, name string) {
	t.Helper()
	var p struct{ Type string }
	json.Unmarshal(w.Body.Bytes(), &p)
	if w.Code != status || p.Type != idem.ProblemTypeBase+name {
		t.Fatalf("got %d %q, want %d problem %s", w.Code, w.Body, status, name)
	}
}
