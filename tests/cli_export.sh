#!/bin/sh
# vit export in every format from a checkpoint, and back in through --pretrained: the
# official .npz, timm's and Hugging Face's safetensors re-import bit for bit and evaluate
# as the checkpoint does; wrong files given to the wrong flag get a one-line error. (The
# conversions against timm and transformers themselves: test_weights_torch; ONNX against
# onnxruntime: test_onnx_export.)
. "$(dirname "$0")/lib.sh"

SHAPE="--model ViT-Ti_4 --hidden_size 48 --num_layers 2 --num_heads 3 --mlp_dim 96 --image_size 32 --num_classes 10"
"$VIT" train --from_scratch --synthetic_data $SHAPE --epochs 1 --steps_per_epoch 3 --batch_size 8 --grad_accum_steps 1 \
    --seed 3 --threads 1 --run_name . --save_dir "$tmp/s" --log_dir= >/dev/null 2>"$tmp/train.err"
check "a checkpoint to export" $?
ck="$tmp/s/ViT-Ti_4-ckpt-final.safetensors"

expect_ok "export npz" export --checkpoint "$ck" --out "$tmp/a.npz"
expect_ok "export timm (from the name)" export --checkpoint "$ck" --out "$tmp/t.safetensors"
grep -q "timm state dict" "$tmp/out"
check "a .safetensors name means timm" $?
expect_ok "export hf" export --checkpoint "$ck" --format hf --out "$tmp/hf"
[ -f "$tmp/hf/model.safetensors" ] && [ -f "$tmp/hf/config.json" ]
check "the hf folder holds model.safetensors and config.json" $?
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); sys.exit(not (c['model_type']=='vit' and c['hidden_size']==48
    and c['num_hidden_layers']==2 and c['num_attention_heads']==3 and c['intermediate_size']==96
    and c['image_size']==32 and c['patch_size']==4 and len(c['id2label'])==10))" "$tmp/hf/config.json"
check "config.json describes the model" $?
expect_ok "export onnx" export --checkpoint "$ck" --out "$tmp/m.onnx"
[ -s "$tmp/m.onnx" ] && ! ls "$tmp"/*.tmp* >/dev/null 2>&1
check "the onnx file is written, no temporary file left" $?

# Back in: each exported file, read as --pretrained and written as .npz, gives the same tensors.
for f in a.npz t.safetensors hf/model.safetensors; do
    expect_ok "import $f" export --pretrained "$tmp/$f" $SHAPE --out "$tmp/back.npz"
    python3 - "$tmp/a.npz" "$tmp/back.npz" <<'PY'
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
same = sorted(a.files) == sorted(b.files) and all(a[k].shape == b[k].shape and (a[k].view(np.uint32) == b[k].view(np.uint32)).all() for k in a.files)
sys.exit(0 if same else 1)
PY
    check "$f re-imports bit for bit" $?
done
grep -q "(Hugging Face transformers naming)" "$tmp/err"
check "the naming is reported" $?

# A Hugging Face folder as --pretrained: config.json gives the architecture, no model flags.
expect_ok "import the hf folder" export --pretrained "$tmp/hf" --out "$tmp/back.npz"
python3 -c "import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2]); sys.exit(not all((a[k] == b[k]).all() for k in a.files))" "$tmp/a.npz" "$tmp/back.npz"
check "the hf folder alone re-imports bit for bit" $?
mkdir "$tmp/bert" && printf '{"model_type": "bert", "hidden_size": 48}' >"$tmp/bert/config.json"
expect_error "a folder of another model" "config.json: .*model_type \"bert\"" export --pretrained "$tmp/bert" --out "$tmp/x.npz"

# Evaluating the checkpoint and the timm export gives the same loss.
EVAL="--synthetic_data --validation_steps 2 --batch_size 8 --seed 3 --threads 1 --json"
"$VIT" evaluate --checkpoint "$ck" $EVAL >"$tmp/e1.json" 2>/dev/null
check "evaluate the checkpoint" $?
"$VIT" evaluate --pretrained "$tmp/t.safetensors" $SHAPE $EVAL >"$tmp/e2.json" 2>/dev/null
check "evaluate the timm export" $?
l1=$(json_field "$tmp/e1.json" loss)
l2=$(json_field "$tmp/e2.json" loss)
[ -n "$l1" ] && [ "$l1" = "$l2" ]
check "same loss from the checkpoint and from its timm export ($l1, $l2)" $?

# Wrong files for the wrong flag.
expect_error "checkpoint as --pretrained" "a vit checkpoint, not weights to start from" \
    evaluate --pretrained "$ck" $SHAPE $EVAL
expect_error "timm file as a checkpoint to resume" "weights to start from go to --pretrained" \
    train --resume_from_checkpoint_path "$tmp/t.safetensors" --synthetic_data $SHAPE --save_dir= --log_dir=
expect_error "another width" "$tmp/t.safetensors: .*shape" export --pretrained "$tmp/t.safetensors" $SHAPE \
    --hidden_size 64 --num_heads 4 --out "$tmp/x.npz"
python3 -c "
from safetensors.numpy import save_file; import numpy as np
save_file({'foo.weight': np.zeros((2, 2), np.float32)}, '$tmp/other.safetensors')"
expect_error "unknown naming" "neither timm's" evaluate --pretrained "$tmp/other.safetensors" $SHAPE $EVAL

# A model with pre_logits has no place in timm's or transformers' classifiers; npz and onnx keep it.
"$VIT" train --from_scratch --synthetic_data $SHAPE --representation_size 16 --epochs 1 --steps_per_epoch 2 \
    --batch_size 8 --grad_accum_steps 1 --threads 1 --run_name . --save_dir "$tmp/p" --log_dir= >/dev/null 2>&1
check "a checkpoint with pre_logits" $?
expect_error "pre_logits to timm" "pre_logits" export --checkpoint "$tmp/p/ViT-Ti_4-ckpt-final.safetensors" \
    --out "$tmp/p.safetensors"
expect_ok "pre_logits to npz" export --checkpoint "$tmp/p/ViT-Ti_4-ckpt-final.safetensors" --out "$tmp/p.npz"
expect_ok "pre_logits to onnx" export --checkpoint "$tmp/p/ViT-Ti_4-ckpt-final.safetensors" --out "$tmp/p.onnx"

finish cli_export
