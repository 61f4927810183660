#!/usr/bin/env python3
"""Writes the fixtures for reading official-format .npz weights:

  OUTDIR/npz_pre.npz            every parameter of the tiny ViT under its official Flax
                                name, shape and layout, with pre_logits (representation 48);
                                written by np.savez (stored members, forced zip64)
  OUTDIR/npz_nopre.npz          the same arrays without pre_logits/*
  OUTDIR/npz_logits.safetensors images_32 (4,32,32,3) and images_48 (4,48,48,3) uint8, and
                                logits/{pre,nopre}/{32,48} float32 (4,10): the npz loaded by
                                tools/vit_npz.py and run by vit_ref in float64; for 48 the
                                4x4 position embedding is resized to 6x6 the official way
  OUTDIR/posemb_zoom.safetensors src_14 (1,197,8) -> dst_14_24 (1,577,8), src_7 (1,50,8) ->
                                dst_7_12 (1,145,8), src_6 (1,37,8) -> dst_6_4 (1,17,8):
                                the official resize, float64 from the float32 src

Config: image 32, patch 8, channels 3, hidden 48, heads 3, layers 2, mlp 96, classes 10,
dropout 0, exact erf GELU. Deterministic (fixed seed, one torch thread, sorted safetensors
headers; np.savez's zip members carry zipfile's fixed 1980-01-01 date, which is
asserted): reruns give identical bytes.

usage: python3 tools/make_npz_fixtures.py OUTDIR
"""

import io
import json
import zipfile
import math
import os
import struct
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_npz  # noqa: E402
import vit_ref as V  # noqa: E402

CFG = dict(image=32, patch=8, channels=3, hidden=48, heads=3, layers=2, mlp=96,
           classes=10, representation=48, dropout=0.0)
SEED = 20240612
BATCH = 4
POSEMB_CASES = (("14", "24", 14, 24), ("7", "12", 7, 12), ("6", "4", 6, 4))
POSEMB_DIM = 8


def make_params(rng):
    """Official name -> float32, scaled as the brief says: kernels normal*sqrt(1/fan_in),
    biases 0.1*normal, LayerNorm scales 1+0.1*normal, cls/pos_embedding 0.1*normal."""
    out = {}
    for name, shape in V.param_shapes(CFG).items():
        z = rng.standard_normal(shape)
        if name.endswith("/kernel"):
            if name == "embedding/kernel":
                fan_in = shape[0] * shape[1] * shape[2]          # (P, P, C, D)
            elif name.endswith("/out/kernel"):
                fan_in = shape[0] * shape[1]                     # (H, hd, D)
            else:
                fan_in = shape[0]                                # (D, ...) / (M, D)
            v = z * math.sqrt(1.0 / fan_in)
        elif name.endswith("/scale"):
            v = 1.0 + 0.1 * z
        else:
            v = 0.1 * z
        out[name] = v.astype(np.float32)
    assert np.abs(out["head/kernel"]).min() > 0
    return out


def canonical_header(path):
    """Rewrites a safetensors header with metadata keys sorted and tensors in file order,
    so regenerating gives the same bytes (the writer emits metadata in hash order)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    head = json.loads(blob[8:8 + n])
    meta = head.pop("__metadata__", {})
    new = {"__metadata__": dict(sorted(meta.items()))}
    for k in sorted(head, key=lambda k: head[k]["data_offsets"][0]):
        new[k] = head[k]
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def write_safetensors(path, tensors, meta):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=meta)
    canonical_header(path)
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def align_corners_resize(grid, n):
    """Second implementation of the resize, to check scipy's: separable linear
    interpolation with corners aligned, output i samples input i*(g-1)/(n-1)."""
    g = grid.shape[0]
    pos = np.arange(n) * ((g - 1) / (n - 1))
    i0 = np.minimum(np.floor(pos).astype(int), g - 2)
    w = (pos - i0)[:, None]
    rows = grid[i0] * (1 - w)[:, :, None] + grid[i0 + 1] * w[:, :, None]      # (n, g, D)
    return rows[:, i0] * (1 - w)[None] + rows[:, i0 + 1] * w[None]           # (n, n, D)


def self_check(params32):
    # the official resize against an independent formula
    rng = np.random.default_rng(1)
    for g, n in ((4, 6), (14, 24), (7, 12), (6, 4), (3, 5)):
        pe = rng.standard_normal((1, 1 + g * g, 5))
        got = vit_npz.resize_posemb(pe, n)
        want = align_corners_resize(pe[0, 1:].reshape(g, g, 5), n).reshape(1, n * n, 5)
        assert np.array_equal(got[:, :1], pe[:, :1])
        err = np.abs(got[:, 1:] - want).max()
        assert err < 1e-12, f"resize {g}->{n} disagrees with align-corners interpolation: {err}"

    # the loader: exact round trip, and it refuses stray / missing / misshapen keys
    def npz_bytes(d):
        buf = io.BytesIO()
        np.savez(buf, **d)
        buf.seek(0)
        return buf

    cfg, p = vit_npz.load_npz(npz_bytes(params32))
    assert cfg == CFG, cfg
    assert set(p) == set(params32) and all(np.array_equal(p[k], params32[k]) for k in p)
    extra = dict(params32, **{"Transformer/encoderblock_0/extra/kernel": params32["head/bias"]})
    missing = {k: v for k, v in params32.items() if k != "Transformer/encoder_norm/bias"}
    wrong = dict(params32, **{"head/bias": params32["head/bias"][:5]})
    for bad in (extra, missing, wrong):
        try:
            vit_npz.load_npz(npz_bytes(bad))
        except (AssertionError, KeyError):
            continue
        raise AssertionError("the npz loader accepted a broken file")


def posemb_cases(rng):
    out = {}
    for gs, ns, g, n in POSEMB_CASES:
        src = rng.standard_normal((1, 1 + g * g, POSEMB_DIM)).astype(np.float32)
        dst = vit_npz.resize_posemb(src.astype(np.float64), n)
        assert dst.shape == (1, 1 + n * n, POSEMB_DIM)
        out[f"src_{gs}"] = src
        out[f"dst_{gs}_{ns}"] = dst.astype(np.float32)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    torch.set_num_threads(1)  # fixed reduction order, so reruns give identical bits

    rng = np.random.default_rng(SEED)
    params32 = make_params(rng)
    S, C = CFG["image"], CFG["channels"]
    images = {32: rng.integers(0, 256, size=(BATCH, S, S, C), dtype=np.uint8),
              48: rng.integers(0, 256, size=(BATCH, 48, 48, C), dtype=np.uint8)}
    posemb = posemb_cases(rng)
    self_check(params32)

    os.makedirs(outdir, exist_ok=True)
    variants = {"pre": params32,
                "nopre": {k: v for k, v in params32.items() if not k.startswith("pre_logits/")}}
    assert len(variants["nopre"]) == len(params32) - 2
    paths = {}
    for tag, p in variants.items():
        paths[tag] = os.path.join(outdir, f"npz_{tag}.npz")
        np.savez(paths[tag], **p)
        with np.load(paths[tag]) as z:
            assert sorted(z.files) == sorted(p)
            assert all(np.array_equal(z[k], p[k]) and z[k].dtype == np.float32 for k in p)
        with zipfile.ZipFile(paths[tag]) as zf:  # no timestamps, so reruns give equal bytes
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())

    out = {"images_32": images[32], "images_48": images[48]}
    for tag in ("pre", "nopre"):
        for size in (32, 48):
            cfg, p = vit_npz.load_npz(paths[tag], image=size)
            assert cfg["representation"] == (48 if tag == "pre" else 0)
            assert cfg["image"] == size
            pe = p[vit_npz.POSEMB]
            assert pe.shape == (1, 1 + (size // 8) ** 2, 48)
            if size == 32:
                assert np.array_equal(pe, params32[vit_npz.POSEMB])
            with torch.no_grad():
                logits = V.ViT(cfg, p, dtype=torch.float64)(images[size]).numpy()
            assert logits.shape == (BATCH, 10) and np.isfinite(logits).all()
            out[f"logits/{tag}/{size}"] = logits.astype(np.float32)
    keys = [k for k in out if k.startswith("logits/")]
    for i, a in enumerate(keys):  # every case gives its own numbers
        for b in keys[i + 1:]:
            assert np.abs(out[a] - out[b]).max() > 1e-2, (a, b)

    meta = {k: str(CFG[k]) for k in ("image", "patch", "channels", "hidden", "heads", "layers",
                                      "mlp", "classes", "representation")}
    meta.update(batch=str(BATCH), gelu="erf", posemb_resize="scipy.ndimage.zoom order=1",
                note="logits/pre/*: npz_pre.npz, logits/nopre/*: npz_nopre.npz; /48 uses the "
                     "4x4 position embedding resized to 6x6")
    lpath = os.path.join(outdir, "npz_logits.safetensors")
    write_safetensors(lpath, out, meta)
    zpath = os.path.join(outdir, "posemb_zoom.safetensors")
    write_safetensors(zpath, posemb, {"posemb_resize": "scipy.ndimage.zoom order=1",
                                      "note": "dst = official resize of src (class row kept), "
                                              "float64 from the float32 src"})

    total = 0
    for path in (paths["pre"], paths["nopre"], lpath, zpath):
        total += os.path.getsize(path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    assert total < 1 << 20, total
    for k in keys:
        print(f"  {k}: row 0 " + " ".join(f"{x:.4f}" for x in out[k][0]))


if __name__ == "__main__":
    main()
