#!/bin/sh
# bf16 training speed of vit (-d bf16) next to PyTorch's CPU autocast to bfloat16, same
# model, batch, threads, AdamW, synthetic data, in one run; fp32 of both for reference.
# usage: bench/bf16_speed.sh [threads]        (run from the repository root after `make`)
threads=${1:-$(nproc)}
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, threads $threads, bf16 instructions: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no); $(date -u +%Y-%m-%d)"
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
run() {  # run NAME "VIT FLAGS" "TORCH FLAGS"
    for d in fp32 bf16; do
        v=$(./vit train --synthetic_data --from_scratch --save_dir= --log_dir= --threads "$threads" --grad_accum_steps 1 \
            --epochs 1 --validation_steps 0 --optimizer adamw --seed 1 --json -d $d $2 2>/dev/null | field images_per_sec)
        tb=""; [ $d = bf16 ] && tb=--bf16
        t=$(timeout 600 python3 tools/bench_torch.py --threads "$threads" $3 $tb | field images_per_sec)
        awk -v n="$1" -v d=$d -v v="$v" -v t="$t" 'BEGIN { printf "%s, %s: vit %s img/s, torch %s img/s, ratio %.2f\n", n, d, v, t, (t > 0 ? v / t : 0) }'
    done
}
DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10 --dropout 0"
run "demo config, batch 128" "$DEMO --batch_size 128 --steps_per_epoch 30" \
    "--hidden 64 --layers 4 --heads 4 --mlp 256 --patch 4 --image 28 --channels 1 --classes 10 --dropout 0 --batch 128 --steps 20 --warmup 3"
run "ViT-B/16 224, batch 8" "--model ViT-B_16 --image_size 224 --dropout 0.1 --batch_size 8 --steps_per_epoch 4" \
    "--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3 --classes 1000 --dropout 0.1 --batch 8 --steps 2 --warmup 1"
