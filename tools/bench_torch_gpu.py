#!/usr/bin/env python3
"""PyTorch reference timings for bench/gpu_check.sh: ViT-B/16 training at 224 on one GPU.

Modes (one per process, so a slow or failing one costs only itself):
  eager    timm vit_base_patch16_224 (torchvision vit_b_16 if timm is missing), bf16 autocast,
           AdamW (fused) with global-norm clipping 1.0, synthetic data already on the GPU,
           fused attention (SDPA)
  compile  the same model through torch.compile
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


def build_model(torch, num_classes):
    try:
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes), "timm"
    except Exception as e:  # noqa: BLE001 - any import/create problem: fall back
        print(f"timm unavailable ({e}); using torchvision vit_b_16", file=sys.stderr)
        import torchvision

        return torchvision.models.vit_b_16(num_classes=num_classes), "torchvision"


def train_speed(torch, mode, batch, steps, warmup, image):
    import torch.nn.functional as F

    dev = torch.device("cuda")
    model, source = build_model(torch, 1000)
    model = model.to(dev).train()
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if mode == "compile" else model
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, image, image, device=dev, generator=g)
    y = torch.randint(0, 1000, (batch,), device=dev, generator=g)

    def step():
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
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


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
    ap.add_argument("mode", choices=["eager", "compile", "ceiling"])
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
            print(json.dumps(train_speed(torch, a.mode, b, a.steps, a.warmup, a.image)), flush=True)
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
