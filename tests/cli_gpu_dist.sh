#!/bin/sh
# Multi-GPU data parallelism (--distributed --device cuda: NCCL, one process per GPU). The
# refusals that need no GPU run everywhere MPI does. With a GPU, mpirun and an NCCL build:
# `mpirun -np 1` against one process on the same GPU with the same flags, -np 2 the same on a
# machine with two GPUs or more (tolerances of cli_dist.sh), --zero 1 against --zero 0 on the
# same ranks bit for bit (NCCL all-gathers the updated parameter shards), and on one GPU -np 2
# ends the job with rank 1's message. Otherwise those runs are skipped with a line (not counted).
. "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
export OMPI_MCA_btl_vader_single_copy_mechanism=none             # containers forbid CMA

probe=$("$VIT" train --distributed --device cuda --model nonsense 2>&1)
if ! command -v mpirun >/dev/null 2>&1 || echo "$probe" | grep -q "built without MPI"; then
    echo "cli_gpu_dist: skipped (vit built without MPI, or mpirun missing)"
    exit 0
fi
case $probe in
*"built without CUDA"*) build=cpu ;;
*"built without NCCL"*) build=cuda ;;
*) build=nccl ;;
esac

# What each kind of build says to --distributed --device cuda, before touching a GPU.
case $build in
cpu)
    expect_error "--distributed --device cuda without CUDA in the build" "built without CUDA (rebuild with make CUDA=1)" \
        train --distributed --device cuda
    ;;
cuda)
    expect_error "--distributed --device cuda without NCCL in the build says how to build it" \
        "^vit train: --distributed with --device cuda: this vit was built without NCCL (.*rebuild with make" \
        train --distributed --device cuda
    ;;
esac
expect_error "--zero 1 without --distributed is still refused first" "^vit train: --zero 1 needs --distributed" \
    train --zero 1 --device cpu

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
RUN="--run_name . --synthetic_data --from_scratch --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --image_size 16 --num_classes 5 --dropout 0 --optimizer sgd --initial_lr 0.05 --warmup_steps 2 --epochs 1
     --steps_per_epoch 20 --validation_steps 5 --seed 3 --deterministic --batch_size 16 --json --device cuda --log_dir="
if [ $build = nccl ] && [ "$ngpu" -lt 1 ]; then
    # Lifting the refusal must not hide the missing device: one line naming it.
    expect_error "--distributed --device cuda on a machine without a GPU names the device" \
        "^vit train: --device cuda: no CUDA device" train $RUN --distributed --save_dir=
fi
if [ $build != nccl ] || [ "$ngpu" -lt 1 ]; then
    echo "cli_gpu_dist: GPU runs skipped ($ngpu GPUs seen by nvidia-smi; vit built with: $build)"
    finish cli_gpu_dist
    exit $?
fi

MPIRUN="timeout 300 mpirun --oversubscribe"
[ -n "${LD_LIBRARY_PATH:-}" ] && MPIRUN="$MPIRUN -x LD_LIBRARY_PATH"  # a bundle's libraries
close() {  # close NAME A.json B.json DIR_A DIR_B: losses within 1e-5, checkpoints as cli_dist.sh
    for f in train_loss val_loss; do
        a=$(json_field "$2" $f)
        b=$(json_field "$3" $f)
        python3 -c "import sys; a, b = float('$a'), float('$b'); sys.exit(abs(a - b) > 1e-5 * abs(a))" 2>/dev/null
        check "$1: $f equal within 1e-5 relative ($a vs $b)" $?
    done
    python3 tools/compare_checkpoints.py "$4/ViT-Ti_4-ckpt-final.safetensors" "$5/ViT-Ti_4-ckpt-final.safetensors" \
        --rtol 1e-5 --atol 1e-8 --slot_rtol 1e-4 >"$tmp/cmp" 2>&1
    check "$1: parameters within 1e-5 relative, momentum 1e-4 ($(tail -1 "$tmp/cmp"))" $?
    grep FAIL "$tmp/cmp" | head -3
}
nps=1
[ "$ngpu" -ge 2 ] && nps="1 2"
for accum in 1 2; do
    "$VIT" train $RUN --grad_accum_steps $accum --save_dir "$tmp/one$accum" >"$tmp/one$accum.json" 2>"$tmp/one$accum.err"
    check "accumulation $accum: one process on the GPU runs" $?
    tail -3 "$tmp/one$accum.err" | grep "vit train:" | sed 's/^/    /'
    for np in $nps; do
        $MPIRUN -np $np "$VIT" train $RUN --grad_accum_steps $accum --distributed --save_dir "$tmp/np$np-$accum" \
            >"$tmp/np$np-$accum.json" 2>"$tmp/np$np-$accum.err"
        rc=$?
        check "accumulation $accum: mpirun -np $np --distributed --device cuda runs (exit $rc)" $rc
        [ $rc -ne 0 ] && tail -5 "$tmp/np$np-$accum.err" | sed 's/^/    /'
        grep -q "distributed: $np ranks x batch $((16 / np)); gradients summed (NCCL)" "$tmp/np$np-$accum.err"
        check "accumulation $accum, $np ranks: the start-up line names NCCL" $?
        close "accumulation $accum, $np ranks vs one process" "$tmp/one$accum.json" "$tmp/np$np-$accum.json" \
            "$tmp/one$accum" "$tmp/np$np-$accum"
    done
done

# --zero 1: the same floats get the same operations as with --zero 0, so the checkpoints are
# bit-identical (with one rank there is one shard, the whole buffer); AdamW, accumulation 1.
for np in $nps; do
    for z in 0 1; do
        $MPIRUN -np $np "$VIT" train $RUN --optimizer adamw --initial_lr 1e-3 --distributed --zero $z \
            --save_dir "$tmp/z$z-np$np" >"$tmp/z$z-np$np.json" 2>"$tmp/z$z-np$np.err"
        rc=$?
        check "mpirun -np $np --zero $z --device cuda runs (exit $rc)" $rc
        [ $rc -ne 0 ] && tail -5 "$tmp/z$z-np$np.err" | sed 's/^/    /'
    done
    python3 tools/compare_checkpoints.py "$tmp/z0-np$np/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/z1-np$np/ViT-Ti_4-ckpt-final.safetensors" >"$tmp/cmp" 2>&1
    check "$np ranks: --zero 1 and --zero 0 checkpoints bit-identical on the GPU ($(tail -1 "$tmp/cmp"))" $?
    grep FAIL "$tmp/cmp" | head -3
done

if [ "$ngpu" -eq 1 ]; then
    # Two ranks, one GPU: rank 1 asks for GPU 1 (its local rank) and ends the job with its message.
    $MPIRUN -np 2 "$VIT" train $RUN --distributed --save_dir= >"$tmp/two.out" 2>"$tmp/two.err"
    rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1: --device cuda: device 1 does not exist" "$tmp/two.err"
    check "two ranks on one GPU: the job ends with rank 1's message (exit $rc)" $?
    [ $rc -ne 0 ] || sed 's/^/    /' "$tmp/two.err" | head -5
else
    echo "cli_gpu_dist: $ngpu GPUs, ran -np 1 and 2"
fi
finish cli_gpu_dist
