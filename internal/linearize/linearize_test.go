// Package linearize_test checks that every idem.Store is linearizable: it
// records histories of concurrent Claim, Complete, Release and Renew calls
// against each real store (memstore, Redis, a Redis Cluster, PostgreSQL,
// SQLite), with and without faults, and checks each history against a
// sequential model of the Store contract with porcupine.
//
// The servers come from scripts/test.sh (IDEM_REDIS_ADDR,
// IDEM_REDIS_CLUSTER_ADDRS, IDEM_POSTGRES_DSN); without them a test is
// skipped locally and fails under CI=true. IDEM_LINEARIZE_SCALE multiplies
// the number of histories; IDEM_LINEARIZE_OUT names the directory where the
// visualisation of a failing history goes.
package linearize_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/idemgo/idem"
)

// run records n histories of w against a store from open and checks each.
// It returns the histories.
func run(t *testing.T, n int, w workload, open func(t testing.TB) (idem.Store, func(ctx context.Context))) [][]porcupine.Operation {
	t.Helper()
	var all [][]porcupine.Operation
	for i := 0; i < n; i++ {
		store, faults := open(t)
		w := w
		w.faults = faults
		h := record(t, store, fmt.Sprintf("h%d-%s-", i, randomHex(3)), w, int64(i))
		all = append(all, h)
		if !check(t, fmt.Sprintf("history %d", i), h) {
			return all
		}
	}
	return all
}

// plain adapts the opener of a store to run, with no faults.
func plain(open func(t testing.TB) idem.Store) func(t testing.TB) (idem.Store, func(ctx context.Context)) {
	return func(t testing.TB) (idem.Store, func(ctx context.Context)) { return open(t), nil }
}

// total adds up the stats of histories.
func total(hs [][]porcupine.Operation) stats {
	var s stats
	for _, h := range hs {
		x := statsOf(h)
		s.ops += x.ops
		s.lost += x.lost
		s.claimed += x.claimed
		s.records += x.records
		s.ok += x.ok
		s.lockLost += x.lockLost
	}
	return s
}

// expiries counts the claims won on a key that was neither new nor
// released just before: the lower bound of how many records expired.
func expiries(hs [][]porcupine.Operation) int {
	n := 0
	for _, h := range hs {
		won := map[string]int{}
		released := map[string]int{}
		for _, op := range h {
			in, out := op.Input.(input), op.Output.(output)
			if out.kind != outOK {
				continue
			}
			switch in.op {
			case opClaim:
				won[in.key]++
			case opRelease:
				released[in.key]++
			}
		}
		for k, w := range won {
			if e := w - 1 - released[k]; e > 0 {
				n += e
			}
		}
	}
	return n
}

// The sizes of the histories: 8 clients on a window of 4 keys keep every
// key contended; some 25 calls per key keep each key's part of a history
// small enough for the checker, whatever the interleaving.
const (
	clients     = 8
	window      = 4
	perKey      = 25
	opsPerRun   = 400
	faultPerKey = 12 // fewer calls per key, so that each has few lost replies
	faultOps    = 300
	faultPause  = 20 * time.Millisecond // a history lasts about half a second, over several faults
	expiryOps   = 400
	expiryKey   = 50 // calls per key: with the pauses, a key lives for some 200 ms
	histories   = 4
	faultRuns   = 2
	expiryRuns  = 2
	memstoreMul = 4 // memstore histories cost almost nothing
)

// TestStoresAreLinearizable records histories in which nothing expires:
// every store must behave as one copy of the records, each call taking
// effect at one instant between its call and its return.
func TestStoresAreLinearizable(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			n := histories * scale(t)
			if tg.name == "memstore" {
				n *= memstoreMul
			}
			hs := run(t, n, noExpiry(clients, window, perKey, opsPerRun), plain(tg.open))
			s := total(hs)
			t.Logf("%d histories, %v", len(hs), s)
			if !t.Failed() && (s.claimed == 0 || s.records == 0 || s.ok == 0 || s.lockLost == 0) {
				t.Errorf("the histories miss an outcome, so they check less than they should: %v", s)
			}
		})
	}
}

// TestStoresAreLinearizableWithExpiry records histories with leases and
// retention TTLs of 20-120 ms, which run out while the history runs: a
// record must count as absent once its time is up, and not before.
func TestStoresAreLinearizableWithExpiry(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			hs := run(t, expiryRuns*scale(t), shortLeases(clients, window, expiryKey, expiryOps), plain(tg.open))
			s := total(hs)
			e := expiries(hs)
			t.Logf("%d histories, %v; at least %d records expired", len(hs), s, e)
			if !t.Failed() && e == 0 {
				t.Errorf("no record expired: the histories did not test expiry")
			}
		})
	}
}

// TestStoresAreLinearizableUnderFaults records histories while faults come
// and go: connections reset before the request or after the reply, replies
// held, requests swallowed (for memstore and SQLite, which have no
// connection, calls cut short by their context), then a quarter of calls
// without faults. A call that fails may or may not have taken effect;
// every other call must still be linearizable.
func TestStoresAreLinearizableUnderFaults(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			w := noExpiry(clients, window, faultPerKey, faultOps)
			w.callTimeout = faultCallTimeout
			w.calmTimeout = 10 * time.Second
			w.lossy = true
			w.pause = faultPause
			hs := run(t, faultRuns*scale(t), w, tg.faulty)
			s := total(hs)
			t.Logf("%d histories, %v", len(hs), s)
			if !t.Failed() && (s.lost == 0 || s.claimed == 0) {
				t.Errorf("no call failed, or none succeeded: the faults did not test anything: %v", s)
			}
		})
	}
}
