package sim

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"pgregory.net/rapid"
)

type simConfig struct {
	lockTTL, storeTimeout time.Duration
	crashPct              int // chance in 100 that a process dies at a step
	maxSteps              int
	horizon               time.Duration
	maxAttempts           int
	// For the tests that show the invariants catch what they should: a
	// store clock this much fast (instead of a drawn drift of up to 5%),
	// and a store whose Complete forgets to check the token.
	drift       float64
	brokenFence bool
}

func defaultConfig() simConfig {
	return simConfig{
		lockTTL:      3 * time.Second,
		storeTimeout: time.Second, // the default: a third of the lock TTL
		crashPct:     1,
		maxSteps:     20000,
		horizon:      10 * time.Minute,
		maxAttempts:  5,
	}
}

// execution is one run of the work of a key: what the handler of a payment
// would be. Its result names it, so that the store can tell whose result it
// records.
type execution struct {
	id                     int
	key, fp, token, result string
	p                      *proc
	a                      *actor
	ctx                    context.Context
	claimAt, startAt       time.Time
	endAt                  time.Time
	ended, killed          bool
	// stale: it ran beside another execution of its key whose lease was
	// live; lostBeforeEnd: its lease had run out in the store when its
	// work returned. Neither may ever be recorded.
	stale, lostBeforeEnd bool
}

type client struct {
	id      int
	key, fp string // key as the client sends it
	skey    string // as the store sees it
	got     [][]byte
}

// startedBlind reports whether e's owner could not know, as its work
// started, that its lease had run out: its process was paused, or the
// store's clock jumped forward, since its claim was sent. Then only fencing
// protects the record.
func (w *world) startedBlind(e *execution) bool {
	for _, s := range e.p.paused {
		if s.until.After(e.claimAt) && !s.from.After(w.now) {
			return true
		}
	}
	for _, j := range w.jumps {
		if !j.Before(e.claimAt) {
			return true
		}
	}
	return false
}

// blind reports whether e's owner cannot know yet that its lease has run
// out: its process is paused (or resumes only now), or the store's clock
// jumped forward within the last lock TTL, which the owner counts on its
// own clock. A store clock that merely runs fast (w.store.drift) is no
// excuse: the lease margin is there for it.
func (w *world) blind(e *execution) bool {
	for _, s := range e.p.paused {
		if !s.from.After(w.now) && !s.until.Before(w.now) {
			return true
		}
	}
	for _, j := range w.jumps {
		if w.now.Sub(j) < w.cfg.lockTTL {
			return true
		}
	}
	return false
}

// startExec checks, as the work of a key starts, that it holds the key
// alone: every other execution still running has lost its lease in the
// store (never released while it ran), and knows it unless it could not.
func (w *world) startExec(a *actor, c *client, ctx context.Context) *execution {
	e := &execution{id: len(w.execs), key: c.skey, fp: c.fp, token: a.lastClaimToken, p: a.p, a: a, ctx: ctx, claimAt: a.lastClaimAt, startAt: w.now}
	e.result = fmt.Sprintf("%s#%d", c.skey, e.id)
	w.execs = append(w.execs, e)
	w.byResult[e.result] = e
	live := w.store.holds(e.key, e.token)
	w.logf("%s starts execution %d of %s (tok=%s, live lease=%v)", a.name, e.id, e.key, shortTok(e.token), live)
	if !live && !w.startedBlind(e) {
		w.violate("execution %d of %s started without a live lease, and nothing kept its owner from knowing", e.id, e.key)
	}
	if !live {
		e.stale = true
	}
	for _, o := range w.execs {
		if o == e || o.key != e.key || o.ended {
			continue
		}
		if !live {
			continue // e is the stale one; o may be the rightful owner
		}
		o.stale = true
		if how := w.store.ended[o.token]; how != "expired" {
			w.violate("execution %d of %s starts while execution %d still runs and its lease did not run out (it was %q)", e.id, e.key, o.id, how)
		}
		if !w.blind(o) && !errors.Is(context.Cause(o.ctx), idem.ErrLockLost) {
			w.violate("execution %d of %s starts while execution %d still runs believing it holds the key (its context is not cancelled with ErrLockLost)", e.id, e.key, o.id)
		}
	}
	return e
}

func (w *world) endExec(e *execution) {
	e.ended, e.endAt = true, w.now
	e.lostBeforeEnd = !w.store.holds(e.key, e.token)
	w.logf("execution %d of %s returns (lease lost=%v)", e.id, e.key, e.lostBeforeEnd)
}

// Outcomes of the work, drawn in [0, 100).
const (
	workKeep  = 85 // below: a result to keep
	workError = 95 // below: an error (nothing kept, the key released)
	// else: a panic
)

var (
	errWork   = errors.New("work failed")
	workPanic = "work panicked"
)

func (w *world) work(a *actor, c *client) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		if a.ghost {
			return nil, errDead
		}
		e := w.startExec(a, c, ctx)
		m := w.park(a, request{kind: reqWork, exec: e})
		if m.dead {
			return nil, errDead
		}
		w.endExec(e)
		switch {
		case m.outcome < workKeep:
			return []byte(e.result), nil
		case m.outcome < workError:
			return nil, errWork
		}
		panic(workPanic)
	}
}

func (w *world) scheduleWork(a *actor, e *execution) {
	var d time.Duration
	switch k := w.draw(0, 99, "work length"); {
	case k < 50:
		d = w.drawDur(0, 500*time.Millisecond, "short work")
	case k < 85:
		d = w.drawDur(500*time.Millisecond, 4*time.Second, "long work")
	default:
		d = w.drawDur(4*time.Second, 10*time.Second, "very long work")
	}
	outcome := w.draw(0, 99, "work outcome")
	attempt := a.attempts
	var done func()
	done = func() {
		// The client stops its lease when the work returns, waiting for a
		// renewal in flight: its work returns once that renewal's reply
		// has come.
		for _, b := range w.actors {
			if b.parent == a && b.attempt == attempt && !b.done && b.inCall != nil {
				w.at(b.inCall.doneAt, a.p, done)
				return
			}
		}
		if w.crashes("crash as work returns") {
			w.kill(a.p, "as its work returns")
			return
		}
		w.run(a, wakeMsg{outcome: outcome})
	}
	w.at(w.now.Add(d), a.p, done)
}

// received checks a response a client got without error: it is the one
// recorded for its key, for its fingerprint.
func (w *world) received(c *client, res []byte) {
	r := w.store.get(c.skey)
	switch {
	case r == nil || r.state != idem.StateCompleted:
		w.violate("client %d got %q for %s, which has no recorded result", c.id, res, c.skey)
	case !bytes.Equal(r.result, res):
		w.violate("client %d got %q for %s, whose recorded result is %q", c.id, res, c.skey, r.result)
	default:
		if e := w.byResult[string(res)]; e == nil || e.fp != c.fp {
			w.violate("client %d (fingerprint %s) got %q, the result of work for another fingerprint", c.id, c.fp, res)
		}
	}
	c.got = append(c.got, bytes.Clone(res))
	// A caller may scribble on what it got: what later callers get must not
	// change.
	for i := range res {
		res[i] = '!'
	}
}

// clientLoop sends c's call to a process, and again after a pause that
// honours the answer (the lease left of a key in progress, a second after a
// store error), until it gets the result, a mismatch, or gives up.
func (w *world) clientLoop(a *actor, c *client, p *proc) {
	for {
		a.attempts++
		a.p = p
		var (
			res      []byte
			err      error
			panicked bool
		)
		func() {
			defer func() {
				if r := recover(); r != nil {
					if r != workPanic {
						w.violate("client %d: unexpected panic: %v\n%s", c.id, r, debug.Stack())
					}
					panicked = true
				}
			}()
			res, err = p.runner(context.Background(), c.key, c.fp, w.work(a, c))
		}()
		died := a.ghost
		a.p, a.ghost = nil, false
		var ip *idem.InProgressError
		delay := time.Second
		switch {
		case died:
			w.logf("%s: its process died", a.name)
		case panicked:
			w.logf("%s: the work panicked", a.name)
		case err == nil:
			w.logf("%s: got %q", a.name, res)
			w.received(c, res)
			return
		case errors.Is(err, idem.ErrFingerprintMismatch):
			w.logf("%s: mismatch", a.name)
			return
		case errors.As(err, &ip):
			if ip.RetryAfter <= 0 {
				w.violate("client %d: in progress with Retry-After %v", c.id, ip.RetryAfter)
			}
			delay = max(ip.RetryAfter, time.Millisecond)
			w.logf("%s: in progress, retry after %v", a.name, ip.RetryAfter)
		default:
			w.logf("%s: error %v", a.name, err)
		}
		if a.attempts >= w.cfg.maxAttempts {
			return
		}
		m := w.park(a, request{kind: reqSleep, d: delay, attempt: true})
		if m.dead {
			return // the world ends
		}
		p = m.proc
	}
}

var discard = slog.New(slog.NewTextHandler(discardWriter{}, &slog.HandlerOptions{Level: slog.LevelError + 100}))

type discardWriter struct{}

func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }

func (w *world) newProc(slot int) *proc {
	w.procs++
	p := &proc{id: w.procs, slot: slot}
	opts := []idem.Option{idem.WithLockTTL(w.cfg.lockTTL), idem.WithTTL(24 * time.Hour), idem.WithLogger(discard)}
	if w.wait > 0 {
		opts = append(opts, idem.WithWait(w.wait))
	}
	r, err := idem.NewRunner(handle{w}, opts...)
	if err != nil {
		panic(err)
	}
	p.runner = r.Do
	return p
}

func newWorld(src source, cfg simConfig) *world {
	w := &world{src: src, cfg: cfg, now: epoch, yield: make(chan struct{}), byResult: map[string]*execution{}}
	w.store = &model{w: w, recs: map[string]*rec{}, ended: map[string]string{}}
	return w
}

// crashes draws whether the process dies at this step; a draw of 0, the
// one rapid shrinks towards, says no.
func (w *world) crashes(label string) bool {
	return w.draw(0, 99, label) >= 100-w.cfg.crashPct
}

// setup draws the processes, clients and faults of a run.
func (w *world) setup() {
	if w.draw(0, 3, "wait") == 3 {
		w.wait = 2 * time.Second
	}
	nprocs := w.draw(1, 3, "processes")
	for i := 0; i < nprocs; i++ {
		w.slots = append(w.slots, w.newProc(i))
	}
	nkeys := w.draw(1, 2, "keys")
	nclients := w.draw(1, 6, "clients")
	for i := 0; i < nclients; i++ {
		c := &client{id: i, key: "k" + strconv.Itoa(w.draw(0, nkeys-1, "client key")), fp: "A"}
		if w.draw(0, 9, "other fingerprint") == 9 {
			c.fp = "B"
		}
		c.skey = "do|" + c.key
		w.clients = append(w.clients, c)
		start := w.drawDur(0, 5*time.Second, "client start")
		slot := w.draw(0, nprocs-1, "client process")
		w.at(epoch.Add(start), nil, func() {
			w.spawn(nil, nil, 0, fmt.Sprintf("c%d", c.id), func(a *actor) {
				a.client = c
				w.clientLoop(a, c, w.slots[slot])
			})
		})
	}
	for i, n := 0, w.draw(0, 2, "pauses"); i < n; i++ {
		at := w.drawDur(0, 15*time.Second, "pause at")
		slot := w.draw(0, nprocs-1, "pause process")
		d := w.drawDur(100*time.Millisecond, 3*w.cfg.lockTTL, "pause length")
		w.at(epoch.Add(at), nil, func() {
			p := w.slots[slot]
			p.paused = append(p.paused, span{w.now, w.now.Add(d)})
			w.logf("process %d pauses for %v", p.id, d)
		})
	}
	for i, n := 0, w.draw(0, 2, "kills"); i < n; i++ {
		at := w.drawDur(0, 15*time.Second, "kill at")
		slot := w.draw(0, nprocs-1, "kill process")
		w.at(epoch.Add(at), nil, func() { w.kill(w.slots[slot], "killed") })
	}
	for i, n := 0, w.draw(0, 2, "partitions"); i < n; i++ {
		at := w.drawDur(0, 15*time.Second, "partition at")
		slot := w.draw(0, nprocs-1, "partition process")
		d := w.drawDur(100*time.Millisecond, 2*w.cfg.lockTTL, "partition length")
		w.at(epoch.Add(at), nil, func() {
			p := w.slots[slot]
			p.cut = append(p.cut, span{w.now, w.now.Add(d)})
			w.logf("process %d loses the store for %v", p.id, d)
		})
	}
	// The store's clock runs up to 5% fast: the lease margin (a tenth)
	// must cover it.
	w.store.drift = float64(w.draw(0, 50, "store clock drift per mille")) / 1000
	if w.cfg.drift != 0 {
		w.store.drift = w.cfg.drift
	}
	for i, n := 0, w.draw(0, 1, "clock jumps"); i < n; i++ {
		at := w.drawDur(0, 15*time.Second, "jump at")
		j := w.drawDur(0, 3*w.cfg.lockTTL, "jump") - w.cfg.lockTTL
		w.at(epoch.Add(at), nil, func() {
			w.store.skew += j
			if j > 0 {
				w.jumps = append(w.jumps, w.now)
			} else {
				w.back -= j
			}
			w.logf("the store's clock jumps by %v", j)
		})
	}
}

// check runs after every step: a recorded result never changes.
func (w *world) check() {
	for key, r := range w.store.recs {
		if r.state == idem.StateCompleted && !bytes.Equal(r.result, r.snap) {
			w.violate("the recorded result of %s changed from %q to %q", key, r.snap, r.result)
		}
	}
}

// final checks the world once the clients have stopped and every event
// has run: nothing of the engine runs on, and every key is completed or
// absent once the longest lease has run out.
func (w *world) final() {
	if n := w.q.Len(); n > 0 {
		w.violate("%d events still due %v after the start: the engine does not stop", n, w.cfg.horizon)
		return
	}
	for _, a := range w.actors {
		if !a.done && !(a.client != nil && a.attempts >= w.cfg.maxAttempts) {
			w.violate("%s is stuck waiting for %v", a.name, a.req.kind)
		}
	}
	w.now = w.now.Add(w.cfg.lockTTL + w.back)
	for key, r := range w.store.recs {
		if w.store.get(key) != nil && r.state != idem.StateCompleted {
			w.violate("%s is still %v a lease after everything stopped", key, r.state)
		}
	}
	for _, c := range w.clients {
		for _, got := range c.got {
			r := w.store.get(c.skey)
			if r == nil || !bytes.Equal(r.result, got) {
				w.violate("client %d got %q for %s, which does not keep it", c.id, got, c.skey)
			}
		}
	}
}

// shutdown ends every actor left, as ghosts.
func (w *world) shutdown() {
	w.stopping = true
	for _, p := range w.slots {
		w.kill(p, "the run ends") // renewals first, as when a process dies
	}
	for _, a := range w.actors {
		for !a.done {
			w.run(a, wakeMsg{dead: true})
		}
	}
}

// simulate runs one schedule; w.fail says what it broke.
func simulate(src source, cfg simConfig) *world {
	w := newWorld(src, cfg)
	defer w.shutdown()
	w.setup()
	w.loop(epoch.Add(cfg.horizon))
	if w.fail == "" {
		w.final()
	}
	return w
}

func runSchedule(t *rapid.T, cfg simConfig) *world {
	w := simulate(rapidSource{t}, cfg)
	if w.fail != "" {
		t.Fatalf("%s\n--- the run's last steps:\n%s", w.fail, w.traceTail(120))
	}
	return w
}

// simChecks is the number of schedules a run of TestSimulation tries:
// IDEM_SIM_CHECKS, or a default that keeps the test script quick.
func simChecks(def int) int {
	if s := os.Getenv("IDEM_SIM_CHECKS"); s != "" {
		n, err := strconv.Atoi(s)
		if err == nil && n > 0 {
			return n
		}
	}
	return def
}

// TestSimulation runs the real Runner against the simulated store under
// thousands of generated schedules. A failure prints the schedule's draws
// and how to run it again (-rapid.seed or -rapid.failfile); the fail file
// it writes under testdata/rapid/TestSimulation is replayed by every later
// run.
func TestSimulation(t *testing.T) {
	setChecks(t, 5000)
	var st stats
	rapid.Check(t, func(rt *rapid.T) { st.add(runSchedule(rt, defaultConfig())) })
	t.Logf("%d schedules: %d steps, %d store calls, %d executions (%d overlapping a lost lease, %d killed), %d responses, %d process deaths, %d pauses, %d clock jumps",
		st.runs, st.steps, st.calls, st.execs, st.stale, st.killed, st.responses, st.deaths, st.pauses, st.jumps)
}

// stats sums what the schedules of a test did, to show what they cover.
type stats struct {
	runs, steps, calls, execs, stale, killed, responses, deaths, pauses, jumps int
}

func (s *stats) add(w *world) {
	s.runs++
	s.steps += w.steps
	s.calls += w.calls
	s.execs += len(w.execs)
	for _, e := range w.execs {
		if e.stale {
			s.stale++
		}
		if e.killed {
			s.killed++
		}
	}
	for _, c := range w.clients {
		s.responses += len(c.got)
	}
	s.deaths += w.deaths
	for _, p := range w.slots {
		s.pauses += len(p.paused)
	}
	s.jumps += len(w.jumps)
}

// setChecks sets rapid's number of checks to IDEM_SIM_CHECKS, or to def,
// unless -rapid.checks is given.
func setChecks(t *testing.T, def int) {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "rapid.checks" })
	if given {
		return
	}
	if err := flag.Set("rapid.checks", strconv.Itoa(simChecks(def))); err != nil {
		t.Fatal(err)
	}
}

// catches runs schedules from seeded generators under cfg until one breaks
// an invariant, and returns what it broke; it fails t if none does.
func catches(t *testing.T, cfg simConfig, tries int) string {
	t.Helper()
	for seed := uint64(1); seed <= uint64(tries); seed++ {
		w := simulate(randSource{rand.New(rand.NewPCG(seed, 0))}, cfg)
		if w.fail != "" {
			t.Logf("seed %d: %s", seed, w.fail)
			return w.fail
		}
	}
	t.Fatalf("no violation in %d schedules", tries)
	return ""
}

// A store that records a Complete from any token lets an owner whose lease
// ran out overwrite the work of the next one: the simulation must see it.
func TestSimulationCatchesBrokenFence(t *testing.T) {
	cfg := defaultConfig()
	cfg.brokenFence = true
	if got := catches(t, cfg, 5000); !strings.Contains(got, "lease had run out") {
		t.Fatalf("caught the wrong thing: %s", got)
	}
}

// A store clock 30% fast ends leases before the owner's margin: owners then
// work on believing they hold keys that others have claimed, and the
// simulation must see it.
func TestSimulationCatchesLeaseOutlivingTheStore(t *testing.T) {
	cfg := defaultConfig()
	cfg.drift = 0.3
	if got := catches(t, cfg, 5000); !strings.Contains(got, "believing it holds the key") {
		t.Fatalf("caught the wrong thing: %s", got)
	}
}

// replaySource replays the draws logged in a fail file of rapid (its
// "[rapid] draw label: value" lines), in order; past their end, and for a
// value out of range, it draws the least value, which is the calm one
// everywhere. So a schedule keeps its faults after the code changes, where
// rapid would call its fail file no longer valid.
type replaySource struct {
	vals []int
	next int
}

func (s *replaySource) draw(lo, hi int, _ string) int {
	if s.next >= len(s.vals) {
		return lo
	}
	v := s.vals[s.next]
	s.next++
	if v < lo || v > hi {
		return lo
	}
	return v
}

func loadDraws(t *testing.T, path string) []int {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vals []int
	for _, line := range strings.Split(string(data), "\n") {
		_, rest, ok := strings.Cut(line, "[rapid] draw ")
		if !ok {
			continue
		}
		i := strings.LastIndex(rest, ": ")
		v, err := strconv.Atoi(strings.TrimSpace(rest[i+2:]))
		if i < 0 || err != nil {
			t.Fatalf("%s: cannot read %q", path, line)
		}
		vals = append(vals, v)
	}
	if len(vals) == 0 {
		t.Fatalf("%s: no draws", path)
	}
	return vals
}

// TestSimulationCorpus replays the schedules of testdata/corpus: each once
// broke an invariant (its name says how), and must not again.
func TestSimulationCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/corpus/*.fail")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".fail"), func(t *testing.T) {
			w := simulate(&replaySource{vals: loadDraws(t, f)}, defaultConfig())
			if w.fail != "" {
				t.Fatalf("%s\n--- the run's last steps:\n%s", w.fail, w.traceTail(120))
			}
		})
	}
}
