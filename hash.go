package idem

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"unicode/utf8"
)

// FingerprintFunc returns the fingerprint of a keyed request: a string that
// is equal for two requests exactly when the second is a faithful retry of
// the first. body is the whole request body, already read; the function must
// not read r.Body. A request whose fingerprint differs from the stored one
// is answered 422.
type FingerprintFunc func(r *http.Request, body []byte) string

// Fingerprint is the default FingerprintFunc: the hex SHA-256 over the
// method, the escaped path with its query, and the body.
func Fingerprint(r *http.Request, body []byte) string {
	return fingerprint(r, nil, body)
}

// FingerprintHeaders returns a FingerprintFunc that covers the named request
// headers as well as what Fingerprint covers, for APIs where a header
// changes the meaning of a request (for example a version header). Header
// names are case-insensitive; an absent header and an empty one differ.
func FingerprintHeaders(names ...string) FingerprintFunc {
	canon := canonicalNames(names)
	return func(r *http.Request, body []byte) string {
		return fingerprint(r, canon, body)
	}
}

// CanonicalJSON returns a FingerprintFunc that fingerprints a JSON body by
// its meaning rather than its bytes: object keys are sorted and whitespace
// between tokens is dropped, so {"a":1, "b":2} and {"b":2,"a":1} are the
// same request. Numbers and strings are compared as written (1 and 1.0
// differ). A body that is not valid JSON, or not valid UTF-8, is
// fingerprinted byte for byte.
// The named headers are covered as in FingerprintHeaders.
//
// CanonicalJSON decodes every keyed body with encoding/json, which costs
// more than the default; use it where clients re-encode their payloads on
// retry.
func CanonicalJSON(headers ...string) FingerprintFunc {
	canon := canonicalNames(headers)
	return func(r *http.Request, body []byte) string {
		if c, ok := canonicalizeJSON(body); ok {
			body = c
		}
		return fingerprint(r, canon, body)
	}
}

func canonicalNames(names []string) []string {
	canon := make([]string, len(names))
	for i, n := range names {
		canon[i] = http.CanonicalHeaderKey(n)
	}
	sort.Strings(canon)
	return canon
}

type hasher struct {
	h   hash.Hash
	buf []byte
}

var hasherPool = sync.Pool{New: func() any {
	return &hasher{h: sha256.New(), buf: make([]byte, 0, 512)}
}}

// fingerprint hashes method, path, query, the given headers and the body,
// each length-prefixed so that no two different requests share an input.
func fingerprint(r *http.Request, headers []string, body []byte) string {
	hs := hasherPool.Get().(*hasher)
	b := hs.buf[:0]
	b = appendField(b, r.Method)
	b = appendField(b, r.URL.EscapedPath())
	b = appendField(b, r.URL.RawQuery)
	for _, name := range headers {
		vv, ok := r.Header[name]
		b = appendField(b, name)
		if !ok {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(vv)))
		for _, v := range vv {
			b = appendField(b, v)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(body)))
	hs.h.Reset()
	hs.h.Write(b)
	hs.h.Write(body)
	var sum [sha256.Size]byte
	hs.h.Sum(sum[:0])
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	if cap(b) <= 64<<10 {
		hs.buf = b
		hasherPool.Put(hs)
	}
	return string(out[:])
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// canonicalizeJSON returns body in canonical form, or false when body is
// not a single valid JSON value.
func canonicalizeJSON(body []byte) ([]byte, bool) {
	if !utf8.Valid(body) {
		return nil, false // decoding would replace invalid bytes, merging bodies
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // anything after the value, valid or not
	}
	var out bytes.Buffer
	out.Grow(len(body))
	writeCanonical(&out, v)
	return out.Bytes(), true
}

func writeCanonical(out *bytes.Buffer, v any) {
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				out.WriteByte(',')
			}
			writeJSONString(out, k)
			out.WriteByte(':')
			writeCanonical(out, v[k])
		}
		out.WriteByte('}')
	case []any:
		out.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				out.WriteByte(',')
			}
			writeCanonical(out, e)
		}
		out.WriteByte(']')
	case string:
		writeJSONString(out, v)
	case json.Number:
		out.WriteString(string(v))
	case bool:
		out.WriteString(strconv.FormatBool(v))
	case nil:
		out.WriteString("null")
	}
}

func writeJSONString(out *bytes.Buffer, s string) {
	b, _ := json.Marshal(s) // a string always marshals
	out.Write(b)
}
