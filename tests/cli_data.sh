#!/bin/sh
# The ImageNet-style data path end to end: Fashion-MNIST written out as PNG class folders,
# converted to TFRecord shards by `vit prep`, read back by an independent reader, and trained
# through the TFRecord loader to the accuracy of the IDX path (within 1 point, same flags).
# VIT_SKIP_LONG=1 skips the two training runs.
. "$(dirname "$0")/lib.sh"
[ -d "$FM" ] || { echo "cli_data: 0 passed, 0 failed"; exit 0; }

# PNG class folders (0..9 sort in label order) with Python's standard library only.
python3 - "$FM" "$tmp/png" <<'PY'
import gzip, os, struct, sys, zlib
src, out = sys.argv[1], sys.argv[2]
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
for split, prefix in (("train", "train"), ("val", "t10k")):
    images = gzip.open(f"{src}/{prefix}-images-idx3-ubyte.gz").read()[16:]
    labels = gzip.open(f"{src}/{prefix}-labels-idx1-ubyte.gz").read()[8:]
    for c in range(10):
        os.makedirs(f"{out}/{split}/{c}", exist_ok=True)
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    for i, lab in enumerate(labels):
        img = images[i * 784:(i + 1) * 784]
        raw = b"".join(b"\0" + img[r * 28:(r + 1) * 28] for r in range(28))
        with open(f"{out}/{split}/{lab}/{i:05d}.png", "wb") as f:
            f.write(head + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))
PY
check "Fashion-MNIST written as PNG class folders" $?
"$VIT" prep --raw_data_dir "$tmp/png" --output_dir "$tmp/tfr" --train_shards 8 --val_shards 2 >"$tmp/prep.out" 2>&1
check "vit prep: $(tail -1 "$tmp/prep.out")" $?
n=$(ls "$tmp"/tfr/train/train-*-of-00008 2>/dev/null | wc -l)
[ "$n" -eq 8 ] && [ -f "$tmp/tfr/validation/validation-00001-of-00002" ]
check "8 train shards and 2 validation shards ($n)" $?
if python3 -c "import tfrecord" 2>/dev/null; then
    python3 tools/check_tfrecords.py "$tmp"/tfr/validation/validation-* >"$tmp/check.out" 2>&1
    check "independent reader reads the shards: $(tail -1 "$tmp/check.out")" $?
else
    echo "FAIL python3 package tfrecord is needed (make deps installs it)"
    failed=$((failed + 1))
fi

if [ -z "$VIT_SKIP_LONG" ]; then
    # The demo's recipe at 2 epochs: this compares the two data paths, not the accuracy.
    flags="$(sed "s|--dataset_dir [^ ]*||; s|--epochs [0-9]*|--epochs 2|" "$(dirname "$0")/demo.flags") --log_dir="
    # shellcheck disable=SC2086
    "$VIT" train $flags --dataset_dir "$FM" --save_dir= --json >"$tmp/idx.json" 2>"$tmp/idx.err"
    check "IDX run" $?
    # shellcheck disable=SC2086
    "$VIT" train $flags --dataset_dir "$tmp/tfr" --image_size 28 --channels 1 --num_classes 10 --save_dir= --json \
        >"$tmp/tfr.json" 2>"$tmp/tfr.err"
    check "TFRecord run: $(tail -1 "$tmp/tfr.err")" $?
    a=$(json_field "$tmp/idx.json" val_top1)
    b=$(json_field "$tmp/tfr.json" val_top1)
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 0.01) }'
    check "TFRecord path accuracy $b within 1 point of the IDX path $a" $?
    echo "IDX path top1 $a, TFRecord path top1 $b"
fi
finish cli_data
