#!/bin/sh
# The source tree's shape, checked on every run of the suite:
# (1) src/ folders form one-way layers: a file may include headers of its own folder and of
#     folders to its left in ORDER, never of one to its right (so no include cycle can form);
# (2) no function in src/ runs over 120 lines (a function you can read on one screen).
# Prints "layers: N passed, M failed".
cd "$(dirname "$0")/.." || exit 1
ORDER="util io optim data backend prof model dist train cli"
passed=0 failed=0
check() {  # check OK MESSAGE
    if [ "$1" = 0 ]; then passed=$((passed + 1)); echo "ok   $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi
}
rank() {  # rank FOLDER: its position in ORDER, or empty
    i=0
    for f in $ORDER; do i=$((i + 1)); [ "$f" = "$1" ] && { echo $i; return; }; done
}

# Every src/ folder must have a place in the order (a new folder has to be placed).
missing=""
for d in src/*/; do d=${d%/}; d=${d#src/}; [ -n "$(rank "$d")" ] || missing="$missing $d"; done
check "$([ -z "$missing" ]; echo $?)" "every src/ folder is in the layer order ($ORDER)${missing:+; not placed:$missing}"

# Includes that point right in the order.
bad=$(find src -mindepth 2 \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) | sort | while read -r f; do
    from=${f#src/}; from=${from%%/*}
    rf=$(rank "$from")
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([a-z_0-9]*\)\/.*/\1/p' "$f" | sort -u | while read -r to; do
        rt=$(rank "$to")
        [ -n "$rt" ] && [ "$rt" -gt "$rf" ] && echo "$f includes $to/"
    done
done)
check "$([ -z "$bad" ]; echo $?)" "no src/ file includes a folder to its right${bad:+: $(echo "$bad" | tr '\n' ';')}"

# Function length: a definition starts at a line in column 0 ending in ") {", ends at "}" in column 0.
long=$(find src \( -name '*.c' -o -name '*.cu' \) | sort | xargs awk '
    FNR == 1 { start = 0 }
    /^[A-Za-z_].*\)[[:space:]]*\{[[:space:]]*$/ { name = $0; start = FNR; next }
    /^\}/ && start { if (FNR - start + 1 > 120) printf "%s:%d (%d lines); ", FILENAME, start, FNR - start + 1; start = 0 }')
check "$([ -z "$long" ]; echo $?)" "no function in src/ over 120 lines${long:+: $long}"

echo "layers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
