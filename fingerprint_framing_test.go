package idem_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/idemgo/idem"
)

// fpRequest is a request with exactly the given method, escaped path, raw
// query and headers, as a fingerprint function sees them.
func fpRequest(method, path, query string, header http.Header) *http.Request {
	return &http.Request{Method: method, URL: &url.URL{Path: path, RawQuery: query}, Header: header}
}

// Every field of a fingerprint is framed by its length, so moving bytes
// from one field to the next never yields the same fingerprint. Each pair
// below is built so that the two requests would hash the same bytes if one
// field lost its length prefix: the byte that follows the field (the length
// of the next one) is chosen to equal the byte moved across the boundary.
func TestFingerprintFieldsCannotRunTogether(t *testing.T) {
	q99 := strings.Repeat("q", 99)           // a length of 99 encodes as 'c'
	slash47 := "/" + strings.Repeat("a", 46) // a length of 47 encodes as '/'
	headers := idem.FingerprintHeaders("X-Amount")
	type side struct {
		r    *http.Request
		body string
	}
	for _, tc := range []struct {
		name string
		f    idem.FingerprintFunc
		a, b side
	}{{
		// POST //aaa… (48 bytes: '0') and POST0 /aaa… (47 bytes: '/').
		name: "method and path",
		f:    idem.Fingerprint,
		a:    side{fpRequest("POST", "/"+slash47, "", nil), ""},
		b:    side{fpRequest("POST0", slash47, "", nil), ""},
	}, {
		// POST /p?cqqq… (100 bytes: 'd') and POST /pd?qqq… (99 bytes: 'c').
		name: "path and query",
		f:    idem.Fingerprint,
		a:    side{fpRequest("POST", "/p", "c"+q99, nil), ""},
		b:    side{fpRequest("POST", "/pd", q99, nil), ""},
	}, {
		name: "path and query, short",
		f:    idem.Fingerprint,
		a:    side{fpRequest("POST", "/ab", "c", nil), ""},
		b:    side{fpRequest("POST", "/a", "bc", nil), ""},
	}, {
		// ?q with a 100-byte body and ?qd with a 99-byte one.
		name: "query and body",
		f:    idem.Fingerprint,
		a:    side{fpRequest("POST", "/p", "q", nil), "c" + q99},
		b:    side{fpRequest("POST", "/p", "qd", nil), q99},
	}, {
		name: "values of one header",
		f:    headers,
		a:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"10", "0"}}), ""},
		b:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"1", "00"}}), ""},
	}, {
		name: "header value and body",
		f:    headers,
		a:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"v"}}), "c" + q99},
		b:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"vd"}}), q99},
	}, {
		name: "header value and body, through CanonicalJSON",
		f:    idem.CanonicalJSON("X-Amount"),
		a:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"v"}}), "c" + q99},
		b:    side{fpRequest("POST", "/p", "", http.Header{"X-Amount": {"vd"}}), q99},
	}} {
		fa, fb := tc.f(tc.a.r, []byte(tc.a.body)), tc.f(tc.b.r, []byte(tc.b.body))
		if fa == fb {
			t.Errorf("%s: %s %s?%s %v (%d-byte body) and %s %s?%s %v (%d-byte body) share fingerprint %s",
				tc.name, tc.a.r.Method, tc.a.r.URL.Path, tc.a.r.URL.RawQuery, tc.a.r.Header, len(tc.a.body),
				tc.b.r.Method, tc.b.r.URL.Path, tc.b.r.URL.RawQuery, tc.b.r.Header, len(tc.b.body), fa)
		}
	}
}

// The same through the middleware: the second request reuses the key with
// another query and is refused, although path and query run together
// give the same bytes.
func TestKeyReusedAcrossPathAndQueryBoundary(t *testing.T) {
	st, _ := newCountingStore(t)
	h := &payments{}
	mw := idem.New(st)(h)
	q99 := strings.Repeat("q", 99)
	if w := do(mw, "POST", "/p?c"+q99, "k", ""); w.Code != http.StatusCreated {
		t.Fatalf("first request: %d", w.Code)
	}
	wantProblem(t, do(mw, "POST", "/pd?"+q99, "k", ""), http.StatusUnprocessableEntity, "key-reused")
	if h.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", h.runs.Load())
	}
}

// CanonicalJSON fingerprints a body that is not valid UTF-8 byte for byte:
// decoding it would turn every invalid byte into U+FFFD and make different
// payloads one.
func TestCanonicalJSONKeepsInvalidUTF8Apart(t *testing.T) {
	f := idem.CanonicalJSON()
	r := fpRequest("POST", "/p", "", nil)
	bodies := []string{
		"{\"name\":\"\xff\"}",
		"{\"name\":\"\xfe\"}",
		"{\"name\":\"\xef\xbf\xbd\"}", // U+FFFD itself, valid UTF-8
		"{\"name\":\"\\ufffd\"}",
	}
	seen := map[string]int{}
	for i, b := range bodies[:3] {
		fp := f(r, []byte(b))
		if j, ok := seen[fp]; ok {
			t.Errorf("bodies %q and %q share a fingerprint", bodies[j], b)
		}
		seen[fp] = i
	}
	// Valid UTF-8 is still compared by meaning.
	if f(r, []byte(bodies[2])) != f(r, []byte(bodies[3])) {
		t.Errorf("%q and %q differ, want the same JSON value", bodies[2], bodies[3])
	}
	if f(r, []byte(bodies[0])) != idem.Fingerprint(r, []byte(bodies[0])) {
		t.Error("a body that is not valid UTF-8 is not fingerprinted byte for byte")
	}
}
