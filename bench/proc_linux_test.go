package main

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// The CPU time the harness reports per request comes from /proc: it must
// grow as the process works, and never by more than the wall time on all
// CPUs (a field read from the wrong column, or in the wrong unit, breaks
// one or the other).
func TestProcCPUCountsThisProcessWork(t *testing.T) {
	start := time.Now()
	before, ok := procCPU(os.Getpid())
	if !ok {
		t.Fatal("procCPU of this process: not available on linux")
	}
	deadline := start.Add(30 * time.Second)
	x := uint64(1)
	after := before
	for after < before+50*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("CPU time went from %v to %v in 30s of busy work", before, after)
		}
		for i := 0; i < 1_000_000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		after, _ = procCPU(os.Getpid())
	}
	wall := time.Since(start)
	if got, most := after-before, wall*time.Duration(runtime.NumCPU())+20*time.Millisecond; got > most {
		t.Fatalf("CPU time grew by %v in %v of wall time on %d CPUs", got, wall, runtime.NumCPU())
	}
	if _, ok := procCPU(-1); ok {
		t.Fatal("procCPU of no process reported a time")
	}
	_ = x
}
