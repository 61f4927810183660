#!/bin/sh
# Data-parallel scaling on this machine: 1 process with 1 thread against 2 MPI ranks with
# 1 thread each (global batch fixed), for the demo config and ViT-B/16 at 224; images/s,
# the speed-up, and the share of the run rank 0 spent blocked on the gradient all-reduce;
# next to PyTorch DistributedDataParallel (gloo) doing the same with 1 and 2 processes.
# usage: bench/dist_scaling.sh        (run from the repository root after `make`)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
run() {  # run NAME "VIT FLAGS" "TORCH FLAGS"
    common="--synthetic_data --from_scratch --save_dir= --log_dir= --threads 1 --grad_accum_steps 1 --epochs 1
            --validation_steps 0 --optimizer adamw --seed 1 --json"
    one=$(./vit train $common $2 2>/dev/null)
    two=$(mpirun --oversubscribe -np 2 --bind-to core ./vit train $common $2 --distributed 2>/dev/null)
    v1=$(echo "$one" | field images_per_sec)
    v2=$(echo "$two" | field images_per_sec)
    w=$(echo "$two" | field allreduce_wait_seconds)
    t=$(echo "$two" | field seconds)
    p1=$(python3 tools/bench_torch.py --threads 1 $3 | field images_per_sec)
    p2=$(python3 tools/bench_torch.py --threads 1 --ddp 2 $3 | field images_per_sec)
    awk -v n="$1" -v a="$v1" -v b="$v2" -v w="$w" -v t="$t" -v c="$p1" -v d="$p2" 'BEGIN {
        printf "%s: vit 1 rank %.2f img/s, 2 ranks %.2f img/s, speed-up %.2fx (efficiency %.0f%%); all-reduce wait %.2f s of %.2f s (%.1f%%)\n",
               n, a, b, b / a, 50 * b / a, w, t, 100 * w / t
        printf "%s: torch DDP 1 process %.2f img/s, 2 processes %.2f img/s, speed-up %.2fx; vit/torch at 2 ranks %.2fx\n",
               n, c, d, d / c, b / d }'
}
DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10 --dropout 0"
run "demo config, global batch 128" "$DEMO --batch_size 128 --steps_per_epoch 40" \
    "--hidden 64 --layers 4 --heads 4 --mlp 256 --patch 4 --image 28 --channels 1 --classes 10 --dropout 0 --batch 128 --steps 30 --warmup 3"
run "ViT-B/16 224, global batch 8" "--model ViT-B_16 --image_size 224 --dropout 0.1 --batch_size 8 --steps_per_epoch 4" \
    "--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3 --classes 1000 --dropout 0.1 --batch 8 --steps 3 --warmup 1"
