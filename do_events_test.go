package idem_test

import (
	"context"
	"errors"
	"testing"

	"github.com/idemgo/idem"
)

// Do reports one event per call to the hook, as the middleware does: what
// happened, the key, whether the result was kept, and the store's error.
func TestDoReportsEveryOutcome(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	hook := idem.WithHook(ev.hook)
	ctx := context.Background()
	ok := func(context.Context) ([]byte, error) { return []byte("r"), nil }
	check := func(what string, want idem.Outcome, stored, hasErr bool) {
		t.Helper()
		e := ev.last()
		// Stored speaks for OutcomeExecuted only.
		if e.Outcome != want || (want == idem.OutcomeExecuted && e.Stored != stored) || (e.Err != nil) != hasErr || e.Key == "" {
			t.Fatalf("%s: hook saw %+v; want outcome %v, stored %v, error %v, and the key", what, e, want, stored, hasErr)
		}
	}

	idem.Do(ctx, st, "k", "fp", ok, hook)
	check("first call", idem.OutcomeExecuted, true, false)
	idem.Do(ctx, st, "k", "fp", ok, hook)
	check("replay", idem.OutcomeReplayed, false, false)
	idem.Do(ctx, st, "k", "other", ok, hook)
	check("another fingerprint", idem.OutcomeMismatch, false, false)

	idem.Do(ctx, st, "failing", "fp", func(context.Context) ([]byte, error) { return nil, errors.New("declined") }, hook)
	check("work that fails", idem.OutcomeExecuted, false, false)

	idem.Do(ctx, st, "held", "fp", func(ctx context.Context) ([]byte, error) {
		idem.Do(ctx, st, "held", "fp", ok, hook)
		check("duplicate while running", idem.OutcomeConflict, false, false)
		return []byte("r"), nil
	}, hook)

	st.set(func(s *countingStore) { s.claimErr = errors.New("connection refused") })
	idem.Do(ctx, st, "down", "fp", ok, hook)
	check("store down", idem.OutcomeStoreError, false, true)
	st.set(func(s *countingStore) { s.claimErr, s.completeErr = nil, errors.New("connection reset") })
	idem.Do(ctx, st, "unrecorded", "fp", ok, hook)
	check("result not recorded", idem.OutcomeStoreError, false, true)
	st.set(func(s *countingStore) { s.completeErr = idem.ErrLockLost })
	idem.Do(ctx, st, "lost", "fp", ok, hook)
	check("lease lost", idem.OutcomeLockLost, false, true)

	if n := len(ev.outcomes()); n != 9 {
		t.Fatalf("hook called %d times for 9 calls of Do", n)
	}
}
