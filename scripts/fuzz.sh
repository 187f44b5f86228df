#!/usr/bin/env bash
# Runs each fuzz target of the module briefly, after the tests:
# scripts/test.sh calls it. A failing input is written to
# testdata/fuzz/<Target>/ by go test; commit it with the fix, as a seed.
#
# By default each target runs a fixed number of inputs (about 10 seconds on
# two cores), not a duration: with a duration, Go's fuzzer reports "context
# deadline exceeded" as a failure when the time runs out while a slow input
# is under way, which a busy machine makes likely. FUZZTIME sets the same
# budget for every target, as a duration or a count.
#
# Usage: scripts/fuzz.sh            FUZZTIME=1m scripts/fuzz.sh      FUZZTIME=100000x scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOWORK=off # each target runs in its own module, as scripts/test.sh tests it

# package  target  inputs
targets=(
	". FuzzParseKey 100000x"
	". FuzzDecodeResponse 50000x"
	". FuzzMiddleware 20000x"
	". FuzzWireMatchesNetHTTP 4000x"
)
for t in "${targets[@]}"; do
	read -r pkg name budget <<<"$t"
	budget=${FUZZTIME:-$budget}
	echo "fuzz.sh: $name ($pkg) for $budget" >&2
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" "$pkg"
done
