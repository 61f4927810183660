// The CPU backend's bf16-activation ops (backend.h; issue 15 item 3). The CPU gains no speed
// from them: they exist so that the op contract and the model's bf16-activation path are
// tested without a GPU. Each runs the fp32 op into a scratch buffer and rounds it with
// to_bf16, which makes it the fp32 op's result rounded, bit for bit, by construction.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu.h"
#include "util/status.h"

// n floats of scratch, freed by the caller; NULL (latched as the backend's failure, as the
// reduction scratch is) when out of memory.
static float *scratch(Backend *be, size_t n, const char *op) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    CpuState *s = be->impl;
    if (!p && !*s->failure)
        snprintf(s->failure, sizeof s->failure, "CPU backend: %s: out of memory for %.1f MiB of scratch", op,
                 n * sizeof(float) / 1048576.0);
    return p;
}

// A bf16 NaN in every element: what an op that could not run leaves.
static void fill_nan_bf16(uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0x7fc0;
}

static void layernorm_forward_bf16(Backend *be, uint16_t *out, float *mean, float *rstd, const float *inp,
                                   const float *scale, const float *bias, int rows, int C, float eps) {
    size_t n = (size_t)(rows > 0 ? rows : 0) * (C > 0 ? C : 0);
    float *y = scratch(be, n, "layernorm_forward_bf16");
    if (!y) {
        fill_nan_bf16(out, n);
        return;
    }
    be->layernorm_forward(be, y, mean, rstd, inp, scale, bias, rows, C, eps);
    be->to_bf16(be, out, y, n);
    free(y);
}

static void residual_layernorm_forward_bf16(Backend *be, float *sum, uint16_t *out, float *mean, float *rstd,
                                            const float *x, const float *y, const float *scale, const float *bias,
                                            int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                            uint32_t site) {
    size_t n = (size_t)(rows > 0 ? rows : 0) * (C > 0 ? C : 0);
    float *o = scratch(be, n, "residual_layernorm_forward_bf16");
    if (!o) {
        fill_nan_bf16(out, n);
        return;
    }
    be->residual_layernorm_forward(be, sum, o, mean, rstd, x, y, scale, bias, rows, C, eps, rate, seed, step, site);
    be->to_bf16(be, out, o, n);
    free(o);
}

static void gelu_dropout_forward_bf16(Backend *be, uint16_t *out, const float *inp, size_t n, int tanh_approx,
                                      float rate, uint64_t seed, uint32_t step, uint32_t site) {
    float *o = scratch(be, n, "gelu_dropout_forward_bf16");
    if (!o) {
        fill_nan_bf16(out, n);
        return;
    }
    be->gelu_dropout_forward(be, o, inp, n, tanh_approx, rate, seed, step, site);
    be->to_bf16(be, out, o, n);
    free(o);
}

static int attention_forward_bf16(Backend *be, float *out, uint16_t *out_bf16, float *state, float *scratch_,
                                  const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    if (be->attention_forward(be, out, state, scratch_, q, k, v, B, T, H, hd)) return VIT_ERR;
    be->to_bf16(be, out_bf16, out, (size_t)B * T * H * hd);
    return cpu_failed(be);
}

// Operand X[b] (rows x cols as stored) as fp32 values that bf16 represents: widened from bf16
// bits, or rounded to bf16 and back.
static void operand(Backend *be, float *dst, uint16_t *tmp, const void *X, int is_bf16, size_t n) {
    if (is_bf16) {
        be->from_bf16(be, dst, (const uint16_t *)X, n);
        return;
    }
    be->to_bf16(be, tmp, (const float *)X, n);
    be->from_bf16(be, dst, tmp, n);
}

// One fp32 product per batch over the rounded operands: the products of bf16 values are exact
// in fp32, so only the sums round, as on a bf16 tensor core.
static int gemm_bf16(Backend *be, const GemmBf16 *g) {
    if (g->batch < 1 || g->M < 0 || g->N < 0 || g->K < 0)
        return vit_fail("cpu gemm_bf16: bad shape %dx%dx%d (batch %d)", g->M, g->N, g->K, g->batch);
    size_t nA = (size_t)g->M * g->K, nB = (size_t)g->K * g->N, big = nA > nB ? nA : nB;
    float *a = scratch(be, nA, "gemm_bf16"), *b = scratch(be, nB, "gemm_bf16");
    uint16_t *t = malloc((big ? big : 1) * sizeof(uint16_t));
    int rc = a && b && t ? VIT_OK : vit_fail("cpu gemm_bf16: out of memory for its operands");
    size_t ea = g->a_bf16 ? 2 : 4, eb = g->b_bf16 ? 2 : 4;
    for (int i = 0; i < g->batch && rc == VIT_OK; i++) {
        operand(be, a, t, (const char *)g->A + (size_t)(i * g->stride_a) * ea, g->a_bf16, nA);
        operand(be, b, t, (const char *)g->B + (size_t)(i * g->stride_b) * eb, g->b_bf16, nB);
        rc = be->gemm(be, 1, g->M, g->N, g->K, a, g->transA, b, g->transB, g->C + i * g->stride_c,
                      g->bias ? g->bias + i * g->stride_bias : NULL, g->alpha, g->accumulate);
    }
    free(a), free(b), free(t);
    return rc;
}

void backend_cpu_set_bf16_acts(Backend *be, int on) {
    be->gemm_bf16 = on ? gemm_bf16 : NULL;
    be->layernorm_forward_bf16 = on ? layernorm_forward_bf16 : NULL;
    be->residual_layernorm_forward_bf16 = on ? residual_layernorm_forward_bf16 : NULL;
    be->gelu_dropout_forward_bf16 = on ? gelu_dropout_forward_bf16 : NULL;
    be->attention_forward_bf16 = on ? attention_forward_bf16 : NULL;
}
