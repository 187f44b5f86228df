// Package idemclient is the client side of idempotency keys: an
// http.RoundTripper that gives every POST and PATCH request an
// Idempotency-Key and retries it, with the same key and body, until it gets
// an answer worth keeping.
//
//	client := idemclient.NewClient(nil) // defaults: 5 attempts in 30s at most
//	resp, err := client.Post(url, "application/json", body)
//
// A retried request with the same key is safe behind a server that honours
// keys (such as the idem middleware): while the server can record what it
// did, it runs the request at most once and answers every retry with the
// first answer. The transport retries:
//
//   - network errors (the request may or may not have reached the server:
//     the key makes the retry safe either way);
//   - 409 responses whose problem type is key-in-use (the first attempt is
//     still running on the server: waiting, then retrying, gets its answer);
//   - 5xx responses, 503 included, except the idem middleware's 503
//     response-not-recorded: the request ran but its answer could not be
//     stored, and a retry after the key's lease would run it again. That
//     answer goes to the caller, who knows whether running twice is
//     acceptable (for example because the payment provider dedupes by the
//     same key).
//
// It never retries other 4xx responses (400, 413, 422, a 409 of any other
// type, 429...): sending the same request again would get the same answer.
// Pauses between attempts grow exponentially up to a cap, with full jitter,
// and are at least as long as the server's Retry-After. Retrying stops at
// the attempt limit, when the request's context ends, and when the next
// attempt would start after the time budget; the caller then gets the last
// response (or error).
package idemclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	mathrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Defaults of the Transport's settings.
const (
	DefaultHeader      = "Idempotency-Key"
	DefaultMaxAttempts = 5
	DefaultMaxBodySize = 1 << 20
	DefaultBaseDelay   = 100 * time.Millisecond
	DefaultMaxDelay    = 5 * time.Second
	DefaultBudget      = 30 * time.Second
)

// KeyInUseType is the problem type of the idem middleware's 409 answer to a
// duplicate of a request that is still running. It is the only 409 the
// transport retries.
const KeyInUseType = "https://github.com/idemgo/idem#problem-key-in-use"

// NotRecordedType is the problem type of the idem middleware's 503 answer
// when the request ran but its response could not be recorded. The
// transport never retries it.
const NotRecordedType = "https://github.com/idemgo/idem#problem-response-not-recorded"

// Transport is an http.RoundTripper that adds an idempotency key to
// requests of the protected methods that lack one and retries them. The
// zero value is ready to use with the defaults; set fields before the first
// request and do not change them afterwards. A Transport is safe for
// concurrent use.
//
// Requests of other methods go to Base unchanged and are never retried.
type Transport struct {
	// Base sends each attempt (default http.DefaultTransport).
	Base http.RoundTripper

	// Header is the name of the key header (default DefaultHeader,
	// "Idempotency-Key").
	Header string

	// Methods are the methods given a key and retried (default POST and
	// PATCH). A request of these methods that already carries the header
	// keeps its key and is retried too.
	Methods []string

	// NewKey returns a new key (default: 128 random bits from crypto/rand,
	// as 32 lower-case hex digits). If it fails, RoundTrip returns its error
	// and sends nothing.
	NewKey func() (string, error)

	// MaxAttempts bounds the attempts of one request, the first included
	// (default DefaultMaxAttempts, 5). 1 turns retrying off.
	MaxAttempts int

	// MaxBodySize bounds the body kept in memory so that it can be sent
	// again (default DefaultMaxBodySize, 1 MiB). It applies only to
	// requests without GetBody (http.NewRequest sets GetBody for bytes,
	// strings and bytes.Buffer readers). A larger body is sent once, as a
	// stream, and the request is not retried.
	MaxBodySize int64

	// BaseDelay and MaxDelay shape the pauses between attempts (defaults
	// DefaultBaseDelay, 100ms, and DefaultMaxDelay, 5s): before attempt
	// n+1 the transport waits a random time between 0 and
	// min(MaxDelay, BaseDelay·2^(n-1)), or the server's Retry-After if that
	// is longer.
	BaseDelay, MaxDelay time.Duration

	// Budget bounds the time from the first attempt to the start of the
	// last one (default DefaultBudget, 30s): no pause ends after it. It
	// does not cut an attempt short; use http.Client.Timeout or the
	// request's context for that.
	Budget time.Duration

	// OnAttempt, if set, is called after every attempt, on the caller's
	// goroutine, before the pause that may follow. It must not read or
	// close the attempt's response body.
	OnAttempt func(Attempt)
}

// Attempt describes one attempt of a request, for Transport.OnAttempt.
type Attempt struct {
	// Request is the request as sent, with its key header.
	Request *http.Request
	// Number counts the attempts of one request from 1.
	Number int
	// Key is the idempotency key sent; the same on every attempt.
	Key string
	// Response is the attempt's response, or nil when Err is set.
	Response *http.Response
	// Err is the attempt's error, or nil when Response is set.
	Err error
	// Retry reports whether another attempt follows, after Wait.
	Retry bool
	// Wait is the pause before the next attempt (zero when Retry is false).
	Wait time.Duration
}

// NewClient returns an *http.Client whose transport is t (a Transport with
// the defaults if t is nil).
func NewClient(t *Transport) *http.Client {
	if t == nil {
		t = &Transport{}
	}
	return &http.Client{Transport: t}
}

// NewKey returns 128 random bits from crypto/rand as 32 lower-case hex
// digits: the default key generator.
func NewKey() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", errors.New("idemclient: no random key: " + err.Error())
	}
	return hex.EncodeToString(b[:]), nil
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

func (t *Transport) header() string {
	if t.Header != "" {
		return t.Header
	}
	return DefaultHeader
}

func (t *Transport) protects(method string) bool {
	if t.Methods == nil {
		return method == http.MethodPost || method == http.MethodPatch
	}
	for _, m := range t.Methods {
		if m == method {
			return true
		}
	}
	return false
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// RoundTrip sends req, with a key, until an attempt's answer is final (see
// the package documentation), and returns that answer. It does not modify
// req; like every RoundTripper it closes req.Body.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.protects(req.Method) {
		return t.base().RoundTrip(req)
	}
	// Every attempt is a copy of req with the key set.
	header := t.header()
	key := req.Header.Get(header)
	if key == "" {
		newKey := t.NewKey
		if newKey == nil {
			newKey = NewKey
		}
		k, err := newKey()
		if err != nil {
			closeBody(req)
			return nil, err
		}
		key = k
	}
	body, err := t.newBody(req)
	if err != nil {
		return nil, err
	}
	maxAttempts := orDefault(t.MaxAttempts, DefaultMaxAttempts)
	if !body.replayable {
		maxAttempts = 1
	}
	ctx := req.Context()
	deadline := time.Now().Add(orDefault(t.Budget, DefaultBudget))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var timer *time.Timer
	for n := 1; ; n++ {
		r := req.Clone(ctx)
		if r.Header == nil {
			r.Header = make(http.Header, 1) // http.Transport sends a nil map as empty
		}
		r.Header.Set(header, key)
		if r.Body, err = body.next(n); err != nil {
			return nil, err
		}
		if body.kept != nil {
			r.GetBody = body.get
		}
		resp, err := t.base().RoundTrip(r)
		wait, retry := t.decide(ctx, resp, err, n)
		if retry && (n >= maxAttempts || time.Now().Add(wait).After(deadline)) {
			retry = false
		}
		if !retry {
			wait = 0
		}
		if t.OnAttempt != nil {
			t.OnAttempt(Attempt{Request: r, Number: n, Key: key, Response: resp, Err: err, Retry: retry, Wait: wait})
		}
		if !retry {
			return resp, err
		}
		if resp != nil {
			drain(resp)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// decide reports whether the answer of attempt n (resp or err) is worth
// another attempt, and how long to wait first. A 409 key-in-use's body is
// read to learn its type and put back, as is a 503's.
func (t *Transport) decide(ctx context.Context, resp *http.Response, err error, n int) (time.Duration, bool) {
	if ctx.Err() != nil {
		return 0, false
	}
	backoff := t.backoff(n)
	if err != nil {
		return backoff, true
	}
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable && problemType(resp) == NotRecordedType:
		return 0, false
	case resp.StatusCode >= 500:
	case resp.StatusCode == http.StatusConflict && problemType(resp) == KeyInUseType:
	default:
		return 0, false
	}
	if ra, ok := retryAfter(resp.Header.Get("Retry-After")); ok && ra > backoff {
		return ra, true
	}
	return backoff, true
}

// backoff returns the pause after attempt n: full jitter over
// min(MaxDelay, BaseDelay·2^(n-1)).
func (t *Transport) backoff(n int) time.Duration {
	base := orDefault(t.BaseDelay, DefaultBaseDelay)
	ceiling := orDefault(t.MaxDelay, DefaultMaxDelay)
	d := base
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return time.Duration(mathrand.Int64N(int64(d) + 1))
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP-date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
		return time.Duration(s) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(time.Until(at), 0), true
	}
	return 0, false
}

// maxProblem bounds what is read of a problem body to learn its type.
const maxProblem = 16 << 10

// problemType returns the type of resp's RFC 9457 problem body, or "". It
// reads the start of the body and puts it back, so that a caller who gets
// resp reads the whole body.
func problemType(resp *http.Response) string {
	ct := resp.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/problem+json") || resp.Body == nil {
		return ""
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, maxProblem))
	resp.Body = &rebody{Reader: io.MultiReader(bytes.NewReader(head), resp.Body), c: resp.Body}
	if err != nil {
		return ""
	}
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(head, &p) != nil {
		return ""
	}
	return p.Type
}

// rebody is a body whose start was read and put back.
type rebody struct {
	io.Reader
	c io.Closer
}

func (b *rebody) Close() error { return b.c.Close() }

// drain reads a little of a response that is dropped, so that its
// connection can be used again, and closes it.
func drain(resp *http.Response) {
	if resp.Body != nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// body hands each attempt the request body.
type body struct {
	req        *http.Request
	kept       []byte    // the body, read once, when req has no GetBody
	first      io.Reader // the body of a request that is sent once
	replayable bool
}

// newBody prepares the body of req for several attempts: through GetBody,
// or by keeping it in memory if it is at most MaxBodySize.
func (t *Transport) newBody(req *http.Request) (*body, error) {
	b := &body{req: req, replayable: true}
	if req.Body == nil || req.Body == http.NoBody || req.GetBody != nil {
		return b, nil
	}
	limit := orDefault(t.MaxBodySize, DefaultMaxBodySize)
	kept, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		req.Body.Close()
		return nil, err
	}
	if int64(len(kept)) > limit {
		// Too large to keep: one attempt, streaming the rest.
		b.first, b.replayable = io.MultiReader(bytes.NewReader(kept), req.Body), false
		return b, nil
	}
	req.Body.Close()
	b.kept = kept
	return b, nil
}

// get returns a reader of the kept body, as GetBody does.
func (b *body) get() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.kept)), nil
}

// next returns the body of attempt n.
func (b *body) next(n int) (io.ReadCloser, error) {
	req := b.req
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		return req.Body, nil
	case b.first != nil:
		return &rebody{Reader: b.first, c: req.Body}, nil
	case b.kept != nil:
		return io.NopCloser(bytes.NewReader(b.kept)), nil
	case n == 1:
		return req.Body, nil
	}
	rc, err := req.GetBody()
	if err != nil {
		return nil, errors.New("idemclient: GetBody: " + err.Error())
	}
	return rc, nil
}
