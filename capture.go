package idem

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"sync"
)

// capture is the ResponseWriter the handler of a claimed request writes to.
// It keeps the response in memory so that it can be recorded before it is
// sent. When the handler flushes, hijacks, or writes more than the response
// limit, it turns into a pass-through ("streaming") and the record keeps the
// status and headers only.
type capture struct {
	w      http.ResponseWriter
	header http.Header
	late   http.Header // handed out after WriteHeader, as net/http ignores it
	buf    bytes.Buffer
	max    int

	status      int
	wroteHeader bool
	streaming   bool
}

var capturePool = sync.Pool{New: func() any { return new(capture) }}

func newCapture(w http.ResponseWriter, max int) *capture {
	c := capturePool.Get().(*capture)
	c.w, c.max = w, max
	return c
}

// free returns c to the pool. Buffers that grew large are dropped rather
// than kept alive.
func (c *capture) free() {
	buf, header := c.buf, c.header
	*c = capture{}
	if buf.Cap() <= 64<<10 {
		buf.Reset()
		c.buf = buf
	}
	if len(header) <= 32 {
		// The values were handed to the real writer; the map itself is ours.
		clear(header)
		c.header = header
	}
	capturePool.Put(c)
}

func (c *capture) Header() http.Header {
	if c.wroteHeader && !c.streaming {
		// As under net/http, changes after WriteHeader are not sent, but
		// what was set before can still be read.
		if c.late == nil {
			c.late = c.header.Clone()
			if c.late == nil {
				c.late = make(http.Header)
			}
		}
		return c.late
	}
	if c.header == nil {
		c.header = make(http.Header)
	}
	return c.header
}

func (c *capture) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code)) // as net/http does
	}
	if c.wroteHeader || (code >= 100 && code < 200 && code != http.StatusSwitchingProtocols) {
		return // informational responses are not kept or forwarded
	}
	c.wroteHeader = true
	c.status = code
}

func (c *capture) Write(p []byte) (int, error) {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if c.streaming {
		return c.w.Write(p)
	}
	if c.buf.Len()+len(p) > c.max {
		if err := c.stream(); err != nil {
			return 0, err
		}
		return c.w.Write(p)
	}
	return c.buf.Write(p)
}

// WriteString lets io.WriteString skip a conversion.
func (c *capture) WriteString(s string) (int, error) {
	if c.streaming || c.buf.Len()+len(s) > c.max {
		return c.Write([]byte(s))
	}
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	return c.buf.WriteString(s)
}

// stream sends what was captured and makes c a pass-through.
func (c *capture) stream() error {
	if c.streaming {
		return nil
	}
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	c.streaming = true
	c.prepareHeader()
	h := c.w.Header()
	for k, vv := range c.header {
		h[k] = vv
	}
	c.w.WriteHeader(c.status)
	_, err := c.w.Write(c.buf.Bytes())
	return err
}

// Flush sends the response so far; the rest is streamed.
func (c *capture) Flush() { c.FlushError() }

// FlushError is Flush for http.ResponseController.
func (c *capture) FlushError() error {
	if err := c.stream(); err != nil {
		return err
	}
	return http.NewResponseController(c.w).Flush()
}

// Hijack hands the connection to the handler; its response is then not
// kept.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(c.w).Hijack()
	if err == nil {
		c.wroteHeader, c.streaming = true, true
		if c.status == 0 {
			c.status = http.StatusSwitchingProtocols
		}
	}
	return conn, rw, err
}

// Unwrap lets http.ResponseController reach the underlying writer for
// deadlines and full duplex.
func (c *capture) Unwrap() http.ResponseWriter { return c.w }

// notStored lists headers that describe one connection or one moment
// rather than the response: they are neither stored nor replayed.
var notStored = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Date", "Idempotent-Replayed"}

// finish completes the status (200 when the handler wrote nothing) and the
// headers as net/http would send them.
func (c *capture) finish() {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if !c.streaming {
		c.prepareHeader()
	}
}

// prepareHeader drops connection headers and adds the Content-Type that
// net/http would sniff, so that the first answer and its replays carry the
// same headers.
func (c *capture) prepareHeader() {
	if c.header == nil {
		c.header = make(http.Header)
	}
	for _, k := range notStored {
		delete(c.header, k)
	}
	// As net/http does: no sniffing when the type is set (here or by an
	// outer handler) or the body is encoded.
	_, typed := c.header["Content-Type"]
	_, outerTyped := c.w.Header()["Content-Type"]
	_, encoded := c.header["Content-Encoding"]
	if !typed && !outerTyped && !encoded && c.buf.Len() > 0 && bodyAllowed(c.status) {
		c.header["Content-Type"] = []string{http.DetectContentType(c.buf.Bytes())}
	}
}

// record returns the encoded response for the store.
func (c *capture) record() []byte {
	resp := Response{Status: c.status, Header: c.header, BodyOmitted: c.streaming}
	if !c.streaming {
		resp.Body = c.buf.Bytes()
	}
	return EncodeResponse(&resp)
}

// bodyAllowed reports whether a response with status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

var replayedValue = []string{"true"}

// writeResponse sends a captured or stored response: the handler's headers
// over whatever the outer handlers set, the status and the body, in one
// write, so that net/http frames the first answer and its replays alike.
func writeResponse(w http.ResponseWriter, header http.Header, status int, body []byte, replayed bool) {
	h := w.Header()
	for k, vv := range header {
		h[k] = vv
	}
	if replayed {
		h["Idempotent-Replayed"] = replayedValue
	}
	w.WriteHeader(status)
	if len(body) > 0 {
		w.Write(body)
	}
}
