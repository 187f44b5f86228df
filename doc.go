// Package idem makes retried HTTP requests safe: net/http middleware for
// Stripe-style idempotency keys.
//
// A client that times out retries POST /payments with the same
// Idempotency-Key header. The middleware makes sure the handler runs once per
// key and that every retry gets the first answer back, byte for byte, with
// Idempotent-Replayed: true:
//
//	store := memstore.New() // or redisstore.New(client), sqlstore.New(db, sqlstore.Postgres)
//	mux.Handle("POST /payments", idem.New(store)(paymentsHandler))
//
// For each protected request (POST and PATCH by default) that carries a
// key, the middleware
//
//  1. reads the body (up to 1 MiB by default) and fingerprints the request
//     (SHA-256 over method, path, query and body);
//  2. claims the key in the store in one atomic operation, as in progress,
//     under a lease (30s by default) that is renewed while the handler runs;
//  3. runs the handler, capturing its response;
//  4. records the response as completed (kept 24h by default), fenced by an
//     owner token so that a stale owner can never overwrite a newer one;
//  5. sends it.
//
// A duplicate that arrives while the first request runs gets 409 with
// Retry-After; one that arrives later gets the recorded response; one that
// reuses the key with another payload gets 422. Every answer of the
// middleware's own is an RFC 9457 problem (application/problem+json). 5xx
// responses are not recorded by default, so the client may retry them.
//
// Keys are scoped (WithScope), so two accounts using the same key never
// see each other's records. The flow is also available without HTTP, for
// job workers and queue consumers: see Runner (and Do).
//
// Stores live in sub-packages, so importing idem compiles no Redis or SQL
// code: memstore (in-process), redisstore (go-redis v9: single node,
// Sentinel, Cluster) and sqlstore (PostgreSQL, SQLite). Every store passes
// the conformance suite in storetest.
//
// The guarantee is at-most-once execution per key while the owner lives,
// and at-least-once if the owner dies mid-handler: its lease then expires
// and a retry runs the handler again. The README states each guarantee and
// the faults it was tested against.
package idem
