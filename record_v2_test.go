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
