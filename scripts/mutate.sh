#!/usr/bin/env bash
# Mutation testing: internal/mutate plants one bug at a time in a package
# (comparisons negated or shifted by one, && and || swapped, ! removed, + and
# - swapped, statements deleted), runs the tests that reach it, and lists the
# bugs no test noticed. It works on a copy of the repository, never on the
# working tree, niced, one mutant at a time (two for the root package,
# whose tests share no server). It is not part of CI; README
# "Testing" records the last figures, and internal/mutate/equivalent/
# explains every survivor no test can kill.
#
# Usage: scripts/mutate.sh [root|memstore|redisstore|rueidisstore|sqlstore|all]  (default all)
#
# The stores are judged by their test modules against real servers, so their
# runs start the servers with scripts/services.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"

bin=$(mktemp -d)/mutate
trap 'rm -rf "$(dirname "$bin")"' EXIT
(cd internal/mutate && GOWORK=off go build -o "$bin" .)

mutate() { nice -n 15 "$bin" -repo . "$@"; }
served() { scripts/services.sh nice -n 15 "$bin" -repo . "$@"; }

root()         { mutate -j 2 -pkg . -test .; }  # no servers: two mutants at once
memstore()     { mutate -pkg memstore -test memstore; }
redisstore()   { served -pkg redisstore -test redisstore/tests; }
rueidisstore() { served -pkg rueidisstore -test rueidisstore/tests; }
sqlstore()     { served -pkg sqlstore -test sqlstore/tests; }

case "${1:-all}" in
root | memstore | redisstore | rueidisstore | sqlstore) "$1" ;;
all) root; memstore; redisstore; rueidisstore; sqlstore ;;
*) echo "usage: $0 [root|memstore|redisstore|rueidisstore|sqlstore|all]" >&2; exit 2 ;;
esac
