package idem_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemgo/idem"
)

// A Runner refuses, when it is built, every option that concerns HTTP only
// (it would silently ignore it), naming the option; the options it uses are
// accepted.
func TestNewRunnerRefusesHTTPOnlyOptions(t *testing.T) {
	st, _ := newCountingStore(t)
	for name, opt := range map[string]idem.Option{
		"WithMethods":         idem.WithMethods("POST"),
		"WithHeader":          idem.WithHeader("X-Delivery-Id"),
		"WithMaxBodySize":     idem.WithMaxBodySize(10),
		"WithMaxResponseSize": idem.WithMaxResponseSize(10),
		"WithRequiredKey":     idem.WithRequiredKey(),
		"WithFailOpen":        idem.WithFailOpen(),
		"WithScope":           idem.WithScope(func(*http.Request) string { return "" }),
		"WithFingerprint":     idem.WithFingerprint(idem.Fingerprint),
		"WithResponsePolicy":  idem.WithResponsePolicy(idem.KeepBelow500),
		"WithReplayCache":     idem.WithReplayCache(1<<20, 100, time.Minute),
	} {
		_, err := idem.NewRunner(st, opt)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("NewRunner(%s): err = %v, want one naming the option", name, err)
		}
		if _, err := idem.Do(context.Background(), st, "job", "fp", func(context.Context) ([]byte, error) { return nil, nil }, opt); err == nil {
			t.Errorf("Do accepted %s", name)
		}
	}
	var ev events
	r, err := idem.NewRunner(st, idem.WithTTL(time.Hour), idem.WithLockTTL(time.Minute), idem.WithStoreTimeout(time.Second),
		idem.WithWait(time.Second), idem.WithMaxKeyLength(16), idem.WithHook(ev.hook), idem.WithLogger(nil))
	if err != nil {
		t.Fatalf("NewRunner with the options it uses: %v", err)
	}
	if _, err := r.Do(context.Background(), strings.Repeat("k", 17), "fp", func(context.Context) ([]byte, error) { return nil, nil }); !errors.Is(err, idem.ErrInvalidKey) {
		t.Fatalf("a key over WithMaxKeyLength(16): %v", err)
	}
	if _, err := idem.NewRunner(nil); err == nil {
		t.Fatal("NewRunner accepted a nil store")
	}
	if _, err := idem.NewRunner(st, idem.WithTTL(0)); err == nil {
		t.Fatal("NewRunner accepted an invalid option")
	}
}

// A Runner runs each key's work once, tells a reuse of the key for another
// payload by its fingerprint, and reports each outcome.
func TestRunnerRunsOncePerKey(t *testing.T) {
	st, _ := newCountingStore(t)
	var ev events
	r, err := idem.NewRunner(st, idem.WithHook(ev.hook))
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	send := func(payload string) ([]byte, error) {
		return r.Do(context.Background(), "delivery-7", idem.FingerprintBytes([]byte(payload)), func(ctx context.Context) ([]byte, error) {
			return []byte("sent #" + strconv.FormatInt(runs.Add(1), 10)), nil
		})
	}
	for i := 0; i < 3; i++ {
		if res, err := send(`{"to":"a@example.com"}`); err != nil || string(res) != "sent #1" {
			t.Fatalf("call %d: %q %v", i, res, err)
		}
	}
	if _, err := send(`{"to":"b@example.com"}`); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("another payload under the key: %v", err)
	}
	want := []idem.Outcome{idem.OutcomeExecuted, idem.OutcomeReplayed, idem.OutcomeReplayed, idem.OutcomeMismatch}
	if got := ev.outcomes(); len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[3] != want[3] {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	if idem.FingerprintBytes([]byte("a")) == idem.FingerprintBytes([]byte("b")) || len(idem.FingerprintBytes(nil)) != 64 {
		t.Fatal("FingerprintBytes is not a hex SHA-256")
	}
}

// BenchmarkRunnerDo and BenchmarkPackageDo compare a shared Runner with the
// package-level Do, which checks its options on every call: a new key each
// time (claim, run, complete) and a replay.
func BenchmarkRunnerDo(b *testing.B) {
	st, _ := newCountingStore(b)
	r, err := idem.NewRunner(st, idem.WithLockTTL(time.Minute))
	if err != nil {
		b.Fatal(err)
	}
	benchDo(b, func(ctx context.Context, key string, fn func(context.Context) ([]byte, error)) ([]byte, error) {
		return r.Do(ctx, key, "fp", fn)
	})
}

func BenchmarkPackageDo(b *testing.B) {
	st, _ := newCountingStore(b)
	benchDo(b, func(ctx context.Context, key string, fn func(context.Context) ([]byte, error)) ([]byte, error) {
		return idem.Do(ctx, st, key, "fp", fn, idem.WithLockTTL(time.Minute))
	})
}

func benchDo(b *testing.B, call func(ctx context.Context, key string, fn func(context.Context) ([]byte, error)) ([]byte, error)) {
	ctx := context.Background()
	work := func(context.Context) ([]byte, error) { return []byte("done"), nil }
	n := 0 // keys stay new across the runs of the sub-benchmark
	b.Run("new-key", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			n++
			if _, err := call(ctx, "job-"+strconv.Itoa(n), work); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("replay", func(b *testing.B) {
		if _, err := call(ctx, "replayed", work); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := call(ctx, "replayed", work); err != nil {
				b.Fatal(err)
			}
		}
	})
}
