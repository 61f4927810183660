#!/bin/sh
# End-to-end runs of `vit train`: the demo learns Fashion-MNIST; the same seed gives the
# same run. VIT_SKIP_LONG=1 skips the two-epoch demo (used by `make asan`).
VIT=${VIT:-./vit}
passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FM=/usr/share/datasets/fashion-mnist
check() {  # check NAME CONDITION-EXIT-CODE
    if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1"; fi
}
json_field() { sed -n "s/.*\"$2\": \([-0-9.e]*\).*/\1/p" "$1"; }

# Same seed, same run: identical losses and accuracy (synthetic data, dropout on).
SMALL="--synthetic_data --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64 --image_size 16
       --num_classes 5 --batch_size 8 --grad_accum_steps 2 --epochs 2 --steps_per_epoch 6 --validation_steps 2
       --optimizer adamw --initial_lr 1e-3 --warmup_steps 2 --seed 7 --json"
"$VIT" train $SMALL >"$tmp/a.json" 2>"$tmp/a.err"
ra=$?
"$VIT" train $SMALL >"$tmp/b.json" 2>"$tmp/b.err"
check "deterministic runs succeed" $((ra + $?))
a=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//' "$tmp/a.json")
b=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//' "$tmp/b.json")
[ -n "$a" ] && [ "$a" = "$b" ]
check "same seed gives the same losses ($a)" $?
steps=$(json_field "$tmp/a.json" steps)
[ "$steps" = 6 ]
check "2 epochs x 6 micro-steps / accumulation 2 = 6 updates (got $steps)" $?

# The demo: a small ViT learns Fashion-MNIST to >= 85% test accuracy in 2 epochs.
if [ -z "$VIT_SKIP_LONG" ] && [ -d "$FM" ]; then
    # shellcheck disable=SC2046
    "$VIT" train $(cat "$(dirname "$0")/demo.flags") --json >"$tmp/demo.json" 2>"$tmp/demo.err"
    check "demo run succeeds" $?
    cat "$tmp/demo.json"
    top1=$(json_field "$tmp/demo.json" val_top1)
    awk -v a="$top1" 'BEGIN { exit !(a >= 0.85) }'
    check "demo reaches >= 85% test accuracy (got $top1)" $?
fi
echo "cli_train: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
