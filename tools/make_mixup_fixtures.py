#!/usr/bin/env python3
"""Writes OUTDIR/mixup_timm.safetensors (default tests/fixtures/): what timm's own functions
give for given random draws, for tests/test_mixup.c to hold vitc's Mixup/CutMix and drop path
to. timm's draws come from np.random (Mixup) and torch's bernoulli_ (drop_path); here both
are replaced, while timm runs, by functions that return draws chosen by this script (and
record them), so the fixture holds timm's results together with the draws that made them.

Tensors (f64 unless said):
  bbox            (N, 11) H, W, lam, single, cy, cx, yl, yh, xl, xh, corrected lam:
                  timm.data.mixup.cutmix_bbox_and_lam(..., correct_lam=True) with lam a Python
                  float (single 0, batch mode) or an np.float32 (single 1, pair/elem mode), and
                  np.random.randint returning cy, cx; among them cases where the fp32 and the
                  double sides differ (found by search).
  bbox_minmax     (N, 11) H, W, lo, hi, cut_h, cut_w, yl, xl, yu, xu, lam: the same with
                  ratio_minmax=(lo, hi) (randint returning cut_h, cut_w, yl, xl).
  targets.K       (M, 3) per case: mode (0: one Python-float lam, 1: float32 lam per sample),
                  smoothing, classes; targets.lam{i} (B) the lam(s); targets.labels{i} (i32, B);
                  targets.out{i} (f32, B x K) = timm.data.mixup.mixup_target(...).
  mix{i}.config   mode (0 batch, 1 pair, 2 elem), mixup alpha, cutmix alpha, minmax lo, hi
                  (0, 0: none), prob, switch prob, smoothing, classes K, batch B, channels C,
                  side S; mix{i}.x (f32, B x C x S x S) the input; mix{i}.labels (i32);
                  mix{i}.draws (slots x 9: apply, cutmix, lam, cy, cx, cut_h, cut_w, yl, xl;
                  -1 where timm drew nothing); mix{i}.mixed and mix{i}.target (f32): what
                  timm.data.mixup.Mixup(...)(x, labels) returned.
  droppath.rates  (N, 2 + 32) R, L, then timm's calculate_drop_path_rates(R, L) (0-padded).
  droppath.case   (M, 5) drop_prob, seed, step, site, B: timm.layers.drop_path on ones
                  (B, 3, 5) in training mode, with bernoulli_ filling the keep pattern of
                  vitc's rng_keep(seed, step, site, b, fp32(1 - drop_prob)) (Philox4x32-10,
                  re-implemented below); droppath.keep{i} (f32, B) that pattern and
                  droppath.out{i} (f32, B) the output per sample (constant within a sample).
  beta.cdf        (A, 1 + 19) alpha, then the empirical CDF at 0.05, 0.10, ..., 0.95 of
                  2,000,000 np.random.beta(alpha, alpha) draws (seed 0).

usage: python3 tools/make_mixup_fixtures.py [OUTDIR]      (needs: pip install torch timm numpy safetensors)
Reproducible byte for byte for given numpy, torch and timm versions.
"""

import contextlib
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

import timm
from timm.data import mixup as tm
from timm.layers import drop as td

M32 = 0xFFFFFFFF


# ---- vitc's counter-based generator (src/util/rng.h), for drop path's keep pattern --------
def philox(key, c0, c1, c2, c3):
    k0, k1 = key & M32, (key >> 32) & M32
    x0, x1, x2, x3 = c0 & M32, c1 & M32, c2 & M32, c3 & M32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * x0, 0xCD9E8D57 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & M32, (p0 >> 32) ^ x3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return x0, x1, x2, x3


def rng_keep(seed, step, site, i, keep):
    r = philox(seed, i >> 2, i >> 34, site, step)
    return (r[i & 3] >> 8) / 16777216.0 < float(keep)


# ---- np.random replaced by chosen, recorded draws ----------------------------------------
class Draws:
    """rand/beta/randint as np.random's, from a seeded generator, logging (name, value)."""

    def __init__(self, seed, extremes=False):
        self.rng = np.random.default_rng(seed)
        self.log = []
        self.extremes = extremes

    def rand(self, *size):
        v = self.rng.random(size) if size else float(self.rng.random())
        self.log.append(("rand", v))
        return v

    def beta(self, a, b, size=None):
        v = self.rng.beta(a, b, size)
        if self.extremes:  # lam exactly 1 or 0 now and then (no mixing; a whole-image box)
            pick = self.rng.random(size)
            v = np.where(pick < 0.1, 1.0, np.where(pick > 0.93, 0.0, v)) if size else (1.0 if pick < 0.1 else v)
        self.log.append(("beta", v))
        return v

    def randint(self, low, high=None, size=None):
        if high is None:
            low, high = 0, low
        u = self.rng.random(size)
        v = np.floor(low + u * (np.asarray(high) - np.asarray(low))).astype(np.int64)
        v = int(v) if size is None else v
        self.log.append(("randint", v))
        return v

    def take(self, name):
        got, v = self.log.pop(0)
        assert got == name, f"timm drew {got} where {name} was expected"
        return v


@contextlib.contextmanager
def patched(draws):
    saved = np.random.rand, np.random.beta, np.random.randint
    np.random.rand, np.random.beta, np.random.randint = draws.rand, draws.beta, draws.randint
    try:
        yield
    finally:
        np.random.rand, np.random.beta, np.random.randint = saved


# ---- fixtures ------------------------------------------------------------------------------
def bbox_cases():
    rng = np.random.default_rng(1)
    rows, rows_mm = [], []
    lams = [0.0, 1e-12, 0.25, 0.5, 0.75, 0.9999, 1 - 2**-24, 0.3, 0.7]
    for k in range(400):
        H, W = (int(rng.integers(1, 65)), int(rng.integers(1, 65))) if k % 3 else (int(rng.integers(1, 400)),) * 2
        lam = lams[k] if k < len(lams) else float(rng.beta(0.3, 0.3) if k % 2 else rng.random())
        for single in (0, 1):
            d = Draws(1000 + k)
            lam_in = np.float32(lam) if single else lam
            with patched(d):
                (yl, yh, xl, xh), lam2 = tm.cutmix_bbox_and_lam((3, H, W), lam_in, correct_lam=True)
            cy, cx = d.take("randint"), d.take("randint")
            rows.append([H, W, float(lam_in), single, cy, cx, yl, yh, xl, xh, float(lam2)])
    # Where numpy's fp32 side (pair/elem lams) and the double one part: found by search.
    found = 0
    while found < 24:
        lam32, H = np.float32(rng.random()), int(rng.integers(2, 500))
        if int(H * np.sqrt(np.float32(1) - lam32)) == int(H * np.sqrt(1 - float(lam32))):
            continue
        found += 1
        d = Draws(3000 + found)
        with patched(d):
            (yl, yh, xl, xh), lam2 = tm.cutmix_bbox_and_lam((3, H, H), lam32, correct_lam=True)
        cy, cx = d.take("randint"), d.take("randint")
        rows.append([H, H, float(lam32), 1, cy, cx, yl, yh, xl, xh, float(lam2)])
    for k in range(100):
        H, W = int(rng.integers(4, 300)), int(rng.integers(4, 300))
        lo = float(rng.choice([0.0, 0.1, 0.2, 0.3, 0.25]))
        hi = float(rng.choice([0.5, 0.7, 0.8, 0.9, 1.0]))
        if int(H * lo) >= int(H * hi) or int(W * lo) >= int(W * hi):
            continue
        d = Draws(5000 + k)
        with patched(d):
            (yl, yu, xl, xu), lam2 = tm.cutmix_bbox_and_lam((3, H, W), 0.5, ratio_minmax=(lo, hi))
        ch, cw, y0, x0 = (d.take("randint") for _ in range(4))
        assert (y0, x0) == (yl, xl)
        rows_mm.append([H, W, lo, hi, ch, cw, yl, xl, yu, xu, float(lam2)])
    return np.array(rows, np.float64), np.array(rows_mm, np.float64)


def target_cases(out):
    rng = np.random.default_rng(2)
    info = []
    for i, (mode, sm, K, B) in enumerate([(0, 0.0, 5, 4), (0, 0.1, 10, 6), (1, 0.1, 7, 8), (1, 0.0, 3, 2),
                                          (0, 0.2, 1000, 4), (1, 0.3, 13, 6)]):
        sm = float(np.float32(sm))  # vitc's --label_smoothing is fp32
        labels = rng.integers(0, K, B).astype(np.int64)
        if mode == 0:
            lam = float(rng.random())
            t = tm.mixup_target(torch.from_numpy(labels), K, lam, sm)
            lams = np.full(B, lam)
        else:
            half = rng.random(B // 2).astype(np.float32)
            lam32 = np.concatenate([half, half[::-1]])
            t = tm.mixup_target(torch.from_numpy(labels), K, torch.from_numpy(lam32).unsqueeze(1), sm)
            lams = lam32.astype(np.float64)
        out[f"targets.lam{i}"] = lams
        out[f"targets.labels{i}"] = labels.astype(np.int32)
        out[f"targets.out{i}"] = t.numpy().astype(np.float32)
        info.append([mode, sm, K])
    out["targets.K"] = np.array(info, np.float64)


def slot_draws(m, d, n, batch, S):
    """The per-slot draws timm took, read off the log in the order timm's code takes them."""
    rows = [[-1.0] * 9 for _ in range(n)]
    both, mix_on = m.mixup_alpha > 0 and m.cutmix_alpha > 0, m.mixup_alpha > 0
    if batch:
        apply = d.take("rand") < m.mix_prob
        cut = False
        if apply:
            cut = d.take("rand") < m.switch_prob if both else not mix_on
            lam = float(d.take("beta"))
        rows[0][:3] = [int(apply), int(cut), lam if apply else 1.0]
        lams, cuts = [lam if apply else 1.0], [cut]
    else:
        cuts = d.take("rand") < m.switch_prob if both else np.full(n, not mix_on)
        if both:
            bc, bm = d.take("beta"), d.take("beta")
            lam_mix = np.where(cuts, bc, bm)
        else:
            lam_mix = d.take("beta")
        apply = d.take("rand") < m.mix_prob
        lams = np.where(apply, lam_mix.astype(np.float32), np.float32(1.0))
        for i in range(n):
            rows[i][:3] = [int(apply[i]), int(cuts[i]), float(lam_mix[i])]
    for i in range(n):
        if lams[i] != 1.0 and cuts[i]:
            if m.cutmix_minmax is not None:
                rows[i][5:9] = [d.take("randint") for _ in range(4)]
            else:
                rows[i][3:5] = [d.take("randint"), d.take("randint")]
    assert not d.log, f"draws left over: {d.log}"
    return np.array(rows, np.float64)


MIX_CASES = [
    # mode, mixup alpha, cutmix alpha, minmax, prob, switch, smoothing, K, B, C, S, seed
    ("batch", 0.8, 0.0, None, 1.0, 0.5, 0.1, 5, 6, 3, 8, 10),
    ("batch", 0.0, 1.0, None, 1.0, 0.5, 0.0, 5, 6, 3, 8, 11),
    ("batch", 0.8, 1.0, None, 1.0, 0.5, 0.1, 7, 8, 3, 12, 12),
    ("batch", 0.8, 1.0, None, 1.0, 0.5, 0.1, 7, 8, 3, 12, 13),
    ("batch", 0.8, 1.0, None, 0.5, 0.5, 0.1, 7, 4, 1, 8, 14),
    ("batch", 0.0, 0.0, (0.2, 0.8), 1.0, 0.5, 0.0, 4, 4, 3, 16, 15),
    ("pair", 0.8, 1.0, None, 0.7, 0.5, 0.1, 6, 8, 3, 8, 16),
    ("pair", 0.2, 0.0, None, 1.0, 0.5, 0.2, 6, 6, 1, 8, 17),
    ("elem", 0.8, 1.0, None, 0.8, 0.5, 0.1, 5, 10, 3, 8, 18),
    ("elem", 0.0, 0.5, None, 1.0, 0.5, 0.0, 5, 8, 3, 12, 19),
    ("elem", 0.8, 0.0, (0.25, 0.75), 1.0, 0.3, 0.1, 9, 8, 2, 16, 20),
    ("elem", 1.0, 1.0, None, 0.9, 0.5, 0.1, 5, 12, 3, 8, 21),
]


def mix_cases(out):
    for i, (mode, ma, ca, mm, prob, sw, sm, K, B, C, S, seed) in enumerate(MIX_CASES):
        sm = float(np.float32(sm))
        rng = np.random.default_rng(100 + i)
        u8 = rng.integers(0, 256, (B, C, S, S)).astype(np.float32)
        x = u8 * np.float32(2.0 / 255.0) - np.float32(1.0)
        labels = rng.integers(0, K, B).astype(np.int64)
        m = tm.Mixup(mixup_alpha=ma, cutmix_alpha=ca, cutmix_minmax=mm, prob=prob, switch_prob=sw, mode=mode,
                     correct_lam=True, label_smoothing=sm, num_classes=K)
        d = Draws(seed, extremes=True)
        xt = torch.from_numpy(x.copy())
        with patched(d):
            mixed, target = m(xt, torch.from_numpy(labels))
        n = 1 if mode == "batch" else B // 2 if mode == "pair" else B
        out[f"mix{i}.draws"] = slot_draws(m, d, n, mode == "batch", S)
        lo, hi = mm if mm else (0.0, 0.0)
        out[f"mix{i}.config"] = np.array([["batch", "pair", "elem"].index(mode), ma, ca, lo, hi, prob, sw, sm, K, B,
                                          C, S], np.float64)
        out[f"mix{i}.x"] = x
        out[f"mix{i}.labels"] = labels.astype(np.int32)
        out[f"mix{i}.mixed"] = mixed.numpy().astype(np.float32)
        out[f"mix{i}.target"] = target.numpy().astype(np.float32)


def drop_path_cases(out):
    rates = []
    for R, L in [(0.1, 12), (0.1, 24), (0.2, 12), (0.05, 6), (0.3, 32), (0.5, 2), (1.0, 4), (0.1, 1), (0.4, 7),
                 (0.123, 13), (0.15, 10), (0.25, 16)]:
        dpr = td.calculate_drop_path_rates(R, L)
        rates.append([R, L] + list(dpr) + [0.0] * (32 - L))
    out["droppath.rates"] = np.array(rates, np.float64)
    cases = []
    saved = torch.Tensor.bernoulli_
    for i, (p, seed, step, site) in enumerate([(0.1, 7, 3, 0x64700000), (0.0181818176, 11, 0, 0x64700005),
                                               (0.5, 1234567, 99, 0x64700017), (0.3, 5, 12, 0x64700001),
                                               (1.0, 3, 1, 0x64700002)]):
        B = 64
        p = float(np.float32(p))  # the fp32 rate of timm's dpr list
        keep32 = np.float32(1.0) - np.float32(p)
        pattern = np.array([rng_keep(seed, step, site, b, keep32) for b in range(B)], np.float32)

        def fill(self, keep_prob, *args, **kw):
            return self.copy_(torch.from_numpy(pattern).view(self.shape))

        torch.Tensor.bernoulli_ = fill
        try:
            y = td.drop_path(torch.ones(B, 3, 5), p, training=True, scale_by_keep=True)
        finally:
            torch.Tensor.bernoulli_ = saved
        y = y.numpy()
        assert (y == y[:, :1, :1]).all(), "drop_path scales whole samples"
        out[f"droppath.keep{i}"] = pattern
        out[f"droppath.out{i}"] = y[:, 0, 0].astype(np.float32)
        cases.append([p, seed, step, site, B])
    out["droppath.case"] = np.array(cases, np.float64)


def beta_cdf(out):
    rng = np.random.default_rng(0)
    rows = []
    for a in (0.2, 0.8, 1.0, 2.0):
        v = np.sort(rng.beta(a, a, 2_000_000))
        pts = np.arange(1, 20) / 20
        rows.append([a] + list(np.searchsorted(v, pts, side="right") / len(v)))
    out["beta.cdf"] = np.array(rows, np.float64)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out = {}
    out["bbox"], out["bbox_minmax"] = bbox_cases()
    target_cases(out)
    mix_cases(out)
    drop_path_cases(out)
    beta_cdf(out)
    # One key: the writer orders several at random, and the file should repeat byte for byte.
    meta = {"generator": f"tools/make_mixup_fixtures.py (timm {timm.__version__}, torch {torch.__version__}, "
                         f"numpy {np.__version__})"}
    save_file(out, f"{outdir}/mixup_timm.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
