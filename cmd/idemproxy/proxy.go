package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"

	"github.com/idemgo/idem"
)

// proxy is the handler of the proxy's listener: requests that a route
// protects go through that route's middleware to the upstream; every other
// request goes to the upstream untouched.
type proxy struct {
	upstream *httputil.ReverseProxy
	routes   []route
	log      *slog.Logger
}

// route is one protected path pattern with its own middleware settings.
type route struct {
	pattern string // as in routeConfig.Path; "/" matches every path
	methods map[string]bool
	h       http.Handler // the middleware around forward
}

// newProxy returns the proxy to target. Each route gets a middleware of
// its own over store; routes are tried in order, and the first whose
// methods and path match protects the request.
func newProxy(target *url.URL, transport http.RoundTripper, store idem.Store, routes []routeConfig, d defaults, log *slog.Logger) (*proxy, error) {
	p := &proxy{log: log}
	p.upstream = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The upstream sees the Host the client asked for, and the
			// forwarding chain it came with plus this hop, as behind the
			// classic single-host ReverseProxy.
			pr.Out.Host = pr.In.Host
			if xff := pr.In.Header["X-Forwarded-For"]; xff != nil {
				pr.Out.Header["X-Forwarded-For"] = xff
			}
			pr.SetXForwarded()
		},
		Transport:    transport,
		ErrorHandler: p.upstreamError,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	forward := http.HandlerFunc(p.forward)
	for i, rc := range routes {
		mw, err := idem.NewMiddleware(store, rc.options(d)...)
		if err != nil {
			return nil, routeError(i, len(routes), rc, err)
		}
		methods := rc.Methods
		if len(methods) == 0 {
			methods = []string{http.MethodPost, http.MethodPatch}
		}
		rt := route{pattern: rc.Path, methods: make(map[string]bool), h: mw.Handler(forward)}
		for _, m := range methods {
			rt.methods[m] = true
		}
		p.routes = append(p.routes, rt)
	}
	return p, nil
}

func routeError(i, n int, rc routeConfig, err error) error {
	if n == 1 && rc.Path == "/" {
		return err
	}
	return errors.New("-config: route " + strconv.Itoa(i+1) + " (" + rc.Path + "): " + err.Error())
}

// exchangeKey is the context key of the *exchange of a protected request.
type exchangeKey struct{}

// exchange is what forward tells ServeHTTP about one protected request.
type exchange struct {
	route string // the pattern of the route that protects the request

	// abort: the upstream broke off its response; the client's connection
	// must be cut rather than the response ended as if complete.
	abort bool
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := p.match(r)
	if rt == nil {
		p.pass(w, r)
		return
	}
	ex := &exchange{route: rt.pattern}
	rt.h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex)))
	if ex.abort {
		// After the middleware has recorded the outcome: net/http closes
		// the connection without ending the response.
		panic(http.ErrAbortHandler)
	}
}

// routeOf names the route of a protected request for the metrics: its
// -config path pattern ("/" without -config).
func routeOf(r *http.Request) string {
	if ex, ok := r.Context().Value(exchangeKey{}).(*exchange); ok {
		return ex.route
	}
	return ""
}

// match returns the route that protects r, or nil.
func (p *proxy) match(r *http.Request) *route {
	for i := range p.routes {
		rt := &p.routes[i]
		if rt.methods[r.Method] && matchPath(rt.pattern, r.URL.Path) {
			return rt
		}
	}
	return nil
}

// pass sends a request that is not protected upstream as a plain reverse
// proxy would, streaming both ways: the request body is read while the
// response is written, so an upstream can answer a body in parts as they
// come.
func (p *proxy) pass(w http.ResponseWriter, r *http.Request) {
	http.NewResponseController(w).EnableFullDuplex() // HTTP/2 needs none
	p.upstream.ServeHTTP(w, r)
}

// forward sends a protected request upstream. It runs under the
// middleware: as the owner of the key, or for a request without one,
// which the middleware lets through unprotected.
func (p *proxy) forward(w http.ResponseWriter, r *http.Request) {
	if _, keyed := idem.KeyFromContext(r.Context()); !keyed {
		p.pass(w, r)
		return
	}
	ex, _ := r.Context().Value(exchangeKey{}).(*exchange)
	// The upstream call outlives a client that hangs up: its answer is
	// recorded and the client's retry gets it, instead of the key being
	// released while the upstream may have acted.
	r = r.WithContext(context.WithoutCancel(r.Context()))
	hw := &holdWriter{w: w}
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v == http.ErrAbortHandler && hw.wroteHeader && ex != nil {
			// The upstream answered, then broke off its body: it has acted.
			// Send what came and let the middleware record the key as done
			// without a replayable body (the flush makes the response a
			// streamed one), so that a retry is not run again; then
			// ServeHTTP cuts the connection.
			http.NewResponseController(w).Flush()
			ex.abort = true
			p.log.Warn("upstream broke off its response", "method", r.Method, "path", r.URL.Path)
			return
		}
		panic(v) // the middleware releases the key
	}()
	p.upstream.ServeHTTP(hw, r)
}

// holdWriter is the writer ReverseProxy gets for a protected request. It
// keeps ReverseProxy's flushes from reaching the middleware, which would
// send the response as it comes and record it as not replayable: the
// response of a protected request is held until complete (up to the
// response limit) so that it can be replayed, whatever its framing.
// Server-sent events (text/event-stream) are the exception: they are
// passed on as they come.
type holdWriter struct {
	w           http.ResponseWriter
	wroteHeader bool
	stream      bool
}

func (h *holdWriter) Header() http.Header { return h.w.Header() }

func (h *holdWriter) WriteHeader(code int) {
	if code >= 200 && !h.wroteHeader {
		h.wroteHeader = true
		mt, _, _ := mime.ParseMediaType(h.w.Header().Get("Content-Type"))
		h.stream = mt == "text/event-stream"
	}
	h.w.WriteHeader(code)
}

func (h *holdWriter) Write(b []byte) (int, error) {
	if !h.wroteHeader {
		h.WriteHeader(http.StatusOK)
	}
	return h.w.Write(b)
}

// FlushError is what http.ResponseController calls for ReverseProxy.
func (h *holdWriter) FlushError() error {
	if !h.stream {
		return nil
	}
	return http.NewResponseController(h.w).Flush()
}

// Unwrap lets ReverseProxy reach the middleware's writer for the rest
// (hijacking an upgraded connection).
func (h *holdWriter) Unwrap() http.ResponseWriter { return h.w }

// upstreamError answers a request whose upstream call failed before a
// response came: 504 when it timed out, 502 otherwise. Both are 5xx, so
// the middleware releases the key and the client's retry runs again.
func (p *proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	status, title := http.StatusBadGateway, "Bad Gateway"
	detail := "The upstream service could not be reached or closed the connection before answering. Retry the request."
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		status, title = http.StatusGatewayTimeout, "Gateway Timeout"
		detail = "The upstream service did not answer in time. Retry the request."
	}
	level := slog.LevelWarn
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		level = slog.LevelDebug // the client went away
	}
	p.log.Log(r.Context(), level, "upstream request failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", err.Error())
	writeProblem(w, status, title, detail)
}

// writeProblem sends an RFC 9457 problem of type about:blank.
func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	b, _ := json.Marshal(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
}

// scopeFunc returns the scope of a request: a digest of the values of the
// named headers (such as Authorization), so that two principals never share
// a key and no credential is stored or logged in clear. A request with
// none of the headers has the empty scope.
func scopeFunc(headers []string) func(*http.Request) string {
	return func(r *http.Request) string {
		h := sha256.New()
		h.Write([]byte("idemproxy scope v1\x00"))
		found := false
		var n [8]byte
		for _, name := range headers {
			vv := r.Header.Values(name)
			found = found || len(vv) > 0
			h.Write(strconv.AppendInt(n[:0], int64(len(vv)), 10))
			for _, v := range vv {
				h.Write([]byte{0})
				h.Write(strconv.AppendInt(n[:0], int64(len(v)), 10))
				h.Write([]byte{':'})
				h.Write([]byte(v))
			}
			h.Write([]byte{0xff})
		}
		if !found {
			return ""
		}
		return hex.EncodeToString(h.Sum(nil)[:16])
	}
}
