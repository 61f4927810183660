"""The bf16 parity fixture: the PyTorch reference model in fp32 under CPU autocast to
bfloat16 (matrix products on bf16 operands), on the parameters and first micro-batch of
tests/fixtures/parity.safetensors; logits, loss and gradients as fp32.

usage: python3 tools/make_bf16_fixture.py tests/fixtures
Writes <dir>/parity_bf16.safetensors (read by tests/test_parity.c).
"""

import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_ref as V  # noqa: E402
from make_fixtures import canonical_header  # noqa: E402


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    torch.set_num_threads(1)  # fixed reduction order, so reruns give identical bits
    src = os.path.join(outdir, "parity.safetensors")
    fx = load_file(src)
    from safetensors import safe_open
    with safe_open(src, "np") as f:
        meta = f.metadata()
    cfg = {k: int(meta[k]) for k in ("image", "patch", "channels", "hidden", "heads", "layers", "mlp",
                                      "classes", "representation")}
    cfg["dropout"] = 0.0
    params = {k[len("param/"):]: v for k, v in fx.items() if k.startswith("param/")}
    images, labels = fx["input/images"][0], fx["input/labels"][0]  # micro-batch 0

    model = V.ViT(cfg, params, dtype=torch.float32)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
        loss = V.loss_fn(logits.float(), labels)
    loss.backward()
    out = {"logits": logits.detach().float().numpy(), "loss": np.array([loss.item()], np.float32)}
    for k, g in model.grads().items():
        out["grad/" + k] = np.asarray(g, np.float32)
    path = os.path.join(outdir, "parity_bf16.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path,
              metadata={"torch": torch.__version__, "autocast": "cpu bfloat16"})
    canonical_header(path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes); loss {loss.item():.6f} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
