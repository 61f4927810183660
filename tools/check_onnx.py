#!/usr/bin/env python3
"""Checks an ONNX model written by vitc's exporter, with ONNX's checker and onnxruntime.

usage: python3 tools/check_onnx.py DIR [--logits FILE] [--tol 1e-4]
       (pip install onnx onnxruntime)

DIR holds:
  model.onnx   the model (src/model/onnx_export.c)
  input.f32    float32 images [N, C, S, S], raw little-endian: the model's input, already
               normalised as vit normalises its uint8 images
  logits.f32   float32 [N, classes]: vit's own logits for those images (--logits FILE
               reads another file instead)

Checks, in order:
  1. onnx.checker.check_model(full_check=True): the schema of every node and strict shape
     inference over the whole graph;
  2. the interface: default-domain opset 17, IR version 8, one input "images" float32
     [batch, C, S, S] and one output "logits" float32 [batch, classes], batch symbolic;
  3. with onnxruntime importable: the model run on all N images, on the first image alone and
     (N > 2) on the last N - 1, so the batch size really is free; each output must have the
     shape (n, classes) and lie within --tol of vit's logits, relative to the logit scale
     max|vit logits| (the figures are printed).

Prints "check_onnx: ..." lines and exits 0, or 1 on a failed check (2 when a file cannot be
read). Without onnxruntime it says that the numbers were not checked and exits 0 after 1-2.
"""
import argparse
import os
import sys

import numpy as np


def fail(msg, code=1):
    print(f"check_onnx: {msg}")
    sys.exit(code)


def dims_of(value_info):
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None)
    return out


def check_interface(model):
    import onnx

    ops = {(o.domain or ""): o.version for o in model.opset_import}
    if ops.get("") != 17:
        fail(f"default-domain opset is {ops.get('')}, expected 17")
    if model.ir_version != 8:
        fail(f"IR version {model.ir_version}, expected 8")
    g = model.graph
    if [i.name for i in g.input] != ["images"] or [o.name for o in g.output] != ["logits"]:
        fail(f"inputs {[i.name for i in g.input]}, outputs {[o.name for o in g.output]}: expected images -> logits")
    for v in (g.input[0], g.output[0]):
        if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            fail(f"{v.name} is not float32")
    din, dout = dims_of(g.input[0]), dims_of(g.output[0])
    if len(din) != 4 or len(dout) != 2 or not isinstance(din[0], str) or din[0] != dout[0]:
        fail(f"images {din}, logits {dout}: expected [batch, C, S, S] -> [batch, classes] with batch symbolic")
    if not all(isinstance(d, int) and d > 0 for d in din[1:] + dout[1:]):
        fail(f"images {din}, logits {dout}: every dimension but batch must be fixed")
    return din[1:], dout[1]


def run_ort(path, images, ref, classes, tol):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    n = images.shape[0]
    scale = float(np.max(np.abs(ref)))
    if not scale > 0:
        fail("vit's logits are all zero: nothing to compare")
    batches = [(0, n), (0, 1)] + ([(1, n)] if n > 2 else [])
    ok = True
    for lo, hi in batches:
        (out,) = sess.run(["logits"], {"images": images[lo:hi]})
        if out.shape != (hi - lo, classes):
            print(f"check_onnx: batch of {hi - lo}: logits shape {out.shape}, expected {(hi - lo, classes)}")
            ok = False
            continue
        diff = float(np.max(np.abs(out.astype(np.float64) - ref[lo:hi])))
        rel = diff / scale
        good = rel <= tol
        ok &= good
        print(f"check_onnx: onnxruntime {ort.__version__}, batch of {hi - lo} (images {lo}..{hi - 1}): "
              f"max abs diff {diff:.3e}, logit scale {scale:.3e}, relative {rel:.3e} "
              f"({'within' if good else 'PAST'} {tol:g})")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--logits", help="vit's logits (default DIR/logits.f32)")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    path = os.path.join(a.dir, "model.onnx")
    try:
        import onnx
    except ImportError:
        fail("the onnx package is not installed (pip install onnx)", 2)
    try:
        model = onnx.load(path)
        raw_in = np.fromfile(os.path.join(a.dir, "input.f32"), dtype="<f4")
        raw_ref = np.fromfile(a.logits or os.path.join(a.dir, "logits.f32"), dtype="<f4")
    except Exception as e:  # OSError, or protobuf's DecodeError for a damaged model
        fail(f"{a.dir}: cannot read: {e}", 2)
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # the checker's own error types differ between onnx versions
        fail(f"{path}: onnx.checker: {e}")
    print(f"check_onnx: {path}: onnx {onnx.__version__} full check ok, {len(model.graph.node)} nodes, "
          f"{len(model.graph.initializer)} initializers")
    (c, s, s2), classes = check_interface(model)
    per = c * s * s2
    if raw_in.size == 0 or raw_in.size % per or raw_ref.size != raw_in.size // per * classes:
        fail(f"{a.dir}: input.f32 has {raw_in.size} floats and the logits {raw_ref.size}: "
             f"not N x {per} and N x {classes}", 2)
    images = raw_in.reshape(-1, c, s, s2)
    ref = raw_ref.reshape(-1, classes).astype(np.float64)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("check_onnx: onnxruntime is not installed: the model's numbers were NOT checked")
        return 0
    return 0 if run_ort(path, images, ref, classes, a.tol) else 1


if __name__ == "__main__":
    sys.exit(main())
