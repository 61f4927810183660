#!/bin/sh
# A run is one thing: a resume takes the settings its checkpoint recorded (typed flags that
# differ are applied with a notice, or refused where they would change the model, optimizer
# or seed), its checkpoints record the settings in effect, each run writes into its own
# folders (named at the start and the end), a run that fails before its first update leaves
# nothing, and the progress line carries the run's ETA.
. "$(dirname "$0")/lib.sh"

# No --seed, --image_size or --num_classes: the run draws its seed and takes the data's shape.
RUN="--from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --optimizer adamw --initial_lr 1e-3 --warmup_steps 5 --epochs 2 --steps_per_epoch 8 --grad_accum_steps 2
     --validation_steps 2 --threads 1 --batch_size 16"
CK=ViT-Ti_4-ckpt
meta() {  # meta FILE KEY: a checkpoint's metadata value
    python3 -c "
import json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]
print(json.loads(f.read(n))['__metadata__'].get(sys.argv[2], ''))" "$1" "$2"
}

# A new run: its own folders under --save_dir and --log_dir, named at the start and the end.
"$VIT" train $RUN --save_dir "$tmp/s" --log_dir "$tmp/l" >"$tmp/a.out" 2>"$tmp/a.err"
check "a new run" $?
name=$(ls "$tmp/s")
[ "$(ls "$tmp/s" | wc -l)" = 1 ] && [ "$(ls "$tmp/l")" = "$name" ] && case "$name" in ViT-Ti_4-2*) true ;; *) false ;; esac
check "one run folder, <model>-<date-time>, under each of --save_dir and --log_dir ($name)" $?
run="$tmp/s/$name"
grep -q "^run $name: checkpoints in $run, logs in $tmp/l/$name$" "$tmp/a.out" &&
    grep -q "^finished run $name: checkpoints in $run, logs in $tmp/l/$name$" "$tmp/a.out"
check "both folders printed at the start and at the end" $?
[ "$(grep -c "^checkpoint: $run/$CK-" "$tmp/a.out")" = 3 ] && grep -q "^checkpoint: $run/$CK-final.safetensors$" "$tmp/a.out"
check "each checkpoint written prints its path" $?
grep -q "ETA [0-9:]* (epoch [0-9:]*)" "$tmp/a.out"
check "the progress line shows the run's ETA and the epoch's" $?
ls "$tmp/l/$name"/events.out.tfevents.* >/dev/null 2>&1 && ls "$tmp/l/$name"/eval/events.out.tfevents.* >/dev/null 2>&1
check "TensorBoard files in the run's log folder" $?
[ "$(meta "$run/$CK-001.safetensors" flags.image_size)" = 28 ] &&
    [ "$(meta "$run/$CK-001.safetensors" flags.num_classes)" = 10 ] &&
    [ "$(meta "$run/$CK-001.safetensors" flags.run_name)" = "$name" ] &&
    [ "$(meta "$run/$CK-001.safetensors" flags.seed)" -ge 0 ]
check "checkpoints record the settings in effect (image size, classes, run name, the seed drawn)" $?
[ "$(meta "$run/$CK-001.safetensors" flags.weight_decay)" = 0.00999999978 ] &&
    [ "$(meta "$run/$CK-001.safetensors" flags.beta2)" = 0.999000013 ]
check "and the optimizer's hyper-parameters as used (adamw's defaults: weight decay $(meta "$run/$CK-001.safetensors" flags.weight_decay))" $?
cp "$run/$CK-final.safetensors" "$tmp/a-final.safetensors"

# Resume with no flags but the checkpoint: the same run, in its folder, to the same result.
"$VIT" train --resume_from_checkpoint_path "$run/$CK-001.safetensors" >"$tmp/r.out" 2>"$tmp/r.err"
check "a resume from the checkpoint alone" $?
grep -q "adamw lr 0.001, WarmupCosine" "$tmp/r.out" && ! grep -q "overrides" "$tmp/r.err"
check "the resume keeps the recorded optimizer, rate and schedule, without notices" $?
[ "$(ls "$tmp/s")" = "$name" ] && [ "$(ls "$tmp/l")" = "$name" ] && grep -q "^finished run $name: checkpoints in $run," "$tmp/r.out"
check "the resume continues in the run's own folders" $?
python3 tools/compare_checkpoints.py "$tmp/a-final.safetensors" "$run/$CK-final.safetensors" >"$tmp/cmp" 2>&1
check "resumed = uninterrupted, bit for bit ($(tail -1 "$tmp/cmp"))" $?
f="$run/$CK-final.safetensors"
[ "$(meta "$f" flags.model)" = ViT-Ti_4 ] && [ "$(meta "$f" flags.image_size)" = 28 ] &&
    [ "$(meta "$f" flags.num_layers)" = 2 ] && [ "$(meta "$f" flags.optimizer)" = adamw ] &&
    [ "$(meta "$f" flags.warmup_steps)" = 5 ] && [ "$(meta "$f" flags.run_name)" = "$name" ]
check "the resumed checkpoint records the effective settings, not the defaults" $?

# Typed flags that differ: applied with a notice, or refused.
"$VIT" train --resume_from_checkpoint_path "$run/$CK-001.safetensors" --initial_lr 0.01 --epochs 3 \
    --steps_per_epoch 4 --num_layers 2 --save_dir= --log_dir= >"$tmp/o.out" 2>"$tmp/o.err"
check "a resume with overrides" $?
grep -q "^--initial_lr 0.01 overrides the checkpoint's 0.001$" "$tmp/o.err" &&
    grep -q "^--epochs 3 overrides the checkpoint's 2$" "$tmp/o.err" && ! grep -q "num_layers" "$tmp/o.err" &&
    grep -q "adamw lr 0.01," "$tmp/o.out"
check "each override is one notice (a flag equal to the checkpoint's is silent)" $?
for bad in "--num_layers 3" "--image_size 32" "--hidden_size 64" "--optimizer sgd" "--num_classes 5" "--seed 99"; do
    expect_error "resume refuses $bad" "^vit train: ${bad% *} ${bad#* }: the run in .* cannot change" \
        train --resume_from_checkpoint_path "$run/$CK-001.safetensors" $bad
done
[ "$(ls "$run" | wc -l)" = 3 ]
check "refused resumes wrote nothing" $?

# Runs never mix: a second run gets its own folder; a name that holds a run is refused.
"$VIT" train $RUN --epochs 1 --save_dir "$tmp/s" --log_dir "$tmp/l" --run_name second >/dev/null 2>&1
check "a second run, named" $?
[ "$(ls "$tmp/s" | wc -l)" = 2 ] && [ "$(ls "$tmp/s/second")" = "$(printf '%s\n' $CK-001.safetensors $CK-final.safetensors)" ] &&
    [ "$(ls "$run" | wc -l)" = 3 ]
check "each run folder holds only its own checkpoints" $?
expect_error "a --run_name that holds a run is refused" "^vit train: --run_name second: .*already holds" \
    train $RUN --save_dir "$tmp/s" --log_dir "$tmp/l" --run_name second
"$VIT" train --resume_from_checkpoint_path "$tmp/s" --epochs 2 --save_dir= --log_dir= >/dev/null 2>"$tmp/p.err"
check "a resume from a --save_dir of runs" $?
grep -q "^note: $tmp/s holds 2 runs: resuming the newest, $tmp/s/second " "$tmp/p.err"
check "takes the newest run and names it" $?

# A run that fails before its first update leaves no folders and no event files.
expect_error "a run on missing data fails" "missing" train $RUN --dataset_dir "$tmp/missing" \
    --save_dir "$tmp/f/saves" --log_dir "$tmp/f/logs"
[ ! -e "$tmp/f" ]
check "and leaves nothing behind" $?
"$VIT" train $RUN --save_dir "$tmp/s" --log_dir "$tmp/l" --batch_size 7 --grad_accum_steps 3 --steps_per_epoch 2 \
    >/dev/null 2>&1
[ $? = 2 ] && [ "$(ls "$tmp/s" | wc -l)" = 2 ] && [ "$(ls "$tmp/l" | wc -l)" = 2 ]
check "a run refused after its folders were made removes them" $?

# --run_name . keeps the flat layout; a checkpoint of an older vit (no flags.* keys) resumes
# with today's defaults in its own folder.
"$VIT" train $RUN --epochs 1 --run_name . --save_dir "$tmp/flat" --log_dir= >/dev/null 2>&1 &&
    [ -f "$tmp/flat/$CK-final.safetensors" ]
check "--run_name . writes into --save_dir itself" $?
python3 - "$tmp/flat/$CK-001.safetensors" "$tmp/flat/old-ckpt-001.safetensors" <<'PY'
import sys
from safetensors import safe_open
from safetensors.numpy import save_file
with safe_open(sys.argv[1], "np") as f:
    meta = {k: v for k, v in f.metadata().items() if not k.startswith(("crc32c", "flags."))}
    save_file({k: f.get_tensor(k) for k in f.keys()}, sys.argv[2], metadata=meta)
PY
"$VIT" train $RUN --epochs 2 --log_dir= --resume_from_checkpoint_path "$tmp/flat/old-ckpt-001.safetensors" \
    >"$tmp/old.out" 2>"$tmp/old.err"
check "an older checkpoint without recorded flags resumes" $?
grep -q "^finished run \.: checkpoints in $tmp/flat," "$tmp/old.out" && [ -f "$tmp/flat/$CK-002.safetensors" ]
check "in its own folder" $?

finish cli_run_settings
