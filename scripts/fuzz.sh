#!/usr/bin/env bash
# Runs each fuzz target of the module briefly (FUZZTIME each, 10s unless set),
# after the tests: scripts/test.sh calls it. A failing input is written to
# testdata/fuzz/<Target>/ by go test; commit it with the fix, as a seed.
#
# Usage: scripts/fuzz.sh            FUZZTIME=1m scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOWORK=off # each target runs in its own module, as scripts/test.sh tests it

FUZZTIME=${FUZZTIME:-10s}
# package  target
targets=(
	". FuzzParseKey"
	". FuzzDecodeResponse"
	". FuzzMiddleware"
	". FuzzWireMatchesNetHTTP"
)
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz.sh: $name ($pkg) for $FUZZTIME" >&2
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
done
