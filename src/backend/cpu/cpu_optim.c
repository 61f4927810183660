// Optimizer updates over contiguous ranges of fp32 parameters (formulas in README.md), and
// the weights' moving average (ema_update):
// sgd and rmsprop as Keras defines them, adam with Keras' epsilon placement (the recipe),
// adamw as PyTorch's AdamW. Weight decay is decoupled and applied first.
//
// The element formulas live in one place (the *_element functions) and both the one-range
// and the multi-segment update run them, so the two give the same bits by construction;
// update_range_avx512 repeats them on 16 lanes (tests/test_optim_multi.c holds it to them).
// (-std=c11 keeps floating-point contraction off, so inlining cannot fuse them differently.)
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include "cpu.h"
#include "cpu_isa.h"

// Step constants, computed once per call from the OptimStep.
typedef struct {
    OptimizerKind kind;
    float lr, gs, mom, b1, b2, rho, eps;
    float lr_t, inv_c1, inv_sqrt_c2;  // adam / adamw bias corrections
    double c1, sqrt_c2;               // kept to derive lr_t of a scaled learning rate
} StepConsts;

// The constants with the bias corrections given: c1 = 1 - beta1^t, sqrt_c2 = sqrt(1 - beta2^t)
// (from t on the host, or from the device-side step scalars: the same doubles either way).
static StepConsts step_consts_with(const OptimStep *s, double c1, double sqrt_c2) {
    StepConsts c = {s->kind, s->lr, s->grad_scale, s->momentum, s->beta1, s->beta2, s->rho, s->epsilon, 0, 0, 0, 1, 1};
    if (s->kind == OPT_ADAM || s->kind == OPT_ADAMW) {
        // Keras: lr_t = lr sqrt(c2)/c1, p -= lr_t m / (sqrt(v) + eps)
        // PyTorch: p -= lr (m/c1) / (sqrt(v/c2) + eps)
        c.c1 = c1, c.sqrt_c2 = sqrt_c2;
        c.lr_t = (float)(c.lr * c.sqrt_c2 / c1);
        c.inv_c1 = (float)(1.0 / c1);
        c.inv_sqrt_c2 = (float)(1.0 / sqrt_c2);
    }
    return c;
}

static StepConsts step_consts(const OptimStep *s) {
    return step_consts_with(s, 1.0 - pow(s->beta1, s->t), sqrt(1.0 - pow(s->beta2, s->t)));
}

// The constants of a segment whose learning rate is the step's times lr_scale: exactly what
// step_consts gives an OptimStep with lr = fp32(lr * lr_scale) (so a scale of 1 changes no bit).
static StepConsts scaled_consts(const StepConsts *base, float lr_scale) {
    StepConsts c = *base;
    c.lr = base->lr * lr_scale;
    if (c.kind == OPT_ADAM || c.kind == OPT_ADAMW) c.lr_t = (float)(c.lr * c.sqrt_c2 / c.c1);
    return c;
}

// The multiplier of decoupled weight decay for a range with learning rate lr and decay wd.
static inline float decay_factor(float lr, float wd) { return 1.0f - lr * wd; }

static inline void sgd_element(float *p, const float *g, float *m, size_t i, float lr, float gs, float decay,
                               float mom) {
    float w = p[i] * decay;
    m[i] = mom * m[i] - lr * (g[i] * gs);
    p[i] = w + m[i];
}

static inline void adam_element(float *p, const float *g, float *m, float *v, size_t i, float lr, float gs,
                                float decay, float b1, float b2, float eps, float lr_t, float inv_c1,
                                float inv_sqrt_c2, int keras) {
    float gi = g[i] * gs, w = p[i] * decay;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    if (keras)
        p[i] = w - lr_t * m[i] / (sqrtf(v[i]) + eps);
    else
        p[i] = w - lr * (m[i] * inv_c1) / (sqrtf(v[i]) * inv_sqrt_c2 + eps);
}

static inline void rmsprop_element(float *p, const float *g, float *v, size_t i, float lr, float gs, float decay,
                                   float rho, float eps) {
    float gi = g[i] * gs, w = p[i] * decay;
    v[i] = rho * v[i] + (1.0f - rho) * gi * gi;
    p[i] = w - lr * gi / (sqrtf(v[i]) + eps);
}

// Elements [0, n) of one range on the calling thread. The constants are copied to locals so
// the compiler sees they cannot alias the arrays (and vectorizes the loops).
static void update_range(float *p, const float *g, float *m, float *v, size_t n, const StepConsts *c, float decay) {
    const float lr = c->lr, gs = c->gs;
    switch (c->kind) {
    case OPT_SGD: {
        const float mom = c->mom;
        for (size_t i = 0; i < n; i++) sgd_element(p, g, m, i, lr, gs, decay, mom);
        break;
    }
    case OPT_ADAM:
    case OPT_ADAMW: {
        const float b1 = c->b1, b2 = c->b2, eps = c->eps, lr_t = c->lr_t, inv_c1 = c->inv_c1,
                    inv_sqrt_c2 = c->inv_sqrt_c2;
        const int keras = c->kind == OPT_ADAM;
        for (size_t i = 0; i < n; i++)
            adam_element(p, g, m, v, i, lr, gs, decay, b1, b2, eps, lr_t, inv_c1, inv_sqrt_c2, keras);
        break;
    }
    case OPT_RMSPROP: {
        const float rho = c->rho, eps = c->eps;
        for (size_t i = 0; i < n; i++) rmsprop_element(p, g, v, i, lr, gs, decay, rho, eps);
        break;
    }
    }
}

// update_range on 16 lanes for CPUs with AVX-512 (chosen at run time: the file is built for
// any x86-64). The *_element formulas operation for operation, without FMA, so every
// instruction set gives the same bits.
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

// A masked store only at the tail: on Zen 4 one costs several times a plain store.
static AVX512 inline void store16(float *p, __mmask16 m, __m512 v) {
    if (m == 0xffff)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, m, v);
}

static AVX512 void update_range_avx512(float *p, const float *g, float *m, float *v, size_t n, const StepConsts *c,
                                       float decay) {
    const __m512 lr = _mm512_set1_ps(c->lr), gs = _mm512_set1_ps(c->gs), dec = _mm512_set1_ps(decay);
    const __m512 b1 = _mm512_set1_ps(c->b1), b2 = _mm512_set1_ps(c->b2), eps = _mm512_set1_ps(c->eps);
    const __m512 c1 = _mm512_set1_ps(1.0f - c->b1), c2 = _mm512_set1_ps(1.0f - c->b2);
    const __m512 rho = _mm512_set1_ps(c->rho), crho = _mm512_set1_ps(1.0f - c->rho), mom = _mm512_set1_ps(c->mom);
    const __m512 lr_t = _mm512_set1_ps(c->lr_t), inv_c1 = _mm512_set1_ps(c->inv_c1);
    const __m512 inv_sqrt_c2 = _mm512_set1_ps(c->inv_sqrt_c2);
    const OptimizerKind kind = c->kind;
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 gi = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + i), gs);
        __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), dec), pi;
        if (kind == OPT_SGD) {
            __m512 mi = _mm512_sub_ps(_mm512_mul_ps(mom, _mm512_maskz_loadu_ps(k, m + i)),
                                      _mm512_mul_ps(lr, gi));
            store16(m + i, k, mi);
            pi = _mm512_add_ps(w, mi);
        } else if (kind == OPT_RMSPROP) {
            __m512 vi = _mm512_add_ps(_mm512_mul_ps(rho, _mm512_maskz_loadu_ps(k, v + i)),
                                      _mm512_mul_ps(_mm512_mul_ps(crho, gi), gi));
            store16(v + i, k, vi);
            pi = _mm512_sub_ps(w, _mm512_div_ps(_mm512_mul_ps(lr, gi), _mm512_add_ps(_mm512_sqrt_ps(vi), eps)));
        } else {
            __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_maskz_loadu_ps(k, m + i)), _mm512_mul_ps(c1, gi));
            __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_maskz_loadu_ps(k, v + i)),
                                      _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
            store16(m + i, k, mi);
            store16(v + i, k, vi);
            if (kind == OPT_ADAM)
                pi = _mm512_div_ps(_mm512_mul_ps(lr_t, mi), _mm512_add_ps(_mm512_sqrt_ps(vi), eps));
            else
                pi = _mm512_div_ps(_mm512_mul_ps(lr, _mm512_mul_ps(mi, inv_c1)),
                                   _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), inv_sqrt_c2), eps));
            pi = _mm512_sub_ps(w, pi);
        }
        store16(p + i, k, pi);
    }
}

// All segments in one parallel region: each thread takes one contiguous share of the
// segments laid end to end, so the work is balanced however small and large tensors mix
// (a model has ~200, many of a few hundred floats), and there is one fork/join per step
// instead of one per segment. Elements are independent, so who runs which changes no bit.
static void update_segments(const float *g, float *p, float *m, float *v, const OptimSegment *segs, int nsegs,
                            const OptimStep *s, const StepConsts c) {
    size_t total = 0;
    for (int i = 0; i < nsegs; i++) total += segs[i].n;
    if (!total) return;
    const float wd = s->weight_decay;
    void (*range)(float *, const float *, float *, float *, size_t, const StepConsts *, float) =
        cpu_isa() >= CPU_ISA_AVX512 ? update_range_avx512 : update_range;
#pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        size_t lo = total / nt * id + (id < total % nt ? id : total % nt), hi = lo + total / nt + (id < total % nt);
        size_t base = 0;  // where segment i starts in the concatenation
        for (int i = 0; i < nsegs && base < hi; i++) {
            const OptimSegment *sg = &segs[i];
            size_t a = lo > base ? lo - base : 0, b = hi - base < sg->n ? hi - base : sg->n;  // within the segment
            if (a < b) {
                // Exactly what optimizer_update computes with lr scaled and weight_decay as given, or 0.
                const StepConsts cs = scaled_consts(&c, sg->lr_scale);
                size_t pi = sg->param + a, si = sg->slot + a;
                range(p + pi, g + pi, m ? m + si : NULL, v ? v + si : NULL, b - a, &cs,
                      decay_factor(cs.lr, sg->decay ? wd : 0.0f));
            }
            base += sg->n;
        }
    }
}

static void optimizer_update_segments(Backend *be, float *p, const float *g, float *m, float *v,
                                      const OptimSegment *segs, int nsegs, const OptimStep *s) {
    update_segments(g, p, m, v, segs, nsegs, s, step_consts(s));
}

// One range is one segment with its decay and learning rate as given.
static void optimizer_update(Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                             const OptimStep *s) {
    const OptimSegment one = {0, 0, n, 1, 1.0f};
    optimizer_update_segments(be, p, g, m, v, &one, 1, s);
}

// ema = lerp(ema, params, weight) as PyTorch's lerp computes it (the form timm's ModelEmaV3
// applies): ema + weight (params - ema) for |weight| < 0.5, else params - (params - ema)(1 - weight),
// so weight 1 copies the parameters exactly. Elementwise: no thread count changes a bit.
static void ema_update(Backend *be, float *ema, const float *params, size_t n, float weight) {
    const float w = weight, rest = 1.0f - weight;
    const long long len = (long long)n;
    if (fabsf(w) < 0.5f) {
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < len; i++) ema[i] = ema[i] + w * (params[i] - ema[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < len; i++) ema[i] = params[i] - (params[i] - ema[i]) * rest;
    }
}

// ---- device-side step scalars (plain memory here) ---------------------------------------------

static void scalars_write(Backend *be, double *dst, const double *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = src[i];
}

// The norm and clip scale exactly as the host computed them from sum_squares.
static void grad_norm_clip(Backend *be, double *sc, const float *g, size_t n, float clip_norm) {
    const double norm = sqrt(be->sum_squares(be, g, n));
    sc[STEP_NORM] = norm;
    sc[STEP_SCALE] = clip_norm > 0 && norm > clip_norm ? (double)(float)(clip_norm / norm) : 1.0;
    if (!isfinite(norm)) sc[STEP_SKIP] = 1.0;
}

static void optimizer_update_scalars(Backend *be, float *p, const float *g, float *m, float *v,
                                     const OptimSegment *segs, int nsegs, const OptimStep *s, const double *sc) {
    if (sc[STEP_SKIP] != 0) return;
    OptimStep st = *s;
    st.lr = (float)sc[STEP_LR];
    st.grad_scale = (float)sc[STEP_SCALE];
    update_segments(g, p, m, v, segs, nsegs, &st, step_consts_with(&st, sc[STEP_C1], sc[STEP_SQRT_C2]));
}

static void metrics_accumulate(Backend *be, double *acc, const float *losses, const float *logits, const int *labels,
                               int B, int K) {
    double loss = 0;
    long top1 = 0, top5 = 0;
    for (int b = 0; b < B; b++) {
        loss += losses[b];
        const float *z = logits + (size_t)b * K, mine = z[labels[b]];
        int above = 0, y = labels[b];
        for (int k = 0; k < K; k++) above += z[k] > mine || (z[k] == mine && k < y);
        top1 += above == 0;
        top5 += above < 5;
    }
    acc[METRIC_LOSS] += loss;
    acc[METRIC_TOP1] += (double)top1;
    acc[METRIC_TOP5] += (double)top5;
    acc[METRIC_NONFINITE] += !isfinite(loss);
}

void cpu_install_optimizer(Backend *be) {
    be->optimizer_update = optimizer_update;
    be->optimizer_update_segments = optimizer_update_segments;
    be->ema_update = ema_update;
    be->scalars_write = scalars_write;
    be->grad_norm_clip = grad_norm_clip;
    be->optimizer_update_scalars = optimizer_update_scalars;
    be->metrics_accumulate = metrics_accumulate;
}
