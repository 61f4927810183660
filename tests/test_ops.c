// Every CPU backend op: forward against a naive fp64 loop, backward against central
// finite differences of a random projection L = sum(out * R).
#include <omp.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_ops_avx512.h"
#include "check.h"
#include "util/rng.h"

static Backend *be;

static float *randn(size_t n, uint32_t stream, float s) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * rng_normal(42, stream, i));
    return x;
}

static double dotf(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

// ---- gemm -------------------------------------------------------------------------------
static void test_gemm(void) {
    int cases[][7] = {  // batch, M, N, K, transA, transB, accumulate
        {1, 5, 7, 3, 0, 0, 0}, {1, 33, 17, 65, 1, 0, 0}, {1, 16, 9, 31, 0, 1, 0},
        {3, 8, 6, 5, 1, 1, 0}, {4, 13, 11, 7, 0, 1, 1}, {2, 9, 10, 12, 1, 0, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int bt = cases[c][0], M = cases[c][1], N = cases[c][2], K = cases[c][3], ta = cases[c][4], tb = cases[c][5],
            acc = cases[c][6];
        float *A = randn((size_t)bt * M * K, 1, 1), *B = randn((size_t)bt * K * N, 2, 1),
              *C = randn((size_t)bt * M * N, 3, 1), *bias = randn(N, 4, 1);
        double *ref = malloc(sizeof(double) * bt * M * N);
        int use_bias = c % 2 == 0;
        float alpha = c == 2 || c == 3 ? 0.25f : 1.0f;  // case 2: alpha with a bias
        for (int b = 0; b < bt; b++)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) {
                        double a = ta ? A[(size_t)b * M * K + k * M + i] : A[(size_t)b * M * K + i * K + k];
                        double w = tb ? B[(size_t)b * K * N + j * K + k] : B[(size_t)b * K * N + k * N + j];
                        s += a * w;
                    }
                    s *= alpha;
                    if (use_bias) s += bias[j];
                    if (acc) s += C[(size_t)b * M * N + i * N + j];
                    ref[(size_t)b * M * N + i * N + j] = s;
                }
        int rc = be->gemm(be, bt, M, N, K, A, ta, B, tb, C, use_bias ? bias : NULL, alpha, acc);
        double md = 0;
        for (size_t i = 0; i < (size_t)bt * M * N; i++) md = fmax(md, fabs(C[i] - ref[i]));
        CHECK(rc == 0 && md < 1e-4, "gemm case %zu: max diff %g", c, md);
        free(A), free(B), free(C), free(bias), free(ref);
    }
}

// The fused inference epilogue: GELU(A @ B + bias), exact erf and the tanh approximation,
// against fp64 products and the fp64 GELU.
static void test_gemm_bias_gelu(void) {
    CHECK(be->gemm_bias_gelu != NULL, "the CPU backend fuses GELU into products");
    if (!be->gemm_bias_gelu) return;
    int M = 37, N = 29, K = 50;
    float *A = randn((size_t)M * K, 21, 1), *B = randn((size_t)K * N, 22, 0.3), *bias = randn(N, 23, 1);
    float *C = malloc(sizeof(float) * M * N);
    for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
        int rc = be->gemm_bias_gelu(be, M, N, K, A, B, C, bias, tanh_approx);
        double md = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double x = bias[j];
                for (int k = 0; k < K; k++) x += (double)A[i * K + k] * B[(size_t)k * N + j];
                double g = tanh_approx ? 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)))
                                       : 0.5 * x * (1 + erf(x / sqrt(2.0)));
                md = fmax(md, fabs(C[i * N + j] - g) / (1 + fabs(g)));
            }
        CHECK(rc == 0 && md < 1e-5, "gemm_bias_gelu (%s): max relative diff %g", tanh_approx ? "tanh" : "erf", md);
    }
    free(A), free(B), free(C), free(bias);
}

// bf16 mode: every product sees both operands rounded to bf16 (nearest even), so against
// fp64 products of the rounded values it is exact up to fp32 summation, and it differs from
// the fp32 product by the rounding.
static float round_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static void test_gemm_bf16(void) {
    int M = 37, N = 29, K = 300;
    float *A = randn((size_t)M * K, 11, 1), *B = randn((size_t)K * N, 12, 1), *bias = randn(N, 13, 1);
    float *C = malloc(sizeof(float) * M * N), *C32 = malloc(sizeof(float) * M * N);
    backend_cpu_set_bf16(be, 1);
    int rc = be->gemm(be, 1, M, N, K, A, 0, B, 1, C, bias, 1.0f, 0);  // B used transposed: (N, K) read as (K, N)
    backend_cpu_set_bf16(be, 0);
    rc |= be->gemm(be, 1, M, N, K, A, 0, B, 1, C32, bias, 1.0f, 0);
    double md = 0, m32 = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = bias[j];
            for (int k = 0; k < K; k++) s += (double)round_to_bf16(A[i * K + k]) * round_to_bf16(B[(size_t)j * K + k]);
            md = fmax(md, fabs(C[i * N + j] - s));
            m32 = fmax(m32, fabs(C32[i * N + j] - s));
        }
    CHECK(rc == 0 && md < 2e-4, "bf16 gemm equals fp64 products of bf16-rounded operands (max diff %g)", md);
    CHECK(m32 > 10 * md, "bf16 gemm differs from the fp32 one by the rounding (fp32 off by %g, bf16 by %g)", m32, md);
    CHECK(round_to_bf16(1.0f + 1.0f / 256) == 1.0f && round_to_bf16(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256,
          "round to nearest even at bf16's 8-bit mantissa");
    free(A), free(B), free(bias), free(C), free(C32);
}

// ---- layernorm --------------------------------------------------------------------------
static double ln_loss(const float *x, const float *w, const float *b, const float *R, int rows, int C) {
    float *out = malloc(sizeof(float) * rows * C), *mean = malloc(sizeof(float) * rows), *rstd = malloc(sizeof(float) * rows);
    be->layernorm_forward(be, out, mean, rstd, x, w, b, rows, C, 1e-6f);
    double l = dotf(out, R, (size_t)rows * C);
    free(out), free(mean), free(rstd);
    return l;
}

static void test_layernorm(void) {
    int rows = 6, C = 37;
    float *x = randn((size_t)rows * C, 10, 2), *w = randn(C, 11, 1), *b = randn(C, 12, 1), *R = randn((size_t)rows * C, 13, 1);
    for (int i = 0; i < rows * C; i++) x[i] += 0.5f;
    float *out = malloc(sizeof(float) * rows * C), *mean = malloc(sizeof(float) * rows), *rstd = malloc(sizeof(float) * rows);
    be->layernorm_forward(be, out, mean, rstd, x, w, b, rows, C, 1e-6f);
    double md = 0;
    for (int i = 0; i < rows; i++) {
        double m = 0, v = 0;
        for (int j = 0; j < C; j++) m += x[i * C + j];
        m /= C;
        for (int j = 0; j < C; j++) v += (x[i * C + j] - m) * (x[i * C + j] - m);
        v /= C;
        for (int j = 0; j < C; j++) md = fmax(md, fabs(out[i * C + j] - ((x[i * C + j] - m) / sqrt(v + 1e-6) * w[j] + b[j])));
    }
    CHECK(md < 1e-5, "layernorm forward: max diff %g", md);
    float *dx = calloc((size_t)rows * C, sizeof(float)), *dw = calloc(C, sizeof(float)), *db = calloc(C, sizeof(float));
    be->layernorm_backward(be, dx, dw, db, R, x, w, mean, rstd, rows, C);
    float *targets[3] = {x, w, b}, *grads[3] = {dx, dw, db};
    int sizes[3] = {rows * C, C, C};
    const char *names[3] = {"dx", "dscale", "dbias"};
    for (int t = 0; t < 3; t++) {
        double worst = 0;
        for (int i = 0; i < sizes[t]; i += 3) {
            float keep = targets[t][i], h = 1e-2f;
            targets[t][i] = keep + h;
            double lp = ln_loss(x, w, b, R, rows, C);
            targets[t][i] = keep - h;
            double lm = ln_loss(x, w, b, R, rows, C);
            targets[t][i] = keep;
            double fd = (lp - lm) / (2 * h);
            worst = fmax(worst, fabs(fd - grads[t][i]) / fmax(1.0, fabs(fd)));
        }
        CHECK(worst < 2e-3, "layernorm backward %s vs finite differences: %g", names[t], worst);
    }
    free(x), free(w), free(b), free(R), free(out), free(mean), free(rstd), free(dx), free(dw), free(db);
}

// ---- elementwise ------------------------------------------------------------------------
static void test_activations(void) {
    size_t n = 301;
    float *x = randn(n, 20, 2), *out = malloc(n * sizeof(float)), *d = malloc(n * sizeof(float)),
          *ones = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
    for (int approx = 0; approx < 2; approx++) {
        be->gelu_forward(be, out, x, n, approx);
        be->gelu_backward(be, d, x, ones, n, approx);
        double mf = 0, mb = 0;
        for (size_t i = 0; i < n; i++) {
            double v = x[i];
            double ref = approx ? 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))
                                : 0.5 * v * (1 + erf(v / sqrt(2.0)));
            mf = fmax(mf, fabs(out[i] - ref));
            double h = 1e-3, vp = v + h, vm = v - h, fp, fm;
            if (approx) {
                fp = 0.5 * vp * (1 + tanh(sqrt(2 / M_PI) * (vp + 0.044715 * vp * vp * vp)));
                fm = 0.5 * vm * (1 + tanh(sqrt(2 / M_PI) * (vm + 0.044715 * vm * vm * vm)));
            } else {
                fp = 0.5 * vp * (1 + erf(vp / sqrt(2.0)));
                fm = 0.5 * vm * (1 + erf(vm / sqrt(2.0)));
            }
            mb = fmax(mb, fabs(d[i] - (fp - fm) / (2 * h)));
        }
        CHECK(mf < 1e-6, "gelu(%s) forward: max diff %g", approx ? "tanh" : "erf", mf);
        CHECK(mb < 1e-5, "gelu(%s) backward vs finite differences: %g", approx ? "tanh" : "erf", mb);
    }
    be->tanh_forward(be, out, x, n);
    be->tanh_backward(be, d, out, ones, n);
    double mf = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        mf = fmax(mf, fabs(out[i] - tanh(x[i])));
        mb = fmax(mb, fabs(d[i] - (tanh(x[i] + 1e-3) - tanh(x[i] - 1e-3)) / 2e-3));
    }
    CHECK(mf < 1e-6 && mb < 1e-5, "tanh forward %g backward %g", mf, mb);
    free(x), free(out), free(d), free(ones);
}

static void test_dropout(void) {
    size_t n = 100000;
    float *x = malloc(n * sizeof(float)), *y1 = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float)),
          *g = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = 1.0f;
    float rate = 0.3f;
    be->dropout_forward(be, y1, x, n, rate, 7, 3, 5);
    size_t kept = 0, wrong = 0;
    for (size_t i = 0; i < n; i++) {
        kept += y1[i] != 0;
        wrong += y1[i] != 0 && fabsf(y1[i] - 1.0f / 0.7f) > 1e-6f;
    }
    double frac = (double)kept / n;
    CHECK(fabs(frac - 0.7) < 0.01 && wrong == 0, "dropout keeps %.4f (expected 0.7), %zu badly scaled", frac, wrong);
    be->dropout_backward(be, g, x, n, rate, 7, 3, 5);
    CHECK(!memcmp(g, y1, n * sizeof(float)), "dropout backward regenerates the forward mask");
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    be->dropout_forward(be, y2, x, n, rate, 7, 3, 5);
    omp_set_num_threads(threads);
    CHECK(!memcmp(y1, y2, n * sizeof(float)), "dropout mask independent of the thread count");
    be->dropout_forward(be, y2, x, n, rate, 7, 4, 5);
    CHECK(memcmp(y1, y2, n * sizeof(float)) != 0, "dropout mask changes with the step");
    free(x), free(y1), free(y2), free(g);
}

// ---- fused ops ----------------------------------------------------------------------------
// Each fused op against the composition of the plain ops it replaces, bit for bit: the
// model's numbers must not change when it uses them. Widths that are neither multiples of 4
// (a Philox group) nor of the fused loops' spans, and wider than one span.
static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

static void test_residual_layernorm(int rows, int C, float rate) {
    size_t n = (size_t)rows * C;
    float *x = randn(n, 60, 1.0f), *y = randn(n, 61, 2.0f), *w = randn(C, 62, 1.0f), *b = randn(C, 63, 0.5f);
    float *t = malloc(n * sizeof(float)), *sum_ref = malloc(n * sizeof(float)), *ln_ref = malloc(n * sizeof(float));
    float *sum = malloc(n * sizeof(float)), *ln = malloc(n * sizeof(float)), *alias = malloc(n * sizeof(float));
    float mr[64], rr[64], mf[64], rf[64];
    memcpy(t, y, n * sizeof(float));
    if (rate > 0) be->dropout_forward(be, t, t, n, rate, 9, 2, 4);
    be->add(be, sum_ref, x, t, n);
    be->layernorm_forward(be, ln_ref, mr, rr, sum_ref, w, b, rows, C, 1e-6f);
    be->residual_layernorm_forward(be, sum, ln, mf, rf, x, y, w, b, rows, C, 1e-6f, rate, 9, 2, 4);
    CHECK(same(sum, sum_ref, n) && same(ln, ln_ref, n) && same(mf, mr, rows) && same(rf, rr, rows),
          "residual_layernorm (%dx%d, rate %g) equals dropout + add + layernorm", rows, C, rate);
    memcpy(alias, x, n * sizeof(float));  // sum aliasing x, and no LayerNorm
    be->residual_layernorm_forward(be, alias, NULL, NULL, NULL, alias, y, NULL, NULL, rows, C, 0.0f, rate, 9, 2, 4);
    CHECK(same(alias, sum_ref, n), "residual_layernorm in place without LayerNorm (%dx%d, rate %g)", rows, C, rate);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    be->residual_layernorm_forward(be, sum, ln, mf, rf, x, y, w, b, rows, C, 1e-6f, rate, 9, 2, 4);
    omp_set_num_threads(threads);
    CHECK(same(sum, sum_ref, n) && same(ln, ln_ref, n), "residual_layernorm on one thread (%dx%d)", rows, C);
    free(x), free(y), free(w), free(b), free(t), free(sum_ref), free(ln_ref), free(sum), free(ln), free(alias);
}

static void test_gelu_dropout(int rows, int cols, float rate, int tanh_approx) {
    size_t n = (size_t)rows * cols;
    float *x = randn(n, 64, 2.0f), *dy = randn(n, 65, 1.0f), *ref = malloc(n * sizeof(float)),
          *out = malloc(n * sizeof(float));
    be->gelu_forward(be, ref, x, n, tanh_approx);
    if (rate > 0) be->dropout_forward(be, ref, ref, n, rate, 11, 3, 7);
    be->gelu_dropout_forward(be, out, x, n, tanh_approx, rate, 11, 3, 7);
    CHECK(same(out, ref, n), "gelu_dropout_forward (%s, rate %g) equals gelu + dropout", tanh_approx ? "tanh" : "erf",
          rate);
    float *db_ref = randn(cols, 66, 1.0f), *db = malloc(cols * sizeof(float));
    memcpy(db, db_ref, cols * sizeof(float));
    memcpy(ref, dy, n * sizeof(float));
    if (rate > 0) be->dropout_backward(be, ref, ref, n, rate, 11, 3, 7);
    be->gelu_backward(be, ref, x, ref, n, tanh_approx);
    be->bias_backward(be, db_ref, ref, rows, cols);
    memcpy(out, dy, n * sizeof(float));  // in place, as the model calls it
    be->gelu_dropout_backward(be, out, db, x, out, rows, cols, tanh_approx, rate, 11, 3, 7);
    CHECK(same(out, ref, n) && same(db, db_ref, cols),
          "gelu_dropout_backward (%dx%d, %s, rate %g) equals dropout + gelu + bias backward", rows, cols,
          tanh_approx ? "tanh" : "erf", rate);
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) dropped += out[i] == 0.0f && x[i] > -3.0f;  // GELU' is 0 below about -5.5
    CHECK(rate > 0 ? dropped > n * rate / 2 : dropped == 0, "gelu_dropout_backward drops %zu of %zu (rate %g)",
          dropped, n, rate);
    free(x), free(dy), free(ref), free(out), free(db_ref), free(db);
}

static void test_fused(void) {
    for (int r = 0; r < 2; r++) {
        float rate = r ? 0.1f : 0.0f;
        test_residual_layernorm(37, 77, rate);
        test_residual_layernorm(13, 300, rate);
        for (int t = 0; t < 2; t++) {
            test_gelu_dropout(53, 517, rate, t);
            test_gelu_dropout(70, 3, rate, t);
        }
    }
}

// ---- instruction sets -----------------------------------------------------------------------
// The kernels of each instruction set the CPU has (cpu_isa_force) against the generic loops:
// dropout masks, GELU with erf, bf16 conversions, column sums and LayerNorm's per-column
// partials bit for bit; LayerNorm (row sums in another order) and GELU's tanh form within a
// tolerance. Then one thread against two, bit for bit, under each.

static int isas[3], n_isas;  // the levels this CPU runs, generic first

static void find_isas(void) {
    for (int isa = CPU_ISA_GENERIC; isa <= CPU_ISA_AVX512; isa++)
        if ((int)cpu_isa_force(isa) == isa) isas[n_isas++] = isa;
    cpu_isa_force(CPU_ISA_AVX512 + 1);
}

// Widths around the kernels' 16 lanes, the 4 elements of a Philox call and the 256 of a span.
static const int widths[] = {1, 3, 16, 17, 37, 300, 517, 773};
enum { NWIDTHS = sizeof widths / sizeof widths[0] };

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) md = fmax(md, fabs((double)a[i] - b[i]));
    return md;
}

// All the ops below, at one width, into out (the caller compares two runs).
typedef struct {
    float *drop, *drop_back, *sum, *ln, *mean, *rstd, *ln_dx, *ln_dw, *ln_db, *gelu[2], *dgelu[2], *gd[2], *gd_dx[2],
        *gd_db[2], *colsum;
} OpRun;

static void op_run(OpRun *o, int rows, int C, int alloc) {
    size_t n = (size_t)rows * C;
    float *x = randn(n, 70, 2.0f), *y = randn(n, 71, 1.0f), *w = randn(C, 72, 1.0f), *b = randn(C, 73, 0.5f);
    float **all[] = {&o->drop, &o->drop_back, &o->sum, &o->ln, &o->ln_dx, &o->gelu[0], &o->gelu[1], &o->dgelu[0],
                     &o->dgelu[1], &o->gd[0], &o->gd[1], &o->gd_dx[0], &o->gd_dx[1]};
    if (alloc) {
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) *all[i] = malloc(n * sizeof(float));
        o->mean = malloc(rows * sizeof(float)), o->rstd = malloc(rows * sizeof(float));
        o->ln_dw = malloc(C * sizeof(float)), o->ln_db = malloc(C * sizeof(float));
        o->gd_db[0] = malloc(C * sizeof(float)), o->gd_db[1] = malloc(C * sizeof(float));
        o->colsum = malloc(C * sizeof(float));
    }
    be->dropout_forward(be, o->drop, x, n, 0.1f, 5, 6, 7);
    memcpy(o->drop_back, y, n * sizeof(float));  // in place
    be->dropout_backward(be, o->drop_back, o->drop_back, n, 0.5f, 5, 6, 8);
    be->residual_layernorm_forward(be, o->sum, o->ln, o->mean, o->rstd, x, y, w, b, rows, C, 1e-6f, 0.1f, 5, 7, 9);
    memset(o->ln_dx, 0, n * sizeof(float));
    for (int j = 0; j < C; j++) o->ln_dw[j] = o->ln_db[j] = o->colsum[j] = 0.5f;
    be->layernorm_backward(be, o->ln_dx, o->ln_dw, o->ln_db, y, o->sum, w, o->mean, o->rstd, rows, C);
    be->bias_backward(be, o->colsum, x, rows, C);
    for (int t = 0; t < 2; t++) {
        be->gelu_forward(be, o->gelu[t], x, n, t);
        be->gelu_backward(be, o->dgelu[t], x, y, n, t);
        be->gelu_dropout_forward(be, o->gd[t], x, n, t, 0.1f, 5, 8, 9);
        memcpy(o->gd_dx[t], y, n * sizeof(float));
        for (int j = 0; j < C; j++) o->gd_db[t][j] = 0.25f;
        be->gelu_dropout_backward(be, o->gd_dx[t], o->gd_db[t], x, o->gd_dx[t], rows, C, t, t ? 0.0f : 0.1f, 5, 8, 9);
    }
    free(x), free(y), free(w), free(b);
}

static void op_free(OpRun *o) {
    float *all[] = {o->drop, o->drop_back, o->sum, o->ln, o->ln_dx, o->gelu[0], o->gelu[1], o->dgelu[0], o->dgelu[1],
                    o->gd[0], o->gd[1], o->gd_dx[0], o->gd_dx[1], o->mean, o->rstd, o->ln_dw, o->ln_db, o->gd_db[0],
                    o->gd_db[1], o->colsum};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

static void test_isa_agreement(void) {
    int ok_same[NWIDTHS] = {0}, ok_close[NWIDTHS] = {0}, ok_threads[NWIDTHS] = {0};
    double worst_ln = 0, worst_tanh = 0;
    for (int wi = 0; wi < NWIDTHS; wi++) {
        int C = widths[wi], rows = 131;  // more rows than reduction chunks, not a multiple
        size_t n = (size_t)rows * C;
        OpRun ref, o;
        cpu_isa_force(CPU_ISA_GENERIC);
        op_run(&ref, rows, C, 1);
        op_run(&o, rows, C, 1);
        int same_all = 1, close_all = 1, threads_all = 1;
        for (int k = 0; k < n_isas; k++) {
            cpu_isa_force(isas[k]);
            op_run(&o, rows, C, 0);
            // Bit for bit: the same draws and the same operations.
            int bits = same(o.drop, ref.drop, n) && same(o.drop_back, ref.drop_back, n) && same(o.sum, ref.sum, n) &&
                       same(o.gelu[0], ref.gelu[0], n) && same(o.dgelu[0], ref.dgelu[0], n) &&
                       same(o.gd[0], ref.gd[0], n) && same(o.gd_dx[0], ref.gd_dx[0], n) &&
                       same(o.gd_db[0], ref.gd_db[0], C) && same(o.colsum, ref.colsum, C);
            same_all &= bits;
            // LayerNorm's row sums in another order: within fp32 rounding of the values.
            double dl = fmax(max_abs_diff(o.ln, ref.ln, n), max_abs_diff(o.ln_dx, ref.ln_dx, n) / 10);
            dl = fmax(dl, fmax(max_abs_diff(o.ln_dw, ref.ln_dw, C), max_abs_diff(o.ln_db, ref.ln_db, C)) / rows);
            double dt = fmax(max_abs_diff(o.gelu[1], ref.gelu[1], n), max_abs_diff(o.dgelu[1], ref.dgelu[1], n));
            dt = fmax(dt, fmax(max_abs_diff(o.gd[1], ref.gd[1], n), max_abs_diff(o.gd_dx[1], ref.gd_dx[1], n)));
            worst_ln = fmax(worst_ln, dl), worst_tanh = fmax(worst_tanh, dt);
            close_all &= dl < 2e-5 && dt < 2e-5;
            // One thread: the same bits as two.
            OpRun one;
            int threads = omp_get_max_threads();
            omp_set_num_threads(1);
            op_run(&one, rows, C, 1);
            omp_set_num_threads(threads < 2 ? 2 : threads);
            float *a[] = {one.drop, one.drop_back, one.sum, one.ln, one.ln_dx, one.gelu[0], one.gelu[1], one.dgelu[0],
                          one.dgelu[1], one.gd[0], one.gd[1], one.gd_dx[0], one.gd_dx[1]};
            float *b[] = {o.drop, o.drop_back, o.sum, o.ln, o.ln_dx, o.gelu[0], o.gelu[1], o.dgelu[0],
                          o.dgelu[1], o.gd[0], o.gd[1], o.gd_dx[0], o.gd_dx[1]};
            int t_ok = same(one.mean, o.mean, rows) && same(one.rstd, o.rstd, rows) && same(one.ln_dw, o.ln_dw, C) &&
                       same(one.ln_db, o.ln_db, C) && same(one.gd_db[0], o.gd_db[0], C) &&
                       same(one.gd_db[1], o.gd_db[1], C) && same(one.colsum, o.colsum, C);
            for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) t_ok &= same(a[i], b[i], n);
            threads_all &= t_ok;
            omp_set_num_threads(threads);
            op_free(&one);
        }
        ok_same[wi] = same_all, ok_close[wi] = close_all, ok_threads[wi] = threads_all;
        op_free(&ref), op_free(&o);
    }
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    for (int wi = 0; wi < NWIDTHS; wi++) {
        CHECK(ok_same[wi], "width %d: dropout, residual sum, GELU (erf), fused GELU+dropout, column sums bit-identical "
              "under every instruction set", widths[wi]);
        CHECK(ok_close[wi], "width %d: LayerNorm and GELU (tanh) agree across instruction sets (%g, %g)", widths[wi],
              worst_ln, worst_tanh);
        CHECK(ok_threads[wi], "width %d: every op gives 1 thread's bits on 2 threads, under every instruction set",
              widths[wi]);
    }
}

// GELU at the edges of its range (both forms) against fp64, under each instruction set.
static void test_gelu_range(void) {
    float xs[] = {-30, -12, -9.5f, -6, -5.5f, -3, -1, -0.5f, -1e-3f, -0.0f, 0, 1e-6f, 0.3f, 1, 2.5f, 5, 9, 12, 30, 88};
    int n = sizeof xs / sizeof xs[0];
    float out[32], d[32], ones[32];
    for (int i = 0; i < n; i++) ones[i] = 1.0f;
    for (int t = 0; t < 2; t++) {
        be->gelu_forward(be, out, xs, n, t);
        be->gelu_backward(be, d, xs, ones, n, t);
        double mf = 0, mb = 0;
        for (int i = 0; i < n; i++) {
            double v = xs[i], c = sqrt(2 / M_PI), u = c * (v + 0.044715 * v * v * v), th = tanh(u);
            double ref = t ? 0.5 * v * (1 + th) : 0.5 * v * (1 + erf(v / sqrt(2.0)));
            double dref = t ? 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * c * (1 + 3 * 0.044715 * v * v)
                            : 0.5 * (1 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
            mf = fmax(mf, fabs(out[i] - ref) / fmax(1.0, fabs(ref)));
            mb = fmax(mb, fabs(d[i] - dref));
        }
        CHECK(mf < 1e-6 && mb < 1e-5, "gelu(%s) from -30 to 88: forward %g (relative), backward %g",
              t ? "tanh" : "erf", mf, mb);
    }
    float special[3] = {INFINITY, -INFINITY, NAN};
    be->gelu_forward(be, out, special, 3, 0);
    CHECK(out[0] == INFINITY && isnan(out[2]), "gelu(erf) of inf is inf, of NaN NaN");
}

// fp32 -> bf16 as the generic loop rounds (the reference of every instruction set).
static uint16_t bf16_ref(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void test_bf16_isas(void) {
    // Ties both ways, the largest finite (rounds to inf), denormals (ties too), infinities,
    // quiet and signalling NaNs of both signs, zeros; then random patterns.
    static const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u, 0xbf808000u, 0xbf818000u,
                                       0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0xff7fffffu, 0x00000001u, 0x00008000u,
                                       0x00018000u, 0x007fffffu, 0x807fffffu, 0x80008000u, 0x00400000u, 0x7f800000u,
                                       0xff800000u, 0x7f800001u, 0x7fbfffffu, 0x7fc00000u, 0xffc00001u, 0xff800001u,
                                       0x7fffffffu, 0x00000000u, 0x80000000u, 0x00010000u};
    size_t n = 200003, ns = sizeof special / sizeof special[0];  // above the threaded size, not a multiple of 16
    uint32_t *bits = malloc(n * sizeof(uint32_t));
    uint64_t st = 99;
    for (size_t i = 0; i < n; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        bits[i] = i < ns ? special[i] : (uint32_t)(st >> 32);
        if (i % 7 == 1) bits[i] = (bits[i] & 0xffff0000u) | 0x8000u;  // many ties
        if (i % 11 == 2) bits[i] &= 0x807fffffu;                          // many denormals
    }
    float *src = malloc(n * sizeof(float)), *back = malloc(n * sizeof(float));
    memcpy(src, bits, n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t)), all[65536];
    float wide[65536];
    for (int k = 0; k < n_isas; k++) {
        cpu_isa_force(isas[k]);
        be->to_bf16(be, h, src, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += h[i] != bf16_ref(bits[i]);
        for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
        be->from_bf16(be, wide, all, 65536);
        size_t bad_back = 0;
        for (int i = 0; i < 65536; i++) bad_back += memcmp(&wide[i], &(uint32_t){(uint32_t)i << 16}, 4) != 0;
        be->from_bf16(be, back, h, n);
        for (size_t i = 0; i < n; i++) bad_back += memcmp(&back[i], &(uint32_t){(uint32_t)h[i] << 16}, 4) != 0;
        CHECK(bad == 0 && bad_back == 0, "%s: to_bf16 rounds %zu of %zu values otherwise than the reference (NaN, inf, "
              "ties, denormals included), from_bf16 widens %zu wrongly", cpu_isa_name(isas[k]), bad, n, bad_back);
    }
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    if (cpu_isa() == CPU_ISA_AVX512) {  // both AVX-512 kernels, whichever to_bf16 picks
        size_t bad = 0;
        for (int native = 0; native < 1 + cpu_has_avx512_bf16(); native++) {
            (native ? cpu_avx512_to_bf16_native : cpu_avx512_to_bf16)(h, src, n);
            for (size_t i = 0; i < n; i++) bad += h[i] != bf16_ref(bits[i]);
        }
        CHECK(bad == 0, "AVX-512 to_bf16 kernels (%s): %zu values off the reference",
              cpu_has_avx512_bf16() ? "integer and vcvtneps2bf16" : "integer", bad);
    }
    free(bits), free(src), free(back), free(h);
}

// ---- attention --------------------------------------------------------------------------
static void naive_attention(double *out, const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    int D = H * hd;
    double *s = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double mx = -1e300, sum = 0;
                for (int j = 0; j < T; j++) {
                    double d = 0;
                    for (int c = 0; c < hd; c++)
                        d += (double)q[(b * T + i) * D + h * hd + c] * k[(b * T + j) * D + h * hd + c];
                    s[j] = d / sqrt(hd);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < T; j++) sum += (s[j] = exp(s[j] - mx));
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += s[j] / sum * v[(b * T + j) * D + h * hd + c];
                    out[(b * T + i) * D + h * hd + c] = o;
                }
            }
    free(s);
}

static void test_attention(void) {
    int B = 2, T = 7, H = 3, hd = 4, D = H * hd;
    size_t n = (size_t)B * T * D;
    float *q = randn(n, 30, 1), *k = randn(n, 31, 1), *v = randn(n, 32, 1), *R = randn(n, 33, 1);
    float *out = malloc(n * sizeof(float)), *state = malloc(be->attention_state_floats(be, B, T, H, hd) * sizeof(float));
    float *scratch = malloc(be->attention_scratch_floats(be, B, T, H, hd) * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    int rc = be->attention_forward(be, out, state, scratch, q, k, v, B, T, H, hd);
    naive_attention(ref, q, k, v, B, T, H, hd);
    double md = 0;
    for (size_t i = 0; i < n; i++) md = fmax(md, fabs(out[i] - ref[i]));
    CHECK(rc == 0 && md < 1e-5, "attention forward: max diff %g", md);
    float *dq = malloc(n * sizeof(float)), *dk = malloc(n * sizeof(float)), *dv = malloc(n * sizeof(float));
    rc = be->attention_backward(be, dq, dk, dv, R, out, state, scratch, q, k, v, B, T, H, hd);
    CHECK(rc == 0, "attention backward runs");
    float *ins[3] = {q, k, v}, *grads[3] = {dq, dk, dv};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        double worst = 0;
        for (size_t i = 0; i < n; i += 5) {
            float keep = ins[t][i];
            double lp, lm, h = 1e-3;
            ins[t][i] = keep + (float)h;
            naive_attention(ref, q, k, v, B, T, H, hd);
            lp = 0;
            for (size_t j = 0; j < n; j++) lp += ref[j] * R[j];
            ins[t][i] = keep - (float)h;
            naive_attention(ref, q, k, v, B, T, H, hd);
            lm = 0;
            for (size_t j = 0; j < n; j++) lm += ref[j] * R[j];
            ins[t][i] = keep;
            double fd = (lp - lm) / (2 * h);
            worst = fmax(worst, fabs(fd - grads[t][i]) / fmax(1.0, fabs(fd)));
        }
        CHECK(worst < 1e-3, "attention backward %s vs finite differences: %g", names[t], worst);
    }
    free(q), free(k), free(v), free(R), free(out), free(state), free(scratch), free(ref), free(dq), free(dk), free(dv);
}

// ---- loss -------------------------------------------------------------------------------
static void test_xent(void) {
    int B = 5, K = 9;
    float *z = randn((size_t)B * K, 40, 2), *p = malloc(sizeof(float) * B * K), *l = malloc(sizeof(float) * B),
          *dz = malloc(sizeof(float) * B * K);
    int labels[5] = {0, 8, 3, 3, 5};
    for (int si = 0; si < 2; si++) {
        float s = si ? 0.1f : 0.0f;
        be->xent_forward(be, p, l, z, labels, B, K, s);
        be->xent_backward(be, dz, p, labels, B, K, s, 1.0f);
        double md = 0, mg = 0;
        for (int b = 0; b < B; b++) {
            double mx = -1e300, sum = 0;
            for (int k = 0; k < K; k++) mx = fmax(mx, z[b * K + k]);
            for (int k = 0; k < K; k++) sum += exp(z[b * K + k] - mx);
            double ref = 0;
            for (int k = 0; k < K; k++) {
                double logp = z[b * K + k] - mx - log(sum);
                ref -= (s / K + (k == labels[b] ? 1 - s : 0)) * logp;
            }
            md = fmax(md, fabs(l[b] - ref));
            for (int k = 0; k < K; k++) {  // finite difference of this sample's loss
                double h = 1e-3, lp, lm;
                float keep = z[b * K + k];
                z[b * K + k] = keep + (float)h;
                be->xent_forward(be, p, l, z, labels, B, K, s);
                lp = l[b];
                z[b * K + k] = keep - (float)h;
                be->xent_forward(be, p, l, z, labels, B, K, s);
                lm = l[b];
                z[b * K + k] = keep;
                mg = fmax(mg, fabs((lp - lm) / (2 * h) - dz[b * K + k]));
            }
            be->xent_forward(be, p, l, z, labels, B, K, s);
        }
        CHECK(md < 1e-5, "cross-entropy (smoothing %g) forward: max diff %g", s, md);
        CHECK(mg < 2e-3, "cross-entropy (smoothing %g) backward vs finite differences: %g", s, mg);
    }
    free(z), free(p), free(l), free(dz);
}

// ---- data movement ----------------------------------------------------------------------
static void test_tokens(void) {
    int B = 2, S = 8, C = 3, P = 4, G = S / P, T = 1 + G * G, D = 5, len = P * P * C;
    uint8_t img[2 * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof img; i++) img[i] = (uint8_t)(i * 37 + 11);
    float *patches = malloc(sizeof(float) * B * G * G * len);
    be->patchify(be, patches, img, B, S, C, P);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++)
                for (int py = 0; py < P; py++)
                    for (int px = 0; px < P; px++)
                        for (int c = 0; c < C; c++) {
                            float want = img[((b * S + gy * P + py) * S + gx * P + px) * C + c] * (2.0f / 255.0f) - 1.0f;
                            float got = patches[((b * G * G) + gy * G + gx) * len + (py * P + px) * C + c];
                            bad += got != want;
                        }
    CHECK(bad == 0, "patchify: %d values out of place", bad);
    float *emb = randn((size_t)B * (T - 1) * D, 50, 1), *cls = randn(D, 51, 1), *pos = randn((size_t)T * D, 52, 1);
    float *x = malloc(sizeof(float) * B * T * D), *dx = randn((size_t)B * T * D, 53, 1);
    be->tokens_forward(be, x, emb, cls, pos, B, T, D);
    bad = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < D; j++) {
                float want = (t ? emb[(b * (T - 1) + t - 1) * D + j] : cls[j]) + pos[t * D + j];
                bad += fabsf(x[(b * T + t) * D + j] - want) > 1e-6f;
            }
    CHECK(bad == 0, "tokens forward: %d wrong", bad);
    float *demb = malloc(sizeof(float) * B * (T - 1) * D), *dcls = calloc(D, sizeof(float)), *dpos = calloc((size_t)T * D, sizeof(float));
    be->tokens_backward(be, demb, dcls, dpos, dx, B, T, D);
    bad = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int b = 0; b < B; b++) s += dx[(b * T + t) * D + j];
            bad += fabs(dpos[t * D + j] - s) > 1e-6;
            if (t == 0) bad += fabs(dcls[j] - s) > 1e-6;
            for (int b = 0; t && b < B; b++) bad += demb[(b * (T - 1) + t - 1) * D + j] != dx[(b * T + t) * D + j];
        }
    CHECK(bad == 0, "tokens backward: %d wrong", bad);
    float *cl = malloc(sizeof(float) * B * D);
    be->gather_cls(be, cl, x, B, T, D);
    be->scatter_cls(be, dx, cl, B, T, D);
    bad = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < D; j++) bad += dx[(b * T + t) * D + j] != (t ? 0.0f : x[b * T * D + j]);
    CHECK(bad == 0, "gather/scatter of class tokens: %d wrong", bad);
    float *colsum = calloc(D, sizeof(float));
    be->bias_backward(be, colsum, x, B * T, D);
    double md = 0;
    for (int j = 0; j < D; j++) {
        double s = 0;
        for (int i = 0; i < B * T; i++) s += x[i * D + j];
        md = fmax(md, fabs(colsum[j] - s));
    }
    CHECK(md < 1e-5, "bias backward (column sums): %g", md);
    double ss = be->sum_squares(be, x, (size_t)B * T * D), ref = dotf(x, x, (size_t)B * T * D);
    CHECK(fabs(ss - ref) < 1e-9 * ref, "sum of squares %g vs %g", ss, ref);
    free(patches), free(emb), free(cls), free(pos), free(x), free(dx), free(demb), free(dcls), free(dpos), free(cl), free(colsum);
}

// ---- optimizer --------------------------------------------------------------------------
static void test_optimizer(void) {
    size_t n = 257;
    for (int kind = OPT_SGD; kind <= OPT_RMSPROP; kind++) {
        float *p = randn(n, 60, 1), *g = randn(n, 61, 1), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
        double *rp = malloc(n * sizeof(double)), *rm = calloc(n, sizeof(double)), *rv = calloc(n, sizeof(double));
        for (size_t i = 0; i < n; i++) rp[i] = p[i];
        OptimStep s = {(OptimizerKind)kind, 0.05f, 0.9f, 0.9f, 0.999f, 0.9f, kind == OPT_ADAMW ? 1e-8f : 1e-2f, 0.1f, 0, 0.5f};
        for (int t = 1; t <= 3; t++) {
            s.t = t;
            be->optimizer_update(be, p, g, m, v, n, &s);
            for (size_t i = 0; i < n; i++) {
                double gi = g[i] * 0.5, w = rp[i] * (1 - 0.05 * 0.1), b1 = 0.9, b2 = 0.999;
                switch (kind) {
                case OPT_SGD: rm[i] = 0.9 * rm[i] - 0.05 * gi; rp[i] = w + rm[i]; break;
                case OPT_ADAM:
                    rm[i] = b1 * rm[i] + (1 - b1) * gi;
                    rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
                    rp[i] = w - 0.05 * sqrt(1 - pow(b2, t)) / (1 - pow(b1, t)) * rm[i] / (sqrt(rv[i]) + 1e-2);
                    break;
                case OPT_ADAMW:
                    rm[i] = b1 * rm[i] + (1 - b1) * gi;
                    rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
                    rp[i] = w - 0.05 * (rm[i] / (1 - pow(b1, t))) / (sqrt(rv[i] / (1 - pow(b2, t))) + 1e-8);
                    break;
                case OPT_RMSPROP:
                    rv[i] = 0.9 * rv[i] + 0.1 * gi * gi;
                    rp[i] = w - 0.05 * gi / (sqrt(rv[i]) + 1e-2);
                    break;
                }
            }
        }
        double md = 0;
        for (size_t i = 0; i < n; i++) md = fmax(md, fabs(p[i] - rp[i]));
        CHECK(md < 1e-5, "optimizer %d after 3 updates: max diff %g", kind, md);
        free(p), free(g), free(m), free(v), free(rp), free(rm), free(rv);
    }
}

int main(void) {
    be = backend_cpu_create(0);
    find_isas();
    test_gemm();
    test_gemm_bf16();
    test_gemm_bias_gelu();
    // The ops with kernels per instruction set, under each one the CPU has.
    for (int k = 0; k < n_isas; k++) {
        int failed = check_failed;
        cpu_isa_force(isas[k]);
        test_layernorm();
        test_activations();
        test_gelu_range();
        test_dropout();
        test_fused();
        test_tokens();
        test_optimizer();
        if (check_failed > failed) fprintf(stderr, "  (the failures above: under %s)\n", cpu_isa_name(isas[k]));
    }
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    printf("ops: kernels checked under %d instruction sets:", n_isas);
    for (int k = 0; k < n_isas; k++) printf(" %s", cpu_isa_name(isas[k]));
    printf("\n");
    test_isa_agreement();
    test_bf16_isas();
    test_attention();
    test_xent();
    be->destroy(be);
    return check_report("ops");
}
