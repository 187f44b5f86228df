package idem_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/http"
	"reflect"
	"testing"

	"github.com/idemgo/idem"
)

func TestResponseRoundTrip(t *testing.T) {
	body := make([]byte, 1000)
	for i := range body {
		body[i] = byte(i * 7)
	}
	for _, resp := range []*idem.Response{
		{Status: 201, Header: http.Header{"Set-Cookie": {"a=1", "b=2"}, "X-Empty": {""}, "Content-Type": {"application/json"}}, Body: body},
		{Status: 204, Header: http.Header{}},
		{Status: 200, Header: http.Header{"Vary": {"Accept"}}, BodyOmitted: true},
		{Status: 999, Body: []byte{}},
		{Status: 200, Header: http.Header{"": {"empty name"}, "A": {"b"}}},
	} {
		enc := idem.EncodeResponse(resp)
		got, err := idem.DecodeResponse(enc)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != resp.Status || !bytes.Equal(got.Body, resp.Body) || got.BodyOmitted != resp.BodyOmitted {
			t.Fatalf("round trip: got %+v, want %+v", got, resp)
		}
		if len(resp.Header) > 0 && !reflect.DeepEqual(got.Header, resp.Header) {
			t.Fatalf("headers: got %v, want %v", got.Header, resp.Header)
		}
		if again := idem.EncodeResponse(got); !bytes.Equal(again, enc) {
			t.Fatal("re-encoding a decoded response changed its bytes")
		}
	}
}

// Equal responses encode to equal bytes, whatever the map order.
func TestResponseEncodingDeterministic(t *testing.T) {
	h := http.Header{}
	for _, k := range []string{"A", "B", "C", "D", "E", "F", "G", "H"} {
		h[k] = []string{k}
	}
	want := idem.EncodeResponse(&idem.Response{Status: 200, Header: h})
	for i := 0; i < 20; i++ {
		if got := idem.EncodeResponse(&idem.Response{Status: 200, Header: h.Clone()}); !bytes.Equal(got, want) {
			t.Fatal("encoding depends on map order")
		}
	}
}

// Records carry a format version. A record written in format 1
// by this release must be read the same by every later one: the bytes
// below are a format-1 record and must keep decoding.
func TestRecordFormatVersion1StillDecodes(t *testing.T) {
	v1, _ := hex.DecodeString("0100c90101" + "0c436f6e74656e742d54797065" + "01" + "1070726f626c656d2b6a736f6e3b763d31" + "05" + "68656c6c6f")
	got, err := idem.DecodeResponse(v1)
	if err != nil {
		t.Fatalf("format-1 record no longer decodes: %v", err)
	}
	if got.Status != 201 || got.Header.Get("Content-Type") != "problem+json;v=1" || string(got.Body) != "hello" || got.BodyOmitted {
		t.Fatalf("format-1 record decoded as %+v", got)
	}
	enc := idem.EncodeResponse(got)
	if enc[0] != 1 || !bytes.Equal(enc, v1) {
		t.Fatalf("this release writes % x, want format 1 as % x", enc, v1)
	}
	unknown := append([]byte{3}, v1[1:]...)
	if _, err := idem.DecodeResponse(unknown); !errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("unknown version: %v, want ErrCorruptRecord", err)
	}
}

func TestDecodeCorrupt(t *testing.T) {
	good := idem.EncodeResponse(&idem.Response{Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte("body")})
	cases := map[string][]byte{
		"empty":          nil,
		"version only":   {1},
		"unknown flag":   append([]byte{1, 0x80}, good[2:]...),
		"truncated":      good[:len(good)-1],
		"trailing bytes": append(append([]byte{}, good...), 0),
		"status 0":       {1, 0, 0, 0, 0},
		"huge count":     {1, 0, 0xc8, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f},
		// A decoder that went on reading after the fault in the three
		// records below would find a status 200 response with no headers
		// and an empty body.
		"no body length":        {1, 0, 0xc8, 0x01, 0},
		"count beyond the data": {1, 0, 0xc8, 0x01, 5, 0},
		"header names unsorted": {1, 0, 0xc8, 0x01, 2, 1, 'B', 0, 1, 'A', 0},
		// Removed names are written sorted and once each.
		"removed names unsorted": {2, 0, 0xc8, 0x01, 0, 0, 0, 2, 1, 'B', 1, 'A', 0},
		"removed name twice":     {2, 0, 0xc8, 0x01, 0, 0, 0, 2, 1, 'A', 1, 'A', 0},
	}
	for name, data := range cases {
		if _, err := idem.DecodeResponse(data); !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("%s: err = %v, want ErrCorruptRecord", name, err)
		}
	}
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add(idem.EncodeResponse(&idem.Response{Status: 201, Header: http.Header{"A": {"1", "2"}}, Body: []byte("x")}))
	f.Add(idem.EncodeResponse(&idem.Response{Status: 200, Added: http.Header{"Vary": {"A"}}, Removed: []string{"X"}, Trailer: http.Header{"T": {"1"}}}))
	f.Add([]byte{1, 1, 0xc8, 0x01, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := idem.DecodeResponse(data)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		if again := idem.EncodeResponse(resp); !bytes.Equal(again, data) {
			t.Fatalf("decode/encode changed % x into % x", data, again)
		}
	})
}

// Only the shortest varint form is accepted, so that every accepted record
// re-encodes to its own bytes.
func TestDecodeRejectsLongVarints(t *testing.T) {
	if _, err := idem.DecodeResponse([]byte("\x01\x00\xff\x00\x00\x00")); !errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("non-minimal varint: %v, want ErrCorruptRecord", err)
	}
	if _, err := idem.DecodeResponse([]byte("\x01\x00\xc8\x81\x00\x00")); !errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("padded header count: %v, want ErrCorruptRecord", err)
	}
}
