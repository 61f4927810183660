#!/bin/sh
# timm's weight EMA (--model_ema) and layer-wise learning-rate decay (--layer_decay) end to
# end: a small run validates the average beside the weights (printed, --json, TensorBoard),
# saves it in every checkpoint as "ema/<name>", resumes from a mid-run checkpoint bit for bit
# (the average included), and leaves the training itself untouched; `vit evaluate --ema`
# reproduces the run's EMA validation, `vit export --ema` writes the average; nonsense values
# are one-line errors. (The arithmetic against timm itself: tests/test_ema.c.)
. "$(dirname "$0")/lib.sh"

MODEL="--model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64 --image_size 16 --num_classes 5"
RUN="--run_name . --synthetic_data --from_scratch $MODEL --batch_size 8 --grad_accum_steps 2 --epochs 2 --steps_per_epoch 6
     --validation_steps 2 --optimizer adamw --dropout 0.1 --initial_lr 1e-3 --warmup_steps 2 --seed 11
     --checkpoint_every_steps 2 --json"
EMA="--model_ema --model_ema_decay 0.99 --layer_decay 0.75"
strip() { sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//; s/"checkpoint": "[^"]*"//' "$1"; }

"$VIT" train $RUN $EMA --save_dir "$tmp/full" --log_dir "$tmp/logs" >"$tmp/full.json" 2>"$tmp/full.err"
check "training with $EMA" $?
final="$tmp/full/ViT-Ti_4-ckpt-final.safetensors"
mid="$tmp/full/ViT-Ti_4-ckpt-step-0000002.safetensors"
grep -q "model EMA: decay 0.99;  layer-wise lr decay 0.75 over 4 layers" "$tmp/full.err"
check "the header names the EMA decay and the layer-wise decay" $?
[ "$(grep -c 'validation (EMA): loss' "$tmp/full.err")" -eq 2 ] && grep -q "final validation accuracy (EMA)" "$tmp/full.err"
check "each epoch validates the average beside the weights" $?
val_ema=$(json_field "$tmp/full.json" val_ema_loss)
val=$(json_field "$tmp/full.json" val_loss)
[ -n "$val_ema" ] && [ -n "$(json_field "$tmp/full.json" val_ema_top1)" ] && [ "$val_ema" != "$val" ]
check "--json has val_ema_loss/top1 ($val_ema), not the weights' ($val)" $?
grep -aq epoch_ema_accuracy "$tmp"/logs/eval/events.* && grep -aq epoch_ema_loss "$tmp"/logs/eval/events.*
check "TensorBoard eval log holds epoch_ema_loss and epoch_ema_accuracy" $?

# The average: saved with its flag, different from the weights, and it does not change them.
"$VIT" train $RUN --layer_decay 0.75 --save_dir "$tmp/noema" --log_dir= >/dev/null 2>"$tmp/noema.err"
check "the same run without --model_ema" $?
"$VIT" train $RUN --save_dir "$tmp/plain" --log_dir= >/dev/null 2>&1
"$VIT" train $RUN --layer_decay 1 --save_dir "$tmp/one" --log_dir= >/dev/null 2>&1
check "runs without layer decay and with --layer_decay 1" $?
python3 - "$final" "$tmp/noema/ViT-Ti_4-ckpt-final.safetensors" "$tmp/plain/ViT-Ti_4-ckpt-final.safetensors" \
    "$tmp/one/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/py.out" 2>&1 <<'EOF'
import sys
import numpy as np
from safetensors import safe_open
ema, noema, plain, one = (safe_open(p, "np") for p in sys.argv[1:5])
names = [k for k in ema.keys() if not k.startswith(("ema/", "optimizer/"))]
bad = []
if ema.metadata().get("train.model_ema") != "1" or "train.model_ema" in noema.metadata():
    bad.append("metadata train.model_ema")
if sorted("ema/" + k for k in names) != sorted(k for k in ema.keys() if k.startswith("ema/")):
    bad.append("an ema/ tensor for every parameter")
if not all(np.array_equal(ema.get_tensor(k), noema.get_tensor(k)) for k in ema.keys() if not k.startswith("ema/")):
    bad.append("weights and slots equal to the run without --model_ema")
if all(np.array_equal(ema.get_tensor("ema/" + k), ema.get_tensor(k)) for k in names):
    bad.append("the average differs from the weights")
if all(np.array_equal(plain.get_tensor(k), noema.get_tensor(k)) for k in names):
    bad.append("--layer_decay 0.75 changes the run")
if not all(np.array_equal(plain.get_tensor(k), one.get_tensor(k)) for k in plain.keys()):
    bad.append("--layer_decay 1 is the plain run bit for bit")
print("FAIL: " + "; ".join(bad) if bad else "ok")
sys.exit(1 if bad else 0)
EOF
check "checkpoint holds ema/<name> + train.model_ema; EMA leaves training as it was; layer decay 0.75 changes it, 1 does not: $(tail -1 "$tmp/py.out")" $?

python3 tools/check_checkpoint.py "$final" >"$tmp/chk.out" 2>&1
check "the independent checker accepts it: $(tail -1 "$tmp/chk.out")" $?

# Resume from the mid-run checkpoint: the same run, average included, bit for bit.
"$VIT" train $RUN $EMA --save_dir "$tmp/resumed" --log_dir= --resume_from_checkpoint_path "$mid" \
    >"$tmp/resumed.json" 2>"$tmp/resumed.err"
check "resumed run" $?
a=$(strip "$tmp/full.json")
b=$(strip "$tmp/resumed.json")
[ -n "$a" ] && [ "$a" = "$b" ]
check "resumed run reports the same figures, EMA validation included ($b)" $?
python3 tools/compare_checkpoints.py "$final" "$tmp/resumed/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/cmp.out" 2>&1
check "resumed final checkpoint bit-identical, ema/ tensors included: $(tail -1 "$tmp/cmp.out")" $?
# A checkpoint without an average: --model_ema starts one from its weights.
"$VIT" train $RUN $EMA --save_dir "$tmp/late" --log_dir= \
    --resume_from_checkpoint_path "$tmp/noema/ViT-Ti_4-ckpt-step-0000002.safetensors" >/dev/null 2>"$tmp/late.err"
check "resuming a checkpoint without an average under --model_ema" $?
grep -q "holds no moving average: --model_ema starts from its weights" "$tmp/late.err"
check "... says the average starts from its weights" $?

# evaluate --ema gives the run's own EMA validation; export --ema writes the average.
EVAL="--synthetic_data --validation_steps 2 --batch_size 8 --seed 11 --json"
"$VIT" evaluate --checkpoint "$final" --ema $EVAL >"$tmp/e_ema.json" 2>/dev/null
check "evaluate --ema" $?
"$VIT" evaluate --checkpoint "$final" $EVAL >"$tmp/e.json" 2>/dev/null
e_ema=$(json_field "$tmp/e_ema.json" loss)
e=$(json_field "$tmp/e.json" loss)
[ -n "$e_ema" ] && [ "$e_ema" = "$val_ema" ] && [ "$e" = "$val" ]
check "evaluate --ema = the run's val_ema_loss ($e_ema), without --ema its val_loss ($e)" $?
expect_ok "export --ema to .npz" export --checkpoint "$final" --ema --out "$tmp/ema.npz"
grep -q "the moving average (--ema)" "$tmp/out"
check "export says it wrote the average" $?
python3 - "$tmp/ema.npz" "$final" >"$tmp/py2.out" 2>&1 <<'EOF'
import sys
import numpy as np
from safetensors import safe_open
z, ck = np.load(sys.argv[1]), safe_open(sys.argv[2], "np")
ok = len(z.files) > 0 and all(np.array_equal(z[k], ck.get_tensor("ema/" + k)) for k in z.files)
print("ok" if ok else "FAIL: the .npz is not the checkpoint's ema/ tensors")
sys.exit(0 if ok else 1)
EOF
check "the exported .npz holds exactly the checkpoint's ema/ tensors: $(tail -1 "$tmp/py2.out")" $?
"$VIT" evaluate --pretrained "$tmp/ema.npz" $MODEL $EVAL >"$tmp/e_npz.json" 2>/dev/null
[ "$(json_field "$tmp/e_npz.json" loss)" = "$e_ema" ]
check "the exported average evaluates as evaluate --ema" $?
expect_ok "export --ema to timm safetensors" export --checkpoint "$final" --ema --out "$tmp/ema.safetensors"
"$VIT" train $RUN --model_ema --model_ema_warmup --save_dir= --log_dir "$tmp/wlogs" --profile 1,4 >"$tmp/w.json" 2>"$tmp/w.err"
check "--model_ema_warmup, profiled" $?
grep -q "ema_update" "$tmp/w.err" && [ "$(json_field "$tmp/w.json" val_ema_loss)" != "$val_ema" ]
check "the profile table lists ema_update; warm-up gives another average" $?

# Two MPI ranks: --zero 1 equals --zero 0 bit for bit (every rank averages the gathered
# weights; the layer scales survive the shard cuts), and a --zero 1 resume continues it.
if command -v mpirun >/dev/null 2>&1 && ! "$VIT" train --distributed --model nonsense 2>&1 | grep -q "built without MPI"; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
    D="--distributed --threads 1 --log_dir= --model_ema --model_ema_decay 0.9 --layer_decay 0.75"
    for z in 0 1; do
        mpirun --oversubscribe -np 2 "$VIT" train $RUN $D --zero $z --save_dir "$tmp/z$z" >/dev/null 2>"$tmp/z$z.err"
        check "2 ranks, --zero $z, with $D" $?
    done
    mpirun --oversubscribe -np 2 "$VIT" train $RUN $D --zero 1 --save_dir "$tmp/z1r" \
        --resume_from_checkpoint_path "$tmp/z1/ViT-Ti_4-ckpt-step-0000002.safetensors" >/dev/null 2>&1
    check "2 ranks, --zero 1, resumed" $?
    python3 tools/compare_checkpoints.py "$tmp/z0/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/z1/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/cmpz.out" 2>&1
    check "--zero 1 = --zero 0, average included: $(tail -1 "$tmp/cmpz.out")" $?
    python3 tools/compare_checkpoints.py "$tmp/z1/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/z1r/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/cmpz.out" 2>&1
    check "--zero 1 resumed = uninterrupted: $(tail -1 "$tmp/cmpz.out")" $?
else
    echo "cli_ema: the MPI part skipped (vit built without MPI, or mpirun missing)"
fi

# Nonsense values: one-line errors.
S="--synthetic_data --from_scratch $MODEL --batch_size 8 --steps_per_epoch 2 --epochs 1 --save_dir= --log_dir= --seed 1"
for d in 0 1 1.5 -0.2; do
    expect_error "--model_ema_decay $d" "--model_ema_decay $d: must be in (0, 1)" train $S --model_ema --model_ema_decay $d
done
expect_error "--model_ema_decay abc" "--model_ema_decay 'abc': expected a number" train $S --model_ema --model_ema_decay abc
for f in 0 -0.5 1.01; do
    expect_error "--layer_decay $f" "--layer_decay $f: must be in (0, 1]" train $S --layer_decay $f
done
expect_error "--layer_decay x" "--layer_decay 'x': expected a number" train $S --layer_decay x
expect_error "train --ema" "training keeps one with --model_ema" train $S --ema
expect_error "evaluate --ema without --checkpoint" "--ema needs --checkpoint" evaluate --ema --synthetic_data --from_scratch $MODEL
expect_error "evaluate --ema of a checkpoint without an average" "holds no moving average" \
    evaluate --checkpoint "$tmp/noema/ViT-Ti_4-ckpt-final.safetensors" --ema $EVAL
expect_error "export --ema of a checkpoint without an average" "holds no moving average" \
    export --checkpoint "$tmp/noema/ViT-Ti_4-ckpt-final.safetensors" --ema --out "$tmp/x.npz"
finish cli_ema
