package idem

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// keyError says why an Idempotency-Key header was refused. Its text is
// meant for clients: it goes into the problem response's detail.
type keyError string

func (e keyError) Error() string { return string(e) }

const (
	errKeyMissing   keyError = "The request has no Idempotency-Key header"
	errKeyEmpty     keyError = "The Idempotency-Key header is empty"
	errKeyTooLong   keyError = "The Idempotency-Key is longer than the limit of this endpoint"
	errKeyChars     keyError = "The Idempotency-Key may hold only visible ASCII characters (no spaces or control characters)"
	errKeyMalformed keyError = "The Idempotency-Key is not a valid structured-field string: use the bare form (abc) or the quoted form (\"abc\") without parameters"
	errKeyList      keyError = "The Idempotency-Key holds a comma: send one key, not a list"
	errKeyMultiple  keyError = "The request has several Idempotency-Key headers with different values"
)

// keyErrors lists every keyError, so that their problems can be encoded
// once per middleware.
var keyErrors = []keyError{errKeyMissing, errKeyEmpty, errKeyTooLong, errKeyChars, errKeyMalformed, errKeyList, errKeyMultiple}

// parseKey returns the key named by the values of the key header. It accepts
// the bare form (abc) and the RFC 8941 sf-string form ("abc"); both name the
// same key. Several header lines must all name the same key.
func parseKey(values []string, maxLen int) (string, error) {
	if len(values) == 0 {
		return "", errKeyMissing
	}
	key, err := parseKeyValue(values[0], maxLen)
	if err != nil {
		return "", err
	}
	for _, v := range values[1:] {
		other, err := parseKeyValue(v, maxLen)
		if err != nil {
			return "", err
		}
		if other != key {
			return "", errKeyMultiple
		}
	}
	return key, nil
}

func parseKeyValue(v string, maxLen int) (string, error) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return "", errKeyEmpty
	}
	var key string
	if v[0] == '"' {
		k, err := parseSFString(v)
		if err != nil {
			return "", err
		}
		key = k
	} else {
		for i := 0; i < len(v); i++ {
			switch c := v[i]; {
			case c == ',':
				return "", errKeyList
			case c < 0x21 || c > 0x7e:
				return "", errKeyChars
			}
		}
		key = v
	}
	switch {
	case key == "":
		return "", errKeyEmpty
	case len(key) > maxLen:
		return "", errKeyTooLong
	}
	return key, nil
}

// parseSFString parses v, which starts with a double quote, as an RFC 8941
// sf-string that must fill the whole value. Escapes (\" and \\) are undone.
// Characters outside visible ASCII are refused even where sf-string allows
// them (space), because keys are visible ASCII.
func parseSFString(v string) (string, error) {
	var b strings.Builder
	escaped := false
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			if i+1 >= len(v) || (v[i+1] != '"' && v[i+1] != '\\') {
				return "", errKeyMalformed
			}
			if !escaped {
				escaped = true
				b.WriteString(v[1:i])
			}
			i++
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", errKeyMalformed
			}
			if escaped {
				return b.String(), nil
			}
			return v[1:i], nil
		case c < 0x20 || c > 0x7e: // not in an sf-string
			return "", errKeyMalformed
		case c == ' ': // in an sf-string, not in a key
			return "", errKeyChars
		default:
			if escaped {
				b.WriteByte(c)
			}
		}
	}
	return "", errKeyMalformed
}

// scopedKey names the record of an HTTP request's key in the store: the
// digest of its scope (see scopeDigest), '|', then the key as the client
// sent it. The digest has a fixed length and holds no '|', so the first '|'
// always separates the two and no two scope/key pairs meet; and a scope
// taken from a credential (an Authorization header) is never stored, so a
// key dump, MONITOR or backup of the store does not yield it.
func scopedKey(scope, key string) string {
	return scopeDigest(scope) + "|" + key
}

// unscopedDigest is scopeDigest(""), the digest of every request of a
// middleware without WithScope.
var unscopedDigest = digestScope("")

// scopeDigest returns the first 16 bytes of the SHA-256 of scope, in 32
// lowercase hex digits.
func scopeDigest(scope string) string {
	if scope == "" {
		return unscopedDigest
	}
	return digestScope(scope)
}

func digestScope(scope string) string {
	sum := sha256.Sum256([]byte(scope))
	return hex.EncodeToString(sum[:16])
}
