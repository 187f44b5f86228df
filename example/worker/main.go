// Command worker is an example job worker on idem's Runner: several
// workers, in as many processes as you like, take jobs from a queue that
// may hand the same job to more than one of them (every at-least-once
// queue does, on redelivery), and each job runs once.
//
//	go run ./example/worker -store redis://127.0.0.1:6379/0 -jobs 500 -workers 4
//
// Here every worker is handed every job id (job-0000 … job-0499, after
// -prefix), the worst case of redelivery. A worker that finds a job running
// elsewhere puts it back and comes to it again later; one that finds it done
// gets its stored result. The whole flow is Runner.Do:
//
//	result, err := runner.Do(ctx, jobID, idem.FingerprintBytes(payload), work)
//
// Each process prints one line per event to stdout: "run JOB PID" when its
// work starts, "done JOB WORKER RESULT" when a worker has the job's result
// (its own or the stored one), and "finished" at the end. -stall JOB makes
// the work of that job hang, to try what happens when a process is killed
// in the middle of a job: its lease ends after -lock-ttl and another worker
// runs the job again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/internal/storeurl"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	storeSpec := fs.String("store", "memory", "store: "+storeurl.Usage)
	workers := fs.Int("workers", 2, "workers in this process")
	jobs := fs.Int("jobs", 500, "number of job ids every worker is handed")
	prefix := fs.String("prefix", "", "prefix of the job ids, to keep runs apart in one store")
	lockTTL := fs.Duration("lock-ttl", 30*time.Second, "lease of a running job; a job whose process died runs again after it")
	work := fs.Duration("work", 2*time.Millisecond, "how long one job's work takes")
	stall := fs.String("stall", "", "a job id whose work hangs (to try a kill in the middle of a job)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *workers < 1 || *jobs < 1 {
		return errors.New("-workers and -jobs must be positive")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	store, closeStore, err := storeurl.Open(openCtx, *storeSpec, storeurl.Options{})
	cancel()
	if err != nil {
		return err
	}
	defer closeStore()

	// One Runner for the process, shared by its workers.
	runner, err := idem.NewRunner(store, idem.WithLockTTL(*lockTTL), idem.WithTTL(24*time.Hour))
	if err != nil {
		return err
	}
	ids := make([]string, *jobs)
	for i := range ids {
		ids[i] = fmt.Sprintf("%sjob-%04d", *prefix, i)
	}
	out := &lineWriter{}
	pid := os.Getpid()
	var wg sync.WaitGroup
	errs := make([]error, *workers)
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Worker w starts at its own place in the queue; worker 0 at the
			// first job.
			start := w * len(ids) / *workers
			queue := append(append([]string(nil), ids[start:]...), ids[:start]...)
			errs[w] = consume(ctx, runner, queue, func(ctx context.Context, id string) ([]byte, error) {
				out.printf("run %s %d\n", id, pid)
				if id == *stall {
					<-ctx.Done() // hangs until the process is killed or stopped
					return nil, ctx.Err()
				}
				select {
				case <-time.After(*work):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return []byte(fmt.Sprintf("%s-by-%d.%d", id, pid, w)), nil
			}, func(id string, result []byte) {
				out.printf("done %s %d.%d %s\n", id, pid, w, result)
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	out.printf("finished\n")
	return nil
}

// consume takes every job of queue until each has a result: it runs the
// job's work through the Runner, which runs it only if no worker has, and
// puts back a job that is running elsewhere (or that failed) for later.
func consume(ctx context.Context, runner *idem.Runner, queue []string, work func(ctx context.Context, id string) ([]byte, error), done func(id string, result []byte)) error {
	for pause := 10 * time.Millisecond; len(queue) > 0; {
		var later []string
		for _, id := range queue {
			// The payload of a job is its id here; a real queue would pass
			// the message body, so that an id reused for other work is caught.
			result, err := runner.Do(ctx, id, idem.FingerprintBytes([]byte(id)), func(ctx context.Context) ([]byte, error) {
				return work(ctx, id)
			})
			switch {
			case err == nil:
				done(id, result)
			case errors.Is(err, idem.ErrInProgress):
				later = append(later, id) // another worker runs it: come back
			case ctx.Err() != nil:
				return ctx.Err()
			default:
				// The store failed, or the job's work did: the key was
				// released (or its lease will end), so a later try may run it.
				slog.Warn("job not done; will retry", "job", id, "err", err)
				later = append(later, id)
			}
		}
		queue = later
		if len(queue) > 0 {
			select {
			case <-time.After(pause + rand.N(pause)):
			case <-ctx.Done():
				return ctx.Err()
			}
			pause = min(2*pause, 200*time.Millisecond)
		}
	}
	return nil
}

// lineWriter writes whole lines to stdout, one write each, so that lines of
// concurrent workers never interleave and a line written before a kill -9
// is never half lost.
type lineWriter struct{ mu sync.Mutex }

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(os.Stdout, format, args...)
}
