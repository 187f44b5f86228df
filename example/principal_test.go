package main

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// The caller is named without its credential: equal credentials name one
// caller, different ones different callers, and the token appears nowhere in
// the name.
func TestPrincipalHidesCredential(t *testing.T) {
	name := func(auth string) string {
		r := httptest.NewRequest("POST", "/payments", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		return scopeOf(r)
	}
	alice, bob := name("Bearer sk_alice_SECRET"), name("Bearer sk_bob_SECRET")
	if alice == bob || alice != name("Bearer sk_alice_SECRET") {
		t.Fatalf("principals %q and %q: want equal for one credential, different for two", alice, bob)
	}
	for _, p := range []string{alice, bob} {
		if strings.Contains(p, "SECRET") || strings.Contains(p, "alice") || strings.Contains(p, "Bearer") {
			t.Fatalf("principal %q shows the credential", p)
		}
	}
	if name("") != "" {
		t.Fatalf("no credential named %q, want the unscoped caller", name(""))
	}
}
