#!/bin/sh
# Defaults from the data and names that stay with the model (issue 20): a 3-class folder of
# 64x64 images trains with 3 classes without --num_classes, stores the class names in its
# checkpoints (predict prints them, evaluate finds the data again), gets notes for the image
# size and a warm-up longer than the run; `vit prep` writes classes.txt and no empty shards;
# the errors of a new user's first tries say what was found and which flag fixes it.
. "$(dirname "$0")/lib.sh"
case "$VIT" in /*) ;; *) VIT=$(pwd)/$VIT ;; esac
FX=$(pwd)/tests/fixtures/evalcrop_tf
export HOME="$tmp/home"  # no official weights in ~/.keras

# circle/square/triangle: 4 train and 2 val 64x64 PNGs each (zlib + struct + numpy).
python3 - "$tmp/shapes" <<'PY' || { echo "FAIL cannot write the test images"; exit 1; }
import os, struct, sys, zlib
import numpy as np
root = sys.argv[1]
def png(path, px):
    h, w, _ = px.shape
    raw = b"".join(b"\0" + px[y].tobytes() for y in range(h))
    def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                           chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
y, x = np.mgrid[0:64, 0:64]
shapes = {"circle": (x - 32) ** 2 + (y - 32) ** 2 < 400, "square": (abs(x - 32) < 18) & (abs(y - 32) < 18),
          "triangle": (y > 12) & (y < 52) & (abs(x - 32) < (y - 12) / 2)}
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("val", 2)):
    for name, mask in shapes.items():
        for i in range(n):
            px = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
            px[mask] = 200 + 10 * i
            png(f"{root}/{split}/{name}/{i}.png", px)
PY
TINY="--from_scratch --model ViT-Ti_16 --hidden_size 16 --num_layers 1 --num_heads 2 --mlp_dim 32 --threads 2
      --epochs 1 --batch_size 4 --grad_accum_steps 1 --seed 1 --log_dir="

# Defaults from the data: 3 classes from the folders, notes for 64x64 images at 384 and for
# 4000 warm-up steps in a 3-update run; the class names go into the checkpoint.
expect_ok "train on a 3-class folder" train $TINY --dataset_dir "$tmp/shapes" --save_dir "$tmp/saves"
cp "$tmp/out" "$tmp/train.out"
grep -q "classes 3 " "$tmp/train.out"
check "num_classes from the class folders: $(grep -o 'classes [0-9]*' "$tmp/train.out" | head -1)" $?
grep -q "typically 64x64.*--image_size 64" "$tmp/train.out"
check "the images' size against --image_size is noted" $?
grep -q "note: --warmup_steps 4000 (the default) is longer than this run's 3 updates: warm-up clamped to 1, a tenth" \
    "$tmp/train.out"
check "the default warm-up clamped to a tenth of the run's updates" $?
ck=$(find "$tmp/saves" -name '*.safetensors' | sort | tail -1)
[ -n "$ck" ] && grep -aq '"data.class_names":"circle\\nsquare\\ntriangle"' "$ck"
check "class names in the checkpoint's metadata" $?

# Names and data stay with the model.
expect_ok "predict with the checkpoint" predict --checkpoint "$ck" --threads 2 "$tmp/shapes/val/square/0.png"
grep -Eq "^  1\. .* (circle|square|triangle) \([0-2]\)$" "$tmp/out" && ! grep -q "class (" "$tmp/out"
check "predict prints the stored class names" $?
expect_ok "evaluate with the checkpoint's data" evaluate --checkpoint "$ck" --threads 2 --batch_size 3
grep -q "(6 images" "$tmp/out" && grep -q "the checkpoint's --dataset_dir" "$tmp/out"
check "evaluate defaults to the checkpoint's --dataset_dir" $?

# vit prep: classes.txt beside the shards, shards capped at the image counts; training on the
# shards reads the classes.
expect_ok "prep with the default shard counts" prep --raw_data_dir "$tmp/shapes" --output_dir "$tmp/tfr"
n=$(ls "$tmp/tfr/train" | wc -l) nv=$(ls "$tmp/tfr/validation" | wc -l)
[ "$n" -eq 12 ] && [ "$nv" -eq 6 ] && [ "$(grep -c 'writing 12 and 6 shards' "$tmp/err")" -eq 1 ]
check "prep: 12 + 6 shards for 12 + 6 images, said once (found $n + $nv)" $?
printf 'circle\nsquare\ntriangle\n' | cmp -s - "$tmp/tfr/classes.txt"
check "prep writes classes.txt in label order" $?
expect_ok "train on the shards" train $TINY --image_size 32 --dataset_dir "$tmp/tfr" --save_dir= --warmup_steps 1
grep -q "classes 3 " "$tmp/out"
check "num_classes from the shards' classes.txt" $?
expect_ok "a given warm-up longer than the run" train $TINY --image_size 32 --dataset_dir "$tmp/tfr" --save_dir= \
    --warmup_steps 50
grep -q "note: --warmup_steps 50 is longer than this run's 3 updates: warm-up clamped to 3 (" "$tmp/out"
check "a given warm-up clamped to the run's updates" $?
expect_error "--aa with --deterministic" "--aa asks for augmentation, which --deterministic turns off" \
    train $TINY --dataset_dir "$tmp/shapes" --save_dir= --deterministic --seed 1 --aa rand-m9

# Errors that help.
echo "circle" >"$tmp/labels.txt"
expect_error "resume from a text file" "labels.txt: a text file, not a safetensors or npz file; expected a vit checkpoint" \
    train $TINY --dataset_dir "$tmp/shapes" --save_dir= --resume_from_checkpoint_path "$tmp/labels.txt"
expect_error "predict without weights" "pass --checkpoint FILE" predict "$tmp/shapes/val/square/0.png"
expect_error "evaluate without weights" "no model to evaluate: pass --checkpoint FILE" evaluate \
    --dataset_dir "$tmp/shapes"
grep -q "from_scratch" "$tmp/err" && { echo "FAIL predict suggests --from_scratch"; failed=$((failed + 1)); }
mkdir -p "$tmp/noval/train" "$tmp/noval/validation"
cp -r "$tmp/shapes/train/circle" "$tmp/shapes/train/square" "$tmp/noval/train/"
cp -r "$tmp/shapes/val/circle" "$tmp/noval/validation/"
expect_error "validation/ instead of val/" "found train/, validation/; a folder dataset needs train/<class>/ and val/<class>/" \
    train $TINY --dataset_dir "$tmp/noval" --save_dir=
grep -q -- "--validation_steps 0" "$tmp/err"
check "the missing val/ names the flag that trains without it" $?
expect_ok "--validation_steps 0 trains without val/" train $TINY --image_size 32 --dataset_dir "$tmp/noval" --save_dir= \
    --validation_steps 0
mkdir -p "$tmp/extra" && cp -r "$tmp/shapes/train" "$tmp/shapes/val" "$tmp/extra/"
cp -r "$tmp/shapes/val/circle" "$tmp/extra/val/hexagon"
expect_error "class only in val/" "val/hexagon: a class only in val/" train $TINY --dataset_dir "$tmp/extra" --save_dir=
rm -r "$tmp/extra/val/hexagon" "$tmp/extra/val/square"
expect_error "class only in train/" "train/square: a class only in train/" train $TINY --dataset_dir "$tmp/extra" \
    --save_dir=
expect_error "prep: a class only in train/" "extra/val: train class 'square' has no folder here" \
    prep --raw_data_dir "$tmp/extra" --output_dir "$tmp/tfr-extra"
mkdir -p "$tmp/bad" && cp -r "$tmp/shapes/train" "$tmp/shapes/val" "$tmp/bad/"
head -c 300 "$FX/large_300x200.jpg" >"$tmp/bad/train/circle/cut.jpg"
"$VIT" train $TINY --image_size 32 --dataset_dir "$tmp/bad" --save_dir= >"$tmp/out" 2>"$tmp/err"
[ $? -ne 0 ] && grep -q "cut.jpg.*--skip_corrupt" "$tmp/err"
check "a truncated JPEG's error mentions --skip_corrupt" $?
expect_error "--batch-size" "unknown flag --batch-size: did you mean --batch_size?" train --batch-size 4
expect_error "far from any flag" "unknown flag --zzzzzz (see --help)" train --zzzzzz 4
expect_error "the default batch on 12 images" \
    "fewer than the 8 of one update (--grad_accum_steps 8, the default): pass --batch_size 1" \
    train --from_scratch --model ViT-Ti_16 --num_layers 1 --dataset_dir "$tmp/shapes" --save_dir= --log_dir=

finish cli_data_defaults
