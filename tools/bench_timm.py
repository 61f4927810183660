#!/usr/bin/env python3
"""Times timm's VisionTransformer on the CPU (synthetic data, nothing downloaded): the PyTorch
model people actually train, as the baseline of record for bench/cpu_speed.sh.

ViT-B/16 (--hidden 768 --layers 12 --heads 12 --mlp 3072 --patch 16 --image 224 --channels 3
--classes 1000) comes from timm.create_model("vit_base_patch16_224", pretrained=False); any
other shape is built with timm.models.vision_transformer.VisionTransformer directly.

Made comparable to `vit --dropout D`: timm's proj_drop_rate=D puts dropout exactly where vit
has it (after the attention output projection, after the GELU, after the second MLP dense);
drop_rate (head dropout), pos_drop_rate, attn_drop_rate and drop_path_rate stay 0, as vit
has no dropout there. timm's default act_layer is nn.GELU (exact erf, as vit's default).
What differs from vit, none of it changing the matrix-product work: timm fuses q, k, v into
one Linear; attention is F.scaled_dot_product_attention (timm's fused_attn); the patch
embedding is a Conv2d; the loss is plain cross-entropy; batches are premade float NCHW
tensors (vit's synthetic loader hands over uint8 images); AdamW weight decay follows timm's
rule (none on 1-D parameters, pos_embed, cls_token) where vit decays kernels only.

Training step: forward (under CPU autocast to bfloat16 with --dtype bf16; backward outside
it), cross-entropy, backward, global-norm clipping 1.0, optimizer step (SGD momentum 0.9 or
AdamW weight decay 0.05, fused where this torch has it, else foreach). --inference: forward
only, model.eval() under torch.inference_mode(). --compile: torch.compile(model); the warm-up
steps (which include compilation, reported as compile_s) are not timed. Prints one JSON line;
on a failure (e.g. compilation) a JSON line with "error" and exit status 1. --info prints the
versions only.
"""

import argparse
import json
import os
import re
import sys
import time
import traceback

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def lib_info():
    """oneDNN and MKL versions as this torch was built with them (from torch.__config__.show())."""
    cfg = torch.__config__.show()
    dnn = re.search(r"(?:MKL-DNN|oneDNN)[^\n]*?(v\d+(?:\.\d+)*)", cfg)
    mkl = re.search(r"Math Kernel Library Version ([0-9.]+)", cfg)
    info = {"onednn": "oneDNN " + dnn.group(1) if dnn else None,
            "mkl": "MKL " + mkl.group(1) if mkl else None,
            "mkldnn_available": torch.backends.mkldnn.is_available(),
            "mkl_available": torch.backends.mkl.is_available()}
    try:  # whether oneDNN will use native bf16 instructions on this CPU
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        pass
    return info


def make_model(a):
    import timm
    from timm.models.vision_transformer import VisionTransformer
    drops = dict(drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=a.dropout, attn_drop_rate=0.0,
                 drop_path_rate=0.0)
    if (a.hidden, a.layers, a.heads, a.mlp, a.patch, a.image, a.channels) == (768, 12, 12, 3072, 16, 224, 3):
        return "vit_base_patch16_224", timm.create_model("vit_base_patch16_224", pretrained=False,
                                                         num_classes=a.classes, **drops)
    return "VisionTransformer", VisionTransformer(
        img_size=a.image, patch_size=a.patch, in_chans=a.channels, num_classes=a.classes,
        embed_dim=a.hidden, depth=a.layers, num_heads=a.heads, mlp_ratio=a.mlp / a.hidden,
        class_token=True, global_pool="token", **drops)


def make_optimizer(model, name):
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in skip]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and n not in skip)]
    for impl in ({"fused": True}, {"foreach": True}):  # fused CPU kernels first, where this torch has them
        try:
            if name == "sgd":
                return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **impl), impl
            return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                      {"params": rest, "weight_decay": 0.0}], lr=1e-3, **impl), impl
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError("no usable optimizer implementation")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("hidden", 64), ("layers", 4), ("heads", 4), ("mlp", 256), ("patch", 4),
                          ("image", 28), ("channels", 1), ("classes", 10), ("batch", 128),
                          ("steps", 20), ("warmup", 3), ("threads", os.cpu_count() or 1)]:
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--inference", action="store_true", help="time forward passes only")
    ap.add_argument("--info", action="store_true", help="print the versions (torch, timm, oneDNN, MKL) and exit")
    a = ap.parse_args()
    if a.info:
        import timm
        print(json.dumps({"torch": torch.__version__, "timm": timm.__version__, **lib_info()}))
        return
    a.warmup = max(a.warmup, 2 if a.compile else 1)  # compiled: the first call compiles, the second may recompile

    import timm
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "timm": timm.__version__, "dtype": a.dtype, "compile": a.compile,
           "inference": a.inference, "optimizer": None if a.inference else a.optimizer,
           "threads": torch.get_num_threads(), "batch": a.batch, "steps": a.steps, "warmup": a.warmup}
    out.update(lib_info())
    try:
        out["model"], model = make_model(a)
        bf16 = a.dtype == "bf16"
        # Premade batches, so random number generation stays out of the timing.
        g = torch.Generator().manual_seed(0)
        pool = [(torch.rand(a.batch, a.channels, a.image, a.image, generator=g) * 2 - 1,
                 torch.randint(0, a.classes, (a.batch,), generator=g)) for _ in range(4)]
        if a.inference:
            model.eval()
            net = torch.compile(model) if a.compile else model

            def step(i):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    net(pool[i % len(pool)][0])
        else:
            model.train()
            net = torch.compile(model) if a.compile else model
            opt, impl = make_optimizer(model, a.optimizer)
            out["optimizer_impl"] = next(iter(impl))
            params = list(model.parameters())

            def step(i):
                images, labels = pool[i % len(pool)]
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(images), labels)  # autocast runs cross_entropy in fp32
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

        t0 = time.perf_counter()
        for i in range(a.warmup):
            step(i)
        warm = time.perf_counter() - t0
        if a.compile:
            out["compile_s"] = round(warm, 1)  # warm-up including compilation
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(a.warmup + i)
        dt = time.perf_counter() - t0
    except Exception as e:  # e.g. inductor failing to compile: report it, let the caller go on
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        print(json.dumps(out), flush=True)
        sys.exit(1)
    rate = {"images_per_sec": round(a.batch * a.steps / dt, 3), "step_ms": round(1000 * dt / a.steps, 2)}
    print(json.dumps({**rate, **out}), flush=True)


if __name__ == "__main__":
    main()
