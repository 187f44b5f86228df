package idem

import (
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
		err  error
	}{
		{[]string{"abc"}, "abc", nil},
		{[]string{`"abc"`}, "abc", nil},
		{[]string{" \tabc\t "}, "abc", nil},
		{[]string{`"a\"b"`}, `a"b`, nil},
		{[]string{`"a\\b"`}, `a\b`, nil},
		{[]string{`"\\"`}, `\`, nil},
		{[]string{"!~"}, "!~", nil}, // the ends of visible ASCII
		{[]string{`"!~"`}, "!~", nil},
		{[]string{"abc", `"abc"`}, "abc", nil},
		{nil, "", errKeyMissing},
		{[]string{""}, "", errKeyEmpty},
		{[]string{`""`}, "", errKeyEmpty},
		{[]string{"a,b"}, "", errKeyList},
		{[]string{"a b"}, "", errKeyChars},
		{[]string{"a\x7f"}, "", errKeyChars},
		{[]string{`"a b"`}, "", errKeyChars},
		{[]string{`"a` + "\x01" + `"`}, "", errKeyMalformed},
		{[]string{`"abc`}, "", errKeyMalformed},
		{[]string{`"ab"c"`}, "", errKeyMalformed},
		{[]string{`"a\"`}, "", errKeyMalformed},
		{[]string{`"a\n"`}, "", errKeyMalformed},
		{[]string{`"abc";a=1`}, "", errKeyMalformed},
		{[]string{"a", "b"}, "", errKeyMultiple},
		{[]string{strings.Repeat("x", 11)}, "", errKeyTooLong},
		{[]string{`"` + strings.Repeat("x", 10) + `"`}, strings.Repeat("x", 10), nil},
	} {
		got, err := parseKey(tc.in, 10)
		if got != tc.want || err != tc.err {
			t.Errorf("parseKey(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestScopedKey(t *testing.T) {
	seen := map[string][2]string{}
	pairs := [][2]string{{"", "a|b"}, {"a", "b"}, {"a|", "b"}, {"a", "|b"}, {"a%7C", "b"}, {"a|b", "c"}, {"a", "b|c"}, {"%", "x"}, {"%25", "x"}}
	for _, p := range pairs {
		k := scopedKey(p[0], p[1])
		if other, dup := seen[k]; dup {
			t.Fatalf("scope/key %q and %q share the stored key %q", p, other, k)
		}
		seen[k] = p
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"abc", `"abc"`, `"a\"b"`, "a,b", `"a", "b"`, "", " ", `"`, `"\`, "\xff"} {
		f.Add(s, "abc")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		key, err := parseKey([]string{a, b}, 255)
		if err != nil {
			return
		}
		if key == "" || len(key) > 255 {
			t.Fatalf("accepted key %q", key)
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x21 || key[i] > 0x7e {
				t.Fatalf("accepted key %q with byte %#x", key, key[i])
			}
		}
		// An accepted key, quoted as an sf-string, names itself.
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if again, err := parseKey([]string{quoted}, 255); err != nil || again != key {
			t.Fatalf("key %q quoted as %s parsed as %q, %v", key, quoted, again, err)
		}
	})
}
