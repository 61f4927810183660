#!/usr/bin/env python3
"""Data-pipeline throughput of tf.data doing the work of vit's training loader
(bench/loader_speed.c, the ViT recipe's training preprocessing) on the same image folder.

usage: bench_loader_tf.py DIR [--workers N] [--batch 64] [--batches 40] [--warmup 3]
                          [--size 224] [--crop_decode]

Pipeline over DIR/train/<class>/*.jpg in random order (shuffle over the whole list, repeat):
tf.io.read_file, tf.io.decode_jpeg (3 channels), tf.image.sample_distorted_bounding_box over
the whole image (min_object_covered 0.6, aspect 0.75-1.33, area 0.6-1.0, 100 attempts),
tf.slice, tf.image.resize to size x size bilinear (no antialiasing), random left-right flip,
/255, tf.image.random_brightness(32/255), tf.image.random_saturation(0.5, 1.5), clip to
[0, 1]; map with num_parallel_calls=N, batch, prefetch(4) (vit's loader keeps 4 batches).
--crop_decode instead decodes only the crop window with tf.image.decode_and_crop_jpeg (the
faster path of TF's own ImageNet input pipelines; not what the brief's pipeline does).

Threads: inter- and intra-op parallelism N (intra 1 per op inside tf.data), tf.data's private
thread pool N. Give it N cores with `taskset` (bench/loader_speed.sh does). Timing starts
after --warmup batches have been taken and covers the next --batches batches. Prints one JSON
line. Exits 3 when TensorFlow is not installed (pip install tensorflow-cpu).
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crop_decode", action="store_true")
    a = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        print("bench_loader_tf: %s (pip install tensorflow-cpu)" % e, file=sys.stderr)
        sys.exit(3)
    n = max(1, a.workers)
    tf.config.threading.set_inter_op_parallelism_threads(n)
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.random.set_seed(a.seed)

    root = os.path.join(a.dir, "train")
    classes = sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)))
    paths, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith((".jpg", ".jpeg")):
                paths.append(os.path.join(root, c, f))
                labels.append(i)
    size = a.size
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])

    def distorted_box(shape):
        return tf.image.sample_distorted_bounding_box(
            shape, bounding_boxes=bbox, min_object_covered=0.6, aspect_ratio_range=(0.75, 1.33),
            area_range=(0.6, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)

    def load(path, label):
        data = tf.io.read_file(path)
        if a.crop_decode:
            begin, box_size, _ = distorted_box(tf.io.extract_jpeg_shape(data))
            oy, ox, _ = tf.unstack(begin)
            h, w, _ = tf.unstack(box_size)
            img = tf.image.decode_and_crop_jpeg(data, tf.stack([oy, ox, h, w]), channels=3)
        else:
            img = tf.io.decode_jpeg(data, channels=3)
            begin, box_size, _ = distorted_box(tf.shape(img))
            img = tf.slice(img, begin, box_size)
        img = tf.image.resize(img, [size, size], method="bilinear")  # float32, 0..255
        img = tf.image.random_flip_left_right(img)
        img = img / 255.0
        img = tf.image.random_brightness(img, 32.0 / 255.0)
        img = tf.image.random_saturation(img, 0.5, 1.5)
        img = tf.clip_by_value(img, 0.0, 1.0)
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.shuffle(len(paths), seed=a.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(load, num_parallel_calls=n)
    ds = ds.batch(a.batch).prefetch(4)
    opt = tf.data.Options()
    opt.threading.private_threadpool_size = n
    opt.threading.max_intra_op_parallelism = 1
    opt.deterministic = False
    opt.autotune.enabled = False
    ds = ds.with_options(opt)

    it = iter(ds)
    images = 0
    t0 = None
    checksum = 0.0
    for b in range(a.warmup + a.batches):
        if b == a.warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        checksum += float(tf.reshape(x, [-1])[b % (size * size * 3)])
        if b >= a.warmup:
            images += int(x.shape[0])
    secs = time.perf_counter() - t0
    print(json.dumps({
        "impl": "tf_crop_decode" if a.crop_decode else "tf", "workers": n, "batch": a.batch,
        "batches": a.batches, "size": size, "images": images, "seconds": round(secs, 3),
        "images_per_sec": round(images / secs, 1), "images_per_sec_per_core": round(images / secs / n, 1),
        "tensorflow": tf.__version__, "checksum": round(checksum, 3)}))


if __name__ == "__main__":
    main()
