#!/bin/sh
# Runs the whole suite: every C test program, then the command-line tests; prints the
# total as "N passed, N failed" and exits nonzero when anything failed.
# usage: tests/run.sh BUILD_DIR VIT_BINARY     (VIT_SKIP_LONG=1 skips the training run)
build=${1:-build}
vit=${2:-./vit}
passed=0
failed=0
add_counts() {  # reads "...: N passed, M failed" lines from $1
    p=$(sed -n 's/.* \([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/.* \([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\2/p' "$1" | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p))
    failed=$((failed + f))
}
log=$(mktemp)
for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== $(basename "$t")"
    if ! "$t" >"$log" 2>&1; then
        # A crash or a failure without a count still counts as one failure.
        grep -q ' failed$' "$log" || failed=$((failed + 1))
    fi
    cat "$log"
    add_counts "$log"
done
for t in tests/layers.sh tests/cli_*.sh; do
    echo "== $(basename "$t")"
    VIT="$vit" sh "$t" >"$log" 2>&1 || { grep -q ' failed$' "$log" || failed=$((failed + 1)); }
    cat "$log"
    add_counts "$log"
done
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
