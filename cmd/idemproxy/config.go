package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/idemgo/idem"
)

// routeConfig is one entry of the "routes" list of a -config file. Fields
// left out take the command line's values (-ttl, -lock-ttl, POST and PATCH,
// Idempotency-Key, keys optional).
type routeConfig struct {
	// Path is "/exact", "/subtree/" (every path under it) or either with
	// "*" segments, each matching one non-empty segment
	// ("/accounts/*/charges").
	Path               string   `json:"path"`
	Methods            []string `json:"methods"`
	TTL                duration `json:"ttl"`
	LockTTL            duration `json:"lock_ttl"`
	RequireKey         *bool    `json:"require_key"`
	KeyHeader          string   `json:"key_header"`
	FingerprintHeaders []string `json:"fingerprint_headers"`
}

// fileConfig is a -config file.
type fileConfig struct {
	Routes []routeConfig `json:"routes"`
}

// duration is a time.Duration written as a string ("24h", "90s").
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`a duration is a string such as "30s" or "24h"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %q: want a positive duration", s)
	}
	*d = duration(v)
	return nil
}

// loadConfig reads and checks a -config file.
func loadConfig(path string) (*fileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a misspelt setting must not be ignored
	var c fileConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("-config %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("-config %s: more than one JSON value", path)
	}
	if len(c.Routes) == 0 {
		return nil, fmt.Errorf("-config %s: no routes; without -config POST and PATCH are protected on every path", path)
	}
	for i, r := range c.Routes {
		if !strings.HasPrefix(r.Path, "/") {
			return nil, fmt.Errorf("-config %s: route %d: path %q must start with /", path, i+1, r.Path)
		}
	}
	return &c, nil
}

// defaults are the settings of the command line, which every route starts
// from.
type defaults struct {
	ttl, lockTTL time.Duration
	storeTimeout time.Duration
	maxBody      int64
	maxResponse  int64
	scope        func(*http.Request) string
	logger       *slog.Logger
	hook         func(idem.Event)
}

// options returns the middleware options of route r over the defaults d.
func (r routeConfig) options(d defaults) []idem.Option {
	ttl, lockTTL := d.ttl, d.lockTTL
	if r.TTL != 0 {
		ttl = time.Duration(r.TTL)
	}
	if r.LockTTL != 0 {
		lockTTL = time.Duration(r.LockTTL)
	}
	opts := []idem.Option{
		idem.WithTTL(ttl),
		idem.WithLockTTL(lockTTL),
		idem.WithMaxBodySize(d.maxBody),
		idem.WithMaxResponseSize(d.maxResponse),
	}
	if d.storeTimeout != 0 {
		// Unset, idem's default applies: 2s, or a third of a shorter lock
		// TTL. Set, it must fit in a third of every route's lock TTL.
		opts = append(opts, idem.WithStoreTimeout(d.storeTimeout))
	}
	if d.scope != nil {
		opts = append(opts, idem.WithScope(d.scope))
	}
	if d.hook != nil {
		opts = append(opts, idem.WithHook(d.hook))
	}
	if d.logger != nil {
		opts = append(opts, idem.WithLogger(d.logger))
	}
	if len(r.Methods) > 0 {
		methods := make([]string, len(r.Methods))
		for i, m := range r.Methods {
			methods[i] = strings.ToUpper(m)
		}
		opts = append(opts, idem.WithMethods(methods...))
	}
	if r.RequireKey != nil && *r.RequireKey {
		opts = append(opts, idem.WithRequiredKey())
	}
	if r.KeyHeader != "" {
		opts = append(opts, idem.WithHeader(r.KeyHeader))
	}
	if len(r.FingerprintHeaders) > 0 {
		opts = append(opts, idem.WithFingerprint(idem.FingerprintHeaders(r.FingerprintHeaders...)))
	}
	return opts
}

// matchPath reports whether path falls under the route's pattern.
func matchPath(pattern, path string) bool {
	subtree := strings.HasSuffix(pattern, "/")
	ps := strings.Split(strings.Trim(pattern, "/"), "/")
	xs := strings.Split(strings.Trim(path, "/"), "/")
	if pattern == "/" {
		return true
	}
	if len(xs) < len(ps) || (!subtree && len(xs) != len(ps)) {
		return false
	}
	if !subtree && strings.HasSuffix(path, "/") != strings.HasSuffix(pattern, "/") {
		return false
	}
	for i, p := range ps {
		if p == "*" {
			if xs[i] == "" {
				return false
			}
			continue
		}
		if p != xs[i] {
			return false
		}
	}
	if subtree && len(xs) == len(ps) && !strings.HasSuffix(path, "/") {
		return false // "/payments/" covers "/payments/…", not "/payments"
	}
	return true
}
