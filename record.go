package idem

import (
	"encoding/binary"
	"errors"
	"net/http"
	"slices"
)

// Response is an HTTP response as the middleware stores and replays it.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Header holds the response headers the handler set, without hop-by-hop
	// headers and Date (see the README for the exact list).
	Header http.Header
	// Body is the response body, byte for byte.
	Body []byte
	// BodyOmitted reports that the handler's body was not kept, because it
	// was larger than the response limit or because the handler flushed it
	// to the client while running. Such a response is never replayed; see
	// the README ("Responses that cannot be replayed").
	BodyOmitted bool
}

// recordVersion is the first byte of every encoded response. Decoders accept
// every version they know; a new release adds a version rather than
// changing the meaning of an old one, so records written by one release are
// read correctly by the next.
const recordVersion = 1

const flagBodyOmitted = 1 << 0

// ErrCorruptRecord is returned by DecodeResponse for data that is not an
// encoded Response of a known format version.
var ErrCorruptRecord = errors.New("idem: corrupt or unknown record format")

// EncodeResponse returns the compact binary encoding of resp. The encoding
// starts with a format version byte, keeps every header value and the body
// byte for byte, and orders header names so that equal responses encode to
// equal bytes.
func EncodeResponse(resp *Response) []byte {
	return AppendResponse(nil, resp)
}

// AppendResponse appends the encoding of resp to dst and returns the
// extended slice.
func AppendResponse(dst []byte, resp *Response) []byte {
	var names [24]string
	keys := names[:0]
	size := 16 + len(resp.Body)
	for k, vv := range resp.Header {
		keys = append(keys, k)
		size += len(k) + 2*binary.MaxVarintLen16
		for _, v := range vv {
			size += len(v) + binary.MaxVarintLen16
		}
	}
	slices.Sort(keys)
	dst = slices.Grow(dst, size)

	var flags byte
	if resp.BodyOmitted {
		flags |= flagBodyOmitted
	}
	dst = append(dst, recordVersion, flags)
	dst = binary.AppendUvarint(dst, uint64(resp.Status))
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		vv := resp.Header[k]
		dst = appendBytes(dst, k)
		dst = binary.AppendUvarint(dst, uint64(len(vv)))
		for _, v := range vv {
			dst = appendBytes(dst, v)
		}
	}
	return appendBytes(dst, resp.Body)
}

func appendBytes[T string | []byte](dst []byte, s T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeResponse decodes data written by EncodeResponse. The returned Body
// shares memory with data.
func DecodeResponse(data []byte) (*Response, error) {
	if len(data) < 2 || data[0] != recordVersion || data[1]&^flagBodyOmitted != 0 {
		return nil, ErrCorruptRecord
	}
	resp := &Response{BodyOmitted: data[1]&flagBodyOmitted != 0}
	d := decoder{buf: data[2:], ok: true}
	status := d.uvarint()
	if status < 100 || status > 999 {
		return nil, ErrCorruptRecord
	}
	resp.Status = int(status)
	n := d.count()
	if n > 0 {
		resp.Header = make(http.Header, n)
	}
	prev := ""
	for i := 0; i < n && d.ok; i++ {
		name := string(d.bytes())
		if i > 0 && name <= prev {
			// Names are written sorted and unique; anything else was not
			// written by EncodeResponse.
			return nil, ErrCorruptRecord
		}
		prev = name
		m := d.count()
		vv := make([]string, 0, m)
		for j := 0; j < m && d.ok; j++ {
			vv = append(vv, string(d.bytes()))
		}
		resp.Header[name] = vv
	}
	resp.Body = d.bytes()
	if !d.ok || len(d.buf) != 0 {
		return nil, ErrCorruptRecord
	}
	return resp, nil
}

type decoder struct {
	buf []byte
	ok  bool
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.buf)
	// A varint with a trailing zero byte is not in its shortest form:
	// EncodeResponse never writes one, so the data was not written by it.
	if n <= 0 || (n > 1 && d.buf[n-1] == 0) {
		d.ok = false
		d.buf = nil
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a length that must be satisfiable by the remaining bytes, so
// corrupt input can never make the decoder allocate more than it holds.
func (d *decoder) count() int {
	v := d.uvarint()
	if v > uint64(len(d.buf)) {
		d.ok = false
		d.buf = nil
		return 0
	}
	return int(v)
}

func (d *decoder) bytes() []byte {
	n := d.count()
	if !d.ok {
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}
