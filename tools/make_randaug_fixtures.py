#!/usr/bin/env python3
"""Writes the RandAugment fixtures that tests/test_randaugment.c compares vit's C ops against,
all computed by timm itself (timm.data.auto_augment, on Pillow):

  tests/fixtures/randaug_ops.bin       two small test images (RGB 32x24 and a 16x16 square
                                       for the 90/270-degree shortcuts, plus the RGB image as
                                       PIL's "L") and, for each op at fixed arguments and a fixed
                                       resample filter, timm's output image.
  tests/fixtures/randaug_levels.txt    timm's level-to-argument functions: op, magnitude, sign
                                       flip (0/1), argument.
  tests/fixtures/randaug_policies.txt  policy strings parsed by rand_augment_transform: ops per
                                       image, magnitude, probability, magnitude std and max, and
                                       the op list with its choice weights.

The op functions are called directly with fixed arguments, so the outputs are deterministic
(timm's own random choices, the resample filter and the sign flips, are fixed here). Geometric
ops on the "L" image get fillcolor=128: Pillow >= 12 refuses timm's tuple fill for mode L.
Posterize with 0 bits is left out: Pillow >= 12 raises for it.

Layout of randaug_ops.bin (little-endian): b"RAG1", u32 image count, per image u32 w, h,
channels and the pixels; u32 case count, per case 24-byte op name (NUL-padded), u32 image,
i32 resample (0 none, 2 bilinear, 3 bicubic), f64 argument, then the output pixels.

usage: python3 tools/make_randaug_fixtures.py [OUTDIR]   (default tests/fixtures; needs timm, pillow, numpy)
"""

import math
import os
import struct
import sys

import numpy as np
from PIL import Image
from timm.data import auto_augment as aa

BIL, BIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC


def test_image(w, h):
    """Gradients, a ring and a checker texture; no channel reaches 0 or 255, so AutoContrast acts."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 30 + 170 * x / (w - 1) + 8 * ((x + y) % 3)
    g = 15 + 215 * y / (h - 1) - 10 * ((x // 2 + y // 2) % 2)
    ring = np.exp(-((np.hypot(x - w * 0.6, y - h * 0.4) - h * 0.25) ** 2) / 6.0)
    b = 60 + 120 * ring + 7 * np.sin(x * 0.9 + y * 0.4)
    rgb = np.stack([r, g, np.clip(b, 0, 255)], axis=-1)
    return Image.fromarray(np.clip(np.rint(rgb), 1, 254).astype(np.uint8), "RGB")


FACTORS = [0.1, 0.37, 1.63, 1.9]


def cases():
    """(op name, image index, resample, argument) for every fixture case."""
    out = [("AutoContrast", 0, 0, 0.0), ("Equalize", 0, 0, 0.0), ("Invert", 0, 0, 0.0)]
    out += [("Posterize", 0, 0, float(b)) for b in (1, 2, 4, 8)]
    out += [("Solarize", 0, 0, float(t)) for t in (0, 100, 128, 256)]
    out += [("SolarizeAdd", 0, 0, float(a)) for a in (0, 33, 110)]
    for op in ("Color", "Contrast", "Brightness", "Sharpness"):
        out += [(op, 0, 0, f) for f in FACTORS]
    out += [("Rotate", 0, BIL, 27.0), ("Rotate", 0, BIC, -27.0), ("Rotate", 0, BIL, 13.5),
            ("Rotate", 0, BIC, 13.5), ("Rotate", 0, BIL, 180.0), ("Rotate", 0, BIC, -90.0),
            ("Rotate", 1, BIL, 90.0), ("Rotate", 1, BIC, -90.0)]
    out += [("ShearX", 0, BIL, 0.27), ("ShearX", 0, BIC, -0.27), ("ShearX", 0, BIC, 0.15)]
    out += [("ShearY", 0, BIL, -0.27), ("ShearY", 0, BIC, 0.27), ("ShearY", 0, BIL, 0.15)]
    out += [("TranslateXRel", 0, BIL, 0.405), ("TranslateXRel", 0, BIC, -0.405), ("TranslateXRel", 0, BIC, 0.1)]
    out += [("TranslateYRel", 0, BIL, -0.405), ("TranslateYRel", 0, BIC, 0.405), ("TranslateYRel", 0, BIL, 0.1)]
    # The gray image (PIL mode "L"): one case per op family.
    out += [("AutoContrast", 2, 0, 0.0), ("Equalize", 2, 0, 0.0), ("Invert", 2, 0, 0.0), ("Posterize", 2, 0, 2.0),
            ("Solarize", 2, 0, 100.0), ("SolarizeAdd", 2, 0, 33.0), ("Color", 2, 0, 1.9), ("Contrast", 2, 0, 0.37),
            ("Brightness", 2, 0, 1.63), ("Sharpness", 2, 0, 1.9), ("Sharpness", 2, 0, 0.37),
            ("Rotate", 2, BIC, 27.0), ("Rotate", 2, BIL, -13.5), ("ShearX", 2, BIC, 0.27), ("ShearY", 2, BIL, -0.27),
            ("TranslateXRel", 2, BIL, -0.405), ("TranslateYRel", 2, BIC, 0.1)]
    return out


def run_op(name, img, resample, arg):
    fill = 128 if img.mode == "L" else (128, 128, 128)
    geo = dict(fillcolor=fill, resample=resample)
    fn = {
        "AutoContrast": lambda: aa.auto_contrast(img), "Equalize": lambda: aa.equalize(img),
        "Invert": lambda: aa.invert(img), "Posterize": lambda: aa.posterize(img, int(arg)),
        "Solarize": lambda: aa.solarize(img, int(arg)), "SolarizeAdd": lambda: aa.solarize_add(img, int(arg)),
        "Color": lambda: aa.color(img, arg), "Contrast": lambda: aa.contrast(img, arg),
        "Brightness": lambda: aa.brightness(img, arg), "Sharpness": lambda: aa.sharpness(img, arg),
        "Rotate": lambda: aa.rotate(img, arg, **geo), "ShearX": lambda: aa.shear_x(img, arg, **geo),
        "ShearY": lambda: aa.shear_y(img, arg, **geo), "TranslateXRel": lambda: aa.translate_x_rel(img, arg, **geo),
        "TranslateYRel": lambda: aa.translate_y_rel(img, arg, **geo),
    }[name]
    out = fn()
    assert out.mode == img.mode and out.size == img.size
    return out.tobytes()


def write_ops(path):
    rgb = test_image(32, 24)
    images = [rgb, test_image(16, 16), rgb.convert("L")]
    blob = bytearray(b"RAG1") + struct.pack("<I", len(images))
    for im in images:
        blob += struct.pack("<III", im.size[0], im.size[1], len(im.getbands())) + im.tobytes()
    cs = cases()
    blob += struct.pack("<I", len(cs))
    for name, idx, resample, arg in cs:
        blob += name.encode().ljust(24, b"\0") + struct.pack("<Iid", idx, int(resample), arg)
        blob += run_op(name, images[idx], resample, arg)
    with open(path, "wb") as f:
        f.write(blob)
    return len(cs)


def write_levels(path):
    hp = dict(aa._HPARAMS_DEFAULT)
    names = sorted(set(aa._RAND_TRANSFORMS + aa._RAND_INCREASING_TRANSFORMS))
    lines = []
    saved = aa._randomly_negate
    try:
        for negate in (0, 1):
            aa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)
            for name in names:
                fn = aa.LEVEL_TO_ARG[name]
                if fn is None:
                    continue
                for m in (0.0, 1.0, 2.4, 2.5, 3.7, 5.0, 7.3, 9.0, 9.99, 10.0, 13.0, 20.0):
                    lines.append("%s %.17g %d %.17g" % (name, m, negate, float(fn(m, hp)[0])))
    finally:
        aa._randomly_negate = saved
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


POLICIES = ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n3-p0.7", "rand-m10-mstd101", "rand",
            "rand-m5-mmax20-inc1", "rand-n1-m15-mstd0.5-mstd2", "rand-m9-tweights-n3", "rand-inc0-m3-p1-n4",
            "rand-m12-mmax12-mmax30-mstd1e3"]


def write_policies(path):
    lines = []
    for spec in POLICIES:
        t = aa.rand_augment_transform(spec, dict(aa._HPARAMS_DEFAULT))
        op = t.ops[0]
        mstd = op.magnitude_std
        weights = t.choice_weights if t.choice_weights is not None else [1.0] * len(t.ops)
        lines.append("%s | %d %d %.17g %s %d %d | %s | %s" % (
            spec, t.num_layers, op.magnitude, op.prob, "inf" if math.isinf(mstd) else "%.17g" % mstd,
            op.magnitude_max or 0, t.choice_weights is not None, " ".join(o.name for o in t.ops),
            " ".join("%.17g" % (w / sum(weights)) for w in weights)))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    n_ops = write_ops(os.path.join(out, "randaug_ops.bin"))
    n_levels = write_levels(os.path.join(out, "randaug_levels.txt"))
    n_pol = write_policies(os.path.join(out, "randaug_policies.txt"))
    print("randaug fixtures: %d op cases, %d level lines, %d policies in %s" % (n_ops, n_levels, n_pol, out))


if __name__ == "__main__":
    main()
