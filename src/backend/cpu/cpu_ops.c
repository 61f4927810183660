// Everything of the CPU backend that is not a matrix product: OpenMP loops over rows, with
// AVX-512 kernels (cpu_ops_avx512.c) chosen at run time where the CPU has them.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu.h"
#include "cpu_isa.h"
#include "cpu_math.h"
#include "cpu_ops_avx512.h"
#include "util/rng.h"
#include "util/status.h"

double *cpu_partials(Backend *be, size_t n) {
    CpuState *s = be->impl;
    if (n > s->partials_floats) {
        double *grown = malloc(n * sizeof(double));
        if (!grown) {
            if (!*s->failure)
                snprintf(s->failure, sizeof s->failure, "CPU backend: out of memory for %.1f MiB of reduction scratch",
                         n * sizeof(double) / 1048576.0);
            return NULL;
        }
        free(s->partials);
        s->partials = grown;
        s->partials_floats = n;
    }
    return s->partials;
}

int cpu_failed(Backend *be) {
    CpuState *s = be->impl;
    return *s->failure ? vit_fail("%s", s->failure) : VIT_OK;
}

void cpu_fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

// Column reductions split the rows into fixed chunks, each summed in double into its own
// partial row, then the partials are added in chunk order: the result does not depend on the
// thread count. Chunk c covers rows [chunk_row(rows, chunks, c), chunk_row(.., c + 1)).
static inline int reduce_chunks(int rows) { return rows < CPU_REDUCE_CHUNKS ? rows : CPU_REDUCE_CHUNKS; }
static inline int chunk_row(int rows, int chunks, int c) { return (int)((long)rows * c / chunks); }

// acc[j] += sum over chunks of part[c][j].
static void add_chunk_sums(float *acc, const double *part, int chunks, int cols) {
    for (int j = 0; j < cols; j++) {
        double s = 0;
        for (int c = 0; c < chunks; c++) s += part[(size_t)c * cols + j];
        acc[j] += (float)s;
    }
}

// The AVX-512 kernels of cpu_ops_avx512.c, where the CPU has them and VIT_CPU_ISA allows.
// Decided once per op call, outside the parallel loops.
static inline int use_avx512(void) { return cpu_isa() >= CPU_ISA_AVX512; }

// Elementwise AVX-512 loops hand each thread runs of this many elements.
enum { AVX512_RUN = 4096 };

// Column sums of the rows x cols matrix `x`, added to acc.
static void column_sums(Backend *be, float *acc, const float *x, int rows, int cols) {
    int chunks = reduce_chunks(rows), avx512 = use_avx512();
    double *part = cpu_partials(be, (size_t)chunks * cols);
    if (!part) {
        cpu_fill_nan(acc, (size_t)cols);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < chunks; c++) {
        double *p = part + (size_t)c * cols;
        for (int j = 0; j < cols; j++) p[j] = 0;
        if (avx512) {
            cpu_avx512_column_sums_rows(p, x, chunk_row(rows, chunks, c), chunk_row(rows, chunks, c + 1), cols);
            continue;
        }
        for (int i = chunk_row(rows, chunks, c); i < chunk_row(rows, chunks, c + 1); i++) {
            const float *row = x + (size_t)i * cols;
            for (int j = 0; j < cols; j++) p[j] += row[j];
        }
    }
    add_chunk_sums(acc, part, chunks, cols);
}

static void bias_backward(Backend *be, float *dbias, const float *dout, int M, int N) {
    column_sums(be, dbias, dout, M, N);
}

// One row of LayerNorm, shared by layernorm_forward and the fused residual_layernorm_forward
// so that both round alike.
static inline void layernorm_row(float *y, float *mean, float *rstd, const float *x, const float *scale,
                                 const float *bias, int C, float eps) {
    double m = 0;
    for (int j = 0; j < C; j++) m += x[j];
    m /= C;
    double v = 0;
    for (int j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
    v /= C;
    float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
    for (int j = 0; j < C; j++) y[j] = (x[j] - mf) * s * scale[j] + bias[j];
    *mean = mf;
    *rstd = s;
}

static void layernorm_forward(Backend *be, float *out, float *mean, float *rstd, const float *inp,
                              const float *scale, const float *bias, int rows, int C, float eps) {
    int avx512 = use_avx512();
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++)
        (avx512 ? cpu_avx512_layernorm_row : layernorm_row)(out + (size_t)i * C, mean + i, rstd + i,
                                                            inp + (size_t)i * C, scale, bias, C, eps);
}

static void layernorm_backward(Backend *be, float *dinp, float *dscale, float *dbias, const float *dout,
                               const float *inp, const float *scale, const float *mean, const float *rstd,
                               int rows, int C) {
    int chunks = reduce_chunks(rows), avx512 = use_avx512();
    double *part = cpu_partials(be, (size_t)chunks * 2 * C);
    if (!part) {
        cpu_fill_nan(dinp, (size_t)rows * C), cpu_fill_nan(dscale, (size_t)C), cpu_fill_nan(dbias, (size_t)C);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < chunks; c++) {
        double *ps = part + (size_t)c * 2 * C, *pb = ps + C;
        for (int j = 0; j < 2 * C; j++) ps[j] = 0;
        int r0 = chunk_row(rows, chunks, c), r1 = chunk_row(rows, chunks, c + 1);
        if (avx512) {
            cpu_avx512_layernorm_backward_rows(dinp, ps, pb, dout, inp, scale, mean, rstd, r0, r1, C);
            continue;
        }
        for (int i = r0; i < r1; i++) {
            const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
            float *dx = dinp + (size_t)i * C;
            float m = mean[i], r = rstd[i];
            // dx = r * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * scale
            double sg = 0, sgx = 0;
            for (int j = 0; j < C; j++) {
                float xhat = (x[j] - m) * r, g = dy[j] * scale[j];
                sg += g;
                sgx += g * xhat;
                ps[j] += dy[j] * xhat;
                pb[j] += dy[j];
            }
            float mg = (float)(sg / C), mgx = (float)(sgx / C);
            for (int j = 0; j < C; j++) {
                float xhat = (x[j] - m) * r;
                dx[j] += r * (dy[j] * scale[j] - mg - xhat * mgx);
            }
        }
    }
    for (int j = 0; j < C; j++) {
        double s = 0, b = 0;
        for (int c = 0; c < chunks; c++) {
            s += part[(size_t)c * 2 * C + j];
            b += part[(size_t)c * 2 * C + C + j];
        }
        dscale[j] += (float)s;
        dbias[j] += (float)b;
    }
}

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

// GELU and its derivative, shared by the plain and the fused ops (same rounding in both).
static inline float gelu_tanh(float x) { return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x))); }
static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + cpu_erff(x * INV_SQRT_2)); }

static inline float gelu_tanh_grad(float x) {
    float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x), t = tanhf(u);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

static inline float gelu_erf_grad(float x) {
    float cdf = 0.5f * (1.0f + cpu_erff(x * INV_SQRT_2)), pdf = INV_SQRT_2PI * cpu_expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static void gelu_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx) {
    if (use_avx512()) {
        size_t runs = (n + AVX512_RUN - 1) / AVX512_RUN;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < runs; r++) {
            size_t i0 = r * AVX512_RUN;
            cpu_avx512_gelu_forward(out + i0, inp + i0, n - i0 < AVX512_RUN ? n - i0 : AVX512_RUN, tanh_approx);
        }
    } else if (tanh_approx) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = gelu_tanh(inp[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = gelu_erf(inp[i]);
    }
}

static void gelu_backward(Backend *be, float *dinp, const float *inp, const float *dout, size_t n,
                          int tanh_approx) {
    if (use_avx512()) {
        size_t runs = (n + AVX512_RUN - 1) / AVX512_RUN;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < runs; r++) {
            size_t i0 = r * AVX512_RUN, len = n - i0 < AVX512_RUN ? n - i0 : AVX512_RUN;
            cpu_avx512_gelu_backward(dinp + i0, inp + i0, dout + i0, len, tanh_approx);
        }
    } else if (tanh_approx) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * gelu_tanh_grad(inp[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * gelu_erf_grad(inp[i]);
    }
}

static void tanh_forward(Backend *be, float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = tanhf(inp[i]);
}

static void tanh_backward(Backend *be, float *dinp, const float *out, const float *dout, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * (1.0f - out[i] * out[i]);
}

static void dropout_apply(float *out, const float *inp, size_t n, float rate, uint64_t seed, uint32_t step,
                          uint32_t site) {
    float keep = 1.0f - rate, inv = 1.0f / keep;
    // One Philox call decides four neighbouring elements (the bits rng_keep reads); blocks
    // of 64 calls are generated first so the generator loop vectorises.
    enum { GROUPS = 64, BLOCK = 4 * GROUPS };
    size_t blocks = (n + BLOCK - 1) / BLOCK;
    int avx512 = use_avx512();
#pragma omp parallel for schedule(static)
    for (size_t bi = 0; bi < blocks; bi++) {
        if (avx512) {
            size_t i0 = bi * BLOCK;
            cpu_avx512_dropout(out + i0, inp + i0, i0, n - i0 < BLOCK ? n - i0 : BLOCK, keep, inv, seed, step, site);
            continue;
        }
        uint32_t bits[BLOCK];
        size_t g0 = bi * GROUPS;
        for (int g = 0; g < GROUPS; g++) {
            size_t gi = g0 + g;
            Philox4 r = philox4x32(seed, (uint32_t)gi, (uint32_t)(gi >> 32), site, step);
            bits[4 * g] = r.v[0], bits[4 * g + 1] = r.v[1], bits[4 * g + 2] = r.v[2], bits[4 * g + 3] = r.v[3];
        }
        size_t i0 = bi * BLOCK, len = n - i0 < BLOCK ? n - i0 : BLOCK;
        for (size_t k = 0; k < len; k++) out[i0 + k] = rng_u01(bits[k]) < keep ? inp[i0 + k] * inv : 0.0f;
    }
}

static void dropout_forward(Backend *be, float *out, const float *inp, size_t n, float rate, uint64_t seed,
                            uint32_t step, uint32_t site) {
    dropout_apply(out, inp, n, rate, seed, step, site);
}

// The mask is a pure function of (seed, step, site, i), so backward regenerates it.
static void dropout_backward(Backend *be, float *dinp, const float *dout, size_t n, float rate, uint64_t seed,
                             uint32_t step, uint32_t site) {
    dropout_apply(dinp, dout, n, rate, seed, step, site);
}

static void add(Backend *be, float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// ---- fused ops -------------------------------------------------------------------------
// The fused loops walk their elements in spans of MASK_SPAN and draw the dropout mask of a
// span first, a loop the compiler vectorises; rate 0 skips the generator.
enum { MASK_SPAN = 256 };

// Per element i0 + k (k < len <= MASK_SPAN): the dropout multiplier, inv where rng_keep keeps
// it and 0 where it drops it; the same bits as dropout_apply for the same element.
static void dropout_span(float *mult, size_t i0, size_t len, float keep, float inv, uint64_t seed, uint32_t step,
                         uint32_t site) {
    uint32_t bits[MASK_SPAN + 8];
    size_t g0 = i0 >> 2, groups = ((i0 + len + 3) >> 2) - g0;
    for (size_t g = 0; g < groups; g++) {
        size_t gi = g0 + g;
        Philox4 r = philox4x32(seed, (uint32_t)gi, (uint32_t)(gi >> 32), site, step);
        bits[4 * g] = r.v[0], bits[4 * g + 1] = r.v[1], bits[4 * g + 2] = r.v[2], bits[4 * g + 3] = r.v[3];
    }
    const uint32_t *b = bits + (i0 & 3);
    for (size_t k = 0; k < len; k++) mult[k] = rng_u01(b[k]) < keep ? inv : 0.0f;
}

// y * multiplier, written as dropout_apply writes it (a dropped element is +0 whatever y is).
static inline float dropped(float y, float mult) { return mult != 0.0f ? y * mult : 0.0f; }

static void residual_layernorm_forward(Backend *be, float *sum, float *out, float *mean, float *rstd,
                                       const float *x, const float *y, const float *scale, const float *bias,
                                       int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                       uint32_t site) {
    float keep = 1.0f - rate, inv = 1.0f / keep;
    int avx512 = use_avx512();
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        size_t row = (size_t)i * C;
        if (avx512) {
            cpu_avx512_residual_row(sum + row, x + row, y + row, row, C, rate, seed, step, site);
            if (out) cpu_avx512_layernorm_row(out + row, mean + i, rstd + i, sum + row, scale, bias, C, eps);
            continue;
        }
        float mult[MASK_SPAN];
        for (int j0 = 0; j0 < C; j0 += MASK_SPAN) {
            int len = C - j0 < MASK_SPAN ? C - j0 : MASK_SPAN;
            const float *xs = x + row + j0, *ys = y + row + j0;
            float *ss = sum + row + j0;
            if (rate > 0) {
                dropout_span(mult, row + j0, (size_t)len, keep, inv, seed, step, site);
                for (int k = 0; k < len; k++) ss[k] = xs[k] + dropped(ys[k], mult[k]);
            } else {
                for (int k = 0; k < len; k++) ss[k] = xs[k] + ys[k];
            }
        }
        if (out) layernorm_row(out + row, mean + i, rstd + i, sum + row, scale, bias, C, eps);
    }
}

static void gelu_dropout_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx, float rate,
                                 uint64_t seed, uint32_t step, uint32_t site) {
    if (rate <= 0) {
        gelu_forward(be, out, inp, n, tanh_approx);
        return;
    }
    float keep = 1.0f - rate, inv = 1.0f / keep;
    size_t spans = (n + MASK_SPAN - 1) / MASK_SPAN;
    int avx512 = use_avx512();
#pragma omp parallel for schedule(static)
    for (size_t si = 0; si < spans; si++) {
        float mult[MASK_SPAN];
        size_t i0 = si * MASK_SPAN, len = n - i0 < MASK_SPAN ? n - i0 : MASK_SPAN;
        if (avx512) {
            cpu_avx512_gelu_dropout_forward(out + i0, inp + i0, i0, len, tanh_approx, keep, inv, seed, step, site);
            continue;
        }
        dropout_span(mult, i0, len, keep, inv, seed, step, site);
        const float *xs = inp + i0;
        float *ys = out + i0;
        if (tanh_approx)
            for (size_t k = 0; k < len; k++) ys[k] = dropped(gelu_tanh(xs[k]), mult[k]);
        else
            for (size_t k = 0; k < len; k++) ys[k] = dropped(gelu_erf(xs[k]), mult[k]);
    }
}

// Row chunks and double partial sums as column_sums, so dbias equals bias_backward's.
static void gelu_dropout_backward(Backend *be, float *dinp, float *dbias, const float *inp, const float *dout,
                                  int rows, int cols, int tanh_approx, float rate, uint64_t seed, uint32_t step,
                                  uint32_t site) {
    float keep = 1.0f - rate, inv = 1.0f / keep;
    int chunks = reduce_chunks(rows), avx512 = use_avx512();
    double *part = cpu_partials(be, (size_t)chunks * cols);
    if (!part) {
        cpu_fill_nan(dinp, (size_t)rows * cols), cpu_fill_nan(dbias, (size_t)cols);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < chunks; c++) {
        double *p = part + (size_t)c * cols;
        for (int j = 0; j < cols; j++) p[j] = 0;
        if (avx512) {
            cpu_avx512_gelu_dropout_backward_rows(dinp, p, inp, dout, chunk_row(rows, chunks, c),
                                                  chunk_row(rows, chunks, c + 1), cols, tanh_approx, rate, seed,
                                                  step, site);
            continue;
        }
        float mult[MASK_SPAN], d[MASK_SPAN];
        for (int i = chunk_row(rows, chunks, c); i < chunk_row(rows, chunks, c + 1); i++) {
            for (int j0 = 0; j0 < cols; j0 += MASK_SPAN) {
                size_t at = (size_t)i * cols + j0;
                int len = cols - j0 < MASK_SPAN ? cols - j0 : MASK_SPAN;
                const float *xs = inp + at, *dy = dout + at;
                if (rate > 0) {
                    dropout_span(mult, at, (size_t)len, keep, inv, seed, step, site);
                    for (int k = 0; k < len; k++) d[k] = dropped(dy[k], mult[k]);
                } else {
                    for (int k = 0; k < len; k++) d[k] = dy[k];
                }
                if (tanh_approx)
                    for (int k = 0; k < len; k++) d[k] = d[k] * gelu_tanh_grad(xs[k]);
                else
                    for (int k = 0; k < len; k++) d[k] = d[k] * gelu_erf_grad(xs[k]);
                float *dx = dinp + at;
                double *pj = p + j0;
                for (int k = 0; k < len; k++) {
                    dx[k] = d[k];
                    pj[k] += d[k];
                }
            }
        }
    }
    add_chunk_sums(dbias, part, chunks, cols);
}

static void scale(Backend *be, float *x, size_t n, float s) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static double sum_squares(Backend *be, const float *x, size_t n) {
    double part[CPU_REDUCE_CHUNKS];
#pragma omp parallel for schedule(static)
    for (int c = 0; c < CPU_REDUCE_CHUNKS; c++) {
        size_t i0 = n * c / CPU_REDUCE_CHUNKS, i1 = n * (c + 1) / CPU_REDUCE_CHUNKS;
        // 16 running sums, element i into sum i % 16, then added in order: the same bits on
        // every instruction set (the products are exact in double), and no chain of
        // dependent additions to wait on (one sum ran at a fifth of memory speed).
        double lane[16] = {0};
        size_t i = i0;
        for (; i + 16 <= i1; i += 16)
            for (int j = 0; j < 16; j++) lane[j] += (double)x[i + j] * x[i + j];
        for (int j = 0; i < i1; i++, j++) lane[j] += (double)x[i] * x[i];
        double s = 0;
        for (int j = 0; j < 16; j++) s += lane[j];
        part[c] = s;
    }
    double s = 0;
    for (int c = 0; c < CPU_REDUCE_CHUNKS; c++) s += part[c];
    return s;
}

static void patchify(Backend *be, float *patches, const uint8_t *images, int B, int S, int C, int P) {
    int G = S / P, len = P * P * C;
    const float k = 2.0f / 255.0f;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G * G; g++) {
            int gy = g / G, gx = g % G;
            float *dst = patches + ((size_t)b * G * G + g) * len;
            for (int py = 0; py < P; py++) {
                const uint8_t *src = images + (((size_t)b * S + gy * P + py) * S + gx * P) * C;
                for (int i = 0; i < P * C; i++) dst[py * P * C + i] = (float)src[i] * k - 1.0f;
            }
        }
}

static void tokens_forward(Backend *be, float *x, const float *emb, const float *cls, const float *pos, int B,
                           int T, int D) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *dst = x + ((size_t)b * T + t) * D;
            const float *src = t == 0 ? cls : emb + ((size_t)b * (T - 1) + t - 1) * D;
            const float *p = pos + (size_t)t * D;
            for (int j = 0; j < D; j++) dst[j] = src[j] + p[j];
        }
}

static void tokens_backward(Backend *be, float *demb, float *dcls, float *dpos, const float *dx, int B, int T,
                            int D) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 1; t < T; t++)
            memcpy(demb + ((size_t)b * (T - 1) + t - 1) * D, dx + ((size_t)b * T + t) * D, D * sizeof(float));
    // dpos[t] += sum_b dx[b, t]; fixed summation order over b.
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int b = 0; b < B; b++) s += dx[((size_t)b * T + t) * D + j];
            dpos[(size_t)t * D + j] += (float)s;
            if (t == 0) dcls[j] += (float)s;
        }
    }
}

static void gather_cls(Backend *be, float *out, const float *x, int B, int T, int D) {
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * D, x + (size_t)b * T * D, D * sizeof(float));
}

static void scatter_cls(Backend *be, float *dx, const float *dcls, int B, int T, int D) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *dst = dx + (size_t)b * T * D;
        memcpy(dst, dcls + (size_t)b * D, D * sizeof(float));
        memset(dst + D, 0, (size_t)(T - 1) * D * sizeof(float));
    }
}

static void xent_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels, int B,
                         int K, float smoothing) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        float *p = probs + (size_t)b * K;
        double mx = z[0];
        for (int k = 1; k < K; k++)
            if (z[k] > mx) mx = z[k];
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp(z[k] - mx);
        double lse = mx + log(sum);
        double loss = 0;  // -sum_k target_k * log p_k, target = (1-s) onehot + s/K
        for (int k = 0; k < K; k++) {
            double logp = z[k] - lse;
            p[k] = (float)exp(logp);
            double target = smoothing / K + (k == labels[b] ? 1.0 - smoothing : 0.0);
            loss -= target * logp;
        }
        losses[b] = (float)loss;
    }
}

static void xent_backward(Backend *be, float *dlogits, const float *probs, const int *labels, int B, int K,
                          float smoothing, float scale_) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) {
            float target = smoothing / K + (k == labels[b] ? 1.0f - smoothing : 0.0f);
            dlogits[(size_t)b * K + k] = scale_ * (probs[(size_t)b * K + k] - target);
        }
}

// fp32 -> bf16 bits, round to nearest even; a NaN stays a (quiet) NaN instead of rounding
// into infinity. Written branch-free so the loop vectorises.
static inline uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// The AVX-512 conversions in runs of AVX512_RUN, threaded from the same size as the loops below.
static void to_bf16(Backend *be, uint16_t *dst, const float *src, size_t n) {
    if (use_avx512()) {
        void (*kernel)(uint16_t *, const float *, size_t) =
            cpu_has_avx512_bf16() ? cpu_avx512_to_bf16_native : cpu_avx512_to_bf16;
        size_t runs = (n + AVX512_RUN - 1) / AVX512_RUN;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t r = 0; r < runs; r++) {
            size_t i0 = r * AVX512_RUN;
            kernel(dst + i0, src + i0, n - i0 < AVX512_RUN ? n - i0 : AVX512_RUN);
        }
        return;
    }
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = bf16_bits(src[i]);
}

static void from_bf16(Backend *be, float *dst, const uint16_t *src, size_t n) {
    if (use_avx512()) {
        size_t runs = (n + AVX512_RUN - 1) / AVX512_RUN;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t r = 0; r < runs; r++) {
            size_t i0 = r * AVX512_RUN;
            cpu_avx512_from_bf16(dst + i0, src + i0, n - i0 < AVX512_RUN ? n - i0 : AVX512_RUN);
        }
        return;
    }
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, sizeof u);
    }
}

void cpu_install_ops(Backend *be) {
    be->bias_backward = bias_backward;
    be->layernorm_forward = layernorm_forward;
    be->layernorm_backward = layernorm_backward;
    be->gelu_forward = gelu_forward;
    be->gelu_backward = gelu_backward;
    be->tanh_forward = tanh_forward;
    be->tanh_backward = tanh_backward;
    be->dropout_forward = dropout_forward;
    be->dropout_backward = dropout_backward;
    be->add = add;
    be->residual_layernorm_forward = residual_layernorm_forward;
    be->gelu_dropout_forward = gelu_dropout_forward;
    be->gelu_dropout_backward = gelu_dropout_backward;
    be->scale = scale;
    be->sum_squares = sum_squares;
    be->patchify = patchify;
    be->tokens_forward = tokens_forward;
    be->tokens_backward = tokens_backward;
    be->gather_cls = gather_cls;
    be->scatter_cls = scatter_cls;
    be->xent_forward = xent_forward;
    be->xent_backward = xent_backward;
    be->to_bf16 = to_bf16;
    be->from_bf16 = from_bf16;
}
