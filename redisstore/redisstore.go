// Package redisstore is an idem.Store on Redis, through a go-redis v9
// redis.UniversalClient: a single node, Sentinel (a failover client) and
// Redis Cluster all work, and several processes can share one store.
//
// # Key layout
//
// Each idempotency key is one Redis hash named prefix+key (the prefix is
// "idem:" unless WithPrefix says otherwise). Keys are binary safe: any string
// is stored as given, with no escaping. The hash holds
//
//	v  format version of the record, "1" (see below)
//	s  state: "1" in progress, "2" completed (the values of idem.State)
//	t  owner token (kept once completed: see Complete)
//	f  request fingerprint
//	r  result bytes, once completed
//
// In a Redis Cluster the slot of a record follows the usual hash tag rule:
// a key holding "{…}" is placed by the text between the first braces, so
// records spread over the masters unless the prefix or the keys carry a tag.
//
// An in-progress record expires when its lease runs out and a completed one
// when its retention TTL runs out; both are plain Redis TTLs (PEXPIRE, in
// milliseconds, rounded up so that a lease is never 0 ms), so nothing has to
// sweep and an expired record is absent to every later command.
//
// # One round trip per operation
//
// Claim, Complete, Release and Renew (and Lookup, of idem.Inspector) each
// run one Lua script (EVALSHA, see redis.Script.Run) that touches only
// KEYS[1], so every operation is atomic,
// costs one round trip and is routed to the key's slot in a Cluster. Complete,
// Release and Renew check that the record is in progress and owned by the
// caller's token inside the script (fencing); otherwise they change nothing
// and return idem.ErrLockLost.
//
// The first time a script runs on a server that has not seen it (a fresh
// server, a restart, a failover to a replica, SCRIPT FLUSH), EVALSHA answers
// NOSCRIPT and go-redis sends the script again with EVAL: one extra round
// trip, once per script and server. Store.Load preloads the scripts at
// start-up to avoid it.
//
// # Format version
//
// Every record carries the field v. Claim reads the versions this release
// knows (only "1" so far) and answers any other with an error wrapping
// idem.ErrCorruptRecord, never with a wrong record; Complete, Release and
// Renew treat a record of another version as not owned by the caller. A
// later release that changes the layout adds a version and keeps reading
// this one.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
)

// DefaultPrefix is the prefix put before every key unless WithPrefix says
// otherwise.
const DefaultPrefix = "idem:"

// formatVersion is the value of the v field of the records this release
// writes. Readers accept it and reject every other value.
const formatVersion = "1"

// Field values of s; they are the decimal values of idem.State.
const (
	stateInProgress = "1"
	stateCompleted  = "2"
)

// The scripts. Each one touches KEYS[1] only. They are package variables so
// their SHA-1 is computed once.
var (
	// claimScript: ARGV = token, fingerprint, lease in ms.
	// Returns nil when it created the record, else {v, s, t, f, r, pttl}
	// (fields that are not set come back as nil).
	claimScript = redis.NewScript(`
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'f', 'r')
if not rec[1] and redis.call('EXISTS', KEYS[1]) == 0 then
	redis.call('HSET', KEYS[1], 'v', '` + formatVersion + `', 's', '` + stateInProgress + `', 't', ARGV[1], 'f', ARGV[2])
	redis.call('PEXPIRE', KEYS[1], ARGV[3])
	return nil
end
rec[6] = redis.call('PTTL', KEYS[1])
return rec
`)

	// completeScript: ARGV = token, result, retention in ms.
	// Returns 1 when it completed the record, 0 when the caller does not own
	// it. The completed record keeps its owner's token, so that the same
	// Complete sent again (go-redis resends a command whose reply was lost)
	// finds its own result recorded and returns 1, changing nothing.
	completeScript = redis.NewScript(resentComplete + ownedCheck + `
redis.call('HSET', KEYS[1], 's', '` + stateCompleted + `', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

	// releaseScript: ARGV = token.
	// Returns 1 when it deleted the record, 0 when the caller does not own it.
	releaseScript = redis.NewScript(ownedCheck + `
redis.call('DEL', KEYS[1])
return 1
`)

	// renewScript: ARGV = token, lease in ms.
	// Returns 1 when it extended the lease, 0 when the caller does not own it.
	renewScript = redis.NewScript(ownedCheck + `
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)
)

// ownedCheck starts the fenced scripts: it returns 0 unless KEYS[1] holds an
// in-progress record of the current format owned by ARGV[1].
const ownedCheck = `
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if rec[1] ~= '` + formatVersion + `' or rec[2] ~= '` + stateInProgress + `' or rec[3] ~= ARGV[1] then
	return 0
end`

// resentComplete starts completeScript: it returns 1 when KEYS[1] already
// holds a completed record of the current format by owner ARGV[1] with
// result ARGV[2], that is when this very Complete already ran.
const resentComplete = `
local done = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'r')
if done[1] == '` + formatVersion + `' and done[2] == '` + stateCompleted + `' and done[3] == ARGV[1] and done[4] == ARGV[2] then
	return 1
end`

// lookupScript reads a record without changing it, for operators (it is
// not preloaded by Load). Returns nil for an
// absent key, else {v, s, t, f, r, pttl}, as claimScript does.
var lookupScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
	return nil
end
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'f', 'r')
rec[6] = redis.call('PTTL', KEYS[1])
return rec
`)

// scripts are the scripts of the request path, which Load preloads.
var scripts = [...]*redis.Script{claimScript, completeScript, releaseScript, renewScript}

// Store is an idem.Store on Redis. Create it with New; it is safe for
// concurrent use by many goroutines and many processes.
type Store struct {
	client redis.UniversalClient
	prefix string
	logger *slog.Logger
}

// Option configures a Store.
type Option func(*Store)

// WithPrefix sets the string put before every key to name its Redis key
// (default DefaultPrefix, "idem:"). Give each application or environment
// that shares a Redis its own prefix. In a Redis Cluster, a prefix holding a
// hash tag ("{idem}:") would put every record in one slot, on one node:
// leave the braces out unless that is what you want.
func WithPrefix(prefix string) Option {
	return func(s *Store) { s.prefix = prefix }
}

// WithLogger sets where Load reports what it could not check (default
// slog.Default()). The store logs nothing else.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) { s.logger = l }
}

// New returns a Store that keeps its records through client: a
// *redis.Client, a failover client (Sentinel) or a *redis.ClusterClient.
// New makes no network call; the Store does not own client, so closing it
// stays with the caller.
//
// Build the client with ContextTimeoutEnabled set (redis.Options,
// redis.ClusterOptions, redis.FailoverOptions): without it go-redis does not
// end a command at its context's deadline, so the middleware's store timeout
// (idem.WithStoreTimeout) cannot bound a call to a slow or unreachable Redis.
//
// New panics if client is nil (or a nil pointer), as a configuration error
// that would otherwise surface only as a panic on the first request.
func New(client redis.UniversalClient, opts ...Option) *Store {
	if client == nil {
		panic("redisstore: New: nil client")
	}
	if v := reflect.ValueOf(client); v.Kind() == reflect.Pointer && v.IsNil() {
		panic(fmt.Sprintf("redisstore: New: nil client (%T)", client))
	}
	s := &Store{client: client, prefix: DefaultPrefix}
	for _, o := range opts {
		o(s)
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	return s
}

// ErrUnsafeEviction is returned (wrapped) by Load when a server's
// maxmemory-policy is not noeviction.
//
// Every record has a TTL, so every volatile-* policy may evict the record
// of a request still in flight (volatile-ttl evicts those first, as their
// leases are the shortest TTLs), and every allkeys-* policy may evict any
// record: the key is then free, and a retry runs the handler a second time
// while the first run goes on. Only noeviction keeps records until they
// expire; when memory runs out, Redis refuses new records instead, and the
// middleware answers 503 without running the handler.
var ErrUnsafeEviction = errors.New("redisstore: maxmemory-policy may evict records in flight; set it to noeviction")

// Load prepares the server for the Store, and checks that it is safe to use:
//
//   - It loads the Store's Lua scripts (into every master, for a Cluster
//     client), so that no operation pays the extra EVAL round trip of a
//     script's first use.
//   - It reads maxmemory-policy (CONFIG GET, on every master of a Cluster)
//     and returns an error wrapping ErrUnsafeEviction unless it is
//     noeviction on every server.
//
// Where CONFIG is disabled, renamed or denied (as on several managed Redis
// services), Load cannot read the policy: it does not fail, but logs a
// warning (see WithLogger) saying that the policy must be checked by hand.
// Other errors (the server is down, the context ended) are returned.
//
// Calling Load is optional, and recommended at start-up: without it each
// script costs one extra round trip the first time it runs on each server,
// and nothing checks the eviction policy.
func (s *Store) Load(ctx context.Context) error {
	for _, sc := range scripts {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return fmt.Errorf("redisstore: load scripts: %w", err)
		}
	}
	check := func(ctx context.Context, c *redis.Client) error {
		return s.checkEviction(ctx, c.ConfigGet(ctx, "maxmemory-policy"), c.Options().Addr)
	}
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, check)
	case *redis.Ring:
		return c.ForEachShard(ctx, check)
	}
	return s.checkEviction(ctx, s.client.ConfigGet(ctx, "maxmemory-policy"), "")
}

// checkEviction reads the reply of CONFIG GET maxmemory-policy from the
// server at addr ("" when the client does not say).
func (s *Store) checkEviction(ctx context.Context, cmd *redis.MapStringStringCmd, addr string) error {
	where := ""
	if addr != "" {
		where = " on " + addr
	}
	policy, err := cmd.Result()
	var replyErr redis.Error
	switch {
	case errors.As(err, &replyErr):
		// The server answered, but not with the policy: CONFIG is renamed,
		// disabled or denied by an ACL.
		s.logger.WarnContext(ctx, "redisstore: cannot read maxmemory-policy"+where+"; make sure it is noeviction, as any other policy may evict a record in flight and let a retry run the handler twice",
			"error", err.Error())
		return nil
	case err != nil:
		return fmt.Errorf("redisstore: reading maxmemory-policy%s: %w", where, err)
	}
	p, ok := policy["maxmemory-policy"]
	if !ok {
		s.logger.WarnContext(ctx, "redisstore: the server did not report maxmemory-policy"+where+"; make sure it is noeviction, as any other policy may evict a record in flight and let a retry run the handler twice")
		return nil
	}
	if p != "noeviction" {
		return fmt.Errorf("%w (it is %s%s)", ErrUnsafeEviction, p, where)
	}
	return nil
}

// millis converts d to whole milliseconds for PEXPIRE, rounding up, and at
// least 1: a short duration never becomes a 0 ms TTL, which Redis would take
// as "delete now". (The Store contract leaves durations of zero or less
// undefined; they count as 1 ms here.)
func millis(d time.Duration) int64 {
	return max(int64((d+time.Millisecond-1)/time.Millisecond), 1)
}

// Claim implements idem.Store.
func (s *Store) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	res, err := claimScript.Run(ctx, s.client, []string{s.prefix + key}, token, fingerprint, millis(lease)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim: %w", err)
	}
	rec, err := parseRecord(res)
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim: %w", err)
	}
	return rec, nil
}

// errMalformed is wrapped into the error for a script reply this release
// cannot read.
var errMalformed = fmt.Errorf("malformed record: %w", idem.ErrCorruptRecord)

// parseRecord reads the reply {v, s, t, f, r, pttl} of claimScript.
func parseRecord(res interface{}) (*idem.Record, error) {
	fields, _ := res.([]interface{}) // nil, of length 0, for any other reply
	if len(fields) != 6 {
		return nil, fmt.Errorf("unexpected script reply %T: %w", res, errMalformed)
	}
	v, _ := bulk(fields[0])
	if v != formatVersion {
		return nil, fmt.Errorf("record format version %q unknown to this release (it reads %q): %w", v, formatVersion, idem.ErrCorruptRecord)
	}
	state, _ := bulk(fields[1])
	token, _ := bulk(fields[2])
	fp, hasFP := bulk(fields[3])
	if !hasFP {
		return nil, errMalformed
	}
	// PTTL is -1 for a key without a TTL: then the store cannot tell (0).
	pttl, _ := fields[5].(int64)
	rec := &idem.Record{Fingerprint: fp, Token: token, ExpiresIn: time.Duration(max(pttl, 0)) * time.Millisecond}
	switch state {
	case stateInProgress:
		rec.State = idem.StateInProgress
		rec.LeaseLeft = rec.ExpiresIn
	case stateCompleted:
		rec.State = idem.StateCompleted
		r, ok := bulk(fields[4])
		if !ok {
			return nil, errMalformed
		}
		rec.Result = []byte(r)
	default:
		return nil, fmt.Errorf("record state %q: %w", state, errMalformed)
	}
	return rec, nil
}

// bulk returns the string in a reply element, and false for a missing field
// (nil in RESP2; nil or false in RESP3, where Lua's false is a boolean).
func bulk(v interface{}) (string, bool) {
	s, ok := v.(string)
	return s, ok
}

// Complete implements idem.Store. go-redis sends a command again when its
// reply is lost (Options.MaxRetries), so the same Complete may reach Redis
// twice: a Complete that finds the record already completed by its token
// with its result returns nil and changes nothing, so that the owner is
// not told that its response went unrecorded. Any other Complete of a
// completed record returns idem.ErrLockLost.
func (s *Store) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	return fenced("complete", completeScript.Run(ctx, s.client, []string{s.prefix + key}, token, result, millis(ttl)))
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return fenced("release", releaseScript.Run(ctx, s.client, []string{s.prefix + key}, token))
}

// Renew implements idem.Store.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	return fenced("renew", renewScript.Run(ctx, s.client, []string{s.prefix + key}, token, millis(lease)))
}

// fenced reads the reply of a fenced script: 1 done, 0 not the owner.
func fenced(op string, cmd *redis.Cmd) error {
	n, err := cmd.Int64()
	switch {
	case err != nil:
		return fmt.Errorf("redisstore: %s: %w", op, err)
	case n == 1:
		return nil
	case n == 0:
		return idem.ErrLockLost
	}
	return fmt.Errorf("redisstore: %s: unexpected script reply %d", op, n)
}

// Lookup implements idem.Inspector with one script that reads the record
// and its TTL.
func (s *Store) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	res, err := lookupScript.Run(ctx, s.client, []string{s.prefix + key}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: lookup: %w", err)
	}
	rec, err := parseRecord(res)
	if err != nil {
		return nil, fmt.Errorf("redisstore: lookup: %w", err)
	}
	return &idem.KeyState{State: rec.State, Fingerprint: rec.Fingerprint, Result: rec.Result, ExpiresIn: rec.ExpiresIn}, nil
}

// Delete implements idem.Inspector with DEL. Redis removes expired keys
// itself, so a key that DEL finds was live.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	n, err := s.client.Del(ctx, s.prefix+key).Result()
	if err != nil {
		return false, fmt.Errorf("redisstore: delete: %w", err)
	}
	return n > 0, nil
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)
