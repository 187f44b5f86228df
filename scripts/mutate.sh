#!/usr/bin/env bash
# Mutation testing: internal/mutate plants one bug at a time in a package
# (comparisons negated or shifted by one, && and || swapped, ! removed, + and
# - swapped, statements deleted), runs the package's tests against each, and
# lists the bugs no test noticed. It works on a copy of the repository, never
# on the working tree, one test run at a time, niced. It is not part of CI;
# README "Testing" records the last figures and explains every survivor.
#
# Usage: scripts/mutate.sh [root|memstore|redisstore|sqlstore|all]  (default all)
#
# The stores are judged by their test modules against real servers, so their
# runs start the servers with scripts/services.sh. A run of the root package
# takes tens of minutes on two shared cores; memstore a few.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"

bin=$(mktemp -d)/mutate
trap 'rm -rf "$(dirname "$bin")"' EXIT
(cd internal/mutate && GOWORK=off go build -o "$bin" .)

mutate() { nice -n 15 "$bin" -repo . "$@"; }

root()     { mutate -pkg . -test .; }
memstore() { mutate -pkg memstore -test memstore; }
# The store modules' tests that judge the store itself (the cluster, the
# benchmarks and the statement counts are left out for speed). The sqlstore
# set includes the serializable and two-handle runs: they are what reaches
# the retry paths.
redisstore() {
	scripts/services.sh "$bin" -repo . -pkg redisstore -test redisstore/tests \
		-run 'TestConformance(Redis|Miniredis)$|TestLoad|TestKeyLayout|TestWithPrefix|TestMilliseconds|TestReadsFormat|TestRejectsUnknown|TestBackendFailure|TestFirstUseOfScript'
}
sqlstore() {
	scripts/services.sh "$bin" -repo . -pkg sqlstore -test sqlstore/tests \
		-run 'TestConformance|TestExpiredRow|TestMigrate|TestCompleteTx|TestTakeover|TestPostgresClaimSees|TestUnknownRecord|TestBinaryKeys|TestClaimWithOwnersToken|TestDeleteExpired|TestSweeper|TestTinyLease|TestNewRefuses|TestSchemaQualified|TestSQLite'
}

case "${1:-all}" in
root | memstore | redisstore | sqlstore) "$1" ;;
all) root; memstore; redisstore; sqlstore ;;
*) echo "usage: $0 [root|memstore|redisstore|sqlstore|all]" >&2; exit 2 ;;
esac
