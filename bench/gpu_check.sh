#!/usr/bin/env bash
# One command for a lent GPU machine: builds vit with the CUDA backend, runs the GPU tests
# (build/tests/test_cuda: every op and a whole training step against the CPU backend),
# times ViT-B/16 training at 224 in bf16 with the largest batch that fits, then the same
# training in PyTorch (timm, bf16 autocast, AdamW; eager and torch.compile) and the measured
# bf16 matrix-product ceiling; then, as the budget allows, inference (batch 512), training
# from real JPEGs (an image folder; vit's loader against torchvision's DataLoader), vit's
# per-op profile, and ViT-B/16 at 384 and ViT-L/16 at 224 against PyTorch eager; and prints
# a short table last. Each phase runs under a
# timeout; a failing phase prints its error and the script goes on. The opt-in CUDA paths
# (docs/gpu.md: VIT_CUDA_ATTENTION=simt|wmma|mma|cudnn, VIT_CUDA_EPILOGUES=1, VIT_CUDA_BF16_ACTS=1,
# VIT_CUDA_GRAPH=1) are checked by
# test_cuda (each attention path, the epilogue products) and by test_backend_ops' attention and
# gemm cases with cuDNN attention and epilogues on, and the training timing runs again with
# VIT_CUDA_ATTENTION=cudnn and with VIT_CUDA_BF16_ACTS=1; cuDNN is CUDA's, or the nvidia-cudnn wheel PyTorch loads. The whole run keeps
# within GPU_CHECK_BUDGET seconds (default 540: run it with the device call's timeout at 600). Logs: $OUT/gpu_check_logs.tar.gz.
#
#   bash bench/gpu_check.sh             on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --bundle    on the dev machine, before the call (see below)
#
# The GPU machine's image has CUDA, PyTorch and timm, but possibly not the Debian packages
# vit links (oneDNN, libjpeg, libpng, libzip, protobuf-c); nothing can be installed there.
# The script names what is missing and then uses a prebuilt bundle when one was carried:
# `--bundle` builds vit and test_cuda here (portable -march=x86-64-v3, with MPI and NCCL when
# this machine has them, in build/gpu-bundle/) and packs them with their non-system libraries
# into build/gpu-bundle.tar.gz (about 18 MB; ignored by git like all of build/): name that path
# in the device call's carry. Open MPI's libraries go to lib-mpi/, used there only when the
# machine has no libmpi of its own; NCCL is not packed (its pip wheel, nvidia-nccl-cu13, is
# found at run time like cuBLASLt). The multi-GPU phase (tests/cli_gpu_dist.sh) needs an
# Open MPI mpirun there and is skipped with a line without one.
# Knobs: VIT_BATCHES ("256 128 64"), VIT_STEPS (10), TORCH_STEPS (10), GPU_CHECK_BUDGET.
set -u
cd "$(dirname "$0")/.." || exit 1
BUNDLE=build/gpu-bundle.tar.gz

if [ "${1:-}" = "--bundle" ]; then
    B=build/gpu-bundle
    FLAGS=(CUDA=1 BUILD=$B "OPT=-O3 -march=x86-64-v3")  # MPI and NCCL as found here
    make -j"$(nproc)" "${FLAGS[@]}" $B/libvit.a $B/src/main.o $B/tests/test_cuda $B/tests/test_backend_ops || exit 1
    # Link vit as the Makefile does, but into the bundle folder (./vit stays as it is).
    printf '%s/vit-bundle: %s/src/main.o %s/libvit.a\n\t$(CC) -o $@ $^ $(LDLIBS)\n' $B $B $B |
        make -f Makefile -f - "${FLAGS[@]}" $B/vit-bundle || exit 1
    stage=$(mktemp -d)
    mkdir -p "$stage/vit-bundle/lib" "$stage/vit-bundle/lib-mpi"
    cp $B/vit-bundle "$stage/vit-bundle/vit"
    cp $B/tests/test_cuda "$stage/vit-bundle/test_cuda"
    cp $B/tests/test_backend_ops "$stage/vit-bundle/test_backend_ops"
    # Everything they load except the C library, the C++ runtime, CUDA, cuDNN and NCCL (all on
    # the GPU machine; cuDNN's engine libraries are hundreds of MB); Open MPI's own libraries
    # apart, since a machine with an mpirun needs its own.
    for lib in $(ldd $B/vit-bundle $B/tests/test_cuda $B/tests/test_backend_ops | awk '/=> \// {print $3}' | sort -u); do
        case $(basename "$lib") in
        libc.so* | libm.so* | libpthread* | libdl.so* | librt.so* | ld-linux* | libstdc++* | libgcc_s* | libcuda* | \
            libcublas* | libcudart* | libnccl* | libcudnn*) ;;
        libmpi* | libopen-rte* | libopen-pal* | libhwloc* | libevent* | libpmix* | libudev*)
            cp -L "$lib" "$stage/vit-bundle/lib-mpi/" ;;
        *) cp -L "$lib" "$stage/vit-bundle/lib/" ;;
        esac
    done
    # Real JPEGs for the real-data phases: 40 per class of tools/make_bench_jpegs.py's set
    # (about 19 MB; made here when missing and its pip packages are installed).
    J=/tmp/vitc_bench_jpegs
    [ -d $J/train ] || python3 tools/make_bench_jpegs.py $J --count 2000 >/dev/null 2>&1 ||
        echo "note: no JPEG set ($J; pip install scikit-learn scikit-image pillow): real-data phases will be skipped"
    if [ -d $J/train ]; then
        for split in train:40 val:4; do
            for c in "$J/${split%%:*}"/*/; do
                d="$stage/vit-bundle/jpegs/${split%%:*}/$(basename "$c")"
                mkdir -p "$d" && ls "$c" | sort | head -n "${split##*:}" | while read -r f; do cp "$c$f" "$d/"; done
            done
        done
    fi
    nccl=no
    grep -q '^1 1' $B/cuda.flag && nccl=yes
    tar -C "$stage" -czf $BUNDLE vit-bundle && rm -rf "$stage"
    echo "wrote $BUNDLE ($(du -h $BUNDLE | cut -f1)): $(tar -tzf $BUNDLE | grep -c .) files; NCCL (multi-GPU): $nccl"
    echo "for the GPU machine: name \"$BUNDLE\" in the device call's carry"
    exit 0
fi

LOG=/tmp/gpu_check
rm -rf "$LOG" && mkdir -p "$LOG"
BUDGET=${GPU_CHECK_BUDGET:-540}
START=$SECONDS
export PYTHONUNBUFFERED=1

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s  (%ds elapsed)\n' "$*" $((SECONDS - START)); }
# limit CAP RESERVE: a phase's timeout, its cap or what the budget leaves after RESERVE
# seconds kept for the phases after it (at least 20 s).
limit() {
    local l=$((BUDGET - (SECONDS - START) - $2))
    [ "$l" -gt "$1" ] && l=$1
    [ "$l" -lt 20 ] && l=20
    echo "$l"
}
# run_phase NAME TIMEOUT CMD...: output in $LOG/NAME.log, its tail shown on failure.
run_phase() {
    local name=$1 t=$2
    shift 2
    timeout -k 10 "$t" "$@" >"$LOG/$name.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then say "  $name: timed out after ${t}s"; else say "  $name failed (exit $rc)"; fi
        tail -n 15 "$LOG/$name.log" | sed 's/^/    | /'
    fi
    return $rc
}
json_num() { sed -n "s/.*\"$1\": \([0-9.eE+-]*\).*/\1/p" "$2" | tail -n 1; }
finish() {  # the logs travel back as one file ($OUT keeps at most a few)
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        tar -C /tmp -czf "$OUT/gpu_check_logs.tar.gz" gpu_check 2>/dev/null
    fi
}

section "machine"
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
[ -n "$GPU" ] || GPU="no GPU seen by nvidia-smi"
say "GPU: $GPU"
NVCC=$(command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
say "nvcc: ${NVCC:-not found} $([ -n "$NVCC" ] && "$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
say "python: $(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1)"
say "timm: $(python3 -c 'import timm; print(timm.__version__)' 2>&1 | tail -n 1)"
say "cuDNN (PyTorch's): $(python3 -c 'import torch; print(torch.backends.cudnn.version())' 2>&1 | tail -n 1)"
# cuDNN for VIT_CUDA_ATTENTION=cudnn: CUDA's own, else the nvidia-cudnn wheel PyTorch loads.
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
CUDNN_HOME="" CUDNN_LIBDIR=""
for h in /usr/local/cuda/include/cudnn_graph.h \
    $([ -n "$SITE" ] && find "$SITE/nvidia" -name cudnn_graph.h -path '*include*' 2>/dev/null | head -n 1); do
    [ -f "$h" ] && CUDNN_HOME=$(dirname "$(dirname "$h")") && break
done
for d in ${CUDNN_HOME:+"$CUDNN_HOME/lib64" "$CUDNN_HOME/lib"} /usr/local/cuda/lib64 \
    $([ -n "$SITE" ] && find "$SITE/nvidia" -name libcudnn.so.9 2>/dev/null | head -n 1 | xargs -r dirname); do
    [ -e "$d/libcudnn.so.9" ] && CUDNN_LIBDIR=$d && break
done
say "cuDNN for vit: headers in ${CUDNN_HOME:-(not found)}, libcudnn.so.9 in ${CUDNN_LIBDIR:-(not found)}"
say "cpus: $(nproc); date: $(date -u +%Y-%m-%dT%H:%MZ)"

section "build"
missing=""
CC=${CC:-cc}
hdr() { printf '#include <%s>\n' "$1" | $CC -E -x c - >/dev/null 2>&1 || missing="$missing $2"; }
command -v "$CC" >/dev/null || missing="$missing C-compiler($CC)"
[ -n "$NVCC" ] || missing="$missing nvcc"
hdr oneapi/dnnl/dnnl.h libdnnl-dev
hdr jpeglib.h libjpeg-dev
hdr png.h libpng-dev
hdr zip.h libzip-dev
hdr zlib.h zlib1g-dev
hdr protobuf-c/protobuf-c.h libprotobuf-c-dev
command -v protoc-c >/dev/null || missing="$missing protobuf-c-compiler"
VIT="" TEST="" OPS="" VLIB="" BUILD_NOTE=""
if [ -z "$missing" ]; then
    # CUDNN_HOME: the Makefile takes cuDNN's headers from there and links its libcudnn.so.9.
    if run_phase build "$(limit 300 240)" make -j"$(nproc)" CUDA=1 ${NVCC:+NVCC=$NVCC} \
        ${CUDNN_HOME:+CUDNN_HOME=$CUDNN_HOME} vit build/tests/test_cuda build/tests/test_backend_ops; then
        VIT=./vit TEST=build/tests/test_cuda OPS=build/tests/test_backend_ops BUILD_NOTE="built here"
        say "  built ./vit, build/tests/test_cuda and test_backend_ops with CUDA=1 (cuda.flag: $(cat build/cuda.flag))"
    fi
else
    say "  cannot build here, missing:$missing"
fi
if [ -z "$VIT" ]; then
    if [ -f $BUNDLE ]; then
        rm -rf /tmp/vit-bundle && mkdir -p /tmp/vit-bundle && tar -C /tmp/vit-bundle -xzf $BUNDLE
        VIT=/tmp/vit-bundle/vit-bundle/vit TEST=/tmp/vit-bundle/vit-bundle/test_cuda VLIB=/tmp/vit-bundle/vit-bundle/lib
        OPS=/tmp/vit-bundle/vit-bundle/test_backend_ops
        [ -x "$OPS" ] || OPS=""  # bundles made before it was packed
        BUILD_NOTE="prebuilt bundle"
        # Open MPI: the machine's own when it has one (its mpirun and libmpi belong together; also
        # one beside mpirun, outside the loader's path), else the bundle's, only so that vit loads.
        if ! ldconfig -p 2>/dev/null | grep -q 'libmpi\.so\.40 '; then
            m=$(command -v mpirun 2>/dev/null) pre=""
            [ -n "$m" ] && [ -e "$(dirname "$(readlink -f "$m")")/../lib/libmpi.so.40" ] &&
                pre="$(cd "$(dirname "$(readlink -f "$m")")/../lib" && pwd):"
            VLIB="$VLIB:$pre/tmp/vit-bundle/vit-bundle/lib-mpi"
        fi
        # CUDA, cuDNN and NCCL libraries: the toolkit's, else the ones PyTorch's wheels carry
        # (nvidia-nccl-cu13: site-packages/nvidia/nccl/lib).
        if LD_LIBRARY_PATH=$VLIB ldd $VIT | grep -qE 'lib(cublasLt|cudart|nccl|cudnn)\.so.* not found'; then
            for lib in libcublasLt.so.13 libcudart.so.13 libnccl.so.2 libcudnn.so.9; do
                f=$(find /usr/local /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)" \
                    -name "$lib" 2>/dev/null | head -n 1)
                [ -n "$f" ] && VLIB="$VLIB:$(dirname "$f")"
            done
        fi
        nf=$(LD_LIBRARY_PATH=$VLIB ldd $VIT $TEST 2>&1 | grep 'not found' | sort -u)
        say "  using the carried $BUNDLE${nf:+; still missing: $nf}"
    else
        say "  no $BUNDLE carried either: on the dev machine run 'bash bench/gpu_check.sh --bundle' and carry"
        say "  $BUNDLE (or make those packages available here). The vit phases are skipped."
    fi
fi
# How vit and test_cuda run: with the bundle's libraries when it is the bundle's, and cuDNN's
# folder on the loader's path (libcudnn.so.9 loads its engine libraries by name from there).
[ -n "$CUDNN_LIBDIR" ] && VLIB="$VLIB${VLIB:+:}$CUDNN_LIBDIR"
VRUN=(env)
[ -n "$VLIB" ] && VRUN=(env "LD_LIBRARY_PATH=$VLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")

TESTS="not run"
if [ -n "$TEST" ]; then
    section "GPU tests (test_cuda: every op, a whole step and a 50-step run against the CPU backend)"
    run_phase test_cuda "$(limit 240 200)" "${VRUN[@]}" "$TEST"
    grep -E '^FAIL|^  (gradient|parameter)|^50-step|^nccl' "$LOG/test_cuda.log" | head -n 40
    TESTS=$(grep -E '^test_cuda: ' "$LOG/test_cuda.log" | tail -n 1)
    [ -n "$TESTS" ] || TESTS="test_cuda: no summary (crashed? see the log)"
    say "  $TESTS"
    # The opt-in paths as test_cuda saw them: the kernels each attention choice ran and their
    # errors against the CPU, and how many epilogue products ran fused.
    grep -E '^attention |^epilogues |^50-step run, bf16, VIT|^bf16 activations' "$LOG/test_cuda.log" | head -n 40 | sed 's/^/  /'
    # One step as a CUDA graph (VIT_CUDA_GRAPH=1): replayed steps against eager, and a refused capture.
    grep -E '^graph' "$LOG/test_cuda.log" | head -n 6 | sed 's/^/  /'
fi

# test_backend_ops, the op contract on the device (a few seconds on the CPU here): every op with
# the defaults (its "cuda bf16 mma" target runs mma.sync), with cuDNN attention and epilogues on
# (its "cuda bf16" target then runs cuDNN, every CUDA target the fused gemm_bias_gelu), and the
# attention cases with the SIMT kernels in bf16. Every run also has the "cuda bf16 acts" target
# (VIT_CUDA_BF16_ACTS=1, set by the test itself), which runs the bf16-activation case.
OPSUM=""
if [ -n "$OPS" ]; then
    section "op contract on the device (test_backend_ops): defaults, cudnn + epilogues, simt"
    for v in default cudnn_epi simt; do
        case $v in
        default) envs=() ;;
        cudnn_epi) envs=(VIT_CUDA_ATTENTION=cudnn VIT_CUDA_EPILOGUES=1) ;;
        simt) envs=(VIT_CUDA_ATTENTION=simt VIT_TEST_OPS=attention) ;;
        esac
        run_phase ops_$v "$(limit 90 330)" "${VRUN[@]}" ${envs[@]+"${envs[@]}"} "$OPS"
        grep -E '^FAIL' "$LOG/ops_$v.log" | head -n 15 | sed 's/^/  /'
        r=$(grep -E '^backend_ops: [0-9]+ passed' "$LOG/ops_$v.log" | tail -n 1 | sed 's/^backend_ops: //')
        OPSUM="$OPSUM $v: ${r:-no summary};"
        say "  ${envs[*]:-defaults}: ${r:-no summary (see the log)}"
    done
fi

XDEV="not run"
if [ -n "$VIT" ]; then
    section "checkpoints across devices: GPU -> CPU and CPU -> GPU resume, evaluate on both"
    SMALL="--synthetic_data --from_scratch --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
           --image_size 16 --num_classes 5 --batch_size 8 --grad_accum_steps 1 --epochs 2 --steps_per_epoch 6
           --validation_steps 2 --optimizer adamw --initial_lr 1e-3 --warmup_steps 2 --dropout 0.1 --seed 1 --json"
    X=$LOG/xdev
    mkdir -p $X
    ok=1
    run_phase xdev_cpu 60 "${VRUN[@]}" $VIT train $SMALL --device cpu --save_dir $X/cpu || ok=0
    run_phase xdev_gpu 60 "${VRUN[@]}" $VIT train $SMALL --device cuda --save_dir $X/gpu || ok=0
    run_phase xdev_g2c 60 "${VRUN[@]}" $VIT train $SMALL --device cpu --save_dir $X/g2c \
        --resume_from_checkpoint_path $X/gpu/ViT-Ti_4-ckpt-001.safetensors || ok=0
    run_phase xdev_c2g 60 "${VRUN[@]}" $VIT train $SMALL --device cuda --save_dir $X/c2g \
        --resume_from_checkpoint_path $X/cpu/ViT-Ti_4-ckpt-001.safetensors || ok=0
    run_phase xdev_rec 60 "${VRUN[@]}" $VIT train $SMALL --device cuda --save_dir $X/rec --recompute || ok=0
    run_phase xdev_eval 60 "${VRUN[@]}" $VIT evaluate --checkpoint $X/cpu/ViT-Ti_4-ckpt-final.safetensors \
        --synthetic_data --device cuda --batch_size 8 --validation_steps 2 --json || ok=0
    line="val_loss:"
    for r in cpu gpu g2c c2g; do line="$line $r $(json_num val_loss "$LOG/xdev_$r.log")"; done
    line="$line; evaluate on cuda of the cpu run: $(json_num loss "$LOG/xdev_eval.log")"
    line="$line; gpu --recompute: $(json_num val_loss "$LOG/xdev_rec.log")"
    [ "$(json_num val_loss "$LOG/xdev_rec.log")" = "$(json_num val_loss "$LOG/xdev_gpu.log")" ] || ok=0  # same ops, same order
    say "  $line"
    # All four runs train the same model to within rounding: the final losses agree to 1e-3.
    spread=$(for r in cpu gpu g2c c2g; do json_num val_loss "$LOG/xdev_$r.log"; done |
        awk 'NR == 1 {lo = hi = $1} {if ($1 < lo) lo = $1; if ($1 > hi) hi = $1} END {print (NR == 4 && hi - lo <= 1e-3 * hi) ? "ok" : "FAIL"}')
    [ $ok -eq 1 ] && [ "$spread" = ok ] && XDEV="ok ($line)" || XDEV="FAIL ($line)"
    say "  cross-device: $XDEV"
fi

MGPU="not run"
if [ -n "$VIT" ]; then
    section "multi-GPU: --distributed --device cuda over NCCL (tests/cli_gpu_dist.sh)"
    ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    if ! command -v mpirun >/dev/null 2>&1; then
        MGPU="skipped: no mpirun on this machine ($ngpu GPUs)"
    elif ! mpirun --version 2>&1 | grep -q "Open MPI"; then
        MGPU="skipped: mpirun is not Open MPI's ($(mpirun --version 2>&1 | head -n 1)), vit's libmpi is"
    else
        # -np 1 (and -np 2 with two GPUs) against one process, same flags; one GPU: -np 2 must fail cleanly.
        run_phase gpu_dist "$(limit 150 300)" "${VRUN[@]}" VIT="$VIT" sh tests/cli_gpu_dist.sh
        grep -E '^FAIL|^cli_gpu_dist' "$LOG/gpu_dist.log" | head -n 20 | sed 's/^/  /'
        MGPU=$(grep -E '^cli_gpu_dist: [0-9]+ passed' "$LOG/gpu_dist.log" | tail -n 1)
        [ -n "$MGPU" ] || MGPU="cli_gpu_dist: no summary (see the log)"
    fi
    say "  $MGPU"
fi

VIT_IPS="" VIT_BATCH="" GFLOP=""
if [ -n "$VIT" ]; then
    section "vit: ViT-B/16 at 224, bf16, AdamW, synthetic data"
    GFLOP=$("${VRUN[@]}" $VIT info --model ViT-B_16 --image_size 224 --json 2>/dev/null | sed -n 's/.*"training_gflops_per_image": \([0-9.]*\).*/\1/p')
    for b in ${VIT_BATCHES:-256 128 64}; do
        run_phase vit_b$b "$(limit 180 200)" "${VRUN[@]}" $VIT train --model ViT-B_16 --image_size 224 --device cuda -d bf16 \
            --synthetic_data --from_scratch --batch_size $b --grad_accum_steps 1 --epochs 1 \
            --steps_per_epoch "${VIT_STEPS:-10}" --validation_steps 0 --optimizer adamw --dropout 0 --save_dir= \
            --seed 0 --json
        rc=$?
        ips=$(json_num images_per_sec "$LOG/vit_b$b.log")
        if [ $rc -eq 0 ] && [ -n "$ips" ]; then
            VIT_IPS=$ips VIT_BATCH=$b
            say "  batch $b: $ips img/s (training throughput after the first update)"
            break
        fi
        grep -qiE 'out of (gpu |device )?memory' "$LOG/vit_b$b.log" || break  # other errors repeat at any batch
        say "  batch $b does not fit; trying a smaller one"
    done
fi
[ -n "$GFLOP" ] || GFLOP=105.383  # ViT-B/16 at 224, forward + backward (vit info)
MMA_IPS=""
if [ -n "$VIT_IPS" ]; then
    # The same run with the mma.sync attention kernels (test_cuda checked them above).
    run_phase vit_mma "$(limit 120 330)" "${VRUN[@]}" VIT_CUDA_ATTENTION=mma $VIT train --model ViT-B_16 --image_size 224 \
        --device cuda -d bf16 --synthetic_data --from_scratch --batch_size "$VIT_BATCH" --grad_accum_steps 1 --epochs 1 \
        --steps_per_epoch "${VIT_STEPS:-10}" --validation_steps 0 --optimizer adamw --dropout 0 --save_dir= --seed 0 \
        --json && MMA_IPS=$(json_num images_per_sec "$LOG/vit_mma.log")
    say "  batch $VIT_BATCH with VIT_CUDA_ATTENTION=mma: ${MMA_IPS:-failed} img/s"
fi
CUDNN_IPS=""
if [ -n "$VIT_IPS" ]; then
    # And with cuDNN's fused attention: its forward pass, and its backward pass where cuDNN has an
    # engine for it, else the WMMA kernels from cuDNN's statistics (test_cuda's lines above say which).
    run_phase vit_cudnn "$(limit 120 300)" "${VRUN[@]}" VIT_CUDA_ATTENTION=cudnn $VIT train --model ViT-B_16 \
        --image_size 224 --device cuda -d bf16 --synthetic_data --from_scratch --batch_size "$VIT_BATCH" \
        --grad_accum_steps 1 --epochs 1 --steps_per_epoch "${VIT_STEPS:-10}" --validation_steps 0 --optimizer adamw \
        --dropout 0 --save_dir= --seed 0 --json && CUDNN_IPS=$(json_num images_per_sec "$LOG/vit_cudnn.log")
    say "  batch $VIT_BATCH with VIT_CUDA_ATTENTION=cudnn: ${CUDNN_IPS:-failed} img/s"
fi
ACTS_IPS=""
if [ -n "$VIT_IPS" ]; then
    # And with bf16 activations (issue 15 item 3; test_cuda's "bf16 activations" lines above
    # checked them): the default run is the same training without the switch.
    run_phase vit_acts "$(limit 120 280)" "${VRUN[@]}" VIT_CUDA_BF16_ACTS=1 $VIT train --model ViT-B_16 \
        --image_size 224 --device cuda -d bf16 --synthetic_data --from_scratch --batch_size "$VIT_BATCH" \
        --grad_accum_steps 1 --epochs 1 --steps_per_epoch "${VIT_STEPS:-10}" --validation_steps 0 --optimizer adamw \
        --dropout 0 --save_dir= --seed 0 --json && ACTS_IPS=$(json_num images_per_sec "$LOG/vit_acts.log")
    say "  batch $VIT_BATCH with VIT_CUDA_BF16_ACTS=1: ${ACTS_IPS:-failed} img/s (without: $VIT_IPS)"
fi
GRAPH_IPS=""
if [ -n "$VIT_IPS" ]; then
    # And with the step captured as a CUDA graph (issue 15 item 5; test_cuda's "graph:" lines
    # above checked replay against eager). No dropout, one rank, no profile: the graph applies.
    # The same seed must give the same final loss as the default run (the ops are the same).
    run_phase vit_graph "$(limit 120 260)" "${VRUN[@]}" VIT_CUDA_GRAPH=1 $VIT train --model ViT-B_16 \
        --image_size 224 --device cuda -d bf16 --synthetic_data --from_scratch --batch_size "$VIT_BATCH" \
        --grad_accum_steps 1 --epochs 1 --steps_per_epoch "${VIT_STEPS:-10}" --validation_steps 0 --optimizer adamw \
        --dropout 0 --save_dir= --seed 0 --json && GRAPH_IPS=$(json_num images_per_sec "$LOG/vit_graph.log")
    grep -E '^note: VIT_CUDA_GRAPH' "$LOG/vit_graph.log" | head -n 3 | sed 's/^/  /'
    gl=$(json_num train_loss "$LOG/vit_graph.log") dl=$(json_num train_loss "$LOG/vit_b$VIT_BATCH.log")
    [ -n "$gl" ] && [ "$gl" = "$dl" ] && same="same final loss" || same="final loss ${gl:-?} vs ${dl:-?}: DIFFERS"
    say "  batch $VIT_BATCH with VIT_CUDA_GRAPH=1: ${GRAPH_IPS:-failed} img/s (without: $VIT_IPS; $same)"
fi

section "PyTorch"
TB=${VIT_BATCH:-256}
list=$TB
for b in 256 128 64 32; do [ "$b" -lt "$TB" ] && list="$list,$b"; done
CEIL="" EAGER="" EAGER_B="" COMP=""
if run_phase torch_ceiling "$(limit 60 260)" python3 tools/bench_torch_gpu.py ceiling; then
    CEIL=$(json_num tflops "$LOG/torch_ceiling.log")
    say "  bf16 matmul 8192^3: $CEIL TFLOP/s"
fi
if run_phase torch_eager "$(limit 180 200)" python3 tools/bench_torch_gpu.py eager --batches "$list" \
    --steps "${TORCH_STEPS:-10}"; then
    EAGER=$(json_num images_per_sec "$LOG/torch_eager.log")
    EAGER_B=$(json_num batch "$LOG/torch_eager.log")
    say "  eager, batch $EAGER_B: $EAGER img/s"
fi
if run_phase torch_compile "$(limit 330 200)" python3 tools/bench_torch_gpu.py compile --batches "${EAGER_B:-$list}" \
    --steps "${TORCH_STEPS:-10}"; then
    COMP=$(json_num images_per_sec "$LOG/torch_compile.log")
    say "  torch.compile, batch $(json_num batch "$LOG/torch_compile.log"): $COMP img/s (compiled in $(json_num warmup_s "$LOG/torch_compile.log") s)"
fi

# ---- further workloads, as the budget allows (each phase is capped by what is left) ----------
# These two print only the figure (for $(...)); a failing phase's lines go to stderr.
vit_train_ips() {  # NAME MODEL IMAGE BATCH [FLAGS...]: training img/s of vit, bf16
    local name=$1 model=$2 image=$3 b=$4
    shift 4
    run_phase "$name" "$(limit 150 20)" "${VRUN[@]}" $VIT train --model "$model" --image_size "$image" --device cuda \
        -d bf16 --from_scratch --batch_size "$b" --grad_accum_steps 1 --epochs 1 --steps_per_epoch "${VIT_STEPS:-10}" \
        --validation_steps 0 --optimizer adamw --dropout 0 --save_dir= --log_dir= --seed 0 --json "$@" >&2 &&
        json_num images_per_sec "$LOG/$name.log"
}
torch_ips() {  # NAME MODE [ARGS...]
    local name=$1
    shift
    run_phase "$name" "$(limit 150 20)" python3 tools/bench_torch_gpu.py "$@" --steps "${TORCH_STEPS:-10}" >&2 &&
        json_num images_per_sec "$LOG/$name.log"
}
INF_V="" INF_T="" JPG_V="" JPG_T="" JPG_WAIT="" B384_V="" B384_T="" L16_V="" L16_T="" PROF=""
if [ -n "$VIT" ]; then
    section "inference: ViT-B/16 at 224, bf16, batch 512, synthetic data"
    run_phase vit_infer "$(limit 120 20)" "${VRUN[@]}" $VIT evaluate --model ViT-B_16 --image_size 224 --device cuda \
        -d bf16 --synthetic_data --from_scratch --batch_size 512 --validation_steps 20 --json &&
        INF_V=$(json_num images_per_sec "$LOG/vit_infer.log")
    INF_T=$(torch_ips torch_infer infer --batches 512,256)
    say "  vit ${INF_V:-failed} img/s, PyTorch eager ${INF_T:-failed} img/s"

    J=$(dirname "$VIT")/jpegs
    [ -d "$J/train" ] || J=/tmp/vitc_bench_jpegs
    section "real JPEGs: ViT-B/16 at 224 training from an image folder ($J), loader threads = $(nproc) cores"
    if [ -d "$J/train" ]; then
        JPG_V=$(vit_train_ips vit_jpeg ViT-B_16 224 "${VIT_BATCH:-128}" --dataset_dir "$J")
        JPG_WAIT=$(json_num data_wait_seconds "$LOG/vit_jpeg.log")
        JPG_T=$(torch_ips torch_jpeg eager --batches "${VIT_BATCH:-128}" --data "$J")
        say "  vit ${JPG_V:-failed} img/s (waited ${JPG_WAIT:-?} s for data), PyTorch eager ${JPG_T:-failed} img/s"
    else
        say "  skipped: no JPEG folder (bundle it with --bundle on the dev machine)"
    fi

    section "per-op profile: ViT-B/16 224 bf16, batch 128, steps 3..4"
    run_phase vit_profile "$(limit 120 20)" "${VRUN[@]}" $VIT train --model ViT-B_16 --image_size 224 --device cuda \
        -d bf16 --synthetic_data --from_scratch --batch_size 128 --grad_accum_steps 1 --epochs 1 --steps_per_epoch 5 \
        --validation_steps 0 --optimizer adamw --dropout 0.1 --save_dir= --log_dir "$LOG/prof" --profile 3,4 &&
        PROF=ok
    sed -n '/^op /,/^trained/p' "$LOG/vit_profile.log" | head -n 40 | sed 's/^/  /'

    section "ViT-B/16 at 384 and ViT-L/16 at 224 training, bf16, batch 64"
    B384_V=$(vit_train_ips vit_b16_384 ViT-B_16 384 64 --synthetic_data)
    B384_T=$(torch_ips torch_b16_384 eager --batches 64,32 --image 384)
    L16_V=$(vit_train_ips vit_l16 ViT-L_16 224 64 --synthetic_data)
    L16_T=$(torch_ips torch_l16 eager --batches 64,32 --model l16)
    say "  B/16 384: vit ${B384_V:-failed}, PyTorch eager ${B384_T:-failed}; L/16 224: vit ${L16_V:-failed}, PyTorch eager ${L16_T:-failed} img/s"
fi

{
    section "summary: $GPU"
    printf '%-44s %6s %9s %8s %12s\n' "ViT-B/16 224 training, bf16" batch "img/s" "vit/x" "% ceiling"
    row() {  # name batch img/s
        awk -v n="$1" -v b="${2:--}" -v v="$3" -v ref="$VIT_IPS" -v g="$GFLOP" -v c="$CEIL" 'BEGIN {
            r = (v != "" && ref != "") ? sprintf("%.2f", ref / v) : "-";
            f = (v != "" && c != "") ? sprintf("%.1f%%", 100 * v * g / (c * 1000)) : "-";
            printf "%-44s %6s %9s %8s %12s\n", n, b, (v != "" ? sprintf("%.1f", v) : "failed"), r, f }'
    }
    row "vit --device cuda -d bf16 ($BUILD_NOTE)" "$VIT_BATCH" "$VIT_IPS"
    row "vit, VIT_CUDA_ATTENTION=mma" "$VIT_BATCH" "$MMA_IPS"
    row "vit, VIT_CUDA_ATTENTION=cudnn" "$VIT_BATCH" "$CUDNN_IPS"
    row "vit, VIT_CUDA_BF16_ACTS=1" "$VIT_BATCH" "$ACTS_IPS"
    row "vit, VIT_CUDA_GRAPH=1" "$VIT_BATCH" "$GRAPH_IPS"
    row "PyTorch eager (timm, autocast bf16)" "$EAGER_B" "$EAGER"
    row "PyTorch torch.compile" "$EAGER_B" "$COMP"
    say "ceiling: bf16 matmul ${CEIL:-?} TFLOP/s measured; $GFLOP GFLOP per trained image"
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-" }'; }
    say "inference B/16 224 bf16 b512: vit ${INF_V:-failed}, PyTorch eager ${INF_T:-failed} img/s (vit/x $(ratio "$INF_V" "$INF_T"))"
    say "real JPEGs B/16 224: vit ${JPG_V:-failed} (data wait ${JPG_WAIT:-?} s), PyTorch eager ${JPG_T:-failed} img/s (vit/x $(ratio "$JPG_V" "$JPG_T"))"
    say "B/16 384 b64: vit ${B384_V:-failed}, PyTorch eager ${B384_T:-failed} (vit/x $(ratio "$B384_V" "$B384_T")); L/16 224 b64: vit ${L16_V:-failed}, PyTorch eager ${L16_T:-failed} (vit/x $(ratio "$L16_V" "$L16_T"))"
    say "per-op profile: ${PROF:-failed} (table above, trace in the logs)"
    say "tests: $TESTS"
    say "test_backend_ops:${OPSUM:- not run}"
    say "cross-device checkpoints: $XDEV"
    say "multi-GPU (NCCL): $MGPU"
} | tee "$LOG/summary.txt"
finish
