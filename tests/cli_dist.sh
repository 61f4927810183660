#!/bin/sh
# Data parallelism over MPI: 2 ranks with global batch B train the same model as 1 rank
# with batch B; validation counts every image once; a failing rank ends the job with its
# message. Skipped (with a note, not counted) when vit was built without MPI.
. "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
export OMPI_MCA_btl_vader_single_copy_mechanism=none             # containers forbid CMA
MPIRUN="mpirun --oversubscribe -np 2"

if ! command -v mpirun >/dev/null 2>&1 ||
   "$VIT" train --distributed --model nonsense 2>&1 | grep -q "built without MPI"; then
    echo "cli_dist: skipped (vit built without MPI, or mpirun missing)"
    exit 0
fi

# (The key bias gets a gradient that is zero in exact arithmetic, hence --atol for its noise.)
# sgd: Adam divides by sqrt(v), which turns the rounding noise of a gradient that is zero
# in exact arithmetic (the key bias) into lr-sized steps; sgd keeps noise at noise size.
RUN="--run_name . --from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --dropout 0 --optimizer sgd --initial_lr 0.05 --warmup_steps 5 --epochs 1 --steps_per_epoch 20 --seed 3
     --deterministic --threads 1 --batch_size 16 --json --log_dir="
for accum in 1 2; do
    "$VIT" train $RUN --grad_accum_steps $accum --validation_steps 5 --save_dir "$tmp/one$accum" \
        >"$tmp/one$accum.json" 2>"$tmp/one$accum.err"
    r1=$?
    $MPIRUN "$VIT" train $RUN --grad_accum_steps $accum --validation_steps 5 --distributed \
        --save_dir "$tmp/two$accum" >"$tmp/two$accum.json" 2>"$tmp/two$accum.err"
    r2=$?
    check "accumulation $accum: 1 rank and 2 ranks run" $((r1 + r2))
    [ $r2 -ne 0 ] && sed 's/^/    /' "$tmp/two$accum.err" | tail -5
    for f in train_loss val_loss; do
        a=$(json_field "$tmp/one$accum.json" $f)
        b=$(json_field "$tmp/two$accum.json" $f)
        python3 -c "import sys; a, b = float('$a'), float('$b'); sys.exit(abs(a - b) > 1e-5 * abs(a))" 2>/dev/null
        check "accumulation $accum: $f equal within 1e-5 relative ($a vs $b)" $?
    done
    python3 tools/compare_checkpoints.py "$tmp/one$accum/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/two$accum/ViT-Ti_4-ckpt-final.safetensors" --rtol 1e-5 --atol 1e-8 --slot_rtol 1e-4 >"$tmp/cmp" 2>&1
    check "accumulation $accum: parameters within 1e-5 relative (momentum slots 1e-4) after 20 steps ($(tail -1 "$tmp/cmp"))" $?
    grep FAIL "$tmp/cmp" | head -3
    n=$(json_field "$tmp/two$accum.json" val_images)
    [ "$n" = 80 ]
    check "accumulation $accum: 5 validation batches of 16 = 80 images counted once (got $n)" $?
done
grep -q "distributed: 2 ranks" "$tmp/two1.err"
check "rank 0 reports the ranks and the all-reduce wait" $?

# The whole test set (10000 images, uneven shards are fine): each image once.
$MPIRUN "$VIT" train $RUN --grad_accum_steps 1 --steps_per_epoch 2 --distributed --save_dir= \
    >"$tmp/val.json" 2>"$tmp/val.err"
n=$(json_field "$tmp/val.json" val_images)
[ "$n" = 10000 ]
check "full validation over 2 ranks counts 10000 images (got $n)" $?
[ "$(grep -c '^{' "$tmp/val.json")" = 1 ]
check "only rank 0 prints the JSON result" $?

# Each rank writes its own trace, with the gradient all-reduce as a span; rank 0 alone logs.
$MPIRUN "$VIT" train $RUN --grad_accum_steps 2 --validation_steps 2 --distributed --save_dir= --log_dir "$tmp/logs" \
    --profile 3,4 >"$tmp/prof.json" 2>"$tmp/prof.err"
ok=0
for r in 0 1; do
    python3 tools/check_trace.py "$tmp/logs/profile/trace.rank$r.json" --steps 3,4 --ops gemm,optimizer_update \
        --phases forward,backward,allreduce,update >"$tmp/tr" 2>&1 || ok=1
done
check "both ranks write a trace of steps 3..4 with all-reduce spans" $ok
[ "$(ls "$tmp/logs" | grep -c tfevents)" = 1 ]
check "rank 0 alone writes TensorBoard events" $?

# --zero 1 (optimizer slots sharded over the ranks, parameters all-gathered after each update)
# against --zero 0 on 2 ranks: the same floats get the same operations, so the checkpoints
# (full slots, gathered to rank 0) must be bit-identical, after epoch 1 and at the end.
ZRUN="$RUN --validation_steps 0 --epochs 2 --log_dir="
ZMPI="timeout 120 $MPIRUN"  # a collective one rank skips would hang the job
ADAMW="--optimizer adamw --initial_lr 0.005 --steps_per_epoch 12 --grad_accum_steps 1"  # 24 updates
SGD="--optimizer sgd --momentum 0.9 --steps_per_epoch 24 --grad_accum_steps 2"         # 24 updates
same() {  # same NAME A.safetensors B.safetensors: bit for bit, with the same training position
    python3 tools/compare_checkpoints.py "$2" "$3" >"$tmp/cmp" 2>&1
    check "$1 ($(tail -1 "$tmp/cmp"))" $?
    grep FAIL "$tmp/cmp" | head -3
}
for opt in adamw sgd; do
    flags=$ADAMW
    [ $opt = sgd ] && flags=$SGD
    for z in 0 1; do
        $ZMPI "$VIT" train $ZRUN $flags --distributed --zero $z --save_dir "$tmp/z$z$opt" \
            >"$tmp/z$z$opt.json" 2>"$tmp/z$z$opt.err"
        check "$opt: 2 ranks with --zero $z run" $?
    done
    for c in 001 final; do
        same "$opt: --zero 1 and --zero 0 checkpoints $c bit-identical" "$tmp/z0$opt/ViT-Ti_4-ckpt-$c.safetensors" \
            "$tmp/z1$opt/ViT-Ti_4-ckpt-$c.safetensors"
    done
    a=$(json_field "$tmp/z0$opt.json" optimizer_state_mib)
    b=$(json_field "$tmp/z1$opt.json" optimizer_state_mib)
    python3 -c "import sys; a, b = float('$a'), float('$b'); sys.exit(not (a > 0 and 0.49 < b / a <= 0.51))" 2>/dev/null
    check "$opt: --zero 1 holds half the optimizer state per rank ($b vs $a MiB)" $?
done
grep -q "optimizer state .* per rank (--zero 1: 1/2 of" "$tmp/z1adamw.err"
check "the start-up line reports the sharded optimizer state" $?

# Resume: the --zero 1 run's epoch-1 checkpoint, continued with --zero 1 and with --zero 0
# on 2 ranks, ends bit-identical to the uninterrupted run; so does one stopped by a signal
# mid-epoch (a step checkpoint). One rank continues it as closely as 1 rank follows 2 (sgd).
for z in 0 1; do
    $ZMPI "$VIT" train $ZRUN $ADAMW --distributed --zero $z --save_dir "$tmp/r$z" \
        --resume_from_checkpoint_path "$tmp/z1adamw/ViT-Ti_4-ckpt-001.safetensors" >/dev/null 2>"$tmp/r$z.err"
    check "resume of a --zero 1 checkpoint with --zero $z runs" $?
    same "resumed with --zero $z: equals the uninterrupted --zero 1 run" "$tmp/r$z/ViT-Ti_4-ckpt-final.safetensors" \
        "$tmp/z1adamw/ViT-Ti_4-ckpt-final.safetensors"
done
VIT_TEST_SIGNAL_AT_STEP=5 $ZMPI -x VIT_TEST_SIGNAL_AT_STEP "$VIT" train $ZRUN $ADAMW --distributed --zero 1 \
    --save_dir "$tmp/sig" >/dev/null 2>"$tmp/sig.err" &&
    ls "$tmp/sig" | grep -q "ckpt-step-" &&
    $ZMPI "$VIT" train $ZRUN $ADAMW --distributed --zero 1 --save_dir "$tmp/sig" \
        --resume_from_checkpoint_path "$tmp/sig" >/dev/null 2>>"$tmp/sig.err"
check "--zero 1 stopped by a signal in epoch 1 (a step checkpoint) and resumed runs" $?
same "stopped and resumed --zero 1 run: equals the uninterrupted one" "$tmp/sig/ViT-Ti_4-ckpt-final.safetensors" \
    "$tmp/z1adamw/ViT-Ti_4-ckpt-final.safetensors"
"$VIT" train $ZRUN $SGD --save_dir "$tmp/r1rank" --resume_from_checkpoint_path \
    "$tmp/z1sgd/ViT-Ti_4-ckpt-001.safetensors" >/dev/null 2>"$tmp/r1rank.err"
check "resume of a --zero 1 checkpoint by one process runs" $?
python3 tools/compare_checkpoints.py "$tmp/r1rank/ViT-Ti_4-ckpt-final.safetensors" \
    "$tmp/z1sgd/ViT-Ti_4-ckpt-final.safetensors" --rtol 1e-5 --atol 1e-8 --slot_rtol 1e-4 >"$tmp/cmp" 2>&1
check "one process continues a --zero 1 run within 1e-5 relative ($(tail -1 "$tmp/cmp"))" $?
grep FAIL "$tmp/cmp" | head -3

# One rank owns the whole shard: --zero 1 runs as --zero 0 does.
timeout 120 mpirun -np 1 "$VIT" train $ZRUN $ADAMW --epochs 1 --steps_per_epoch 2 --distributed --zero 1 --save_dir= \
    >"$tmp/z1one.json" 2>"$tmp/z1one.err"
check "--zero 1 with one rank runs" $?
[ "$(json_field "$tmp/z1one.json" optimizer_state_mib)" = "$(json_field "$tmp/z0adamw.json" optimizer_state_mib)" ]
check "--zero 1 with one rank keeps the whole optimizer state" $?
expect_error "--zero 2 is refused" "^vit train: --zero 2: expected 0 (off) or 1" train --zero 2
expect_error "--zero -1 is refused" "^vit train: --zero -1: expected 0 (off) or 1" train --zero -1
expect_error "--zero 1 without --distributed is refused" "^vit train: --zero 1 needs --distributed" train --zero 1

# A failing rank ends the job quickly with its own message (MPMD: rank 1 gets bad data).
start=$(date +%s)
timeout 120 mpirun --oversubscribe -np 1 "$VIT" train $RUN --distributed --save_dir= : \
    -np 1 "$VIT" train $RUN --distributed --save_dir= --dataset_dir "$tmp/missing" >"$tmp/fail.out" 2>"$tmp/fail.err"
rc=$?
took=$(($(date +%s) - start))
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1: .*$tmp/missing" "$tmp/fail.err" && [ $took -lt 60 ]
check "a rank with missing data aborts the job (exit $rc after $took s) with its message" $?
[ $rc -ne 0 ] || sed 's/^/    /' "$tmp/fail.err" | head -5

timeout 120 mpirun --oversubscribe -np 1 "$VIT" train $RUN --distributed --save_dir= : \
    -np 1 "$VIT" train $RUN --distributed --save_dir= --optimizer bogus >"$tmp/fail.out" 2>"$tmp/fail.err"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1: --optimizer bogus" "$tmp/fail.err"
check "a bad flag on one rank aborts the job (exit $rc) with its message" $?

timeout 120 $MPIRUN "$VIT" train $RUN --distributed --save_dir= --batch_size 15 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "batch_size 15: .*divisible by the 2 ranks" "$tmp/err"
check "a global batch not divisible by the ranks is refused (exit $rc)" $?

timeout 120 $MPIRUN "$VIT" train $RUN --save_dir= >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "without --distributed" "$tmp/err"
check "mpirun without --distributed is refused (exit $rc)" $?

finish cli_dist
