#!/usr/bin/env python3
"""Writes OUTDIR/parity.safetensors: reference logits, loss, gradients and optimizer
results for the tiny ViT the C parity tests rebuild. Deterministic; float64 inside,
float32 stored. Self-checks the reference against an independent implementation first.

usage: python3 tools/make_fixtures.py OUTDIR
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_ref as V  # noqa: E402

CFG = dict(image=32, patch=8, channels=3, hidden=48, heads=3, layers=2, mlp=96,
           classes=10, representation=48, dropout=0.0)
BATCH = 4
MICRO = 6          # micro-batches 0..5: updates use (0,1), (2,3), (4,5)
ACCUM = 2
SMOOTHING = 0.1    # only for loss_ls
SEED = 20240611
OPTS = ("sgd", "adam", "adamw", "rmsprop")
# About half the global norm of the first averaged gradient (4.372), so clipping
# stays active on all three updates; asserted below.
CLIP = {"sgd": 2.2, "adam": 2.2, "adamw": 2.2, "rmsprop": 2.2}


# -- an independent second implementation, used only to check vit_ref --

def naive_logits(cfg, p, images):
    """Conv2d patch embedding and explicit einsum attention/LayerNorm/GELU."""
    D, H, P = cfg["hidden"], cfg["heads"], cfg["patch"]
    hd = D // H
    x = torch.from_numpy(images).to(torch.float64).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
    w = p["embedding/kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
    x = F.conv2d(x, w, p["embedding/bias"], stride=P)           # B, D, G, G
    x = x.flatten(2).transpose(1, 2)                            # B, G*G, D
    B = x.shape[0]
    x = torch.cat([p["cls"].repeat(B, 1, 1), x], 1) + p["Transformer/posembed_input/pos_embedding"]

    def ln(t, s, b):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * s + b

    for i in range(cfg["layers"]):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        y = ln(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
        q = torch.einsum("bnd,dhj->bhnj", y, p[a + "query/kernel"]) + p[a + "query/bias"][None, :, None, :]
        k = torch.einsum("bnd,dhj->bhnj", y, p[a + "key/kernel"]) + p[a + "key/bias"][None, :, None, :]
        v = torch.einsum("bnd,dhj->bhnj", y, p[a + "value/kernel"]) + p[a + "value/bias"][None, :, None, :]
        s = torch.einsum("bhnj,bhmj->bhnm", q, k) / math.sqrt(hd)
        e = torch.exp(s - s.amax(-1, keepdim=True))
        att = e / e.sum(-1, keepdim=True)
        o = torch.einsum("bhnm,bhmj->bhnj", att, v)
        x = x + torch.einsum("bhnj,hjd->bnd", o, p[a + "out/kernel"]) + p[a + "out/bias"]
        y = ln(x, p[b + "LayerNorm_2/scale"], p[b + "LayerNorm_2/bias"])
        h = torch.einsum("bnd,dm->bnm", y, p[b + "MlpBlock_3/Dense_0/kernel"]) + p[b + "MlpBlock_3/Dense_0/bias"]
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        x = x + torch.einsum("bnm,md->bnd", h, p[b + "MlpBlock_3/Dense_1/kernel"]) + p[b + "MlpBlock_3/Dense_1/bias"]
    x = ln(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])[:, 0]
    x = torch.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    return x @ p["head/kernel"] + p["head/bias"]


def self_check(params32, images, labels):
    params = {k: v.astype(np.float64) for k, v in params32.items()}
    model = V.ViT(CFG, params, dtype=torch.float64)
    tp = {k: torch.from_numpy(v) for k, v in params.items()}

    # Forward: two implementations agree to rounding.
    for mb in range(2):
        a = model(images[mb]).detach()
        b = naive_logits(CFG, tp, images[mb])
        err = (a - b).abs().max().item()
        assert err < 1e-12, f"logits disagree with the naive model: {err:.3g}"

    # Loss with smoothing: hand-written vs torch's built-in.
    lg = model(images[0])
    lab = torch.from_numpy(labels[0].astype(np.int64))
    for s in (0.0, SMOOTHING):
        err = abs(V.loss_fn(lg, lab, s).item() - F.cross_entropy(lg, lab, label_smoothing=s).item())
        assert err < 1e-13, f"loss with smoothing {s} disagrees: {err:.3g}"

    # Parameter round trip keeps the official layouts.
    st = model.state()
    assert all(np.array_equal(st[k], params[k]) for k in params)

    # Autograd vs central differences on entries from every kind of tensor.
    _, grads = V.grad_of(model, images[0], labels[0])
    rng = np.random.default_rng(1)
    names = ["embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
             "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
             "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/bias",
             "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel",
             "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel",
             "Transformer/encoderblock_0/LayerNorm_0/scale", "Transformer/encoderblock_1/LayerNorm_2/bias",
             "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel",
             "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias",
             "Transformer/encoder_norm/scale", "pre_logits/kernel", "head/kernel", "head/bias"]
    h = 1e-6
    for name in names:
        for _ in range(2):
            idx = tuple(int(rng.integers(n)) for n in params[name].shape)
            f = []
            for sgn in (1, -1):
                q = dict(tp)
                q[name] = q[name].clone()
                q[name][idx] += sgn * h
                f.append(V.loss_fn(naive_logits(CFG, q, images[0]), lab).item())
            fd = (f[0] - f[1]) / (2 * h)
            an = grads[name][idx]
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)) + 1e-8, \
                f"gradient of {name}{idx}: autograd {an:.10g} vs finite difference {fd:.10g}"

    # Hand-written optimizers vs torch.optim where the formulas coincide, and Keras
    # Adam against its algebraically rearranged form.
    g_seq = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(3)]
    ref = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-2),
    }
    for kind in ("sgd", "rmsprop", "adamw"):
        mine = {k: v.copy() for k, v in params.items()}
        opt = V.Optimizer(kind)
        tps = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
        if kind == "adamw":
            dec = [t for k, t in tps.items() if V.decays(k)]
            nod = [t for k, t in tps.items() if not V.decays(k)]
            topt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.05},
                                      {"params": nod, "weight_decay": 0.0}],
                                     lr=0.01, betas=(0.9, 0.999), eps=1e-8)
        else:
            topt = ref[kind](list(tps.values()))
        for g in g_seq:
            opt.step(mine, g)
            for k, t in tps.items():
                t.grad = torch.from_numpy(g[k])
            topt.step()
        err = max(np.abs(mine[k] - tps[k].detach().numpy()).max() for k in params)
        assert err < 1e-12, f"{kind} disagrees with torch.optim: {err:.3g}"
    mine = {k: v.copy() for k, v in params.items()}
    opt = V.Optimizer("adam")
    alt = {k: v.copy() for k, v in params.items()}
    m = {k: 0.0 for k in params}
    v2 = {k: 0.0 for k in params}
    for t, g in enumerate(g_seq, 1):
        opt.step(mine, g)
        for k in params:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
            mh, vh = m[k] / (1 - 0.9 ** t), v2[k] / (1 - 0.999 ** t)
            alt[k] -= 0.01 * mh / (np.sqrt(vh) + 1e-2 / math.sqrt(1 - 0.999 ** t))
    err = max(np.abs(mine[k] - alt[k]).max() for k in params)
    assert err < 1e-12, f"adam disagrees with its rearranged form: {err:.3g}"


def canonical_header(path):
    """Rewrites the safetensors header with sorted keys: the writer emits metadata in
    hash order, which would make every regeneration a spurious binary diff."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    head = json.loads(blob[8:8 + n])
    meta = head.pop("__metadata__", {})
    order = sorted(head, key=lambda k: head[k]["data_offsets"][0])
    new = {"__metadata__": dict(sorted(meta.items()))}
    new.update((k, head[k]) for k in order)
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def exact_grads(model, images, labels):
    """Micro-batch gradient with the key biases set to their exact value, zero:
    softmax ignores a shift shared by all keys, so autograd returns only rounding
    noise there and storing it would mislead the comparisons."""
    loss, g = V.grad_of(model, images, labels)
    for k in g:
        if k.endswith("/key/bias"):
            assert np.abs(g[k]).max() < 1e-12, k
            g[k] = np.zeros_like(g[k])
    return loss, g


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    torch.set_num_threads(1)  # fixed reduction order, so reruns give identical bits

    rng = np.random.default_rng(SEED)
    S, C, K = CFG["image"], CFG["channels"], CFG["classes"]
    images = rng.integers(0, 256, size=(MICRO, BATCH, S, S, C), dtype=np.uint8)
    labels = rng.integers(0, K, size=(MICRO, BATCH)).astype(np.int32)
    params32 = V.init_params(CFG, rng)

    self_check(params32, images, labels)

    params = {k: v.astype(np.float64) for k, v in params32.items()}
    model = V.ViT(CFG, params, dtype=torch.float64)
    out = {"input/images": images, "input/labels": labels}
    for k, v in params32.items():
        out["param/" + k] = v
    with torch.no_grad():
        logits = model(images[0])
        out["logits"] = logits.numpy().astype(np.float32)
        out["loss_ls"] = np.array([V.loss_fn(logits, labels[0], SMOOTHING).item()], np.float32)
    loss, grads = exact_grads(model, images[0], labels[0])
    out["loss"] = np.array([loss], np.float32)
    for k, g in grads.items():
        out["grad/" + k] = g.astype(np.float32)

    meta = {k: str(CFG[k]) for k in ("image", "patch", "channels", "hidden", "heads", "layers",
                                      "mlp", "classes", "representation")}
    meta.update(batch=str(BATCH), grad_accum=str(ACCUM), label_smoothing_loss=str(SMOOTHING),
                updates="3")
    norms = {}
    for kind in OPTS:
        opt = V.Optimizer(kind)
        p = {k: v.copy() for k, v in params.items()}
        norms[kind] = []
        for u in range(MICRO // ACCUM):
            gs = []
            for mb in range(u * ACCUM, (u + 1) * ACCUM):
                model.load(p)
                gs.append(exact_grads(model, images[mb], labels[mb])[1])
            g = {k: sum(x[k] for x in gs) / ACCUM for k in p}
            g, n = V.clip_by_global_norm(g, CLIP[kind])
            norms[kind].append(n)
            assert n > CLIP[kind], f"{kind}: clipping inactive at update {u}: norm {n} <= {CLIP[kind]}"
            opt.step(p, g)
        for k, v in p.items():
            out[f"after/{kind}/{k}"] = v.astype(np.float32)
        for hk, hv in opt.hp.items():
            meta[f"{hk}_{kind}"] = repr(hv)
        meta[f"clip_{kind}"] = repr(CLIP[kind])

    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "parity.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path, metadata=meta)
    canonical_header(path)
    back = load_file(path)
    assert all(np.array_equal(back[k], out[k]) for k in out) and len(back) == len(out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes); loss {loss:.6f}")
    for kind in OPTS:
        print(f"  {kind}: clip {CLIP[kind]}, global norms " + ", ".join(f"{n:.6f}" for n in norms[kind]))


if __name__ == "__main__":
    main()
