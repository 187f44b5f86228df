#!/usr/bin/env bash
# The full check suite, the one command CI runs (.ci/run): gofmt, then in
# every module of the repository a `go mod tidy` check, go vet, staticcheck
# and `go test -race`, against real throwaway servers that scripts/services.sh
# starts on free loopback ports and always stops on exit; then short fuzz
# runs (scripts/fuzz.sh).
#
# Usage: scripts/test.sh [go test flags...]     e.g. scripts/test.sh -run Redis -v
#   IDEM_SKIP_SERVICES=1  start no servers (IDEM_* variables already set are kept)
#   IDEM_SKIP_FUZZ=1      no fuzz runs
#
# Each module is tested on its own go.mod (GOWORK=off), as its users build it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"

# Inner mode (run by the outer one with the servers up): go test -race in
# each module given before "--", with the flags after it.
if [ "${1:-}" = __test_modules ]; then
	shift
	mods=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do mods+=("$1"); shift; done
	shift || true
	rc=0
	for m in "${mods[@]}"; do
		echo "test.sh: go test -race ($m)" >&2
		(cd "$m" && GOWORK=off go test -race -count=1 ./... "$@") || rc=1
	done
	exit $rc
fi

LOG_NAME=test.sh
# shellcheck source=scripts/services.sh
source scripts/services.sh

# Every module: the directories of the go.mod files git knows (or sees).
mapfile -t MODULES < <({ git ls-files -co --exclude-standard 'go.mod' '*/go.mod' 2>/dev/null ||
	find . -name go.mod -not -path './.git/*'; } | xargs -n1 dirname | sort -u)

# --- static checks (fail fast, before any server starts) -----------------------
log "$(go version); modules: ${MODULES[*]}"
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || die "gofmt -l lists:"$'\n'"$unformatted"
# staticcheck, at a pinned version, installed into GOPATH/bin when missing
# (it comes from the module proxy like any module).
STATICCHECK_VERSION=v0.8.2
STATICCHECK="$(go env GOPATH)/bin/staticcheck"
if ! "$STATICCHECK" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
	log "installing staticcheck $STATICCHECK_VERSION"
	GOWORK=off GOFLAGS=-mod=mod go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" ||
		die "could not install staticcheck"
fi
for m in "${MODULES[@]}"; do
	(cd "$m" && GOWORK=off go mod tidy -diff) || die "$m: go.mod or go.sum is not tidy (run go mod tidy there)"
	(cd "$m" && GOWORK=off go vet ./...) || die "$m: go vet failed"
	(cd "$m" && GOWORK=off "$STATICCHECK" ./...) || die "$m: staticcheck failed"
done

# --- services -------------------------------------------------------------------
start_services

# --- tests ------------------------------------------------------------------------
# Each module's tests run in a job of their own (see run_job), so that an
# interrupt stops them and the servers at once. Extra arguments go after the
# package pattern, where go test still reads flags, so `-run X`, `-v` and
# `-args ...` all work.
run_job "$(pwd)/scripts/test.sh" __test_modules "${MODULES[@]}" -- "$@"

# Short fuzz runs; they see the same servers and environment.
if [ "${IDEM_SKIP_FUZZ:-0}" != 1 ] && [ -x scripts/fuzz.sh ]; then ./scripts/fuzz.sh; fi
