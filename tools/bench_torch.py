#!/usr/bin/env python3
"""Times the vitc model in PyTorch fp32 on the CPU, as the baseline the C trainer is
compared against: eager mode with scaled_dot_product_attention, exact GELU, AdamW,
global-norm clipping 1.0 and dropout 0.1 (the C defaults). Synthetic data.

Prints one JSON line: {"images_per_sec": X, "step_ms": Y, "torch": V, "threads": N}.
With --ddp N: N processes (gloo, DistributedDataParallel, global batch split), the baseline
for bench/dist_scaling.sh.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_ref as V  # noqa: E402


def make_adamw(model):
    decay = [p for n, p in model.official_parameters() if V.decays(n)]
    rest = [p for n, p in model.official_parameters() if not V.decays(n)]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}]
    try:  # the fused CPU kernel is the fastest path where this torch has it
        return torch.optim.AdamW(groups, lr=1e-3, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=1e-3, foreach=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("hidden", 64), ("layers", 4), ("heads", 4), ("mlp", 256), ("patch", 4),
                          ("image", 28), ("channels", 1), ("classes", 10), ("representation", 0),
                          ("batch", 128), ("steps", 20), ("warmup", 3),
                          ("threads", os.cpu_count() or 1)]:
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--inference", action="store_true", help="time forward passes only")
    ap.add_argument("--ddp", type=int, default=0, help="data-parallel over N gloo processes")
    ap.add_argument("--bf16", action="store_true", help="forward under CPU autocast to bfloat16 (training and --inference)")
    a = ap.parse_args()
    if a.ddp:
        import torch.multiprocessing as mp
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        mp.spawn(run, args=(a,), nprocs=a.ddp)
    else:
        run(-1, a)


def run(rank, a):
    world = max(a.ddp, 1)
    if rank >= 0:
        import torch.distributed as dist
        dist.init_process_group("gloo", rank=rank, world_size=world)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = dict(image=a.image, patch=a.patch, channels=a.channels, hidden=a.hidden, heads=a.heads,
               layers=a.layers, mlp=a.mlp, classes=a.classes, representation=a.representation,
               dropout=a.dropout)
    model = V.ViT(cfg, dtype=torch.float32, seed=0)

    # A few pre-made batches, so random number generation stays out of the timing.
    rng = np.random.default_rng(0)
    local = a.batch // world
    pool = [(torch.from_numpy(rng.integers(0, 256, (local, a.image, a.image, a.channels), dtype=np.uint8)),
             torch.from_numpy(rng.integers(0, a.classes, local)))
            for _ in range(4)]
    net = model
    if rank >= 0:  # DDP: bucketed all-reduce overlapped with the backward pass
        net = torch.nn.parallel.DistributedDataParallel(model)

    if a.inference:
        def step(i):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                model(pool[i % len(pool)][0], training=False)
    else:
        opt = make_adamw(model)
        params = [p for _, p in model.official_parameters()]

        def step(i):
            images, labels = pool[i % len(pool)]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                logits = net(images, training=True)
            V.loss_fn(logits.float(), labels).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

    for i in range(a.warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    dt = time.perf_counter() - t0
    if rank > 0:
        return
    print(json.dumps({"images_per_sec": round(a.batch * a.steps / dt, 2),
                      "step_ms": round(1000 * dt / a.steps, 3),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
