#!/usr/bin/env python3
"""Writes the fixtures for reading PyTorch ViT weights (src/model/weights_torch.c):

  OUTDIR/torch_timm.safetensors      timm 1.0 VisionTransformer state dict, float32, as
                                     safetensors.torch.save_file writes it ({"format": "pt"})
  OUTDIR/torch_hf_cls.safetensors    transformers ViTForImageClassification in bfloat16, the
                                     model.safetensors that save_pretrained writes ("vit."
                                     prefix, encoder.layer.N names, classifier.*)
  OUTDIR/torch_hf_model.safetensors  transformers ViTModel with its pooler, float16, no prefix
                                     and no classifier (save_pretrained's file)
  OUTDIR/torch_logits.safetensors    images_u8 (2,32,32,3) uint8 HWC; logits/timm (2,10),
                                     logits/hf_cls (2,10) and pooled/hf_model (2,48) float32:
                                     each model run in float64 on the stored (widened) weights,
                                     pixels normalised as vit does: x = u8 * (2/255) - 1

Config (tests/test_weights.c's small_config): image 32, patch 8, channels 3, hidden 48,
heads 3, layers 2, mlp 96, classes 10, exact erf GELU; LayerNorm epsilon 1e-6 for timm,
1e-12 (transformers' default) for the Hugging Face models. Weights are random with
non-trivial values everywhere (kernels normal*sqrt(1/fan_in), biases 0.1*normal, LayerNorm
scales 1+0.1*normal, cls/position embeddings 0.1*normal). Deterministic: reruns give the
same bytes.

usage: python3 tools/make_torch_fixtures.py OUTDIR      (torch, timm, transformers, safetensors)
"""

import json
import os
import shutil
import struct
import sys
import tempfile

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.dont_write_bytecode = True  # keep tools/ free of __pycache__

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

CFG = dict(image=32, patch=8, channels=3, hidden=48, heads=3, layers=2, mlp=96, classes=10)
SEED = 20250105
BATCH = 2


def timm_model():
    from timm.models.vision_transformer import VisionTransformer
    c = CFG
    return VisionTransformer(img_size=c["image"], patch_size=c["patch"], in_chans=c["channels"],
                             num_classes=c["classes"], embed_dim=c["hidden"], depth=c["layers"],
                             num_heads=c["heads"], mlp_ratio=c["mlp"] / c["hidden"])


def hf_config(**extra):
    from transformers import ViTConfig
    c = CFG
    return ViTConfig(hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                     num_attention_heads=c["heads"], intermediate_size=c["mlp"],
                     image_size=c["image"], patch_size=c["patch"], num_channels=c["channels"],
                     hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, qkv_bias=True, **extra)


def randomise(model, rng):
    """Every parameter drawn again, in state-dict order, as the docstring says."""
    with torch.no_grad():
        for name, p in model.state_dict().items():
            z = rng.standard_normal(tuple(p.shape))
            if p.ndim >= 2 and name.endswith(".weight"):
                v = z * np.sqrt(1.0 / np.prod(p.shape[1:]))
            elif p.ndim == 1 and name.endswith(".weight") and "norm" in name:
                v = 1.0 + 0.1 * z
            else:
                v = 0.1 * z
            p.copy_(torch.from_numpy(v))
    return model.eval()


def normalised(images):
    x = torch.from_numpy(images).to(torch.float64) * (2.0 / 255.0) - 1.0
    return x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW


def saved_pretrained(model, dtype, dest, x, fn):
    """Copies the model.safetensors that save_pretrained writes for the model cast to dtype,
    and runs the model that from_pretrained makes of that folder in float64."""
    with tempfile.TemporaryDirectory() as tmp:
        model.to(dtype).save_pretrained(tmp)
        shutil.copyfile(os.path.join(tmp, "model.safetensors"), dest)
        back = type(model).from_pretrained(tmp).to(torch.float64).eval()
    state = load_file(dest)
    mine = back.state_dict()
    for k, v in state.items():  # the loader's own renaming aside, the same numbers
        assert any(torch.equal(v.to(torch.float64), w) for w in mine.values() if w.shape == v.shape), k
    with torch.no_grad():
        return state, fn(back, x).numpy().astype(np.float32)


def run_f64(model, state, x, fn):
    """Runs model in float64 on the stored weights (widened exactly)."""
    model = model.to(torch.float64)
    model.load_state_dict({k: v.to(torch.float64) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return fn(model, x).numpy().astype(np.float32)


def sort_metadata(path):
    """Rewrites the header with the metadata keys sorted (the writer emits them in hash order),
    so reruns give the same bytes; the header stays padded to a multiple of 8."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    head = json.loads(blob[8:8 + n])
    head["__metadata__"] = dict(sorted(head["__metadata__"].items()))
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from transformers import ViTForImageClassification, ViTModel
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fixed reduction order
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(BATCH, CFG["image"], CFG["image"], CFG["channels"]), dtype=np.uint8)
    x = normalised(images)

    timm = randomise(timm_model(), rng)
    assert timm.norm.eps == 1e-6 and timm.global_pool == "token"
    p_timm = os.path.join(outdir, "torch_timm.safetensors")
    save_file({k: v.contiguous() for k, v in timm.state_dict().items()}, p_timm, metadata={"format": "pt"})
    logits_timm = run_f64(timm, load_file(p_timm), x, lambda m, x: m(x))

    cls = randomise(ViTForImageClassification(hf_config(num_labels=CFG["classes"])), rng)
    p_cls = os.path.join(outdir, "torch_hf_cls.safetensors")
    state, logits_cls = saved_pretrained(cls, torch.bfloat16, p_cls, x, lambda m, x: m(pixel_values=x).logits)
    assert all(k.startswith(("vit.", "classifier.")) and v.dtype == torch.bfloat16 for k, v in state.items())
    assert "vit.encoder.layer.0.attention.attention.query.weight" in state

    base = randomise(ViTModel(hf_config(), add_pooling_layer=True), rng)
    p_base = os.path.join(outdir, "torch_hf_model.safetensors")
    state, pooled = saved_pretrained(base, torch.float16, p_base, x, lambda m, x: m(pixel_values=x).pooler_output)
    assert "pooler.dense.weight" in state and not any(k.startswith("vit.") for k in state)

    out = {"images_u8": images, "logits/timm": logits_timm, "logits/hf_cls": logits_cls,
           "pooled/hf_model": pooled}
    assert logits_timm.shape == logits_cls.shape == (BATCH, CFG["classes"])
    assert pooled.shape == (BATCH, CFG["hidden"])
    for k, v in out.items():
        assert np.isfinite(v.astype(np.float64)).all(), k
    assert np.abs(logits_timm - logits_cls).max() > 1e-2
    meta = {k: str(v) for k, v in CFG.items()}
    meta.update(batch=str(BATCH), gelu="erf", layernorm_eps_timm="1e-6", layernorm_eps_hf="1e-12",
                pixels="x = u8 * (2/255) - 1, NHWC; the models saw NCHW",
                note="logits/timm: torch_timm, logits/hf_cls: torch_hf_cls, pooled/hf_model: "
                     "torch_hf_model's pooler_output; float64 runs of the stored weights")
    p_logits = os.path.join(outdir, "torch_logits.safetensors")
    save_numpy(out, p_logits, metadata=meta)
    sort_metadata(p_logits)
    back = load_file(p_logits)
    assert all(np.array_equal(back[k].numpy(), v) for k, v in out.items())

    total = 0
    for p in (p_timm, p_cls, p_base, p_logits):
        total += os.path.getsize(p)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    assert total < 600 << 10, total
    print("  logits/timm row 0:   " + " ".join(f"{v:.4f}" for v in logits_timm[0]))
    print("  logits/hf_cls row 0: " + " ".join(f"{v:.4f}" for v in logits_cls[0]))


if __name__ == "__main__":
    main()
