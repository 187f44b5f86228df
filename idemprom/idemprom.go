// Package idemprom exports the idem middleware's metrics to Prometheus:
//
//	idem_requests_total{route, outcome}                 counter
//	idem_incidents_total{route, kind}                   counter
//	idem_handler_duration_seconds{route}                histogram
//	idem_store_call_duration_seconds{operation, result} histogram
//	idem_keys_in_flight                                 gauge
//
// Wire it in with a hook and a store wrapper:
//
//	m, err := idemprom.New(prometheus.DefaultRegisterer, idemprom.WithRoute(routeOf))
//	mw := idem.New(m.Store(store), idem.WithHook(m.Hook))
//
// outcome is idem.Outcome's name ("executed", "replayed", "conflict", ...).
// operation is the Store method ("claim", "complete", "release", "renew";
// "lookup", "delete" for an Inspector; "begin_work" for a WorkStore's
// BeginWork, "commit" and "rollback" for its Work's Commit and Rollback);
// result is "ok", "lock_lost" (the store refused an owner that no longer
// owns the key) or "error". A key is in flight from the Claim that wins
// it until its owner's Complete, Commit or Release, or until its lease
// runs out or is lost, as far as this process sees it.
//
// The store wrapper implements exactly the optional interfaces of the
// store it wraps, idem.Inspector and idem.WorkStore, so that wrapping a
// store in transactional mode (sqlstore's TxStore) keeps that mode. The
// Work it returns hands the work the context of the store's own unit
// unchanged (sqlstore.TxFromContext finds the transaction).
package idemprom

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemgo/idem"
)

// Metrics records the metrics of one or more middlewares. Create it with
// New; it is safe for concurrent use.
type Metrics struct {
	requests  *prometheus.CounterVec
	incidents *prometheus.CounterVec
	handler   *prometheus.HistogramVec
	store     *prometheus.HistogramVec
	owned     *owned
	route     func(*http.Request) string
}

// Option configures Metrics.
type Option func(*config)

type config struct {
	namespace      string
	route          func(*http.Request) string
	buckets        []float64
	handlerBuckets []float64
	constLabels    prometheus.Labels
}

// WithRoute sets the function that names a request's route for the route
// label (default: none, the label is empty). Return a pattern
// ("/payments/{id}"), never the raw path, so that the number of series
// stays bounded: r.Pattern with net/http's ServeMux on Go 1.23+, or
// chi.RouteContext(r.Context()).RoutePattern() with chi. Do has no
// request: its route is empty.
func WithRoute(f func(*http.Request) string) Option {
	return func(c *config) { c.route = f }
}

// WithNamespace puts namespace_ before every metric name (default none).
func WithNamespace(namespace string) Option {
	return func(c *config) { c.namespace = namespace }
}

// WithStoreBuckets sets the buckets of the store call histogram, in
// seconds (default from 0.5ms to 2.5s).
func WithStoreBuckets(b ...float64) Option {
	return func(c *config) { c.buckets = b }
}

// WithHandlerBuckets sets the buckets of the handler histogram, in
// seconds (default prometheus.DefBuckets).
func WithHandlerBuckets(b ...float64) Option {
	return func(c *config) { c.handlerBuckets = b }
}

// WithConstLabels adds labels with fixed values to every metric, for
// example to tell two middlewares apart.
func WithConstLabels(l prometheus.Labels) Option {
	return func(c *config) { c.constLabels = l }
}

// New creates the metrics and registers them with reg. It fails if reg
// already holds metrics of the same names (use WithNamespace or
// WithConstLabels to register several).
func New(reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	c := config{
		buckets:        []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		handlerBuckets: prometheus.DefBuckets,
	}
	for _, o := range opts {
		o(&c)
	}
	m := &Metrics{owned: newOwned(time.Now), route: c.route}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.namespace, Name: "idem_requests_total", ConstLabels: c.constLabels,
		Help: "Keyed requests (and Do calls) by route and outcome.",
	}, []string{"route", "outcome"})
	m.incidents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.namespace, Name: "idem_incidents_total", ConstLabels: c.constLabels,
		Help: "Failed lease renewals and key releases, by route and kind (renew_failed, release_failed); reported besides the request's outcome.",
	}, []string{"route", "kind"})
	m.handler = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: c.namespace, Name: "idem_handler_duration_seconds", ConstLabels: c.constLabels,
		Help:    "Time the handler ran under a key, by route.",
		Buckets: c.handlerBuckets,
	}, []string{"route"})
	m.store = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: c.namespace, Name: "idem_store_call_duration_seconds", ConstLabels: c.constLabels,
		Help:    "Latency of idempotency store calls, by operation and result (ok, lock_lost, error).",
		Buckets: c.buckets,
	}, []string{"operation", "result"})
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: c.namespace, Name: "idem_keys_in_flight", ConstLabels: c.constLabels,
		Help: "Keys this process has claimed and is running the handler for.",
	}, func() float64 { return float64(m.owned.count()) })
	for _, col := range []prometheus.Collector{m.requests, m.incidents, m.handler, m.store, inflight} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hook counts one outcome; pass it to idem.WithHook. To keep a hook of your
// own, call both from one function.
func (m *Metrics) Hook(ev idem.Event) {
	route := ""
	if m.route != nil && ev.Request != nil {
		route = m.route(ev.Request)
	}
	if !ev.Outcome.Final() {
		m.incidents.WithLabelValues(route, ev.Outcome.String()).Inc()
		return
	}
	m.requests.WithLabelValues(route, ev.Outcome.String()).Inc()
	if ev.HandlerDuration > 0 {
		m.handler.WithLabelValues(route).Observe(ev.HandlerDuration.Seconds())
	}
}

// Store returns store with every call timed into the store histogram and
// the keys it claims counted in flight. The result implements
// idem.Inspector when store does, and idem.WorkStore when store does (its
// BeginWork and its Works' Commit and Rollback are timed too); it
// implements neither when store does not.
func (m *Metrics) Store(store idem.Store) idem.Store {
	s := &timedStore{store: store, m: m}
	ins, isInspector := store.(idem.Inspector)
	ws, isWorkStore := store.(idem.WorkStore)
	switch {
	case isInspector && isWorkStore:
		return struct {
			*timedStore
			timedInspector
			timedBegin
		}{s, timedInspector{ins, m}, timedBegin{ws, m}}
	case isInspector:
		return struct {
			*timedStore
			timedInspector
		}{s, timedInspector{ins, m}}
	case isWorkStore:
		return struct {
			*timedStore
			timedBegin
		}{s, timedBegin{ws, m}}
	}
	return s
}

func (m *Metrics) observe(op string, start time.Time, err error) {
	m.store.WithLabelValues(op, result(err)).Observe(time.Since(start).Seconds())
}

func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, idem.ErrLockLost):
		return "lock_lost"
	}
	return "error"
}

type timedStore struct {
	store idem.Store
	m     *Metrics
}

func (s *timedStore) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	start := time.Now()
	rec, err := s.store.Claim(ctx, key, token, fingerprint, lease)
	s.m.observe("claim", start, err)
	if err == nil && won(rec, token) {
		s.m.owned.claimed(key, token, start.Add(lease))
	}
	return rec, err
}

// won reports whether a Claim with token that returned rec won the key: no
// record, or (when the store's client sent the claim again after losing the
// reply to the first) a record in progress under token itself, which the
// middleware counts as won too.
func won(rec *idem.Record, token string) bool {
	return rec == nil || (rec.State == idem.StateInProgress && rec.Token == token)
}

func (s *timedStore) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	start := time.Now()
	err := s.store.Complete(ctx, key, token, result, ttl)
	s.m.observe("complete", start, err)
	s.m.owned.done(key, token)
	return err
}

func (s *timedStore) Release(ctx context.Context, key, token string) error {
	start := time.Now()
	err := s.store.Release(ctx, key, token)
	s.m.observe("release", start, err)
	s.m.owned.done(key, token)
	return err
}

func (s *timedStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	start := time.Now()
	err := s.store.Renew(ctx, key, token, lease)
	s.m.observe("renew", start, err)
	switch {
	case err == nil:
		s.m.owned.renewed(key, token, start.Add(lease))
	case errors.Is(err, idem.ErrLockLost):
		s.m.owned.done(key, token)
	}
	return err
}

// timedInspector times the calls of an Inspector.
type timedInspector struct {
	ins idem.Inspector
	m   *Metrics
}

func (s timedInspector) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	start := time.Now()
	ks, err := s.ins.Lookup(ctx, key)
	s.m.observe("lookup", start, err)
	return ks, err
}

func (s timedInspector) Delete(ctx context.Context, key string) (bool, error) {
	start := time.Now()
	ok, err := s.ins.Delete(ctx, key)
	s.m.observe("delete", start, err)
	return ok, err
}

// timedBegin times the BeginWork of a WorkStore and wraps the Work it
// begins.
type timedBegin struct {
	ws idem.WorkStore
	m  *Metrics
}

func (s timedBegin) BeginWork(ctx context.Context, key, token string) (idem.Work, error) {
	start := time.Now()
	w, err := s.ws.BeginWork(ctx, key, token)
	s.m.observe("begin_work", start, err)
	if err != nil {
		return nil, err
	}
	return &timedWork{work: w, key: key, token: token, m: s.m}, nil
}

// timedWork times Commit and Rollback. Commit ends the owner's hold on the
// key as Complete does: after a failed Commit the owner either releases
// the key or (ErrLockLost) no longer holds it. Rollback ends nothing: the
// Release that follows it does.
type timedWork struct {
	work       idem.Work
	key, token string
	m          *Metrics
}

func (w *timedWork) Context(ctx context.Context) context.Context {
	return w.work.Context(ctx)
}

func (w *timedWork) Commit(ctx context.Context, result []byte, ttl time.Duration) error {
	start := time.Now()
	err := w.work.Commit(ctx, result, ttl)
	w.m.observe("commit", start, err)
	w.m.owned.done(w.key, w.token)
	return err
}

func (w *timedWork) Rollback() error {
	start := time.Now()
	err := w.work.Rollback()
	w.m.observe("rollback", start, err)
	return err
}
