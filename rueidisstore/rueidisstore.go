// Package rueidisstore is an idem.Store on Redis through a rueidis client
// (github.com/redis/rueidis): a single node, Sentinel and Redis Cluster all
// work, and several processes can share one store.
//
// It is the twin of package redisstore, which uses go-redis: both keep the
// same records under the same keys and run the same Lua scripts, so the two
// stores can share one Redis (a fleet can move from one client to the other
// one process at a time). The difference is the client: rueidis pipelines
// the commands of concurrent callers onto shared connections, so under load
// many operations leave in one write and come back in one read, where
// go-redis spends a write and a read system call on each. The README
// ("Performance") has the figures and says when to pick which.
//
// # Key layout
//
// Each idempotency key is one Redis hash named prefix+key (the prefix is
// "idem:" unless WithPrefix says otherwise). Keys are binary safe. The hash
// holds
//
//	v  format version of the record, "1"
//	s  state: "1" in progress, "2" completed (the values of idem.State)
//	t  owner token (kept once completed: see Complete)
//	f  request fingerprint
//	r  result bytes, once completed
//
// An in-progress record expires when its lease runs out and a completed one
// when its retention TTL runs out; both are plain Redis TTLs (PEXPIRE, in
// milliseconds, rounded up, at least 1 ms). In a Redis Cluster the slot of a
// record follows the usual hash tag rule, so records spread over the
// masters unless the prefix or the keys carry a tag.
//
// # One round trip per operation
//
// Claim, Complete, Release and Renew each run one Lua script (EVALSHA) that
// touches only KEYS[1], so every operation is atomic and costs one round
// trip, routed to the key's slot in a Cluster. Complete, Release and Renew
// check inside the script that the record is in progress and owned by the
// caller's token (fencing); otherwise they change nothing and return
// idem.ErrLockLost. A script's first use on a server that does not hold it
// costs one extra EVAL round trip; Store.Load avoids it.
//
// A record of a format version this release does not know makes Claim fail
// with an error wrapping idem.ErrCorruptRecord, never return a wrong record.
package rueidisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
)

// DefaultPrefix is the prefix put before every key unless WithPrefix says
// otherwise. It is redisstore's too.
const DefaultPrefix = "idem:"

// formatVersion is the value of the v field of the records this release
// writes. Readers accept it and reject every other value.
const formatVersion = "1"

// Field values of s; they are the decimal values of idem.State.
const (
	stateInProgress = "1"
	stateCompleted  = "2"
)

// The scripts are, byte for byte, redisstore's: the same text has the same
// SHA-1, so a server that holds them for one store holds them for the other.
const (
	// claim: ARGV = token, fingerprint, lease in ms.
	// Returns nil when it created the record, else {v, s, t, f, r, pttl}.
	claimSrc = `
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'f', 'r')
if not rec[1] and redis.call('EXISTS', KEYS[1]) == 0 then
	redis.call('HSET', KEYS[1], 'v', '` + formatVersion + `', 's', '` + stateInProgress + `', 't', ARGV[1], 'f', ARGV[2])
	redis.call('PEXPIRE', KEYS[1], ARGV[3])
	return nil
end
rec[6] = redis.call('PTTL', KEYS[1])
return rec
`

	// ownedCheck starts the fenced scripts: it returns 0 unless KEYS[1]
	// holds an in-progress record of the current format owned by ARGV[1].
	ownedCheck = `
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if rec[1] ~= '` + formatVersion + `' or rec[2] ~= '` + stateInProgress + `' or rec[3] ~= ARGV[1] then
	return 0
end`

	// resentComplete starts complete: it returns 1 when KEYS[1] already
	// holds a completed record of the current format by owner ARGV[1] with
	// result ARGV[2], that is when this very Complete already ran (a
	// command sent again after its reply was lost).
	resentComplete = `
local done = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'r')
if done[1] == '` + formatVersion + `' and done[2] == '` + stateCompleted + `' and done[3] == ARGV[1] and done[4] == ARGV[2] then
	return 1
end`

	// complete: ARGV = token, result, retention in ms. Returns 1 or 0. The
	// completed record keeps its owner's token, for resentComplete.
	completeSrc = resentComplete + ownedCheck + `
redis.call('HSET', KEYS[1], 's', '` + stateCompleted + `', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`

	// release: ARGV = token. Returns 1 or 0.
	releaseSrc = ownedCheck + `
redis.call('DEL', KEYS[1])
return 1
`

	// renew: ARGV = token, lease in ms. Returns 1 or 0.
	renewSrc = ownedCheck + `
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`
)

// lookupSrc reads a record without changing it, for operators (Load does
// not preload it). Returns nil for an absent key, else {v, s, t, f, r, pttl}.
const lookupSrc = `
if redis.call('EXISTS', KEYS[1]) == 0 then
	return nil
end
local rec = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'f', 'r')
rec[6] = redis.call('PTTL', KEYS[1])
return rec
`

var (
	lookupScript   = rueidis.NewLuaScript(lookupSrc)
	claimScript    = rueidis.NewLuaScript(claimSrc)
	completeScript = rueidis.NewLuaScript(completeSrc)
	releaseScript  = rueidis.NewLuaScript(releaseSrc)
	renewScript    = rueidis.NewLuaScript(renewSrc)

	scriptSources = [...]string{claimSrc, completeSrc, releaseSrc, renewSrc}
)

// Store is an idem.Store on Redis through rueidis. Create it with New; it is
// safe for concurrent use by many goroutines and many processes.
type Store struct {
	client rueidis.Client
	prefix string
	logger *slog.Logger
}

// Option configures a Store.
type Option func(*Store)

// WithPrefix sets the string put before every key to name its Redis key
// (default DefaultPrefix, "idem:"). Give each application or environment
// that shares a Redis its own prefix. In a Redis Cluster, a prefix holding a
// hash tag ("{idem}:") would put every record in one slot: leave the braces
// out unless that is what you want.
func WithPrefix(prefix string) Option {
	return func(s *Store) { s.prefix = prefix }
}

// WithLogger sets where Load reports what it could not check (default
// slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) { s.logger = l }
}

// ErrUnsafeEviction is returned (wrapped) by Load when a server's
// maxmemory-policy is not noeviction. Every record has a TTL, so every
// volatile-* policy may evict a record in flight (volatile-ttl evicts those
// first) and so may every allkeys-* policy: a retry would then claim the key
// while the first run goes on. Only noeviction keeps records until they
// expire.
var ErrUnsafeEviction = errors.New("rueidisstore: maxmemory-policy may evict records in flight; set it to noeviction")

// New returns a Store that keeps its records through client, a single-node,
// Sentinel or Cluster rueidis.Client. New makes no network call; the Store
// does not own client, so closing it stays with the caller.
//
// rueidis ends a call at its context's deadline, so the middleware's store
// timeout (idem.WithStoreTimeout) bounds every call with no client setting.
// The store uses no client-side caching: build the client with
// DisableCache set unless other code of yours uses it.
func New(client rueidis.Client, opts ...Option) *Store {
	s := &Store{client: client, prefix: DefaultPrefix}
	for _, o := range opts {
		o(s)
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	return s
}

// Load prepares the servers and checks that they keep records safely.
//
//   - It loads the Store's Lua scripts into every node the client knows
//     (every master of a Cluster), so that no operation pays the extra EVAL
//     round trip of a script's first use.
//   - It reads maxmemory-policy (CONFIG GET, on every node) and returns an
//     error wrapping ErrUnsafeEviction unless it is noeviction everywhere.
//
// Where CONFIG cannot be read (renamed or disabled, as managed services do,
// or denied by an ACL), Load does not fail: it logs a warning (see
// WithLogger) saying that the policy must be checked by hand. Calling Load
// is optional; without it, scripts load on first use and nothing checks
// the eviction policy.
func (s *Store) Load(ctx context.Context) error {
	nodes := s.client.Nodes()
	addrs := make([]string, 0, len(nodes))
	for addr := range nodes {
		addrs = append(addrs, addr)
	}
	sort.Strings(addrs)
	for _, addr := range addrs {
		node := nodes[addr]
		for _, src := range scriptSources {
			if err := node.Do(ctx, node.B().ScriptLoad().Script(src).Build()).Error(); err != nil {
				return fmt.Errorf("rueidisstore: load scripts: %w", err)
			}
		}
		if err := s.checkEviction(ctx, node, addr); err != nil {
			return err
		}
	}
	return nil
}

// checkEviction reads maxmemory-policy from the node at addr.
func (s *Store) checkEviction(ctx context.Context, node rueidis.Client, addr string) error {
	const advice = "; make sure it is noeviction, as any other policy may evict a record in flight and let a retry run the handler twice"
	policy, err := node.Do(ctx, node.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
	if _, isReply := rueidis.IsRedisErr(err); isReply {
		// The server answered, but not with the policy: CONFIG is renamed,
		// disabled or denied.
		s.logger.WarnContext(ctx, "rueidisstore: cannot read maxmemory-policy on "+addr+advice, "error", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("rueidisstore: reading maxmemory-policy on %s: %w", addr, err)
	}
	p, ok := policy["maxmemory-policy"]
	if !ok {
		s.logger.WarnContext(ctx, "rueidisstore: the server did not report maxmemory-policy on "+addr+advice)
		return nil
	}
	if p != "noeviction" {
		return fmt.Errorf("%w (it is %s on %s)", ErrUnsafeEviction, p, addr)
	}
	return nil
}

// millis formats d as whole milliseconds for PEXPIRE, rounding up, and at
// least 1: a short duration never becomes a 0 ms TTL, which Redis would take
// as "delete now".
func millis(d time.Duration) string {
	return strconv.FormatInt(max(int64((d+time.Millisecond-1)/time.Millisecond), 1), 10)
}

// Claim implements idem.Store.
func (s *Store) Claim(ctx context.Context, key, token, fingerprint string, lease time.Duration) (*idem.Record, error) {
	res, err := claimScript.Exec(ctx, s.client, []string{s.prefix + key}, []string{token, fingerprint, millis(lease)}).ToMessage()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rueidisstore: claim: %w", err)
	}
	rec, err := parseRecord(&res)
	if err != nil {
		return nil, fmt.Errorf("rueidisstore: claim: %w", err)
	}
	return rec, nil
}

// errMalformed is wrapped into the error for a script reply this release
// cannot read.
var errMalformed = fmt.Errorf("malformed record: %w", idem.ErrCorruptRecord)

// parseRecord reads the reply {v, s, t, f, r, pttl} of the claim script.
// A reply of another shape, an array or not, is a malformed record, as in
// redisstore.
func parseRecord(res *rueidis.RedisMessage) (*idem.Record, error) {
	fields, _ := res.ToArray() // nil, of length 0, for a reply that is not an array
	if len(fields) != 6 {
		return nil, fmt.Errorf("script reply is not a record of 6 fields: %w", errMalformed)
	}
	v, _ := bulk(&fields[0])
	if v != formatVersion {
		return nil, fmt.Errorf("record format version %q unknown to this release (it reads %q): %w", v, formatVersion, idem.ErrCorruptRecord)
	}
	state, _ := bulk(&fields[1])
	token, _ := bulk(&fields[2])
	fp, hasFP := bulk(&fields[3])
	if !hasFP {
		return nil, errMalformed
	}
	var left time.Duration
	if pttl, err := fields[5].AsInt64(); err == nil {
		// PTTL is -1 for a key without a TTL: then the store cannot tell (0).
		left = time.Duration(max(pttl, 0)) * time.Millisecond
	}
	rec := &idem.Record{Fingerprint: fp, Token: token, ExpiresIn: left}
	switch state {
	case stateInProgress:
		rec.State = idem.StateInProgress
		rec.LeaseLeft = left
	case stateCompleted:
		rec.State = idem.StateCompleted
		r, ok := bulk(&fields[4])
		if !ok {
			return nil, errMalformed
		}
		// The reply's string is this record's alone, and Record.Result is
		// read-only: share its bytes rather than copy up to the response
		// limit.
		rec.Result = unsafe.Slice(unsafe.StringData(r), len(r))
		if rec.Result == nil {
			rec.Result = []byte{}
		}
	default:
		return nil, fmt.Errorf("record state %q: %w", state, errMalformed)
	}
	return rec, nil
}

// bulk returns the string in a reply element, and false for a missing hash
// field (nil in RESP2; nil or false in RESP3, where Lua's false becomes a
// boolean).
func bulk(m *rueidis.RedisMessage) (string, bool) {
	if !m.IsString() {
		return "", false
	}
	s, err := m.ToString()
	return s, err == nil
}

// Complete implements idem.Store. The result is sent without a copy: the
// Store contract forbids the caller to change it afterwards. As in
// redisstore (the scripts are the same), a Complete that finds the record
// already completed by its token with its result, because it was sent
// again, returns nil and changes nothing.
func (s *Store) Complete(ctx context.Context, key, token string, result []byte, ttl time.Duration) error {
	return fenced("complete", completeScript.Exec(ctx, s.client, []string{s.prefix + key}, []string{token, rueidis.BinaryString(result), millis(ttl)}))
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return fenced("release", releaseScript.Exec(ctx, s.client, []string{s.prefix + key}, []string{token}))
}

// Renew implements idem.Store.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	return fenced("renew", renewScript.Exec(ctx, s.client, []string{s.prefix + key}, []string{token, millis(lease)}))
}

// fenced reads the reply of a fenced script: 1 done, 0 not the owner.
func fenced(op string, res rueidis.RedisResult) error {
	n, err := res.AsInt64()
	switch {
	case err != nil:
		return fmt.Errorf("rueidisstore: %s: %w", op, err)
	case n == 1:
		return nil
	case n == 0:
		return idem.ErrLockLost
	}
	return fmt.Errorf("rueidisstore: %s: unexpected script reply %d", op, n)
}

// Lookup implements idem.Inspector with one script that reads the record
// and its TTL.
func (s *Store) Lookup(ctx context.Context, key string) (*idem.KeyState, error) {
	res, err := lookupScript.Exec(ctx, s.client, []string{s.prefix + key}, nil).ToMessage()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rueidisstore: lookup: %w", err)
	}
	rec, err := parseRecord(&res)
	if err != nil {
		return nil, fmt.Errorf("rueidisstore: lookup: %w", err)
	}
	return &idem.KeyState{State: rec.State, Fingerprint: rec.Fingerprint, Result: rec.Result, ExpiresIn: rec.ExpiresIn}, nil
}

// Delete implements idem.Inspector with DEL. Redis removes expired keys
// itself, so a key that DEL finds was live.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	n, err := s.client.Do(ctx, s.client.B().Del().Key(s.prefix+key).Build()).AsInt64()
	if err != nil {
		return false, fmt.Errorf("rueidisstore: delete: %w", err)
	}
	return n > 0, nil
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)
