#!/usr/bin/env python3
"""Checks vit's PyTorch exports (src/model/weights_torch.c) with the real loaders, run by hand:

  - a timm file: timm.models.vision_transformer.VisionTransformer(img_size, patch_size,
    in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio=mlp/embed [,
    act_layer='gelu_tanh'] [, norm_layer=LayerNorm(eps)]).load_state_dict(file, strict=True);
  - a Hugging Face folder: ViTForImageClassification.from_pretrained(dir), which must report
    no missing, unexpected or mismatched tensors;

then runs each in float64 on the fixture images (tests/fixtures/torch_logits.safetensors,
pixels u8 * (2/255) - 1 as vit feeds them) and compares its logits with the fixture's
(which tests/test_weights_torch.c checks vit's own forward pass against).

usage:
  python3 tools/check_torch_export.py --dir DIR
      DIR as kept by `VIT_TORCH_EXPORT_KEEP=DIR build/tests/test_weights_torch`: checks
      timm_from_timm.safetensors and hf_from_timm/ against logits/timm, and
      timm_from_hf.safetensors (epsilon 1e-12) and hf_from_hf/ against logits/hf_cls
  python3 tools/check_torch_export.py [--timm FILE] [--hf DIR] [--expect logits/timm]
      [--img 32 --patch 8 --chans 3 --embed 48 --depth 2 --heads 3 --mlp 96 --classes 10
       --eps 1e-6 --gelu-tanh] [--fixtures tests/fixtures] [--tol 1e-4]

Prints one line per check and "N passed, N failed"; exits nonzero on any failure.
Needs torch, timm, transformers and safetensors.
"""

import argparse
import functools
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.dont_write_bytecode = True

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

results = []


def report(ok, what):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + what)


def rel_diff(a, ref):
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def pixels(fixtures):
    fx = load_file(os.path.join(fixtures, "torch_logits.safetensors"))
    u8 = fx["images_u8"].numpy()
    x = torch.from_numpy(u8).to(torch.float64) * (2.0 / 255.0) - 1.0
    return x.permute(0, 3, 1, 2).contiguous(), {k: v.numpy() for k, v in fx.items()}


def check_timm(path, a, eps, x, want, tol):
    from timm.models.vision_transformer import VisionTransformer
    kw = {}
    if a.gelu_tanh:
        kw["act_layer"] = "gelu_tanh"
    if eps != 1e-6:
        kw["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=eps)
    model = VisionTransformer(img_size=a.img, patch_size=a.patch, in_chans=a.chans, num_classes=a.classes,
                              embed_dim=a.embed, depth=a.depth, num_heads=a.heads,
                              mlp_ratio=a.mlp / a.embed, **kw)
    try:
        model.load_state_dict(load_file(path), strict=True)
    except RuntimeError as e:
        report(False, f"{path}: timm load_state_dict(strict=True): {str(e).splitlines()[0]}")
        return
    report(True, f"{path}: timm VisionTransformer load_state_dict(strict=True)")
    with torch.no_grad():
        got = model.to(torch.float64).eval()(x).numpy()
    r = rel_diff(got, want)
    report(r <= tol, f"{path}: timm logits vs fixture: relative difference {r:.3g}")


def check_hf(folder, x, want, tol, eps=None):
    from transformers import ViTForImageClassification
    model, info = ViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    report(not problems, f"{folder}: ViTForImageClassification.from_pretrained: "
                         f"{problems if problems else 'no missing, unexpected or mismatched tensors'}")
    if eps is not None:
        report(model.config.layer_norm_eps == eps, f"{folder}: layer_norm_eps {model.config.layer_norm_eps}")
    with torch.no_grad():
        got = model.to(torch.float64).eval()(pixel_values=x).logits.numpy()
    r = rel_diff(got, want)
    report(r <= tol, f"{folder}: Hugging Face logits vs fixture: relative difference {r:.3g}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir")
    p.add_argument("--timm")
    p.add_argument("--hf")
    p.add_argument("--expect", default="logits/timm", help="fixture tensor to compare with")
    p.add_argument("--fixtures", default="tests/fixtures")
    for name, default in (("img", 32), ("patch", 8), ("chans", 3), ("embed", 48), ("depth", 2), ("heads", 3),
                          ("mlp", 96), ("classes", 10)):
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--gelu-tanh", action="store_true")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    if not (a.dir or a.timm or a.hf):
        p.error("give --dir, or --timm and/or --hf")
    x, fx = pixels(a.fixtures)
    if a.dir:
        for src, key, eps in (("timm", "logits/timm", 1e-6), ("hf", "logits/hf_cls", 1e-12)):
            check_timm(os.path.join(a.dir, f"timm_from_{src}.safetensors"), a, eps, x, fx[key], a.tol)
            check_hf(os.path.join(a.dir, f"hf_from_{src}"), x, fx[key], a.tol, eps)
    if a.timm:
        check_timm(a.timm, a, a.eps, x, fx[a.expect], a.tol)
    if a.hf:
        check_hf(a.hf, x, fx[a.expect], a.tol)
    print(f"check_torch_export: {sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
