"""The timm side of the from-scratch demonstration (bench/from_scratch.sh): trains timm's own
`VisionTransformer` on Fashion-MNIST with the model and recipe that `vit train
$(cat tests/demo.flags)` uses, plain or DeiT-style, and prints one JSON line with the test top-1
of the weights (and of the weight EMA when the recipe keeps one).

The model is vit's demo model: ViT-Ti_4 overridden to hidden 64, 4 layers, 4 heads, MLP 256,
patch 4 on 28x28 gray images (1 channel), class token, 10 classes, no pre_logits, dropout 0,
LayerNorm eps 1e-6, exact (erf) GELU. The recipe is vit's, built from timm's own parts:

  both recipes  pixels x*2/255 - 1 (timm's Normalize(0.5, 0.5)); batch 32, no accumulation;
                AdamW (timm's create_optimizer_v2: torch.optim.AdamW, betas 0.9/0.999, eps 1e-8,
                weight decay 0.05 on the weight matrices only, which is vit's kernels-only rule);
                timm's CosineLRScheduler per update, lr 2e-3, 300 warm-up updates from 0, then
                cosine to 0 over the remaining updates (vit's WarmupCosine); global-norm clipping
                1.0 (timm's dispatch_clip_grad); a new shuffle of the training set each epoch;
                validation on all of t10k after each epoch.
  plain         cross-entropy, no label smoothing (vit's default), no augmentation.
  deit          drop path 0.1; timm's Mixup (mixup 0.8, cutmix 1.0, prob 1, switch 0.5, mode
                batch, label smoothing 0.1) with SoftTargetCrossEntropy; RandAugment
                rand-m6-n2-mstd0.5 (timm's rand_augment_transform on PIL mode 'L' images, fill
                128, bilinear/bicubic at random per op); RandomErasing p 0.25, mode pixel, one box,
                on the normalised image; ModelEmaV3 decay 0.999 without warm-up, updated after
                every optimizer update with timm's step count (the first update copies the weights).

Initialisation is timm's 'jax' mode (the official initialisers, which vit uses) with three
corrections so that every tensor is drawn from vit's distribution: the class token is zero
(timm: normal(1e-6)), the position embedding is normal(0.02) (timm: normal truncated at +-2,
i.e. at 100 std), and the fused qkv matrix gets Xavier-uniform per q, k and v block with fan
(64, 64), as vit's three separate kernels (timm: one Xavier over fan (64, 192)). The numbers
drawn are torch's, not vit's Philox ones.

Where this cannot be vit exactly (same distributions, not the same numbers or bits):
  - every random stream: vit draws initialisation, data order, drop path, mixup, RandAugment and
    erasing from Philox keyed by (seed, position); timm from torch's, numpy's and Python's global
    generators. A seed gives a different run on each side, so compare across seeds, not per seed.
  - random erasing 'pixel': timm writes N(0, 1) floats into the normalised image; vit writes that
    noise as bytes (127.5 * (z + 1), clamped to 0..255), so |z| beyond ~1 is clipped there.
  - RandAugment's fill on gray images is 128 on both sides, passed here as an int: timm's default
    (128, 128, 128) is refused by Pillow >= 12 for mode 'L'. The rare Posterize to 0 bits (a
    magnitude under 2.5, > 7 std away at m6, mstd 0.5) would raise in Pillow where vit gives black.
  - clipping: torch scales by 1 / (norm + 1e-6), vit by 1 / norm. Warm-up rates: timm computes
    s * (lr / 300), vit lr * s / 300 (the last bit may differ).
  - arithmetic order: fused scaled_dot_product_attention, a Conv2d patch embedding and torch's
    kernels against vit's own; fp32 on both sides.
  - the plain recipe indexes the training tensor directly; the deit recipe's per-image augmentation
    runs in this process by default (--workers 0), while vit's loader threads overlap it with the
    step: about 0.2 ms per image, a few percent of an epoch here. Seconds, not accuracy.
  - validation runs in batches of 500 (vit: the training batch, 32); the result is the same.

usage: python3 tools/from_scratch_timm.py --recipe plain|deit [--epochs 10] [--seed 0]
           [--threads 2] [--workers 0] [--max_steps K] [--steps_per_epoch N] [--validation_steps N]
Progress goes to stderr; stdout gets the one JSON line. Needs torch, timm, numpy, pillow.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import timm
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, dispatch_clip_grad

import train_torch_demo  # its Fashion-MNIST reader (this folder is on sys.path when run as a script)

# vit's demo flags (tests/demo.flags) and the DeiT-style flags bench/from_scratch.sh adds.
HIDDEN, LAYERS, HEADS, MLP, PATCH, IMAGE, CLASSES = 64, 4, 4, 256, 4, 28, 10
BATCH, LR, WARMUP, WEIGHT_DECAY, CLIP = 32, 2e-3, 300, 0.05, 1.0
DEIT = dict(drop_path=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, switch_prob=0.5, mode="batch",
            smoothing=0.1, aa="rand-m6-n2-mstd0.5", reprob=0.25, remode="pixel", recount=1,
            ema_decay=0.999, ema_warmup=False)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_split(folder, prefix):
    """Images (N, 28, 28) uint8 and labels (N,) int64, read as tools/train_torch_demo.py reads them."""
    x, y = train_torch_demo.load_split(folder, prefix)
    return x[..., 0], y


def to_input(u8):
    """uint8 (..., 28, 28) -> float (..., 1, 28, 28) in [-1, 1]: ToTensor + Normalize(0.5, 0.5)."""
    return torch.from_numpy(np.array(u8, dtype=np.float32)).div_(255.0).sub_(0.5).div_(0.5).unsqueeze(-3)


class AugmentedImages(torch.utils.data.Dataset):
    """Training images through the DeiT-style per-image pipeline, in timm's create_transform order:
    RandAugment on the PIL image, then ToTensor + Normalize, then RandomErasing on the tensor.
    (vit's IDX path gets no crop or flip, so neither does this one.)"""

    def __init__(self, images, labels, aa, reprob, remode, recount):
        self.images, self.labels = images, labels
        # Fill 128 as an int: vit's fill for gray images; Pillow >= 12 refuses a tuple fill in mode
        # 'L'. No 'interpolation' key: timm then picks bilinear or bicubic at random per op, which
        # is train.py's default (--train-interpolation random) and vit's.
        self.randaug = rand_augment_transform(aa, dict(translate_const=250, img_mean=128))
        self.erase = RandomErasing(probability=reprob, mode=remode, max_count=recount, device="cpu") \
            if reprob > 0 else None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.randaug(Image.fromarray(self.images[i]))  # a 2-D uint8 array is mode "L"
        x = to_input(np.asarray(img, dtype=np.uint8))
        if self.erase is not None:
            self.erase(x)
        return x, int(self.labels[i])


def build_model(drop_path):
    model = VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, in_chans=1, num_classes=CLASSES, global_pool="token",
        embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS, mlp_ratio=MLP / HIDDEN, qkv_bias=True,
        class_token=True, drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=drop_path, weight_init="jax")
    # Bring the three tensors whose distribution differs from vit's to vit's (see the header).
    with torch.no_grad():
        model.cls_token.zero_()
        model.pos_embed.normal_(0.0, 0.02)
        limit = math.sqrt(6.0 / (HIDDEN + HIDDEN))
        for blk in model.blocks:
            blk.attn.qkv.weight.uniform_(-limit, limit)  # each of q, k, v: fan_in 64, fan_out 64
    return model


def check_weight_decay_groups(model, opt):
    """vit decays kernels only: every weight matrix, never biases, LayerNorm, class token or
    position embedding. timm's groups must come out the same."""
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    kernels = {n for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "pos_embed")}
    if decayed != kernels:
        raise SystemExit(f"weight-decay groups differ from vit's rule: {sorted(decayed ^ kernels)}")


def vit_warmup_cosine(s, total):
    """vit's WarmupCosine (src/optim/schedule.c) at 0-based update s."""
    if s < WARMUP:
        return LR * s / WARMUP
    return LR * max(0.0, 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / max(1, total - WARMUP))))


def evaluate(model, xte, yte, limit):
    model.eval()
    n = len(xte) if limit is None else min(len(xte), limit)
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, n, 500):
            xb, yb = to_input(xte[i:min(n, i + 500)]), torch.from_numpy(yte[i:min(n, i + 500)])
            logits = model(xb)
            loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(-1) == yb).sum())
    return correct / n, loss / n, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=("plain", "deit"), required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=0,
                    help="deit: DataLoader worker processes for the per-image augmentation (0 = main process)")
    ap.add_argument("--max_steps", type=int, default=0, help="stop after K updates in all (smoke checks); "
                    "the schedule still spans the whole epoch budget")
    ap.add_argument("--steps_per_epoch", type=int, default=0,
                    help="updates per epoch, as vit's flag (default: all 60000 / 32 = 1875)")
    ap.add_argument("--validation_steps", type=int, default=None,
                    help="validate on the first N batches of 32 of t10k, as vit's flag; 0 = no validation "
                    "(default: all of t10k)")
    ap.add_argument("--dataset_dir", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    deit = a.recipe == "deit"

    xtr, ytr = load_split(a.dataset_dir, "train")
    xte, yte = load_split(a.dataset_dir, "t10k")
    steps = len(xtr) // BATCH  # vit drops the last partial batch (60000 / 32 divides exactly)
    if a.steps_per_epoch:
        steps = min(steps, a.steps_per_epoch)
    total = a.epochs * steps
    val_limit = None if a.validation_steps is None else a.validation_steps * BATCH

    model = build_model(DEIT["drop_path"] if deit else 0.0)
    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
    check_weight_decay_groups(model, opt)
    sched = CosineLRScheduler(opt, t_initial=max(1, total - WARMUP), lr_min=0.0, warmup_t=WARMUP,
                              warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    for s in sorted({0, 1, WARMUP - 1, WARMUP, (WARMUP + total) // 2, total - 1}):
        if s >= 0 and not math.isclose(sched._get_lr(s)[0], vit_warmup_cosine(s, total), rel_tol=1e-9, abs_tol=1e-15):
            raise SystemExit(f"timm's schedule differs from vit's WarmupCosine at update {s}")

    gen = torch.Generator().manual_seed(a.seed)
    if deit:
        mixup = Mixup(mixup_alpha=DEIT["mixup"], cutmix_alpha=DEIT["cutmix"], prob=DEIT["mixup_prob"],
                      switch_prob=DEIT["switch_prob"], mode=DEIT["mode"], label_smoothing=DEIT["smoothing"],
                      num_classes=CLASSES)
        loss_fn = SoftTargetCrossEntropy()
        ema = ModelEmaV3(model, decay=DEIT["ema_decay"], use_warmup=DEIT["ema_warmup"])
        data = AugmentedImages(xtr, ytr, DEIT["aa"], DEIT["reprob"], DEIT["remode"], DEIT["recount"])
        loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True, generator=gen,
                                             num_workers=a.workers, persistent_workers=a.workers > 0)
    else:
        mixup, ema, loader = None, None, None
        loss_fn = nn.CrossEntropyLoss()  # vit's --label_smoothing default is 0
        xtr_f, ytr_t = to_input(xtr), torch.from_numpy(ytr)

    log(f"timm {timm.__version__}, torch {torch.__version__}, {a.threads} threads; recipe {a.recipe}, "
        f"{a.epochs} epochs x {steps} updates, seed {a.seed}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters")
    updates, images, seconds_train = 0, 0, 0.0
    t0 = time.time()
    result = {}
    for epoch in range(a.epochs):
        model.train()
        te = time.time()
        loss_sum, seen = 0.0, 0
        if deit:
            batches = iter(loader)
        else:
            order = torch.randperm(len(xtr), generator=gen)
            batches = ((xtr_f[order[i * BATCH:(i + 1) * BATCH]], ytr_t[order[i * BATCH:(i + 1) * BATCH]])
                       for i in range(steps))
        for i in range(steps):
            if a.max_steps and updates >= a.max_steps:
                break
            x, y = next(batches)
            if mixup is not None:
                x, y = mixup(x, y)
            sched.step_update(num_updates=updates)  # the lr of 0-based update `updates`
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dispatch_clip_grad(model.parameters(), CLIP, mode="norm")
            opt.step()
            updates += 1
            if ema is not None:
                ema.update(model, step=updates)
            loss_sum += loss.item() * len(x)
            seen += len(x)
            if (i + 1) % max(1, steps // 10) == 0:
                log(f"epoch {epoch + 1}/{a.epochs} step {i + 1}/{steps} loss {loss_sum / seen:.4f} "
                    f"lr {opt.param_groups[0]['lr']:.3e} {seen / (time.time() - te):.1f} img/s")
        if deit:
            del batches
        images += seen
        seconds_train += time.time() - te
        result = dict(train_loss=loss_sum / max(1, seen), val_loss=None, val_top1=None, val_images=0)
        if val_limit != 0:
            top1, vloss, n = evaluate(model, xte, yte, val_limit)
            result.update(val_loss=vloss, val_top1=top1, val_images=n)
            line = f"epoch {epoch + 1}/{a.epochs} validation: loss {vloss:.4f} top1 {100 * top1:.2f}%"
            if ema is not None:
                etop1, eloss, _ = evaluate(ema.module, xte, yte, val_limit)
                result.update(ema_val_loss=eloss, ema_val_top1=etop1)
                line += f"   EMA: loss {eloss:.4f} top1 {100 * etop1:.2f}%"
            log(line + f"  ({time.time() - te:.1f} s)")
        if a.max_steps and updates >= a.max_steps:
            break
    seconds = time.time() - t0
    out = {"system": "timm", "recipe": a.recipe, "epochs": a.epochs, "steps": updates, "seed": a.seed,
           "threads": a.threads, "val_top1": result["val_top1"],
           "ema_val_top1": result.get("ema_val_top1"), "val_loss": result["val_loss"],
           "ema_val_loss": result.get("ema_val_loss"), "train_loss": result["train_loss"],
           "val_images": result["val_images"], "images_per_sec": images / max(seconds_train, 1e-9),
           "seconds": round(seconds, 3), "timm": timm.__version__, "torch": torch.__version__}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
