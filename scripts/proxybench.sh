#!/usr/bin/env bash
# Measures what idemproxy adds per request: wrk against a plain backend
# (cmd/idemproxy/internal/benchbackend) alone, then through the proxy, on
# 127.0.0.1, for requests that pass through and for keyed POSTs that run
# upstream (new keys) or are replayed (one key). Bounded: each run lasts
# DURATION (default 5s) with CONNS connections (default 16) on one wrk
# thread. With IDEM_REDIS_ADDR / IDEM_POSTGRES_DSN set (scripts/services.sh
# sets them) the keyed runs are repeated on those stores.
#
# Usage: scripts/proxybench.sh            or
#        scripts/services.sh scripts/proxybench.sh
# Needs wrk (apt-get install wrk). Compare the ratios, not the absolutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
command -v wrk >/dev/null || { echo "proxybench: wrk not found (apt-get install wrk)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

(cd cmd/idemproxy && GOWORK=off go build -o "$tmp/idemproxy" . && GOWORK=off go build -o "$tmp/backend" ./internal/benchbackend)

# start NAME CMD...: runs CMD, waits for its "listening on ADDR" line, sets ADDR.
start() {
	local name=$1; shift
	"$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
	pids+=($!)
	for _ in $(seq 1 300); do
		ADDR=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$tmp/$name.out")
		[ -n "$ADDR" ] && return 0
		sleep 0.1
	done
	echo "proxybench: $name did not start" >&2; cat "$tmp/$name.err" >&2; exit 1
}

cat >"$tmp/newkeys.lua" <<'LUA'
-- Each request a new key: every request runs upstream.
math.randomseed(os.time())
local prefix = tostring(math.random(1, 1e9))
local n = 0
wrk.method = "POST"
wrk.body = '{"amount": 1000, "currency": "eur"}'
wrk.headers["Content-Type"] = "application/json"
request = function()
	n = n + 1
	wrk.headers["Idempotency-Key"] = prefix .. "-" .. n
	return wrk.format()
end
LUA
cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"amount": 1000, "currency": "eur"}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$tmp/replay.lua" <<'LUA'
-- One key: after the first request every request is a replay.
wrk.method = "POST"
wrk.body = '{"amount": 1000, "currency": "eur"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "bench-replay-" .. tostring(os.time())
LUA

# run LABEL URL [LUA]: one wrk run; prints requests/s and latencies.
run() {
	local label=$1 url=$2 script=${3:-}
	local args=(-t1 -c"$CONNS" -d"$DURATION" --latency)
	[ -n "$script" ] && args+=(-s "$tmp/$script")
	local out
	out=$(nice wrk "${args[@]}" "$url")
	local rps p50 p99 errs
	rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
	p50=$(awk '$1=="50%" {print $2}' <<<"$out")
	p99=$(awk '$1=="99%" {print $2}' <<<"$out")
	errs=$(awk '/Non-2xx/ {print $5}' <<<"$out")
	printf '%-44s %10s req/s   p50 %-9s p99 %-9s %s\n' "$label" "$rps" "$p50" "$p99" "${errs:+non-2xx: $errs}"
}

start backend "$tmp/backend"
BACKEND=$ADDR
echo "proxybench: $(go version | cut -d' ' -f3), $(nproc) cores, wrk -t1 -c$CONNS -d$DURATION"
run "backend alone: GET" "http://$BACKEND/payments"
run "backend alone: POST" "http://$BACKEND/payments" post.lua

stores=(memory)
[ -n "${IDEM_REDIS_ADDR:-}" ] && stores+=("redis://$IDEM_REDIS_ADDR/0")
[ -n "${IDEM_POSTGRES_DSN:-}" ] && stores+=("$IDEM_POSTGRES_DSN")
for store in "${stores[@]}"; do
	kind=${store%%:*}
	start "proxy-$kind" "$tmp/idemproxy" -addr 127.0.0.1:0 -upstream "http://$BACKEND" -store "$store" -log-level error
	PROXY=$ADDR
	if [ "$kind" = memory ]; then
		run "proxy: GET (passes through)" "http://$PROXY/payments"
		run "proxy: POST without key (passes through)" "http://$PROXY/payments" post.lua
	fi
	run "proxy ($kind): POST, new key each (runs)" "http://$PROXY/payments" newkeys.lua
	run "proxy ($kind): POST, one key (replays)" "http://$PROXY/payments" replay.lua
done
