"""Compares two vitc checkpoints tensor by tensor, bit for bit (parameters, optimizer slots
and, from runs with --model_ema, the weights' moving average "ema/<name>"), and their
training position (and whether they hold an average). Used by tests/cli_train.sh for the exact-resume check.

usage: python3 tools/compare_checkpoints.py A.safetensors B.safetensors [--rtol R [--atol A] [--slot_rtol S]]
With --rtol, a tensor passes when ||a - b|| <= R * ||b|| (2-norms; for runs whose
summation order differs, e.g. 1 MPI rank against 2) or when max |a - b| <= A (tensors that
are zero in exact arithmetic and hold only rounding noise, like the attention key bias,
whose gradient the softmax cancels). --slot_rtol sets a separate R for the optimizer slots
(moment estimates of sums that cancel, like the class token's gradient, carry more rounding
than the parameters). Prints "compare_checkpoints: N passed,
M failed"; exit 1 on any difference.
"""

import sys

import numpy as np
from safetensors import safe_open


def main():
    a_path, b_path = sys.argv[1:3]
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    rtol = float(opts["--rtol"]) if "--rtol" in opts else None
    atol = float(opts.get("--atol", 0))
    slot_rtol = float(opts.get("--slot_rtol", rtol if rtol is not None else 0))
    passed = failed = 0
    with safe_open(a_path, "np") as a, safe_open(b_path, "np") as b:
        ka, kb = set(a.keys()), set(b.keys())
        if ka != kb:
            print(f"FAIL tensor names differ: {sorted(ka ^ kb)[:5]}")
            failed += 1
        for k in sorted(ka & kb):
            x, y = a.get_tensor(k), b.get_tensor(k)
            same_kind = x.dtype == y.dtype and x.shape == y.shape
            if rtol is not None and same_kind:
                err = np.linalg.norm(x.astype(np.float64) - y) / max(np.linalg.norm(y.astype(np.float64)), 1e-30)
                ok = err <= (slot_rtol if k.startswith("optimizer/") else rtol) or np.max(np.abs(x.astype(np.float64) - y), initial=0) <= atol
            else:
                ok = same_kind and np.array_equal(x.view(np.uint8), y.view(np.uint8))
            if ok:
                passed += 1
            else:
                failed += 1
                print(f"FAIL {k}: max |diff| {np.max(np.abs(x.astype(np.float64) - y)):.3g}")
        ma, mb = a.metadata(), b.metadata()
        for k in ("train.update", "train.epoch", "train.step_in_epoch", "train.micro", "train.seed", "train.model_ema"):
            if ma.get(k) == mb.get(k):
                passed += 1
            else:
                failed += 1
                print(f"FAIL metadata {k}: {ma.get(k)} vs {mb.get(k)}")
    print(f"compare_checkpoints: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
