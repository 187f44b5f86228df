package reliability_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/testenv"
)

// partitioned is a store whose lease renewals never get through, as when
// the owner is cut off from the store (or paused) for longer than its lock
// TTL: Renew waits for the store timeout and fails with an error that is
// not idem.ErrLockLost, so the owner keeps running without knowing. Every
// other call goes to the real store.
type partitioned struct {
	idem.Store
}

var errPartitioned = errors.New("renewal lost in a network partition")

func (p partitioned) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	<-ctx.Done()
	return errPartitioned
}

// Fencing on Redis: an owner whose lease ran out cannot
// overwrite or delete the record of the owner that took the key over.
func TestRedisFencing(t *testing.T) {
	addr := testenv.Server(t, testenv.RedisAddr, "a Redis server")
	store := newRedisStore(newRedisClient(t, addr))
	runFencing(t, func(t *testing.T) idem.Store { return store })
}

// Fencing on PostgreSQL.
func TestPostgresFencing(t *testing.T) {
	dsn, _ := postgresUpstream(t)
	table := newPostgresTable(t, dsn)
	store := newPostgresStore(t, dsn, table)
	runFencing(t, func(t *testing.T) idem.Store { return store })
}

// gate is a channel that handlers wait on. It is closed when the test ends
// if the test has not closed it, so that a failing test never leaves a
// handler blocked (and the test server's Close waiting for it).
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

func runFencing(t *testing.T, shared func(t *testing.T) idem.Store) {
	const (
		lockTTL      = 600 * time.Millisecond
		storeTimeout = 100 * time.Millisecond
	)
	opts := []idem.Option{idem.WithLockTTL(lockTTL), idem.WithStoreTimeout(storeTimeout)}

	// setup returns the stale owner's instance (its renewals are lost), the
	// new owner's instance (healthy), and a key whose lease the stale owner
	// holds while its handler waits for release to close.
	// The stale handler answers status (0 for 201).
	setup := func(t *testing.T, status int) (stale, fresh *app, key string, release *gate, staleReply chan reply) {
		store := shared(t)
		stale = newApp(t, partitioned{store}, opts...)
		fresh = newApp(t, store, opts...)
		key = "fence-" + randomHex(6)
		release = newGate(t)
		stale.onRun(key, func() int {
			<-release.ch
			return status
		})
		staleReply = make(chan reply, 1)
		go func() {
			r, err := stale.post(key, "{}")
			if err != nil {
				r.Status, r.Body = -1, []byte(err.Error())
			}
			staleReply <- r
		}()
		if !pollUntil(5*time.Second, 5*time.Millisecond, func() bool { return stale.runsOf(key) == 1 }) {
			t.Fatal("the stale owner's handler did not start")
		}
		return stale, fresh, key, release, staleReply
	}

	// takeOver polls the fresh instance until it owns the key: 409 while the
	// stale lease lives, then its handler runs.
	takeOver := func(t *testing.T, fresh *app, key string) (conflicts int, elapsed time.Duration) {
		start := time.Now()
		for {
			r := fresh.mustPost(key, "{}")
			if isStoreUnavailable(r) { // a slow store call on a busy machine: retry
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if r.Status != http.StatusConflict {
				if r.Status != http.StatusCreated {
					t.Fatalf("new owner: %d %s", r.Status, r.Body)
				}
				return conflicts, time.Since(start)
			}
			wantProblem(t, r, http.StatusConflict, "key-in-use")
			conflicts++
			if time.Since(start) > lockTTL+5*time.Second {
				t.Fatalf("the lost lease never ended: still 409 after %v", time.Since(start))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The new owner is still running when the stale one finishes: the
	// stale Complete must not overwrite its in-progress record.
	t.Run("complete", func(t *testing.T) {
		stale, fresh, key, release, staleReply := setup(t, 0)
		freshGate := newGate(t)
		freshRelease := freshGate.ch
		fresh.onRun(key, func() int {
			<-freshRelease
			return 0
		})
		freshReply := make(chan reply, 1)
		go func() {
			// Wait for the stale lease to end, then take the key over.
			var r reply
			pollUntil(lockTTL+5*time.Second, 20*time.Millisecond, func() bool {
				var err error
				if r, err = fresh.post(key, "{}"); err != nil {
					r.Status, r.Body = -1, []byte(err.Error())
				}
				// 409 while the stale lease lives; a 503 store-unavailable
				// (a store call slower than the 100ms timeout on a busy
				// machine) is retried, as a client would.
				return r.Status != http.StatusConflict && !isStoreUnavailable(r)
			})
			freshReply <- r
		}()
		if !pollUntil(lockTTL+5*time.Second, 5*time.Millisecond, func() bool { return fresh.runsOf(key) == 1 }) {
			t.Fatal("the new owner never got the key")
		}

		release.open() // the stale owner finishes while the new one runs
		r := <-staleReply
		wantProblem(t, r, http.StatusServiceUnavailable, "response-not-recorded")
		if ra := retryAfter(r); ra != 1 {
			t.Fatalf("Retry-After = %q, want the lock TTL rounded up, 1", r.Header.Get("Retry-After"))
		}
		if ev, _ := stale.lastEvent(key); ev.Outcome != idem.OutcomeLockLost || !errors.Is(ev.Err, idem.ErrLockLost) {
			t.Fatalf("stale owner's hook got %v (%v), want lock_lost", ev.Outcome, ev.Err)
		}
		// The new owner's record is still in progress and still its own.
		dup := stale.mustPost(key, "{}")
		wantProblem(t, dup, http.StatusConflict, "key-in-use")

		freshGate.open()
		created := <-freshReply
		if created.Status != http.StatusCreated {
			t.Fatalf("new owner: %d %s", created.Status, created.Body)
		}
		for _, a := range []*app{stale, fresh} {
			if r := a.mustPost(key, "{}"); !bytes.Equal(r.Body, created.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("replay: %d %s, want the new owner's %s", r.Status, r.Body, created.Body)
			}
		}
		if stale.runsOf(key) != 1 || fresh.runsOf(key) != 1 {
			t.Fatalf("runs: stale %d, new %d", stale.runsOf(key), fresh.runsOf(key))
		}
	})

	// The new owner has completed when the stale one answers 500 and
	// releases the key: the release must not delete the completed record.
	t.Run("release", func(t *testing.T) {
		stale, fresh, key, release, staleReply := setup(t, http.StatusInternalServerError)
		conflicts, took := takeOver(t, fresh, key)
		created := fresh.mustPost(key, "{}")
		release.open()
		r := <-staleReply
		if r.Status != http.StatusInternalServerError {
			t.Fatalf("stale owner: %d %s, want its own 500 (a 5xx is not recorded; its release fails)", r.Status, r.Body)
		}
		for _, a := range []*app{stale, fresh} {
			if r := a.mustPost(key, "{}"); !bytes.Equal(r.Body, created.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("after the stale release: %d %s, want the replay of %s", r.Status, r.Body, created.Body)
			}
		}
		t.Logf("stale lease ended after %v (%d conflicts); the stale release left the new record alone", took.Round(time.Millisecond), conflicts)
	})
}
