#!/usr/bin/env bash
# Starts the servers the tests need, on free loopback ports in a temp dir,
# and stops them on exit: one Redis node, a 3-node Redis Cluster, PostgreSQL
# and MariaDB. What is missing is installed with apt-get first.
#
# Sourced by scripts/test.sh (start_services, then run_job CMD). Run on its
# own, it starts the servers, runs the given command with their addresses in
# the environment, and stops them when the command ends:
#
#   scripts/services.sh go test -race ./redisstore/...
#   scripts/services.sh bash        # a shell with the servers up
#
# Environment set for the command:
#   IDEM_REDIS_ADDR           127.0.0.1:P               single Redis node
#   IDEM_REDIS_CLUSTER_ADDRS  127.0.0.1:P1,...,:P3      3-master Redis Cluster
#   IDEM_POSTGRES_DSN         postgres://postgres@127.0.0.1:P/idem?sslmode=disable
#   IDEM_MYSQL_DSN            root@tcp(127.0.0.1:P)/idem?parseTime=true  (MariaDB, driver DSN)
#   IDEM_REDIS_SERVER         path of redis-server, for tests that run their own
#   IDEM_PG_BIN_DIR           directory holding pg_ctl, postgres and initdb
#
#   IDEM_SKIP_SERVICES=1  start no servers (IDEM_* variables already set are kept)

log() { echo "${LOG_NAME:-services.sh}: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now_ms() { date +%s%3N; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# --- tools --------------------------------------------------------------------
# Directory of the newest PostgreSQL server binaries, symlinks resolved (pg_ctl
# looks for `postgres` next to itself).
pg_bin_dir() {
	local p
	if p=$(command -v pg_ctl); then dirname "$(readlink -f "$p")"; return; fi
	ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}

# Install what is missing with a single apt-get update; a no-op when present.
ensure_tools() {
	local pkgs=() sudo=""
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
		pkgs+=(redis-server redis-tools)
	[ -n "$(pg_bin_dir)" ] || pkgs+=(postgresql)
	[ -n "$(mysqld_bin)" ] && command -v mariadb-install-db >/dev/null || pkgs+=(mariadb-server)
	[ ${#pkgs[@]} -eq 0 ] && return
	is_root || sudo=sudo
	log "installing ${pkgs[*]} ..."
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
		"${pkgs[@]}" >/dev/null
}

# The MariaDB server binary (mariadbd, or mysqld in older packages).
mysqld_bin() {
	local p
	for p in mariadbd mysqld; do
		command -v "$p" && return
		[ -x "/usr/sbin/$p" ] && { echo "/usr/sbin/$p"; return; }
	done
	return 0
}

# PostgreSQL refuses to run as root: when root, run its tools as `postgres`,
# from a directory that user can enter.
as_pg() {
	if is_root; then (cd / && runuser -u postgres -- "$@"); else (cd / && "$@"); fi
}

# --- ports --------------------------------------------------------------------
# Ports come from 20000-29999, below Linux's ephemeral range (32768+), so that
# outgoing connections do not hold them. A port is free when nothing accepts a
# connection on it; ports handed out earlier in this run are never reused.
USED_PORTS=" "
port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# free_port [OFFSET]: set PORT to a free port; with OFFSET, PORT+OFFSET must be
# free too (a Redis Cluster node also listens on port+10000 for its bus).
free_port() {
	local p i off=${1:-0}
	for i in $(seq 200); do
		p=$((20000 + RANDOM % 10000))
		case $USED_PORTS in *" $p "* | *" $((p + off)) "*) continue ;; esac
		if port_free "$p" && port_free $((p + off)); then
			USED_PORTS+="$p $((p + off)) "
			PORT=$p
			return
		fi
	done
	die "no free TCP port found"
}

# --- cleanup ------------------------------------------------------------------
TMP="" PG_DATA="" PG_BIN="" REDIS_PIDFILES=() CLUSTER_CREATE_PID="" JOB="" MY_INIT_PID="" MY_PIDFILE=""
cleanup() {
	local rc=$? f pid i stopping=()
	set +e
	trap - EXIT INT TERM
	[ -n "$CLUSTER_CREATE_PID" ] && kill "$CLUSTER_CREATE_PID" 2>/dev/null
	for f in "${REDIS_PIDFILES[@]}"; do
		pid=$(cat "$f" 2>/dev/null) && kill "$pid" 2>/dev/null && stopping+=("$f")
	done
	[ -n "$MY_INIT_PID" ] && kill -- "-$MY_INIT_PID" 2>/dev/null && wait "$MY_INIT_PID"
	if [ -n "$MY_PIDFILE" ] && pid=$(cat "$MY_PIDFILE" 2>/dev/null); then
		kill "$pid" 2>/dev/null && stopping+=("$MY_PIDFILE")
	fi
	if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
	fi
	# Redis and MariaDB delete their pidfile as they exit (waiting on the pid
	# instead can be slow: the exited daemon stays a zombie until init reaps
	# it). Give each server ~5 s, then insist.
	for f in "${stopping[@]}"; do
		for i in $(seq 50); do [ -e "$f" ] || break; sleep 0.1; done
		[ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
	done
	[ -n "$TMP" ] && rm -rf "$TMP"
	exit "$rc"
}
# On INT/TERM, stop the background job (see run_job) with its whole process
# group, then exit through cleanup.
on_signal() {
	set +e
	[ -n "$JOB" ] && kill -TERM -- "-$JOB" "$JOB" 2>/dev/null && wait "$JOB"
	exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# run_job CMD...: run CMD in a new session (so its process group is $JOB) and
# wait for it. Bash runs traps only once a foreground command has finished;
# waiting on a background job instead lets INT/TERM sent to this script alone
# (not to its process group) stop the tests and servers at once.
run_job() {
	setsid "$@" &
	JOB=$!
	wait "$JOB"
}

# --- servers ------------------------------------------------------------------
# start_redis NAME OFFSET [redis-server args...]: start a daemonized node in
# $TMP/NAME on a free port (retrying if the port gets taken meanwhile) and
# wait up to 10 s for PONG. Sets PORT.
start_redis() {
	local name=$1 off=$2 dir="$TMP/$1" i
	shift 2
	for _ in 1 2 3 4 5; do
		free_port "$off"
		rm -rf "$dir" && mkdir -p "$dir"
		REDIS_PIDFILES+=("$dir/redis.pid")
		redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
			--daemonize yes --dir "$dir" --logfile "$dir/redis.log" \
			--pidfile "$dir/redis.pid" --cluster-config-file "nodes-$PORT.conf" "$@"
		for i in $(seq 100); do
			[ "$(redis-cli -p "$PORT" ping 2>/dev/null)" = PONG ] && return 0
			grep -q "Address already in use" "$dir/redis.log" 2>/dev/null && break
			sleep 0.1
		done
		grep -q "Address already in use" "$dir/redis.log" 2>/dev/null ||
			{ tail -n 20 "$dir/redis.log" >&2; die "redis $name on port $PORT did not answer PING within 10 s"; }
		log "port $PORT was taken, retrying"
	done
	die "could not start redis $name"
}

# start_cluster: start three nodes and launch `redis-cli --cluster create` in the
# background (it sleeps while the nodes join, so PostgreSQL starts meanwhile);
# wait_cluster then waits for it and for every node to see cluster_state:ok.
start_cluster() {
	local i
	CLUSTER_PORTS=()
	for i in 1 2 3; do
		start_redis "cluster$i" 10000 --cluster-enabled yes --cluster-node-timeout 5000
		CLUSTER_PORTS+=("$PORT")
	done
	redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 \
		--cluster-yes >"$TMP/cluster-create.log" 2>&1 &
	CLUSTER_CREATE_PID=$!
}

wait_cluster() {
	local i p bad
	for i in $(seq 150); do # <= 15 s: redis-cli waits forever if a node is gone
		kill -0 "$CLUSTER_CREATE_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$CLUSTER_CREATE_PID" 2>/dev/null && # cleanup() stops it
		{ cat "$TMP/cluster-create.log" >&2; die "redis-cli --cluster create still running after 15 s"; }
	wait "$CLUSTER_CREATE_PID" ||
		{ cat "$TMP/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
	CLUSTER_CREATE_PID=""
	for i in $(seq 150); do # <= 15 s
		bad=0
		for p in "${CLUSTER_PORTS[@]}"; do
			redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || bad=1
		done
		[ $bad -eq 0 ] && return
		sleep 0.1
	done
	die "redis cluster ${CLUSTER_PORTS[*]} not at cluster_state:ok after 15 s"
}

# Sets PG_PORT.
start_postgres() {
	mkdir -p "$TMP/pg" "$TMP/pgsock"
	chmod 700 "$TMP/pg"
	if is_root; then chown postgres: "$TMP" "$TMP/pg" "$TMP/pgsock"; fi
	as_pg "$PG_BIN/initdb" -D "$TMP/pg" -U postgres --auth=trust -E UTF8 --locale=C \
		--no-sync >"$TMP/initdb.log" 2>&1 ||
		{ cat "$TMP/initdb.log" >&2; die "initdb failed"; }
	PG_DATA="$TMP/pg"
	for _ in 1 2 3 4 5; do
		free_port
		if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$TMP/pg.log" -w -t 30 -o \
			"-p $PORT -k $TMP/pgsock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
			start >/dev/null; then
			"$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres idem || die "createdb idem failed"
			PG_PORT=$PORT
			return
		fi
		grep -q "could not bind" "$TMP/pg.log" ||
			{ tail -n 20 "$TMP/pg.log" >&2; die "postgres did not start"; }
		log "port $PORT was taken, retrying"
	done
	die "could not start postgres"
}

# MariaDB runs as the mysql user when this script runs as root (mariadbd
# refuses root unless told), in $TMP/mysql, which that user owns.
MY_DIR="" MY_LOG=""
my_user_args() { if is_root; then echo --user=mysql; fi; }

# init_mysql: create the data directory with mariadb-install-db in the
# background (the slow part, a few seconds), while the other servers start.
init_mysql() {
	MY_DIR="$TMP/mysql"
	# A temp dir of its own: in the shared /tmp, another server's files
	# (another run's bootstrap, say) can collide with its temporary tables.
	mkdir -p "$MY_DIR/tmp"
	if is_root; then chown mysql: "$MY_DIR" "$MY_DIR/tmp"; fi
	# --auth-root-authentication-method=normal: root without a password over
	# TCP from 127.0.0.1, rather than the unix_socket plugin's OS-user check.
	# In a session of its own, so that cleanup can stop it with the server
	# it bootstraps.
	setsid mariadb-install-db --no-defaults --datadir="$MY_DIR/data" --tmpdir="$MY_DIR/tmp" $(my_user_args) \
		--auth-root-authentication-method=normal --skip-test-db >"$MY_DIR/install.log" 2>&1 &
	MY_INIT_PID=$!
}

# start_mysql: wait for init_mysql, start mariadbd on a free port (retrying if
# the port gets taken meanwhile), wait up to 30 s for it and create the
# database idem. Sets MY_PORT.
start_mysql() {
	local bin i
	bin=$(mysqld_bin)
	wait "$MY_INIT_PID" || { cat "$MY_DIR/install.log" >&2; MY_INIT_PID=""; die "mariadb-install-db failed"; }
	MY_INIT_PID=""
	MY_PIDFILE="$MY_DIR/mysqld.pid"
	for _ in 1 2 3 4 5; do
		free_port
		: >"$MY_DIR/error.log" && { ! is_root || chown mysql: "$MY_DIR/error.log"; }
		# Durability settings are relaxed as for PostgreSQL (fsync=off): the
		# tests need correctness across processes, not across power loss.
		"$bin" --no-defaults --datadir="$MY_DIR/data" --tmpdir="$MY_DIR/tmp" --socket="$MY_DIR/mysqld.sock" \
			--port="$PORT" --bind-address=127.0.0.1 --skip-name-resolve $(my_user_args) \
			--pid-file="$MY_PIDFILE" --log-error="$MY_DIR/error.log" --skip-log-bin \
			--max-connections=300 --innodb-buffer-pool-size=128M \
			--innodb-flush-log-at-trx-commit=2 --sync-binlog=0 </dev/null >/dev/null 2>&1 &
		for i in $(seq 300); do
			mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" -u root \
				--connect-timeout=2 ping >/dev/null 2>&1 && break
			kill -0 $! 2>/dev/null || break # exited: see the log
			sleep 0.1
		done
		if mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" -u root ping >/dev/null 2>&1; then
			mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" -u root \
				-e 'CREATE DATABASE idem' || die "CREATE DATABASE idem failed"
			MY_PORT=$PORT
			return
		fi
		grep -q "Bind on TCP/IP port" "$MY_DIR/error.log" ||
			{ tail -n 20 "$MY_DIR/error.log" >&2; die "mariadb did not start within 30 s"; }
		log "port $PORT was taken, retrying"
		wait $! 2>/dev/null || true
	done
	die "could not start mariadb"
}

# start_services: install what is missing, start every server and export
# their addresses.
start_services() {
	if [ "${IDEM_SKIP_SERVICES:-0}" = 1 ]; then
		log "IDEM_SKIP_SERVICES=1: starting no servers"
		if command -v redis-server >/dev/null; then
			export IDEM_REDIS_SERVER="${IDEM_REDIS_SERVER:-$(command -v redis-server)}"
		fi
	else
		ensure_tools
		t0=$(now_ms)
		TMP=$(mktemp -d "${TMPDIR:-/tmp}/idem-test.XXXXXX")
		chmod 755 "$TMP" # postgres must be able to enter it
		PG_BIN=$(pg_bin_dir)
		init_mysql
		start_redis redis 0
		REDIS_PORT=$PORT
		start_cluster
		start_postgres
		start_mysql
		wait_cluster

		export IDEM_REDIS_ADDR="127.0.0.1:$REDIS_PORT"
		IDEM_REDIS_CLUSTER_ADDRS=$(printf '127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
		export IDEM_REDIS_CLUSTER_ADDRS=${IDEM_REDIS_CLUSTER_ADDRS%,}
		export IDEM_POSTGRES_DSN="postgres://postgres@127.0.0.1:$PG_PORT/idem?sslmode=disable"
		export IDEM_MYSQL_DSN="root@tcp(127.0.0.1:$MY_PORT)/idem?parseTime=true"
		IDEM_REDIS_SERVER=$(command -v redis-server)
		export IDEM_REDIS_SERVER IDEM_PG_BIN_DIR=$PG_BIN
		log "servers up in $(($(now_ms) - t0)) ms: redis $IDEM_REDIS_ADDR;" \
			"cluster $IDEM_REDIS_CLUSTER_ADDRS; postgres 127.0.0.1:$PG_PORT/idem;" \
			"mariadb 127.0.0.1:$MY_PORT/idem"
	fi
}

# Run on its own: start the servers, run the command, stop them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
	cd "$(dirname "${BASH_SOURCE[0]}")/.."
	export PATH="$PATH:/usr/local/go/bin"
	[ $# -gt 0 ] || { echo "usage: scripts/services.sh COMMAND [ARGS...]" >&2; exit 2; }
	start_services
	run_job "$@"
fi
