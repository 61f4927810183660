#!/usr/bin/env python3
"""Writes OUT (default tests/fixtures/resize_pil.bin): a small RGB test image and PIL's
BILINEAR resizes of windows of it, for tests/test_augment.c to compare augment_resize_bilinear
against.

Only upscales: when shrinking, PIL's BILINEAR widens its triangle filter (antialiasing) and
is no longer the 4-tap half-pixel-center bilinear of TF's resize; when enlarging it is exactly
that, with edges clamped. A window is cut out with Image.crop first (not resize's box=), so
the filter never reads pixels outside it, as with tf.slice followed by tf.image.resize.
Before writing, the PIL results are checked against a plain Python half-pixel bilinear
(max difference 1: PIL rounds to 8 bits between its horizontal and vertical passes).

File layout, all integers little-endian uint32:
  b"RSZ1", sw, sh, sw*sh*3 source bytes (RGB, row-major), ncases,
  then per case: x0, y0, cw, ch, dw, dh, dw*dh*3 expected bytes.

usage: python3 tools/check_resize.py [OUT]     (needs: pip install pillow)
"""

import random
import struct
import sys

from PIL import Image

SW, SH = 17, 13
# (x0, y0, cw, ch, dw, dh): the whole image, an inner window, a one-pixel-high strip.
CASES = [(0, 0, 17, 13, 40, 30), (3, 2, 9, 7, 23, 19), (5, 4, 6, 1, 13, 3)]


def source_pixels():
    """Gradients plus noise, so every channel varies along both axes. Deterministic."""
    rng = random.Random(20240611)
    px = bytearray()
    for y in range(SH):
        for x in range(SW):
            r = x * 255 // (SW - 1)
            g = y * 255 // (SH - 1)
            b = (x * 7 + y * 11) % 256
            for v in (r, g, b):
                px.append(max(0, min(255, v + rng.randint(-40, 40))))
    return bytes(px)


def taps(i, in_len, out_len):
    s = (i + 0.5) * in_len / out_len - 0.5
    s = min(max(s, 0.0), in_len - 1.0)
    i0 = int(s)
    return i0, min(i0 + 1, in_len - 1), s - i0


def reference(src, x0, y0, cw, ch, dw, dh):
    out = bytearray()
    for y in range(dh):
        a0, a1, ty = taps(y, ch, dh)
        for x in range(dw):
            b0, b1, tx = taps(x, cw, dw)
            for c in range(3):
                def p(yy, xx):
                    return src[((y0 + yy) * SW + x0 + xx) * 3 + c]
                top = p(a0, b0) + (p(a0, b1) - p(a0, b0)) * tx
                bot = p(a1, b0) + (p(a1, b1) - p(a1, b0)) * tx
                out.append(int(top + (bot - top) * ty + 0.5))
    return bytes(out)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/resize_pil.bin"
    src = source_pixels()
    img = Image.frombytes("RGB", (SW, SH), src)
    blob = bytearray(b"RSZ1" + struct.pack("<II", SW, SH) + src + struct.pack("<I", len(CASES)))
    for x0, y0, cw, ch, dw, dh in CASES:
        assert dw >= cw and dh >= ch, "PIL's BILINEAR is plain bilinear only when upscaling"
        got = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((dw, dh), Image.BILINEAR).tobytes()
        ref = reference(src, x0, y0, cw, ch, dw, dh)
        worst = max(abs(a - b) for a, b in zip(got, ref))
        if worst > 1:
            sys.exit(f"PIL disagrees with half-pixel bilinear by {worst} on case {(x0, y0, cw, ch, dw, dh)}")
        print(f"case {cw}x{ch}@({x0},{y0}) -> {dw}x{dh}: PIL vs Python bilinear max diff {worst}")
        blob += struct.pack("<6I", x0, y0, cw, ch, dw, dh) + got
    with open(out_path, "wb") as f:
        f.write(blob)
    print(f"wrote {out_path} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
