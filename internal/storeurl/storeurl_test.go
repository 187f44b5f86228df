package storeurl

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestKindHidesCredentials(t *testing.T) {
	for spec, want := range map[string]string{
		"postgres://user:secret@db/x":    "postgres",
		"postgresql://user:secret@db/x":  "postgres",
		"mysql://user:secret@db/x":       "mysql",
		"redis://:secret@127.0.0.1:6379": "redis",
		"memory":                         "memory",
		"sqlite:/tmp/x.db":               "sqlite",
	} {
		if got := Kind(spec); got != want {
			t.Errorf("Kind(%q) = %q, want %q", spec, got, want)
		}
	}
}

// An unknown scheme is refused with the list of known ones, and the error
// does not quote the rest of the value, which may hold a password.
func TestOpenUnknownStoreHidesCredentials(t *testing.T) {
	_, _, err := Open(context.Background(), "mongodb://admin:s3cret@db/x", Options{})
	if err == nil {
		t.Fatal("mongodb:// accepted")
	}
	if !strings.Contains(err.Error(), `unknown store "mongodb"`) || !strings.Contains(err.Error(), "postgres") {
		t.Fatalf("error %q does not name the store and the known ones", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error quotes the password: %v", err)
	}
}

func TestSchemesListEveryForm(t *testing.T) {
	got := strings.Join(Schemes(), " ")
	for _, s := range []string{"memory", "sqlite", "redis", "rediss", "redis-cluster", "rediss-cluster", "postgres", "mysql"} {
		if !strings.Contains(" "+got+" ", " "+s+" ") {
			t.Errorf("Schemes() = %s, lacks %s", got, s)
		}
	}
}

// The stores that need no server open, answer, and close.
func TestOpenLocalStores(t *testing.T) {
	ctx := context.Background()
	for _, spec := range []string{"memory", "sqlite:" + filepath.Join(t.TempDir(), "idem.db")} {
		st, closeStore, err := Open(ctx, spec, Options{})
		if err != nil {
			t.Fatalf("Open(%q): %v", spec, err)
		}
		rec, err := st.Claim(ctx, "k", "tok", "fp", 10e9)
		if err != nil || rec != nil {
			t.Fatalf("%s: first claim = %v, %v; want it won", spec, rec, err)
		}
		rec, err = st.Claim(ctx, "k", "tok2", "fp", 10e9)
		if err != nil || rec == nil {
			t.Fatalf("%s: second claim = %v, %v; want the first one's record", spec, rec, err)
		}
		if err := closeStore(); err != nil {
			t.Fatalf("%s: close: %v", spec, err)
		}
	}
	if _, _, err := Open(ctx, "sqlite:", Options{}); err == nil || !strings.Contains(err.Error(), "path is empty") {
		t.Fatalf("sqlite: with no path: %v", err)
	}
}

// An unknown Redis client is refused before anything is opened.
func TestOpenRefusesUnknownRedisClient(t *testing.T) {
	for _, name := range []string{"", ClientRueidis, ClientGoRedis} {
		if err := CheckRedisClient(name); err != nil {
			t.Errorf("CheckRedisClient(%q): %v", name, err)
		}
	}
	_, _, err := Open(context.Background(), "memory", Options{RedisClient: "jedis"})
	if err == nil || !strings.Contains(err.Error(), "want rueidis or go-redis") {
		t.Fatalf("Open with -redis-client jedis: %v", err)
	}
}
