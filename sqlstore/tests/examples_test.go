package sqlstore_test

// The package examples, run against SQLite with their output checked.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// The middleware over a SQLite file: the second request with the same key
// gets the first one's response, and the handler runs once.
func Example_middleware() {
	dir, err := os.MkdirTemp("", "idem-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(filepath.Join(dir, "idem.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := sqlstore.New(db, sqlstore.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	if err := store.Migrate(context.Background()); err != nil {
		log.Fatal(err)
	}

	charges := 0
	payments := idem.New(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge #%d", charges)
	}))

	for i := 0; i < 2; i++ {
		req := httptest.NewRequest("POST", "/payments", strings.NewReader(`{"amount":100,"currency":"EUR"}`))
		req.Header.Set("Idempotency-Key", "order-42")
		w := httptest.NewRecorder()
		payments.ServeHTTP(w, req)
		fmt.Printf("%d %s (replayed: %q)\n", w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("charges:", charges)
	// Output:
	// 201 charge #1 (replayed: "")
	// 201 charge #1 (replayed: "true")
	// charges: 1
}

// Completing the record in the transaction that writes the business data,
// for code that drives the Store itself: the stored result and the payment
// commit together, or neither does.
func Example_completeTx() {
	dir, err := os.MkdirTemp("", "idem-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", sqlstore.SQLiteDSN(filepath.Join(dir, "app.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := sqlstore.New(db, sqlstore.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE payments (id TEXT PRIMARY KEY, amount INTEGER)`); err != nil {
		log.Fatal(err)
	}

	pay := func(key string, amount int) (string, error) {
		var b [16]byte
		rand.Read(b[:])
		token, fp := hex.EncodeToString(b[:]), fmt.Sprint(amount)
		rec, err := store.Claim(ctx, key, token, fp, idem.DefaultLockTTL)
		switch {
		case err != nil:
			return "", err
		case rec != nil && rec.Fingerprint != fp:
			return "", fmt.Errorf("key %s was used for another payment", key)
		case rec != nil && rec.State == idem.StateCompleted:
			return string(rec.Result) + " (replayed)", nil
		case rec != nil:
			return "", fmt.Errorf("key %s is in progress", key)
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return "", err
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, `INSERT INTO payments VALUES (?1, ?2)`, key, amount); err != nil {
			return "", err
		}
		result := fmt.Sprintf("paid %d", amount)
		if err := store.CompleteTx(ctx, tx, key, token, []byte(result), idem.DefaultTTL); err != nil {
			return "", err // idem.ErrLockLost: someone else owns the key now
		}
		return result, tx.Commit()
	}

	fmt.Println(pay("order-7", 250))
	fmt.Println(pay("order-7", 250))
	fmt.Println(pay("order-7", 999))
	// Output:
	// paid 250 <nil>
	// paid 250 (replayed) <nil>
	//  key order-7 was used for another payment
}
