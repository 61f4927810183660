#!/usr/bin/env python3
"""Writes OUT (default tests/fixtures/evalcrop_pil.bin): small RGB images and the recipe's
evaluation preprocessing done by PIL — resize so the short side equals the size (aspect kept,
long side rounded), BILINEAR, then a center crop — for tests/test_image.c to compare
image_eval_crop against. Only enlargements (PIL's BILINEAR antialiases when shrinking, and
then is no longer the half-pixel-center bilinear both use when enlarging).

Layout (uint32 little-endian): b"EVC1", ncases, then per case: w, h, size, w*h*3 source bytes,
size*size*3 expected bytes.

usage: python3 tools/make_evalcrop_fixture.py [OUT]     (needs: pip install pillow)
"""

import random
import struct
import sys

from PIL import Image

CASES = [(17, 13, 30), (13, 17, 24), (20, 20, 33)]  # landscape, portrait, square


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/evalcrop_pil.bin"
    rng = random.Random(7)
    blob = bytearray(b"EVC1") + struct.pack("<I", len(CASES))
    for w, h, size in CASES:
        px = bytes(rng.randrange(256) if (x + y + c) % 3 else (x * 13 + y * 7 + c * 50) % 256
                   for y in range(h) for x in range(w) for c in range(3))
        img = Image.frombytes("RGB", (w, h), px)
        short = min(w, h)
        nw, nh = (size, round(h * size / w)) if w <= h else (round(w * size / h), size)
        big = img.resize((nw, nh), Image.BILINEAR)
        x0, y0 = (nw - size) // 2, (nh - size) // 2
        crop = big.crop((x0, y0, x0 + size, y0 + size)).tobytes()
        blob += struct.pack("<III", w, h, size) + px + crop
        assert short < size
    with open(out, "wb") as f:
        f.write(blob)


if __name__ == "__main__":
    main()
