package idem

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// The store call context keeps values, drops cancellation, and ends at its
// deadline whether a store watches Done or only asks Err.
func TestCallCtx(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	cancelParent()

	c := newCallCtx(parent, time.Hour)
	if c.Value(ctxKey{}) != "v" {
		t.Fatal("value of the parent lost")
	}
	if c.Err() != nil {
		t.Fatal("parent's cancellation reached the store call")
	}
	if d, ok := c.Deadline(); !ok || time.Until(d) < 59*time.Minute {
		t.Fatalf("Deadline = %v %v", d, ok)
	}
	c.cancel()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after cancel: %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after cancel")
	}

	// Err alone notices the deadline, without a timer.
	c = newCallCtx(parent, 20*time.Millisecond)
	for c.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) || c.timer != nil {
		t.Fatalf("Err = %v, timer %v", c.Err(), c.timer)
	}
	<-c.Done() // made after the end: closed at once

	// Done closes at the deadline.
	c = newCallCtx(parent, 20*time.Millisecond)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", c.Err())
	}
	c.cancel()
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatal("cancel after the deadline changed Err")
	}

	// Contexts derived from it end with it.
	c = newCallCtx(parent, time.Hour)
	child, stop := context.WithCancel(c)
	defer stop()
	c.cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("derived context outlived the call")
	}
}

// The request's cancellation cause does not leak into the store call.
func TestCallCtxCause(t *testing.T) {
	parent, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("client went away"))
	c := newCallCtx(parent, time.Millisecond)
	<-c.Done()
	if cause := context.Cause(c); !errors.Is(cause, context.DeadlineExceeded) {
		t.Fatalf("Cause = %v, want deadline exceeded", cause)
	}
}
