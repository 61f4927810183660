#include "params.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/rng.h"
#include "util/status.h"

typedef struct {
    ParamTable *t;
    int capacity;
    int failed;  // out of memory: later adds do nothing, params_build reports it
} Builder;

static size_t add(Builder *b, ParamInit init, int decay, int fan_in, int fan_out, int ndim, const int *shape,
                  const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static size_t add(Builder *b, ParamInit init, int decay, int fan_in, int fan_out, int ndim, const int *shape,
                  const char *fmt, ...) {
    ParamTable *t = b->t;
    if (b->failed) return 0;
    if (t->count == b->capacity) {
        int capacity = b->capacity ? 2 * b->capacity : 64;
        ParamEntry *grown = realloc(t->entries, (size_t)capacity * sizeof *t->entries);
        if (!grown) {
            b->failed = 1;
            return 0;
        }
        t->entries = grown;
        b->capacity = capacity;
    }
    ParamEntry *e = &t->entries[t->count++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->ndim = ndim;
    e->size = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->size *= (size_t)shape[i];
    }
    e->offset = t->total;
    e->fan_in = fan_in;
    e->fan_out = fan_out;
    e->init = init;
    e->decay = decay;
    t->total += e->size;
    return e->offset;
}

#define SHAPE(...) (sizeof((int[]){__VA_ARGS__}) / sizeof(int)), ((int[]){__VA_ARGS__})

int params_build(ParamTable *t, ParamOffsets *o, const ViTConfig *c) {
    memset(t, 0, sizeof *t);
    memset(o, 0, sizeof *o);
    Builder b = {t, 0, 0};
    int D = c->hidden, H = c->heads, hd = D / c->heads, P = c->patch, M = c->mlp, T = config_tokens(c);
    int R = c->representation, K = c->classes, pin = P * P * c->channels;

    o->embed_kernel = add(&b, INIT_LECUN_NORMAL, 1, pin, D, SHAPE(P, P, c->channels, D), "embedding/kernel");
    o->embed_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(D), "embedding/bias");
    o->cls = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(1, 1, D), "cls");
    o->pos = add(&b, INIT_NORMAL_002, 0, 0, 0, SHAPE(1, T, D), "Transformer/posembed_input/pos_embedding");
    o->blocks = calloc((size_t)c->layers, sizeof *o->blocks);
    if (!o->blocks) b.failed = 1;
    for (int l = 0; o->blocks && l < c->layers; l++) {
        BlockOffsets *bo = &o->blocks[l];
        const char *att = "MultiHeadDotProductAttention_1";
#define BLK "Transformer/encoderblock_%d/"
        bo->ln0_scale = add(&b, INIT_ONE, 0, 0, 0, SHAPE(D), BLK "LayerNorm_0/scale", l);
        bo->ln0_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(D), BLK "LayerNorm_0/bias", l);
        bo->q_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, D, D, SHAPE(D, H, hd), BLK "%s/query/kernel", l, att);
        bo->q_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(H, hd), BLK "%s/query/bias", l, att);
        bo->k_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, D, D, SHAPE(D, H, hd), BLK "%s/key/kernel", l, att);
        bo->k_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(H, hd), BLK "%s/key/bias", l, att);
        bo->v_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, D, D, SHAPE(D, H, hd), BLK "%s/value/kernel", l, att);
        bo->v_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(H, hd), BLK "%s/value/bias", l, att);
        bo->out_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, D, D, SHAPE(H, hd, D), BLK "%s/out/kernel", l, att);
        bo->out_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(D), BLK "%s/out/bias", l, att);
        bo->ln2_scale = add(&b, INIT_ONE, 0, 0, 0, SHAPE(D), BLK "LayerNorm_2/scale", l);
        bo->ln2_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(D), BLK "LayerNorm_2/bias", l);
        bo->fc1_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, D, M, SHAPE(D, M), BLK "MlpBlock_3/Dense_0/kernel", l);
        bo->fc1_bias = add(&b, INIT_NORMAL_1E6, 0, 0, 0, SHAPE(M), BLK "MlpBlock_3/Dense_0/bias", l);
        bo->fc2_kernel = add(&b, INIT_XAVIER_UNIFORM, 1, M, D, SHAPE(M, D), BLK "MlpBlock_3/Dense_1/kernel", l);
        bo->fc2_bias = add(&b, INIT_NORMAL_1E6, 0, 0, 0, SHAPE(D), BLK "MlpBlock_3/Dense_1/bias", l);
#undef BLK
    }
    o->norm_scale = add(&b, INIT_ONE, 0, 0, 0, SHAPE(D), "Transformer/encoder_norm/scale");
    o->norm_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(D), "Transformer/encoder_norm/bias");
    int head_in = D;
    if (R > 0) {
        o->pre_kernel = add(&b, INIT_LECUN_NORMAL, 1, D, R, SHAPE(D, R), "pre_logits/kernel");
        o->pre_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(R), "pre_logits/bias");
        head_in = R;
    }
    o->head_kernel = add(&b, INIT_ZERO, 1, head_in, K, SHAPE(head_in, K), "head/kernel");
    o->head_bias = add(&b, INIT_ZERO, 0, 0, 0, SHAPE(K), "head/bias");
    if (b.failed) {
        params_free(t, o);
        return vit_fail("out of memory building the parameter table");
    }
    return VIT_OK;
}

void params_free(ParamTable *t, ParamOffsets *o) {
    free(t->entries);
    free(o->blocks);
    memset(t, 0, sizeof *t);
    memset(o, 0, sizeof *o);
}

// Normal truncated at two standard deviations, rescaled so the result has std `std`
// (what the official lecun_normal initialiser draws).
static double truncated_normal(uint64_t seed, uint32_t stream, uint64_t i, double std) {
    const double correction = 0.87962566103423978;  // std of N(0,1) truncated to [-2, 2]
    for (uint64_t attempt = 0; attempt < 16; attempt++) {
        double z = rng_normal(seed, stream, i * 16 + attempt);
        if (fabs(z) <= 2.0) return z * std / correction;
    }
    return 0.0;
}

void params_init(const ParamTable *t, float *buf, unsigned long long seed) {
    for (int k = 0; k < t->count; k++) {
        const ParamEntry *e = &t->entries[k];
        float *p = buf + e->offset;
        uint32_t stream = (uint32_t)k;
        for (size_t i = 0; i < e->size; i++) {
            double v = 0;
            switch (e->init) {
            case INIT_ZERO: v = 0; break;
            case INIT_ONE: v = 1; break;
            case INIT_XAVIER_UNIFORM: {
                double limit = sqrt(6.0 / (e->fan_in + e->fan_out));
                v = (2 * rng_uniform(seed, stream, i) - 1) * limit;
                break;
            }
            case INIT_LECUN_NORMAL: v = truncated_normal(seed, stream, i, sqrt(1.0 / e->fan_in)); break;
            case INIT_NORMAL_1E6: v = 1e-6 * rng_normal(seed, stream, i); break;
            case INIT_NORMAL_002: v = 0.02 * rng_normal(seed, stream, i); break;
            }
            p[i] = (float)v;
        }
    }
}
