#!/bin/sh
# From-scratch training, vit against timm, on Fashion-MNIST: the demo model (tests/demo.flags:
# ViT-Ti_4 at hidden 64, 4 layers, 4 heads, MLP 256, patch 4, 28x28x1, 10 classes; AdamW 2e-3,
# weight decay 0.05 on kernels, WarmupCosine with 300 warm-up updates, clipping 1.0, batch 32,
# dropout 0) trained with two recipes at one epoch budget, on both systems:
#   plain  the demo recipe as it is;
#   deit   the DeiT-style recipe: drop path 0.1, mixup 0.8 / CutMix 1.0 (prob 1, switch 0.5, mode
#          batch) with label smoothing 0.1, RandAugment rand-m6-n2-mstd0.5, random erasing 0.25
#          (pixel), weight EMA 0.999 (no EMA warm-up), no layer decay.
# vit runs `./vit train $(cat tests/demo.flags)` plus the flags below; timm runs
# tools/from_scratch_timm.py, which builds the same model and recipe from timm's own parts (its
# header lists where the two sides differ). The four runs go interleaved (vit plain, timm plain,
# vit deit, timm deit) so that load from other users of the machine falls on both systems alike.
# Each run's JSON is appended as one line to $RESULTS; a markdown table of the top-1 of the
# weights and of the EMA on all of t10k after the last epoch, and the wall time, ends the output.
#
# usage: [env] sh bench/from_scratch.sh            (from anywhere; runs in the repository root)
#   EPOCHS=10  SEED=0  THREADS=2      epoch budget, seed, compute threads of each run
#   RESULTS=/tmp/vitc_from_scratch.jsonl   where the JSON lines are appended
#   LOGS=/tmp/vitc_from_scratch_logs       each run's progress (stderr), one file per run
#   STEPS_PER_EPOCH=N VALIDATION_STEPS=M   smoke checks only: N updates per epoch, M validation
#                                          batches of 32, on both sides (figures not for the record)
#   TIMM_WORKERS=0                     DataLoader workers for timm's per-image augmentation
#   PYTHON=python3                     the interpreter with torch and timm
#   VIT=./vit                          the vit binary
# vit writes no checkpoints and no TensorBoard logs (--save_dir= --log_dir=).
cd "$(dirname "$0")/.." || exit 1
epochs=${EPOCHS:-10}
seed=${SEED:-0}
threads=${THREADS:-2}
py=${PYTHON:-python3}
vit=${VIT:-./vit}
results=${RESULTS:-/tmp/vitc_from_scratch.jsonl}
logs=${LOGS:-/tmp/vitc_from_scratch_logs}
workers=${TIMM_WORKERS:-0}
[ -x "$vit" ] || { echo "$vit is missing: build it first (make)" >&2; exit 1; }
[ -f tests/demo.flags ] || { echo "tests/demo.flags is missing" >&2; exit 1; }
mkdir -p "$logs" || exit 1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# Smoke caps, the same on both sides.
cap=""
[ -n "$STEPS_PER_EPOCH" ] && cap="$cap --steps_per_epoch $STEPS_PER_EPOCH"
[ -n "$VALIDATION_STEPS" ] && cap="$cap --validation_steps $VALIDATION_STEPS"
cap=${cap# }

# The DeiT-style recipe in vit's flags. tests/demo.flags has --deterministic, which turns the
# loader's augmentation (--aa, --reprob) off, so the deit runs turn it back off; the data order
# is a seeded shuffle either way. --model_ema_warmup stays at its default (off).
VIT_DEIT="--deterministic=false --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --mixup_prob 1.0 --mixup_switch_prob 0.5
 --mixup_mode batch --label_smoothing 0.1 --aa rand-m6-n2-mstd0.5 --reprob 0.25 --remode pixel --recount 1
 --model_ema --model_ema_decay 0.999"

date=$(date -u '+%Y-%m-%d %H:%M UTC')
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
[ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit+dirty"
echo "date: $date"
echo "CPU: $cpu, $(nproc) cores; threads $threads per run"
echo "vit: $("$vit" --version 2>&1 | head -n 1) (commit ${commit:-unknown})"
echo "timm: $($py -c 'import timm, torch; print(timm.__version__, "/ torch", torch.__version__)' 2>&1 | tail -n 1)"
echo "epochs $epochs, seed $seed${cap:+; SMOKE caps: $cap (figures not for the record)}"
echo "results: $results; progress: $logs/<system>_<recipe>.log"

field() { sed -n "s/.*\"$1\": \([-0-9.eE]*\).*/\1/p"; }

# row SYSTEM RECIPE JSON: one results line (the run's own JSON under "result", or null)
row() {
    printf '{"system": "%s", "recipe": "%s", "epochs": %s, "seed": %s, "threads": %s, "date": "%s", "cpu": "%s", ' \
        "$1" "$2" "$epochs" "$seed" "$threads" "$date" "$cpu"
    printf '"smoke": "%s", "result": %s}\n' "$cap" "${3:-null}"
}

run() {  # run SYSTEM RECIPE
    log="$logs/$1_$2.log"
    echo "running $1 $2 ..." >&2
    if [ "$1" = vit ]; then
        extra=""; [ "$2" = deit ] && extra=$VIT_DEIT
        # shellcheck disable=SC2046,SC2086
        "$vit" train $(cat tests/demo.flags) --epochs "$epochs" --seed "$seed" --threads "$threads" --json \
            --save_dir= --log_dir= $cap $extra >"$tmp/out" 2>"$log"
    else
        # shellcheck disable=SC2086
        $py tools/from_scratch_timm.py --recipe "$2" --epochs "$epochs" --seed "$seed" --threads "$threads" \
            --workers "$workers" $cap >"$tmp/out" 2>"$log"
    fi
    rc=$?
    json=$(grep '^{' "$tmp/out" | tail -n 1)
    if [ "$rc" != 0 ] || [ -z "$json" ]; then
        echo "  $1 $2 failed (exit $rc): $(tail -n 1 "$log")" >&2
        json=""
    fi
    row "$1" "$2" "$json" | tee -a "$results" >>"$tmp/rows"
}

: >"$tmp/rows"
for recipe in plain deit; do
    for system in vit timm; do
        run "$system" "$recipe"
    done
done

pct() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.2f", 100 * v }'; }
echo
echo "Fashion-MNIST from scratch, $epochs epochs, seed $seed, $threads threads, $cpu, $date"
echo
echo "| system | recipe | epochs | top-1 (live) | top-1 (EMA) | seconds |"
echo "|---|---|---|---|---|---|"
while IFS= read -r line; do
    sys=$(echo "$line" | sed -n 's/^{"system": "\([a-z]*\)".*/\1/p')
    rec=$(echo "$line" | sed -n 's/^{"system": "[a-z]*", "recipe": "\([a-z]*\)".*/\1/p')
    res=${line#*\"result\": }
    if [ "$res" = "null}" ]; then
        echo "| $sys | $rec | $epochs | failed | | |"
        continue
    fi
    live=$(echo "$res" | field val_top1)
    # vit's --json calls it val_ema_top1, the timm tool ema_val_top1
    ema=$(echo "$res" | field val_ema_top1)
    [ -n "$ema" ] || ema=$(echo "$res" | field ema_val_top1)
    secs=$(echo "$res" | field seconds)
    echo "| $sys | $rec | $epochs | $(pct "$live") | $(pct "$ema") | $(awk -v s="$secs" 'BEGIN { printf "%.0f", s }') |"
done <"$tmp/rows"
