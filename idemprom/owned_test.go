package idemprom

import (
	"testing"
	"time"
)

// An owner that never reports back (its lease lost without a store call
// saying so, or a Complete that never came) stops counting when its lease
// ends; a renewal moves that end.
func TestOwnedKeysEndWithTheirLease(t *testing.T) {
	now := time.Unix(1000, 0)
	o := newOwned(func() time.Time { return now })
	o.claimed("a", "t1", now.Add(time.Second))
	o.claimed("b", "t2", now.Add(time.Second))
	o.renewed("b", "t2", now.Add(10*time.Second))
	o.renewed("c", "t3", now.Add(10*time.Second)) // never claimed here: ignored
	if n := o.count(); n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	now = now.Add(2 * time.Second)
	if n := o.count(); n != 1 {
		t.Fatalf("count after a's lease ended = %d, want 1 (b was renewed)", n)
	}
	o.done("b", "other-token")
	if n := o.count(); n != 1 {
		t.Fatalf("another token ended b's ownership: count %d", n)
	}
	o.done("b", "t2")
	if n := o.count(); n != 0 {
		t.Fatalf("count = %d, want 0", n)
	}
}
