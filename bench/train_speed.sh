#!/bin/sh
# Training (and inference) speed of vit next to PyTorch on this machine, in one run:
# same model, batch, threads, fp32, synthetic data, AdamW with clipping 1.0.
# usage: bench/train_speed.sh [threads]        (run from the repository root after `make`)
set -e
threads=${1:-$(nproc)}
make -s vit build/bench/gemm_ceiling >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, threads $threads; $(date -u +%Y-%m-%d)"
OMP_NUM_THREADS=$threads build/bench/gemm_ceiling >/tmp/vit_ceiling.$$
sed 's/^/  /' /tmp/vit_ceiling.$$
ceiling=$(sed -n 's/^ceiling: \([0-9.]*\) GFLOP.*/\1/p' /tmp/vit_ceiling.$$)
rm -f /tmp/vit_ceiling.$$

pythons="python3"
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import torch" 2>/dev/null && pythons="$pythons /usr/bin/python3"

# run NAME "VIT FLAGS" "TORCH FLAGS" GFLOP_PER_IMAGE
run() {
    name=$1 vflags=$2 tflags=$3 gflop=$4
    v=$(./vit train --synthetic_data --from_scratch --save_dir= --threads "$threads" --grad_accum_steps 1 --epochs 1 --validation_steps 0 \
        --optimizer adamw --seed 1 --json $vflags 2>/dev/null | sed -n 's/.*"images_per_sec": \([0-9.]*\).*/\1/p')
    line="$name: vit $v img/s ($(awk -v v="$v" -v g="$gflop" -v c="$ceiling" 'BEGIN{printf "%.0f%% of the %s GFLOP/s ceiling", 100*v*g/c, c}'))"
    for py in $pythons; do
        t=$($py tools/bench_torch.py --threads "$threads" $tflags | sed -n 's/.*"images_per_sec": \([0-9.]*\).*"torch": "\([^"]*\)".*/\1 \2/p')
        line="$line; torch $(echo "$t" | cut -d' ' -f2) $(echo "$t" | cut -d' ' -f1) img/s, ratio $(awk -v v="$v" -v t="${t%% *}" 'BEGIN{printf "%.2f", v/t}')"
    done
    echo "$line"
}

gflop_of() { ./vit info --json "$@" | sed -n 's/.*"training_gflops_per_image": \([0-9.]*\).*/\1/p'; }

DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10 --dropout 0"
run "demo config, batch 128" "$DEMO --batch_size 128 --steps_per_epoch 30" \
    "--hidden 64 --layers 4 --heads 4 --mlp 256 --patch 4 --image 28 --channels 1 --classes 10 --dropout 0 --batch 128 --steps 20 --warmup 3" \
    "$(gflop_of $DEMO)"
B16="--model ViT-B_16 --image_size 224 --dropout 0.1"
run "ViT-B/16 224, batch 8" "$B16 --batch_size 8 --steps_per_epoch 5" \
    "--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3 --classes 1000 --dropout 0.1 --batch 8 --steps 4 --warmup 1" \
    "$(gflop_of $B16)"
