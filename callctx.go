package idem

import (
	"context"
	"sync"
	"time"

	"github.com/idemgo/idem/internal/clock"
)

// callCtx is the context of one store call: the values of the request's
// context, none of its cancellation (a client that hangs up must not stop a
// response from being recorded), and a deadline of its own.
//
// It does what context.WithTimeout(context.WithoutCancel(ctx), d) does, in
// two allocations instead of four: its Done channel and timer are made only when a store asks
// for Done. Stores that only look at Err and Deadline (memstore, and
// go-redis for its socket deadlines) then cost no timer.
type callCtx struct {
	parent   context.Context
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{}
	timer *time.Timer
	err   error
}

func newCallCtx(parent context.Context, timeout time.Duration) *callCtx {
	// WithoutCancel also hides the parent's cancellation cause from
	// context.Cause.
	return &callCtx{parent: context.WithoutCancel(parent), deadline: time.Now().Add(timeout)}
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *callCtx) Value(key any) any { return c.parent.Value(key) }

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err == nil {
			if d := time.Until(c.deadline); d > 0 {
				c.timer = time.AfterFunc(d, c.expire)
				return c.done
			}
			c.err = context.DeadlineExceeded
		}
		close(c.done)
	}
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.end(context.DeadlineExceeded)
	}
	return c.err
}

func (c *callCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.end(context.DeadlineExceeded)
	}
}

// cancel ends the call's context, as a CancelFunc would; the caller calls
// it when the store call has returned.
func (c *callCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.err == nil {
		c.end(context.Canceled)
	}
}

// end sets err and closes done if it was made. c.mu must be held and err
// unset.
func (c *callCtx) end(err error) {
	c.err = err
	if c.done != nil {
		close(c.done)
	}
}

func (c *callCtx) String() string { return "idem.storeCall" }

// storeCall is the context of one store call, which the caller cancels
// when the call has returned.
type storeCall interface {
	context.Context
	cancel()
}

// newStoreCall returns the context of one store call that ends after
// timeout on clk: a callCtx on the real clock (nil), so that production
// pays nothing for clocks, or a clockCallCtx.
func newStoreCall(parent context.Context, clk clock.Clock, timeout time.Duration) storeCall {
	if clk == nil {
		return newCallCtx(parent, timeout)
	}
	return &clockCallCtx{parent: context.WithoutCancel(parent), clk: clk, deadline: clk.Now().Add(timeout)}
}

// clockCallCtx is a callCtx whose deadline is on a clock of its own (the
// simulation's).
type clockCallCtx struct {
	parent   context.Context
	clk      clock.Clock
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{}
	timer clock.Timer
	err   error
}

func (c *clockCallCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *clockCallCtx) Value(key any) any { return c.parent.Value(key) }

func (c *clockCallCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err == nil {
			if d := c.deadline.Sub(c.clk.Now()); d > 0 {
				c.timer = c.clk.AfterFunc(d, func() { c.end(context.DeadlineExceeded) })
				return c.done
			}
			c.err = context.DeadlineExceeded
		}
		close(c.done)
	}
	return c.done
}

func (c *clockCallCtx) Err() error {
	if !c.clk.Now().Before(c.deadline) {
		c.end(context.DeadlineExceeded)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *clockCallCtx) cancel() {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	c.end(context.Canceled)
}

// end sets err, and closes done if it was made, unless err is set.
func (c *clockCallCtx) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		if c.done != nil {
			close(c.done)
		}
	}
}

func (c *clockCallCtx) String() string { return "idem.storeCall" }
