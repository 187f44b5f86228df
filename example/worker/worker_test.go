package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemgo/idem/internal/testenv"
)

const (
	numJobs  = 500
	lockTTL  = "1s"
	waitLong = 3 * time.Minute // bound of every wait: generous, for a busy machine
)

// workerStores are the stores of the multi-process tests, from the servers
// that scripts/services.sh starts. A missing one fails under CI=true and is
// skipped elsewhere.
func workerStore(t *testing.T, name string) string {
	t.Helper()
	testenv.SkipShort(t, "starts worker processes")
	if name == "redis" {
		return "redis://" + testenv.Server(t, "IDEM_REDIS_ADDR", "a Redis node") + "/0"
	}
	return testenv.Server(t, "IDEM_POSTGRES_DSN", "PostgreSQL")
}

var (
	buildOnce    sync.Once
	workerBin    string
	removeWorker func()
	buildErr     error
)

// binary builds this command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		workerBin, removeWorker, buildErr = testenv.BuildCommand("worker")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return workerBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if removeWorker != nil {
		removeWorker()
	}
	os.Exit(code)
}

// process is one running worker process and the lines it printed.
type process struct {
	cmd    *exec.Cmd
	pid    string
	mu     sync.Mutex
	lines  []string
	stderr bytes.Buffer
	exited chan error
}

func startWorkers(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{exited: make(chan error, 1)}
	p.cmd = exec.Command(binary(t), args...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = strconv.Itoa(p.cmd.Process.Pid)
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
	}()
	go func() {
		<-read // all of stdout is read before Wait closes the pipe
		p.exited <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// snapshot returns the lines printed so far.
func (p *process) snapshot() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// waitFor polls until cond holds for the lines printed so far, failing the
// test if the process exits first or waitLong passes.
func (p *process) waitFor(t *testing.T, what string, cond func(lines []string) bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond(p.snapshot()) {
		select {
		case err := <-p.exited:
			p.exited <- err
			if cond(p.snapshot()) {
				return
			}
			t.Fatalf("worker %s exited (%v) before %s\n%s", p.pid, err, what, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s: not %s within %v", p.pid, what, waitLong)
		}
	}
}

// wait waits for the process to exit and fails the test unless it succeeded.
func (p *process) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("worker %s: %v\n%s", p.pid, err, p.stderr.String())
		}
	case <-time.After(waitLong):
		t.Fatalf("worker %s did not finish within %v", p.pid, waitLong)
	}
}

// tally is what the lines of some processes say.
type tally struct {
	runs    map[string][]string          // job -> pids whose work started on it, in order
	results map[string]map[string]string // job -> worker -> result it got
}

func count(procs ...*process) tally {
	tl := tally{runs: map[string][]string{}, results: map[string]map[string]string{}}
	for _, p := range procs {
		for _, l := range p.snapshot() {
			f := strings.Fields(l)
			switch {
			case len(f) == 3 && f[0] == "run":
				tl.runs[f[1]] = append(tl.runs[f[1]], f[2])
			case len(f) == 4 && f[0] == "done":
				if tl.results[f[1]] == nil {
					tl.results[f[1]] = map[string]string{}
				}
				tl.results[f[1]][f[2]] = f[3]
			}
		}
	}
	return tl
}

func jobID(prefix string, i int) string { return fmt.Sprintf("%sjob-%04d", prefix, i) }

// checkResults fails the test unless each of workers got a result for every
// job, and every worker that got one got the same.
func checkResults(t *testing.T, tl tally, prefix string, workers []string) {
	t.Helper()
	bad := 0
	for i := range numJobs {
		job := jobID(prefix, i)
		res := tl.results[job]
		var first string
		for w, r := range res {
			if first == "" {
				first = r
			} else if r != first && bad < 5 {
				bad++
				t.Errorf("%s: worker %s got %s, another %s", job, w, r, first)
			}
		}
		for _, w := range workers {
			if _, ok := res[w]; !ok && bad < 5 {
				bad++
				t.Errorf("%s: worker %s got no result", job, w)
			}
		}
	}
}

func workerNames(p *process) []string { return []string{p.pid + ".0", p.pid + ".1"} }

// Four workers in two processes each pull the same 500 job ids from one
// store: every job runs exactly once, and all four workers get its result.
func TestWorkersRunEachJobOnceWhileOwnersLive(t *testing.T) {
	for _, name := range []string{"redis", "postgres"} {
		t.Run(name, func(t *testing.T) {
			store := workerStore(t, name)
			prefix := "live-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
			args := []string{"-store", store, "-workers", "2", "-jobs", strconv.Itoa(numJobs), "-prefix", prefix, "-lock-ttl", lockTTL}
			a, b := startWorkers(t, args...), startWorkers(t, args...)
			a.wait(t)
			b.wait(t)
			tl := count(a, b)
			ran, wrong := 0, 0
			for i := range numJobs {
				job := jobID(prefix, i)
				if n := len(tl.runs[job]); n != 1 {
					wrong++
					if wrong <= 10 {
						t.Errorf("%s ran %d times (%v)", job, n, tl.runs[job])
					}
				}
				ran += len(tl.runs[job])
			}
			if wrong > 0 {
				t.Errorf("%d of %d jobs did not run exactly once", wrong, numJobs)
			}
			checkResults(t, tl, prefix, append(workerNames(a), workerNames(b)...))
			t.Logf("%d runs for %d jobs; process %s ran %d", ran, numJobs, a.pid, len(count(a).runs))
		})
	}
}

// The same, with one process killed (kill -9) in the middle of a job: the
// survivor's workers finish every job; a job runs at most twice, and only
// a job the killed process had started and not finished runs again (once
// its lease has ended).
func TestWorkersRunAJobAtMostTwiceWhenItsOwnerIsKilled(t *testing.T) {
	for _, name := range []string{"redis", "postgres"} {
		t.Run(name, func(t *testing.T) {
			store := workerStore(t, name)
			prefix := "kill-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
			args := []string{"-store", store, "-workers", "2", "-jobs", strconv.Itoa(numJobs), "-prefix", prefix, "-lock-ttl", lockTTL}
			stalled := jobID(prefix, 0)
			// a's first worker starts with the stalled job, and hangs in it;
			// b starts once a holds it.
			a := startWorkers(t, append(args, "-stall", stalled)...)
			a.waitFor(t, "running "+stalled, func(lines []string) bool {
				return count(&process{lines: lines}).runs[stalled] != nil
			})
			b := startWorkers(t, args...)
			b.waitFor(t, "100 jobs into the run", func(lines []string) bool {
				return len(count(a).runs)+len(count(&process{lines: lines}).runs) >= 100
			})
			if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := <-a.exited; err == nil {
				t.Fatal("the killed worker exited cleanly")
			}
			a.exited <- nil
			b.wait(t)

			ta, tl := count(a), count(a, b)
			aFinished := map[string]bool{} // jobs a got a result of
			for job := range ta.results {
				aFinished[job] = true
			}
			twice := 0
			for i := range numJobs {
				job := jobID(prefix, i)
				runs := tl.runs[job]
				switch {
				case len(runs) == 0:
					t.Errorf("%s never ran", job)
				case len(runs) > 2:
					t.Errorf("%s ran %d times (%v)", job, len(runs), runs)
				case len(runs) == 2:
					twice++
					if ta.runs[job] == nil || aFinished[job] {
						t.Errorf("%s ran twice (%v), but the killed process had not left it unfinished", job, runs)
					}
				}
			}
			if got := tl.runs[stalled]; len(got) != 2 || got[0] != a.pid || got[1] != b.pid {
				t.Errorf("the job the killed process held ran %v, want once there and once on the survivor", got)
			}
			checkResults(t, tl, prefix, workerNames(b))
			t.Logf("killed process %s after %d of its runs; %d jobs ran twice", a.pid, len(ta.runs), twice)
		})
	}
}
