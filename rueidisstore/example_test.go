package rueidisstore_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/redis/rueidis"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/rueidisstore"
)

// A store on Redis through rueidis, behind the idempotency middleware, with
// the replay cache on. rueidis finds out by itself whether InitAddress names
// a single node or a Cluster; give several addresses for a Cluster.
func Example() {
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{"127.0.0.1:6379"},
		DisableCache: true, // the store does not use client-side caching
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	store := rueidisstore.New(client, rueidisstore.WithPrefix("payments:idem:"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := store.Load(ctx); err != nil { // optional: no first-use EVAL later
		log.Fatal(err)
	}

	protect := idem.New(store, idem.WithReplayCache(64<<20, 100_000, 5*time.Minute))
	mux := http.NewServeMux()
	mux.Handle("POST /payments", protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})))
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", mux))
}
