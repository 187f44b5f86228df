package idem

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// Owner tokens are unique across processes only if their random prefix is
// random: a failed or short read of crypto/rand is an error, never a prefix
// that another process could share.
func TestTokenPrefixNeedsRandomness(t *testing.T) {
	for name, r := range map[string]io.Reader{
		"failing": iotest.ErrReader(errors.New("getrandom: no entropy")),
		"short":   strings.NewReader("abc"),
	} {
		if p, err := newTokenPrefix(r); err == nil {
			t.Errorf("%s reader: prefix %q, want an error", name, p)
		}
	}
	a, errA := newTokenPrefix(strings.NewReader("0123456789ab"))
	b, errB := newTokenPrefix(strings.NewReader("ba9876543210"))
	if errA != nil || errB != nil || a == b || len(a) != 25 {
		t.Fatalf("prefixes %q %v, %q %v", a, errA, b, errB)
	}
}
