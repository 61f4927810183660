#!/usr/bin/env python3
"""Data-pipeline throughput of torchvision/PIL with PyTorch's DataLoader, doing the work of
vit's training loader (bench/loader_speed.c) on the same image folder.

usage: bench_loader_torch.py DIR [--workers N] [--batch 64] [--batches 40] [--warmup 3]
                             [--size 224]

Pipeline (DIR/train, torchvision.datasets.ImageFolder, PIL decode through Pillow's bundled
libjpeg-turbo): RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.75, 1.33)) (the nearest
torchvision op to the recipe's distorted-bounding-box crop; bilinear), RandomHorizontalFlip,
ColorJitter(brightness=32/255, saturation=(0.5, 1.5)), ToTensor, Normalize to [-1, 1]
(mean = std = 0.5), batches of --batch collated by the DataLoader, random order.

--workers N: N = 1 runs everything in the main process (num_workers=0), so exactly one core
does the work; N > 1 uses num_workers=N worker processes (the main process only receives
batches). torch's own threads are set to 1 in every process. Give it N cores with `taskset`
(bench/loader_speed.sh does). Timing starts after --warmup batches have been taken (worker
start-up excluded) and covers the next --batches batches. Prints one JSON line.
"""
import argparse
import json
import sys
import time


def _one_thread(_worker_id):
    import torch
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    try:
        import PIL
        import torch
        import torchvision
        from torchvision import datasets, transforms
    except ImportError as e:
        print("bench_loader_torch: %s (pip install torch torchvision pillow)" % e, file=sys.stderr)
        sys.exit(3)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)

    tf = transforms.Compose([
        transforms.RandomResizedCrop(a.size, scale=(0.6, 1.0), ratio=(0.75, 1.33),
                                     interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=32 / 255, saturation=(0.5, 1.5)),
        transforms.ToTensor(),
        transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])
    ds = datasets.ImageFolder(a.dir.rstrip("/") + "/train", transform=tf)
    total = (a.warmup + a.batches) * a.batch
    # Random order; as many permutations as needed when total exceeds the folder.
    sampler = torch.utils.data.RandomSampler(ds, replacement=False, num_samples=total)
    nw = 0 if a.workers <= 1 else a.workers
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=nw,
                                     persistent_workers=False, pin_memory=False, drop_last=False,
                                     worker_init_fn=_one_thread)
    it = iter(dl)
    images = 0
    t0 = None
    checksum = 0.0
    for b in range(a.warmup + a.batches):
        if b == a.warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        checksum += float(x.view(-1)[b % x.numel()])
        if b >= a.warmup:
            images += x.shape[0]
    secs = time.perf_counter() - t0
    del it
    cores = max(1, a.workers)
    print(json.dumps({
        "impl": "torch", "workers": cores, "num_workers": nw, "batch": a.batch, "batches": a.batches,
        "size": a.size, "images": images, "seconds": round(secs, 3),
        "images_per_sec": round(images / secs, 1), "images_per_sec_per_core": round(images / secs / cores, 1),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
        "checksum": round(checksum, 3)}))


if __name__ == "__main__":
    main()
