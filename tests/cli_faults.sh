#!/bin/sh
# A run survives faults: a stop signal writes a checkpoint and the printed command resumes
# it exactly; a second signal exits at once; a non-finite loss stops (or is skipped); an
# unusable --save_dir fails before training; a failed write keeps the previous checkpoint;
# after kill -9 the newest complete checkpoint resumes to the same result.
. "$(dirname "$0")/lib.sh"

RUN="--run_name . --from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --dropout 0.1 --optimizer adamw --initial_lr 1e-3 --warmup_steps 5 --epochs 2 --steps_per_epoch 30
     --grad_accum_steps 2 --validation_steps 4 --seed 5 --threads 1 --batch_size 16 --json --log_dir="
CK=ViT-Ti_4-ckpt

"$VIT" train $RUN --save_dir "$tmp/full" >"$tmp/full.json" 2>"$tmp/full.err"
check "uninterrupted reference run" $?

# SIGTERM in the middle of epoch 1 (raised by the test hook after micro-step 9: the stop
# happens at the end of that accumulation window, update 5).
VIT_TEST_SIGNAL_AT_STEP=9 "$VIT" train $RUN --save_dir "$tmp/sig" >"$tmp/sig.json" 2>"$tmp/sig.err"
rc=$?
[ $rc -eq 0 ] && [ -f "$tmp/sig/$CK-step-0000005.safetensors" ] && grep -q '"stopped_by_signal": true' "$tmp/sig.json"
check "SIGTERM: exit 0 with a checkpoint at update 5 (exit $rc)" $?
cmd=$(sed -n 's/^  \(.*--resume_from_checkpoint_path .*\)$/\1/p' "$tmp/sig.err")
case "$cmd" in *"$CK-step-0000005.safetensors") true ;; *) false ;; esac
check "SIGTERM: the resume command is printed" $?
sh -c "$cmd" >"$tmp/res.json" 2>"$tmp/res.err"
check "the printed command resumes" $?
python3 tools/compare_checkpoints.py "$tmp/full/$CK-final.safetensors" "$tmp/sig/$CK-final.safetensors" >"$tmp/cmp" 2>&1
check "stop + resume = uninterrupted run, bit for bit ($(tail -1 "$tmp/cmp"))" $?
a=$(json_field "$tmp/full.json" val_loss)
b=$(json_field "$tmp/res.json" val_loss)
[ -n "$a" ] && [ "$a" = "$b" ]
check "same final validation loss ($a vs $b)" $?

# A real signal from outside at an arbitrary moment, then a second one: immediate exit.
"$VIT" train $RUN --epochs 50 --save_dir "$tmp/async" >"$tmp/async.json" 2>"$tmp/async.err" &
pid=$!
sleep 2
kill -TERM $pid
wait $pid
rc=$?
[ $rc -eq 0 ] && grep -q "to continue:" "$tmp/async.err"
check "an external SIGTERM stops cleanly with a checkpoint (exit $rc)" $?
# (Slow updates, 32 micro-steps of a wider model, and the first signal right after update 1
# is saved: the second one lands while the first still waits for update 2 to end.)
"$VIT" train $RUN --hidden_size 128 --mlp_dim 512 --batch_size 128 --grad_accum_steps 32 --steps_per_epoch 320 \
    --checkpoint_every_steps 1 --save_dir "$tmp/twice" >"$tmp/twice.json" 2>"$tmp/twice.err" &
pid=$!
i=0
while [ $i -lt 1200 ] && [ ! -f "$tmp/twice/$CK-step-0000001.safetensors" ]; do
    sleep 0.05
    i=$((i + 1))
done
kill -INT $pid
sleep 0.3  # two signals sent together would merge into one
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ]
check "a second signal exits at once (exit $rc = 128 + SIGINT)" $?
[ $rc -eq 130 ] || tail -3 "$tmp/twice.err" | sed 's/^/    /'

# kill -9 while checkpoints are written every update: the newest complete one resumes
# (naming the folder picks it) and the run ends as if nothing happened.
K9="$RUN --epochs 12 --checkpoint_every_steps 1 --keep_checkpoints 3"
"$VIT" train $K9 --save_dir "$tmp/k9ref" >"$tmp/k9ref.json" 2>/dev/null
"$VIT" train $K9 --save_dir "$tmp/k9" >/dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ] && ! ls "$tmp/k9" 2>/dev/null | grep -q "step-00000[2-9][0-9]"; do  # update 20 or later
    sleep 0.05
    i=$((i + 1))
done
kill -9 $pid
wait $pid
rc=$?
[ $rc -eq 137 ] || echo "note: the run ended (exit $rc) before kill -9 reached it"
"$VIT" train $K9 --save_dir "$tmp/k9" --resume_from_checkpoint_path "$tmp/k9" \
    >"$tmp/k9.json" 2>"$tmp/k9.err"
check "after kill -9 the folder's newest checkpoint resumes" $?
python3 tools/compare_checkpoints.py "$tmp/k9ref/$CK-final.safetensors" "$tmp/k9/$CK-final.safetensors" >"$tmp/cmp" 2>&1
check "kill -9 + resume = uninterrupted run, bit for bit ($(tail -1 "$tmp/cmp"))" $?

# Non-finite gradients (test hook: NaN in the 3rd update's gradients).
VIT_TEST_NAN_AT_UPDATE=3 "$VIT" train $RUN --checkpoint_every_steps 1 --save_dir "$tmp/nan" >"$tmp/nan.json" 2>"$tmp/nan.err"
rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "epoch 1, update 3: gradient norm is nan" "$tmp/nan.err" &&
    [ -f "$tmp/nan/$CK-step-0000002.safetensors" ] && [ ! -f "$tmp/nan/$CK-final.safetensors" ]
check "a NaN gradient stops the run naming the update, the last good checkpoint kept (exit $rc)" $?
VIT_TEST_NAN_AT_UPDATE=3 "$VIT" train $RUN --skip_nonfinite --save_dir= >"$tmp/skip.json" 2>"$tmp/skip.err"
rc=$?
[ $rc -eq 0 ] && [ "$(json_field "$tmp/skip.json" skipped_updates)" = 1 ] &&
    [ "$(json_field "$tmp/skip.json" steps)" = 29 ]
check "--skip_nonfinite skips that update, counts it and finishes (exit $rc)" $?

# --save_dir that cannot be used fails before the first step.
: >"$tmp/afile"
expect_error "unusable --save_dir fails before training" "save_dir $tmp/afile/sub" train $RUN --save_dir "$tmp/afile/sub"
! grep -q "epoch 1" "$tmp/out"
check "no training step ran before the --save_dir error" $?

# A write that fails (file size limit standing in for a full disk) is an error naming the
# file, and the checkpoint already there is untouched.
"$VIT" train $RUN --epochs 1 --save_dir "$tmp/full2" >/dev/null 2>&1
cp "$tmp/full2/$CK-001.safetensors" "$tmp/before.safetensors"
(trap '' XFSZ; ulimit -f 64; exec "$VIT" train $RUN --epochs 1 --save_dir "$tmp/full2") >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && tail -1 "$tmp/err" | grep -q "^vit train: .*$CK-001.safetensors.*File too large"
check "a failed checkpoint write ends the run with one error naming the file (exit $rc)" $?
[ $rc -ne 0 ] || sed 's/^/    /' "$tmp/err"
cmp -s "$tmp/before.safetensors" "$tmp/full2/$CK-001.safetensors" && ! ls "$tmp/full2" | grep -q "\.tmp\."
check "the previous checkpoint is intact and no temporary file is left" $?

finish cli_faults
