package idem_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/memstore"
)

// stallingBody yields its first bytes, then blocks until released, as a
// client does that announces a large body and stops sending.
type stallingBody struct {
	first   []byte
	stalled chan struct{} // closed when the reader blocks
	release chan struct{}
	once    sync.Once
}

func newStallingBody(first string) *stallingBody {
	return &stallingBody{first: []byte(first), stalled: make(chan struct{}), release: make(chan struct{})}
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if len(b.first) > 0 {
		n := copy(p, b.first)
		b.first = b.first[n:]
		return n, nil
	}
	b.once.Do(func() { close(b.stalled) })
	<-b.release
	return 0, errors.New("client went away")
}

func (b *stallingBody) Close() error { return nil }

// Clients that announce a 1 MiB body and then stall cost memory for the
// bytes they sent, not for the length they announced.
func TestStalledBodyMemoryFollowsBytesReceived(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	mw := idem.New(st)(&payments{})
	const (
		clients   = 16
		announced = 1 << 20
	)
	bodies := make([]*stallingBody, clients)
	var wg sync.WaitGroup
	defer wg.Wait()
	runtime.GC()
	var before, during runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range bodies {
		bodies[i] = newStallingBody(`{"amount":`)
		r := httptest.NewRequest("POST", "/", nil)
		r.Body, r.ContentLength = bodies[i], announced
		r.Header.Set("Idempotency-Key", "stall-"+strconv.Itoa(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			mw.ServeHTTP(httptest.NewRecorder(), r)
		}()
	}
	for _, b := range bodies {
		<-b.stalled
	}
	runtime.ReadMemStats(&during)
	for _, b := range bodies {
		close(b.release)
	}
	allocated := during.TotalAlloc - before.TotalAlloc
	t.Logf("%d stalled clients announcing %d bytes each: %d bytes allocated", clients, announced, allocated)
	if allocated > clients*announced/8 {
		t.Fatalf("%d stalled clients that sent 10 bytes each made the middleware allocate %d bytes; want memory that follows the bytes received",
			clients, allocated)
	}
}

// A body that arrives in full is handed to the handler byte for byte,
// whatever its announced length says about how it is read: exact, unknown
// (-1), 0 with a body, which http.Request also takes as unknown, or
// shorter than the body, as a request built by hand may say.
func TestBodyReadGrowsToFullLength(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	for _, n := range []int{0, 1, 4095, 4096, 4097, 100_000, 1 << 20} {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(i * 7)
		}
		var got []byte
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = make([]byte, 0, n)
			buf := make([]byte, 3000)
			for {
				k, err := r.Body.Read(buf)
				got = append(got, buf[:k]...)
				if err != nil {
					break
				}
			}
		})
		for _, cl := range []int64{int64(n), -1, 0, int64(n / 2)} {
			r := httptest.NewRequest("POST", "/", &noEmptyReads{r: iotest.HalfReader(bytes.NewReader(body))})
			r.ContentLength = cl
			r.Header.Set("Idempotency-Key", "grow-"+strconv.Itoa(n)+"-"+strconv.FormatInt(cl, 10))
			w := httptest.NewRecorder()
			idem.New(st)(h).ServeHTTP(w, r)
			if w.Code != 200 || string(got) != string(body) {
				t.Fatalf("%d-byte body (Content-Length %d): status %d, handler read %d bytes", n, cl, w.Code, len(got))
			}
		}
	}
}

// noEmptyReads fails a reader's user that keeps asking for nothing, which
// would otherwise spin for ever.
type noEmptyReads struct {
	r     io.Reader
	empty int
}

func (b *noEmptyReads) Read(p []byte) (int, error) {
	if len(p) > 0 {
		b.empty = 0
	} else if b.empty++; b.empty > 100 {
		return 0, errors.New("100 reads of nothing in a row")
	}
	return b.r.Read(p)
}

// A request built by hand may have no Body at all (nil, as http.Request
// allows for client requests): it is served as one with an empty body.
func TestRequestWithNilBodyIsServed(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	p := &payments{}
	mw := idem.New(st)(p)
	for i, want := range []string{"", "true"} {
		r := httptest.NewRequest("POST", "/", nil)
		r.Body = nil
		r.Header.Set("Idempotency-Key", "k")
		w := httptest.NewRecorder()
		mw.ServeHTTP(w, r)
		if w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != want {
			t.Fatalf("answer %d: %d %q, replayed %q", i, w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
		}
	}
	if p.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", p.runs.Load())
	}
}
