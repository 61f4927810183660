#!/usr/bin/env python3
"""PyTorch reference timings for bench/gpu_check.sh: ViT training and inference on one GPU.

Modes (one per process, so a slow or failing one costs only itself):
  eager    timm ViT (--model b16: vit_base_patch16, l16: vit_large_patch16, at --image; torchvision
           vit_b_16 / vit_l_16 if timm is missing), bf16 autocast, AdamW (fused) with global-norm
           clipping 1.0, synthetic data already on the GPU, fused attention (SDPA); with --data DIR,
           real JPEGs instead: torchvision ImageFolder DIR/train, RandomResizedCrop + flip,
           DataLoader with a worker per core and pinned memory (loading is part of the time)
  compile  the same model through torch.compile
  infer    forward passes only (eval mode, inference_mode, bf16 autocast), synthetic data
  ceiling  the measured bf16 matrix-product rate (8192^3 products), the machine's ceiling
Each prints one JSON line: {"mode", "batch", "images_per_sec" | "tflops", ...}.
The first batch of --batches that fits is used (out-of-memory moves to the next).
Timing: --warmup steps first (compilation happens there), then --steps steps between two
torch.cuda.synchronize() calls on the host clock.
"""
import argparse
import gc
import json
import sys
import time


def build_model(torch, num_classes, name="b16", image=224):
    try:
        import timm

        arch = {"b16": "vit_base_patch16_224", "l16": "vit_large_patch16_224"}[name]
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=image), "timm"
    except Exception as e:  # noqa: BLE001 - any import/create problem: fall back
        print(f"timm unavailable ({e}); using torchvision", file=sys.stderr)
        import torchvision

        make = {"b16": torchvision.models.vit_b_16, "l16": torchvision.models.vit_l_16}[name]
        return make(num_classes=num_classes, image_size=image), "torchvision"


def jpeg_batches(torch, data, batch, image):
    """Endless (x, y) batches from the JPEG folder data/train, augmented as vit trains."""
    import os

    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomResizedCrop(image), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.5] * 3, [0.5] * 3)])
    ds = ImageFolder(os.path.join(data, "train"), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, pin_memory=True,
                                     num_workers=os.cpu_count() or 1, persistent_workers=True, prefetch_factor=4)
    while True:
        for x, y in dl:
            yield x.cuda(non_blocking=True), y.cuda(non_blocking=True)


def train_speed(torch, mode, batch, steps, warmup, image, name="b16", data=None):
    import torch.nn.functional as F

    dev = torch.device("cuda")
    model, source = build_model(torch, 1000, name, image)
    model = model.to(dev).train()
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if mode == "compile" else model
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, image, image, device=dev, generator=g)
    y = torch.randint(0, 1000, (batch,), device=dev, generator=g)
    batches = jpeg_batches(torch, data, batch, image) if data else None

    def step():
        nonlocal x, y
        if batches:
            x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as vit's default --clip_norm 1.0
        opt.step()
        return loss

    t0 = time.time()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.time() - t0
    t0 = time.time()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.time() - t0
    return {
        "mode": mode,
        "batch": batch,
        "images_per_sec": batch * steps / dt,
        "step_ms": 1000 * dt / steps,
        "warmup_s": warm_s,
        "loss": float(loss.detach()),
        "model": source,
        "data": "jpeg" if data else "synthetic",
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def infer_speed(torch, batch, steps, warmup, image, name="b16"):
    dev = torch.device("cuda")
    model, source = build_model(torch, 1000, name, image)
    model = model.to(dev).eval()
    x = torch.randn(batch, 3, image, image, device=dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
        dt = time.time() - t0
    return {"mode": "infer", "batch": batch, "images_per_sec": batch * steps / dt, "step_ms": 1000 * dt / steps,
            "model": source}


def ceiling(torch, n=8192, reps=10):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        torch.matmul(a, b)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    med = times[len(times) // 2]
    return {"mode": "ceiling", "tflops": 2 * n**3 / med / 1e12, "n": n, "median_ms": med * 1000}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["eager", "compile", "infer", "ceiling"])
    ap.add_argument("--model", choices=["b16", "l16"], default="b16")
    ap.add_argument("--data", help="JPEG image folder (DIR/train/<class>/*.jpg) for eager/compile")
    ap.add_argument("--batches", default="256,128,64", help="comma-separated, tried in order")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image", type=int, default=224)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"mode": a.mode, "error": "torch.cuda.is_available() is False"}))
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if a.mode == "ceiling":
        print(json.dumps(ceiling(torch)), flush=True)
        return 0
    last = None
    for b in [int(s) for s in a.batches.split(",") if s.strip()]:
        try:
            if a.mode == "infer":
                r = infer_speed(torch, b, a.steps, a.warmup, a.image, a.model)
            else:
                r = train_speed(torch, a.mode, b, a.steps, a.warmup, a.image, a.model, a.data)
            print(json.dumps(r), flush=True)
            return 0
        except torch.cuda.OutOfMemoryError as e:
            last = f"batch {b}: out of memory ({str(e).splitlines()[0]})"
            print(last, file=sys.stderr, flush=True)
        gc.collect()  # the failed attempt's model and tensors, then their cached blocks
        torch.cuda.empty_cache()
    print(json.dumps({"mode": a.mode, "error": last or "no batch given"}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
