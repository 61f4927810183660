#!/bin/sh
# `vit train` with timm's regularisation: --drop_path with --mixup/--cutmix trains, repeats bit
# for bit with the same seed, changes the run, resumes exactly from a mid-epoch checkpoint; the
# other mixing modes and --cutmix_minmax train; --profile traces the new ops; nonsense values
# are one-line errors.
. "$(dirname "$0")/lib.sh"

RUN="--run_name . --synthetic_data --from_scratch --log_dir= --model ViT-Ti_4 --hidden_size 32 --num_layers 3 --num_heads 2
     --mlp_dim 64 --image_size 16 --num_classes 5 --batch_size 8 --grad_accum_steps 2 --epochs 2 --steps_per_epoch 6
     --validation_steps 2 --optimizer adamw --initial_lr 1e-3 --warmup_steps 2 --seed 5 --label_smoothing 0.1 --json"
REG="--drop_path 0.1 --mixup 0.8 --cutmix 1.0"
strip() { sed 's/"seconds": [0-9.]*//; s/"images_per_sec": [0-9.]*//; s/"peak_rss_mib": [0-9.]*//; s/"data_wait_seconds": [0-9.e-]*//; s/"checkpoint": "[^"]*"//' "$1"; }

"$VIT" train $RUN $REG --save_dir= >"$tmp/a.json" 2>"$tmp/a.err"
ra=$?
"$VIT" train $RUN $REG --save_dir= >"$tmp/b.json" 2>"$tmp/b.err"
check "training with $REG" $((ra + $?))
a=$(strip "$tmp/a.json")
b=$(strip "$tmp/b.json")
[ -n "$a" ] && [ "$a" = "$b" ]
check "the same seed repeats the run to 17 digits ($a)" $?
"$VIT" train $RUN --save_dir= >"$tmp/plain.json" 2>/dev/null
p=$(strip "$tmp/plain.json")
[ -n "$p" ] && [ "$p" != "$a" ]
check "drop path and mixing change the run" $?
"$VIT" train $RUN --save_dir= --drop_path 0 --mixup 0 --cutmix 0 --mixup_mode elem >"$tmp/zero.json" 2>/dev/null
[ "$(strip "$tmp/zero.json")" = "$p" ]
check "rate 0 and alphas 0 leave the run unchanged" $?

# Exact resume: the draws are keyed by the run's micro-step counter.
"$VIT" train $RUN $REG --save_dir "$tmp/full" --checkpoint_every_steps 2 >"$tmp/full.json" 2>"$tmp/full.err"
check "the run with checkpoints" $?
mid="$tmp/full/ViT-Ti_4-ckpt-step-0000002.safetensors"
"$VIT" train $RUN $REG --save_dir "$tmp/res" --checkpoint_every_steps 2 --resume_from_checkpoint_path "$mid" \
    >"$tmp/res.json" 2>"$tmp/res.err"
check "resumed from the mid-epoch checkpoint" $?
[ -f "$mid" ] && [ "$(strip "$tmp/full.json")" = "$(strip "$tmp/res.json")" ]
check "the resumed run ends as the uninterrupted one" $?

for extra in "--mixup_mode pair --mixup_prob 0.7" "--mixup_mode elem --mixup_switch_prob 0.2" \
             "--cutmix_minmax 0.25,0.75 --mixup 0 --cutmix 0 --mixup_mode elem" "--mixup 0.2 --cutmix 0 --drop_path 1"; do
    expect_ok "train with $extra" train $RUN --save_dir= --drop_path 0.2 --mixup 0.8 --cutmix 1.0 $extra
done

# --profile: the wrapped backend traces the new ops.
"$VIT" train $RUN $REG --save_dir= --log_dir "$tmp/logs" --profile 2,3 >/dev/null 2>"$tmp/prof.err"
check "--profile with drop path and mixing" $?
python3 tools/check_trace.py "$tmp/logs/profile/trace.rank0.json" --steps 2,3 \
    --ops drop_path,mix_images,xent_mix_forward,xent_mix_backward >"$tmp/trace.out" 2>&1
check "the trace holds drop_path, mix_images and xent_mix spans" $?

expect_error "negative --drop_path" "drop_path" train $RUN --drop_path -0.1
expect_error "--drop_path above 1" "drop_path" train $RUN --drop_path 1.5
expect_error "negative --mixup" "\-\-mixup -1" train $RUN --mixup -1
expect_error "negative --cutmix" "\-\-cutmix -0.5" train $RUN --cutmix -0.5
expect_error "--mixup_prob above 1" "mixup_prob" train $RUN --mixup 0.8 --mixup_prob 1.5
expect_error "negative --mixup_switch_prob" "mixup_switch_prob" train $RUN --mixup 0.8 --mixup_switch_prob -0.2
expect_error "unknown --mixup_mode" "mixup_mode" train $RUN --mixup 0.8 --mixup_mode rows
expect_error "--cutmix_minmax out of order" "cutmix_minmax" train $RUN --cutmix_minmax 0.8,0.2
expect_error "--cutmix_minmax not a pair" "cutmix_minmax" train $RUN --cutmix_minmax 0.5
expect_error "elem mode with an odd batch" "even" train $RUN --mixup 0.8 --mixup_mode elem --batch_size 7
expect_error "pair mode with an odd batch" "even" train $RUN --cutmix 1 --mixup_mode pair --batch_size 5
expect_error "batch mode with an odd batch" "even" train $RUN --mixup 0.8 --batch_size 9
expect_error "a minmax box too narrow for the image" "cutmix_minmax" train $RUN --cutmix_minmax 0.5,0.55
finish cli_regularize
