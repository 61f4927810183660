#!/usr/bin/env python3
"""Writes OUTDIR (default tests/fixtures/evalcrop_tf): a few small encoded images and what the
recipe's TensorFlow evaluation pipeline makes of each, for tests/test_image.c (image_decode +
image_eval_crop) and tests/cli_eval_inputs.sh (`vit predict --save_inputs`).

The recipe's evaluation preprocessing (utils/dataset.py and utils/image_processing.py of
Habana's ViT), redone here with TensorFlow itself:
  1. tf.io.decode_jpeg(channels=3) at full size, then convert_image_dtype to float32 in [0, 1];
  2. aspect-preserving resize: scale = size / width if height > width else size / height, in
     float32; new sides tf.math.rint(side * scale) (round half to even); tf.image.resize with
     method "bilinear" (half-pixel centers, no antialiasing);
  3. central crop at ((H - size) // 2, (W - size) // 2).
The result is stored as an 8-bit RGB PNG (round(x * 255)). Before writing, it is checked
against the same steps done in numpy on TF's decoded pixels (half-pixel bilinear with clamped
edges): at most 1 level apart, or the script stops.

The inputs are synthetic, photo-like pictures (smooth shading, shapes, grain) made with numpy
and saved by Pillow, chosen to cover: downscales up to ~7x (where a decoder's DCT scaling would
change the result), portrait and landscape, a long side landing on .5 (97 x 64 at 32: TF rounds
48.5 to 48), 4:2:0 and 4:4:4 chroma, a progressive and a grayscale JPEG, a PNG, an upscale.

Layout: OUTDIR/<name>.<jpg|png> (inputs), OUTDIR/<name>.tf.png (expected), OUTDIR/cases.txt with
one line per case: "input expected size". Reproducible byte for byte for given Pillow and
TensorFlow versions (written with Pillow 13.0.0 and TensorFlow 2.21.0).

usage: python3 tools/make_evalcrop_tf_fixture.py [OUTDIR]
       (needs: pip install tensorflow-cpu pillow numpy)
"""
import io
import os
import sys

import numpy as np
from PIL import Image

SIZE = 32
# name, width, height, format, Pillow save options, grayscale
CASES = [
    ("tie_97x64", 97, 64, "JPEG", {"quality": 90}, False),
    ("portrait_61x150", 61, 150, "JPEG", {"quality": 90}, False),
    ("large_300x200", 300, 200, "JPEG", {"quality": 85}, False),
    ("progressive_290x213", 290, 213, "JPEG", {"quality": 80, "progressive": True, "subsampling": 0}, False),
    ("gray_120x90", 120, 90, "JPEG", {"quality": 90}, True),
    ("square_45x45", 45, 45, "JPEG", {"quality": 95, "subsampling": 0}, False),
    ("small_23x31", 23, 31, "PNG", {}, False),
]


def picture(w, h, seed):
    """A smooth scene with edges and grain, so box and bilinear downscales differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    img = np.stack([200 * u + 30, 180 * v + 40, 120 + 80 * np.sin(6.0 * u + 4.0 * v)], axis=-1)
    for _ in range(6):  # ellipses of random colour
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        img[inside] = rng.uniform(0, 255, 3)
    stripes = np.sin(x * 0.9 + y * 0.4) * 25  # fine texture, near the sampling limit
    img += stripes[..., None] + rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode(px, fmt, opts, gray):
    im = Image.fromarray(px, "RGB")
    if gray:
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, fmt, **opts)
    return buf.getvalue()


def tf_eval(tf, data, fmt, size):
    """The recipe's steps; returns (decoded uint8 pixels, float32 crop in [0, 1])."""
    raw = tf.constant(data)
    decoded = tf.io.decode_jpeg(raw, channels=3) if fmt == "JPEG" else tf.io.decode_png(raw, channels=3)
    image = tf.image.convert_image_dtype(decoded, tf.float32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    side = tf.constant(float(size), tf.float32)
    scale = side / w if h > w else side / h
    nh = int(tf.cast(tf.math.rint(h * scale), tf.int32))
    nw = int(tf.cast(tf.math.rint(w * scale), tf.int32))
    resized = tf.image.resize(image[None], [nh, nw], method="bilinear")[0]
    oy, ox = (nh - size) // 2, (nw - size) // 2
    return decoded.numpy(), resized[oy:oy + size, ox:ox + size, :].numpy()


def numpy_eval(px, size):
    """The same steps written out: float32 scale, rint, half-pixel bilinear, central crop."""
    h, w = px.shape[:2]
    scale = np.float32(size) / (np.float32(w) if h > w else np.float32(h))
    nh, nw = int(np.rint(np.float32(h) * scale)), int(np.rint(np.float32(w) * scale))

    def taps(n_out, n_in):
        s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        s = np.clip(s, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0

    y0, y1, ty = taps(nh, h)
    x0, x1, tx = taps(nw, w)
    f = px.astype(np.float64) / 255
    top = f[y0][:, x0] + (f[y0][:, x1] - f[y0][:, x0]) * tx[None, :, None]
    bot = f[y1][:, x0] + (f[y1][:, x1] - f[y1][:, x0]) * tx[None, :, None]
    out = top + (bot - top) * ty[:, None, None]
    oy, ox = (nh - size) // 2, (nw - size) // 2
    return out[oy:oy + size, ox:ox + size]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/evalcrop_tf"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for k, (name, w, h, fmt, opts, gray) in enumerate(CASES):
        data = encode(picture(w, h, 100 + k), fmt, opts, gray)
        decoded, crop = tf_eval(tf, data, fmt, SIZE)
        worst = np.abs(numpy_eval(decoded, SIZE) - crop).max() * 255
        if worst > 1:
            sys.exit(f"{name}: TensorFlow and the numpy steps differ by {worst:.2f} levels")
        expected = np.clip(np.rint(crop * 255), 0, 255).astype(np.uint8)
        src = f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
        with open(os.path.join(out_dir, src), "wb") as f:
            f.write(data)
        Image.fromarray(expected, "RGB").save(os.path.join(out_dir, f"{name}.tf.png"), optimize=True)
        lines.append(f"{src} {name}.tf.png {SIZE}\n")
        print(f"{name}: {w}x{h} {fmt} {len(data)} bytes; TF vs numpy max {worst:.3f} levels")
    with open(os.path.join(out_dir, "cases.txt"), "w") as f:
        f.writelines(lines)
    print(f"wrote {len(CASES)} cases to {out_dir}")


if __name__ == "__main__":
    main()
