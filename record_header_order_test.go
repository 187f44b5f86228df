package idem_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/idemgo/idem"
)

// encodedWithNames returns a record of status 200, no body, and one value
// "v" under each name, in the order given: what EncodeResponse writes when
// the names are sorted and unique.
func encodedWithNames(names ...string) []byte {
	b := []byte{1, 0, 0xc8, 0x01, byte(len(names))}
	for _, n := range names {
		b = append(b, byte(len(n)))
		b = append(b, n...)
		b = append(b, 1, 1, 'v')
	}
	return append(b, 0)
}

// The decoder accepts header names only sorted and unique, as the encoder
// writes them: a record with names out of order or twice was not written
// by EncodeResponse, and decoding it would drop values or re-encode to
// other bytes.
func TestDecodeRejectsHeaderNamesOutOfOrderOrTwice(t *testing.T) {
	valid := encodedWithNames("A", "B", "C")
	resp, err := idem.DecodeResponse(valid)
	if err != nil {
		t.Fatalf("sorted unique names: %v", err)
	}
	if len(resp.Header) != 3 || resp.Header.Get("B") != "v" {
		t.Fatalf("sorted unique names decoded to %v", resp.Header)
	}
	if string(idem.EncodeResponse(&idem.Response{Status: 200, Header: http.Header{"C": {"v"}, "A": {"v"}, "B": {"v"}}})) != string(valid) {
		t.Fatal("the hand-made record is not what EncodeResponse writes")
	}
	for name, data := range map[string][]byte{
		"out of order":          encodedWithNames("B", "A"),
		"out of order, later":   encodedWithNames("A", "C", "B"),
		"twice":                 encodedWithNames("A", "A"),
		"twice, not adjacent":   encodedWithNames("A", "B", "A"),
		"twice, after a sorted": encodedWithNames("A", "B", "B"),
	} {
		if resp, err := idem.DecodeResponse(data); !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("%s: decoded to %+v, %v; want ErrCorruptRecord", name, resp, err)
		}
	}
}

// A record cut short anywhere, or with a byte too many, is refused: the
// decoder never reads a missing length as zero.
func TestDecodeRejectsEveryTruncation(t *testing.T) {
	full := idem.EncodeResponse(&idem.Response{
		Status: 201,
		Header: http.Header{"Content-Type": {"application/json"}, "Location": {"/payments/1"}, "X-Empty": {""}},
		Body:   []byte(`{"id":1}`),
	})
	if _, err := idem.DecodeResponse(full); err != nil {
		t.Fatalf("the whole record: %v", err)
	}
	for n := 0; n < len(full); n++ {
		if resp, err := idem.DecodeResponse(full[:n]); !errors.Is(err, idem.ErrCorruptRecord) {
			t.Fatalf("the first %d of %d bytes decoded to %+v, %v; want ErrCorruptRecord", n, len(full), resp, err)
		}
	}
	if _, err := idem.DecodeResponse(append(full, 0)); !errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("a trailing byte: %v, want ErrCorruptRecord", err)
	}
}

// Statuses 100 to 999 are what WriteHeader accepts and what a record may
// hold; 99 and 1000 are not.
func TestDecodeStatusBounds(t *testing.T) {
	for status, ok := range map[int]bool{99: false, 100: true, 999: true, 1000: false} {
		data := idem.EncodeResponse(&idem.Response{Status: status})
		resp, err := idem.DecodeResponse(data)
		if ok && (err != nil || resp.Status != status) {
			t.Errorf("status %d: %+v, %v; want it decoded", status, resp, err)
		}
		if !ok && !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("status %d: %+v, %v; want ErrCorruptRecord", status, resp, err)
		}
	}
}
