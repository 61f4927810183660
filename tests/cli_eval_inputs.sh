#!/bin/sh
# Evaluation preprocessing as the recipe's TensorFlow pipeline: `vit predict --save_inputs`
# writes each model input as a PNG, compared within 1 level per pixel with TensorFlow's
# (tests/fixtures/evalcrop_tf, from tools/make_evalcrop_tf_fixture.py); --eval_fast_decode
# moves them; `vit evaluate` feeds the model the same input as predict (its loss is
# -log p(label) from predict), with and without --eval_fast_decode.
. "$(dirname "$0")/lib.sh"
FX=tests/fixtures/evalcrop_tf
TINY="--model ViT-Ti_8 --image_size 32 --hidden_size 32 --num_layers 1 --num_heads 2 --mlp_dim 64 --threads 2"

# A PNG reader with the standard library alone (8-bit gray or RGB, any filter, no interlace):
# png_diff A B prints the largest per-pixel difference and the share of pixels over 1 level.
cat >"$tmp/png_diff.py" <<'PY'
import struct, sys, zlib
def read(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (0, 2) and interlace == 0, (path, depth, ctype)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 1
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, b"".join(rows)
wa, ha, ca, a = read(sys.argv[1])
wb, hb, cb, b = read(sys.argv[2])
assert (wa, ha, ca) == (wb, hb, cb), ((wa, ha, ca), (wb, hb, cb))
d = [abs(x - y) for x, y in zip(a, b)]
print(max(d), sum(v > 1 for v in d) / len(d))
PY
png_diff() { python3 "$tmp/png_diff.py" "$1" "$2"; }

# --save_inputs against TensorFlow, every fixture image.
set -- $(awk '{print "'"$FX"'/" $1}' "$FX/cases.txt")
"$VIT" predict $TINY --from_scratch --save_inputs "$tmp/in" "$@" >"$tmp/out" 2>"$tmp/err"
check "predict --save_inputs on $# images: $(tail -n 1 "$tmp/err")" $?
while read -r src want size; do
    got="$tmp/in/${src%.*}.png"
    r=$(png_diff "$got" "$FX/$want" 2>&1)
    [ "${r%% *}" -le 1 ] 2>/dev/null
    check "$src: model input within 1 level of TensorFlow's (max diff, share over 1: $r)" $?
done <"$FX/cases.txt"

# --eval_fast_decode decodes at a reduced DCT scale: a box filter the recipe does not have.
"$VIT" predict $TINY --from_scratch --eval_fast_decode --save_inputs "$tmp/fast" "$FX/large_300x200.jpg" \
    >/dev/null 2>&1
r=$(png_diff "$tmp/fast/large_300x200.png" "$FX/large_300x200.tf.png" 2>&1)
[ "${r%% *}" -gt 1 ] 2>/dev/null
check "--eval_fast_decode moves the 300x200 image's input away from TensorFlow's ($r)" $?

# Names: the file name without its extension; a repeated name gets the argument number.
mkdir -p "$tmp/two"
cp "$FX/square_45x45.jpg" "$tmp/two/"
"$VIT" predict $TINY --from_scratch --channels 1 --save_inputs "$tmp/names" "$FX/square_45x45.jpg" \
    "$tmp/two/square_45x45.jpg" >/dev/null 2>&1
[ -f "$tmp/names/square_45x45.png" ] && [ -f "$tmp/names/square_45x45-2.png" ] &&
    python3 - "$tmp/names/square_45x45.png" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
w, h, depth, ctype = struct.unpack(">IIBB", d[16:26])
sys.exit(0 if (w, h, depth, ctype) == (32, 32, 8, 0) else 1)
PY
check "--save_inputs names DIR/<name>.png, <name>-N.png for a repeat; a 1-channel model's input is gray" $?

echo x >"$tmp/afile"
expect_error "--save_inputs on a file" "save_inputs" predict $TINY --from_scratch --save_inputs "$tmp/afile" \
    "$FX/square_45x45.jpg"
expect_error "--save_inputs under a missing folder" "cannot create" predict $TINY --from_scratch \
    --save_inputs "$tmp/no/such" "$FX/square_45x45.jpg"

# vit evaluate gives the model what predict gives it. A model with a trained (nonzero) head
# from two steps on the fixture images; then one validation image, class 0 of 5.
ds="$tmp/ds"
mkdir -p "$ds/train/a" "$ds/train/b" "$ds/val/a" "$ds/val/b"
cp "$FX/tie_97x64.jpg" "$FX/gray_120x90.jpg" "$ds/train/a/"
cp "$FX/portrait_61x150.jpg" "$FX/square_45x45.jpg" "$ds/train/b/"
cp "$FX/large_300x200.jpg" "$ds/val/a/x.jpg"
"$VIT" train $TINY --dataset_dir "$ds" --from_scratch --num_classes 5 --batch_size 2 --grad_accum_steps 1 \
    --epochs 1 --steps_per_epoch 2 --optimizer adam --initial_lr 0.05 --warmup_steps 0 --validation_steps 0 \
    --seed 1 --run_name . --save_dir "$tmp/saves" --log_dir "" >"$tmp/train.out" 2>&1
check "a tiny model trains on the fixture images: $(tail -n 1 "$tmp/train.out")" $?
ck="$tmp/saves/ViT-Ti_8-ckpt-final.safetensors"
for fast in false true; do
    "$VIT" evaluate --checkpoint "$ck" --dataset_dir "$ds" --batch_size 1 --threads 2 --json \
        --eval_fast_decode="$fast" 2>/dev/null | tail -n 1 >"$tmp/eval_$fast.json"
    "$VIT" predict --checkpoint "$ck" --json --threads 2 --eval_fast_decode="$fast" "$ds/val/a/x.jpg" \
        2>/dev/null >"$tmp/pred_$fast.json"
done
python3 - "$tmp" <<'PY'
import json, math, sys
t = sys.argv[1]
loss = {f: json.load(open(f"{t}/eval_{f}.json"))["loss"] for f in ("false", "true")}
p0 = {f: [c["probability"] for c in json.load(open(f"{t}/pred_{f}.json"))["top5"] if c["class"] == 0][0]
      for f in ("false", "true")}
for f in ("false", "true"):
    want = -math.log(p0[f])
    if abs(loss[f] - want) > 1e-4:
        sys.exit(f"--eval_fast_decode={f}: evaluate loss {loss[f]:.6f}, predict -log p {want:.6f}")
if abs(loss["false"] - loss["true"]) < 1e-6:
    sys.exit(f"--eval_fast_decode does not change the evaluation loss ({loss['false']:.6f})")
print(f"loss full-size {loss['false']:.6f}, DCT-scaled {loss['true']:.6f}")
PY
check "evaluate's loss is -log p(label) of predict, full size and with --eval_fast_decode, which differ" $?
finish cli_eval_inputs
