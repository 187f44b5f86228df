package main

import (
	"encoding/json"
	"testing"
)

// A script counts once, not the commands it runs; the harness's own INFO
// and FLUSHALL never count.
func TestClientCommandsCountsScriptsOnce(t *testing.T) {
	before := map[string]int64{"info": 3, "evalsha": 10, "hmget": 10}
	after := map[string]int64{"info": 4, "evalsha": 30, "hmget": 30, "hset": 10, "pexpire": 10, "exists": 10}
	if got := clientCommands(before, after); got != 20 {
		t.Fatalf("idem's commands = %d, want the 20 EVALSHA", got)
	}
	// Without scripts every command a client sent counts.
	before = map[string]int64{"info": 1, "get": 5}
	after = map[string]int64{"info": 2, "flushall": 1, "get": 15, "set": 10, "del": 2}
	if got := clientCommands(before, after); got != 22 {
		t.Fatalf("Fiber's commands = %d, want GET+SET+DEL = 22", got)
	}
}

func TestPaymentBodyAndKeys(t *testing.T) {
	for _, size := range []int{1024, 65536, 1040384} {
		b := paymentBody(size)
		var p struct {
			Amount   int64  `json:"amount"`
			Currency string `json:"currency"`
		}
		if len(b) != size || json.Unmarshal(b, &p) != nil || p.Amount != 1000 || p.Currency != "eur" {
			t.Fatalf("body of %d bytes: %d bytes, %+v", size, len(b), p)
		}
	}
	if k := newKey(1<<40, 7); len(k) != 36 {
		t.Fatalf("key %q has %d characters; Fiber takes only 36", k, len(k))
	}
}
