#!/usr/bin/env python3
"""Checks vitc checkpoints (safetensors) against the format the C side writes.

Expected: metadata `format` = `vitc-checkpoint-1`; `model.name`; `model.hidden`, `.mlp`,
`.heads`, `.layers`, `.patch`, `.image`, `.channels`, `.classes` (positive integers) and
`model.representation` (0 = no pre_logits); `optimizer` (sgd|adam|adamw|rmsprop);
`train.update`, `train.epoch`, `train.seed` (non-negative integers); other metadata keys
are ignored. Tensors: every parameter under its official name with the official shape
(the rule of tools/vit_ref.param_shapes) as F32, the optimizer slots
`optimizer/m/<name>` (sgd, adam, adamw) and `optimizer/v/<name>` (rmsprop, adam, adamw)
with the same shapes as F32, and when metadata `train.model_ema` = `1` (a run with
--model_ema) the moving average `ema/<name>` with the same shapes as F32; nothing else; all
values finite, v slots non-negative.

Prints one line per failed check, then `checkpoint_check: N passed, M failed`.
Exit status: 0 all passed, 1 a check failed, 2 a file could not be read (or bad usage).

usage: python3 tools/check_checkpoint.py FILE [FILE...]
"""

import os
import re
import sys

import numpy as np
from safetensors import safe_open

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_ref as V  # noqa: E402

FORMAT = "vitc-checkpoint-1"
MODEL_KEYS = ("hidden", "mlp", "heads", "layers", "patch", "image", "channels", "classes")
SLOTS = {"sgd": ("m",), "rmsprop": ("v",), "adam": ("m", "v"), "adamw": ("m", "v")}
TRAIN_KEYS = ("train.update", "train.epoch", "train.seed")
NP_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


class Tally:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, path, msg):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"{path}: {msg}")
        return ok


def parse_uint(s):
    return int(s) if isinstance(s, str) and re.fullmatch(r"[0-9]+", s) else None


def model_config(meta, path, t):
    """The vit_ref config from model.* metadata, or None (after reporting) if unusable."""
    ok = t.check(bool(meta.get("model.name", "").strip()), path, "metadata model.name missing or empty")
    cfg = {}
    for k in MODEL_KEYS + ("representation",):
        raw = meta.get("model." + k)
        v = parse_uint(raw)
        good = v is not None and (v > 0 or k == "representation")
        ok &= t.check(good, path, f"metadata model.{k} = {raw!r}: expected a "
                      f"{'non-negative' if k == 'representation' else 'positive'} integer")
        cfg[k] = v
    if not ok:
        return None
    ok &= t.check(cfg["hidden"] % cfg["heads"] == 0, path,
                  f"model.hidden {cfg['hidden']} not divisible by model.heads {cfg['heads']}")
    ok &= t.check(cfg["image"] % cfg["patch"] == 0, path,
                  f"model.image {cfg['image']} not divisible by model.patch {cfg['patch']}")
    return cfg if ok else None


def check_file(path, t):
    """Returns False if the file could not be read."""
    try:
        f = safe_open(path, framework="np")
        meta = f.metadata() or {}
        info = {}
        for k in f.keys():
            s = f.get_slice(k)
            info[k] = (s.get_dtype(), tuple(s.get_shape()))
    except Exception as e:  # noqa: BLE001 - any reason the file is unreadable
        t.check(False, path, f"cannot read as safetensors: {e}")
        return False

    t.check(meta.get("format") == FORMAT, path,
            f"metadata format = {meta.get('format')!r}, expected {FORMAT!r}")
    for k in TRAIN_KEYS:
        t.check(parse_uint(meta.get(k)) is not None, path,
                f"metadata {k} = {meta.get(k)!r}: expected a non-negative integer")
    opt = meta.get("optimizer")
    slots = SLOTS.get(opt)
    t.check(slots is not None, path,
            f"metadata optimizer = {opt!r}, expected one of {', '.join(sorted(SLOTS))}")
    cfg = model_config(meta, path, t)

    def expect(name, shape, what):
        got = info.get(name)
        if not t.check(got is not None, path, f"{what} {name} missing"):
            return
        t.check(got[1] == tuple(shape), path, f"{name}: shape {list(got[1])}, expected {list(shape)}")
        t.check(got[0] == "F32", path, f"{name}: dtype {got[0]}, expected F32")

    if cfg is not None:
        shapes = V.param_shapes(cfg)
        allowed = set(shapes)
        for name, shape in shapes.items():
            expect(name, shape, "parameter")
        for slot in slots or ():
            for name, shape in shapes.items():
                expect(f"optimizer/{slot}/{name}", shape, f"optimizer slot ({opt})")
                allowed.add(f"optimizer/{slot}/{name}")
        if meta.get("train.model_ema") == "1":
            for name, shape in shapes.items():
                expect(f"ema/{name}", shape, "moving average (train.model_ema)")
                allowed.add(f"ema/{name}")
        # With an unknown optimizer its slots cannot be judged; the rest still can.
        extra = sorted(k for k in info if k not in allowed
                       and (slots is not None or not k.startswith("optimizer/")))
        for k in extra:
            t.check(False, path, f"unexpected tensor {k} ({info[k][0]} {list(info[k][1])})")
        if not extra:
            t.check(True, path, "")

    for name, (dtype, _) in sorted(info.items()):
        if dtype not in NP_DTYPES:
            continue  # reported above unless the model metadata was unusable
        a = f.get_tensor(name)
        t.check(bool(np.isfinite(a).all()), path,
                f"{name}: {int(np.size(a) - np.isfinite(a).sum())} non-finite values")
        if name.startswith("optimizer/v/"):
            t.check(not (a < 0).any(), path, f"{name}: {int((a < 0).sum())} negative values "
                    "(a second-moment slot)")
    return True


def main():
    paths = sys.argv[1:]
    if not paths or any(p in ("-h", "--help") for p in paths):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    t = Tally()
    readable = [check_file(p, t) for p in paths]
    print(f"checkpoint_check: {t.passed} passed, {t.failed} failed")
    sys.exit(2 if not all(readable) else 1 if t.failed else 0)


if __name__ == "__main__":
    main()
