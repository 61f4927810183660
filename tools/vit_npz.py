"""Loads an official-format ViT .npz (Flax names, e.g. the released ViT-B_16.npz) into
vit_ref's parameter dict, and resizes the position embedding the official way.

Every npz key goes through an explicit table of the official names; an unknown key, a
key that would set a parameter twice, a missing parameter or a wrong shape is an error.
The config is read off the array shapes.

    cfg, params = load_npz("npz_pre.npz", image=48)   # float64 arrays, posemb resized
    logits = vit_ref.ViT(cfg, params)(images)
"""

import os
import re
import sys

import numpy as np

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_ref as V  # noqa: E402

POSEMB = "Transformer/posembed_input/pos_embedding"

# (pattern of an npz key, vit_ref name built from the match)
_BLOCK = r"Transformer/encoderblock_(\d+)/"
_RULES = [
    (r"embedding/(kernel|bias)", lambda m: f"embedding/{m[1]}"),
    (r"cls", lambda m: "cls"),
    (r"Transformer/posembed_input/pos_embedding", lambda m: POSEMB),
    (_BLOCK + r"(LayerNorm_0|LayerNorm_2)/(scale|bias)",
     lambda m: f"Transformer/encoderblock_{int(m[1])}/{m[2]}/{m[3]}"),
    (_BLOCK + r"MultiHeadDotProductAttention_1/(query|key|value|out)/(kernel|bias)",
     lambda m: f"Transformer/encoderblock_{int(m[1])}/MultiHeadDotProductAttention_1/{m[2]}/{m[3]}"),
    (_BLOCK + r"MlpBlock_3/(Dense_0|Dense_1)/(kernel|bias)",
     lambda m: f"Transformer/encoderblock_{int(m[1])}/MlpBlock_3/{m[2]}/{m[3]}"),
    (r"Transformer/encoder_norm/(scale|bias)", lambda m: f"Transformer/encoder_norm/{m[1]}"),
    (r"pre_logits/(kernel|bias)", lambda m: f"pre_logits/{m[1]}"),
    (r"head/(kernel|bias)", lambda m: f"head/{m[1]}"),
]
_RULES = [(re.compile(p), f) for p, f in _RULES]


def ref_name(key):
    """vit_ref parameter name for an official npz key; KeyError if it is not one."""
    for pat, make in _RULES:
        m = pat.fullmatch(key)
        if m:
            return make(m)
    raise KeyError(f"unknown npz key {key!r}")


def resize_posemb(posemb, grid_new):
    """Official resize (vision_transformer checkpoint.py): keep the class row, reshape the
    rest to (g, g, D), scipy.ndimage.zoom(order=1) to (grid_new, grid_new, D), put the
    class row back. float64 in and out."""
    import scipy.ndimage
    posemb = np.asarray(posemb, dtype=np.float64)
    assert posemb.ndim == 3 and posemb.shape[0] == 1, posemb.shape
    tok, grid = posemb[:, :1], posemb[0, 1:]
    g = int(round(np.sqrt(len(grid))))
    assert g * g == len(grid), f"position embedding has {len(grid)} grid rows, not a square"
    grid = grid.reshape(g, g, -1)
    grid = scipy.ndimage.zoom(grid, (grid_new / g, grid_new / g, 1), order=1)
    assert grid.shape[:2] == (grid_new, grid_new), grid.shape
    return np.concatenate([tok, grid.reshape(1, grid_new * grid_new, -1)], axis=1)


def config_from_shapes(arrays):
    """vit_ref config from the official arrays (dict name -> array)."""
    P, P2, C, D = arrays["embedding/kernel"].shape
    assert P == P2, f"non-square patch {P}x{P2}"
    blocks = sorted({int(m[1]) for k in arrays for m in [re.match(_BLOCK, k)] if m})
    assert blocks == list(range(len(blocks))) and blocks, f"encoder blocks {blocks}"
    b0 = "Transformer/encoderblock_0/"
    heads = arrays[b0 + "MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    mlp = arrays[b0 + "MlpBlock_3/Dense_0/kernel"].shape[1]
    classes = arrays["head/kernel"].shape[1]
    rep = arrays["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in arrays else 0
    n = arrays[POSEMB].shape[1] - 1
    g = int(round(np.sqrt(n)))
    assert g * g == n, f"position embedding has {n} grid rows, not a square"
    return dict(image=g * P, patch=P, channels=C, hidden=D, heads=heads, layers=len(blocks),
                mlp=mlp, classes=classes, representation=rep, dropout=0.0)


def load_npz(path_or_file, image=None):
    """Returns (cfg, params): params maps every vit_ref name to a float64 array. `image`
    (default: the checkpoint's own size) sets the input size; the position embedding is
    resized when the patch grid differs."""
    with np.load(path_or_file, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    arrays = {}
    for key, a in raw.items():
        name = ref_name(key)
        assert name not in arrays, f"npz keys {key!r} and another both set {name!r}"
        assert a.dtype == np.float32, f"{key}: dtype {a.dtype}, expected float32"
        arrays[name] = a
    cfg = config_from_shapes(arrays)
    if image is not None:
        assert image % cfg["patch"] == 0, f"image {image} not a multiple of patch {cfg['patch']}"
        cfg["image"] = image
    shapes = V.param_shapes(cfg)
    params, used = {}, set()
    for key, a in raw.items():
        name = ref_name(key)
        assert name in shapes, f"{key}: not a parameter of {cfg}"
        a = a.astype(np.float64)
        if name == POSEMB and a.shape != tuple(shapes[name]):
            a = resize_posemb(a, cfg["image"] // cfg["patch"])
        assert a.shape == tuple(shapes[name]), f"{key}: shape {a.shape}, expected {shapes[name]}"
        params[name] = a
        used.add(key)
    assert used == set(raw), f"unused npz keys: {sorted(set(raw) - used)}"
    missing = sorted(set(shapes) - set(params))
    assert not missing, f"parameters not set by the npz: {missing}"
    assert len(params) == len(shapes) == len(raw)
    return cfg, params
