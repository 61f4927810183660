// The CPU backend's regularisation ops (backend.h): drop path, Mixup/CutMix of patchified
// images, and the cross-entropy against mixed soft targets. Each loop gives every thread
// whole rows or samples, so the results do not depend on the thread count. The float
// expressions are written one rounding at a time (C11 does not contract them into fmas), as
// the CUDA kernels write them with __fmul_rn/__fadd_rn.
#include <math.h>
#include <string.h>
#include "cpu.h"
#include "util/rng.h"

// Samples are cut into runs of this many floats, so that a small batch still spreads over
// the threads.
enum { DP_RUN = 4096 };

static void drop_path(Backend *be, float *out, const float *inp, int B, size_t n, float rate, uint64_t seed,
                      uint32_t step, uint32_t site) {
    float keep = 1.0f - rate, inv = keep > 0 ? 1.0f / keep : 0.0f;
    size_t runs = (n + DP_RUN - 1) / DP_RUN;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (size_t r = 0; r < runs; r++) {
            float mult = rng_keep(seed, step, site, (uint64_t)b, keep) ? inv : 0.0f;
            size_t j0 = r * DP_RUN, len = n - j0 < DP_RUN ? n - j0 : DP_RUN;
            float *o = out + (size_t)b * n + j0;
            const float *x = inp + (size_t)b * n + j0;
            if (mult == 0.0f)
                memset(o, 0, len * sizeof(float));  // +0 whatever x holds, as dropout writes it
            else
                for (size_t j = 0; j < len; j++) o[j] = x[j] * mult;
        }
}

// One sample's value at pixel (y, x): the partner's inside its box, else the weighted sum.
static inline float mixed_value(float own, float other, int y, int x, const float *w, const int *box) {
    if (y >= box[0] && y < box[1] && x >= box[2] && x < box[3]) return other;
    float a = w[0] * own, c = w[1] * other;
    return a + c;
}

static void mix_images(Backend *be, float *patches, const float *w, const int *box, int B, int S, int C, int P) {
    int G = S / P, len = P * P * C, pairs = (B + 1) / 2;
    size_t per = (size_t)G * G * len;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < pairs; i++)
        for (int g = 0; g < G * G; g++) {
            int q = B - 1 - i, y0 = g / G * P, x0 = g % G * P;
            float *a = patches + i * per + (size_t)g * len, *c = patches + q * per + (size_t)g * len;
            for (int e = 0; e < len; e++) {
                int y = y0 + e / (P * C), x = x0 + e / C % P;
                float va = a[e], vc = c[e];
                a[e] = mixed_value(va, vc, y, x, w + 2 * i, box + 4 * i);
                if (q != i) c[e] = mixed_value(vc, va, y, x, w + 2 * q, box + 4 * q);
            }
        }
}

// timm's one_hot values for a smoothing over K classes: off = s/K, on = 1 - s + off.
static void on_off(float smoothing, int K, float *on, float *off) {
    double o = (double)smoothing / K;
    *off = (float)o;
    *on = (float)(1.0 - (double)smoothing + o);
}

static inline float soft_target(int k, int ya, int yb, float on, float off, const float *w) {
    float a = w[0] * (k == ya ? on : off), c = w[1] * (k == yb ? on : off);
    return a + c;
}

static void xent_mix_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                             const float *w, int B, int K, float smoothing) {
    float on, off;
    on_off(smoothing, K, &on, &off);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        float *p = probs + (size_t)b * K;
        int ya = labels[b], yb = labels[B - 1 - b];
        double mx = z[0];
        for (int k = 1; k < K; k++)
            if (z[k] > mx) mx = z[k];
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp(z[k] - mx);
        double lse = mx + log(sum), loss = 0;
        for (int k = 0; k < K; k++) {
            double logp = z[k] - lse;
            p[k] = (float)exp(logp);
            loss -= soft_target(k, ya, yb, on, off, w + 2 * b) * logp;
        }
        losses[b] = (float)loss;
    }
}

static void xent_mix_backward(Backend *be, float *dlogits, const float *probs, const int *labels, const float *w,
                              int B, int K, float smoothing, float scale) {
    float on, off;
    on_off(smoothing, K, &on, &off);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        int ya = labels[b], yb = labels[B - 1 - b];
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)b * K + k;
            dlogits[i] = scale * (probs[i] - soft_target(k, ya, yb, on, off, w + 2 * b));
        }
    }
}

void cpu_install_regularize(Backend *be) {
    be->drop_path = drop_path;
    be->mix_images = mix_images;
    be->xent_mix_forward = xent_mix_forward;
    be->xent_mix_backward = xent_mix_backward;
}
