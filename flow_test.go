package idem_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// Do runs a unit of work at most once per key and returns its
// stored result to later callers.
func TestDoRunsWorkOnceAndReturnsItsResult(t *testing.T) {
	st, _ := newCountingStore(t)
	var runs atomic.Int64
	work := func(ctx context.Context) ([]byte, error) {
		if k, ok := idem.KeyFromContext(ctx); !ok || k != "job-1" {
			t.Errorf("KeyFromContext in Do = %q %v", k, ok)
		}
		return []byte("sent invoice #" + itoa(runs.Add(1))), nil
	}
	for i := 0; i < 3; i++ {
		res, err := idem.Do(context.Background(), st, "job-1", "fp", work)
		if err != nil || string(res) != "sent invoice #1" {
			t.Fatalf("call %d: %q %v", i, res, err)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("runs = %d", runs.Load())
	}
	if _, err := idem.Do(context.Background(), st, "job-1", "other-fp", work); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("other fingerprint: %v, want ErrFingerprintMismatch", err)
	}
}

// Concurrent workers on one key: one runs, the others learn it is
// in progress (or wait for it with WithWait).
func TestDoConcurrentCallersRunWorkOnce(t *testing.T) {
	st, _ := newCountingStore(t)
	release := make(chan struct{})
	started := make(chan struct{})
	var runs atomic.Int64
	work := func(ctx context.Context) ([]byte, error) {
		runs.Add(1)
		close(started)
		<-release
		return []byte("done"), nil
	}
	first := make(chan error, 1)
	go func() { _, err := idem.Do(context.Background(), st, "job", "fp", work); first <- err }()
	<-started
	_, err := idem.Do(context.Background(), st, "job", "fp", work)
	var ip *idem.InProgressError
	if !errors.Is(err, idem.ErrInProgress) || !errors.As(err, &ip) || ip.RetryAfter <= 0 {
		t.Fatalf("second worker: %v, want an InProgressError with a positive RetryAfter", err)
	}
	const n = 10
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var res []byte
			res, errs[i] = idem.Do(context.Background(), st, "job", "fp", work, idem.WithWait(10*time.Second))
			results[i] = string(res)
		}(i)
	}
	waitFor(t, "every worker to poll", func() bool { return st.claims.Load() >= n+2 })
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i := range results {
		if errs[i] != nil || results[i] != "done" {
			t.Fatalf("waiting worker %d: %q %v", i, results[i], errs[i])
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("runs = %d", runs.Load())
	}
}

// An error from the work releases the key; a panic too.
func TestDoErrorAndPanicReleaseKey(t *testing.T) {
	st, _ := newCountingStore(t)
	boom := errors.New("smtp: temporary failure")
	_, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the work's error", err)
	}
	func() {
		defer func() {
			if recover() != "crash" {
				t.Fatal("panic did not go on")
			}
		}()
		idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { panic("crash") })
	}()
	res, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	if err != nil || string(res) != "ok" {
		t.Fatalf("after an error and a panic: %q %v", res, err)
	}
	if st.releases.Load() != 2 {
		t.Fatalf("releases = %d, want 2", st.releases.Load())
	}
}

// Store errors are wrapped in ErrStoreUnavailable and the
// work does not run.
func TestDoWrapsStoreErrors(t *testing.T) {
	st, _ := newCountingStore(t)
	st.set(func(s *countingStore) { s.claimErr = errors.New("i/o timeout") })
	ran := false
	_, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
	if !errors.Is(err, idem.ErrStoreUnavailable) || ran {
		t.Fatalf("err = %v, ran = %v", err, ran)
	}
	if _, err := idem.Do(context.Background(), st, "job", "fp", nil, idem.WithTTL(-1)); err == nil {
		t.Fatal("Do accepted an invalid option")
	}
}

// A dead worker's lease expires, then the next caller of Do runs the work.
func TestDoRunsAgainAfterDeadWorkersLease(t *testing.T) {
	clock := newFakeClock()
	st, mem := newCountingStore(t, memstore.WithClock(clock.Now), memstore.WithSweepInterval(0))
	if _, err := mem.Claim(context.Background(), idem.JobKeyForTest("job"), "dead", "fp", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	work := func(context.Context) ([]byte, error) { return []byte("retried"), nil }
	if _, err := idem.Do(context.Background(), st, "job", "fp", work); !errors.Is(err, idem.ErrInProgress) {
		t.Fatalf("while the lease lives: %v", err)
	}
	clock.Advance(6 * time.Second)
	if res, err := idem.Do(context.Background(), st, "job", "fp", work); err != nil || string(res) != "retried" {
		t.Fatalf("after the lease: %q %v", res, err)
	}
}

// What Do returns is the caller's: changing it does not change what later
// callers get.
func TestDoResultIsACopy(t *testing.T) {
	st, _ := newCountingStore(t)
	work := func(context.Context) ([]byte, error) { return []byte("done"), nil }
	first, _ := idem.Do(context.Background(), st, "job", "fp", work)
	copy(first, "XXXX")
	second, _ := idem.Do(context.Background(), st, "job", "fp", work)
	copy(second, "YYYY")
	if third, _ := idem.Do(context.Background(), st, "job", "fp", work); string(third) != "done" {
		t.Fatalf("stored result changed to %q by its callers", third)
	}
}
