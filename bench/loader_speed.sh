#!/bin/sh
# Data-pipeline throughput (read + JPEG decode + training augmentation + batching, nothing
# training) of vit's Loader next to torchvision/PIL's DataLoader and tf.data doing the same
# work on the same files with the same cores, in one run.
# usage: bench/loader_speed.sh [JPEG_DIR]   (run from the repository root)
#   JPEG_DIR: image folder (train/<class>/*.jpg, val/...); made once by
#             tools/make_bench_jpegs.py when missing (default /tmp/vitc_bench_jpegs, 2000 images).
#   env: WORKERS (default "1 N", N = the cores), BATCHES (timed batches, default 40),
#        WARMUP (untimed batches first, default 3), BATCH (default 64), SIZE (default 224),
#        BUILD (default build), AUG (extra augmentation flags for vit only, e.g.
#        AUG="--aa rand-m9-mstd0.5-inc1 --reprob 0.25"; the baselines do not get them).
# Every run gets exactly `workers` cores with taskset (cores 0..workers-1). Needs, for the
# baselines: pip install torch torchvision tensorflow-cpu scikit-learn scikit-image pillow
# (a baseline that is not installed is reported as such and left out).
set -e
dir=${1:-/tmp/vitc_bench_jpegs}
ncores=$(nproc)
workers=${WORKERS:-"1 $ncores"}
batches=${BATCHES:-40}
warmup=${WARMUP:-3}
batch=${BATCH:-64}
size=${SIZE:-224}
build=${BUILD:-build}

if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    python3 tools/make_bench_jpegs.py "$dir" --count 2000
    touch "$dir/.complete"
fi
make -s BUILD="$build" "$build/bench/loader_speed" >/dev/null

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $ncores cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "images: $dir: $(find "$dir/train" -name '*.jpg' | wc -l) training JPEGs, mean $(find "$dir/train" -name '*.jpg' -printf '%s\n' | awk '{s+=$1; n++} END {printf "%.1f KB", s/n/1024}')"
echo "work: decode + crop + resize to $size + flip + brightness + saturation + clip + batch of $batch; $warmup warm-up + $batches timed batches per run${AUG:+; vit also: $AUG}"
# Everything from the page cache, for every contender.
find "$dir" -name '*.jpg' -exec cat {} + >/dev/null

out=$(mktemp /tmp/vitc_loader_speed.XXXXXX)
trap 'rm -f "$out"' EXIT
common="--batch $batch --batches $batches --warmup $warmup --size $size"
for w in $workers; do
    cpus="0-$((w - 1))"
    taskset -c "$cpus" "$build/bench/loader_speed" "$dir" --workers "$w" $common ${AUG:-} 2>/dev/null >>"$out" ||
        echo "{\"impl\": \"vit\", \"workers\": $w, \"error\": \"failed\"}" >>"$out"
    for tool in torch tf tf_crop; do
        case $tool in
        torch) cmd="python3 tools/bench_loader_torch.py" ;;
        tf) cmd="python3 tools/bench_loader_tf.py" ;;
        tf_crop) cmd="python3 tools/bench_loader_tf.py --crop_decode" ;;
        esac
        rc=0
        line=$(taskset -c "$cpus" $cmd "$dir" --workers "$w" $common 2>/tmp/vitc_loader_err.$$) || rc=$?
        if [ $rc -eq 0 ]; then
            echo "$line" | tail -n 1 >>"$out"
        elif [ $rc -eq 3 ]; then
            echo "{\"impl\": \"$tool\", \"workers\": $w, \"error\": \"not installed\"}" >>"$out"
        else
            echo "{\"impl\": \"$tool\", \"workers\": $w, \"error\": \"failed (exit $rc): $(tail -n 1 /tmp/vitc_loader_err.$$ | tr -d '\"\\')\"}" >>"$out"
        fi
        rm -f /tmp/vitc_loader_err.$$
    done
done

echo "raw results (JSON):"
sed 's/^/  /' "$out"
python3 - "$out" "$size" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
names = {"vit": "vit Loader", "torch": "torchvision/PIL DataLoader", "tf": "tf.data (decode_jpeg)",
         "tf_crop": "tf.data (decode_and_crop_jpeg)", "tf_crop_decode": "tf.data (decode_and_crop_jpeg)"}
by = {}
for r in rows:
    by[(r["impl"].replace("tf_crop_decode", "tf_crop"), r["workers"])] = r
print()
print("| cores | pipeline | img/s total | img/s per core | vit ÷ this |")
print("|---|---|---|---|---|")
verdict = []
for w in sorted({k[1] for k in by}):
    v = by.get(("vit", w), {}).get("images_per_sec")
    for impl in ("vit", "torch", "tf", "tf_crop"):
        r = by.get((impl, w))
        if r is None:
            continue
        if "error" in r:
            print("| %d | %s | %s | | |" % (w, names[impl], r["error"]))
            continue
        ratio = "" if impl == "vit" or not v else "%.2f×" % (v / r["images_per_sec"])
        print("| %d | %s | %.0f | %.0f | %s |" % (w, names[impl], r["images_per_sec"],
                                                  r["images_per_sec_per_core"], ratio))
    base = [(by[(i, w)]["images_per_sec"], names[i]) for i in ("torch", "tf")
            if (i, w) in by and "error" not in by[(i, w)]]
    if v is None:
        verdict.append("%d core(s): vit failed" % w)
        continue
    per_core = by[("vit", w)]["images_per_sec_per_core"]
    s = "%d core(s): " % w
    if base:
        best, who = max(base)
        ratio = v / best
        s += "%.2f× the faster baseline (%s, %.0f img/s): target ≥ 1.5× %s" % (
            ratio, who, best, "MET" if ratio >= 1.5 else "MISSED by %.0f%%" % (100 * (1.5 - ratio) / 1.5))
    else:
        s += "no baseline ran"
    if size != 224:
        s += "; %.0f img/s per core at %d (the 250 img/s target is defined at 224)" % (per_core, size)
    elif per_core >= 250:
        s += "; %.0f img/s per core at 224: target ≥ 250 MET" % per_core
    else:
        s += "; %.0f img/s per core at 224: target ≥ 250 MISSED by %.0f%%" % (per_core, 100 * (250 - per_core) / 250)
    if ("tf_crop", w) in by and "error" not in by[("tf_crop", w)]:
        s += "; %.2f× tf.data with decode_and_crop_jpeg" % (v / by[("tf_crop", w)]["images_per_sec"])
    verdict.append(s)
print()
for s in verdict:
    print(s)
EOF
