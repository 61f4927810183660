#!/bin/sh
# Each command's --help lists the flags that command reads (and only those), every flag of the
# table is listed by some command, every command still accepts every flag, and vit --version
# (or vit version) prints the version and the build's options.
. "$(dirname "$0")/lib.sh"
src=$(dirname "$0")/../src

for c in train evaluate predict export prep info; do
    "$VIT" $c --help >"$tmp/help_$c" 2>"$tmp/err"
    check "$c --help exits 0" $?
done

# lists COMMAND FLAG / lacks COMMAND FLAG: whether COMMAND's --help has a line for --FLAG
lists() { grep -Eq -- "^  --$2([ ,]|\$)" "$tmp/help_$1"; check "$1 --help lists --$2" $?; }
lacks() { ! grep -Eq -- "^  --$2([ ,]|\$)" "$tmp/help_$1"; check "$1 --help does not list --$2" $?; }

lists train initial_lr
lists train dataset_dir
lists train model
lists train base_tf_server_port
lacks train checkpoint
lacks train raw_data_dir
lists evaluate checkpoint
lists evaluate dataset_dir
lists evaluate batch_size
lacks evaluate initial_lr
lacks evaluate labels
lists predict checkpoint
lists predict labels
lists predict device
lacks predict initial_lr
lacks predict dataset_dir
lacks predict batch_size
lists export checkpoint
lists export pretrained
lists export out
lists export format
lists export num_classes
lists export layernorm_eps
lacks export batch_size
lacks export initial_lr
lacks export dataset_dir
lists prep raw_data_dir
lists prep output_dir
lists prep data_workers
lacks prep model
lists info model
lists info num_layers
lists info json
lacks info dataset_dir
lacks info device

# Every flag of the table in at least one command's help.
sed -n 's/^ *{"\([a-z0-9_]*\)", [^,]*, FLAG_.*/\1/p' "$src/cli/flags.c" >"$tmp/all_flags"
[ "$(wc -l <"$tmp/all_flags")" -gt 60 ]
check "flag names read from src/cli/flags.c" $?
cat "$tmp"/help_* >"$tmp/help_all"
missing=
while read -r f; do
    grep -Eq -- "^  --$f([ ,]|\$)" "$tmp/help_all" || missing="$missing --$f"
done <"$tmp/all_flags"
[ -z "$missing" ] || echo "not in any command's --help:$missing"
check "every flag listed by some command" "$([ -z "$missing" ]; echo $?)"

# Parsing is unchanged: a command accepts a flag its help does not list.
expect_ok "info accepts a training flag" info --model ViT-Ti_16 --initial_lr 0.1 --json

# The version.
version=$(sed -n 's/^#define VIT_VERSION "\(.*\)"$/\1/p' "$src/cli/version.h")
"$VIT" --version >"$tmp/version" 2>"$tmp/err"
check "--version exits 0" $?
[ -n "$version" ] && [ "$(head -n 1 "$tmp/version")" = "vit $version" ]
check "--version prints vit $version" $?
grep -q "CUDA \(yes\|no\), MPI \(yes\|no\), NCCL \(yes\|no\)" "$tmp/version"
check "--version prints the build's options" $?
grep -q "oneDNN [0-9]" "$tmp/version"
check "--version names the matrix library" $?
"$VIT" version >"$tmp/version2" 2>"$tmp/err" && cmp -s "$tmp/version" "$tmp/version2"
check "vit version = vit --version" $?
"$VIT" --help >"$tmp/usage" && grep -q "^  version" "$tmp/usage"
check "vit --help lists version" $?
finish cli_help
