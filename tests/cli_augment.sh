#!/bin/sh
# timm's RandAugment and random erasing from the command line: tiny training runs with
# --aa rand-m9-mstd0.5-inc1 --reprob 0.25 on an RGB image folder (written here with Python's
# standard library) and on Fashion-MNIST (IDX, one gray channel); the same run repeats
# exactly for another number of loader threads; bad values of each flag are one-line errors.
. "$(dirname "$0")/lib.sh"

python3 - "$tmp/png" <<'PY'
import os, struct, sys, zlib
out = sys.argv[1]
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
for split, n in (("train", 8), ("val", 2)):
    for c in range(2):
        os.makedirs(f"{out}/{split}/{c}", exist_ok=True)
        for i in range(n):
            w, h = 40, 32
            raw = b"".join(b"\0" + bytes((x * 5 + y * 3 + 60 * c + 17 * i) % 256 if ch == 0 else
                                         (x * y + 40 * ch + 9 * i) % 256 for x in range(w) for ch in range(3))
                           for y in range(h))
            head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            with open(f"{out}/{split}/{c}/{i}.png", "wb") as f:
                f.write(head + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))
PY
check "RGB PNG class folders written" $?

TINY="--from_scratch --save_dir= --log_dir= --model ViT-Ti_4 --hidden_size 16 --num_layers 1 --num_heads 2 --mlp_dim 32 --epochs 1 --grad_accum_steps 1 --seed 1 --json"
RGB="--dataset_dir $tmp/png --image_size 16 --batch_size 4 $TINY"
AUG="--aa rand-m9-mstd0.5-inc1 --reprob 0.25"

expect_ok "folder: train with $AUG" train $RGB $AUG --data_workers 1
cp "$tmp/out" "$tmp/aug1"
expect_ok "folder: the same with 2 loader threads" train $RGB $AUG --data_workers 2
a=$(json_field "$tmp/aug1" train_loss) b=$(json_field "$tmp/out" train_loss)
[ -n "$a" ] && [ "$a" = "$b" ]
check "same training loss for 1 and 2 loader threads ($a, $b)" $?
expect_ok "folder: without augmentation flags" train $RGB --data_workers 1
c=$(json_field "$tmp/out" train_loss)
[ -n "$c" ] && [ "$a" != "$c" ]
check "the flags change the batches (loss $a with, $c without)" $?
expect_ok "folder: --remode const --recount 3, n3 p0.9 weighted" train $RGB \
    --aa rand-m7-n3-p0.9-tweights --reprob 1 --remode const --recount 3
expect_ok "folder: --remode rand, a 1-channel model" train $RGB --channels 1 --aa rand-m9-mstd101 --reprob 0.5 \
    --remode rand

if [ -d "$FM" ]; then
    expect_ok "Fashion-MNIST (IDX, gray): train with $AUG" train --dataset_dir "$FM" --batch_size 8 \
        --steps_per_epoch 3 --validation_steps 1 $TINY $AUG
fi

# Bad values: one line naming the flag.
expect_error "--aa rand-m99x" "--aa rand-m99x: 'm99x': expected an integer after 'm'" train $RGB --aa rand-m99x
expect_error "--aa not RandAugment" "--aa original-mstd0.5: expected a RandAugment policy" train $RGB --aa original-mstd0.5
expect_error "--aa unknown section" "--aa rand-m9-z2: unknown section 'z2'" train $RGB --aa rand-m9-z2
expect_error "--aa p out of range" "p must be in \[0, 1\]" train $RGB --aa rand-p2
expect_error "--reprob 1.5" "--reprob 1.5: must be in \[0, 1\]" train $RGB --reprob 1.5
expect_error "--reprob x" "--reprob x: expected a number" train $RGB --reprob x
expect_error "--remode noise" "--remode noise: expected pixel, const or rand" train $RGB --remode noise
expect_error "--recount 0" "--recount 0: must be in \[1, 64\]" train $RGB --recount 0
expect_error "--recount 65" "--recount 65: must be in \[1, 64\]" train $RGB --recount 65
expect_error "--recount x" "--recount x: expected an integer" train $RGB --recount x
finish cli_augment
