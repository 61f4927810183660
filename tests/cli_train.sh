#!/bin/sh
# End-to-end runs of `vit train`: the demo learns Fashion-MNIST; the same seed gives the
# same run. VIT_SKIP_LONG=1 skips the two-epoch demo (used by `make asan`).
. "$(dirname "$0")/lib.sh"

# Same seed, same run: identical losses and accuracy (synthetic data, dropout on).
SMALL="--synthetic_data --from_scratch --save_dir= --log_dir= --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64 --image_size 16
       --num_classes 5 --batch_size 8 --grad_accum_steps 2 --epochs 2 --steps_per_epoch 6 --validation_steps 2
       --optimizer adamw --initial_lr 1e-3 --warmup_steps 2 --seed 7 --json"
"$VIT" train $SMALL >"$tmp/a.json" 2>"$tmp/a.err"
ra=$?
"$VIT" train $SMALL >"$tmp/b.json" 2>"$tmp/b.err"
check "deterministic runs succeed" $((ra + $?))
a=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//' "$tmp/a.json")
b=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//' "$tmp/b.json")
[ -n "$a" ] && [ "$a" = "$b" ]
check "same seed gives the same losses ($a)" $?
steps=$(json_field "$tmp/a.json" steps)
[ "$steps" = 6 ]
check "2 epochs x 6 micro-steps / accumulation 2 = 6 updates (got $steps)" $?

# Exact resume: a run, and the same run resumed from its mid-epoch checkpoint, end identical.
RUN="--run_name . --synthetic_data --from_scratch --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --image_size 16 --num_classes 5 --batch_size 8 --grad_accum_steps 2 --epochs 2 --steps_per_epoch 6
     --validation_steps 2 --optimizer adamw --dropout 0.1 --initial_lr 1e-3 --warmup_steps 2 --seed 11
     --checkpoint_every_steps 2 --json --log_dir="
"$VIT" train $RUN --save_dir "$tmp/full" >"$tmp/full.json" 2>"$tmp/full.err"
check "full run with checkpoints" $?
mid="$tmp/full/ViT-Ti_4-ckpt-step-0000002.safetensors"
[ -f "$mid" ] && [ -f "$tmp/full/ViT-Ti_4-ckpt-001.safetensors" ] && [ -f "$tmp/full/ViT-Ti_4-ckpt-final.safetensors" ]
check "step, epoch and final checkpoints written" $?
"$VIT" train $RUN --save_dir "$tmp/resumed" --resume_from_checkpoint_path "$mid" >"$tmp/resumed.json" 2>"$tmp/resumed.err"
check "resumed run" $?
a=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//; s/"checkpoint": "[^"]*"//' "$tmp/full.json")
b=$(sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//; s/"checkpoint": "[^"]*"//' "$tmp/resumed.json")
[ -n "$a" ] && [ "$a" = "$b" ]
check "resumed run reports the same losses to 17 digits ($b)" $?
if python3 -c "import safetensors, numpy" 2>/dev/null; then
    python3 tools/compare_checkpoints.py "$tmp/full/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/resumed/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/cmp.out" 2>&1
    check "resumed final checkpoint bit-identical: $(tail -1 "$tmp/cmp.out")" $?
    python3 tools/check_checkpoint.py "$tmp/full/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/chk.out" 2>&1
    check "checkpoint readable by Python safetensors: $(tail -1 "$tmp/chk.out")" $?
else
    echo "FAIL python3 with numpy and safetensors is needed (make deps installs them)"
    failed=$((failed + 1))
fi

# Export to the official .npz layout and import it again: the same model, to the bit.
final="$tmp/full/ViT-Ti_4-ckpt-final.safetensors"
"$VIT" export --checkpoint "$final" --out "$tmp/export.npz" >/dev/null 2>"$tmp/export.err"
check "export" $?
EVAL="--synthetic_data --validation_steps 2 --batch_size 8 --json"
"$VIT" evaluate --checkpoint "$final" $EVAL >"$tmp/e1.json" 2>/dev/null
"$VIT" evaluate --pretrained "$tmp/export.npz" --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 \
    --mlp_dim 64 --image_size 16 --num_classes 5 $EVAL >"$tmp/e2.json" 2>/dev/null
e1=$(sed 's/"images_per_sec": [0-9.]*//' "$tmp/e1.json")
e2=$(sed 's/"images_per_sec": [0-9.]*//' "$tmp/e2.json")
[ -n "$e1" ] && [ "$e1" = "$e2" ]
check "export -> import gives the same evaluation ($e2)" $?

# kill -9 while checkpoints are being written: every checkpoint file left loads.
"$VIT" train --synthetic_data --from_scratch --model ViT-Ti_4 --hidden_size 64 --num_layers 2 --num_heads 2 \
    --mlp_dim 128 --image_size 32 --num_classes 5 --batch_size 4 --grad_accum_steps 1 --epochs 1 \
    --steps_per_epoch 100000 --validation_steps 0 --checkpoint_every_steps 1 --keep_checkpoints 3 \
    --run_name . --save_dir "$tmp/killed" --log_dir= --seed 3 >/dev/null 2>&1 &
pid=$!
sleep 3
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
n=0
bad=0
for f in "$tmp"/killed/*.safetensors; do
    [ -f "$f" ] || continue
    n=$((n + 1))
    "$VIT" evaluate --checkpoint "$f" --synthetic_data --validation_steps 1 --batch_size 2 >/dev/null 2>&1 || bad=$((bad + 1))
done
[ "$n" -ge 1 ] && [ "$n" -le 4 ] && [ "$bad" -eq 0 ]
check "after kill -9: $n checkpoints kept (--keep_checkpoints 3), $bad unreadable" $?

# The demo: a small ViT learns Fashion-MNIST to >= 85% test accuracy in 3 epochs.
if [ -z "$VIT_SKIP_LONG" ] && [ -d "$FM" ]; then
    # shellcheck disable=SC2046
    "$VIT" train $(cat "$(dirname "$0")/demo.flags") --run_name . --save_dir "$tmp/saves" --log_dir "$tmp/logs" --json >"$tmp/demo.json" 2>"$tmp/demo.err"
    check "demo run succeeds" $?
    cat "$tmp/demo.json"
    top1=$(json_field "$tmp/demo.json" val_top1)
    awk -v a="$top1" 'BEGIN { exit !(a >= 0.85) }'
    check "demo reaches >= 85% test accuracy (got $top1)" $?
    # evaluate reproduces the training run's validation; predict classifies a t10k image.
    ck="$tmp/saves/ViT-Ti_4-ckpt-final.safetensors"
    "$VIT" evaluate --checkpoint "$ck" --dataset_dir "$FM" --batch_size 32 --json >"$tmp/eval.json" 2>/dev/null
    etop1=$(json_field "$tmp/eval.json" top1)
    [ -n "$etop1" ] && [ "$etop1" = "$top1" ]
    check "vit evaluate on the final checkpoint gives the training run's top1 ($etop1 vs $top1)" $?
    label=$(python3 - "$FM" "$tmp/shirt.png" <<'PY'
import gzip, struct, sys, zlib
d, out = sys.argv[1], sys.argv[2]
img = gzip.open(d + "/t10k-images-idx3-ubyte.gz").read()[16:16 + 784]
lab = gzip.open(d + "/t10k-labels-idx1-ubyte.gz").read()[8]
raw = b"".join(b"\0" + img[r * 28:(r + 1) * 28] for r in range(28))
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) + \
      chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(out, "wb").write(png)
print(lab)
PY
)
    "$VIT" predict --checkpoint "$ck" "$tmp/shirt.png" >"$tmp/pred.txt" 2>&1
    grep -q "^  1\..*($label)$" "$tmp/pred.txt"
    check "predict names the true class of a t10k image first (label $label): $(sed -n 2p "$tmp/pred.txt")" $?
fi
finish cli_train
