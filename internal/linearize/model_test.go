package linearize_test

import (
	"fmt"
	"math"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/idemgo/idem"
)

// The sequential model of one key of an idem.Store, as store.go documents
// it. Histories are partitioned by key: keys are independent, so a history
// is linearizable exactly when the history of each key is.
//
// Time. Leases and retention TTLs are judged by the store's clock; all the
// stores under test run on this host, so the store's clock and the
// recorder's are the same clock, and the model reasons about expiry with
// the times the recorder wrote down. An operation takes effect at some
// instant of [call, ret], so a record made (or renewed, or completed) by an
// operation with window [call, ret] and duration d expires at some instant
// of [call+d, ret+d]. At a later operation with window [c, r] the record
// may be live if c < expMax and may have expired if r >= expMin; when both
// are possible the model keeps both states (it is nondeterministic). Store
// clocks round (Redis to the millisecond, SQLite to the millisecond), so
// both bounds are widened by clockSlack. With leases far longer than a
// history nothing can expire, and the model is deterministic except for
// the operations whose reply was lost.
//
// Lost replies. An operation that returned an error other than
// idem.ErrLockLost (a timeout, a reset connection) may or may not have
// taken effect, at any time after its call: the recorder gives it an
// infinite return time and the model allows both outcomes.

// clockSlack widens the expiry window on both sides: it covers the rounding
// of the store clocks and the distance between the instant the recorder
// reads its clock and the instant the store reads its own.
const clockSlack = 30 * time.Millisecond

// never is the return time of an operation whose reply was lost, and the
// expiry bound of a record whose expiry is unknown.
const never = int64(math.MaxInt64 / 4)

type opKind uint8

const (
	opClaim opKind = iota + 1
	opComplete
	opRelease
	opRenew
)

func (k opKind) String() string {
	switch k {
	case opClaim:
		return "Claim"
	case opComplete:
		return "Complete"
	case opRelease:
		return "Release"
	case opRenew:
		return "Renew"
	}
	return "?"
}

// input is one call of a Store method. call and ret repeat the times of
// the porcupine.Operation, which Step does not see (ret is never for a
// call whose reply was lost).
type input struct {
	op     opKind
	key    string
	token  string
	fp     string        // Claim
	result string        // Complete
	dur    time.Duration // lease (Claim, Renew) or retention (Complete)
	call   int64
	ret    int64
}

// outKind is what a call returned.
type outKind uint8

const (
	outOK      outKind = iota + 1 // nil error; for Claim, a nil record: claimed
	outRecord                     // Claim returned a record
	outLost                       // idem.ErrLockLost
	outUnknown                    // another error: the call may or may not have taken effect
)

// output is what one call returned.
type output struct {
	kind outKind
	rec  recordView // outRecord
	err  string     // outUnknown, for the visualisation
}

// recordView is an idem.Record in comparable form.
type recordView struct {
	state     idem.State
	fp        string
	token     string
	result    string
	hasResult bool
	leaseLeft time.Duration
}

func viewOf(r *idem.Record) recordView {
	return recordView{
		state:     r.State,
		fp:        r.Fingerprint,
		token:     r.Token,
		result:    string(r.Result),
		hasResult: r.Result != nil,
		leaseLeft: r.LeaseLeft,
	}
}

// state is the model's view of one key. It is comparable with ==.
type state struct {
	kind   idem.State // 0 when absent
	token  string     // the owner's, in progress and once completed
	fp     string
	result string // completed
	// The record expires at some instant of [expMin, expMax].
	expMin, expMax int64
}

var absent = state{}

// live and expired report whether the record s may be live, and may have
// expired, at some instant of [call, ret].
func (s state) mayBeLive(in input) bool {
	return in.call < s.expMax+int64(clockSlack)
}

func (s state) mayHaveExpired(in input) bool {
	return s.expMin <= satAdd(in.ret, int64(clockSlack))
}

// satAdd adds without overflowing past never.
func satAdd(t, d int64) int64 {
	if t >= never-d {
		return never
	}
	return t + d
}

func (s state) owned(token string) bool {
	return s.kind == idem.StateInProgress && s.token == token
}

// step returns the states the key may be in after in returned out, given
// that it was in s before; none if the call could not have returned out.
func step(s state, in input, out output) []state {
	var before []state
	if s == absent {
		before = []state{absent}
	} else {
		if s.mayBeLive(in) {
			before = append(before, s)
		}
		if s.mayHaveExpired(in) {
			before = append(before, absent)
		}
	}
	var next []state
	for _, b := range before {
		effect, ok := apply(b, in)
		switch {
		case out.kind == outUnknown:
			// Lost reply: the call took effect, or it did not.
			next = append(next, b)
			if effect != b {
				next = append(next, effect)
			}
		case ok == out.kind && (ok != outRecord || recordMatches(b, in, out.rec)):
			next = append(next, effect)
		}
	}
	return dedup(next)
}

// apply runs in on b as the Store contract says, and returns the new state
// and what the call answers (outRecord: a copy of b).
func apply(b state, in input) (state, outKind) {
	lease := func(d time.Duration) (int64, int64) {
		return satAdd(in.call, int64(d)), satAdd(in.ret, int64(d))
	}
	switch in.op {
	case opClaim:
		if b != absent {
			return b, outRecord
		}
		lo, hi := lease(in.dur)
		return state{kind: idem.StateInProgress, token: in.token, fp: in.fp, expMin: lo, expMax: hi}, outOK
	case opComplete:
		if b.kind == idem.StateCompleted && b.token == in.token && b.result == in.result {
			// The same Complete again, sent by a client that lost the
			// reply to the first: the contract lets a store answer it.
			return b, outOK
		}
		if !b.owned(in.token) {
			return b, outLost
		}
		lo, hi := lease(in.dur)
		return state{kind: idem.StateCompleted, token: b.token, fp: b.fp, result: in.result, expMin: lo, expMax: hi}, outOK
	case opRelease:
		if !b.owned(in.token) {
			return b, outLost
		}
		return absent, outOK
	case opRenew:
		if !b.owned(in.token) {
			return b, outLost
		}
		n := b
		n.expMin, n.expMax = lease(in.dur)
		return n, outOK
	}
	panic("unknown operation")
}

// recordMatches reports whether r is a faithful copy of the live record b,
// read by a call with window [in.call, in.ret].
func recordMatches(b state, in input, r recordView) bool {
	if r.state != b.kind || r.fp != b.fp {
		return false
	}
	switch b.kind {
	case idem.StateInProgress:
		if r.token != b.token || r.hasResult {
			return false
		}
		// The lease left, read at some instant t of [call, ret], is
		// exp - t for an exp of [expMin, expMax].
		lo := b.expMin - in.ret - int64(clockSlack)
		hi := b.expMax - in.call + int64(clockSlack)
		// A lease in its last millisecond may read as 0: Redis counts
		// whole milliseconds.
		return r.leaseLeft >= 0 && int64(r.leaseLeft) >= lo && int64(r.leaseLeft) <= hi
	case idem.StateCompleted:
		// Stores may leave the token of a completed record empty.
		return r.hasResult && r.result == b.result && r.leaseLeft == 0 &&
			(r.token == "" || r.token == b.token)
	}
	return false
}

func dedup(states []state) []state {
	out := states[:0]
	for _, s := range states {
		dup := false
		for _, o := range out {
			if o == s {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, s)
		}
	}
	return out
}

// storeModel is the porcupine model of a Store, partitioned by key.
func storeModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(input).key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			parts := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() []interface{} { return []interface{}{absent} },
		Step: func(s, in, out interface{}) []interface{} {
			next := step(s.(state), in.(input), out.(output))
			res := make([]interface{}, len(next))
			for i, n := range next {
				res[i] = n
			}
			return res
		},
		// The visualisation may describe what is not there (nil).
		DescribeOperation: func(in, out interface{}) string {
			i, _ := in.(input)
			o, _ := out.(output)
			return describe(i, o)
		},
		DescribeState: func(s interface{}) string {
			st, _ := s.(state)
			return describeState(st)
		},
	}
	return nm.ToModel()
}

func describe(in input, out output) string {
	var call string
	switch in.op {
	case opClaim:
		call = fmt.Sprintf("Claim(%s, %s, lease %v)", in.key, in.token, in.dur)
	case opComplete:
		call = fmt.Sprintf("Complete(%s, %s, %s, ttl %v)", in.key, in.token, in.result, in.dur)
	case opRelease:
		call = fmt.Sprintf("Release(%s, %s)", in.key, in.token)
	case opRenew:
		call = fmt.Sprintf("Renew(%s, %s, lease %v)", in.key, in.token, in.dur)
	}
	var res string
	switch out.kind {
	case outOK:
		res = "ok"
		if in.op == opClaim {
			res = "claimed"
		}
	case outLost:
		res = "ErrLockLost"
	case outRecord:
		r := out.rec
		if r.state == idem.StateInProgress {
			res = fmt.Sprintf("in progress by %s (fp %s, lease left %v)", r.token, r.fp, r.leaseLeft)
		} else {
			res = fmt.Sprintf("completed %q (fp %s, token %q, lease left %v)", r.result, r.fp, r.token, r.leaseLeft)
		}
	case outUnknown:
		res = "unknown: " + out.err
	}
	return call + " -> " + res
}

func describeState(s state) string {
	if s == absent {
		return "absent"
	}
	exp := func(t int64) string {
		if t >= never {
			return "never"
		}
		return time.Duration(t).Round(time.Microsecond).String()
	}
	if s.kind == idem.StateInProgress {
		return fmt.Sprintf("in progress by %s (fp %s), expires in [%s, %s]", s.token, s.fp, exp(s.expMin), exp(s.expMax))
	}
	return fmt.Sprintf("completed %q (fp %s), expires in [%s, %s]", s.result, s.fp, exp(s.expMin), exp(s.expMax))
}
