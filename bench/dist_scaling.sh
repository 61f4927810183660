#!/bin/sh
# Data-parallel scaling on this machine: 1 process with 1 thread against 2 MPI ranks with
# 1 thread each (global batch fixed), for the demo config and ViT-B/16 at 224; images/s,
# the speed-up, and the share of the run rank 0 spent blocked on the gradient all-reduce.
# usage: bench/dist_scaling.sh        (run from the repository root after `make`)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
run() {  # run NAME FLAGS
    common="--synthetic_data --from_scratch --save_dir= --log_dir= --threads 1 --grad_accum_steps 1 --epochs 1
            --validation_steps 0 --optimizer adamw --seed 1 --json"
    one=$(./vit train $common $2 2>/dev/null)
    two=$(mpirun --oversubscribe -np 2 --bind-to core ./vit train $common $2 --distributed 2>/dev/null)
    v1=$(echo "$one" | field images_per_sec)
    v2=$(echo "$two" | field images_per_sec)
    w=$(echo "$two" | field allreduce_wait_seconds)
    t=$(echo "$two" | field seconds)
    awk -v n="$1" -v a="$v1" -v b="$v2" -v w="$w" -v t="$t" 'BEGIN {
        printf "%s: 1 rank %.2f img/s, 2 ranks %.2f img/s, speed-up %.2fx (efficiency %.0f%%); all-reduce wait %.2f s of %.2f s (%.1f%%)\n",
               n, a, b, b / a, 50 * b / a, w, t, 100 * w / t }'
}
DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10 --dropout 0"
run "demo config, global batch 128" "$DEMO --batch_size 128 --steps_per_epoch 40"
run "ViT-B/16 224, global batch 8" "--model ViT-B_16 --image_size 224 --dropout 0.1 --batch_size 8 --steps_per_epoch 4"
