#!/bin/sh
# The CPU benchmark of record, in one run on one machine: vit next to PyTorch from pip and,
# where installed, Debian's python3-torch (/usr/bin/python3), same model, batch, threads,
# AdamW with clipping 1.0, synthetic data:
#   ViT-B/16 224 training, batch 8, fp32 and bf16 (PyTorch: CPU autocast to bfloat16);
#   ViT-B/16 224 inference, batch 32, bf16 and fp32;
#   the demo config (Fashion-MNIST ViT), training at batch 128, fp32 and bf16;
# each with vit's fraction of the matrix-product ceiling measured at the start
# (build/bench/gemm_ceiling: fp32 through the backend, and oneDNN's native bf16 where the CPU
# has it). A PyTorch run that does not finish in TORCH_LIMIT seconds (default 300) is
# reported as "none", with the rate it stayed below.
# usage: bench/cpu_speed.sh [threads]        (from the repository root)
# Debian's PyTorch multiplies through the system BLAS (libblas.so.3): with only the reference
# BLAS installed it is 10-30x slower; install libopenblas0-pthread for a fair comparison (the
# script prints which BLAS it found).
threads=${1:-$(nproc)}
limit=${TORCH_LIMIT:-300}
export OPENBLAS_NUM_THREADS=$threads
make -s vit build/bench/gemm_ceiling >/dev/null || exit 1
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, threads $threads," \
     "avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)," \
     "amx: $(grep -qw amx_bf16 /proc/cpuinfo && echo yes || echo no); $(date -u '+%Y-%m-%d %H:%M UTC')"
ceil=$(OMP_NUM_THREADS=$threads build/bench/gemm_ceiling)
echo "$ceil" | sed 's/^/  /'
fp32_ceiling=$(echo "$ceil" | sed -n 's/^ceiling: \([0-9.]*\) GFLOP.*/\1/p')
bf16_ceiling=$(echo "$ceil" | sed -n 's/^bf16 ceiling: \([0-9.]*\) GFLOP.*/\1/p')

# Interpreters with their PyTorch: pip's in python3, Debian's in /usr/bin/python3.
torches=""
for py in python3 /usr/bin/python3; do
    v=$($py -c "import torch; print(torch.__version__)" 2>/dev/null) || continue
    case " $torches " in *"=$v "*) continue ;; esac  # the same install seen twice
    torches="$torches $py=$v"
done
echo "PyTorch:${torches:- none found}; system BLAS: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo none)"

field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
gflop() { ./vit info --json $1 | field "$2"; }

# row NAME DTYPE VIT_IMG_S GFLOP_PER_IMAGE "TORCH ARGS" IMAGES_TIMED
row() {
    name=$1 dtype=$2 v=$3 g=$4 targs=$5 images=$6
    c=$fp32_ceiling; [ "$dtype" = bf16 ] && [ -n "$bf16_ceiling" ] && c=$bf16_ceiling
    line=$(awk -v v="$v" -v g="$g" -v c="$c" -v n="$name" -v d="$dtype" \
        'BEGIN { printf "| %s | %s | %s | %.0f%% of %s GFLOP/s", n, d, (v > 0 ? v : "failed"), 100 * v * g / c, c }')
    for pt in $torches; do
        py=${pt%%=*} ver=${pt#*=}
        tb=""; [ "$dtype" = bf16 ] && tb=--bf16
        t=$(timeout "$limit" $py tools/bench_torch.py --threads "$threads" $targs $tb 2>/dev/null | field images_per_sec)
        if [ -n "$t" ]; then
            line="$line | torch $ver $t | $(awk -v v="$v" -v t="$t" 'BEGIN { printf "%.2f", v / t }')"
        else
            line="$line | torch $ver none in ${limit} s (< $(awk -v n="$images" -v l="$limit" 'BEGIN { printf "%.3f", n / l }')) | > $(awk -v v="$v" -v n="$images" -v l="$limit" 'BEGIN { printf "%.1f", v * l / n }')"
        fi
    done
    echo "$line"
}

vit_train() {  # vit_train DTYPE FLAGS
    ./vit train --synthetic_data --from_scratch --save_dir= --log_dir= --threads "$threads" --grad_accum_steps 1 \
        --epochs 1 --validation_steps 0 --optimizer adamw --seed 1 --json -d "$1" $2 2>/dev/null | field images_per_sec
}
vit_infer() {  # vit_infer DTYPE FLAGS
    ./vit evaluate --synthetic_data --from_scratch --threads "$threads" --seed 1 --json -d "$1" $2 2>/dev/null |
        field images_per_sec
}

echo "| workload | dtype | vit img/s | vit, fraction of ceiling | PyTorch img/s | vit / PyTorch | ... |"
echo "|---|---|---|---|---|---|---|"
B16="--model ViT-B_16 --image_size 224"
TB16="--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3 --classes 1000"
g_train=$(gflop "$B16" training_gflops_per_image)
g_fwd=$(gflop "$B16" forward_gflops_per_image)
for d in fp32 bf16; do
    row "ViT-B/16 224 training, batch 8" $d "$(vit_train $d "$B16 --dropout 0.1 --batch_size 8 --steps_per_epoch 5")" \
        "$g_train" "$TB16 --dropout 0.1 --batch 8 --steps 3 --warmup 1" 32
done
for d in bf16 fp32; do
    row "ViT-B/16 224 inference, batch 32" $d "$(vit_infer $d "$B16 --batch_size 32 --validation_steps 4")" \
        "$g_fwd" "$TB16 --dropout 0 --batch 32 --steps 3 --warmup 1 --inference" 128
done
DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10"
TDEMO="--hidden 64 --layers 4 --heads 4 --mlp 256 --patch 4 --image 28 --channels 1 --classes 10"
g_demo=$(gflop "$DEMO" training_gflops_per_image)
for d in fp32 bf16; do
    row "demo config training, batch 128" $d "$(vit_train $d "$DEMO --dropout 0 --batch_size 128 --steps_per_epoch 30")" \
        "$g_demo" "$TDEMO --dropout 0 --batch 128 --steps 20 --warmup 3" 2560
done
