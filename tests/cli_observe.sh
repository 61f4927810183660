#!/bin/sh
# Observability of `vit train`: TensorBoard event files read back by the real tensorboard
# reader (tools/check_events.py) with the scalars at the right steps and the printed values;
# the --profile Chrome trace holds every op kind of steps A..B only and the measured roofline,
# the table compares ops with it; bad --log_dir and --profile values are refused before training.
. "$(dirname "$0")/lib.sh"

RUN="--run_name . --from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --representation_size 16 --dropout 0.1 --optimizer adamw --initial_lr 1e-3 --warmup_steps 5 --epochs 2
     --steps_per_epoch 24 --grad_accum_steps 2 --validation_steps 4 --seed 5 --threads 1 --batch_size 16 --save_dir="

"$VIT" train $RUN --log_dir "$tmp/logs" --save_summary_steps 4 --profile 3,6 --json >"$tmp/run.json" 2>"$tmp/run.err"
check "training with TensorBoard logs and a profile" $?

if python3 -c "import tensorboard" 2>/dev/null; then
    # 2 epochs x 12 updates, a summary every 4 updates.
    python3 tools/check_events.py "$tmp/logs" --scalar loss --scalar accuracy --scalar learning_rate \
        --scalar examples/sec --scalar global_step/sec --steps 4,8,12,16,20,24 --text flags >"$tmp/ev" 2>&1
    check "training scalars at updates 4..24 and the flags text ($(tail -1 "$tmp/ev"))" $?
    python3 tools/check_events.py "$tmp/logs" --scalar epoch_loss --scalar epoch_accuracy --steps 1,2 >"$tmp/ev" 2>&1
    check "per-epoch training scalars ($(tail -1 "$tmp/ev"))" $?
    python3 tools/check_events.py "$tmp/logs/eval" --scalar epoch_loss --scalar epoch_accuracy \
        --scalar epoch_top5_accuracy --steps 1,2 >"$tmp/ev" 2>&1
    check "per-epoch validation scalars in logs/eval ($(tail -1 "$tmp/ev"))" $?
    # The last epoch's values are the ones the run printed (float32 in the file).
    printf 'epoch_loss 2 %s\nepoch_accuracy 2 %s\n' "$(json_field "$tmp/run.json" train_loss)" \
        "$(json_field "$tmp/run.json" train_top1)" >"$tmp/expect"
    python3 tools/check_events.py "$tmp/logs" --values-from "$tmp/expect" >"$tmp/ev" 2>&1
    check "logged epoch loss and accuracy equal the printed ones ($(tail -1 "$tmp/ev"))" $?
    printf 'epoch_loss 2 %s\n' "$(json_field "$tmp/run.json" val_loss)" >"$tmp/expect"
    python3 tools/check_events.py "$tmp/logs/eval" --values-from "$tmp/expect" >"$tmp/ev" 2>&1
    check "logged validation loss equals the printed one ($(tail -1 "$tmp/ev"))" $?
else
    echo "note: python3 tensorboard missing (make deps installs it): event files not read back"
fi

OPS=gemm,bias_backward,layernorm_forward,layernorm_backward,attention_forward,attention_backward
OPS=$OPS,residual_layernorm,gelu_dropout_forward,gelu_dropout_backward,tanh_forward,tanh_backward,dropout_backward
OPS=$OPS,patchify,tokens_forward,tokens_backward,gather_cls,scatter_cls,xent_forward,xent_backward,grad_norm_clip
OPS=$OPS,optimizer_update,metrics_accumulate,scalars_write,zero,upload_async
python3 tools/check_trace.py "$tmp/logs/profile/trace.rank0.json" --steps 3,6 --ops $OPS \
    --phases forward,backward,update,"data wait" --roofline >"$tmp/tr" 2>&1
check "the trace covers steps 3..6 only with every op kind and the roofline ($(tail -1 "$tmp/tr"))" $?
grep FAIL "$tmp/tr" | head -5 | sed "s/^/    /"
grep -q "^gemm  *backward " "$tmp/run.err" && grep -q "GFLOP/s" "$tmp/run.err"
check "the op table is printed with GFLOP/s" $?
grep -q "^roofline: .* GFLOP/s matrix, .* GB/s memory" "$tmp/run.err" &&
    grep -Eq "^gemm +backward .* (compute|memory) +[0-9]+\.[0-9]$" "$tmp/run.err" &&
    grep -Eq " - +memory +[0-9]+\.[0-9]$" "$tmp/run.err"  # an op without flops: memory-bound
check "the table prints the measured ceilings, bound and % roofline" $?

"$VIT" train $RUN --log_dir "$tmp/logs1" --profile 5 >/dev/null 2>&1
python3 tools/check_trace.py "$tmp/logs1/profile/trace.rank0.json" --steps 5,5 >"$tmp/tr" 2>&1
check "--profile N traces micro-step N alone" $?

: >"$tmp/afile"
expect_error "an unusable --log_dir fails before training" "log_dir $tmp/afile/logs" train $RUN --log_dir "$tmp/afile/logs"
expect_error "--profile nonsense is refused" "profile 5,2" train $RUN --profile 5,2
expect_error "--save_summary_steps must not be negative" "save_summary_steps" train $RUN --save_summary_steps -1

finish cli_observe
