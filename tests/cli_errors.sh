#!/bin/sh
# Bad input gets a one-line error naming the flag or file, a nonzero exit, never a crash.
. "$(dirname "$0")/lib.sh"
SMALL="--from_scratch --save_dir= --log_dir= --model ViT-Ti_4 --hidden_size 16 --num_layers 1 --num_heads 2 --mlp_dim 32 --epochs 1 --steps_per_epoch 1 --validation_steps 0 --grad_accum_steps 1 --batch_size 2"



# flags
expect_error "unknown flag" "unknown flag --bogus" train --bogus 1
expect_error "unknown command" "unknown command" frobnicate
expect_error "missing value" "--batch_size: missing value" train --batch_size
expect_error "non-integer" "--batch_size x: expected an integer" train --batch_size x
expect_error "batch 0" "--batch_size 0" train --synthetic_data $SMALL --batch_size 0
expect_error "negative lr" "--initial_lr -0.1" train --synthetic_data $SMALL --initial_lr -0.1
expect_error "nan lr" "--initial_lr nan" train --synthetic_data $SMALL --initial_lr nan
expect_error "heads not dividing hidden" "--num_heads 3 does not divide --hidden_size 16" train --synthetic_data $SMALL --num_heads 3
expect_error "image not divisible by patch" "--image_size 30 is not divisible by --patch_size 4" train --synthetic_data $SMALL --image_size 30
expect_error "bad model" "--model ViT-Q_16" train --model ViT-Q_16
expect_error "bad optimizer" "--optimizer lamb" train --synthetic_data $SMALL --optimizer lamb
expect_error "bad schedule" "lr_sched" train --synthetic_data $SMALL --lr_sched cosine
expect_error "bad dtype" "--dtype fp8" train --synthetic_data $SMALL -d fp8
expect_ok "bf16 matrix products on the CPU" train --synthetic_data $SMALL -d bf16
expect_error "HPU refused" "--device HPU" train --synthetic_data $SMALL --device HPU
expect_error "deterministic needs seed" "--deterministic needs --seed" train --synthetic_data $SMALL --deterministic
expect_error "label smoothing range" "--label_smoothing 1.5" train --synthetic_data $SMALL --label_smoothing 1.5
expect_error "info bad heads" "does not divide" info --model ViT-B_16 --num_heads 7
expect_ok "compat flag ignored" train --synthetic_data $SMALL --base_tf_server_port 9000
expect_ok "help" train --help

# weights and checkpoints
expect_error "missing official weights" "no official weights at $tmp/nowhere/weights/ViT-B_16_imagenet21k.npz" \
    train --synthetic_data --model ViT-B_16 --weights_path "$tmp/nowhere"
expect_error "missing weights names --from_scratch" "--from_scratch" train --synthetic_data --weights_path "$tmp/nowhere"
head -c 3000 /dev/urandom >"$tmp/garbage.npz"
expect_error "garbage npz" "$tmp/garbage.npz" train $SMALL --synthetic_data --from_scratch=false --pretrained "$tmp/garbage.npz"
printf 'PK\003\004garbage' >"$tmp/short.npz"
expect_error "truncated zip" "$tmp/short.npz" evaluate --synthetic_data --pretrained "$tmp/short.npz"
printf '\377\377\377\377\377\377\377\177{}' >"$tmp/absurd.safetensors"
expect_error "absurd safetensors header length" "$tmp/absurd.safetensors" evaluate --synthetic_data --checkpoint "$tmp/absurd.safetensors"
printf '\010\000\000\000\000\000\000\000{"a":[}' >"$tmp/badjson.safetensors"
expect_error "bad JSON header" "$tmp/badjson.safetensors" evaluate --synthetic_data --checkpoint "$tmp/badjson.safetensors"
expect_error "missing checkpoint" "$tmp/none.safetensors" evaluate --synthetic_data --checkpoint "$tmp/none.safetensors"
expect_error "export needs --out" "export needs one of --checkpoint FILE or --pretrained FILE, and --out" export --checkpoint "$tmp/none.safetensors"
expect_error "export with two sources" "export needs one of" export --checkpoint "$tmp/a.safetensors" --pretrained "$tmp/b.npz" --out "$tmp/x.npz"
expect_error "export format unknown" "--format pt: expected npz, timm, hf or onnx" export --checkpoint "$tmp/none.safetensors" --out "$tmp/x.pt" --format pt
expect_error "export format from name" "--out $tmp/x.bin: no format from its name" export --checkpoint "$tmp/none.safetensors" --out "$tmp/x.bin"
expect_error "layernorm eps range" "--layernorm_eps 0: must be in (0, 1)" info --layernorm_eps 0
expect_error "unwritable save dir" "--save_dir /proc/vit-test" train --synthetic_data --from_scratch --save_dir /proc/vit-test
expect_error "bad head init" "--head_init" train --synthetic_data --from_scratch --head_init ones
expect_error "predict without images" "needs image files" predict --checkpoint "$tmp/none.safetensors"

# data
expect_error "missing dataset dir" "--dataset_dir $tmp/nope: no such folder" train $SMALL --dataset_dir "$tmp/nope"
mkdir -p "$tmp/empty"
expect_error "no IDX files" "found nothing; expected IDX files" train $SMALL --dataset_dir "$tmp/empty"
if [ -d "$FM" ]; then
    # truncated image file
    mkdir -p "$tmp/trunc"
    cp "$FM"/*labels* "$FM"/t10k-images* "$tmp/trunc/"
    gzip -dc "$FM/train-images-idx3-ubyte.gz" | head -c 100000 >"$tmp/trunc/train-images-idx3-ubyte"
    expect_error "truncated IDX" "train-images-idx3-ubyte" train $SMALL --dataset_dir "$tmp/trunc"
    # image/label count mismatch: t10k labels paired with train images
    mkdir -p "$tmp/mismatch"
    cp "$FM"/train-images* "$FM"/t10k-* "$tmp/mismatch/"
    cp "$FM/t10k-labels-idx1-ubyte.gz" "$tmp/mismatch/train-labels-idx1-ubyte.gz"
    expect_error "count mismatch" "labels" train $SMALL --dataset_dir "$tmp/mismatch"
    # swapped files: labels where images belong (bad magic)
    mkdir -p "$tmp/swapped"
    cp "$FM"/t10k-* "$FM"/train-labels* "$tmp/swapped/"
    cp "$FM/train-labels-idx1-ubyte.gz" "$tmp/swapped/train-images-idx3-ubyte.gz"
    expect_error "bad magic" "magic" train $SMALL --dataset_dir "$tmp/swapped"
    # not gzip data behind a .gz name
    mkdir -p "$tmp/garbage"
    cp "$FM"/t10k-* "$FM"/train-labels* "$tmp/garbage/"
    head -c 5000 /dev/urandom | gzip -c | head -c 3000 >"$tmp/garbage/train-images-idx3-ubyte.gz"
    expect_error "corrupt gzip" "train-images-idx3-ubyte" train $SMALL --dataset_dir "$tmp/garbage"
    expect_error "image size vs IDX" "--image_size 32" train $SMALL --dataset_dir "$FM" --image_size 32
fi
finish cli_errors
