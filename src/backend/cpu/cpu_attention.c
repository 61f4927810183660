// Multi-head attention on the CPU: heads are gathered into contiguous (B*H, T, hd) blocks
// so that every product is one batched oneDNN matmul; the softmax probabilities
// (B*H, T, T) are the saved state for the backward pass.
#include <math.h>
#include <string.h>
#include "cpu.h"
#include "cpu_math.h"
#include "util/status.h"

// (B, T, H*hd) <-> (B, H, T, hd)
static void split_heads(float *dst, const float *src, int B, int T, int H, int hd) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++)
                memcpy(dst + (((size_t)b * H + h) * T + t) * hd, src + ((size_t)b * T + t) * H * hd + h * hd,
                       hd * sizeof(float));
}

static void merge_heads(float *dst, const float *src, int B, int T, int H, int hd) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                memcpy(dst + ((size_t)b * T + t) * H * hd + h * hd, src + (((size_t)b * H + h) * T + t) * hd,
                       hd * sizeof(float));
}

static size_t state_floats(Backend *be, int B, int T, int H, int hd) { return (size_t)B * H * T * T; }

// qh, kh, vh, oh/doh, dqh, dkh, dvh (7 x B*H*T*hd) and dS (B*H*T*T)
static size_t scratch_floats(Backend *be, int B, int T, int H, int hd) {
    return 7 * (size_t)B * H * T * hd + (size_t)B * H * T * T;
}

static int attention_forward(Backend *be, float *out, float *probs, float *scratch, const float *q, const float *k,
                             const float *v, int B, int T, int H, int hd) {
    size_t n = (size_t)B * H * T * hd;
    float *qh = scratch, *kh = qh + n, *vh = kh + n, *oh = vh + n;
    split_heads(qh, q, B, T, H, hd);
    split_heads(kh, k, B, T, H, hd);
    split_heads(vh, v, B, T, H, hd);
    float alpha = 1.0f / sqrtf((float)hd);
    if (cpu_gemm(be, B * H, T, T, hd, qh, 0, kh, 1, probs, NULL, alpha, 0)) return VIT_ERR;
    int rows = B * H * T;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        float *s = probs + (size_t)i * T;
        float mx = s[0], sum = 0;
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < T; j++) mx = s[j] > mx ? s[j] : mx;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < T; j++) {
            s[j] = cpu_expf(s[j] - mx);
            sum += s[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < T; j++) s[j] *= inv;
    }
    if (cpu_gemm(be, B * H, T, hd, T, probs, 0, vh, 0, oh, NULL, 1.0f, 0)) return VIT_ERR;
    merge_heads(out, oh, B, T, H, hd);
    return VIT_OK;
}

static int attention_backward(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                              float *scratch, const float *q, const float *k, const float *v, int B, int T, int H,
                              int hd) {
    size_t n = (size_t)B * H * T * hd;
    float *qh = scratch, *kh = qh + n, *vh = kh + n, *doh = vh + n, *dqh = doh + n, *dkh = dqh + n, *dvh = dkh + n;
    float *dS = dvh + n;
    split_heads(qh, q, B, T, H, hd);
    split_heads(kh, k, B, T, H, hd);
    split_heads(vh, v, B, T, H, hd);
    split_heads(doh, dout, B, T, H, hd);
    int BH = B * H;
    // dV = P^T dO, dP = dO V^T
    if (cpu_gemm(be, BH, T, hd, T, probs, 1, doh, 0, dvh, NULL, 1.0f, 0)) return VIT_ERR;
    if (cpu_gemm(be, BH, T, T, hd, doh, 0, vh, 1, dS, NULL, 1.0f, 0)) return VIT_ERR;
    // softmax backward: dS = P * (dP - sum_j P dP)
    int rows = BH * T;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        const float *p = probs + (size_t)i * T;
        float *d = dS + (size_t)i * T;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < T; j++) dot += p[j] * d[j];
        for (int j = 0; j < T; j++) d[j] = p[j] * (d[j] - dot);
    }
    float alpha = 1.0f / sqrtf((float)hd);
    // dQ = scale dS K, dK = scale dS^T Q
    if (cpu_gemm(be, BH, T, hd, T, dS, 0, kh, 0, dqh, NULL, alpha, 0)) return VIT_ERR;
    if (cpu_gemm(be, BH, T, hd, T, dS, 1, qh, 0, dkh, NULL, alpha, 0)) return VIT_ERR;
    merge_heads(dq, dqh, B, T, H, hd);
    merge_heads(dk, dkh, B, T, H, hd);
    merge_heads(dv, dvh, B, T, H, hd);
    return VIT_OK;
}

void cpu_install_attention(Backend *be) {
    be->attention_state_floats = state_floats;
    be->attention_scratch_floats = scratch_floats;
    be->attention_forward = attention_forward;
    be->attention_backward = attention_backward;
}
