#!/usr/bin/env python3
"""ImageNet-like JPEGs for the data-pipeline benchmark, cut from real photographs that pip
packages ship.

usage: make_bench_jpegs.py OUTDIR [--count 2000] [--val_count N] [--seed 0] [--quality 90]
                           [--noise 0]

Writes OUTDIR/train/<class>/NNNN.jpg (--count images) and OUTDIR/val/<class>/NNNN.jpg
(--val_count, default count/10), the image-folder layout `vit` reads (dataset_open_folder).
One class per source photograph (10 colour photos from scikit-learn and scikit-image:
`pip install scikit-learn scikit-image pillow`). Each image is a random crop of its photo
(30-100% of the area, aspect 4:3, or 3:4 for about one image in five), a random left-right
flip and a small brightness/colour change, resized with Lanczos to 500x375 (or 375x500),
saved by Pillow at --quality with 4:2:0 chroma subsampling (as most ImageNet JPEGs are).

The sources are 427-1411 pixels tall, so most crops are upscaled and come out smoother than a
camera's photo: at quality 90 they average ~47 KB (~2 bits per pixel), against ImageNet's
~110 KB per image, so entropy decoding is somewhat cheaper here than on ImageNet for every
decoder compared. --noise adds Gaussian grain of that standard deviation (8-bit levels) before
encoding; it moves the size little (sigma 8: ~68 KB) and is off by default. Output is reproducible for a
given seed. A summary line (count, mean bytes, bits per pixel) is printed at the end.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageEnhance


def source_photos():
    """(name, path) of real colour photographs shipped by pip packages."""
    out = []
    try:
        import sklearn.datasets as skd
        d = os.path.join(os.path.dirname(skd.__file__), "images")
        for n in ("china", "flower"):
            out.append((n, os.path.join(d, n + ".jpg")))
    except ImportError:
        print("make_bench_jpegs: scikit-learn not installed (pip install scikit-learn); skipping its photos",
              file=sys.stderr)
    try:
        import skimage
        d = os.path.join(os.path.dirname(skimage.__file__), "data")
        for f in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png"):
            out.append((os.path.splitext(f)[0], os.path.join(d, f)))
    except ImportError:
        print("make_bench_jpegs: scikit-image not installed (pip install scikit-image); skipping its photos",
              file=sys.stderr)
    out = [(n, p) for n, p in out if os.path.exists(p)]
    if not out:
        sys.exit("make_bench_jpegs: no source photographs: pip install scikit-learn scikit-image")
    return out


def make_one(src, rng, noise, quality, path):
    W, H = src.size
    portrait = rng.random() < 0.2
    ow, oh = (375, 500) if portrait else (500, 375)
    aspect = ow / oh
    # Random crop of 30-100% of the largest window of this aspect that fits the photo.
    if W / H > aspect:
        mh, mw = H, H * aspect
    else:
        mw, mh = W, W / aspect
    s = np.sqrt(rng.uniform(0.3, 1.0))
    cw, ch = mw * s, mh * s
    x0 = rng.uniform(0, W - cw)
    y0 = rng.uniform(0, H - ch)
    im = src.resize((ow, oh), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2))
    if noise > 0:
        a = np.asarray(im, dtype=np.float32)
        a = a + rng.normal(0.0, noise, a.shape).astype(np.float32)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    im.save(path, "JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    return os.path.getsize(path), ow * oh


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--count", type=int, default=2000, help="training images (default 2000)")
    ap.add_argument("--val_count", type=int, default=-1, help="validation images (default count/10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian grain, 8-bit levels (0 = none)")
    a = ap.parse_args()
    val_count = a.val_count if a.val_count >= 0 else max(1, a.count // 10)

    photos = source_photos()
    srcs = [(n, Image.open(p).convert("RGB")) for n, p in photos]
    rng = np.random.default_rng(a.seed)
    total_bytes = total_px = n = 0
    for split, count in (("train", a.count), ("val", val_count)):
        for c, (name, _) in enumerate(srcs):
            os.makedirs(os.path.join(a.outdir, split, "%02d_%s" % (c, name)), exist_ok=True)
        for i in range(count):
            c = i % len(srcs)
            name, src = srcs[c]
            path = os.path.join(a.outdir, split, "%02d_%s" % (c, name), "%04d.jpg" % (i // len(srcs)))
            b, px = make_one(src, rng, a.noise, a.quality, path)
            total_bytes += b
            total_px += px
            n += 1
    print("make_bench_jpegs: %d images (%d train, %d val, %d classes) in %s, mean %.1f KB, %.2f bits/pixel, "
          "quality %d, noise %.1f" % (n, a.count, val_count, len(srcs), a.outdir, total_bytes / n / 1024,
                                      8 * total_bytes / total_px, a.quality, a.noise))


if __name__ == "__main__":
    main()
