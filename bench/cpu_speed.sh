#!/bin/sh
# The CPU benchmark of record: vit against what PyTorch users run, timm's VisionTransformer
# (tools/bench_timm.py), same model shapes, batch, threads, optimizer, clipping 1.0, dropout
# sites and synthetic data, in one run on one machine:
#   ViT-B/16 224 training, batch 8, dropout 0.1;  ViT-B/16 224 inference, batch 32;
#   the demo config (Fashion-MNIST ViT) training, batch 128, dropout 0;
# vit in fp32 and bf16; timm eager fp32, eager under CPU autocast to bf16, and torch.compile'd
# in both dtypes. All variants of a workload run interleaved, REPEATS times, so that load from
# other users of the machine spreads over them alike; medians are reported. Each vit row is
# compared with the best PyTorch figure for the workload, whichever dtype and mode won, and
# given as a fraction of the matrix-product ceiling measured at the start
# (build/bench/gemm_ceiling; the bf16 ceiling for bf16 rows where the CPU has one).
# usage: [env] sh bench/cpu_speed.sh [threads]           (from the repository root)
#   REPEATS=3          interleaved repeats (median of these is reported)
#   QUICK=1            smoke test: 1 repeat, few steps (figures not fit for the record)
#   OPTIMIZER=adamw    adamw | sgd, for vit and PyTorch alike
#   TORCH_LIMIT=600    seconds per PyTorch run (compilation included); past it: "none in N s"
#   TORCH_COMPILE=1    0 skips the torch.compile runs; COMPILE_DTYPES="fp32 bf16" picks them
#   PYTHON=python3     the interpreter with torch and timm;  BUILD=0 skips `make`
threads=${1:-$(nproc)}
limit=${TORCH_LIMIT:-600}
repeats=${REPEATS:-3}
quick=${QUICK:-0}
opt=${OPTIMIZER:-adamw}
py=${PYTHON:-python3}
compile_dtypes=${COMPILE_DTYPES:-fp32 bf16}
[ "${TORCH_COMPILE:-1}" = 0 ] && compile_dtypes=""
[ "$quick" = 1 ] && repeats=1
case $opt in
adamw) vit_opt="--optimizer adamw --weight_decay 0.05" ;;  # bench_timm's AdamW decay (vit's default is 0.01)
sgd) vit_opt="--optimizer sgd --momentum 0.9" ;;
*) echo "OPTIMIZER=$opt: adamw or sgd" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS="$threads"
if [ "${BUILD:-1}" != 0 ]; then make -s vit build/bench/gemm_ceiling >/dev/null || exit 1; fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
sfield() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p"; }
has() { grep -qw "$1" /proc/cpuinfo && echo yes || echo no; }

# --- the machine and the libraries
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "CPU: $(sed -n 's/^vendor_id[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)," \
     "$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1), $(nproc) cores, threads $threads;" \
     "avx512f $(has avx512f), avx512_bf16 $(has avx512_bf16), amx_bf16 $(has amx_bf16)"
DEMO="--model ViT-Ti_4 --hidden_size 64 --num_layers 4 --num_heads 4 --mlp_dim 256 --image_size 28 --channels 1 --num_classes 10"
# What vit says about its matrix library, else which one it is linked against.
lib=$({ ./vit --version 2>&1; ./vit train --synthetic_data --from_scratch --save_dir= --log_dir= $DEMO --threads 1 \
        --batch_size 8 --epochs 1 --steps_per_epoch 1 --validation_steps 0 2>&1; } |
      grep -iE 'onednn|dnnl|mkl|blas' | head -n 1)
if [ -z "$lib" ]; then
    for so in $(ldd ./vit | awk '/libdnnl|libmkl/ { print $3 }'); do
        lib="$lib $(basename "$so") -> $(readlink -f "$so")"
    done
    lib="(not printed by vit) linked:${lib:- no libdnnl/libmkl}"
fi
echo "vit matrix library: $lib"
info=$($py tools/bench_timm.py --info 2>/dev/null)
if [ -n "$info" ]; then
    echo "PyTorch $(echo "$info" | sfield torch), timm $(echo "$info" | sfield timm);" \
         "$(echo "$info" | sfield onednn), $(echo "$info" | sfield mkl)" \
         "(oneDNN native bf16: $(echo "$info" | sed -n 's/.*"mkldnn_bf16": \([a-z]*\).*/\1/p'))"
else
    echo "PyTorch/timm: not importable by $py (PyTorch columns will read failed)"
fi
echo "optimizer $opt, clipping 1.0; repeats $repeats$( [ "$quick" = 1 ] && echo ' (QUICK: smoke test only)');" \
     "PyTorch limit $limit s; compiled: ${compile_dtypes:-skipped}"

# The ceiling, read leniently: "ceiling: X GFLOP/s" (fp32) and "bf16 ceiling: X ..." lines.
ceil=$(OMP_NUM_THREADS=$threads build/bench/gemm_ceiling 2>&1)
echo "$ceil" | sed 's/^/  /'
ceiling_of() {  # ceiling_of fp32|bf16: the number right after "ceiling:" on the matching line
    echo "$ceil" | awk -v want="$1" '{ l = tolower($0) } l ~ /ceiling/ && ((l ~ /bf16/) == (want == "bf16")) {
        sub(/.*ceiling[: =]*/, "", l); if (match(l, /^[0-9]+(\.[0-9]+)?/)) { print substr(l, 1, RLENGTH); exit } }'
}
fp32_ceiling=$(ceiling_of fp32)
bf16_ceiling=$(ceiling_of bf16)

# --- runs; each appends its img/s (or "none" past the limit, or "failed") to the list res_<key>
record() { eval "res_$1=\"\${res_$1} $2\""; }

vit_run() {  # vit_run train|evaluate DTYPE FLAGS
    if [ "$1" = train ]; then
        ./vit train --synthetic_data --from_scratch --save_dir= --log_dir= --threads "$threads" --grad_accum_steps 1 \
            --epochs 1 --validation_steps 0 $vit_opt --clip_norm 1.0 --seed 1 --json -d "$2" $3 2>"$tmp/err"
    else
        ./vit evaluate --synthetic_data --from_scratch --threads "$threads" --seed 1 --json -d "$2" $3 2>"$tmp/err"
    fi | field images_per_sec
}

torch_run() {  # torch_run ARGS: bench_timm.py under the time limit; prints img/s, "none" or "failed"
    timeout -k 10 "$limit" $py tools/bench_timm.py --threads "$threads" --optimizer "$opt" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    v=$(field images_per_sec <"$tmp/out")
    if [ -n "$v" ]; then echo "$v"; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo none; else echo failed; fi
}
why() {  # why the last PyTorch run failed: its JSON "error", else the last error line it printed
    err=$(sfield error <"$tmp/out")
    [ -n "$err" ] || err=$(grep -E 'Error|error' "$tmp/err" | tail -n 1 | cut -c1-200)
}

# workload KEY KIND(train|evaluate) VIT_FLAGS TIMM_FLAGS: all variants, interleaved, REPEATS times
workload() {
    key=$1 kind=$2 vflags=$3 tflags=$4
    [ "$kind" = evaluate ] && tflags="$tflags --inference"
    rep=1
    while [ "$rep" -le "$repeats" ]; do
        for d in fp32 bf16; do
            v=$(vit_run "$kind" "$d" "$vflags")
            if [ -z "$v" ]; then v=failed; err=$(tail -n 1 "$tmp/err"); else err=""; fi
            record "${key}_vit_$d" "$v"
            echo "  raw $key rep $rep vit $d: $v${err:+ ($err)}"
        done
        for variant in eager_fp32 eager_bf16 $(for d in $compile_dtypes; do echo "compile_$d"; done); do
            d=${variant#*_} c=""; [ "${variant%%_*}" = compile ] && c=--compile
            v=$(torch_run $tflags --dtype "$d" $c)
            err=""
            [ "$v" = failed ] && why
            [ "$v" = none ] && err="ran past $limit s"
            cs=$(field compile_s <"$tmp/out")  # the compiled runs' warm-up, compilation included
            [ -n "$cs" ] && err="${err:+$err; }compile and warm-up $cs s"
            record "${key}_$variant" "$v"
            echo "  raw $key rep $rep timm $variant: $v${err:+ ($err)}"
        done
        rep=$((rep + 1))
    done
}
# summary KEY: the median of the successful runs, else "none in N s" or "failed"
summary() {
    eval "list=\$res_$1"
    n=0 ok=""
    for x in $list; do n=$((n + 1)); case $x in none | failed) ;; *) ok="$ok $x" ;; esac; done
    m=$(printf '%s\n' $ok | sort -n | awk 'NF { a[++k] = $1 } END { if (k) print (k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2) }')
    k=$(printf '%s\n' $ok | grep -c .)
    if [ -n "$m" ]; then
        [ "$k" -lt "$n" ] && m="$m ($k of $n)"
        echo "$m"
    elif echo "$list" | grep -qw none; then echo "none in $limit s"
    else echo failed; fi
}

if [ "$quick" = 1 ]; then
    b16_train=2 b16_warm=1 b16_eval=2 demo_steps=5 demo_warm=2
else
    b16_train=5 b16_warm=2 b16_eval=4 demo_steps=30 demo_warm=3
fi
B16="--model ViT-B_16 --image_size 224"
TB16="--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3 --classes 1000"
TDEMO="--hidden 64 --layers 4 --heads 4 --mlp 256 --patch 4 --image 28 --channels 1 --classes 10"
g_train=$(./vit info --json $B16 | field training_gflops_per_image)
g_fwd=$(./vit info --json $B16 | field forward_gflops_per_image)
g_demo=$(./vit info --json $DEMO | field training_gflops_per_image)

echo "raw img/s per run:"
# vit train times the steps after its first; vit evaluate times all its batches, the first included.
workload b16t train "$B16 --dropout 0.1 --batch_size 8 --steps_per_epoch $((b16_train + 1))" \
    "$TB16 --dropout 0.1 --batch 8 --steps $b16_train --warmup $b16_warm"
workload b16i evaluate "$B16 --batch_size 32 --validation_steps $b16_eval" \
    "$TB16 --batch 32 --steps $b16_eval --warmup 1"
workload demo train "$DEMO --dropout 0 --batch_size 128 --steps_per_epoch $((demo_steps + 1))" \
    "$TDEMO --dropout 0 --batch 128 --steps $demo_steps --warmup $demo_warm"

# --- the table
variants="eager_fp32 eager_bf16 $(for d in $compile_dtypes; do echo "compile_$d"; done)"
label() { case $1 in eager_fp32) echo "timm fp32" ;; eager_bf16) echo "timm bf16" ;; *) echo "timm ${1#*_} compiled" ;; esac; }
head="| workload | dtype | vit img/s | vit, fraction of ceiling"
for x in $variants; do head="$head | $(label "$x")"; done
echo
echo "$head | best PyTorch | vit / best PyTorch |"
echo "$head | x | x |" | sed 's/ [^|]*|/---|/g'
table_row() {  # table_row KEY NAME GFLOP_PER_IMAGE
    best="" bestname=""
    cells=""
    for x in $variants; do
        s=$(summary "${1}_$x")
        cells="$cells | $s"
        t=${s%% *}
        case $t in none | failed) continue ;; esac
        if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$t bestname=$(label "$x"); fi
    done
    for d in fp32 bf16; do
        v=$(summary "${1}_vit_$d") vn=${v%% *}
        c=$fp32_ceiling; [ "$d" = bf16 ] && [ -n "$bf16_ceiling" ] && c=$bf16_ceiling
        case $vn in
        none | failed) frac="-" ratio="-" ;;
        *)
            frac=$(awk -v v="$vn" -v g="$3" -v c="$c" 'BEGIN { if (c > 0 && g > 0) printf "%.0f%% of %s GFLOP/s", 100 * v * g / c, c; else print "-" }')
            ratio=$(awk -v v="$vn" -v t="$best" 'BEGIN { if (t > 0) printf "%.2f", v / t; else print "-" }') ;;
        esac
        echo "| $2 | $d | $v | $frac$cells | ${best:-none}${bestname:+ ($bestname)} | $ratio |"
    done
}
table_row b16t "ViT-B/16 224 training, batch 8" "$g_train"
table_row b16i "ViT-B/16 224 inference, batch 32" "$g_fwd"
table_row demo "demo config training, batch 128" "$g_demo"
