// The CUDA backend's regularisation ops (backend.h): drop path, Mixup/CutMix of patchified
// images, and the cross-entropy against mixed soft targets. Each kernel mirrors its loop in
// src/backend/cpu/cpu_regularize.c (the same masks from rng_keep, the same roundings through
// __fmul_rn/__fadd_rn, sums in double). Compiled, not yet run on a GPU (docs/gpu.md).
#include <math.h>
#include "cuda_common.h"
#include "cuda_reduce.h"
#include "util/rng.h"

#define SKIP_IF_FAILED(s) \
    do {                  \
        if ((s)->failed) return; \
    } while (0)

// ---- drop path -------------------------------------------------------------------------
// blockIdx.y is the sample: its keep decision is drawn once per thread.
__global__ void drop_path_kernel(float *out, const float *inp, size_t n, float keep, float inv, uint64_t seed,
                                 uint32_t step, uint32_t site) {
    int b = blockIdx.y;
    float mult = rng_keep(seed, step, site, (uint64_t)b, keep) ? inv : 0.0f;
    float *o = out + (size_t)b * n;
    const float *x = inp + (size_t)b * n;
    CUDA_FOR(j, n) o[j] = mult != 0.0f ? __fmul_rn(x[j], mult) : 0.0f;
}

static void drop_path(Backend *be, float *out, const float *inp, int B, size_t n, float rate, uint64_t seed,
                      uint32_t step, uint32_t site) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (B <= 0 || !n) return;
    if (B > 65535) {
        cuda_fail(s, "drop_path", "%d samples: more than a grid's 65535 rows", B);
        return;
    }
    float keep = 1.0f - rate, inv = keep > 0 ? 1.0f / keep : 0.0f;  // on the host, exactly as the CPU
    unsigned bx = cuda_blocks(s, n, 256) / (unsigned)B + 1;
    drop_path_kernel<<<dim3(bx, B), 256, 0, s->stream>>>(out, inp, n, keep, inv, seed, step, site);
    cuda_check_launch(s, "drop_path");
}

// ---- Mixup / CutMix ----------------------------------------------------------------------
static __device__ __forceinline__ float mixed_value(float own, float other, int y, int x, const float *w,
                                                    const int *box) {
    if (y >= box[0] && y < box[1] && x >= box[2] && x < box[3]) return other;
    return __fadd_rn(__fmul_rn(w[0], own), __fmul_rn(w[1], other));
}

// One thread per element of the first sample of a pair: it reads both and writes both.
__global__ void mix_images_kernel(float *patches, const float *w, const int *box, int B, int G, int P, int C) {
    int len = P * P * C, pairs = (B + 1) / 2;
    size_t per = (size_t)G * G * len, n = (size_t)pairs * per;
    CUDA_FOR(idx, n) {
        int i = (int)(idx / per), q = B - 1 - i;
        size_t within = idx % per;
        int g = (int)(within / len), e = (int)(within % len);
        int y = g / G * P + e / (P * C), x = g % G * P + e / C % P;
        float *a = patches + (size_t)i * per + within, *c = patches + (size_t)q * per + within;
        float va = *a, vc = *c;
        *a = mixed_value(va, vc, y, x, w + 2 * i, box + 4 * i);
        if (q != i) *c = mixed_value(vc, va, y, x, w + 2 * q, box + 4 * q);
    }
}

static void mix_images(Backend *be, float *patches, const float *w, const int *box, int B, int S, int C, int P) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    int G = S / P;
    size_t n = (size_t)((B + 1) / 2) * G * G * P * P * C;
    if (!n) return;
    mix_images_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(patches, w, box, B, G, P, C);
    cuda_check_launch(s, "mix_images");
}

// ---- cross-entropy against mixed soft targets --------------------------------------------
static void on_off(float smoothing, int K, float *on, float *off) {
    double o = (double)smoothing / K;
    *off = (float)o;
    *on = (float)(1.0 - (double)smoothing + o);
}

static __device__ __forceinline__ float soft_target(int k, int ya, int yb, float on, float off, const float *w) {
    return __fadd_rn(__fmul_rn(w[0], k == ya ? on : off), __fmul_rn(w[1], k == yb ? on : off));
}

// One block per sample, double sums as the CPU loop (as xent_forward_kernel).
__global__ void xent_mix_forward_kernel(float *probs, float *losses, const float *logits, const int *labels,
                                        const float *w, int B, int K, float on, float off) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int b = blockIdx.x, ya = labels[b], yb = labels[B - 1 - b];
    const float *z = logits + (size_t)b * K;
    float *p = probs + (size_t)b * K;
    float mxf = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mxf = fmaxf(mxf, z[k]);
    double mx = block_max(mxf, shf);
    double sum = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += exp(z[k] - mx);
    double lse = mx + log(block_sum_d(sum, shd));
    double loss = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        double logp = z[k] - lse;
        p[k] = (float)exp(logp);
        loss -= (double)soft_target(k, ya, yb, on, off, w + 2 * b) * logp;
    }
    loss = block_sum_d(loss, shd);
    if (threadIdx.x == 0) losses[b] = (float)loss;
}

__global__ void xent_mix_backward_kernel(float *dlogits, const float *probs, const int *labels, const float *w, int B,
                                         int K, float on, float off, float sc) {
    size_t n = (size_t)B * K;
    CUDA_FOR(idx, n) {
        int k = (int)(idx % K), b = (int)(idx / K);
        float t = soft_target(k, labels[b], labels[B - 1 - b], on, off, w + 2 * b);
        dlogits[idx] = __fmul_rn(sc, __fsub_rn(probs[idx], t));
    }
}

static void xent_mix_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                             const float *w, int B, int K, float smoothing) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (B <= 0 || K <= 0) return;
    float on, off;
    on_off(smoothing, K, &on, &off);
    xent_mix_forward_kernel<<<B, 256, 0, s->stream>>>(probs, losses, logits, labels, w, B, K, on, off);
    cuda_check_launch(s, "xent_mix_forward");
}

static void xent_mix_backward(Backend *be, float *dlogits, const float *probs, const int *labels, const float *w,
                              int B, int K, float smoothing, float sc) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (B <= 0 || K <= 0) return;
    float on, off;
    on_off(smoothing, K, &on, &off);
    xent_mix_backward_kernel<<<cuda_blocks(s, (size_t)B * K, 256), 256, 0, s->stream>>>(dlogits, probs, labels, w, B,
                                                                                       K, on, off, sc);
    cuda_check_launch(s, "xent_mix_backward");
}

void cuda_install_regularize(Backend *be) {
    be->drop_path = drop_path;
    be->mix_images = mix_images;
    be->xent_mix_forward = xent_mix_forward;
    be->xent_mix_backward = xent_mix_backward;
}
