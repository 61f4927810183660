"""Trains the demo configuration in PyTorch (tools/vit_ref.py, float32) with the same recipe
as `make demo`: official initialisers, AdamW (decay on kernels only), global-norm clipping 1.0,
WarmupCosine per optimizer update, per-epoch shuffling. Prints one JSON line with the test
accuracy, to set vit's end-to-end result next to PyTorch's on the same recipe.

usage: python3 tools/train_torch_demo.py [--seed 0] [--threads 2] [--epochs 2] ...
"""

import argparse
import gzip
import json
import math
import os
import time

import numpy as np
import torch

import vit_ref as V


def read_idx(path):
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(d, prefix):
    def find(kind):
        for suffix in ("", ".gz"):
            p = os.path.join(d, f"{prefix}-{kind}{suffix}")
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"{d}/{prefix}-{kind}[.gz]")
    x = read_idx(find("images-idx3-ubyte"))
    y = read_idx(find("labels-idx1-ubyte"))
    return x[..., None], y.astype(np.int64)


def official_init(cfg, rng):
    """The official initialisers (what vit does with --from_scratch), drawn with numpy."""
    out = {}
    D, M = cfg["hidden"], cfg["mlp"]
    for name, shape in V.param_shapes(cfg).items():
        if name == "embedding/kernel" or name == "pre_logits/kernel":
            fan_in = int(np.prod(shape[:-1]))
            z = rng.standard_normal(shape)
            while np.any(np.abs(z) > 2):  # truncated at two standard deviations
                bad = np.abs(z) > 2
                z[bad] = rng.standard_normal(bad.sum())
            v = z * math.sqrt(1.0 / fan_in) / 0.87962566103423978
        elif name.endswith("/kernel") and not name.startswith("head"):
            fan_in, fan_out = (D, M) if "Dense_0" in name else (M, D) if "Dense_1" in name else (D, D)
            lim = math.sqrt(6.0 / (fan_in + fan_out))
            v = rng.uniform(-lim, lim, shape)
        elif "MlpBlock_3" in name and name.endswith("/bias"):
            v = 1e-6 * rng.standard_normal(shape)
        elif name.endswith("posembed_input/pos_embedding"):
            v = 0.02 * rng.standard_normal(shape)
        elif name.endswith("/scale"):
            v = np.ones(shape)
        else:  # attention biases, LayerNorm biases, cls, head
            v = np.zeros(shape)
        out[name] = v.astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset_dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight_decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    xtr, ytr = load_split(a.dataset_dir, "train")
    xte, yte = load_split(a.dataset_dir, "t10k")
    cfg = dict(image=28, patch=4, channels=1, hidden=64, heads=4, layers=4, mlp=256, classes=10,
               representation=0, dropout=a.dropout)
    model = V.ViT(cfg, params=official_init(cfg, rng), dtype=torch.float32)
    named = model.official_parameters()
    groups = [{"params": [p for n, p in named if V.decays(n)], "weight_decay": a.weight_decay},
              {"params": [p for n, p in named if not V.decays(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    steps = len(xtr) // a.batch
    total = a.epochs * steps
    t0, s = time.time(), 0
    for epoch in range(a.epochs):
        order = rng.permutation(len(xtr))
        model.train()
        for i in range(steps):
            idx = order[i * a.batch:(i + 1) * a.batch]
            lr = a.lr * s / a.warmup if s < a.warmup else \
                a.lr * max(0.0, 0.5 * (1 + math.cos(math.pi * (s - a.warmup) / max(1, total - a.warmup))))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = V.loss_fn(model(xtr[idx], training=True), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
            opt.step()
            s += 1
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 500):
            correct += int((model(xte[i:i + 500]).argmax(-1).numpy() == yte[i:i + 500]).sum())
    print(json.dumps({"val_top1": correct / len(xte), "steps": s, "seconds": round(time.time() - t0, 1),
                      "torch": torch.__version__, "seed": a.seed}))


if __name__ == "__main__":
    main()
