#!/bin/sh
# Nothing silently wrong: a flipped bit in any file vit writes is an error naming the file.
#   - checkpoints carry CRC-32Cs of every tensor and of the header (src/train/checkpoint.h),
#     which tools/verify_checksums.py recomputes independently; every reader (evaluate,
#     predict, export, a resume) refuses a damaged one naming the file and the tensor; a file
#     without checksums loads with a one-line note; a resume from a folder skips damaged
#     checkpoints, naming each, and fails only when none verifies;
#   - an exported .npz (zip CRC), TensorBoard events (TFRecord framing CRCs, which
#     tools/check_events.py verifies: TensorBoard itself drops the rest of a file at a bad
#     one), and TFRecord shards from `vit prep` (an error naming the file and record).
. "$(dirname "$0")/lib.sh"
[ -d "$FM" ] || { echo "cli_checksums: skipped (no Fashion-MNIST at $FM)"; finish cli_checksums; exit; }
RUN="--run_name . --from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --dropout 0.1 --optimizer adamw --initial_lr 1e-3 --warmup_steps 5 --epochs 1 --steps_per_epoch 30
     --grad_accum_steps 2 --validation_steps 2 --seed 5 --threads 1 --batch_size 16 --json --save_summary_steps 1
     --checkpoint_every_steps 5"
CK=ViT-Ti_4-ckpt

# flip FILE AT MASK [data]: XOR one byte in place; AT counts from the start of the safetensors
# data section with "data", else from the start of the file.
flip() {
    python3 - "$@" <<'PY'
import struct, sys
path, at, mask = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
with open(path, "r+b") as f:
    if len(sys.argv) > 4:
        at += 8 + struct.unpack("<Q", f.read(8))[0]
    f.seek(at)
    b = f.read(1)[0]
    f.seek(at)
    f.write(bytes([b ^ mask]))
PY
}

"$VIT" train $RUN --save_dir "$tmp/s" --log_dir "$tmp/logs" >"$tmp/s.json" 2>"$tmp/s.err"
check "a short run writes checkpoints and events" $?
final=$tmp/s/$CK-final.safetensors
python3 tools/verify_checksums.py "$tmp"/s/*.safetensors >"$tmp/v" 2>&1
check "every checkpoint's checksums agree with an independent implementation ($(tail -1 "$tmp/v"))" $?
python3 tools/check_checkpoint.py "$final" >"$tmp/c" 2>&1
check "the checkpoint is otherwise unchanged: tools/check_checkpoint.py passes ($(tail -1 "$tmp/c"))" $?
python3 -c "
from safetensors import safe_open
m = safe_open('$final', 'np').metadata()
n = sum(k.startswith('crc32c/') for k in m)
assert n == len(safe_open('$final', 'np').keys()) and len(m['crc32c.header']) == 8, n" 2>"$tmp/err"
check "Python safetensors reads the checksums as metadata strings, one per tensor" $?

# The issue's case: one byte XOR 0x40 at 1000 bytes past the header, through every reader.
bad=$tmp/bad.safetensors
cp "$final" "$bad"
flip "$bad" 1000 0x40 data
python3 - "$FM" "$tmp/shirt.png" <<'PY'
import gzip, struct, sys, zlib
img = gzip.open(sys.argv[1] + "/t10k-images-idx3-ubyte.gz").read()[16:16 + 784]
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
raw = b"".join(b"\0" + img[r * 28:(r + 1) * 28] for r in range(28))
open(sys.argv[2], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) +
                              chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
PY
PAT="^vit [a-z]*: $bad: tensor [^ ]*: checksum mismatch"
expect_error "evaluate refuses a flipped data bit, naming file and tensor" "$PAT" evaluate --checkpoint "$bad" \
    --dataset_dir "$FM" --validation_steps 1
expect_error "predict refuses it" "$PAT" predict --checkpoint "$bad" "$tmp/shirt.png"
expect_error "export refuses it" "$PAT" export --checkpoint "$bad" --out "$tmp/bad.npz"
[ ! -e "$tmp/bad.npz" ]
check "export wrote nothing" $?
expect_error "a resume from the file refuses it" "$PAT" train $RUN --save_dir= --resume_from_checkpoint_path "$bad"
expect_ok "the undamaged file evaluates" evaluate --checkpoint "$final" --dataset_dir "$FM" --validation_steps 1

# A metadata value changed in the header (train.update "15" -> "14": still valid JSON).
cp "$final" "$tmp/hdr.safetensors"
at=$(python3 -c "import sys; b = open(sys.argv[1], 'rb').read(); print(b.index(b'\"train.update\":\"15\"') + 16)" \
    "$tmp/hdr.safetensors")
flip "$tmp/hdr.safetensors" "$at" 0x01
expect_error "a changed metadata value fails the header checksum" \
    "^vit evaluate: $tmp/hdr.safetensors: header checksum mismatch" evaluate --checkpoint "$tmp/hdr.safetensors" \
    --dataset_dir "$FM" --validation_steps 1

# Without checksums (an older vit, or another writer): loads, with one note.
python3 - "$final" "$tmp/old.safetensors" <<'PY'
import sys
from safetensors import safe_open
from safetensors.numpy import save_file
with safe_open(sys.argv[1], "np") as f:
    meta = {k: v for k, v in f.metadata().items() if not k.startswith("crc32c")}
    save_file({k: f.get_tensor(k) for k in f.keys()}, sys.argv[2], metadata=meta)
PY
"$VIT" evaluate --checkpoint "$tmp/old.safetensors" --dataset_dir "$FM" --validation_steps 1 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc = 0 ] && [ "$(grep -c . "$tmp/err")" = 1 ] && grep -q "^note: $tmp/old.safetensors has no checksums" "$tmp/err"
check "a checkpoint without checksums evaluates, with a one-line note (exit $rc)" $?
"$VIT" train $RUN --save_dir "$tmp/o" --resume_from_checkpoint_path "$tmp/old.safetensors" --epochs 2 \
    >/dev/null 2>"$tmp/err"
check "and resumes" $?

# --resume_from_checkpoint_path DIR: the newest that verifies; each newer one named, with why.
mkdir "$tmp/r"
cp -p "$tmp/s/$CK-step-0000005.safetensors" "$tmp/s/$CK-step-0000010.safetensors" "$tmp/s/$CK-001.safetensors" "$tmp/r/"
flip "$tmp/r/$CK-001.safetensors" 5000 0x08 data
"$VIT" train $RUN --log_dir= --save_dir "$tmp/r" --resume_from_checkpoint_path "$tmp/r" >/dev/null 2>"$tmp/err"
check "resume from a folder whose newest checkpoint is damaged runs" $?
grep -q "^skipping a checkpoint that does not verify: $tmp/r/$CK-001.safetensors: tensor .*: checksum mismatch" \
    "$tmp/err" && [ "$(grep -c '^skipping' "$tmp/err")" = 1 ]
check "it names the damaged checkpoint it skipped, and why, in one line" $?
grep -q "^resuming $tmp/r/$CK-step-0000010.safetensors: " "$tmp/err"
check "it resumes from the newest one that verifies" $?
python3 tools/compare_checkpoints.py "$final" "$tmp/r/$CK-final.safetensors" >"$tmp/cmp" 2>&1
check "and ends bit for bit as the uninterrupted run ($(tail -1 "$tmp/cmp"))" $?
rm "$tmp/r/$CK-final.safetensors"
flip "$tmp/r/$CK-step-0000010.safetensors" 100 0x01  # in the header
flip "$tmp/r/$CK-step-0000005.safetensors" 70000 0x80
flip "$tmp/r/$CK-001.safetensors" 9 0x10  # the header length (the run above rewrote this one)
head -c 4000 "$tmp/s/$CK-step-0000010.safetensors" >"$tmp/r/$CK-step-0000012.safetensors"  # truncated
"$VIT" train $RUN --save_dir "$tmp/r" --resume_from_checkpoint_path "$tmp/r" >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -ge 1 ] && [ $rc -lt 128 ] && [ "$(grep -c '^skipping a checkpoint that does not verify' "$tmp/err")" = 4 ] &&
    tail -1 "$tmp/err" | grep -q "^vit train: --resume_from_checkpoint_path $tmp/r: none of its 4 checkpoints verifies"
check "with none intact (3 damaged, 1 truncated) the resume fails, naming each (exit $rc)" $?
[ $rc -ge 1 ] || sed 's/^/    /' "$tmp/err"

# Exported .npz: the zip CRC of a member.
"$VIT" export --checkpoint "$final" --out "$tmp/e.npz" >/dev/null 2>"$tmp/err"
check "export to .npz" $?
cp "$tmp/e.npz" "$tmp/e2.npz"
at=$(python3 -c "
import sys, zipfile
i = zipfile.ZipFile(sys.argv[1]).getinfo('Transformer/posembed_input/pos_embedding.npy')
print(i.header_offset + 30 + len(i.filename) + len(i.extra) + 1000)" "$tmp/e2.npz")
flip "$tmp/e2.npz" "$at" 0x40
M="--model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64 --dataset_dir $FM --validation_steps 1"
expect_ok "the exported .npz evaluates" evaluate --pretrained "$tmp/e.npz" $M
expect_error "a flipped bit in the .npz is an error naming the file and member" \
    "$tmp/e2.npz: Transformer/posembed_input/pos_embedding: .*CRC" evaluate --pretrained "$tmp/e2.npz" $M

# TensorBoard events: the framing CRCs.
python3 tools/check_events.py "$tmp/logs" >"$tmp/ev" 2>&1
check "the event file passes tools/check_events.py ($(tail -1 "$tmp/ev"))" $?
mkdir "$tmp/logs2"
ev=$(ls "$tmp/logs" | grep tfevents | head -1)
cp "$tmp/logs/$ev" "$tmp/logs2/"
size=$(wc -c <"$tmp/logs2/$ev")
flip "$tmp/logs2/$ev" $((size / 2)) 0x04
python3 tools/check_events.py "$tmp/logs2" >"$tmp/ev" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "$ev: record [0-9]* at byte [0-9]*: \(length\|data\) CRC mismatch" "$tmp/ev"
check "a flipped bit in it fails tools/check_events.py, naming the file and record (exit $rc)" $?

# TFRecord shards from vit prep.
python3 - "$FM" "$tmp/png" <<'PY'
import gzip, os, struct, sys, zlib
src, out = sys.argv[1], sys.argv[2]
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
images = gzip.open(f"{src}/t10k-images-idx3-ubyte.gz").read()[16:]
for i in range(40):
    split, label = ("train" if i < 20 else "val"), i % 10
    os.makedirs(f"{out}/{split}/{label}", exist_ok=True)
    img = images[i * 784:(i + 1) * 784]
    raw = b"".join(b"\0" + img[r * 28:(r + 1) * 28] for r in range(28))
    with open(f"{out}/{split}/{label}/{i:05d}.png", "wb") as f:
        f.write(head + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))
PY
expect_ok "vit prep writes shards" prep --raw_data_dir "$tmp/png" --output_dir "$tmp/tfr" --train_shards 1 --val_shards 1
shard=$tmp/tfr/validation/validation-00000-of-00001
E="--from_scratch --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64 --image_size 28
   --channels 1 --num_classes 10 --batch_size 4 --dataset_dir $tmp/tfr"
expect_ok "the shards evaluate" evaluate $E
flip "$shard" $(($(wc -c <"$shard") / 2)) 0x40
expect_error "a flipped bit in a shard is an error naming the file and record" \
    "$shard: record at byte [0-9]*: .*CRC mismatch" evaluate $E
"$VIT" evaluate $E --skip_corrupt >"$tmp/out" 2>"$tmp/err"
rc=$?
{ [ $rc -ge 1 ] && [ $rc -lt 128 ] && [ "$(grep -c . "$tmp/err")" = 1 ] && grep -q "$shard: record at byte" "$tmp/err"; } ||
    { [ $rc = 0 ] && grep -q "unreadable images were skipped" "$tmp/out"; }
check "with --skip_corrupt: still an error naming them, or a reported skip, never a silent pass (exit $rc)" $?

finish cli_checksums
