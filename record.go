package idem

import (
	"encoding/binary"
	"math/bits"
	"net/http"
	"slices"
)

// Response is an HTTP response as the middleware stores and replays it.
//
// Headers that outer handlers (session, CORS, request ID middleware) set
// before the handler ran are not part of it, unless the handler changed
// them: a replay runs behind the same outer handlers, which set their own
// headers again.
//
// Response, EncodeResponse and DecodeResponse are public because code
// outside this package reads and writes stored results: the conformance
// suite (storetest), stores that show what a key holds, and tools that
// inspect a backup. The middleware is their only writer.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Header holds the response headers the handler set, or replaced, as
	// they were when it wrote the status, without hop-by-hop headers and
	// Date (see the README for the exact list). A replay sets each name to
	// these values. A name with no values was set to nil, which keeps
	// net/http from adding its own (Date, Content-Type).
	Header http.Header
	// Added holds the values the handler appended to a header that an outer
	// handler had set (a second Set-Cookie, another Vary): a replay appends
	// them to what the outer handlers set on the replay.
	Added http.Header
	// Removed names the headers an outer handler had set and the handler
	// deleted: a replay deletes them.
	Removed []string
	// Body is the response body, byte for byte.
	Body []byte
	// Trailer holds the header map entries that net/http turns into
	// trailers once the handler returns, with their final values: names
	// declared in the Trailer header, and names with http.TrailerPrefix
	// (kept with the prefix).
	Trailer http.Header
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
//
// Version 1 holds the status, the headers and the body. Version 2 adds,
// after the body, the appended headers, the removed header names and the
// trailers. A response that has none of these is written as version 1, so
// that a release that knows only version 1 still reads it.
const (
	recordVersion1 = 1
	recordVersion2 = 2
)

const flagBodyOmitted = 1 << 0

// minRecordLen is the length of the shortest record: version, flags, a
// one-byte status (100 to 127), an empty header section and an empty body.
const minRecordLen = 5

// EncodeResponse returns the compact binary encoding of resp. The encoding
// starts with a format version byte, keeps every header value and the body
// byte for byte, and orders header names so that equal responses encode to
// equal bytes. The returned slice has no spare capacity: a store that keeps
// it (memstore does, for the whole retention) holds no memory beyond the
// record.
func EncodeResponse(resp *Response) []byte {
	removed := sortedUnique(resp.Removed)
	version := byte(recordVersion1)
	size := 2 + uvarintLen(uint64(resp.Status)) + headerLen(resp.Header) + bytesLen(len(resp.Body))
	if len(resp.Added) > 0 || len(removed) > 0 || len(resp.Trailer) > 0 {
		version = recordVersion2
		size += headerLen(resp.Added) + uvarintLen(uint64(len(removed))) + headerLen(resp.Trailer)
		for _, k := range removed {
			size += bytesLen(len(k))
		}
	}
	dst := make([]byte, 0, size)

	var flags byte
	if resp.BodyOmitted {
		flags |= flagBodyOmitted
	}
	dst = append(dst, version, flags)
	dst = binary.AppendUvarint(dst, uint64(resp.Status))
	dst = appendHeader(dst, resp.Header)
	dst = appendBytes(dst, resp.Body)
	if version == recordVersion1 {
		return dst
	}
	dst = appendHeader(dst, resp.Added)
	dst = binary.AppendUvarint(dst, uint64(len(removed)))
	for _, k := range removed {
		dst = appendBytes(dst, k)
	}
	return appendHeader(dst, resp.Trailer)
}

// sortedUnique returns names sorted, each once: names itself if it already
// is, else a sorted copy.
func sortedUnique(names []string) []string {
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			names = slices.Clone(names)
			slices.Sort(names)
			return slices.Compact(names)
		}
	}
	return names
}

// uvarintLen returns the length of the uvarint encoding of x: one byte for
// every 7 bits, at least one.
func uvarintLen(x uint64) int {
	return (bits.Len64(x|1) + 6) / 7
}

// bytesLen returns the length of the encoding of n bytes: their length,
// then the bytes.
func bytesLen(n int) int {
	return uvarintLen(uint64(n)) + n
}

// headerLen returns the length of the encoding of h (see appendHeader).
func headerLen(h http.Header) int {
	size := uvarintLen(uint64(len(h)))
	for k, vv := range h {
		size += bytesLen(len(k)) + uvarintLen(uint64(len(vv)))
		for _, v := range vv {
			size += bytesLen(len(v))
		}
	}
	return size
}

// appendHeader appends the names of h in sorted order, each with its
// values.
func appendHeader(dst []byte, h http.Header) []byte {
	var names [24]string
	keys := names[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		vv := h[k]
		dst = appendBytes(dst, k)
		dst = binary.AppendUvarint(dst, uint64(len(vv)))
		for _, v := range vv {
			dst = appendBytes(dst, v)
		}
	}
	return dst
}

func appendBytes[T string | []byte](dst []byte, s T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeResponse decodes data written by EncodeResponse, of any format
// version this release knows. The returned Body shares memory with data.
func DecodeResponse(data []byte) (*Response, error) {
	if len(data) < minRecordLen || (data[0] != recordVersion1 && data[0] != recordVersion2) || data[1]&^flagBodyOmitted != 0 {
		return nil, ErrCorruptRecord
	}
	resp := &Response{BodyOmitted: data[1]&flagBodyOmitted != 0}
	d := decoder{buf: data[2:], ok: true}
	status := d.uvarint()
	if status < 100 || status > 999 {
		return nil, ErrCorruptRecord
	}
	resp.Status = int(status)
	resp.Header = d.header()
	resp.Body = d.bytes()
	if data[0] == recordVersion2 {
		resp.Added = d.header()
		n := d.count()
		for i := 0; i < n && d.ok; i++ {
			name := string(d.bytes())
			if i > 0 && name <= resp.Removed[i-1] {
				return nil, ErrCorruptRecord
			}
			resp.Removed = append(resp.Removed, name)
		}
		resp.Trailer = d.header()
		if len(resp.Added) == 0 && len(resp.Removed) == 0 && len(resp.Trailer) == 0 {
			// EncodeResponse writes such a response as version 1.
			return nil, ErrCorruptRecord
		}
	}
	if !d.ok || len(d.buf) != 0 {
		return nil, ErrCorruptRecord
	}
	return resp, nil
}

// header reads a header section: nil when it is empty.
func (d *decoder) header() http.Header {
	n := d.count() // 0 after a failure
	if n == 0 {
		return nil
	}
	h := make(http.Header, n)
	prev := ""
	for i := 0; i < n && d.ok; i++ {
		name := string(d.bytes())
		if i > 0 && name <= prev {
			// Names are written sorted and unique; anything else was not
			// written by EncodeResponse.
			d.ok = false
			return nil
		}
		prev = name
		m := d.count()
		vv := make([]string, 0, m)
		for j := 0; j < m && d.ok; j++ {
			vv = append(vv, string(d.bytes()))
		}
		h[name] = vv
	}
	return h
}

// decoder reads the sections of a record from buf. ok turns false at the
// first read that finds data EncodeResponse does not write, and stays
// false: from then on counts are 0, bytes are nil, and the caller refuses
// the record whatever the later reads return.
type decoder struct {
	buf []byte
	ok  bool
}

func (d *decoder) uvarint() uint64 {
	if !d.ok {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	// A varint with a trailing zero byte is not in its shortest form:
	// EncodeResponse never writes one, so the data was not written by it.
	if n <= 0 || (n > 1 && d.buf[n-1] == 0) {
		d.ok = false
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
