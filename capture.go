package idem

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// capture is the ResponseWriter the handler of a claimed request writes to.
//
// The handler works on the real header map, as under net/http: it sees what
// outer handlers set and extends it. Its status and body are held until the
// response is recorded and are then handed to net/http in the calls the
// handler made (the status, the header map as it was at that moment, each
// write as it was written), so that net/http frames, sniffs and chunks the
// response as it would have without the middleware. The capture answers the
// handler as net/http does: 1xx responses go out at once, writes after a 204
// or 304 fail with http.ErrBodyNotAllowed, writes beyond a declared
// Content-Length with http.ErrContentLength.
//
// When the handler flushes, hijacks, or writes more than the response limit,
// what was held is sent and the capture becomes a pass-through
// ("streaming"); the record then keeps the status and headers only.
type capture struct {
	w   http.ResponseWriter
	h   http.Header // w's header map, shared with the handler and outer handlers
	max int

	outer http.Header // h as the handler got it (values in arena)
	sent  http.Header // h when the handler wrote its status (values in arena)
	arena []string

	buf    bytes.Buffer
	pieces []int // the lengths of the handler's writes, in order

	status      int
	wroteHeader bool
	implicit    bool // the status was not written by the handler but by its first write
	streaming   bool

	contentLength int64 // declared when the status was written, or -1
	written       int64 // body bytes written, refused ones included, as net/http counts them
	refused       bool  // a write went beyond contentLength
	refusedByte   byte  // the first byte of the first refused write

	resp Response // reused to encode the record
}

var capturePool = sync.Pool{New: func() any { return new(capture) }}

func newCapture(w http.ResponseWriter, max int) *capture {
	c := capturePool.Get().(*capture)
	c.w, c.max, c.h, c.contentLength = w, max, w.Header(), -1
	c.outer = c.snapshot(c.outer, c.h)
	return c
}

// free returns c to the pool. Buffers that grew large are dropped rather
// than kept alive.
func (c *capture) free() {
	buf, pieces, arena := c.buf, c.pieces, c.arena
	outer, sent, resp := c.outer, c.sent, c.resp
	*c = capture{}
	if buf.Cap() <= 64<<10 {
		buf.Reset()
		c.buf = buf
	}
	if cap(pieces) <= 1024 {
		c.pieces = pieces[:0]
	}
	if cap(arena) <= 256 {
		clear(arena[:cap(arena)]) // keep no header values alive
		c.arena = arena[:0]
	}
	c.outer, c.sent = reuseHeader(outer), reuseHeader(sent)
	c.resp.Header, c.resp.Added, c.resp.Trailer = reuseHeader(resp.Header), reuseHeader(resp.Added), reuseHeader(resp.Trailer)
	if cap(resp.Removed) <= 32 {
		clear(resp.Removed)
		c.resp.Removed = resp.Removed[:0]
	}
	capturePool.Put(c)
}

// reuseHeader returns h emptied, or nil when it is too large to keep.
func reuseHeader(h http.Header) http.Header {
	if len(h) > 32 {
		return nil
	}
	clear(h)
	return h
}

// snapshot copies src into dst, which is empty (free empties the maps it
// keeps) or nil (then allocated), its values into the arena, so that later
// changes to src's slices do not reach the copy.
func (c *capture) snapshot(dst, src http.Header) http.Header {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = make(http.Header, len(src))
	}
	for k, vv := range src {
		if vv == nil {
			dst[k] = nil
			continue
		}
		start := len(c.arena)
		c.arena = append(c.arena, vv...)
		dst[k] = c.arena[start:len(c.arena):len(c.arena)]
	}
	return dst
}

// Header returns the real header map, before and after WriteHeader, as
// net/http does. Changes made after WriteHeader are not sent, except
// trailers.
func (c *capture) Header() http.Header { return c.h }

func (c *capture) WriteHeader(code int) {
	if c.streaming {
		c.w.WriteHeader(code)
		return
	}
	if c.wroteHeader {
		return // net/http logs a superfluous call and ignores it
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code)) // as net/http does
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational responses go out at once, as net/http sends them,
		// with the header map as it is; they are not recorded.
		c.w.WriteHeader(code)
		return
	}
	c.wroteHeader, c.status = true, code
	c.sent = c.snapshot(c.sent, c.h)
	if cl := c.h["Content-Length"]; len(cl) > 0 && cl[0] != "" {
		if v, err := strconv.ParseInt(cl[0], 10, 64); err == nil && v >= 0 {
			c.contentLength = v
		} else {
			c.h.Del("Content-Length") // as net/http does
		}
	}
}

// accept runs the checks net/http makes before it takes n bytes of body. It
// returns false with the result of the write when the bytes are not taken.
func (c *capture) accept(n int, first byte) (bool, error) {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
		c.implicit = true
	}
	if n == 0 {
		return false, nil
	}
	if !bodyAllowed(c.status) {
		return false, http.ErrBodyNotAllowed
	}
	c.written += int64(n)
	if c.contentLength != -1 && c.written > c.contentLength {
		if !c.refused {
			c.refused, c.refusedByte = true, first
		}
		return false, http.ErrContentLength
	}
	return true, nil
}

func (c *capture) Write(p []byte) (int, error) {
	if c.streaming {
		return c.w.Write(p)
	}
	var first byte
	if len(p) > 0 {
		first = p[0]
	}
	if ok, err := c.accept(len(p), first); !ok {
		return 0, err
	}
	if c.buf.Len()+len(p) > c.max {
		if err := c.stream(); err != nil {
			return 0, err
		}
		return c.w.Write(p)
	}
	c.pieces = append(c.pieces, len(p))
	return c.buf.Write(p)
}

// WriteString lets io.WriteString skip a conversion.
func (c *capture) WriteString(s string) (int, error) {
	if c.streaming {
		return io.WriteString(c.w, s)
	}
	var first byte
	if len(s) > 0 {
		first = s[0]
	}
	if ok, err := c.accept(len(s), first); !ok {
		return 0, err
	}
	if c.buf.Len()+len(s) > c.max {
		if err := c.stream(); err != nil {
			return 0, err
		}
		return io.WriteString(c.w, s)
	}
	c.pieces = append(c.pieces, len(s))
	return c.buf.WriteString(s)
}

// stream sends what was captured and makes c a pass-through.
func (c *capture) stream() error {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	c.streaming = true
	return c.send()
}

// send hands net/http the status, the header map as it was when the
// handler wrote the status, and the handler's writes, one call each. The
// header map is then left as the handler left it, for net/http to read the
// trailers from when the handler returns.
func (c *capture) send() error {
	var final http.Header
	if !sameHeader(c.h, c.sent) {
		final = make(http.Header, len(c.h))
		for k, vv := range c.h {
			final[k] = vv
		}
		clear(c.h)
		for k, vv := range c.sent {
			c.h[k] = slices.Clone(vv) // the arena's slices never leave the capture
		}
	}
	if !c.implicit || len(c.pieces) == 0 {
		// A status the handler left to its first write is left to it here
		// too: some writers (httptest.ResponseRecorder) sniff the
		// Content-Type only then.
		c.w.WriteHeader(c.status)
	}
	var err error
	b := c.buf.Bytes()
	for _, n := range c.pieces {
		if _, err = c.w.Write(b[:n]); err != nil {
			break
		}
		b = b[n:]
	}
	if err == nil && c.refused {
		// net/http counts refused bytes as written: it refuses every later
		// write and closes the connection after the response. A write it
		// refuses the same way (one byte past the declared length, no
		// longer than the handler's refused write) makes it do so here.
		filler := make([]byte, c.contentLength-int64(c.buf.Len())+1)
		filler[0] = c.refusedByte
		c.w.Write(filler)
	}
	if final != nil {
		clear(c.h)
		for k, vv := range final {
			c.h[k] = vv
		}
	}
	return err
}

// sameHeader reports whether a and b hold the same names and values.
func sameHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || !slices.Equal(va, vb) {
			return false
		}
	}
	return true
}

// Flush sends the response so far; the rest is streamed.
func (c *capture) Flush() { c.FlushError() }

// FlushError is Flush for http.ResponseController.
func (c *capture) FlushError() error {
	if !c.streaming {
		if err := c.stream(); err != nil {
			return err
		}
	}
	return http.NewResponseController(c.w).Flush()
}

// Hijack hands the connection to the handler; its response is then not
// kept. As net/http does, a status written before is sent first (and a
// body written is handed to net/http, which drops what it still holds).
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !c.streaming && c.wroteHeader && canHijack(c.w) {
		c.streaming = true
		c.send()
	}
	conn, rw, err := http.NewResponseController(c.w).Hijack()
	if err == nil {
		c.streaming = true
		if !c.wroteHeader {
			c.wroteHeader, c.status = true, http.StatusSwitchingProtocols
		}
	}
	return conn, rw, err
}

// canHijack reports whether w, or a writer it wraps, can be hijacked.
func canHijack(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}

// Unwrap lets http.ResponseController reach the underlying writer for
// deadlines and full duplex.
func (c *capture) Unwrap() http.ResponseWriter { return c.w }

// notStored lists headers that describe one connection or one moment
// rather than the response: they are neither stored nor replayed. (A Date
// set to nil, which keeps net/http from adding one, is stored.)
var notStored = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding", "Upgrade", "Date", "Idempotent-Replayed"}

func stored(name string, values []string) bool {
	if slices.Contains(notStored, name) {
		return name == "Date" && len(values) == 0
	}
	return true
}

// finish completes the status (200 when the handler wrote nothing), as
// net/http does when the handler returns.
func (c *capture) finish() {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
}

// restoreOuter puts the header map back as the handler got it, for an
// answer of the middleware's own in place of the handler's.
func (c *capture) restoreOuter() {
	clear(c.h)
	for k, vv := range c.outer {
		c.h[k] = slices.Clone(vv)
	}
}

// record returns the encoded response for the store: the status, what the
// handler set, appended or removed relative to the headers it was handed,
// the body and the trailers.
func (c *capture) record() []byte {
	r := &c.resp
	r.Status, r.BodyOmitted, r.Body = c.status, c.streaming, nil
	if r.Header == nil {
		r.Header = make(http.Header, len(c.sent))
	}
	if r.Added == nil {
		r.Added = make(http.Header)
	}
	if r.Trailer == nil {
		r.Trailer = make(http.Header)
	}
	for k, vv := range c.sent {
		if !stored(k, vv) {
			continue
		}
		ov, had := c.outer[k]
		switch {
		case !had:
			r.Header[k] = vv
		case slices.Equal(ov, vv):
		case len(ov) > 0 && len(vv) > len(ov) && slices.Equal(vv[:len(ov)], ov):
			r.Added[k] = vv[len(ov):]
		default:
			r.Header[k] = vv
		}
	}
	for k, vv := range c.outer {
		if _, ok := c.sent[k]; !ok && stored(k, vv) {
			r.Removed = append(r.Removed, k)
		}
	}
	if !c.streaming {
		r.Body = c.buf.Bytes()
		// The Content-Type net/http sniffs is stored, so that the first
		// answer and its replays carry the same one whatever writes them.
		// A Transfer-Encoding set by the handler keeps net/http from
		// sniffing; it is not stored, so the record says "no Content-Type"
		// (a nil value) for the replay not to get one the first answer did
		// not have.
		_, typed := c.sent["Content-Type"]
		te := c.sent["Transfer-Encoding"]
		if !typed && c.sent.Get("Content-Encoding") == "" && len(r.Body) > 0 && bodyAllowed(c.status) {
			if len(te) == 0 || te[0] == "" {
				r.Header["Content-Type"] = []string{http.DetectContentType(r.Body)}
			} else {
				r.Header["Content-Type"] = nil
			}
		}
		// Trailers: net/http reads them from the header map when the
		// handler returns.
		for k, vv := range c.h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				r.Trailer[k] = vv
			}
		}
		for _, v := range c.sent["Trailer"] {
			for _, name := range strings.Split(v, ",") {
				name = http.CanonicalHeaderKey(strings.TrimSpace(name))
				if vv, ok := c.h[name]; ok && name != "" {
					r.Trailer[name] = vv
				}
			}
		}
	}
	return EncodeResponse(r)
}

// bodyAllowed reports whether a response with status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

var replayedValue = []string{"true"}

// writeReplay sends a stored response behind the outer handlers that run
// for the replay: the handler's headers set, appended and removed over
// theirs, the status, the body in one write, then the trailers.
func writeReplay(w http.ResponseWriter, resp *Response) {
	h := w.Header()
	for _, k := range resp.Removed {
		delete(h, k)
	}
	for k, vv := range resp.Header {
		h[k] = vv
	}
	for k, vv := range resp.Added {
		old := h[k]
		h[k] = append(old[:len(old):len(old)], vv...)
	}
	h["Idempotent-Replayed"] = replayedValue
	w.WriteHeader(resp.Status)
	if len(resp.Body) > 0 {
		w.Write(resp.Body)
	}
	for k, vv := range resp.Trailer {
		h[k] = vv
	}
}
