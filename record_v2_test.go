package idem_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/idemgo/idem"
)

// A response with appended headers, removed headers or trailers is written
// in format 2 and decodes to the same response; the bytes below are a
// format-2 record and must keep decoding in every later release.
func TestRecordFormat2KeepsAddedRemovedAndTrailers(t *testing.T) {
	resp := &idem.Response{
		Status:  201,
		Header:  http.Header{"Content-Type": {"text/plain"}, "Date": {}},
		Added:   http.Header{"Set-Cookie": {"pref=1"}},
		Removed: []string{"X-Outer", "Access-Control-Allow-Origin"},
		Body:    []byte("hi"),
		Trailer: http.Header{"X-Sum": {"9"}, "Trailer:X-Late": {"2"}},
	}
	enc := idem.EncodeResponse(resp)
	if enc[0] != 2 {
		t.Fatalf("format %d, want 2", enc[0])
	}
	const golden = "0200c90102" + "0c436f6e74656e742d54797065" + "01" + "0a746578742f706c61696e" + "0444617465" + "00" +
		"026869" +
		"01" + "0a5365742d436f6f6b6965" + "01" + "06707265663d31" +
		"02" + "1b4163636573732d436f6e74726f6c2d416c6c6f772d4f726967696e" + "07582d4f75746572" +
		"02" + "0e547261696c65723a582d4c617465" + "01" + "0132" + "05582d53756d" + "01" + "0139"
	if got := hex.EncodeToString(enc); got != golden {
		t.Fatalf("format-2 encoding changed:\n got %s\nwant %s", got, golden)
	}
	got, err := idem.DecodeResponse(enc)
	if err != nil {
		t.Fatal(err)
	}
	want := *resp
	want.Removed = []string{"Access-Control-Allow-Origin", "X-Outer"} // stored sorted
	if !reflect.DeepEqual(got.Header, want.Header) || !reflect.DeepEqual(got.Added, want.Added) ||
		!reflect.DeepEqual(got.Removed, want.Removed) || !reflect.DeepEqual(got.Trailer, want.Trailer) ||
		!bytes.Equal(got.Body, want.Body) || got.Status != 201 {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	if resp.Removed[0] != "X-Outer" {
		t.Fatal("encoding reordered the caller's Removed slice")
	}

	// Without any of the three, the response is written in format 1, which
	// releases that know only format 1 read; a format-2 record with empty
	// extra sections is not what EncodeResponse writes.
	plain := idem.EncodeResponse(&idem.Response{Status: 200, Body: []byte("x")})
	if plain[0] != 1 {
		t.Fatalf("a response without format-2 parts is written in format %d", plain[0])
	}
	padded := append([]byte{2}, plain[1:]...)
	padded = append(padded, 0, 0, 0)
	if _, err := idem.DecodeResponse(padded); !errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("format 2 with empty extra sections: %v, want ErrCorruptRecord", err)
	}
}

// EncodeResponse returns a slice with no spare capacity, whatever the
// sections hold (lengths and counts of one, two and three varint bytes),
// so that a store that keeps it holds no memory beyond the record.
// Removed names given out of order or twice are written sorted, once.
func TestEncodedResponseHasNoSpareCapacity(t *testing.T) {
	many := http.Header{}
	for i := 0; i < 130; i++ {
		many[fmt.Sprintf("X-%03d", i)] = []string{"v"}
	}
	values := make([]string, 130)
	long := strings.Repeat("n", 130)
	for _, resp := range []*idem.Response{
		{Status: 100},
		{Status: 201, Header: http.Header{"Set-Cookie": {"a=1", "b=2"}, "X-Empty": {""}, "Date": nil, long: {strings.Repeat("v", 200)}}, Body: bytes.Repeat([]byte("b"), 20000)},
		{Status: 200, Header: many, Body: []byte("x")},
		{Status: 200, Header: http.Header{"X-Values": values}, BodyOmitted: true},
		{Status: 999, Removed: []string{"X-B", "X-A", "X-B"}},
		{Status: 999, Removed: []string{"X-A", "X-B", "X-B"}},
		{Status: 200, Header: http.Header{"Vary": {"A"}}, Added: http.Header{"Vary": {"B"}, long: {long}}, Removed: []string{long}, Trailer: http.Header{"X-Sum": {"1", "2"}}, Body: []byte("x")},
		{Status: 200, Trailer: many},
	} {
		enc := idem.EncodeResponse(resp)
		if cap(enc) != len(enc) {
			t.Errorf("status %d: %d spare bytes after a record of %d", resp.Status, cap(enc)-len(enc), len(enc))
		}
		got, err := idem.DecodeResponse(enc)
		if err != nil {
			t.Fatalf("status %d: %v", resp.Status, err)
		}
		var removed []string
		if len(resp.Removed) > 0 {
			removed = slices.Clone(resp.Removed)
			slices.Sort(removed)
			removed = slices.Compact(removed)
		}
		if !reflect.DeepEqual(got.Removed, removed) || len(got.Added) != len(resp.Added) || len(got.Trailer) != len(resp.Trailer) {
			t.Errorf("status %d: decoded %+v, want removed %q", resp.Status, got, removed)
		}
	}
}
