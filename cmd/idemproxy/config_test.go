package main

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMatchPath(t *testing.T) {
	for _, c := range []struct {
		pattern, path string
		want          bool
	}{
		{"/", "/anything/at/all", true},
		{"/payments", "/payments", true},
		{"/payments", "/payments/", false},
		{"/payments", "/payments/1", false},
		{"/payments", "/paymentsx", false},
		{"/payments/", "/payments/1", true},
		{"/payments/", "/payments/1/refunds", true},
		{"/payments/", "/payments/", true},
		{"/payments/", "/payments", false},
		{"/accounts/*/charges", "/accounts/a1/charges", true},
		{"/accounts/*/charges", "/accounts//charges", false},
		{"/accounts/*/charges", "/accounts/a1/charges/x", false},
		{"/accounts/*/", "/accounts/a1/charges/x", true},
		{"/accounts/*/", "/accounts/a1", false},
	} {
		if got := matchPath(c.pattern, c.path); got != c.want {
			t.Errorf("matchPath(%q, %q) = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
}

// The scope is a digest: equal for equal credentials, different for
// different ones, never containing them, and empty without the headers.
func TestScopeIsDigestOfHeaders(t *testing.T) {
	scope := scopeFunc([]string{"Authorization", "X-Tenant"})
	req := func(kv ...string) string {
		r := httptest.NewRequest("POST", "/", nil)
		for i := 0; i < len(kv); i += 2 {
			r.Header.Add(kv[i], kv[i+1])
		}
		return scope(r)
	}
	a := req("Authorization", "Bearer alice-secret")
	if a == "" || strings.Contains(a, "alice") || a != req("Authorization", "Bearer alice-secret") {
		t.Fatalf("scope of alice: %q", a)
	}
	distinct := map[string]bool{a: true}
	for _, kv := range [][]string{
		{"Authorization", "Bearer bob"},
		{"X-Tenant", "Bearer alice-secret"},
		{"Authorization", "Bearer alice-secret", "X-Tenant", "t1"},
		{"Authorization", "Bearer alice-secret", "Authorization", ""},
		{"Authorization", ""},
	} {
		s := req(kv...)
		if distinct[s] {
			t.Errorf("headers %q share a scope with another set", kv)
		}
		distinct[s] = true
	}
	if s := req(); s != "" {
		t.Fatalf("no headers: scope %q, want empty", s)
	}
}
