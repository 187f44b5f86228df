package idem

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
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
// same request. Numbers are compared as written (1 and 1.0 differ); strings
// by the text they stand for ("\u0078" and "x" are the same). A body that is
// not valid JSON or not valid UTF-8, or that a JSON decoder would read as
// another body's meaning, is fingerprinted byte for byte: an object with a
// duplicate key ({"amount":1,"amount":1000} is not {"amount":1000}) and a
// string with an unpaired surrogate escape ("\ud800" is not "\ufffd").
// Distinct bodies thus never share a fingerprint.
// The named headers are covered as in FingerprintHeaders.
//
// CanonicalJSON decodes every keyed body with encoding/json, which costs
// more than the default; use it where clients re-encode their payloads on
// retry.
func CanonicalJSON(headers ...string) FingerprintFunc {
	canon := canonicalNames(headers)
	return func(r *http.Request, body []byte) string {
		if c, ok := canonicalizeJSON(body, nil); ok {
			body = c
		}
		return fingerprint(r, canon, body)
	}
}

// CanonicalJSONIgnoring returns a FingerprintFunc like CanonicalJSON that
// also leaves out the named members of a top-level JSON object: for webhook
// receivers whose senders put what changes on every attempt (an attempt
// count, a send time, a signature) into the body itself. A body that
// differs from another only in those members is the same request; a body
// that is not a JSON object, or that CanonicalJSON would fingerprint byte for
// byte, is fingerprinted as CanonicalJSON does. Member names are matched
// exactly, at the top level only. The named headers are covered as in
// FingerprintHeaders.
//
// Signature and timestamp headers need no option: headers count only when
// named (FingerprintHeaders), so a fingerprint never covers them.
func CanonicalJSONIgnoring(members []string, headers ...string) FingerprintFunc {
	canon := canonicalNames(headers)
	drop := append([]string(nil), members...)
	return func(r *http.Request, body []byte) string {
		if c, ok := canonicalizeJSON(body, drop); ok {
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

// canonicalizeJSON returns body in canonical form, without the top-level
// members named in drop if body is an object, or false when body is
// not a single valid JSON value, or holds what a decoder would merge with
// another body: a duplicate key in an object ({"a":1,"a":2} decodes as
// {"a":2}), or an escaped lone surrogate ("\ud800" decodes as "\ufffd").
// Canonical forms never hold either, so such a body, fingerprinted byte for
// byte, can never share a fingerprint with a canonical one.
func canonicalizeJSON(body []byte, drop []string) ([]byte, bool) {
	if !utf8.Valid(body) {
		return nil, false // decoding would replace invalid bytes, merging bodies
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	v, err := decodeStrict(dec)
	if err != nil {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // anything after the value, valid or not
	}
	if hasLoneSurrogate(body) {
		return nil, false
	}
	if obj, ok := v.(map[string]any); ok {
		for _, m := range drop {
			delete(obj, m)
		}
	}
	var out bytes.Buffer
	writeCanonical(&out, v)
	return out.Bytes(), true
}

var errDuplicateKey = errors.New("duplicate object key")

// decodeStrict decodes the next JSON value from dec as Decode into an any
// would, but refuses an object that names a key twice.
func decodeStrict(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		obj := make(map[string]any)
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := k.(string) // the decoder returns only strings here
			if _, dup := obj[key]; dup {
				return nil, errDuplicateKey
			}
			if obj[key], err = decodeStrict(dec); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return obj, err
	case json.Delim('['):
		arr := []any{}
		for dec.More() {
			v, err := decodeStrict(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ']'
		return arr, err
	}
	return tok, nil
}

// hasLoneSurrogate reports whether a \u escape in body, which is valid
// JSON, names a UTF-16 surrogate that is not half of a high-low pair. In
// valid JSON a backslash occurs only inside strings and starts an escape,
// a \u escape has four hex digits, and a closing quote follows it: so
// scanning escapes is enough, and every index below is in range.
func hasLoneSurrogate(body []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(body[i:], '\\')
		if j < 0 {
			return false
		}
		i += j
		next := 2 // past \", \\, \n ... or the \u of an escape
		if body[i+1] == 'u' {
			switch r := escapedUnit(body, i); {
			case r >= 0xDC00 && r <= 0xDFFF:
				return true // low half first
			case r >= 0xD800 && r <= 0xDBFF:
				if body[i+6] != '\\' || body[i+7] != 'u' {
					return true
				}
				if low := escapedUnit(body, i+6); low < 0xDC00 || low > 0xDFFF {
					return true
				}
				next = 8 // past the low half's \u too
			}
		}
		i += next
	}
}

// escapedUnit returns the code unit of the \uXXXX escape at body[i:], in
// valid JSON.
func escapedUnit(body []byte, i int) rune {
	var u [2]byte
	hex.Decode(u[:], body[i+2:i+6]) // four hex digits: it cannot fail
	return rune(u[0])<<8 | rune(u[1])
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
