package idem_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// session sets what outer middleware sets on every response, with values
// that change per request: a request ID, a session cookie, CORS headers.
func session(next http.Handler) http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := strconv.FormatInt(n.Add(1), 10)
		h := w.Header()
		h.Set("X-Request-Id", "req-"+i)
		h.Add("Set-Cookie", "session=s"+i+"; Path=/")
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Allow-Origin", "https://shop.example")
		h.Set("Cache-Control", "private")
		next.ServeHTTP(w, r)
	})
}

// The handler sees the headers outer middleware set and extends them, as
// under net/http; the record keeps only what the handler added or changed,
// so a replay carries the outer middleware's headers of the replay (a new
// request ID and session cookie) with the handler's own on top.
func TestReplayKeepsHandlerHeadersOverOuterOnes(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	var seen []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = slices.Clone(w.Header()["Set-Cookie"])
		http.SetCookie(w, &http.Cookie{Name: "pref", Value: "1"})
		w.Header().Add("Vary", "Accept-Encoding")
		w.Header().Del("Access-Control-Allow-Origin")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Location", "/payments/1")
		w.WriteHeader(http.StatusCreated)
	})
	srv := session(idem.New(st)(h))
	first := do(srv, "POST", "/", "k", "")
	if len(seen) != 1 || seen[0] != "session=s1; Path=/" {
		t.Fatalf("the handler saw Set-Cookie %q, want the outer session cookie", seen)
	}
	want := http.Header{
		"X-Request-Id":  {"req-1"},
		"Set-Cookie":    {"session=s1; Path=/", "pref=1"},
		"Vary":          {"Origin", "Accept-Encoding"},
		"Cache-Control": {"no-store"},
		"Location":      {"/payments/1"},
	}
	checkHeader(t, "first answer", first.Result().Header, want)

	replay := do(srv, "POST", "/", "k", "")
	want["X-Request-Id"] = []string{"req-2"}
	want["Set-Cookie"] = []string{"session=s2; Path=/", "pref=1"}
	want["Idempotent-Replayed"] = []string{"true"}
	checkHeader(t, "replay", replay.Result().Header, want)
	if replay.Code != http.StatusCreated {
		t.Fatalf("replay status %d", replay.Code)
	}
}

func checkHeader(t *testing.T, what string, got, want http.Header) {
	t.Helper()
	for k, vv := range want {
		if !slices.Equal(got[k], vv) {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], vv)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok && k != "Content-Type" {
			t.Errorf("%s: unexpected %s = %q", what, k, got[k])
		}
	}
}

// When the response cannot be recorded, the middleware's 503 carries the
// outer middleware's headers, never the handler's (no cookie of an answer
// the client does not get).
func TestNotRecordedAnswerDropsHandlerHeaders(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.completeErr = errors.New("store down") })
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "pref", Value: "1"})
		w.Header().Set("Location", "/payments/1")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "created")
	})
	w := do(session(idem.New(st)(h)), "POST", "/", "k", "")
	wantProblem(t, w, http.StatusServiceUnavailable, "response-not-recorded")
	if got := w.Result().Header["Set-Cookie"]; !slices.Equal(got, []string{"session=s1; Path=/"}) || w.Header().Get("Location") != "" {
		t.Fatalf("503 carries Set-Cookie %q and Location %q; want the session cookie only", got, w.Header().Get("Location"))
	}
}

// A handler that gives up without writing because its client hung up is
// not recorded as an empty 200: the key is released, the hook sees
// OutcomeCancelled, and the retry runs the handler. A handler that marked
// its side effect committed first is recorded.
func TestCancelledRequestReleasesKey(t *testing.T) {
	for _, committed := range []bool{false, true} {
		st := memstore.New()
		defer st.Close()
		var ev events
		runs := 0
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs++
			if runs > 1 {
				w.WriteHeader(http.StatusCreated)
				return
			}
			if committed {
				idem.MarkCommitted(r.Context())
			}
			<-r.Context().Done() // the client is gone: nothing to answer
		})
		mw := idem.New(st, idem.WithHook(ev.hook))(h)
		ctx, cancel := context.WithCancel(context.Background())
		r := httptest.NewRequest("POST", "/", nil).WithContext(ctx)
		r.Header.Set("Idempotency-Key", "k")
		cancel()
		mw.ServeHTTP(httptest.NewRecorder(), r)
		first := ev.last()
		retry := do(mw, "POST", "/", "k", "")
		switch {
		case !committed && (first.Outcome != idem.OutcomeCancelled || first.Stored):
			t.Fatalf("cancelled handler: hook saw %v (stored %v), want cancelled", first.Outcome, first.Stored)
		case !committed && (runs != 2 || retry.Code != http.StatusCreated):
			t.Fatalf("retry after a cancelled request: %d, runs %d; want the handler run again", retry.Code, runs)
		case committed && (first.Outcome != idem.OutcomeExecuted || !first.Stored):
			t.Fatalf("committed handler: hook saw %v (stored %v), want executed and stored", first.Outcome, first.Stored)
		case committed && (runs != 1 || retry.Code != 200 || retry.Header().Get("Idempotent-Replayed") != "true"):
			t.Fatalf("retry after a committed, cancelled request: %d, runs %d; want the replay", retry.Code, runs)
		}
	}
}

// Trailers are part of the response: sent live, recorded, and replayed,
// both declared ones and http.TrailerPrefix ones.
func TestTrailersRecordedAndReplayed(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	runs := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "payload")
		w.Header().Set("X-Checksum", "sum-"+strconv.Itoa(runs))
		w.Header().Set(http.TrailerPrefix+"X-Late", "late-"+strconv.Itoa(runs))
	})
	srv := httptest.NewServer(idem.New(st)(h))
	defer srv.Close()
	for i, wantReplayed := range []string{"", "true"} {
		resp := postTo(t, srv.URL, "k")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "payload" || resp.Trailer.Get("X-Checksum") != "sum-1" || resp.Trailer.Get("X-Late") != "late-1" ||
			resp.Header.Get("Idempotent-Replayed") != wantReplayed {
			t.Fatalf("answer %d: %q, trailers %v, replayed %q", i, body, resp.Trailer, resp.Header.Get("Idempotent-Replayed"))
		}
	}
	if runs != 1 {
		t.Fatalf("runs %d", runs)
	}
}

func postTo(t *testing.T, url, key string) *http.Response {
	t.Helper()
	return postWithTrace(t, url, key, nil)
}

func postWithTrace(t *testing.T, url, key string, trace *httptrace.ClientTrace) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader("{}"))
	req.Header.Set("Idempotency-Key", key)
	if trace != nil {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// 103 Early Hints reach the client while the handler runs, as under
// net/http; they are not part of the record, so a replay has none.
func TestEarlyHintsForwardedNotReplayed(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Link", "</app.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "done")
	})
	srv := httptest.NewServer(idem.New(st)(h))
	defer srv.Close()
	for i, wantHints := range []int{1, 0} {
		var hints []textproto.MIMEHeader
		resp := postWithTrace(t, srv.URL, "k", &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints {
				hints = append(hints, h)
			}
			return nil
		}})
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if len(hints) != wantHints || resp.StatusCode != http.StatusCreated || resp.Header.Get("Link") == "" {
			t.Fatalf("answer %d: %d early hints, status %d, Link %q; want %d, 201 and the Link header", i, len(hints), resp.StatusCode, resp.Header.Get("Link"), wantHints)
		}
		if wantHints == 1 && hints[0].Get("Link") != "</app.css>; rel=preload; as=style" {
			t.Fatalf("early hints carried %v", hints[0])
		}
	}
}

// A write after 204 or 304 fails with http.ErrBodyNotAllowed, as under
// net/http, and nothing of it is stored.
func TestWriteAfterNoContentNotStored(t *testing.T) {
	for _, status := range []int{http.StatusNoContent, http.StatusNotModified} {
		st := memstore.New()
		defer st.Close()
		var writeErr error
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			_, writeErr = io.WriteString(w, "body")
		})
		do(idem.New(st)(h), "POST", "/", "k", "")
		if !errors.Is(writeErr, http.ErrBodyNotAllowed) {
			t.Fatalf("%d: Write returned %v, want http.ErrBodyNotAllowed", status, writeErr)
		}
		rec, err := st.Claim(context.Background(), idem.StoreKey("", "k"), "probe", "x", 1)
		if err != nil || rec == nil {
			t.Fatalf("%d: no record (%v)", status, err)
		}
		resp, err := idem.DecodeResponse(rec.Result)
		if err != nil || resp.Status != status || len(resp.Body) != 0 {
			t.Fatalf("%d: stored %+v (%v), want the status and no body", status, resp, err)
		}
	}
}

// A handler's Connection: close reaches the wire, so the client's
// connection is closed after the first answer. It describes that
// connection, not the response: a replay does not carry it.
func TestConnectionCloseSentNotReplayed(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	srv := httptest.NewServer(idem.New(st)(h))
	defer srv.Close()
	for i, wantClose := range []bool{true, false} {
		resp := postTo(t, srv.URL, "k")
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close != wantClose || resp.StatusCode != 200 {
			t.Fatalf("answer %d: status %d, connection closed %v, want %v", i, resp.StatusCode, resp.Close, wantClose)
		}
	}
}

// WriteHeader refuses a status outside 100-999 with the panic of net/http,
// and takes any status within it, 999 included.
func TestWriteHeaderChecksStatusAsNetHTTP(t *testing.T) {
	// writeStatus reports what w.WriteHeader(code) panicked with.
	writeStatus := func(h func(http.Handler) http.Handler, code int) (panicked any, got int) {
		inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() { panicked = recover() }()
			w.WriteHeader(code)
		})
		w := do(h(inner), "POST", "/", "k", "")
		return panicked, w.Code
	}
	bare := func(h http.Handler) http.Handler { return h }
	for _, code := range []int{99, 999, 1000} {
		st := memstore.New()
		defer st.Close()
		wantPanic, wantCode := writeStatus(bare, code)
		gotPanic, gotCode := writeStatus(idem.New(st), code)
		if gotPanic != wantPanic || gotCode != wantCode {
			t.Errorf("WriteHeader(%d) behind idem: panic %v, status %d; net/http: panic %v, status %d",
				code, gotPanic, gotCode, wantPanic, wantCode)
		}
	}
	if p, _ := writeStatus(bare, 1000); p == nil {
		t.Fatal("net/http took WriteHeader(1000)")
	}
}

// writeLog is outer middleware's ResponseWriter that keeps every write it
// is handed, as a body logger or a compressing writer sees them.
type writeLog struct {
	http.ResponseWriter
	writes []string
}

func (l *writeLog) Write(p []byte) (int, error) {
	l.writes = append(l.writes, string(p))
	return l.ResponseWriter.Write(p)
}

// A write beyond the declared Content-Length is refused, and the writer of
// outer middleware sees it as it does under net/http: after the accepted
// writes, one of the same first byte, here the same write.
func TestRefusedWriteSeenByOuterWriterAsUnderNetHTTP(t *testing.T) {
	writes := func(h http.Handler) []string {
		var log *writeLog
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log = &writeLog{ResponseWriter: w}
			h.ServeHTTP(log, r)
		}))
		defer srv.Close()
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("b"))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return log.writes
	}
	for name, write := range map[string]func(w http.ResponseWriter, s string) (int, error){
		"Write":       func(w http.ResponseWriter, s string) (int, error) { return w.Write([]byte(s)) },
		"WriteString": func(w http.ResponseWriter, s string) (int, error) { return io.WriteString(w, s) },
	} {
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			write(w, "ab")
			if _, err := write(w, "c"); !errors.Is(err, http.ErrContentLength) {
				t.Errorf("%s: a write past Content-Length returned %v, want http.ErrContentLength", name, err)
			}
		})
		st := memstore.New()
		defer st.Close()
		want, got := writes(handler), writes(idem.New(st)(handler))
		if len(want) != 2 || !slices.Equal(got, want) {
			t.Fatalf("%s: the outer writer saw %q behind idem, %q under net/http", name, got, want)
		}
	}
}

// An empty WriteString is a write of nothing, as under net/http.
func TestEmptyWriteStringWritesNothing(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	var n int
	var err error
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err = io.WriteString(w, "")
		io.WriteString(w, "ok")
	})
	w := do(idem.New(st)(h), "POST", "/", "k", "")
	if n != 0 || err != nil || w.Code != http.StatusOK || w.Body.String() != "ok" {
		t.Fatalf("WriteString(\"\") = %d, %v; answer %d %q, want 0, nil and 200 \"ok\"", n, err, w.Code, w.Body)
	}
}

// Header changes made after WriteHeader are not sent, as under net/http,
// and the header map is left as the handler left it for outer middleware.
// A header set to nil before WriteHeader (a Date of nil keeps net/http from
// adding one) is sent as nil.
func TestHeaderChangesAfterWriteHeaderLeftAsUnderNetHTTP(t *testing.T) {
	handlers := map[string]http.HandlerFunc{
		"deleted, Date set to nil": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-A", "1")
			w.WriteHeader(http.StatusAccepted)
			w.Header().Del("X-A")
			w.Header()["Date"] = nil
			io.WriteString(w, "x")
		},
		"Date nil before, changed after": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-A", "1")
			w.Header()["Date"] = nil
			w.WriteHeader(http.StatusAccepted)
			w.Header().Set("X-A", "2")
			io.WriteString(w, "x")
		},
	}
	answer := func(h http.Handler, key string) (sent, after http.Header) {
		var left http.Header
		outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			left = w.Header().Clone()
		})
		w := do(outer, "POST", "/", key, "")
		return w.Result().Header, left
	}
	st := memstore.New()
	defer st.Close()
	n := 0
	for name, handler := range handlers {
		// Several rounds, so that captures the middleware reuses take part.
		for i := 0; i < 4; i++ {
			n++
			key := "k" + strconv.Itoa(n)
			wantSent, wantAfter := answer(handler, key)
			gotSent, gotAfter := answer(idem.New(st)(handler), key)
			if !reflect.DeepEqual(gotSent, wantSent) || !reflect.DeepEqual(gotAfter, wantAfter) {
				t.Fatalf("%s: behind idem: sent %#v, left %#v; net/http: sent %#v, left %#v", name, gotSent, gotAfter, wantSent, wantAfter)
			}
		}
	}
}

// A replay of a response without a body makes no write, as the handler
// made none: outer middleware that wraps the writer (a compressor, say)
// sees the same calls as for the first answer.
func TestReplayOfEmptyBodyWritesNothing(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	mw := idem.New(st)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/payments/1")
		w.WriteHeader(http.StatusCreated)
	}))
	for i, want := range []string{"", "true"} {
		var log *writeLog
		outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log = &writeLog{ResponseWriter: w}
			mw.ServeHTTP(log, r)
		})
		w := do(outer, "POST", "/", "k", "")
		if w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != want || len(log.writes) != 0 {
			t.Fatalf("answer %d: %d, replayed %q, writes %q; want 201 and no write", i, w.Code, w.Header().Get("Idempotent-Replayed"), log.writes)
		}
	}
}

// refusingHijacker is outer middleware's writer that offers Hijack but
// cannot hijack, as a writer over HTTP/2 or over a connection already
// taken.
type refusingHijacker struct{ http.ResponseWriter }

func (refusingHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("cannot hijack")
}

// When a hijack fails after the handler wrote, what it wrote has been sent
// and the rest of the response follows it, once, as under net/http.
func TestFailedHijackKeepsResponseWhole(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "a")
		if _, _, err := http.NewResponseController(w).Hijack(); err == nil {
			t.Error("the hijack succeeded")
		}
		io.WriteString(w, "b")
	})
	answer := func(h http.Handler) *httptest.ResponseRecorder {
		return do(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(refusingHijacker{w}, r)
		}), "POST", "/", "k", "")
	}
	st := memstore.New()
	defer st.Close()
	want, got := answer(handler), answer(idem.New(st)(handler))
	if got.Code != want.Code || got.Body.String() != want.Body.String() || got.Body.String() != "ab" {
		t.Fatalf("behind idem %d %q, under net/http %d %q", got.Code, got.Body, want.Code, want.Body)
	}
}

// A hijacked response is recorded with the status the handler wrote before
// it hijacked, or 101 Switching Protocols when it wrote none: a retry
// learns it in the response-not-replayable problem.
func TestHijackedResponseRecordsItsStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int // written before the hijack; 0 for none
		want   int
	}{{"after WriteHeader", http.StatusCreated, http.StatusCreated}, {"without a status", 0, http.StatusSwitchingProtocols}} {
		mem := memstore.New()
		defer mem.Close()
		st := &completeSignal{Store: mem, done: make(chan struct{}, 1)}
		srv := httptest.NewServer(idem.New(st)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.status != 0 {
				w.WriteHeader(tc.status)
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			if tc.status == 0 {
				brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
			}
			brw.WriteString("raw")
			brw.Flush()
			conn.Close()
		})))
		defer srv.Close()
		post := func() *http.Response {
			req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("b"))
			req.Header.Set("Idempotency-Key", "k")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			return resp
		}
		first := post()
		io.Copy(io.Discard, first.Body) // ends with the hijacked connection
		first.Body.Close()
		select { // the client has its answer before the middleware records it
		case <-st.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the response was not recorded", tc.name)
		}
		retry := post()
		var p problemBody
		err := json.NewDecoder(retry.Body).Decode(&p)
		retry.Body.Close()
		if err != nil || retry.StatusCode != http.StatusConflict ||
			p.Type != idem.ProblemTypeBase+"response-not-replayable" || p.OriginalStatus != tc.want {
			t.Fatalf("%s: retry %d %+v (%v), want 409 response-not-replayable of a %d", tc.name, retry.StatusCode, p, err, tc.want)
		}
	}
}

// completeSignal sends on done after each Complete.
type completeSignal struct {
	idem.Store
	done chan struct{}
}

func (s *completeSignal) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	err := s.Store.Complete(ctx, key, token, result, ttl)
	s.done <- struct{}{}
	return err
}

// Date set to nil keeps net/http from adding a Date: the replay has none
// either, as the first answer had none.
func TestReplayKeepsSuppressedDate(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	srv := httptest.NewServer(idem.New(st)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil
		io.WriteString(w, "ok")
	})))
	defer srv.Close()
	for i := 0; i < 2; i++ {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("b"))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if d, ok := resp.Header["Date"]; ok || (i == 1) != (resp.Header.Get("Idempotent-Replayed") == "true") {
			t.Fatalf("answer %d: Date %q, replayed %q; want no Date, the second a replay", i, d, resp.Header.Get("Idempotent-Replayed"))
		}
	}
}

// A trailer the handler declares but never sets is not recorded: the
// replay leaves it out of the header map, as the first answer did.
func TestDeclaredTrailerNeverSetIsNotReplayed(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	mw := idem.New(st)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum, X-Never")
		io.WriteString(w, "payload")
		w.Header().Set("X-Checksum", "sum")
	}))
	for i, want := range []string{"", "true"} {
		var left http.Header
		outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mw.ServeHTTP(w, r)
			left = w.Header().Clone()
		})
		w := do(outer, "POST", "/", "k", "")
		_, never := left["X-Never"]
		if w.Header().Get("Idempotent-Replayed") != want || left.Get("X-Checksum") != "sum" || never {
			t.Fatalf("answer %d: replayed %q, header map after %v; want X-Checksum and no X-Never", i, w.Header().Get("Idempotent-Replayed"), left)
		}
	}
}

// How the record tells the handler's headers from the outer middleware's:
// values that extend the outer ones are replayed after the outer values of
// the replay; values that replace them are replayed as they are. A handler
// that replaced an outer value with several values gets exactly those
// back, and a header the outer middleware left present but empty cannot
// tell an Add from a Set, so the handler's values are replayed as they
// are.
func TestReplayOfReplacedAndEmptyOuterHeaders(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	var n atomic.Int64
	outer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			i := n.Add(1)
			w.Header().Set("X-Tag", "outer-"+strconv.FormatInt(i, 10))
			if i == 1 {
				w.Header()["X-Empty"] = []string{}
			} else {
				w.Header().Set("X-Empty", "late")
			}
			next.ServeHTTP(w, r)
		})
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Tag"] = []string{"b", "c"}
		w.Header().Add("X-Empty", "mine")
		w.WriteHeader(http.StatusCreated)
	})
	srv := outer(idem.New(st)(h))
	want := http.Header{"X-Tag": {"b", "c"}, "X-Empty": {"mine"}}
	checkHeader(t, "first answer", do(srv, "POST", "/", "k", "").Result().Header, want)
	want["Idempotent-Replayed"] = []string{"true"}
	checkHeader(t, "replay", do(srv, "POST", "/", "k", "").Result().Header, want)
}
