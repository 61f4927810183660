"""PyTorch reference of the vitc Vision Transformer.

Mirrors the C model exactly: NHWC uint8 input scaled to [-1, 1], HWIO patch kernel,
class token, learned position embedding, pre-LN blocks, exact-erf GELU, LayerNorm
epsilon 1e-6, tanh pre_logits, linear head. Parameters are exchanged as a dict of
official Flax names -> numpy arrays in the official layouts, so fixtures and
checkpoints need no translation on the C side.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

LN_EPS = 1e-6

DEFAULT_CONFIG = dict(image=32, patch=8, channels=3, hidden=48, heads=3, layers=2,
                      mlp=96, classes=10, representation=48, dropout=0.0)


def param_shapes(cfg):
    """Official name -> shape, in a fixed order."""
    P, C, D, H = cfg["patch"], cfg["channels"], cfg["hidden"], cfg["heads"]
    M, K, R = cfg["mlp"], cfg["classes"], cfg.get("representation", 0)
    hd = D // H
    G = cfg["image"] // P
    s = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
         "Transformer/posembed_input/pos_embedding": (1, 1 + G * G, D)}
    for i in range(cfg["layers"]):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        s[b + "LayerNorm_0/scale"] = (D,)
        s[b + "LayerNorm_0/bias"] = (D,)
        for n in ("query", "key", "value"):
            s[a + n + "/kernel"] = (D, H, hd)
            s[a + n + "/bias"] = (H, hd)
        s[a + "out/kernel"] = (H, hd, D)
        s[a + "out/bias"] = (D,)
        s[b + "LayerNorm_2/scale"] = (D,)
        s[b + "LayerNorm_2/bias"] = (D,)
        s[b + "MlpBlock_3/Dense_0/kernel"] = (D, M)
        s[b + "MlpBlock_3/Dense_0/bias"] = (M,)
        s[b + "MlpBlock_3/Dense_1/kernel"] = (M, D)
        s[b + "MlpBlock_3/Dense_1/bias"] = (D,)
    s["Transformer/encoder_norm/scale"] = (D,)
    s["Transformer/encoder_norm/bias"] = (D,)
    head_in = D
    if R:
        s["pre_logits/kernel"] = (D, R)
        s["pre_logits/bias"] = (R,)
        head_in = R
    s["head/kernel"] = (head_in, K)
    s["head/bias"] = (K,)
    return s


def decays(name):
    """Weight decay touches kernels only."""
    return name.endswith("/kernel")


def init_params(cfg, rng):
    """Random, well-scaled float32 parameters; every gradient is non-trivial
    (the head is not zero-initialised, unlike training runs)."""
    out = {}
    for name, shape in param_shapes(cfg).items():
        z = rng.standard_normal(shape)
        if name.endswith("/kernel"):
            fan_in = int(np.prod(shape[:3])) if name == "embedding/kernel" else \
                (shape[0] * shape[1] if name.endswith("out/kernel") else shape[0])
            v = z * math.sqrt(1.0 / fan_in)
        elif name.endswith("/scale"):
            v = 1.0 + 0.1 * z
        else:  # biases, LayerNorm biases, cls, pos_embedding
            v = 0.1 * z
        out[name] = v.astype(np.float32)
    return out


def _key(name):
    # nn.ParameterDict keys may not contain '.', and '/' reads badly in state_dict.
    return name.replace("/", "__")


def attention(q, k, v):
    """softmax(q k^T / sqrt(hd)) v; PyTorch before 2.0 (Debian's 1.13) lacks the fused op."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v)
    s = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    return torch.softmax(s, dim=-1) @ v


class ViT(torch.nn.Module):
    def __init__(self, cfg, params=None, dtype=torch.float64, seed=0):
        super().__init__()
        self.cfg = dict(DEFAULT_CONFIG, **cfg)
        self.dtype = dtype
        self.names = list(param_shapes(self.cfg))
        if params is None:
            params = init_params(self.cfg, np.random.default_rng(seed))
        self.p = torch.nn.ParameterDict()
        self.load(params)

    # -- parameter exchange in official names and layouts --
    def load(self, params):
        shapes = param_shapes(self.cfg)
        for name in self.names:
            a = np.asarray(params[name])
            assert a.shape == tuple(shapes[name]), (name, a.shape, shapes[name])
            t = torch.tensor(a, dtype=self.dtype)
            if _key(name) in self.p:
                with torch.no_grad():
                    self.p[_key(name)].copy_(t)
            else:
                self.p[_key(name)] = torch.nn.Parameter(t)

    def state(self):
        return {n: self.p[_key(n)].detach().cpu().numpy().copy() for n in self.names}

    def param(self, name):
        return self.p[_key(name)]

    def official_parameters(self):
        return [(n, self.p[_key(n)]) for n in self.names]

    def grads(self):
        return {n: self.p[_key(n)].grad.detach().cpu().numpy().copy() for n in self.names}

    # -- model --
    def forward(self, images, training=False):
        cfg, g = self.cfg, self.param
        if not torch.is_tensor(images):
            images = torch.from_numpy(np.ascontiguousarray(images))
        B, S, _, C = images.shape
        P, D, H = cfg["patch"], cfg["hidden"], cfg["heads"]
        G, hd = S // P, D // H
        drop = cfg["dropout"] if training else 0.0

        x = images.to(self.dtype) * (2.0 / 255.0) - 1.0
        # Row-major patches, each flattened (py, px, c) to match the HWIO kernel.
        x = x.reshape(B, G, P, G, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B, G * G, P * P * C)
        x = x @ g("embedding/kernel").reshape(P * P * C, D) + g("embedding/bias")
        x = torch.cat([g("cls").expand(B, 1, D), x], dim=1)
        x = x + g("Transformer/posembed_input/pos_embedding")
        N = x.shape[1]

        for i in range(cfg["layers"]):
            b = f"Transformer/encoderblock_{i}/"
            a = b + "MultiHeadDotProductAttention_1/"
            y = F.layer_norm(x, (D,), g(b + "LayerNorm_0/scale"), g(b + "LayerNorm_0/bias"), LN_EPS)

            def proj(n):
                t = y @ g(a + n + "/kernel").reshape(D, D) + g(a + n + "/bias").reshape(D)
                return t.reshape(B, N, H, hd).transpose(1, 2)

            o = attention(proj("query"), proj("key"), proj("value"))
            o = o.transpose(1, 2).reshape(B, N, D)
            o = o @ g(a + "out/kernel").reshape(D, D) + g(a + "out/bias")
            x = x + F.dropout(o, drop, training and drop > 0)

            y = F.layer_norm(x, (D,), g(b + "LayerNorm_2/scale"), g(b + "LayerNorm_2/bias"), LN_EPS)
            h = F.gelu(y @ g(b + "MlpBlock_3/Dense_0/kernel") + g(b + "MlpBlock_3/Dense_0/bias"))
            h = F.dropout(h, drop, training and drop > 0)
            z = h @ g(b + "MlpBlock_3/Dense_1/kernel") + g(b + "MlpBlock_3/Dense_1/bias")
            x = x + F.dropout(z, drop, training and drop > 0)

        x = F.layer_norm(x, (D,), g("Transformer/encoder_norm/scale"),
                         g("Transformer/encoder_norm/bias"), LN_EPS)
        x = x[:, 0]
        if cfg.get("representation", 0):
            x = torch.tanh(x @ g("pre_logits/kernel") + g("pre_logits/bias"))
        return x @ g("head/kernel") + g("head/bias")


def loss_fn(logits, labels, smoothing=0.0):
    """Mean softmax cross-entropy against (1-s)*onehot + s/K."""
    if not torch.is_tensor(labels):
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    K = logits.shape[-1]
    t = F.one_hot(labels.long(), K).to(logits.dtype) * (1.0 - smoothing) + smoothing / K
    return -(t * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def grad_of(model, images, labels, smoothing=0.0):
    """Gradient (official names -> numpy) of the mean loss over one micro-batch."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels, smoothing)
    loss.backward()
    return loss.item(), model.grads()


# -- hand-written optimizers, float64 numpy, all parameters one flat set --

OPT_DEFAULTS = {
    "sgd": dict(lr=0.1, momentum=0.9, wd=0.0),
    "adam": dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-2, wd=0.0),
    "adamw": dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.05),
    "rmsprop": dict(lr=0.01, rho=0.9, eps=1e-2, wd=0.0),
}


def global_norm(grads):
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_by_global_norm(grads, clip):
    """Returns (clipped grads, norm before clipping)."""
    n = global_norm(grads)
    if clip and n > clip:
        return {k: g * (clip / n) for k, g in grads.items()}, n
    return dict(grads), n


class Optimizer:
    def __init__(self, kind, **hp):
        self.kind = kind
        self.hp = dict(OPT_DEFAULTS[kind], **hp)
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, params, grads):
        """Updates params (dict of float64 numpy arrays) in place."""
        h = self.hp
        lr, wd = h["lr"], h["wd"]
        self.t += 1
        t = self.t
        for name, p in params.items():
            g = grads[name]
            if wd and decays(name):
                p -= lr * wd * p
            m = self.m.setdefault(name, np.zeros_like(p))
            v = self.v.setdefault(name, np.zeros_like(p))
            if self.kind == "sgd":
                v[...] = h["momentum"] * v - lr * g
                p += v
            elif self.kind == "adam":
                b1, b2 = h["beta1"], h["beta2"]
                m[...] = b1 * m + (1 - b1) * g
                v[...] = b2 * v + (1 - b2) * g * g
                lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                p -= lr_t * m / (np.sqrt(v) + h["eps"])
            elif self.kind == "adamw":
                b1, b2 = h["beta1"], h["beta2"]
                m[...] = b1 * m + (1 - b1) * g
                v[...] = b2 * v + (1 - b2) * g * g
                p -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + h["eps"])
            elif self.kind == "rmsprop":
                v[...] = h["rho"] * v + (1 - h["rho"]) * g * g
                p -= lr * g / (np.sqrt(v) + h["eps"])
            else:
                raise ValueError(self.kind)
