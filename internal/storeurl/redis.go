package storeurl

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
	"github.com/idemgo/idem/rueidisstore"
)

// Redis clients of Options.RedisClient (the commands' -redis-client):
// rueidis (rueidisstore) pipelines the commands of concurrent requests and
// is the faster under load; go-redis (redisstore) is the one many programs
// already hold.
const (
	ClientRueidis = "rueidis"
	ClientGoRedis = "go-redis"
)

// CheckRedisClient reports whether name is a Redis client Open knows
// (ClientRueidis or ClientGoRedis; "" means ClientRueidis).
func CheckRedisClient(name string) error {
	switch name {
	case "", ClientRueidis, ClientGoRedis:
		return nil
	}
	return fmt.Errorf("-redis-client %q: want %s or %s", name, ClientRueidis, ClientGoRedis)
}

// Redis stores: "redis://host:port/db" (go-redis ParseURL form) for one node,
// "redis-cluster://host:port?addr=host2:port2&addr=host3:port3" (go-redis
// ParseClusterURL form after the scheme) for a Redis Cluster, and their TLS
// forms "rediss://…" and "rediss-cluster://…".
func init() {
	for _, scheme := range []string{"redis", "rediss"} {
		openers[scheme] = openRedis
		openers[scheme+"-cluster"] = openRedisCluster
	}
}

func openRedis(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	if o.RedisClient != ClientGoRedis {
		return openRueidis(ctx, spec)
	}
	opt, err := redis.ParseURL(spec)
	if err != nil {
		return nil, nil, badURL(err)
	}
	opt.ContextTimeoutEnabled = true // honour idem's store timeout
	return openRedisClient(ctx, redis.NewClient(opt), opt.Addr)
}

func openRedisCluster(ctx context.Context, spec string, o Options) (idem.Store, func() error, error) {
	// "redis-cluster://…" → "redis://…", "rediss-cluster://…" → "rediss://…".
	scheme, rest, _ := strings.Cut(spec, "://")
	spec = strings.TrimSuffix(scheme, "-cluster") + "://" + rest
	if o.RedisClient != ClientGoRedis {
		return openRueidis(ctx, spec)
	}
	opt, err := redis.ParseClusterURL(spec)
	if err != nil {
		return nil, nil, badURL(err)
	}
	opt.ContextTimeoutEnabled = true // honour idem's store timeout
	return openRedisClient(ctx, redis.NewClusterClient(opt), strings.Join(opt.Addrs, ","))
}

// openRedisClient checks that the server answers, loads the store's scripts
// so that no request pays for their first use, and returns the store.
func openRedisClient(ctx context.Context, client redis.UniversalClient, addr string) (idem.Store, func() error, error) {
	store := redisstore.New(client)
	err := client.Ping(ctx).Err()
	if err == nil {
		err = store.Load(ctx)
	}
	if err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("-store: redis at %s unreachable: %w", addr, err)
	}
	return store, client.Close, nil
}

// openRueidis opens a rueidis client on a "redis://" or "rediss://" URL
// (rueidis.ParseURL form; extra "addr" parameters name more seed nodes).
// rueidis finds out by itself whether the server is a Cluster.
func openRueidis(ctx context.Context, spec string) (idem.Store, func() error, error) {
	opt, err := rueidis.ParseURL(spec)
	if err != nil {
		return nil, nil, badURL(err)
	}
	opt.DisableCache = true // the store does not use client-side caching
	addr := strings.Join(opt.InitAddress, ",")
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, nil, fmt.Errorf("-store: redis at %s unreachable: %w", addr, err)
	}
	store := rueidisstore.New(client)
	if err := store.Load(ctx); err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("-store: redis at %s unreachable: %w", addr, err)
	}
	return store, func() error { client.Close(); return nil }, nil
}

// badURL reports a -store value the Redis client could not parse, without repeating
// the URL, which may hold a password.
func badURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return fmt.Errorf("-store: invalid Redis URL: %w", err)
}
