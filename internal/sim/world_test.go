package sim

// The simulated world: a virtual clock, an event queue, and actors. An actor
// is a goroutine that runs engine code (a client calling Runner.Do, a lease
// renewal, a background release); only one runs at a time, holding the
// baton, and it gives the baton back whenever it waits on something of the
// world (a store call, a sleep, the handler's work) or ends. Everything else
// the scheduler decides with draws from rapid, on its own goroutine, so a
// run is a pure function of its draws: a failing one shrinks and replays
// exactly.

import (
	"container/heap"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"time"

	"github.com/idemgo/idem/internal/clock"
	"pgregory.net/rapid"
)

// source makes the scheduler's decisions: rapid's draws, which shrink, or
// a seeded generator.
type source interface {
	draw(lo, hi int, label string) int
}

type rapidSource struct{ t *rapid.T }

func (s rapidSource) draw(lo, hi int, label string) int {
	return rapid.IntRange(lo, hi).Draw(s.t, label)
}

type randSource struct{ r *rand.Rand }

func (s randSource) draw(lo, hi int, _ string) int { return lo + s.r.IntN(hi-lo+1) }

// epoch is the virtual time at which every run starts.
var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// hangLimit bounds the real time the scheduler waits for an actor to give
// the baton back. An actor that takes longer is blocked outside the world
// (a deadlock in the engine, or a wait the simulation does not know of):
// the run fails with every goroutine's stack rather than hang.
const hangLimit = 20 * time.Second

type event struct {
	at  time.Time
	seq uint64
	p   *proc // the process the event happens in: paused with it, dropped when it dies; nil for the network and the clients
	fn  func()
	// cancelled: a stopped timer's event, skipped.
	cancelled bool
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// wakeMsg is what an actor gets when the scheduler hands it the baton.
type wakeMsg struct {
	dead    bool // its process died: run on as a ghost (every wait returns at once)
	call    *call
	outcome int // of the handler's work
	proc    *proc
}

// request is what an actor waits for when it gives the baton back.
type request struct {
	kind    reqKind
	d       time.Duration // reqSleep
	call    *call         // reqCall
	exec    *execution    // reqWork
	attempt bool          // reqSleep of a client between attempts: pick a process
}

type reqKind uint8

const (
	reqNone reqKind = iota
	reqSleep
	reqCall
	reqWork
)

type actor struct {
	id      int
	name    string
	p       *proc  // the process it runs in (nil: a client between attempts)
	parent  *actor // the client whose timer started it
	attempt int    // the parent's attempt that started it
	wake    chan wakeMsg
	req     request
	done    bool
	ghost   bool
	inCall  *call // its store call in flight

	// Of a client.
	client         *client
	attempts       int
	lastClaimToken string
	lastClaimAt    time.Time
}

type proc struct {
	id, slot int
	dead     bool
	paused   []span // pauses, as [from, until)
	cut      []span // partitions from the store
	runner   runnerDo
}

type span struct{ from, until time.Time }

func within(spans []span, t time.Time) bool {
	for _, s := range spans {
		if !t.Before(s.from) && t.Before(s.until) {
			return true
		}
	}
	return false
}

func (p *proc) pausedUntil(t time.Time) time.Time {
	for _, s := range p.paused {
		if !t.Before(s.from) && t.Before(s.until) {
			return s.until
		}
	}
	return time.Time{}
}

type runnerDo func(ctx context.Context, key, fp string, fn func(context.Context) ([]byte, error)) ([]byte, error)

type world struct {
	src    source
	cfg    simConfig
	now    time.Time
	seq    uint64
	q      eventQueue
	cur    *actor
	yield  chan struct{}
	actors []*actor
	slots  []*proc // the live process of each slot
	procs  int
	store  *model
	execs  []*execution
	jumps  []time.Time   // forward jumps of the store's clock
	back   time.Duration // how far it jumped back in all
	fail   string
	// Of the run.
	wait     time.Duration // WithWait of every process
	byResult map[string]*execution
	clients  []*client
	stopping bool
	trace    []string
	steps    int
	calls    int
	deaths   int
}

func (w *world) logf(format string, args ...any) {
	line := fmt.Sprintf("%8.3fs ", w.now.Sub(epoch).Seconds()) + fmt.Sprintf(format, args...)
	w.trace = append(w.trace, line)
}

// violate records a broken invariant; the scheduler fails the run after
// the current step.
func (w *world) violate(format string, args ...any) {
	if w.fail == "" {
		w.fail = fmt.Sprintf(format, args...)
		w.logf("VIOLATION: %s", w.fail)
	}
}

func (w *world) draw(lo, hi int, label string) int {
	return w.src.draw(lo, hi, label)
}

// drawDur draws a duration in [lo, hi] in steps of a millisecond.
func (w *world) drawDur(lo, hi time.Duration, label string) time.Duration {
	return lo + time.Duration(w.draw(0, int((hi-lo)/time.Millisecond), label))*time.Millisecond
}

func (w *world) at(t time.Time, p *proc, fn func()) *event {
	w.seq++
	e := &event{at: t, seq: w.seq, p: p, fn: fn}
	heap.Push(&w.q, e)
	return e
}

// loop runs events until none is left or until is passed.
func (w *world) loop(until time.Time) {
	for w.q.Len() > 0 && w.fail == "" {
		e := heap.Pop(&w.q).(*event)
		if e.at.After(until) {
			heap.Push(&w.q, e)
			return
		}
		if e.cancelled || (e.p != nil && e.p.dead) {
			continue
		}
		if e.p != nil {
			if u := e.p.pausedUntil(e.at); !u.IsZero() {
				w.at(u, e.p, e.fn) // keeps the order of the paused events
				continue
			}
		}
		w.now = e.at
		w.steps++
		if w.steps > w.cfg.maxSteps {
			w.violate("more than %d steps: something keeps running", w.cfg.maxSteps)
			return
		}
		e.fn()
		if w.fail == "" {
			w.check()
		}
	}
}

// spawn starts an actor running f in process p and runs it until it waits
// or ends.
func (w *world) spawn(p *proc, parent *actor, attempt int, name string, f func(a *actor)) *actor {
	a := &actor{id: len(w.actors), name: name, p: p, parent: parent, attempt: attempt, wake: make(chan wakeMsg)}
	w.actors = append(w.actors, a)
	go func() {
		m := <-a.wake
		if m.dead {
			a.ghost = true
		}
		defer func() {
			a.done = true
			w.yield <- struct{}{}
		}()
		f(a)
	}()
	w.run(a, wakeMsg{dead: p != nil && p.dead})
	return a
}

// run hands the baton to a and takes it back when a waits or ends, then
// acts on what a waits for.
func (w *world) run(a *actor, m wakeMsg) {
	prev := w.cur
	w.cur = a
	a.req = request{}
	a.wake <- m
	select {
	case <-w.yield:
	case <-time.After(hangLimit):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		panic(fmt.Sprintf("sim: actor %s did not give the baton back within %v: it is blocked outside the world\n%s", a.name, hangLimit, buf[:n]))
	}
	w.cur = prev
	if a.done || w.stopping {
		return
	}
	switch a.req.kind {
	case reqSleep:
		w.scheduleSleep(a)
	case reqCall:
		w.scheduleCall(a, a.req.call)
	case reqWork:
		w.scheduleWork(a, a.req.exec)
	default:
		panic("sim: actor " + a.name + " waits for nothing")
	}
}

// park gives the baton back, waiting for r; it runs on a's goroutine.
func (w *world) park(a *actor, r request) wakeMsg {
	a.req = r
	w.yield <- struct{}{}
	m := <-a.wake
	if m.dead {
		a.ghost = true
	}
	return m
}

func (w *world) scheduleSleep(a *actor) {
	r := a.req
	if r.attempt {
		// A client between attempts: it sends its next attempt to a
		// process of its choice.
		slot := w.draw(0, len(w.slots)-1, "retry process")
		w.at(w.now.Add(r.d), nil, func() {
			w.run(a, wakeMsg{proc: w.slots[slot]})
		})
		return
	}
	w.at(w.now.Add(r.d), a.p, func() { w.run(a, wakeMsg{}) })
}

// kill ends process p at once: its actors run on as ghosts (every wait
// returns at once, every store call fails without reaching the store) until
// they end or, for a client, leave the process. A new process takes its
// slot. Store calls already sent still land.
func (w *world) kill(p *proc, why string) {
	if p.dead {
		return
	}
	w.logf("process %d dies (%s)", p.id, why)
	p.dead = true
	w.deaths++
	for _, e := range w.execs {
		if e.p == p && !e.ended {
			e.ended, e.killed, e.endAt = true, true, w.now
		}
	}
	// Renewals and releases first: a client that stops its lease waits for
	// a renewal in flight.
	for _, pass := range []bool{false, true} {
		for _, a := range w.actors {
			if a.done || a.p != p || (a.client != nil) != pass || a == w.cur {
				continue
			}
			w.run(a, wakeMsg{dead: true})
		}
	}
	if !w.stopping {
		w.slots[p.slot] = w.newProc(p.slot)
	}
}

// simClock is the Clock the engine runs on (see clock.Source).
type simClock struct{ w *world }

var _ clock.Clock = simClock{}

func (c simClock) Now() time.Time { return c.w.now }

func (c simClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	w := c.w
	a := w.cur
	t := &simTimer{w: w, owner: a, f: f}
	if a != nil {
		t.attempt = a.attempts
	}
	if a == nil || a.ghost {
		t.dead = true
		return t
	}
	t.p = a.p
	t.Reset(d)
	return t
}

func (c simClock) Sleep(ctx context.Context, d time.Duration) bool {
	w := c.w
	a := w.cur
	if a.ghost || ctx.Err() != nil {
		return false
	}
	m := w.park(a, request{kind: reqSleep, d: max(d, 0)})
	return !m.dead
}

type simTimer struct {
	w     *world
	owner *actor
	p     *proc
	f     func()
	ev    *event
	dead  bool
	n     int
	// attempt is the owner's attempt that armed the timer.
	attempt int
}

func (t *simTimer) Stop() bool {
	if t.ev == nil {
		return false
	}
	t.ev.cancelled = true
	t.ev = nil
	return true
}

func (t *simTimer) Reset(d time.Duration) bool {
	active := t.Stop()
	if t.dead || t.p.dead {
		return active
	}
	var ev *event
	ev = t.w.at(t.w.now.Add(max(d, 0)), t.p, func() {
		if t.ev != ev {
			return
		}
		t.ev = nil
		t.n++
		owner := t.owner
		name := fmt.Sprintf("%s/timer%d", owner.name, t.n)
		t.w.spawn(t.p, owner, t.attempt, name, func(*actor) { t.f() })
	})
	t.ev = ev
	return active
}

func (w *world) traceTail(n int) string {
	from := max(0, len(w.trace)-n)
	return strings.Join(w.trace[from:], "\n")
}
