// AVX-512 kernels of cpu_ops.c (see cpu_ops_avx512.h). Every function carries a target
// attribute, so this file compiles for any x86-64 and runs only where cpu_isa() allows.
// No FMA where the portable loops have separate multiplies and adds (-std=c11 keeps the
// compiler from contracting them): the same operations in the same order give the same bits.
#include "cpu_ops_avx512.h"
#include <immintrin.h>
#include <math.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

// Elements per dropout span: the Philox words of one span are drawn into a stack buffer.
enum { SPAN = 256, SPAN_WORDS = SPAN + 4 + 64 };  // + the group offset, + a 16-group round-up

static AVX512 inline __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

// A masked store only at a tail: on Zen 4 one costs several times a plain store.
static AVX512 inline void store16(float *p, __mmask16 m, __m512 v) {
    if (m == 0xffff)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, m, v);
}

// ---- Philox4x32-10, 16 counters at a time ---------------------------------------------

// hi and lo of the 32x32-bit products of a and b in each lane: vpmuludq on the even and the
// odd lanes, then each half moved into place by a masked swap of neighbouring lanes.
static AVX512 inline __m512i mulhilo(__m512i a, __m512i b, __m512i *lo) {
    __m512i even = _mm512_mul_epu32(a, b), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
    *lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
    return _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
}

// bits[4k + w] = word w of philox4x32(seed, g, g >> 32, site, step) for g = g0 + k, k < 16:
// rng_keep's words, in element order.
static AVX512 void philox16(uint32_t *bits, uint64_t g0, uint64_t seed, uint32_t step, uint32_t site) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i base = _mm512_set1_epi32((int)(uint32_t)g0), high = _mm512_set1_epi32((int)(uint32_t)(g0 >> 32));
    __m512i x0 = _mm512_add_epi32(base, iota);
    __m512i x1 = _mm512_mask_add_epi32(high, _mm512_cmplt_epu32_mask(x0, base), high, _mm512_set1_epi32(1));
    __m512i x2 = _mm512_set1_epi32((int)site), x3 = _mm512_set1_epi32((int)step);
    const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        __m512i lo0, lo1, hi0 = mulhilo(x0, m0, &lo0), hi1 = mulhilo(x2, m1, &lo1);
        x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32((int)k0), 0x96);  // three-way xor
        x1 = lo1;
        x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32((int)k1), 0x96);
        x3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    // Lane l of output vector u is word l % 4 of group 4u + l / 4: words 0, 1 from (x0, x1),
    // words 2, 3 from (x2, x3), by one index vector per u.
    const __m512i pick = _mm512_setr_epi32(0, 16, 0, 16, 1, 17, 1, 17, 2, 18, 2, 18, 3, 19, 3, 19);
    for (int u = 0; u < 4; u++) {
        __m512i idx = _mm512_add_epi32(pick, _mm512_set1_epi32(4 * u));
        __m512i a = _mm512_permutex2var_epi32(x0, idx, x1), b = _mm512_permutex2var_epi32(x2, idx, x3);
        _mm512_storeu_si512(bits + 16 * u, _mm512_mask_blend_epi32(0xCCCC, a, b));
    }
}

// The words of elements i0 .. i0 + len (len <= SPAN); returns where element i0's word is.
static AVX512 const uint32_t *span_bits(uint32_t *bits, size_t i0, size_t len, uint64_t seed, uint32_t step,
                                        uint32_t site) {
    size_t g0 = i0 >> 2, groups = ((i0 + len + 3) >> 2) - g0;
    for (size_t g = 0; g < groups; g += 16) philox16(bits + 4 * g, g0 + g, seed, step, site);
    return bits + (i0 & 3);
}

// rng_u01(bits) < keep for 16 words (lanes outside m: don't care).
static AVX512 inline __mmask16 keep_mask(const uint32_t *b, __mmask16 m, __m512 keep) {
    __m512i w = _mm512_srli_epi32(_mm512_maskz_loadu_epi32(m, b), 8);
    __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(1.0f / 16777216.0f));
    return _mm512_cmp_ps_mask(u, keep, _CMP_LT_OQ);
}

void AVX512 cpu_avx512_dropout(float *out, const float *in, size_t i0, size_t len, float keep, float inv,
                               uint64_t seed, uint32_t step, uint32_t site) {
    uint32_t bits[SPAN_WORDS];
    const __m512 vk = _mm512_set1_ps(keep), vi = _mm512_set1_ps(inv);
    for (size_t s0 = 0; s0 < len; s0 += SPAN) {
        size_t n = len - s0 < SPAN ? len - s0 : SPAN;
        const uint32_t *b = span_bits(bits, i0 + s0, n, seed, step, site);
        for (size_t k = 0; k < n; k += 16) {
            __mmask16 m = tail_mask(n - k);
            __m512 x = _mm512_maskz_loadu_ps(m, in + s0 + k);
            store16(out + s0 + k, m, _mm512_maskz_mul_ps(keep_mask(b + k, m, vk), x, vi));
        }
    }
}

// ---- GELU --------------------------------------------------------------------------------
// cpu_expf and cpu_erff (cpu_math.h) operation for operation.

static AVX512 inline __m512 v_expf(__m512 x) {
    // max(-87, x) and min(88, x) return x when it is NaN, as the scalar comparisons do.
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693145752f))),
                             _mm512_mul_ps(n, _mm512_set1_ps(1.42860677e-6f)));
    __m512 p = _mm512_set1_ps(0.00138925656f);
    p = _mm512_add_ps(_mm512_set1_ps(0.00833336264f), _mm512_mul_ps(r, p));
    p = _mm512_add_ps(_mm512_set1_ps(0.0416666381f), _mm512_mul_ps(r, p));
    p = _mm512_add_ps(_mm512_set1_ps(0.166666672f), _mm512_mul_ps(r, p));
    p = _mm512_add_ps(_mm512_set1_ps(0.5f), _mm512_mul_ps(r, p));
    p = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(r, p));
    p = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(r, p));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

static AVX512 inline __m512 flip_sign(__m512 x, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(x), m, _mm512_castps_si512(x),
                                                     _mm512_set1_epi32((int)0x80000000u)));
}

static AVX512 inline __m512 v_erff(__m512 x) {
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 a = flip_sign(x, neg);  // x < 0 ? -x : x (not fabsf: -0 stays -0, as in cpu_erff)
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 t = _mm512_div_ps(one, _mm512_add_ps(one, _mm512_mul_ps(_mm512_set1_ps(0.3275911f), a)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_add_ps(_mm512_set1_ps(-1.453152027f), _mm512_mul_ps(t, p));
    p = _mm512_add_ps(_mm512_set1_ps(1.421413741f), _mm512_mul_ps(t, p));
    p = _mm512_add_ps(_mm512_set1_ps(-0.284496736f), _mm512_mul_ps(t, p));
    p = _mm512_add_ps(_mm512_set1_ps(0.254829592f), _mm512_mul_ps(t, p));
    p = _mm512_mul_ps(t, p);
    __m512 y = _mm512_sub_ps(one, _mm512_mul_ps(p, v_expf(_mm512_mul_ps(flip_sign(a, 0xffff), a))));
    return flip_sign(y, neg);
}

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

// 0.5 x (1 + erf(x / sqrt 2)), as gelu_erf.
static AVX512 inline __m512 v_gelu_erf(__m512 x) {
    __m512 e = v_erff(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT_2)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static AVX512 inline __m512 v_gelu_erf_grad(__m512 x) {
    __m512 e = v_erff(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT_2)));
    __m512 cdf = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __m512 pdf = _mm512_mul_ps(_mm512_set1_ps(INV_SQRT_2PI),
                               v_expf(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-0.5f), x), x)));
    return _mm512_add_ps(cdf, _mm512_mul_ps(x, pdf));
}

// The tanh form as x * sigmoid(2u) = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3):
// one exp and one division instead of libm's scalar tanhf, and no cancellation in 1 + tanh u
// for negative x. s = 1 / (1 + e), e = exp(-2u); 1 - s = e s.
static AVX512 inline __m512 v_tanh_sigmoid(__m512 x, __m512 *e_out) {
    __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(SQRT_2_OVER_PI), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
    __m512 e = v_expf(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
    *e_out = e;
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static AVX512 inline __m512 v_gelu_tanh(__m512 x) {
    __m512 e;
    return _mm512_mul_ps(x, v_tanh_sigmoid(x, &e));
}

// d/dx x s(2u) = s + 2 x s (1 - s) u'
static AVX512 inline __m512 v_gelu_tanh_grad(__m512 x) {
    __m512 e, s = v_tanh_sigmoid(x, &e);
    __m512 du = _mm512_mul_ps(_mm512_set1_ps(2.0f * SQRT_2_OVER_PI),
                              _mm512_fmadd_ps(_mm512_set1_ps(3.0f * 0.044715f), _mm512_mul_ps(x, x),
                                              _mm512_set1_ps(1.0f)));
    __m512 xs = _mm512_mul_ps(x, s);
    return _mm512_fmadd_ps(_mm512_mul_ps(xs, _mm512_mul_ps(e, s)), du, s);
}

static AVX512 inline __m512 v_gelu(__m512 x, int tanh_approx) {
    return tanh_approx ? v_gelu_tanh(x) : v_gelu_erf(x);
}
static AVX512 inline __m512 v_gelu_grad(__m512 x, int tanh_approx) {
    return tanh_approx ? v_gelu_tanh_grad(x) : v_gelu_erf_grad(x);
}

void AVX512 cpu_avx512_gelu_forward(float *out, const float *in, size_t n, int tanh_approx) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        store16(out + i, m, v_gelu(_mm512_maskz_loadu_ps(m, in + i), tanh_approx));
    }
}

void AVX512 cpu_avx512_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 g = v_gelu_grad(_mm512_maskz_loadu_ps(m, inp + i), tanh_approx);
        store16(dinp + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + i), g));
    }
}

void AVX512 cpu_avx512_gelu_dropout_forward(float *out, const float *in, size_t i0, size_t len, int tanh_approx,
                                            float keep, float inv, uint64_t seed, uint32_t step, uint32_t site) {
    uint32_t bits[SPAN_WORDS];
    const __m512 vk = _mm512_set1_ps(keep), vi = _mm512_set1_ps(inv);
    for (size_t s0 = 0; s0 < len; s0 += SPAN) {
        size_t n = len - s0 < SPAN ? len - s0 : SPAN;
        const uint32_t *b = span_bits(bits, i0 + s0, n, seed, step, site);
        for (size_t k = 0; k < n; k += 16) {
            __mmask16 m = tail_mask(n - k);
            __m512 y = v_gelu(_mm512_maskz_loadu_ps(m, in + s0 + k), tanh_approx);
            store16(out + s0 + k, m, _mm512_maskz_mul_ps(keep_mask(b + k, m, vk), y, vi));
        }
    }
}

// p[0..16) += d (masked by m), in double as the scalar loops add; masked only at a tail.
static AVX512 inline void add_to_doubles(double *p, __m512 d, __mmask16 m) {
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(d));
    __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1)));
    if (m == 0xffff) {
        _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), a));
        _mm512_storeu_pd(p + 8, _mm512_add_pd(_mm512_loadu_pd(p + 8), b));
        return;
    }
    __mmask8 lo = (__mmask8)m, hi = (__mmask8)(m >> 8);
    _mm512_mask_storeu_pd(p, lo, _mm512_add_pd(_mm512_maskz_loadu_pd(lo, p), a));
    _mm512_mask_storeu_pd(p + 8, hi, _mm512_add_pd(_mm512_maskz_loadu_pd(hi, p + 8), b));
}

void AVX512 cpu_avx512_gelu_dropout_backward_rows(float *dinp, double *part, const float *inp, const float *dout,
                                                  int r0, int r1, int cols, int tanh_approx, float rate,
                                                  uint64_t seed, uint32_t step, uint32_t site) {
    uint32_t bits[SPAN_WORDS];
    const float keep = 1.0f - rate, inv = 1.0f / keep;
    const __m512 vk = _mm512_set1_ps(keep), vi = _mm512_set1_ps(inv);
    for (int i = r0; i < r1; i++) {
        for (int j0 = 0; j0 < cols; j0 += SPAN) {
            size_t at = (size_t)i * cols + j0, n = cols - j0 < SPAN ? (size_t)(cols - j0) : SPAN;
            const uint32_t *b = rate > 0 ? span_bits(bits, at, n, seed, step, site) : NULL;
            for (size_t k = 0; k < n; k += 16) {
                __mmask16 m = tail_mask(n - k);
                __m512 d = _mm512_maskz_loadu_ps(m, dout + at + k);
                if (b) d = _mm512_maskz_mul_ps(keep_mask(b + k, m, vk), d, vi);
                d = _mm512_mul_ps(d, v_gelu_grad(_mm512_maskz_loadu_ps(m, inp + at + k), tanh_approx));
                store16(dinp + at + k, m, d);
                add_to_doubles(part + j0 + k, d, m);
            }
        }
    }
}

void AVX512 cpu_avx512_column_sums_rows(double *part, const float *x, int r0, int r1, int cols) {
    for (int i = r0; i < r1; i++) {
        const float *row = x + (size_t)i * cols;
        int j = 0;
        for (; j + 16 <= cols; j += 16) add_to_doubles(part + j, _mm512_loadu_ps(row + j), 0xffff);
        if (j < cols) {
            __mmask16 m = tail_mask((size_t)(cols - j));
            add_to_doubles(part + j, _mm512_maskz_loadu_ps(m, row + j), m);
        }
    }
}

// ---- LayerNorm ---------------------------------------------------------------------------

// 16 floats as two vectors of doubles.
static AVX512 inline void widen(__m512 x, __m512d *lo, __m512d *hi) {
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

// sum_j x[j] and, when m is given, sum_j (x[j] - m)^2, in double; masked-off lanes add 0.
static AVX512 double row_sum(const float *x, int C, const double *m) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int j = 0; j < C; j += 16) {
        __mmask16 k = tail_mask((size_t)(C - j));
        __m512d lo, hi;
        widen(_mm512_maskz_loadu_ps(k, x + j), &lo, &hi);
        if (m) {
            __m512d vm = _mm512_set1_pd(*m);
            lo = _mm512_maskz_sub_pd((__mmask8)k, lo, vm);
            hi = _mm512_maskz_sub_pd((__mmask8)(k >> 8), hi, vm);
            s0 = _mm512_fmadd_pd(lo, lo, s0);
            s1 = _mm512_fmadd_pd(hi, hi, s1);
        } else {
            s0 = _mm512_add_pd(s0, lo);
            s1 = _mm512_add_pd(s1, hi);
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}

void AVX512 cpu_avx512_layernorm_row(float *y, float *mean, float *rstd, const float *x, const float *scale,
                                     const float *bias, int C, float eps) {
    double m = row_sum(x, C, NULL) / C;
    double v = row_sum(x, C, &m) / C;
    float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
    const __m512 vs = _mm512_set1_ps(s), vm = _mm512_set1_ps(mf);
    for (int j = 0; j < C; j += 16) {  // (x - m) * s * scale + bias, as layernorm_row
        __mmask16 k = tail_mask((size_t)(C - j));
        __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vs);
        t = _mm512_add_ps(_mm512_mul_ps(t, _mm512_maskz_loadu_ps(k, scale + j)), _mm512_maskz_loadu_ps(k, bias + j));
        store16(y + j, k, t);
    }
    *mean = mf;
    *rstd = s;
}

void AVX512 cpu_avx512_layernorm_backward_rows(float *dinp, double *ps, double *pb, const float *dout,
                                               const float *inp, const float *scale, const float *mean,
                                               const float *rstd, int r0, int r1, int C) {
    for (int i = r0; i < r1; i++) {
        const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        const __m512 vm = _mm512_set1_ps(mean[i]), vr = _mm512_set1_ps(rstd[i]);
        __m512d sg0 = _mm512_setzero_pd(), sg1 = sg0, sx0 = sg0, sx1 = sg0;
        for (int j = 0; j < C; j += 16) {
            __mmask16 k = tail_mask((size_t)(C - j));
            __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr);
            __m512 d = _mm512_maskz_loadu_ps(k, dy + j), g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(k, scale + j));
            __m512d lo, hi;
            widen(g, &lo, &hi);  // masked-off lanes are 0
            sg0 = _mm512_add_pd(sg0, lo), sg1 = _mm512_add_pd(sg1, hi);
            widen(_mm512_maskz_mul_ps(k, g, xhat), &lo, &hi);
            sx0 = _mm512_add_pd(sx0, lo), sx1 = _mm512_add_pd(sx1, hi);
            add_to_doubles(ps + j, _mm512_mul_ps(d, xhat), k);
            add_to_doubles(pb + j, d, k);
        }
        float mg = (float)(_mm512_reduce_add_pd(_mm512_add_pd(sg0, sg1)) / C);
        float mgx = (float)(_mm512_reduce_add_pd(_mm512_add_pd(sx0, sx1)) / C);
        const __m512 vmg = _mm512_set1_ps(mg), vmgx = _mm512_set1_ps(mgx);
        for (int j = 0; j < C; j += 16) {  // dx += r (dy scale - mg - xhat mgx), as the scalar loop
            __mmask16 k = tail_mask((size_t)(C - j));
            __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr);
            __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + j), _mm512_maskz_loadu_ps(k, scale + j));
            t = _mm512_sub_ps(_mm512_sub_ps(t, vmg), _mm512_mul_ps(xhat, vmgx));
            store16(dx + j, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + j), _mm512_mul_ps(vr, t)));
        }
    }
}

void AVX512 cpu_avx512_residual_row(float *sum, const float *x, const float *y, size_t at, int C, float rate,
                                    uint64_t seed, uint32_t step, uint32_t site) {
    uint32_t bits[SPAN_WORDS];
    const float keep = 1.0f - rate, inv = 1.0f / keep;
    const __m512 vk = _mm512_set1_ps(keep), vi = _mm512_set1_ps(inv);
    for (int j0 = 0; j0 < C; j0 += SPAN) {
        size_t n = C - j0 < SPAN ? (size_t)(C - j0) : SPAN;
        const uint32_t *b = rate > 0 ? span_bits(bits, at + j0, n, seed, step, site) : NULL;
        for (size_t k = 0; k < n; k += 16) {
            __mmask16 m = tail_mask(n - k);
            __m512 v = _mm512_maskz_loadu_ps(m, y + j0 + k);
            if (b) v = _mm512_maskz_mul_ps(keep_mask(b + k, m, vk), v, vi);
            store16(sum + j0 + k, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + j0 + k), v));
        }
    }
}

// ---- bf16 --------------------------------------------------------------------------------

// bf16_bits of cpu_ops.c: round to nearest even; NaN -> quiet NaN with its sign and payload top.
static AVX512 inline __m256i v_bf16_bits(__m512i u) {
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __m512i nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    __mmask16 isnan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                              _mm512_set1_epi32(0x7f800000));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(isnan, rounded, nan));
}

static AVX512 inline void store16_bf16(uint16_t *p, __mmask16 m, __m256i v) {
    if (m == 0xffff)
        _mm256_storeu_si256((__m256i *)p, v);
    else
        _mm256_mask_storeu_epi16(p, m, v);
}

void AVX512 cpu_avx512_to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        store16_bf16(dst + i, m, v_bf16_bits(_mm512_maskz_loadu_epi32(m, src + i)));
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))) void cpu_avx512_to_bf16_native(
    uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
        __m256i r = (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(u));
        // vcvtneps2bf16 reads denormals as zero; those lanes take the integer rounding.
        __m512i exponent = _mm512_and_si512(u, _mm512_set1_epi32(0x7f800000));
        __mmask16 denormal = _mm512_mask_test_epi32_mask(_mm512_cmpeq_epi32_mask(exponent, _mm512_setzero_si512()),
                                                         u, _mm512_set1_epi32(0x007fffff));
        if (denormal) r = _mm256_mask_blend_epi16(denormal, r, v_bf16_bits(u));
        store16_bf16(dst + i, m, r);
    }
}

void AVX512 cpu_avx512_from_bf16(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i)), 16);
        store16(dst + i, m, _mm512_castsi512_ps(u));
    }
}
