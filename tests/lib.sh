# Shared by the command-line tests (sourced): counters, a temp folder removed on exit,
# and the checks. Each script ends with `finish NAME`.
VIT=${VIT:-./vit}
FM=/usr/share/datasets/fashion-mnist
passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() {  # check NAME STATUS
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $1"
    fi
}

# expect_error NAME PATTERN ARGS...: exit code 1..127 (not a signal), one stderr line containing PATTERN
expect_error() {
    name=$1 pattern=$2
    shift 2
    "$VIT" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    rc=$?
    lines=$(grep -c . "$tmp/err")
    if [ $rc -ge 1 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" "$tmp/err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name: exit $rc, stderr:"
        sed 's/^/    /' "$tmp/err"
    fi
}

expect_ok() {  # expect_ok NAME ARGS...: vit exits 0
    name=$1
    shift
    if "$VIT" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name: exit $?"
        sed 's/^/    /' "$tmp/err"
    fi
}

json_field() { sed -n "s/.*\"$2\": \([-0-9.e]*\).*/\1/p" "$1"; }

finish() {
    echo "$1: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
