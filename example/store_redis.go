package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
)

// Redis stores: "redis://host:port/db" (go-redis ParseURL form) for one node,
// "redis-cluster://host:port?addr=host2:port2&addr=host3:port3" (go-redis
// ParseClusterURL form after the scheme) for a Redis Cluster, and their TLS
// forms "rediss://…" and "rediss-cluster://…".
func init() {
	for _, scheme := range []string{"redis", "rediss"} {
		storeOpeners[scheme] = openRedis
		storeOpeners[scheme+"-cluster"] = openRedisCluster
	}
}

func openRedis(ctx context.Context, spec string) (idem.Store, func() error, error) {
	opt, err := redis.ParseURL(spec)
	if err != nil {
		return nil, nil, badURL(err)
	}
	opt.ContextTimeoutEnabled = true // honour idem's store timeout
	return openRedisClient(ctx, redis.NewClient(opt), opt.Addr)
}

func openRedisCluster(ctx context.Context, spec string) (idem.Store, func() error, error) {
	// "redis-cluster://…" → "redis://…", "rediss-cluster://…" → "rediss://…".
	scheme, rest, _ := strings.Cut(spec, "://")
	opt, err := redis.ParseClusterURL(strings.TrimSuffix(scheme, "-cluster") + "://" + rest)
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

// badURL reports a -store value go-redis could not parse, without repeating
// the URL, which may hold a password.
func badURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return fmt.Errorf("-store: invalid Redis URL: %w", err)
}
