package linearize_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/idemgo/idem"
)

// workload says what a history is made of.
type workload struct {
	clients int // goroutines calling the store at once
	ops     int // calls in all
	// Keys come and go: call n picks one of the keys n/perKey,
	// n/perKey+1, ... n/perKey+window-1, so that window keys are
	// contended at a time and each key sees about perKey calls, fresh keys
	// being claimed all along.
	window, perKey int
	// maxTime stops a history early, whatever ops says.
	maxTime time.Duration
	// lease and ttl bound the leases and retention TTLs the calls ask for:
	// each call picks one in [min, max].
	leaseMin, leaseMax time.Duration
	ttlMin, ttlMax     time.Duration
	// callTimeout bounds each call (its context's deadline).
	callTimeout time.Duration
	// pause, when set, makes each client wait up to pause between calls,
	// so that a history lasts long enough for short leases to run out.
	pause time.Duration
	// faults, when set, runs beside the clients from the first call and
	// stops when its context ends: once three quarters of the calls have
	// been made. The last quarter runs without faults, with calls bounded
	// by calmTimeout, so that a history also shows how the store stands
	// once the faults are over, and holds successful calls however slow
	// the machine is.
	faults      func(ctx context.Context)
	calmTimeout time.Duration
	// lossy says whether calls may fail; when false, a call that returns
	// an error other than idem.ErrLockLost fails the test.
	lossy bool
}

// longLease is a lease (and retention TTL) far longer than any history.
const longLease = 10 * time.Minute

// noExpiry is the workload of histories in which nothing expires.
func noExpiry(clients, window, perKey, ops int) workload {
	return workload{
		clients: clients, window: window, perKey: perKey, ops: ops, maxTime: 20 * time.Second,
		leaseMin: longLease, leaseMax: longLease + time.Minute,
		ttlMin: longLease, ttlMax: longLease + time.Minute,
		callTimeout: 10 * time.Second,
	}
}

// shortLeases is the workload of histories in which leases and retention
// TTLs run out while the history runs.
func shortLeases(clients, window, perKey, ops int) workload {
	return workload{
		clients: clients, window: window, perKey: perKey, ops: ops, maxTime: 20 * time.Second,
		leaseMin: 20 * time.Millisecond, leaseMax: 120 * time.Millisecond,
		ttlMin: 20 * time.Millisecond, ttlMax: 120 * time.Millisecond,
		callTimeout: 10 * time.Second,
		pause:       8 * time.Millisecond,
	}
}

// scale multiplies the number of histories of every test; set
// IDEM_LINEARIZE_SCALE to run longer (for example 20).
func scale(t testing.TB) int {
	v := os.Getenv("IDEM_LINEARIZE_SCALE")
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("IDEM_LINEARIZE_SCALE=%q: want a positive whole number", v)
	}
	return n
}

// recorder collects the operations of one history.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	lost  int // calls whose reply was lost
}

// now is the time since the history started, from the monotonic clock.
func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(client int, in input, out output) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if out.kind == outUnknown {
		r.lost++
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: in.call, Output: out, Return: in.ret})
}

// history returns the operations recorded. The return time of a call whose
// reply was lost is infinite; porcupine is given one past the last call or
// return of the history, which orders the same way.
func (r *recorder) history() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	var last int64
	for _, op := range r.ops {
		if op.Return != never && op.Return > last {
			last = op.Return
		}
		if op.Call > last {
			last = op.Call
		}
	}
	ops := make([]porcupine.Operation, len(r.ops))
	copy(ops, r.ops)
	for i := range ops {
		if ops[i].Return == never {
			ops[i].Return = last + 1
		}
	}
	return ops
}

// stats counts what the calls of a history answered.
type stats struct {
	ops, lost, claimed, records, ok, lockLost int
}

func (s stats) String() string {
	return fmt.Sprintf("%d calls: %d claims won, %d records read, %d other successes, %d ErrLockLost, %d replies lost",
		s.ops, s.claimed, s.records, s.ok, s.lockLost, s.lost)
}

func statsOf(ops []porcupine.Operation) stats {
	var s stats
	for _, op := range ops {
		s.ops++
		in, out := op.Input.(input), op.Output.(output)
		switch out.kind {
		case outOK:
			if in.op == opClaim {
				s.claimed++
			} else {
				s.ok++
			}
		case outRecord:
			s.records++
		case outLost:
			s.lockLost++
		case outUnknown:
			s.lost++
		}
	}
	return s
}

// record runs workload w against store on keys named prefix+"k0",
// prefix+"k1", ..., and returns the history. seed makes the choice of
// calls repeatable (their timing is not).
func record(t testing.TB, store idem.Store, prefix string, w workload, seed int64) []porcupine.Operation {
	t.Helper()
	rec := &recorder{start: time.Now()}

	// tokens[k] holds every token used to claim key k so far, so that
	// clients also send tokens of others (current or stale owners).
	var (
		tokMu  sync.Mutex
		tokens = map[int][]string{}
	)
	var (
		budget   atomic.Int64
		seq      atomic.Int64
		unwanted atomic.Value // first unexpected error of a call
	)
	budget.Store(int64(w.ops))
	deadline := time.Now().Add(w.maxTime)

	faultCtx, stopFaults := context.WithCancel(context.Background())
	var faultsDone sync.WaitGroup
	if w.faults != nil {
		faultsDone.Add(1)
		go func() {
			defer faultsDone.Done()
			w.faults(faultCtx)
		}()
	}

	var wg sync.WaitGroup
	for c := 0; c < w.clients; c++ {
		wg.Add(1)
		go func(client int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(seed*1000 + int64(client)))
			mine := map[int]string{} // this client's last token per key
			pick := func(lo, hi time.Duration) time.Duration {
				return lo + time.Duration(rnd.Int63n(int64(hi-lo)+1))
			}
			for {
				left := budget.Add(-1)
				if left < 0 || !time.Now().Before(deadline) {
					break
				}
				timeout := w.callTimeout
				if w.faults != nil && left < int64(w.ops/4) {
					stopFaults()
					timeout = w.calmTimeout
				}
				if w.pause > 0 {
					time.Sleep(time.Duration(rnd.Int63n(int64(w.pause))))
				}
				n := seq.Add(1)
				k := int(n)/w.perKey + rnd.Intn(w.window)
				in := input{key: fmt.Sprintf("%sk%d", prefix, k)}

				// A client that holds the key (its last claim of it won)
				// mostly renews, completes or releases it; one that does
				// not mostly claims it. Either sometimes sends a fenced
				// call with a token it does not hold.
				held := mine[k] != ""
				p := rnd.Intn(100)
				switch {
				case !held && p < 70:
					in.op = opClaim
				case p < 40 || (!held && p < 80):
					in.op = opRenew
				case p < 80 || (!held && p < 90):
					in.op = opComplete
				default:
					in.op = opRelease
				}
				if in.op == opClaim {
					in.token = fmt.Sprintf("t%d", n)
					in.fp = fmt.Sprintf("f%d", n)
					in.dur = pick(w.leaseMin, w.leaseMax)
					tokMu.Lock()
					tokens[k] = append(tokens[k], in.token)
					tokMu.Unlock()
				} else {
					// Mostly the held token; else another one of the key
					// (its owner's, or a stale one), or rarely one that
					// never claimed anything.
					switch p := rnd.Intn(100); {
					case p < 85 && held:
						in.token = mine[k]
					case p < 95:
						tokMu.Lock()
						if ts := tokens[k]; len(ts) > 0 {
							in.token = ts[rnd.Intn(len(ts))]
						}
						tokMu.Unlock()
					}
					if in.token == "" {
						in.token = fmt.Sprintf("x%d", n)
					}
					switch in.op {
					case opComplete:
						in.result = fmt.Sprintf("r%d", n)
						in.dur = pick(w.ttlMin, w.ttlMax)
					case opRenew:
						in.dur = pick(w.leaseMin, w.leaseMax)
					}
				}

				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				in.call = rec.now()
				out := call(ctx, store, in)
				in.ret = rec.now()
				cancel()
				if out.kind == outUnknown {
					in.ret = never
					if !w.lossy {
						unwanted.CompareAndSwap(nil, fmt.Sprintf("%s: %s", describe(in, out), out.err))
					}
				}
				rec.add(client, in, out)
				switch {
				case in.op == opClaim && out.kind == outOK:
					mine[k] = in.token
				case in.op == opClaim:
				case in.token == mine[k] && (in.op != opRenew || out.kind == outLost):
					delete(mine, k)
				}
			}
		}(c)
	}
	wg.Wait()
	stopFaults()
	faultsDone.Wait()
	if e := unwanted.Load(); e != nil {
		t.Fatalf("a call failed in a history without faults: %v", e)
	}
	return rec.history()
}

// call runs in against store and classifies what it returned.
func call(ctx context.Context, store idem.Store, in input) output {
	var (
		err error
		rec *idem.Record
	)
	switch in.op {
	case opClaim:
		rec, err = store.Claim(ctx, in.key, in.token, in.fp, in.dur)
	case opComplete:
		err = store.Complete(ctx, in.key, in.token, []byte(in.result), in.dur)
	case opRelease:
		err = store.Release(ctx, in.key, in.token)
	case opRenew:
		err = store.Renew(ctx, in.key, in.token, in.dur)
	}
	switch {
	case errors.Is(err, idem.ErrLockLost):
		return output{kind: outLost}
	case err != nil:
		return output{kind: outUnknown, err: shortErr(err)}
	case rec != nil:
		return output{kind: outRecord, rec: viewOf(rec)}
	}
	return output{kind: outOK}
}

// shortErr keeps an error readable in the visualisation.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 80 {
		s = "…" + s[i:]
	}
	return s
}

// checkTimeout bounds the search of one history. Histories are kept small
// enough (few calls per key, few lost replies) that it is never reached on
// a busy machine; if it is, the test fails rather than pass unchecked.
const checkTimeout = 2 * time.Minute

// verify checks history against the Store model.
func verify(history []porcupine.Operation) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(storeModel(), history, checkTimeout)
}

// check fails t unless history is linearizable under the Store model. On
// failure it writes porcupine's visualisation of the history (an HTML file)
// to the directory named by IDEM_LINEARIZE_OUT, or to a new directory under
// the system's temporary directory that outlives the test, and logs its
// path. It returns whether the history passed.
func check(t testing.TB, name string, history []porcupine.Operation) bool {
	t.Helper()
	res, info := verify(history)
	switch res {
	case porcupine.Ok:
		return true
	case porcupine.Unknown:
		t.Errorf("%s: the checker gave up after %v (%v); make the histories smaller", name, checkTimeout, statsOf(history))
		return false
	}
	path := visualise(t, "", name, info)
	t.Errorf("%s: history is not linearizable (%v); visualisation: %s", name, statsOf(history), path)
	logFailingKeys(t, history)
	return false
}

// logFailingKeys logs, as text, the calls on the first key whose history
// is not linearizable, in the order they were made.
func logFailingKeys(t testing.TB, history []porcupine.Operation) {
	t.Helper()
	m := storeModel()
	for _, part := range m.Partition(history) {
		if porcupine.CheckOperationsTimeout(m, part, checkTimeout) != porcupine.Illegal {
			continue
		}
		ops := append([]porcupine.Operation(nil), part...)
		sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
		var b strings.Builder
		for _, op := range ops {
			ret := "lost"
			if op.Output.(output).kind != outUnknown {
				ret = time.Duration(op.Return).Round(time.Microsecond).String()
			}
			fmt.Fprintf(&b, "\n  client %d [%v, %s] %s", op.ClientId, time.Duration(op.Call).Round(time.Microsecond), ret, describe(op.Input.(input), op.Output.(output)))
		}
		t.Logf("the calls on %s:%s", ops[0].Input.(input).key, b.String())
		return
	}
}

// visualise writes the visualisation of info to dir (if empty, see check)
// and returns its path.
func visualise(t testing.TB, dir, name string, info porcupine.LinearizationInfo) string {
	t.Helper()
	if dir == "" {
		dir = os.Getenv("IDEM_LINEARIZE_OUT")
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Logf("IDEM_LINEARIZE_OUT: %v; using a temporary directory", err)
			dir = ""
		}
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "idem-linearize-")
		if err != nil {
			t.Logf("no directory for the visualisation: %v", err)
			return "(none)"
		}
		dir = d
	}
	file := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()+"_"+name) + ".html"
	path := filepath.Join(dir, file)
	if err := porcupine.VisualizePath(storeModel(), info, path); err != nil {
		t.Logf("writing the visualisation: %v", err)
	}
	return path
}
