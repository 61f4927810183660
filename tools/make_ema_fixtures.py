"""Fixtures for tests/test_ema.c, made by timm's own functions (pip install torch timm safetensors):

tests/fixtures/ema_model_ema.safetensors
    timm.utils.ModelEmaV3, as timm's train.py makes it (decay D, use_warmup on or off) and
    calls it (model_ema.update(model, step=num_updates) after each optimizer update, the
    count starting at 1), on a tiny module: two parameters and a float buffer, 17 floats
    in state_dict order. The module's values after each update are given sequences.
      "params"          (STEPS + 1, 17): row 0 the module when the EMA is made, row k after update k
      "ema/<case>"      (STEPS, 17):     the EMA's state_dict, flattened, after update k
    metadata: "cases" (comma-separated), "<case>.decay", "<case>.warmup", "steps".

tests/fixtures/ema_layer_decay.txt
    The learning-rate scale and weight decay timm gives every parameter of a small
    VisionTransformer through create_optimizer_v2(..., layer_decay=F) (param_groups_layer_decay
    with the model's group_matcher and no_weight_decay()), under vit's official names:
      model <key>=<value>...           the ViT's shape, for vit's parameter table
      layer_decay <F>                   a case, followed by its parameters:
      <official name> <lr_scale> <1 if weight decay applies, else 0>
    Scales are written with repr(), so strtod gives back the very double timm computed.

usage: python3 tools/make_ema_fixtures.py [tests/fixtures]
"""

import os
import sys

import numpy as np
import torch
import timm
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from safetensors.numpy import save_file

STEPS = 12
EMA_CASES = [("d099", 0.99, False), ("d099_warmup", 0.99, True), ("d09998_warmup", 0.9998, True)]
LAYER_DECAYS = [0.75, 0.65]
VIT = dict(layers=3, hidden=32, heads=2, mlp=64, patch=8, image=32, channels=3, classes=5)


class Tiny(torch.nn.Module):
    """Two parameters and a float buffer: ModelEmaV3 averages all three."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, 3))
        self.b = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("running", torch.zeros(2))


def flat(module):
    return np.concatenate([v.detach().reshape(-1).numpy() for v in module.state_dict().values()]).astype(np.float32)


def set_flat(module, x):
    with torch.no_grad():
        at = 0
        for v in module.state_dict().values():
            v.copy_(torch.from_numpy(x[at:at + v.numel()].reshape(v.shape)))
            at += v.numel()


def ema_fixture(out_dir):
    rng = np.random.default_rng(20240611)
    model = Tiny()
    n = flat(model).size
    # A drifting walk, so the average lags visibly behind the weights.
    params = np.cumsum(rng.normal(0, 0.3, (STEPS + 1, n)), axis=0).astype(np.float32)
    tensors = {"params": params}
    meta = {"cases": ",".join(c[0] for c in EMA_CASES), "steps": str(STEPS),
            "generator": f"tools/make_ema_fixtures.py, timm {timm.__version__}, torch {torch.__version__}"}
    for name, decay, warmup in EMA_CASES:
        set_flat(model, params[0])
        ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)  # train.py's arguments
        rows = []
        for step in range(1, STEPS + 1):
            set_flat(model, params[step])        # the optimizer update
            ema.update(model, step=step)          # train.py: step=num_updates, after num_updates += 1
            rows.append(flat(ema.module))
        tensors["ema/" + name] = np.stack(rows)
        meta[name + ".decay"] = repr(decay)
        meta[name + ".warmup"] = "1" if warmup else "0"
    path = os.path.join(out_dir, "ema_model_ema.safetensors")
    save_file(tensors, path, metadata=meta)
    os.chmod(path, 0o644)


def vit_names(timm_name):
    """vit's official names for one timm ViT parameter (qkv is three of them)."""
    blk = "Transformer/encoderblock_%s/"
    fixed = {"cls_token": ["cls"], "pos_embed": ["Transformer/posembed_input/pos_embedding"],
             "patch_embed.proj.weight": ["embedding/kernel"], "patch_embed.proj.bias": ["embedding/bias"],
             "norm.weight": ["Transformer/encoder_norm/scale"], "norm.bias": ["Transformer/encoder_norm/bias"],
             "head.weight": ["head/kernel"], "head.bias": ["head/bias"]}
    if timm_name in fixed:
        return fixed[timm_name]
    parts = timm_name.split(".")
    assert parts[0] == "blocks", timm_name
    b = blk % parts[1]
    rest = ".".join(parts[2:])
    kind = {"weight": "kernel", "bias": "bias"}
    att = b + "MultiHeadDotProductAttention_1/"
    table = {"norm1": b + "LayerNorm_0/", "norm2": b + "LayerNorm_2/", "attn.proj": att + "out/",
             "mlp.fc1": b + "MlpBlock_3/Dense_0/", "mlp.fc2": b + "MlpBlock_3/Dense_1/"}
    module, leaf = rest.rsplit(".", 1)
    if module == "attn.qkv":
        return [att + q + "/" + kind[leaf] for q in ("query", "key", "value")]
    if module in ("norm1", "norm2"):
        return [table[module] + ("scale" if leaf == "weight" else "bias")]
    return [table[module] + kind[leaf]]


def layer_decay_fixture(out_dir):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=VIT["image"], patch_size=VIT["patch"], in_chans=VIT["channels"],
                              num_classes=VIT["classes"], embed_dim=VIT["hidden"], depth=VIT["layers"],
                              num_heads=VIT["heads"], mlp_ratio=VIT["mlp"] / VIT["hidden"])
    names = {id(p): n for n, p in model.named_parameters()}
    lines = ["# timm %s: create_optimizer_v2(model, 'adamw', weight_decay=0.05, layer_decay=F) on a "
             "VisionTransformer; tools/make_ema_fixtures.py" % timm.__version__,
             "model " + " ".join("%s=%d" % kv for kv in VIT.items())]
    for decay in LAYER_DECAYS:
        opt = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=decay)
        lines.append("layer_decay %r" % decay)
        rows = []
        for group in opt.param_groups:
            for p in group["params"]:
                for vn in vit_names(names[id(p)]):
                    rows.append("%s %r %d" % (vn, group["lr_scale"], 1 if group["weight_decay"] > 0 else 0))
        lines += sorted(rows)
    with open(os.path.join(out_dir, "ema_layer_decay.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    ema_fixture(out_dir)
    layer_decay_fixture(out_dir)
    print("wrote %s/ema_model_ema.safetensors and %s/ema_layer_decay.txt" % (out_dir, out_dir))


if __name__ == "__main__":
    main()
