#!/bin/sh
# vit prep: a tiny image folder and a tiny raw-ImageNet layout become TFRecord shards whose
# records (read back with a stdlib-only reader, and tools/check_tfrecords.py when the
# tfrecord package is installed) match the input; bad input is a one-line error, not a crash.
. "$(dirname "$0")/lib.sh"
# The inputs: PNGs (gray, RGB, RGBA) written with zlib+struct, and three tiny JPEGs made with
# libjpeg (YCbCr, grayscale, Adobe CMYK), embedded here as base64.
python3 - "$tmp" <<'PY' || { echo "FAIL cannot write the test images"; exit 1; }
import base64, os, struct, sys, zlib
root = sys.argv[1]
JPEG = {
    "rgb": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAGAAgDASIAAhEBAxEB/8QAFAABAAAAAAAAAAAAAAAAAAAAAP/EAB8QAAIBAgcAAAAAAAAAAAAAAAECAAMEBREhQVFhgf/EABUBAQEAAAAAAAAAAAAAAAAAAAAB/8QAGxEBAAICAwAAAAAAAAAAAAAAAQACUbERIWH/2gAMAwEAAhEDEQA/AAVbSqwCgph1EFV2Z2AOZ61UeHmIiVqWt3tM4hs1DjR5P//Z",
    "gray": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/wAALCAAGAAgBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAAA//EAB4QAQABAwUBAAAAAAAAAAAAAAEDBAUhAAISEyJB/9oACAEBAAA/AEgt1LZ7TLXyR9hCHjbjkqBn5lNf/9k=",
    "cmyk": "/9j/7gAOQWRvYmUAZAAAAAAA/9sAQwAQCwwODAoQDg0OEhEQExgoGhgWFhgxIyUdKDozPTw5Mzg3QEhcTkBEV0U3OFBtUVdfYmdoZz5NcXlwZHhcZWdj/8AAFAgABgAIBEMRAE0RAFkRAEsRAP/EABYAAQEBAAAAAAAAAAAAAAAAAAIBA//EACMQAAICAQMEAwEAAAAAAAAAAAECAxEEEhMhACJBkRQxUWL/2gAOBEMATQBZAEsAAD8Aoh2AmLGKAEeKO6wNal2aiPI7fRvjrUYQifYAUXs4qshKkKV3Df7fK1xwfbx8RMnUiaTF8iPEAdaKhLY1X9qfvwfQmmjTUsoYRxuyFVVTcUPJF8cliGHq66//2Q==",
}

def png(w, h, ctype, seed):
    comps = {0: 1, 2: 3, 6: 4}[ctype]
    rows = b"".join(b"\0" + bytes((seed * 37 + x * 11 + y * 5 + c * 3) % 256 for x in range(w) for c in range(comps))
                    for y in range(h))
    def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data)

# (b) image folder: train counts bird 3, cat 3, dog 2; val 1, 2, 1; a README is ignored.
f = root + "/folder"
put(f + "/train/bird/b1.png", png(9, 7, 2, 1))
put(f + "/train/bird/b2.png", png(5, 11, 6, 2))
put(f + "/train/bird/b3.jpg", base64.b64decode(JPEG["rgb"]))
for i in range(3):
    put(f + "/train/cat/c%d.png" % i, png(6 + i, 6, 0, 10 + i))
put(f + "/train/cat/README.txt", b"not an image\n")
put(f + "/train/dog/d1.png", png(12, 4, 2, 20))
put(f + "/train/dog/d2.jpeg", base64.b64decode(JPEG["gray"]))
put(f + "/val/bird/vb.png", png(8, 8, 2, 30))
put(f + "/val/cat/vc1.png", png(8, 8, 0, 31))
put(f + "/val/cat/vc2.jpg", base64.b64decode(JPEG["cmyk"]))
put(f + "/val/dog/vd.png", png(3, 9, 6, 32))

# (a) raw ImageNet: train/<synset>/*.JPEG, validation/*.JPEG and the synset label file
# (one PNG named .JPEG, as in the real set).
r = root + "/raw"
put(r + "/train/n02/n02_1.JPEG", base64.b64decode(JPEG["rgb"]))
put(r + "/train/n02/n02_2.JPEG", png(7, 5, 2, 40))
put(r + "/train/n01/n01_1.JPEG", base64.b64decode(JPEG["cmyk"]))
put(r + "/train/n01/n01_2.JPEG", base64.b64decode(JPEG["rgb"]))
put(r + "/train/n01/n01_3.JPEG", png(4, 4, 0, 41))
put(r + "/train/n03/n03_1.JPEG", base64.b64decode(JPEG["gray"]))
val = [("n03", JPEG["rgb"]), ("n01", None), ("n02", JPEG["gray"]), ("n01", JPEG["rgb"]), ("n03", None)]
for i, (syn, j) in enumerate(val):
    put(r + "/validation/ILSVRC2012_val_%08d.JPEG" % (i + 1), base64.b64decode(j) if j else png(6, 5, 2, 50 + i))
put(r + "/imagenet_2012_validation_synset_labels.txt", "".join(s + "\n" for s, _ in val).encode())
PY

# Reads the shards with the standard library alone (framing CRCs, Example protobuf) and checks
# them against the input folder: every image once, labels = sorted class index + 1, synset,
# file name, size, RGB JPEG bytes kept as they are, validation in sorted order.
cat >"$tmp/verify.py" <<'PY'
import glob, hashlib, os, struct, sys, zlib
out, raw, layout, ntrain, nval = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
skip = set(sys.argv[6:])  # base names left out (skip_corrupt)
bad = []

T = []
for n in range(256):
    c = n
    for _ in range(8): c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def masked_crc(b):
    c = 0xFFFFFFFF
    for x in b: c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

def records(path):
    data = open(path, "rb").read()
    p = 0
    while p < len(data):
        n, = struct.unpack_from("<Q", data, p)
        if struct.unpack_from("<I", data, p + 8)[0] != masked_crc(data[p:p + 8]): bad.append(path + ": length crc")
        rec = data[p + 12:p + 12 + n]
        if struct.unpack_from("<I", data, p + 12 + n)[0] != masked_crc(rec): bad.append(path + ": data crc")
        yield rec
        p += 16 + n

def varint(b, p):
    v = s = 0
    while True:
        x = b[p]; p += 1; v |= (x & 0x7F) << s; s += 7
        if x < 0x80: return v, p

def fields(b):
    p = 0
    while p < len(b):
        k, p = varint(b, p)
        if k & 7 == 0: v, p = varint(b, p)
        elif k & 7 == 2:
            n, p = varint(b, p); v = b[p:p + n]; p += n
        else: raise ValueError("wire type %d" % (k & 7))
        yield k >> 3, k & 7, v

def example(rec):
    feats = {}
    for f, _, features in fields(rec):
        for _, _, entry in fields(features):
            kv = {n: v for n, _, v in fields(entry)}
            key = kv[1].decode()
            for kind, _, lst in fields(kv[2]):
                vals = []
                for n, wt, v in fields(lst):
                    if kind == 3 and wt == 2:  # packed int64
                        q = 0
                        while q < len(v): x, q = varint(v, q); vals.append(x)
                    else: vals.append(v)
                feats[key] = vals[0] if vals else None
    return feats

def images(d):
    return sorted(n for n in os.listdir(d) if n.lower().endswith((".jpeg", ".jpg", ".png")) and not n.startswith("."))

classes = sorted(os.listdir(raw + "/train"))
want_train = {n: (classes.index(c) + 1, c, raw + "/train/" + c + "/" + n) for c in classes for n in images(raw + "/train/" + c)}
if layout == "folder":
    want_val = [(n, classes.index(c) + 1, c, raw + "/val/" + c + "/" + n) for c in sorted(os.listdir(raw + "/val"))
                for n in images(raw + "/val/" + c)]
else:
    syn = open(raw + "/imagenet_2012_validation_synset_labels.txt").read().split()
    want_val = [(n, classes.index(s) + 1, s, raw + "/validation/" + n) for n, s in zip(images(raw + "/validation"), syn)]

def check(split, paths, want):
    if len(paths) != want: bad.append("%s: %d shards, want %d" % (split, len(paths), want))
    got = []
    for path in paths:
        shard = [example(r) for r in records(path)]
        got.append(shard)
    return got

tr = check("train", sorted(glob.glob(out + "/train/train-*-of-%05d" % ntrain)), ntrain)
va = check("validation", sorted(glob.glob(out + "/validation/validation-*-of-%05d" % nval)), nval)
sizes = [len(s) for s in tr]
if max(sizes) - min(sizes) > 1: bad.append("train shards unbalanced: %s" % sizes)
for split, recs, want in (("train", [e for s in tr for e in s], want_train),
                          ("validation", [e for s in va for e in s], {n: (l, c, p) for n, l, c, p in want_val})):
    names = [e["image/filename"].decode() for e in recs]
    exp = sorted(n for n in want if n not in skip)
    if sorted(names) != exp: bad.append("%s: files %s, want %s" % (split, sorted(names), exp))
    for e in recs:
        n = e["image/filename"].decode()
        if n not in want: continue
        label, syn, path = want[n]
        src = open(path, "rb").read()
        enc = e["image/encoded"]
        if e["image/class/label"] != label: bad.append("%s %s: label %s, want %d" % (split, n, e["image/class/label"], label))
        if e["image/class/synset"].decode() != syn: bad.append("%s %s: synset %s" % (split, n, e["image/class/synset"]))
        if e["image/channels"] != 3 or e["image/format"] != b"JPEG" or e["image/colorspace"] != b"RGB":
            bad.append("%s %s: channels/format/colorspace" % (split, n))
        if enc[:3] != b"\xff\xd8\xff": bad.append("%s %s: image/encoded is not a JPEG" % (split, n))
        if src.startswith(b"\x89PNG"):
            w, h = struct.unpack(">II", src[16:24])
        else:
            w, h = 8, 6  # the embedded JPEGs
        if (e["image/width"], e["image/height"]) != (w, h): bad.append("%s %s: size %sx%s" % (split, n, e["image/width"], e["image/height"]))
        # The YCbCr JPEG (JFIF APP0 and 3 components) is kept byte for byte; all others re-encoded.
        rgb = src.startswith(b"\xff\xd8\xff\xe0") and b"\xff\xc0\x00\x11\x08" in src
        if rgb and enc != src: bad.append("%s %s: RGB JPEG bytes not kept" % (split, n))
        if not rgb and enc == src: bad.append("%s %s: not re-encoded" % (split, n))
vnames = [e["image/filename"].decode() for s in va for e in s]
if vnames != [n for n, _, _, _ in want_val if n not in skip]: bad.append("validation not in sorted order: %s" % vnames)
for b in bad: print(b)
print("%d train, %d validation records" % (sum(sizes), len(vnames)))
sys.exit(1 if bad else 0)
PY

# (b) image folder, two train shards and one validation shard
expect_ok "prep image folder" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o1" --train_shards 2 --val_shards 1 \
    --data_workers 2
grep -q "^wrote 8 train images in 2 shards, 4 validation images in 1 shards, 11 re-encoded, 0 skipped$" "$tmp/out"
check "image folder summary line: $(tail -1 "$tmp/out")" $?
[ -f "$tmp/o1/train/train-00000-of-00002" ] && [ -f "$tmp/o1/train/train-00001-of-00002" ] &&
    [ -f "$tmp/o1/validation/validation-00000-of-00001" ]
check "image folder shard files exist" $?
python3 "$tmp/verify.py" "$tmp/o1" "$tmp/folder" folder 2 1 >"$tmp/v1" 2>&1
check "image folder records match the input: $(cat "$tmp/v1")" $?
# Deterministic: a rerun with one worker writes the same bytes.
expect_ok "prep rerun, 1 worker" prep --raw_data_dir "$tmp/folder" --local_scratch_dir "$tmp/o2" --train_shards 2 \
    --val_shards 1 --data_workers 1
cmp -s "$tmp/o1/train/train-00001-of-00002" "$tmp/o2/train/train-00001-of-00002" &&
    cmp -s "$tmp/o1/validation/validation-00000-of-00001" "$tmp/o2/validation/validation-00000-of-00001"
check "shards identical across worker counts (--local_scratch_dir spelling)" $?

# (a) raw ImageNet with the label file; more shards than validation images leaves empty shards.
expect_ok "prep raw ImageNet" prep --raw_data_dir "$tmp/raw" --output_dir "$tmp/o3" --train_shards 2 --val_shards 3
grep -q "^wrote 6 train images in 2 shards, 5 validation images in 3 shards, 7 re-encoded, 0 skipped$" "$tmp/out"
check "raw ImageNet summary line: $(tail -1 "$tmp/out")" $?
python3 "$tmp/verify.py" "$tmp/o3" "$tmp/raw" raw 2 3 >"$tmp/v3" 2>&1
check "raw ImageNet records match the input: $(cat "$tmp/v3")" $?
# the same through --val_labels, with the file elsewhere
mv "$tmp/raw/imagenet_2012_validation_synset_labels.txt" "$tmp/labels.txt"
expect_ok "prep --val_labels" prep --raw_data_dir "$tmp/raw" --output_dir "$tmp/o4" --train_shards 2 --val_shards 3 \
    --val_labels "$tmp/labels.txt"
cmp -s "$tmp/o3/validation/validation-00002-of-00003" "$tmp/o4/validation/validation-00002-of-00003"
check "--val_labels gives the same validation shards" $?

# The independent reader of tools/ (needs pip's tfrecord package): every record passes, and
# its label counts per class match the folder (bird 3, cat 3, dog 2 -> labels 1, 2, 3).
if python3 -c "import tfrecord" 2>/dev/null; then
    python3 tools/check_tfrecords.py "$tmp"/o1/train/train-* "$tmp"/o1/validation/validation-* >"$tmp/ct" 2>&1
    check "check_tfrecords.py passes: $(tail -1 "$tmp/ct")" $?
    grep -q "check_tfrecords: 12 passed, 0 failed" "$tmp/ct"
    check "check_tfrecords.py counts 12 records" $?
    python3 tools/check_tfrecords.py "$tmp"/o1/train/train-* 2>&1 | grep -o ': label [0-9]*' | sort | uniq -c |
        awk '{printf "%s:%s ", $4, $1}' >"$tmp/counts"
    [ "$(cat "$tmp/counts")" = "1:3 2:3 3:2 " ]
    check "train label counts per class match the folder ($(cat "$tmp/counts"))" $?
else
    echo "note: python3 tfrecord package missing; tools/check_tfrecords.py not run (records checked by the stdlib reader)"
fi

# bad input
expect_error "missing raw dir" "$tmp/nope" prep --raw_data_dir "$tmp/nope" --output_dir "$tmp/o5"
expect_error "raw dir required" "--raw_data_dir" prep --output_dir "$tmp/o5"
expect_error "output dir required" "--output_dir" prep --raw_data_dir "$tmp/folder"
mkdir -p "$tmp/empty/train" "$tmp/empty/val/x"
expect_error "empty train dir" "$tmp/empty/train: no class folders" prep --raw_data_dir "$tmp/empty" --output_dir "$tmp/o5"
expect_error "train shards 0" "--train_shards 0" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o5" --train_shards 0
expect_error "val shards -1" "--val_shards -1" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o5" --val_shards -1
expect_error "train shards not a number" "--train_shards x" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o5" \
    --train_shards x
expect_error "stray argument" "unexpected argument" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o5" extra
mkdir -p "$tmp/noval/train/a" && cp "$tmp/folder/train/cat/c0.png" "$tmp/noval/train/a/"
expect_error "no validation data" "no validation images" prep --raw_data_dir "$tmp/noval" --output_dir "$tmp/o5"
mkdir -p "$tmp/noval/val/zebra" && cp "$tmp/folder/train/cat/c0.png" "$tmp/noval/val/zebra/"
expect_error "val class not in train" "zebra: class not among" prep --raw_data_dir "$tmp/noval" --output_dir "$tmp/o5"
printf 'n01\nn02\n' >"$tmp/short.txt"
expect_error "label file too short" "2 labels for the 5 images" prep --raw_data_dir "$tmp/raw" --output_dir "$tmp/o5" \
    --val_labels "$tmp/short.txt"
printf 'n01\nn09\nn01\nn01\nn01\n' >"$tmp/unknown.txt"
expect_error "unknown synset" "line 2: synset 'n09'" prep --raw_data_dir "$tmp/raw" --output_dir "$tmp/o5" \
    --val_labels "$tmp/unknown.txt"
expect_error "missing label file" "$tmp/none.txt" prep --raw_data_dir "$tmp/raw" --output_dir "$tmp/o5" \
    --val_labels "$tmp/none.txt"
: >"$tmp/out.file"
expect_error "output is a file" "out.file" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/out.file"

# A zero-byte .png among the images: an error naming it; with --skip_corrupt, skipped and counted.
: >"$tmp/folder/train/dog/zero.png"
expect_error "zero-byte png" "dog/zero.png" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o6" --train_shards 2 \
    --val_shards 1
expect_ok "zero-byte png skipped" prep --raw_data_dir "$tmp/folder" --output_dir "$tmp/o7" --train_shards 2 \
    --val_shards 1 --skip_corrupt
grep -q "^wrote 8 train images in 2 shards, 4 validation images in 1 shards, 11 re-encoded, 1 skipped$" "$tmp/out" &&
    grep -q "skipped .*dog/zero.png" "$tmp/err"
check "skipped image counted and named: $(tail -1 "$tmp/out")" $?
python3 "$tmp/verify.py" "$tmp/o7" "$tmp/folder" folder 2 1 zero.png >"$tmp/v7" 2>&1
check "records without the skipped image match the input: $(cat "$tmp/v7")" $?

finish cli_prep
