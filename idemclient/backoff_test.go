package idemclient

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoffIsFullJitterUnderACap(t *testing.T) {
	tr := &Transport{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
	for n, ceiling := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 50, 30: 50} {
		ceiling *= time.Millisecond
		var top time.Duration
		low := false
		for i := 0; i < 2000; i++ {
			d := tr.backoff(n)
			if d < 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", n, d, ceiling)
			}
			top = max(top, d)
			low = low || d < ceiling/4
		}
		// Full jitter spreads over the whole range, not just near the top.
		if top < ceiling/2 || !low {
			t.Fatalf("backoff(%d) over 2000 draws: max %v, some below %v: %v; want spread over [0, %v]", n, top, ceiling/4, low, ceiling)
		}
	}
}

func TestRetryAfterForms(t *testing.T) {
	if d, ok := retryAfter("3"); !ok || d != 3*time.Second {
		t.Fatalf("seconds: %v %v", d, ok)
	}
	at := time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)
	if d, ok := retryAfter(at); !ok || d <= 8*time.Second || d > 10*time.Second {
		t.Fatalf("HTTP-date: %v %v", d, ok)
	}
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	if d, ok := retryAfter(past); !ok || d != 0 {
		t.Fatalf("past date: %v %v", d, ok)
	}
	for _, bad := range []string{"", "soon", "-1", "1.5"} {
		if _, ok := retryAfter(bad); ok {
			t.Fatalf("retryAfter(%q) accepted", bad)
		}
	}
}
