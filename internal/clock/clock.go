// Package clock is how the engine reads time and arms timers, so that a
// deterministic simulation can run the real engine on virtual time.
//
// A nil Clock is the real one (package time); the functions of this
// package check for nil and call package time directly, so that the
// production path costs a nil check and nothing else. The engine takes a
// Clock from a Store that implements Source: since Clock is internal, only
// code inside this module (the simulation in internal/sim) can implement
// it, and no user store can change the engine's time by accident.
package clock

import (
	"context"
	"time"
)

// Clock is a source of time and timers.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed (at once for
	// d <= 0), as time.AfterFunc does.
	AfterFunc(d time.Duration, f func()) Timer
	// Sleep pauses the caller for d, or until ctx is done, and reports
	// whether the whole of d passed.
	Sleep(ctx context.Context, d time.Duration) bool
}

// Timer is what AfterFunc returns; *time.Timer is one.
type Timer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

// Source is implemented by a Store that brings its own Clock.
type Source interface {
	Clock() Clock
}

// Of returns the Clock of store if it brings one, or nil (the real clock).
func Of(store any) Clock {
	if s, ok := store.(Source); ok {
		return s.Clock()
	}
	return nil
}

// Now returns c.Now(), or time.Now() for a nil c.
func Now(c Clock) time.Time {
	if c == nil {
		return time.Now()
	}
	return c.Now()
}

// Until returns t minus Now(c).
func Until(c Clock, t time.Time) time.Duration {
	if c == nil {
		return time.Until(t)
	}
	return t.Sub(c.Now())
}

// AfterFunc returns c.AfterFunc(d, f), or time.AfterFunc(d, f) for a nil c.
func AfterFunc(c Clock, d time.Duration, f func()) Timer {
	if c == nil {
		return time.AfterFunc(d, f)
	}
	return c.AfterFunc(d, f)
}

// Sleep returns c.Sleep(ctx, d); for a nil c it waits on a timer and ctx.
func Sleep(c Clock, ctx context.Context, d time.Duration) bool {
	if c != nil {
		return c.Sleep(ctx, d)
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
