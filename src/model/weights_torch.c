// PyTorch (timm, Hugging Face) <-> official ViT weights. One rule table per naming maps a
// PyTorch tensor to the official tensor(s) it holds and the layout change between them; the
// import applies the rules forwards, the export backwards, so the two cannot drift apart.
#include "weights_torch.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/json.h"
#include "util/atomic_file.h"
#include "util/status.h"

// Layout changes, official <- PyTorch (D: width, H: heads, hd = D/H).
typedef enum {
    OP_VEC_D,   // [D] unchanged (LayerNorm, biases of width D)
    OP_VEC,     // 1-D of any width unchanged (MLP, head and pre_logits biases)
    OP_CLS,     // [1,1,D] unchanged
    OP_POS,     // [1,T,D] unchanged; T must include the class row
    OP_CONV,    // Conv2d [D,C,p,p] -> [p,p,C,D]
    OP_T,       // Linear [out,in] -> Dense [in,out]
    OP_HEAD_W,  // Linear [D,D] -> [D,H,hd]
    OP_HEAD_B,  // [D] -> [H,hd]
    OP_OUT_W,   // Linear [D,D] -> [H,hd,D]
    OP_QKV_W,   // fused Linear [3D,D] -> query/key/value kernels [D,H,hd]
    OP_QKV_B,   // fused [3D] -> query/key/value biases [H,hd]
} Op;

typedef struct {
    const char *torch;     // name after the block prefix ("blocks.N.") or the "vit." prefix
    const char *official;  // after "Transformer/encoderblock_N/" for block rules; the
                           // attention prefix for OP_QKV_*
    Op op;
    int required;          // the model cannot run without it
} Rule;

#define ATT "MultiHeadDotProductAttention_1/"
#define POSEMB "Transformer/posembed_input/pos_embedding"

static const Rule TIMM_TOP[] = {
    {"cls_token", "cls", OP_CLS, 1},
    {"pos_embed", POSEMB, OP_POS, 1},
    {"patch_embed.proj.weight", "embedding/kernel", OP_CONV, 1},
    {"patch_embed.proj.bias", "embedding/bias", OP_VEC_D, 1},
    {"norm.weight", "Transformer/encoder_norm/scale", OP_VEC_D, 1},
    {"norm.bias", "Transformer/encoder_norm/bias", OP_VEC_D, 1},
    {"pre_logits.fc.weight", "pre_logits/kernel", OP_T, 0},  // timm before 0.6 (Linear + Tanh)
    {"pre_logits.fc.bias", "pre_logits/bias", OP_VEC, 0},
    {"head.weight", "head/kernel", OP_T, 0},
    {"head.bias", "head/bias", OP_VEC, 0},
    {NULL, NULL, 0, 0},
};

static const Rule TIMM_BLOCK[] = {
    {"norm1.weight", "LayerNorm_0/scale", OP_VEC_D, 1},
    {"norm1.bias", "LayerNorm_0/bias", OP_VEC_D, 1},
    {"attn.qkv.weight", ATT, OP_QKV_W, 1},
    {"attn.qkv.bias", ATT, OP_QKV_B, 1},
    {"attn.proj.weight", ATT "out/kernel", OP_OUT_W, 1},
    {"attn.proj.bias", ATT "out/bias", OP_VEC_D, 1},
    {"norm2.weight", "LayerNorm_2/scale", OP_VEC_D, 1},
    {"norm2.bias", "LayerNorm_2/bias", OP_VEC_D, 1},
    {"mlp.fc1.weight", "MlpBlock_3/Dense_0/kernel", OP_T, 1},
    {"mlp.fc1.bias", "MlpBlock_3/Dense_0/bias", OP_VEC, 1},
    {"mlp.fc2.weight", "MlpBlock_3/Dense_1/kernel", OP_T, 1},
    {"mlp.fc2.bias", "MlpBlock_3/Dense_1/bias", OP_VEC_D, 1},
    {NULL, NULL, 0, 0},
};

// Names after an optional "vit." prefix; classifier.* never has it.
static const Rule HF_TOP[] = {
    {"embeddings.cls_token", "cls", OP_CLS, 1},
    {"embeddings.position_embeddings", POSEMB, OP_POS, 1},
    {"embeddings.patch_embeddings.projection.weight", "embedding/kernel", OP_CONV, 1},
    {"embeddings.patch_embeddings.projection.bias", "embedding/bias", OP_VEC_D, 1},
    {"layernorm.weight", "Transformer/encoder_norm/scale", OP_VEC_D, 1},
    {"layernorm.bias", "Transformer/encoder_norm/bias", OP_VEC_D, 1},
    {"pooler.dense.weight", "pre_logits/kernel", OP_T, 0},
    {"pooler.dense.bias", "pre_logits/bias", OP_VEC, 0},
    {"classifier.weight", "head/kernel", OP_T, 0},
    {"classifier.bias", "head/bias", OP_VEC, 0},
    {NULL, NULL, 0, 0},
};

// The names save_pretrained writes ("encoder.layer.N."): every hub checkpoint. Export uses these.
static const Rule HF_BLOCK[] = {
    {"layernorm_before.weight", "LayerNorm_0/scale", OP_VEC_D, 1},
    {"layernorm_before.bias", "LayerNorm_0/bias", OP_VEC_D, 1},
    {"attention.attention.query.weight", ATT "query/kernel", OP_HEAD_W, 1},
    {"attention.attention.query.bias", ATT "query/bias", OP_HEAD_B, 1},
    {"attention.attention.key.weight", ATT "key/kernel", OP_HEAD_W, 1},
    {"attention.attention.key.bias", ATT "key/bias", OP_HEAD_B, 1},
    {"attention.attention.value.weight", ATT "value/kernel", OP_HEAD_W, 1},
    {"attention.attention.value.bias", ATT "value/bias", OP_HEAD_B, 1},
    {"attention.output.dense.weight", ATT "out/kernel", OP_OUT_W, 1},
    {"attention.output.dense.bias", ATT "out/bias", OP_VEC_D, 1},
    {"layernorm_after.weight", "LayerNorm_2/scale", OP_VEC_D, 1},
    {"layernorm_after.bias", "LayerNorm_2/bias", OP_VEC_D, 1},
    {"intermediate.dense.weight", "MlpBlock_3/Dense_0/kernel", OP_T, 1},
    {"intermediate.dense.bias", "MlpBlock_3/Dense_0/bias", OP_VEC, 1},
    {"output.dense.weight", "MlpBlock_3/Dense_1/kernel", OP_T, 1},
    {"output.dense.bias", "MlpBlock_3/Dense_1/bias", OP_VEC_D, 1},
    {NULL, NULL, 0, 0},
};

// transformers 5's in-memory names ("layers.N."), as a raw model.state_dict() dump has them.
static const Rule HF5_BLOCK[] = {
    {"layernorm_before.weight", "LayerNorm_0/scale", OP_VEC_D, 0},
    {"layernorm_before.bias", "LayerNorm_0/bias", OP_VEC_D, 0},
    {"attention.q_proj.weight", ATT "query/kernel", OP_HEAD_W, 0},
    {"attention.q_proj.bias", ATT "query/bias", OP_HEAD_B, 0},
    {"attention.k_proj.weight", ATT "key/kernel", OP_HEAD_W, 0},
    {"attention.k_proj.bias", ATT "key/bias", OP_HEAD_B, 0},
    {"attention.v_proj.weight", ATT "value/kernel", OP_HEAD_W, 0},
    {"attention.v_proj.bias", ATT "value/bias", OP_HEAD_B, 0},
    {"attention.o_proj.weight", ATT "out/kernel", OP_OUT_W, 0},
    {"attention.o_proj.bias", ATT "out/bias", OP_VEC_D, 0},
    {"layernorm_after.weight", "LayerNorm_2/scale", OP_VEC_D, 0},
    {"layernorm_after.bias", "LayerNorm_2/bias", OP_VEC_D, 0},
    {"mlp.fc1.weight", "MlpBlock_3/Dense_0/kernel", OP_T, 0},
    {"mlp.fc1.bias", "MlpBlock_3/Dense_0/bias", OP_VEC, 0},
    {"mlp.fc2.weight", "MlpBlock_3/Dense_1/kernel", OP_T, 0},
    {"mlp.fc2.bias", "MlpBlock_3/Dense_1/bias", OP_VEC_D, 0},
    {NULL, NULL, 0, 0},
};

// Tensors of model variants vit does not implement: a name containing `part` is refused.
typedef struct {
    const char *part, *meaning;
} Refusal;

static const Refusal TIMM_REFUSE[] = {
    {"reg_token", "register tokens (reg_tokens > 0); vit reads ViTs with one class token and no registers"},
    {"fc_norm.", "a timm model with global-average pooling; vit reads class-token ViTs only"},
    {"norm_pre.", "a LayerNorm before the blocks (pre_norm, CLIP-style); vit has none"},
    {".ls1.", "layer scale (init_values); vit's blocks have none"},
    {".ls2.", "layer scale (init_values); vit's blocks have none"},
    {".q_norm.", "query/key normalisation (qk_norm); vit has none"},
    {".k_norm.", "query/key normalisation (qk_norm); vit has none"},
    {"attn.norm.", "a LayerNorm inside attention (scale_attn_norm); vit has none"},
    {"mlp.norm.", "a LayerNorm inside the MLP (scale_mlp_norm); vit has none"},
    {"attn_pool.", "attention pooling (global_pool 'map'); vit reads class-token ViTs only"},
    {"dist_token", "a distilled DeiT (distillation token); vit reads one class token"},
    {"head_dist.", "a distilled DeiT (distillation head); vit reads one class token"},
    {"patch_embed.backbone.", "a hybrid ViT (CNN stem); vit embeds raw patches"},
    {"patch_embed.norm.", "a LayerNorm after the patch embedding; vit has none"},
    {NULL, NULL},
};

static const Refusal HF_REFUSE[] = {
    {"register_tokens", "register tokens; vit reads ViTs with one class token and no registers"},
    {"distillation_token", "a distilled DeiT (distillation token); vit reads one class token"},
    {"layer_scale", "layer scale; vit's blocks have none"},
    {"fc_norm.", "a model with global-average pooling; vit reads class-token ViTs only"},
    {".q_norm.", "query/key normalisation; vit has none"},
    {".k_norm.", "query/key normalisation; vit has none"},
    {NULL, NULL},
};

// ---------------------------------------------------------------------------------------
// Names

static const char *after(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) ? NULL : s + n;
}

// "<prefix>N.<rest>": the block index and rest, or -1.
static int block_of(const char *name, const char *prefix, const char **rest) {
    const char *p = after(name, prefix);
    if (!p || *p < '0' || *p > '9') return -1;
    char *end;
    long b = strtol(p, &end, 10);
    if (*end != '.' || b > 100000) return -1;
    *rest = end + 1;
    return (int)b;
}

static const char *hf_strip(const char *name) {
    const char *s = after(name, "vit.");
    return s ? s : name;
}

TorchNaming weights_torch_naming(const StFile *st) {
    int timm = 0, hf = 0;
    for (int i = 0; i < st->count; i++) {
        const char *n = st->tensors[i].name, *rest, *s = hf_strip(n);
        if (!strcmp(n, "patch_embed.proj.weight") || !strcmp(n, "cls_token") || !strcmp(n, "pos_embed") ||
            block_of(n, "blocks.", &rest) >= 0)
            timm = 1;
        if (after(s, "embeddings.patch_embeddings.") || !strcmp(s, "embeddings.cls_token") ||
            !strcmp(s, "embeddings.position_embeddings") ||
            (s != n && (block_of(s, "encoder.layer.", &rest) >= 0 || block_of(s, "layers.", &rest) >= 0)))
            hf = 1;
    }
    return timm == hf ? TORCH_NONE : timm ? TORCH_TIMM : TORCH_HF;
}

const char *weights_torch_naming_name(TorchNaming n) {
    return n == TORCH_TIMM ? "timm" : n == TORCH_HF ? "Hugging Face transformers" : "none";
}

// ---------------------------------------------------------------------------------------
// Import

typedef struct {
    const char *path;
    TorchNaming naming;
    int D, H, blocks, has_classifier;
    const char *prefix;  // HF: "vit." when the file uses it (for messages)
    NpzFile *out;
    int cap;
} Importer;

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 0x3ff, bits;
    if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e) {
        bits = sign | ((e + 112) << 23) | (m << 13);
    } else if (!m) {
        bits = sign;
    } else {  // subnormal: normalise the mantissa
        e = 113;
        while (!(m & 0x400)) m <<= 1, e--;
        bits = sign | (e << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static size_t elems(const StTensor *t) {
    size_t n = 1;
    for (int k = 0; k < t->ndim; k++) n *= (size_t)t->shape[k];
    return n;
}

// The tensor as fp32 (malloc'd; NULL when out of memory). Data may be unaligned in the file.
static float *widen(const StTensor *t) {
    size_t n = elems(t);
    float *w = malloc((n ? n : 1) * sizeof *w);
    const unsigned char *p = t->data;
    for (size_t i = 0; w && i < n; i++) {
        uint16_t u16;
        uint32_t u32;
        int32_t i32;
        int64_t i64;
        double f64;
        switch (t->dtype) {
        case ST_F32: memcpy(&w[i], p + 4 * i, 4); break;
        case ST_F64: memcpy(&f64, p + 8 * i, 8), w[i] = (float)f64; break;
        case ST_I32: memcpy(&i32, p + 4 * i, 4), w[i] = (float)i32; break;
        case ST_I64: memcpy(&i64, p + 8 * i, 8), w[i] = (float)i64; break;
        case ST_U8: w[i] = p[i]; break;
        case ST_F16: memcpy(&u16, p + 2 * i, 2), w[i] = half_to_float(u16); break;
        case ST_BF16: memcpy(&u16, p + 2 * i, 2), u32 = (uint32_t)u16 << 16, memcpy(&w[i], &u32, 4); break;
        }
    }
    return w;
}

static int shape_is(const StTensor *t, int ndim, const int64_t *s) {
    if (t->ndim != ndim) return 0;
    for (int k = 0; k < ndim; k++)
        if (s[k] >= 0 && t->shape[k] != s[k]) return 0;
    return 1;
}

// "(3, 48)"; a negative size (any) prints as N.
static void shape_str(char *buf, size_t n, int ndim, const int64_t *s) {
    int k = snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < (int)n; i++) {
        if (s[i] < 0) k += snprintf(buf + k, n - k, i ? ", N" : "N");
        else k += snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)s[i]);
    }
    if (k < (int)n) snprintf(buf + k, n - k, ndim == 1 ? ",)" : ")");
}

// Appends an array named `name` of `shape` to the output, its data uninitialised.
static float *emit(Importer *im, const char *torch, const char *name, int ndim, const int64_t *shape) {
    NpzFile *o = im->out;
    if (npz_find(o, name)) {
        vit_fail("%s: %s gives %s a second time (the file holds it under two names)", im->path, torch, name);
        return NULL;
    }
    if (o->count == im->cap) {
        int cap = im->cap ? 2 * im->cap : 64;
        NpzArray *grown = realloc(o->arrays, (size_t)cap * sizeof *grown);
        if (grown) o->arrays = grown, im->cap = cap;
    }
    NpzArray *a = o->count < im->cap ? &o->arrays[o->count] : NULL;
    if (a) {
        memset(a, 0, sizeof *a);
        a->ndim = ndim;
        a->count = 1;
        for (int k = 0; k < ndim; k++) a->shape[k] = shape[k], a->count *= (size_t)shape[k];
        a->name = strdup(name);
        a->data = malloc((a->count ? a->count : 1) * sizeof(float));
        if (a->name && a->data) {
            o->count++;
            return a->data;
        }
        free(a->name), free(a->data);
    }
    vit_fail("%s: out of memory converting %s", im->path, torch);
    return NULL;
}

// The shape a rule needs (-1: any), or 0 when its rank alone is checked.
static int expected(const Importer *im, Op op, int64_t *s) {
    int64_t D = im->D;
    switch (op) {
    case OP_VEC_D: s[0] = D; return 1;
    case OP_VEC: s[0] = -1; return 1;
    case OP_CLS: s[0] = 1, s[1] = 1, s[2] = D; return 3;
    case OP_POS: s[0] = 1, s[1] = -1, s[2] = D; return 3;
    case OP_CONV: s[0] = D, s[1] = -1, s[2] = -1, s[3] = -1; return 4;
    case OP_T: s[0] = -1, s[1] = -1; return 2;
    case OP_HEAD_W: case OP_OUT_W: s[0] = D, s[1] = D; return 2;
    case OP_HEAD_B: s[0] = D; return 1;
    case OP_QKV_W: s[0] = 3 * D, s[1] = D; return 2;
    case OP_QKV_B: s[0] = 3 * D; return 1;
    }
    return 0;
}

// Writes the official tensor(s) of rule r from w (the PyTorch tensor t widened).
static int convert(Importer *im, const StTensor *t, const float *w, Op op, const char *official) {
    int64_t D = im->D, H = im->H, hd = D / H, s[4];
    const int64_t *ts = t->shape;
    float *o;
    switch (op) {
    case OP_VEC_D: case OP_VEC: case OP_CLS: case OP_POS:
        if (!(o = emit(im, t->name, official, t->ndim, ts))) return VIT_ERR;
        memcpy(o, w, elems(t) * sizeof *o);
        return VIT_OK;
    case OP_CONV:
        if (ts[2] != ts[3]) return vit_fail("%s: %s: a %lldx%lld patch; vit's patches are square", im->path, t->name,
                                            (long long)ts[2], (long long)ts[3]);
        s[0] = ts[2], s[1] = ts[3], s[2] = ts[1], s[3] = D;
        if (!(o = emit(im, t->name, official, 4, s))) return VIT_ERR;
        for (int64_t d = 0; d < D; d++)
            for (int64_t c = 0; c < ts[1]; c++)
                for (int64_t y = 0; y < ts[2]; y++)
                    for (int64_t x = 0; x < ts[3]; x++)
                        o[((y * s[1] + x) * s[2] + c) * D + d] = w[((d * ts[1] + c) * ts[2] + y) * ts[3] + x];
        return VIT_OK;
    case OP_T: case OP_HEAD_W: case OP_OUT_W: {
        int64_t out = ts[0], in = ts[1];
        int nd = op == OP_T ? 2 : 3;
        if (op == OP_T) s[0] = in, s[1] = out;
        if (op == OP_HEAD_W) s[0] = D, s[1] = H, s[2] = hd;
        if (op == OP_OUT_W) s[0] = H, s[1] = hd, s[2] = D;
        if (!(o = emit(im, t->name, official, nd, s))) return VIT_ERR;
        for (int64_t i = 0; i < in; i++)
            for (int64_t j = 0; j < out; j++) o[i * out + j] = w[j * in + i];
        return VIT_OK;
    }
    case OP_HEAD_B:
        s[0] = H, s[1] = hd;
        if (!(o = emit(im, t->name, official, 2, s))) return VIT_ERR;
        memcpy(o, w, (size_t)D * sizeof *o);
        return VIT_OK;
    case OP_QKV_W: case OP_QKV_B: {
        static const char *part[3] = {"query", "key", "value"};
        for (int q = 0; q < 3; q++) {
            char name[192];
            snprintf(name, sizeof name, "%s%s/%s", official, part[q], op == OP_QKV_W ? "kernel" : "bias");
            int nd = op == OP_QKV_W ? 3 : 2;
            if (op == OP_QKV_W) s[0] = D, s[1] = H, s[2] = hd;
            else s[0] = H, s[1] = hd;
            if (!(o = emit(im, t->name, name, nd, s))) return VIT_ERR;
            const float *src = w + (size_t)q * D * (op == OP_QKV_W ? D : 1);
            if (op == OP_QKV_B) memcpy(o, src, (size_t)D * sizeof *o);
            for (int64_t i = 0; op == OP_QKV_W && i < D; i++)
                for (int64_t j = 0; j < D; j++) o[i * D + j] = src[j * D + i];
        }
        return VIT_OK;
    }
    }
    return vit_fail("%s: %s: unknown conversion", im->path, t->name);
}

// Checks t against rule r (dtype, shape) and converts it.
static int apply(Importer *im, const StTensor *t, const Rule *r, int block) {
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return vit_fail("%s: %s has dtype %s; vit reads F32, F16 and BF16", im->path, t->name, st_dtype_name(t->dtype));
    int64_t s[4];
    int nd = expected(im, r->op, s);
    if (!shape_is(t, nd, s)) {
        char have[96], want[96];
        shape_str(have, sizeof have, t->ndim, t->shape);
        shape_str(want, sizeof want, nd, s);
        return vit_fail("%s: %s has shape %s, expected %s (width %d, %d heads)", im->path, t->name, have, want, im->D,
                        im->H);
    }
    if (r->op == OP_POS) {
        // T a square: no class-token row (timm's no_embed_class); T-1 and T cannot both be.
        int64_t T = t->shape[1], g = (int64_t)llround(sqrt((double)T));
        if (g * g == T)
            return vit_fail("%s: %s has %lld tokens, a %lldx%lld grid with no class-token row (timm's "
                            "no_embed_class); vit reads class-token ViTs only",
                            im->path, t->name, (long long)T, (long long)g, (long long)g);
    }
    char official[160];
    if (block >= 0) snprintf(official, sizeof official, "Transformer/encoderblock_%d/%s", block, r->official);
    else snprintf(official, sizeof official, "%s", r->official);
    float *w = widen(t);
    if (!w) return vit_fail("%s: out of memory converting %s", im->path, t->name);
    int rc = convert(im, t, w, r->op, official);
    free(w);
    return rc;
}

static const Rule *rule_for(const Rule *rules, const char *name) {
    for (const Rule *r = rules; r->torch; r++)
        if (!strcmp(r->torch, name)) return r;
    return NULL;
}

// The rule for a tensor name (NULL: unknown) and its block (-1: not in a block).
static const Rule *match(const Importer *im, const char *name, int *block) {
    const char *rest;
    *block = -1;
    if (im->naming == TORCH_TIMM) {
        if ((*block = block_of(name, "blocks.", &rest)) >= 0) return rule_for(TIMM_BLOCK, rest);
        return rule_for(TIMM_TOP, name);
    }
    const char *s = hf_strip(name);
    if ((*block = block_of(s, "encoder.layer.", &rest)) >= 0) return rule_for(HF_BLOCK, rest);
    if ((*block = block_of(s, "layers.", &rest)) >= 0) return rule_for(HF5_BLOCK, rest);
    const Rule *r = rule_for(HF_TOP, s);
    // ViTForImageClassification's classifier reads the class token, not the pooler.
    if (r && im->has_classifier && !strncmp(r->official, "pre_logits/", 11)) return NULL;
    return r;
}

static int carry(Importer *im, const StTensor *t) {
    float *w = widen(t), *o = w ? emit(im, t->name, t->name, t->ndim, t->shape) : NULL;
    if (o) memcpy(o, w, elems(t) * sizeof *o);
    if (!w) vit_fail("%s: out of memory reading %s", im->path, t->name);
    free(w);
    return o ? VIT_OK : VIT_ERR;
}

// The width (from the patch embedding, else the class token) and the layout facts the rules need.
static int survey(Importer *im, const StFile *st) {
    const Refusal *refuse = im->naming == TORCH_TIMM ? TIMM_REFUSE : HF_REFUSE;
    const char *conv =
        im->naming == TORCH_TIMM ? "patch_embed.proj.weight" : "embeddings.patch_embeddings.projection.weight";
    const char *cls = im->naming == TORCH_TIMM ? "cls_token" : "embeddings.cls_token";
    int64_t D = 0;
    for (int i = 0; i < st->count; i++) {
        const StTensor *t = &st->tensors[i];
        const char *s = im->naming == TORCH_HF ? hf_strip(t->name) : t->name;
        for (const Refusal *r = refuse; r->part; r++)
            if (strstr(t->name, r->part)) return vit_fail("%s: %s: %s", im->path, t->name, r->meaning);
        if (s != t->name) im->prefix = "vit.";
        if (!strcmp(s, "classifier.weight")) im->has_classifier = 1;
        if (!strcmp(s, conv) && t->ndim == 4) D = t->shape[0];
        if (!strcmp(s, cls) && t->ndim == 3 && !D) D = t->shape[2];
    }
    if (!D) {
        if (im->naming == TORCH_TIMM && !st_find(st, cls))
            return vit_fail("%s: no cls_token: a timm model without a class token; vit reads class-token ViTs only",
                            im->path);
        return vit_fail("%s: no tensor %s%s (the patch embedding)", im->path, im->prefix, conv);
    }
    if (im->H < 1 || D % im->H || D > (1 << 30))
        return vit_fail("%s: width %lld (from %s%s) is not divisible by %d heads", im->path, (long long)D, im->prefix,
                        conv, im->H);
    im->D = (int)D;
    return VIT_OK;
}

// Every tensor the model needs is there: named in the file's own spelling when not.
static int check_complete(const Importer *im) {
    const Rule *top = im->naming == TORCH_TIMM ? TIMM_TOP : HF_TOP;
    const Rule *blk = im->naming == TORCH_TIMM ? TIMM_BLOCK : HF_BLOCK;
    for (int b = -1; b < im->blocks; b++)
        for (const Rule *r = b < 0 ? top : blk; r->torch; r++) {
            char official[160], torch[160];
            const char *qkv = r->op == OP_QKV_W ? "query/kernel" : r->op == OP_QKV_B ? "query/bias" : "";
            if (!r->required) continue;
            if (b < 0) snprintf(official, sizeof official, "%s%s", r->official, qkv);
            else snprintf(official, sizeof official, "Transformer/encoderblock_%d/%s%s", b, r->official, qkv);
            if (npz_find(im->out, official)) continue;
            if (im->naming == TORCH_TIMM && !strcmp(r->torch, "cls_token"))
                return vit_fail("%s: no cls_token: a timm model without a class token; vit reads class-token ViTs "
                                "only", im->path);
            if (b < 0) snprintf(torch, sizeof torch, "%s%s", im->prefix, r->torch);
            else snprintf(torch, sizeof torch, "%s%s%d.%s", im->naming == TORCH_TIMM ? "" : im->prefix,
                          im->naming == TORCH_TIMM ? "blocks." : "encoder.layer.", b, r->torch);
            return vit_fail("%s: no tensor %s (vit's %s), which the model needs", im->path, torch, official);
        }
    return VIT_OK;
}

int weights_from_torch(const StFile *st, const char *path, int heads, NpzFile *out) {
    memset(out, 0, sizeof *out);
    Importer im = {.path = path, .naming = weights_torch_naming(st), .H = heads, .prefix = "", .out = out};
    if (im.naming == TORCH_NONE) return vit_fail("%s: not a timm or Hugging Face ViT state dict", path);
    int rc = survey(&im, st);
    for (int i = 0; i < st->count && rc == VIT_OK; i++) {
        const StTensor *t = &st->tensors[i];
        int block;
        const Rule *r = match(&im, t->name, &block);
        if (block + 1 > im.blocks && r) im.blocks = block + 1;
        rc = r ? apply(&im, t, r, block) : carry(&im, t);
    }
    if (rc == VIT_OK) rc = check_complete(&im);
    if (rc != VIT_OK) npz_free(out);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Export

typedef struct {
    const char *path;
    const ParamTable *t;
    const float *params;
    int D, H;
    StWriter *w;
    float *buf;     // t->total floats: every exported tensor, back to back
    size_t used;
} Exporter;

// The last message with `path` in front (copied first: vit_fail writes over it).
static int rethrow(const char *path) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", vit_error());
    return vit_fail("%s: %s", path, msg);
}

static const float *param(const Exporter *ex, const char *name, const ParamEntry **e) {
    for (int i = 0; i < ex->t->count; i++)
        if (!strcmp(ex->t->entries[i].name, name)) {
            *e = &ex->t->entries[i];
            return ex->params + ex->t->entries[i].offset;
        }
    return NULL;
}

// Undoes `op` for the parameter(s) named `official`; writes the torch tensor `torch`.
static int unconvert(Exporter *ex, const char *torch, const char *official, Op op) {
    const ParamEntry *e;
    char name[224];
    int qkv = op == OP_QKV_W || op == OP_QKV_B;
    snprintf(name, sizeof name, "%s%s", official, qkv ? (op == OP_QKV_W ? "query/kernel" : "query/bias") : "");
    const float *p = param(ex, name, &e);
    if (!p) return vit_fail("%s: the model has no %s to export as %s", ex->path, name, torch);
    int64_t D = ex->D, s[4];
    int nd = e->ndim;
    for (int k = 0; k < nd; k++) s[k] = e->shape[k];
    size_t n = e->size * (qkv ? 3 : 1);
    float *o = ex->buf + ex->used;
    if (ex->used + n > ex->t->total) return vit_fail("%s: %s: export buffer overrun", ex->path, torch);
    ex->used += n;
    if (op == OP_CONV) {  // [p,p,C,D] -> [D,C,p,p]
        int64_t P = s[0], C = s[2];
        for (int64_t y = 0; y < P; y++)
            for (int64_t x = 0; x < P; x++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t d = 0; d < D; d++) o[((d * C + c) * P + y) * P + x] = p[((y * P + x) * C + c) * D + d];
        s[0] = D, s[1] = C, s[2] = P, s[3] = P;
    } else if (op == OP_T || op == OP_HEAD_W || op == OP_OUT_W) {  // [in,out] -> [out,in]
        int64_t in = op == OP_OUT_W ? D : s[0], out = (int64_t)e->size / in;
        for (int64_t i = 0; i < in; i++)
            for (int64_t j = 0; j < out; j++) o[j * in + i] = p[i * out + j];
        nd = 2, s[0] = out, s[1] = in;
    } else if (qkv) {  // query, key, value stacked along the output rows
        static const char *part[3] = {"query", "key", "value"};
        for (int q = 0; q < 3; q++) {
            snprintf(name, sizeof name, "%s%s/%s", official, part[q], op == OP_QKV_W ? "kernel" : "bias");
            if (!(p = param(ex, name, &e)))
                return vit_fail("%s: the model has no %s to export as %s", ex->path, name, torch);
            float *dst = o + (size_t)q * e->size;
            if (op == OP_QKV_B) memcpy(dst, p, e->size * sizeof *dst);
            for (int64_t i = 0; op == OP_QKV_W && i < D; i++)
                for (int64_t j = 0; j < D; j++) dst[j * D + i] = p[i * D + j];
        }
        nd = op == OP_QKV_W ? 2 : 1, s[0] = 3 * D, s[1] = D;
    } else {  // unchanged, or [H,hd] -> [D]
        memcpy(o, p, n * sizeof *o);
        if (op == OP_HEAD_B) nd = 1, s[0] = D;
    }
    return st_writer_add(ex->w, torch, ST_F32, nd, s, o) ? rethrow(ex->path) : VIT_OK;
}

// Writes every tensor the rules name: top-level ones under `prefix` (classifier.* bare).
static int export_rules(Exporter *ex, const ViTConfig *c, const Rule *top, const char *prefix, const Rule *blk,
                        const char *block_prefix) {
    char torch[192], official[192];
    for (const Rule *r = top; r->torch; r++) {
        const ParamEntry *e;
        if (!r->required && !param(ex, r->official, &e)) continue;  // pre_logits, refused earlier
        snprintf(torch, sizeof torch, "%s%s", strncmp(r->torch, "classifier.", 11) ? prefix : "", r->torch);
        if (unconvert(ex, torch, r->official, r->op)) return VIT_ERR;
    }
    for (int b = 0; b < c->layers; b++)
        for (const Rule *r = blk; r->torch; r++) {
            snprintf(torch, sizeof torch, "%s%s%d.%s", prefix, block_prefix, b, r->torch);
            snprintf(official, sizeof official, "Transformer/encoderblock_%d/%s", b, r->official);
            if (unconvert(ex, torch, official, r->op)) return VIT_ERR;
        }
    return VIT_OK;
}

static int export_file(const char *path, const char *what, const ViTConfig *c, const ParamTable *t,
                       const float *params, int hf) {
    if (c->representation > 0)
        return vit_fail("%s: the model has a %d-wide pre_logits layer, which %s cannot hold", path, c->representation,
                        what);
    if (c->heads < 1 || c->hidden % c->heads)
        return vit_fail("%s: width %d is not divisible by %d heads", path, c->hidden, c->heads);
    Exporter ex = {.path = path, .t = t, .params = params, .D = c->hidden, .H = c->heads};
    ex.w = st_writer_new();
    ex.buf = malloc((t->total ? t->total : 1) * sizeof(float));
    int rc = !ex.w || !ex.buf ? vit_fail("%s: out of memory exporting", path) : VIT_OK;
    if (rc == VIT_OK)
        rc = hf ? export_rules(&ex, c, HF_TOP, "vit.", HF_BLOCK, "encoder.layer.")
                : export_rules(&ex, c, TIMM_TOP, "", TIMM_BLOCK, "blocks.");
    // PyTorch loaders (transformers' from_pretrained) look for this.
    if (rc == VIT_OK && st_writer_meta(ex.w, "format", "pt")) rc = rethrow(path);
    if (rc == VIT_OK) rc = st_writer_save(ex.w, path);
    st_writer_free(ex.w);
    free(ex.buf);
    return rc;
}

int weights_save_timm(const char *path, const ViTConfig *c, const ParamTable *t, const float *params) {
    // timm builds the MLP with int(D * mlp_ratio) features.
    if ((int)(c->hidden * ((double)c->mlp / c->hidden)) != c->mlp)
        return vit_fail("%s: MLP width %d is not int(%d * mlp_ratio) for mlp_ratio = %d/%d in floating point", path,
                        c->mlp, c->hidden, c->mlp, c->hidden);
    return export_file(path, "timm 1.0's VisionTransformer (no representation layer)", c, t, params, 0);
}

// ---------------------------------------------------------------------------------------
// Hugging Face folder: model.safetensors and config.json

// mkdir -p.
static int make_dirs(const char *dir) {
    char *p = strdup(dir);
    if (!p) return vit_fail("%s: out of memory", dir);
    int rc = VIT_OK;
    for (char *s = p + 1; rc == VIT_OK; s++) {
        if (*s != '/' && *s) continue;
        char keep = *s;
        *s = '\0';
        struct stat sb;
        if (mkdir(p, 0777) != 0 && !(errno == EEXIST && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)))
            rc = vit_fail("%s: cannot create folder %s: %s", dir, p,
                          errno == EEXIST ? "not a folder" : strerror(errno));
        *s = keep;
        if (!keep) break;
    }
    free(p);
    return rc;
}

// Shortest decimal that reads back as the same float ("1e-06", not "9.99999997e-07").
static void put_float(JsonBuf *b, float v) {
    char s[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(s, sizeof s, "%.*g", digits, (double)v);
        if (strtof(s, NULL) == v) break;
    }
    json_puts(b, s);
}

static void hf_config(JsonBuf *b, const ViTConfig *c) {
    json_puts(b, "{\n  \"architectures\": [\"ViTForImageClassification\"],\n  \"model_type\": \"vit\",\n");
    json_printf(b, "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n",
                c->hidden, c->layers, c->heads);
    json_printf(b, "  \"intermediate_size\": %d,\n  \"hidden_act\": \"%s\",\n", c->mlp,
                c->gelu_tanh ? "gelu_pytorch_tanh" : "gelu");
    json_puts(b, "  \"hidden_dropout_prob\": 0.0,\n  \"attention_probs_dropout_prob\": 0.0,\n"
                 "  \"initializer_range\": 0.02,\n  \"layer_norm_eps\": ");
    put_float(b, config_layernorm_eps(c));
    json_printf(b, ",\n  \"image_size\": %d,\n  \"patch_size\": %d,\n  \"num_channels\": %d,\n", c->image, c->patch,
                c->channels);
    json_printf(b, "  \"qkv_bias\": true,\n  \"encoder_stride\": %d,\n  \"id2label\": {", c->patch);
    for (int k = 0; k < c->classes; k++) json_printf(b, "%s\"%d\": \"LABEL_%d\"", k ? ", " : "", k, k);
    json_puts(b, "},\n  \"label2id\": {");
    for (int k = 0; k < c->classes; k++) json_printf(b, "%s\"LABEL_%d\": %d", k ? ", " : "", k, k);
    json_puts(b, "}\n}\n");
}

static int write_atomic(const char *path, const char *data, size_t n) {
    char *tmp = atomic_temp_path(path);
    if (!tmp) return vit_fail("%s: cannot save: out of memory", path);
    FILE *f = fopen(tmp, "wb");
    int rc = VIT_OK, renamed = 0;
    if (!f) {
        rc = vit_fail("%s: cannot create %s: %s", path, tmp, strerror(errno));
    } else {
        int ok = fwrite(data, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
        int err = errno;
        if (fclose(f) != 0 && ok) ok = 0, err = errno;
        rc = ok ? atomic_commit(tmp, path, &renamed) : vit_fail("%s: cannot save: writing %s failed: %s", path, tmp,
                                                              strerror(err));
        if (!renamed) unlink(tmp);
    }
    free(tmp);
    return rc;
}

int weights_save_hf(const char *dir, const ViTConfig *c, const ParamTable *t, const float *params) {
    if (c->representation > 0)
        return vit_fail("%s: the model has a %d-wide pre_logits layer, which ViTForImageClassification cannot hold "
                        "(its classifier reads the class token)", dir, c->representation);
    if (make_dirs(dir)) return VIT_ERR;
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    if (!path) return vit_fail("%s: out of memory", dir);
    snprintf(path, n, "%s/model.safetensors", dir);
    int rc = export_file(path, "ViTForImageClassification", c, t, params, 1);
    if (rc == VIT_OK) {
        JsonBuf b = {0};
        hf_config(&b, c);
        snprintf(path, n, "%s/config.json", dir);
        rc = b.oom ? vit_fail("%s: out of memory", path) : write_atomic(path, b.p, b.n);
        free(b.p);
    }
    free(path);
    return rc;
}
