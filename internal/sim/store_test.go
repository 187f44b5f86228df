package sim

// The simulated store: a model of the Store contract on a clock of its own
// (the virtual clock plus a skew that jumps), reached over a network that
// delays, loses and duplicates nothing on its own: every fault is a draw.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/clock"
)

var (
	errDead    = errors.New("simstore: the process is dead")
	errRefused = errors.New("simstore: connection refused")
	errReset   = errors.New("simstore: connection reset after the command was sent")
	errTimeout = fmt.Errorf("simstore: no reply: %w", context.DeadlineExceeded)
)

type rec struct {
	state     idem.State
	fp, token string
	exp       time.Time // on the store's clock
	result    []byte    // as Complete gave it (the store may keep the slice)
	snap      []byte    // a copy taken then, to see it never changes
}

type model struct {
	w     *world
	skew  time.Duration
	drift float64
	recs  map[string]*rec
	ended map[string]string // token -> how its in-progress record ended
}

// now is the store's clock: it runs drift faster than the virtual one and
// has jumped by skew.
func (m *model) now() time.Time {
	d := m.w.now.Sub(epoch)
	return epoch.Add(d + time.Duration(float64(d)*m.drift) + m.skew)
}

// get returns the live record of key, forgetting an expired one.
func (m *model) get(key string) *rec {
	r := m.recs[key]
	if r != nil && !m.now().Before(r.exp) {
		if r.state == idem.StateInProgress && m.ended[r.token] == "" {
			m.ended[r.token] = "expired"
		}
		delete(m.recs, key)
		return nil
	}
	return r
}

// holds reports whether token holds a live lease on key.
func (m *model) holds(key, token string) bool {
	r := m.get(key)
	return r != nil && r.state == idem.StateInProgress && r.token == token
}

type call struct {
	op             string
	key, token, fp string
	lease, ttl     time.Duration
	result         []byte
	deadline       time.Time
	a              *actor
	doneAt         time.Time

	// What applying the command gave; what the caller got.
	applied  bool
	applyRec *idem.Record
	applyErr error
	rec      *idem.Record
	err      error
}

func (c *call) String() string {
	return fmt.Sprintf("%s %s tok=%s", c.op, c.key, shortTok(c.token))
}

func shortTok(t string) string {
	if i := len(t) - 4; i > 0 {
		return t[i:]
	}
	return t
}

// apply runs c on the model, at the store's now.
func (m *model) apply(c *call) {
	w := m.w
	c.applied = true
	now := m.now()
	r := m.get(c.key)
	lost := func() {
		c.applyErr = idem.ErrLockLost
		w.logf("store: %v -> lock lost", c)
	}
	switch c.op {
	case "claim":
		if r != nil {
			cp := idem.Record{State: r.state, Fingerprint: r.fp, Token: r.token, Result: r.result}
			if r.state == idem.StateInProgress {
				cp.LeaseLeft = r.exp.Sub(now)
			}
			c.applyRec = &cp
			w.logf("store: %v -> taken (%v)", c, r.state)
			return
		}
		m.recs[c.key] = &rec{state: idem.StateInProgress, fp: c.fp, token: c.token, exp: now.Add(c.lease)}
		w.logf("store: %v -> claimed", c)
	case "complete":
		if r == nil || r.state != idem.StateInProgress || (r.token != c.token && !w.cfg.brokenFence) {
			lost()
			return
		}
		e := w.byResult[string(c.result)]
		switch {
		case e == nil:
			w.violate("%v recorded %q, which no execution produced", c, c.result)
		case e.token != c.token:
			w.violate("%v recorded the result of execution %d, which ran under token %s", c, e.id, shortTok(e.token))
		case !e.ended:
			w.violate("%v recorded execution %d before its work returned", c, e.id)
		case e.stale || e.lostBeforeEnd:
			w.violate("%v recorded execution %d, whose lease had run out while it ran", c, e.id)
		}
		r.state, r.result, r.snap, r.exp = idem.StateCompleted, c.result, bytes.Clone(c.result), now.Add(c.ttl)
		m.ended[c.token] = "completed"
		w.logf("store: %v -> completed %q", c, c.result)
	case "release":
		if r == nil || r.state != idem.StateInProgress || r.token != c.token {
			lost()
			return
		}
		for _, e := range w.execs {
			if e.token == c.token && !e.ended {
				w.violate("%v released the key while execution %d, its owner, still runs", c, e.id)
			}
		}
		delete(m.recs, c.key)
		m.ended[c.token] = "released"
		w.logf("store: %v -> released", c)
	case "renew":
		if r == nil || r.state != idem.StateInProgress || r.token != c.token {
			lost()
			return
		}
		r.exp = now.Add(c.lease)
		w.logf("store: %v -> renewed", c)
	}
}

// handle is the Store a process's Runner uses, and its Clock.
type handle struct{ w *world }

var (
	_ idem.Store   = handle{}
	_ clock.Source = handle{}
)

func (h handle) Clock() clock.Clock { return simClock(h) }

func (h handle) Claim(ctx context.Context, key, token, fp string, lease time.Duration) (*idem.Record, error) {
	if a := h.w.cur; a.client != nil && !a.ghost {
		a.lastClaimToken, a.lastClaimAt = token, h.w.now
	}
	return h.do(ctx, &call{op: "claim", key: key, token: token, fp: fp, lease: lease})
}

func (h handle) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	_, err := h.do(ctx, &call{op: "complete", key: key, token: token, result: result, ttl: ttl})
	return err
}

func (h handle) Release(ctx context.Context, key, token string) error {
	_, err := h.do(ctx, &call{op: "release", key: key, token: token})
	return err
}

func (h handle) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	_, err := h.do(ctx, &call{op: "renew", key: key, token: token, lease: lease})
	return err
}

func (h handle) do(ctx context.Context, c *call) (*idem.Record, error) {
	w := h.w
	a := w.cur
	if a.ghost {
		return nil, errDead
	}
	dl, ok := ctx.Deadline()
	if !ok {
		w.violate("%v sent without a deadline", c)
		dl = w.now.Add(time.Hour)
	}
	c.deadline, c.a = dl, a
	m := w.park(a, request{kind: reqCall, call: c})
	if m.dead {
		return nil, errDead
	}
	return c.rec, c.err
}

// Fault kinds of a store call, drawn in [0, 100): the benign one is 0, so
// that rapid shrinks towards calls that just work.
const (
	faultNone        = 70 // below: delivered after short delays
	faultSlow        = 78 // below: long delays, maybe past the caller's deadline
	faultLostReply   = 84 // below: the command lands, its reply is lost
	faultLostRequest = 88 // below: the command never lands
	faultRefused     = 93 // below: an error at once, nothing lands
	faultReset       = 97 // below: the command lands, the caller gets an error
	// else: the command lands after the caller has given up on it
)

// scheduleCall decides what becomes of a's store call c.
func (w *world) scheduleCall(a *actor, c *call) {
	if w.crashes("crash before call") {
		w.kill(a.p, "before "+c.op)
		return
	}
	w.calls++
	st := w.cfg.storeTimeout
	f := w.draw(0, 99, "fault")
	d1 := w.drawDur(0, 50*time.Millisecond, "request delay")
	d2 := w.drawDur(0, 50*time.Millisecond, "reply delay")
	land, reply, errAt := true, true, false
	if within(a.p.cut, w.now) {
		// Cut off from the store: the command never lands; the caller
		// gets no answer, or a refusal at once.
		f = faultLostReply // [faultLostReply, faultLostRequest): lost on the way
		if w.draw(0, 1, "partition refuses") == 1 {
			f = faultLostRequest // [faultLostRequest, faultRefused): refused
		}
	}
	switch {
	case f < faultNone:
	case f < faultSlow:
		d1 = w.drawDur(0, st*3/2, "slow request")
		d2 = w.drawDur(0, st*3/2, "slow reply")
	case f < faultLostReply:
		reply = false
	case f < faultLostRequest:
		land, reply = false, false
	case f < faultRefused:
		land, errAt = false, true
		d2 = 0
	case f < faultReset:
		errAt = true
	default:
		reply = false
		d1 = c.deadline.Sub(w.now) + w.drawDur(0, w.cfg.lockTTL, "landing after the deadline")
	}
	if land {
		w.at(w.now.Add(d1), nil, func() { w.store.apply(c) })
	}
	c.doneAt = w.now.Add(d1 + d2)
	timedOut := !reply && !errAt || c.doneAt.After(c.deadline)
	if timedOut {
		c.doneAt = c.deadline
	}
	a.inCall = c
	w.logf("%s sends %v (fault %d, land=%v reply=%v, done at +%v)", a.name, c, f, land, reply, c.doneAt.Sub(w.now))
	w.at(c.doneAt, a.p, func() {
		a.inCall = nil
		if w.crashes("crash before reply") {
			w.kill(a.p, "as the reply to "+c.op+" comes")
			return
		}
		switch {
		case timedOut:
			c.err = errTimeout
		case errAt:
			c.err = errRefused
			if land {
				c.err = errReset
			}
		default:
			c.rec, c.err = c.applyRec, c.applyErr
		}
		w.logf("%s gets %v: rec=%v err=%v", a.name, c, c.rec != nil, c.err)
		w.run(a, wakeMsg{call: c})
	})
}
