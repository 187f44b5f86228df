// Package idemotel reports the idem middleware to OpenTelemetry: attributes
// and an event on the request's span, a span per store call, and metrics
// through the otel metric API.
//
//	o, err := idemotel.New() // global TracerProvider and MeterProvider
//	mw := idem.New(o.Store(store), idem.WithHook(o.Hook))
//
// On the request's span (the one in the request's context, for example
// from otelhttp), Hook sets idem.outcome, idem.status and, when they
// apply, idem.stored, idem.problem and idem.handler_duration_ms, and adds
// an event "idem.outcome" carrying the same. The raw key and scope are
// never recorded: keys may be guessable and scopes may derive from
// credentials.
//
// The store wrapper starts a span "idem.store.<operation>" (claim,
// complete, release, renew; lookup and delete for an Inspector; begin_work
// for a WorkStore's BeginWork, commit and rollback for its Work's Commit
// and Rollback) as a child of the span in the call's context, which the
// middleware derives from the request's (Rollback has no context: its
// span is a child of the span BeginWork was called under); a store
// failure is recorded on it as an error, ErrLockLost as
// idem.result=lock_lost.
//
// The wrapper implements exactly the optional interfaces of the store it
// wraps, idem.Inspector and idem.WorkStore, so that wrapping a store in
// transactional mode (sqlstore's TxStore) keeps that mode; the Work it
// returns hands the work the context of the store's own unit unchanged
// (sqlstore.TxFromContext finds the transaction). A key is in flight from
// the Claim that wins it until its owner's Complete, Commit or Release,
// or until its lease runs out or is lost.
//
// Metrics (the Meter is named "github.com/idemgo/idem/idemotel"):
//
//	idem.requests           counter     {idem.outcome, http.route}
//	idem.incidents          counter     {idem.kind, http.route}: renew_failed, release_failed
//	idem.handler.duration   histogram s {http.route}
//	idem.store.duration     histogram s {idem.operation, idem.result}
//	idem.keys.in_flight     gauge       keys claimed by this process and running
package idemotel

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemgo/idem"
)

// ScopeName names the Tracer and Meter.
const ScopeName = "github.com/idemgo/idem/idemotel"

// Instrumentation reports to OpenTelemetry. Create it with New.
type Instrumentation struct {
	tracer    trace.Tracer
	requests  metric.Int64Counter
	incidents metric.Int64Counter
	handler   metric.Float64Histogram
	store     metric.Float64Histogram
	route     func(*http.Request) string
	owned     *owned
}

// Option configures New.
type Option func(*config)

type config struct {
	tp    trace.TracerProvider
	mp    metric.MeterProvider
	route func(*http.Request) string
}

// WithTracerProvider sets the TracerProvider (default otel's global one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets the MeterProvider (default otel's global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithRoute sets the function that names a request's route for the
// http.route attribute of the metrics (default: r.Pattern, the pattern of
// net/http's ServeMux, empty under other routers). Return a pattern, never
// the raw path.
func WithRoute(f func(*http.Request) string) Option {
	return func(c *config) { c.route = f }
}

// New creates the instruments.
func New(opts ...Option) (*Instrumentation, error) {
	c := config{route: func(r *http.Request) string { return r.Pattern }}
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	meter := c.mp.Meter(ScopeName)
	in := &Instrumentation{tracer: c.tp.Tracer(ScopeName), route: c.route, owned: newOwned()}
	var err error
	in.requests, err = meter.Int64Counter("idem.requests", metric.WithDescription("Keyed requests (and Do calls) by outcome and route."))
	if err != nil {
		return nil, err
	}
	in.incidents, err = meter.Int64Counter("idem.incidents", metric.WithDescription("Failed lease renewals and key releases, reported besides the request's outcome."))
	if err != nil {
		return nil, err
	}
	in.handler, err = meter.Float64Histogram("idem.handler.duration", metric.WithUnit("s"), metric.WithDescription("Time the handler ran under a key."))
	if err != nil {
		return nil, err
	}
	in.store, err = meter.Float64Histogram("idem.store.duration", metric.WithUnit("s"), metric.WithDescription("Latency of idempotency store calls by operation and result."),
		metric.WithExplicitBucketBoundaries(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
	if err != nil {
		return nil, err
	}
	_, err = meter.Int64ObservableGauge("idem.keys.in_flight", metric.WithDescription("Keys this process has claimed and is running the handler for."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(in.owned.count()))
			return nil
		}))
	if err != nil {
		return nil, err
	}
	return in, nil
}

// Hook reports one outcome; pass it to idem.WithHook.
func (in *Instrumentation) Hook(ev idem.Event) {
	ctx := context.Background()
	route := ""
	if ev.Request != nil {
		ctx = ev.Request.Context()
		route = in.route(ev.Request)
	}
	if !ev.Outcome.Final() {
		// An incident besides the request's outcome: its own counter and a
		// span event, never the request's outcome attribute.
		kind := attribute.String("idem.kind", ev.Outcome.String())
		in.incidents.Add(ctx, 1, metric.WithAttributes(kind, attribute.String("http.route", route)))
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			span.AddEvent("idem.incident", trace.WithAttributes(kind))
			if ev.Err != nil {
				span.RecordError(ev.Err)
			}
		}
		return
	}
	outcome := attribute.String("idem.outcome", ev.Outcome.String())
	in.requests.Add(ctx, 1, metric.WithAttributes(outcome, attribute.String("http.route", route)))
	if ev.HandlerDuration > 0 {
		in.handler.Record(ctx, ev.HandlerDuration.Seconds(), metric.WithAttributes(attribute.String("http.route", route)))
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{outcome}
	if ev.Status != 0 {
		attrs = append(attrs, attribute.Int("idem.status", ev.Status))
	}
	if ev.Outcome == idem.OutcomeExecuted {
		attrs = append(attrs, attribute.Bool("idem.stored", ev.Stored))
	}
	if ev.Problem != "" {
		attrs = append(attrs, attribute.String("idem.problem", strings.TrimPrefix(ev.Problem, idem.ProblemTypeBase)))
	}
	if ev.HandlerDuration > 0 {
		attrs = append(attrs, attribute.Float64("idem.handler_duration_ms", float64(ev.HandlerDuration)/float64(time.Millisecond)))
	}
	span.SetAttributes(attrs...)
	evAttrs := attrs
	if ev.Reason != "" {
		evAttrs = append(evAttrs, attribute.String("idem.reason", ev.Reason))
	}
	span.AddEvent("idem.outcome", trace.WithAttributes(evAttrs...))
	if ev.Err != nil {
		span.RecordError(ev.Err)
	}
}

// Store returns store with a span and a latency record for every call, and
// the keys it claims counted in flight. The result implements
// idem.Inspector when store does, and idem.WorkStore when store does (its
// BeginWork and its Works' Commit and Rollback get spans too); it
// implements neither when store does not.
func (in *Instrumentation) Store(store idem.Store) idem.Store {
	s := &tracedStore{store: store, in: in}
	ins, isInspector := store.(idem.Inspector)
	ws, isWorkStore := store.(idem.WorkStore)
	switch {
	case isInspector && isWorkStore:
		return struct {
			*tracedStore
			tracedInspector
			tracedBegin
		}{s, tracedInspector{ins, in}, tracedBegin{ws, in}}
	case isInspector:
		return struct {
			*tracedStore
			tracedInspector
		}{s, tracedInspector{ins, in}}
	case isWorkStore:
		return struct {
			*tracedStore
			tracedBegin
		}{s, tracedBegin{ws, in}}
	}
	return s
}

// call starts the span of one store call; end finishes it.
func (in *Instrumentation) call(ctx context.Context, op string) (context.Context, trace.Span, time.Time) {
	ctx, span := in.tracer.Start(ctx, "idem.store."+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("idem.operation", op)))
	return ctx, span, time.Now()
}

func (in *Instrumentation) end(ctx context.Context, span trace.Span, start time.Time, op string, err error) {
	res := "ok"
	switch {
	case err == nil:
	case errors.Is(err, idem.ErrLockLost):
		res = "lock_lost"
	default:
		res = "error"
		span.RecordError(err)
		span.SetStatus(codes.Error, "store call failed")
	}
	span.SetAttributes(attribute.String("idem.result", res))
	span.End()
	in.store.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(attribute.String("idem.operation", op), attribute.String("idem.result", res)))
}

type tracedStore struct {
	store idem.Store
	in    *Instrumentation
}

func (s *tracedStore) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	ctx, span, start := s.in.call(ctx, "claim")
	rec, err := s.store.Claim(ctx, key, token, fingerprint, lease)
	if err == nil {
		// A record in progress under the caller's own token is the claim
		// the store's client sent again after losing the reply to the
		// first: the middleware counts it as won, and so does this.
		won := rec == nil || (rec.State == idem.StateInProgress && rec.Token == token)
		state := "won"
		if !won {
			state = rec.State.String()
		}
		span.SetAttributes(attribute.String("idem.claim", state))
		if won {
			s.in.owned.claimed(key, token, start.Add(lease))
		}
	}
	s.in.end(ctx, span, start, "claim", err)
	return rec, err
}

func (s *tracedStore) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	ctx, span, start := s.in.call(ctx, "complete")
	err := s.store.Complete(ctx, key, token, result, ttl)
	s.in.owned.done(key, token)
	s.in.end(ctx, span, start, "complete", err)
	return err
}

func (s *tracedStore) Release(ctx context.Context, key, token string) error {
	ctx, span, start := s.in.call(ctx, "release")
	err := s.store.Release(ctx, key, token)
	s.in.owned.done(key, token)
	s.in.end(ctx, span, start, "release", err)
	return err
}

func (s *tracedStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	ctx, span, start := s.in.call(ctx, "renew")
	err := s.store.Renew(ctx, key, token, lease)
	switch {
	case err == nil:
		s.in.owned.renewed(key, token, start.Add(lease))
	case errors.Is(err, idem.ErrLockLost):
		s.in.owned.done(key, token)
	}
	s.in.end(ctx, span, start, "renew", err)
	return err
}

// tracedInspector traces the calls of an Inspector.
type tracedInspector struct {
	ins idem.Inspector
	in  *Instrumentation
}

func (s tracedInspector) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	ctx, span, start := s.in.call(ctx, "lookup")
	ks, err := s.ins.Lookup(ctx, key)
	s.in.end(ctx, span, start, "lookup", err)
	return ks, err
}

func (s tracedInspector) Delete(ctx context.Context, key string) (bool, error) {
	ctx, span, start := s.in.call(ctx, "delete")
	ok, err := s.ins.Delete(ctx, key)
	s.in.end(ctx, span, start, "delete", err)
	return ok, err
}

// tracedBegin traces the BeginWork of a WorkStore and wraps the Work it
// begins.
type tracedBegin struct {
	ws idem.WorkStore
	in *Instrumentation
}

func (s tracedBegin) BeginWork(ctx context.Context, key, token string) (idem.Work, error) {
	sctx, span, start := s.in.call(ctx, "begin_work")
	w, err := s.ws.BeginWork(sctx, key, token)
	s.in.end(sctx, span, start, "begin_work", err)
	if err != nil {
		return nil, err
	}
	// Only the span is kept for Rollback, not ctx's deadline or values.
	parent := trace.ContextWithSpanContext(context.Background(), trace.SpanContextFromContext(ctx))
	return &tracedWork{work: w, key: key, token: token, in: s.in, parent: parent}, nil
}

// tracedWork traces Commit and Rollback. Commit ends the owner's hold on
// the key as Complete does: after a failed Commit the owner either
// releases the key or (ErrLockLost) no longer holds it. Rollback ends
// nothing: the Release that follows it does.
type tracedWork struct {
	work       idem.Work
	key, token string
	in         *Instrumentation
	parent     context.Context // carries the span BeginWork was called under
}

func (w *tracedWork) Context(ctx context.Context) context.Context {
	return w.work.Context(ctx)
}

func (w *tracedWork) Commit(ctx context.Context, result []byte, ttl time.Duration) error {
	ctx, span, start := w.in.call(ctx, "commit")
	err := w.work.Commit(ctx, result, ttl)
	w.in.owned.done(w.key, w.token)
	w.in.end(ctx, span, start, "commit", err)
	return err
}

func (w *tracedWork) Rollback() error {
	ctx, span, start := w.in.call(w.parent, "rollback")
	err := w.work.Rollback()
	w.in.end(ctx, span, start, "rollback", err)
	return err
}

// owned tracks the keys this process owns, each until its lease ends
// unless renewed, completed, released or lost (as idemprom does).
type owned struct {
	mu sync.Mutex
	m  map[[2]string]time.Time
}

func newOwned() *owned { return &owned{m: make(map[[2]string]time.Time)} }

func (o *owned) claimed(key, token string, until time.Time) {
	o.mu.Lock()
	o.m[[2]string{key, token}] = until
	o.mu.Unlock()
}

func (o *owned) renewed(key, token string, until time.Time) {
	o.mu.Lock()
	if _, ok := o.m[[2]string{key, token}]; ok {
		o.m[[2]string{key, token}] = until
	}
	o.mu.Unlock()
}

func (o *owned) done(key, token string) {
	o.mu.Lock()
	delete(o.m, [2]string{key, token})
	o.mu.Unlock()
}

func (o *owned) count() int {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, until := range o.m {
		if !now.Before(until) {
			delete(o.m, k)
		}
	}
	return len(o.m)
}
