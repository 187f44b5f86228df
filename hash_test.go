package idem_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/idemgo/idem"
)

// SHA-256 over method, path with query, and body; any change in
// one of them changes the fingerprint.
func TestFingerprintCoversMethodPathQueryAndBody(t *testing.T) {
	base := httptest.NewRequest("POST", "/payments?a=1", nil)
	fp := idem.Fingerprint(base, []byte(`{"amount":1}`))
	if len(fp) != 64 || strings.Trim(fp, "0123456789abcdef") != "" {
		t.Fatalf("fingerprint %q is not a hex SHA-256", fp)
	}
	if again := idem.Fingerprint(httptest.NewRequest("POST", "/payments?a=1", nil), []byte(`{"amount":1}`)); again != fp {
		t.Fatal("fingerprint not stable")
	}
	for name, got := range map[string]string{
		"method":  idem.Fingerprint(httptest.NewRequest("PATCH", "/payments?a=1", nil), []byte(`{"amount":1}`)),
		"path":    idem.Fingerprint(httptest.NewRequest("POST", "/payment?a=1", nil), []byte(`{"amount":1}`)),
		"query":   idem.Fingerprint(httptest.NewRequest("POST", "/payments?a=2", nil), []byte(`{"amount":1}`)),
		"body":    idem.Fingerprint(base, []byte(`{"amount":2}`)),
		"framing": idem.Fingerprint(httptest.NewRequest("POST", "/payments?a=1%7B", nil), []byte(`"amount":1}`)),
	} {
		if got == fp {
			t.Errorf("a change of %s kept the fingerprint", name)
		}
	}
	// Headers count only when chosen.
	withHdr := idem.FingerprintHeaders("X-Api-Version")
	r1 := httptest.NewRequest("POST", "/p", nil)
	r2 := httptest.NewRequest("POST", "/p", nil)
	r2.Header.Set("X-Api-Version", "2")
	r3 := httptest.NewRequest("POST", "/p", nil)
	r3.Header.Set("X-Api-Version", "")
	r4 := httptest.NewRequest("POST", "/p", nil)
	r4.Header.Set("X-Other", "2")
	if idem.Fingerprint(r1, nil) != idem.Fingerprint(r2, nil) {
		t.Error("the default fingerprint covers headers")
	}
	if withHdr(r1, nil) == withHdr(r2, nil) || withHdr(r1, nil) == withHdr(r3, nil) || withHdr(r2, nil) == withHdr(r3, nil) {
		t.Error("FingerprintHeaders does not tell absent, empty and set apart")
	}
	if withHdr(r1, nil) != withHdr(r4, nil) {
		t.Error("FingerprintHeaders covers a header it was not given")
	}
}

func TestCanonicalJSON(t *testing.T) {
	f := idem.CanonicalJSON()
	r := httptest.NewRequest("POST", "/", nil)
	same := []string{`{"a":1,"b":[true,null,"x"]}`, ` { "b" : [ true , null , "x" ] , "a" : 1 } `, "{\"b\":[true,null,\"\\u0078\"],\"a\":1}"}
	for _, s := range same[1:] {
		if f(r, []byte(s)) != f(r, []byte(same[0])) {
			t.Errorf("%s and %s differ", s, same[0])
		}
	}
	for _, s := range []string{`{"a":1.0,"b":[true,null,"x"]}`, `{"a":1,"b":[null,true,"x"]}`, `{"a":1,"b":[true,null,"x"]} {}`, `{"a":1,"b":[true,null,"x"]}!!`, `{"a":1,"b":[true,null,"x"]}A`, `{"a":1`} {
		if f(r, []byte(s)) == f(r, []byte(same[0])) {
			t.Errorf("%s counts as %s", s, same[0])
		}
	}
	if f(r, []byte("not json")) != idem.Fingerprint(r, []byte("not json")) {
		t.Error("a non-JSON body is not fingerprinted byte for byte")
	}
}

// Bodies that mean different things never share a CanonicalJSON
// fingerprint: a duplicate object key (which a decoder would merge, keeping
// the last) and a lone surrogate escape (which a decoder would turn into
// U+FFFD) make a body non-canonicalisable, and it is fingerprinted byte for
// byte.
func TestCanonicalJSONKeepsDistinctBodiesApart(t *testing.T) {
	f := idem.CanonicalJSON()
	r := httptest.NewRequest("POST", "/", nil)
	for _, pair := range [][2]string{
		{`{"amount":1,"amount":1000}`, `{"amount":1000}`},
		{`{"amount":1000,"amount":1}`, `{"amount":1}`},
		{`{"a":{"x":1,"x":2}}`, `{"a":{"x":2}}`},
		{`[{"k":1,"k":1}]`, `[{"k":1}]`},
		{`{"a":1,"\u0061":2}`, `{"a":2}`},
		{`{"s":"\ud800"}`, `{"s":"\ufffd"}`},
		{`{"s":"\ud800"}`, `{"s":"` + "\uFFFD" + `"}`},
		{`{"s":"\udc00x"}`, `{"s":"\ufffdx"}`},
		{`{"s":"\ud800\u0041"}`, `{"s":"\ufffdA"}`},
		{`["\ud800","\udbff"]`, `["\ufffd","\ufffd"]`},
		// Each end of the two halves' ranges, at an odd offset, after
		// other escapes, and a high half followed by something other than
		// a \u escape.
		{`["\udbff"]`, `["\ufffd"]`},
		{` ["\udc00"]`, ` ["\ufffd"]`},
		{`["\udfff"]`, `["\ufffd"]`},
		{`["\n\udc00"]`, `["\n\ufffd"]`},
		{`["\ud800xudc00"]`, `["\ufffdxudc00"]`},
		{`["\ud800\"dc00"]`, `["\ufffd\"dc00"]`},
	} {
		if f(r, []byte(pair[0])) == f(r, []byte(pair[1])) {
			t.Errorf("%s and %s share a fingerprint", pair[0], pair[1])
		}
		if f(r, []byte(pair[0])) != idem.Fingerprint(r, []byte(pair[0])) {
			t.Errorf("%s is not fingerprinted byte for byte", pair[0])
		}
	}
	// Valid surrogate pairs (the lowest and the highest too), the code
	// units on either side of the surrogates, and an escaped backslash
	// before "ud800" are still canonical.
	for _, pair := range [][2]string{
		{`{"s":"\ud83d\ude00"}`, `{"s":"😀"}`},
		{`{"s":"\\ud800", "t":1}`, `{"t":1,"s":"\\ud800"}`},
		{`{"a":{"x":1},"b":{"x":2}}`, `{"b":{"x":2},"a":{"x":1}}`},
		{`["\ud800\udc00", "\udbff\udfff"]`, `["` + "\U00010000" + `","` + "\U0010FFFF" + `"]`},
		{`["\ud7ff", "\ue000"]`, `["` + "\uD7FF" + `","` + "\uE000" + `"]`},
	} {
		if f(r, []byte(pair[0])) != f(r, []byte(pair[1])) {
			t.Errorf("%s and %s differ", pair[0], pair[1])
		}
	}
}

// CanonicalJSONIgnoring leaves out only the named top-level members: a
// webhook whose attempt count changes in the body is the same request, a
// change anywhere else (or in a nested member of the same name) is not.
func TestCanonicalJSONIgnoringDropsOnlyNamedTopLevelMembers(t *testing.T) {
	f := idem.CanonicalJSONIgnoring([]string{"attempt", "sent_at"})
	r := httptest.NewRequest("POST", "/hooks", nil)
	first := `{"id":"evt_1","attempt":1,"sent_at":"10:00","data":{"amount":5}}`
	for _, s := range []string{
		`{"data":{"amount":5},"sent_at":"10:05","attempt":2,"id":"evt_1"}`,
		`{"id":"evt_1","data":{"amount":5}}`,
	} {
		if f(r, []byte(s)) != f(r, []byte(first)) {
			t.Errorf("%s differs from %s", s, first)
		}
	}
	for _, s := range []string{
		`{"id":"evt_1","attempt":1,"sent_at":"10:00","data":{"amount":6}}`,
		`{"id":"evt_1","attempt":1,"sent_at":"10:00","data":{"amount":5,"attempt":2}}`,
		`{"id":"evt_1","Attempt":1,"sent_at":"10:00","data":{"amount":5}}`,
	} {
		if f(r, []byte(s)) == f(r, []byte(first)) {
			t.Errorf("%s counts as %s", s, first)
		}
	}
	if f(r, []byte(`[{"attempt":1}]`)) == f(r, []byte(`[{"attempt":2}]`)) {
		t.Error("members of an object inside an array were dropped")
	}
	if f(r, []byte(`{"attempt":1,"attempt":2}`)) != idem.Fingerprint(r, []byte(`{"attempt":1,"attempt":2}`)) {
		t.Error("a body with a duplicate key is not fingerprinted byte for byte")
	}
	if idem.CanonicalJSONIgnoring(nil)(r, []byte(first)) != idem.CanonicalJSON()(r, []byte(first)) {
		t.Error("with no member named it is not CanonicalJSON")
	}
	h := idem.CanonicalJSONIgnoring([]string{"attempt"}, "X-Event-Type")
	r2 := httptest.NewRequest("POST", "/hooks", nil)
	r2.Header.Set("X-Event-Type", "refund")
	if h(r, []byte(first)) == h(r2, []byte(first)) {
		t.Error("a named header is not covered")
	}
}
