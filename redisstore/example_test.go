package redisstore_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/redisstore"
)

// A store on one Redis node, behind the idempotency middleware. Every
// instance of the service that uses the same Redis (and prefix) shares the
// records.
func Example() {
	client := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // so that idem's store timeout bounds each call
	})
	defer client.Close()
	store := redisstore.New(client)

	protect := idem.New(store, idem.WithTTL(24*time.Hour))
	mux := http.NewServeMux()
	mux.Handle("POST /payments", protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})))
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", mux))
}

// A Redis Cluster: records spread over the masters by key. Load puts the
// scripts on every master at start-up, so that no request pays the extra
// round trip of a script's first use.
func Example_cluster() {
	client := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
		ContextTimeoutEnabled: true,
	})
	defer client.Close()
	store := redisstore.New(client, redisstore.WithPrefix("payments:idem:"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := store.Load(ctx); err != nil {
		log.Fatal(err)
	}
	_ = idem.New(store)
}
