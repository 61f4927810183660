// The CUDA backend against the CPU backend (DESIGN.md's ladder, rung 5): every op of the
// table on random inputs, one whole training step with accumulation 2, and a 50-step run
// whose losses track the CPU's. Without a device it prints one line, "test_cuda: skipped
// (no CUDA device)", and exits 0 with no count: a skip is not a pass.
//
// Differences are normwise relative, max|gpu - cpu| / max|cpu|, against fixed bounds:
//   fp32 ops 1e-5; fp32 gemm and attention 1e-4 (different summation orders over K and T);
//   tf32 gemm 5e-3; bf16 gemm 1e-2 (operands rounded to 8 significant bits); bf16 attention 2e-2
//   (tensor cores: q, k, v, dout and the probabilities rounded to bf16);
//   dropout masks bit-identical (same Philox counters on both devices);
//   whole step: losses 1e-5, each gradient tensor 1e-4, each updated parameter tensor 1e-5;
//   50 steps: every loss within 1e-3 x max(1, loss) of the CPU's in fp32, 0.1 x max(1, loss)
//   with bf16 matrix products (a looser sanity bound: bf16 training is a different run).
// VIT_TEST_CUDA_ON_CPU=1 runs the same comparisons with a second CPU backend in place of
// the GPU (a check of this harness on machines without one).
// Built with NCCL: a one-rank communicator sums a bucket and a backward pass's buckets as the
// identity, bit for bit (test_nccl).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda_backend.h"
#include "check.h"
#include "model/vit.h"
#include "optim/optimizer.h"
#include "util/rng.h"
#include "util/status.h"
#ifdef VIT_NCCL
#include "dist/nccl_sync.h"
#endif

static Backend *cpu, *gpu, *gpu_tf32, *gpu_bf16, *gpu_mma;

static float *randn(size_t n, uint32_t stream, float s) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * rng_normal(7, stream, i));
    return x;
}

// A device copy of n host floats (n + pad allocated, the data at offset pad: misaligned on purpose).
static float *up(Backend *be, const float *h, size_t n, size_t pad) {
    float *d = be->alloc(be, (n + pad) * sizeof(float));
    if (!d) {
        fprintf(stderr, "alloc failed: %s\n", vit_error());
        exit(1);
    }
    be->upload(be, d + pad, h, n * sizeof(float));
    return d + pad;
}

static float *down(Backend *be, const float *d, size_t n) {
    float *h = malloc(n * sizeof(float) + 1);
    be->download(be, h, d, n * sizeof(float));
    return h;
}

static void *upb(Backend *be, const void *h, size_t bytes) {
    void *d = be->alloc(be, bytes);
    if (!d) {
        fprintf(stderr, "alloc failed: %s\n", vit_error());
        exit(1);
    }
    be->upload(be, d, h, bytes);
    return d;
}

// ---- gemm ---------------------------------------------------------------------------------
static float *gemm_on(Backend *be, int bt, int M, int N, int K, const float *A, int ta, const float *B, int tb,
                      const float *C0, const float *bias, float alpha, int acc, size_t pad, int *rc) {
    size_t nA = (size_t)bt * M * K, nB = (size_t)bt * K * N, nC = (size_t)bt * M * N;
    float *dA = up(be, A, nA, pad), *dB = up(be, B, nB, pad), *dC = up(be, C0, nC, pad);
    float *dbias = bias ? up(be, bias, N, pad) : NULL;
    *rc = be->gemm(be, bt, M, N, K, dA, ta, dB, tb, dC, dbias, alpha, acc);
    float *out = down(be, dC, nC);
    be->release(be, dA - pad), be->release(be, dB - pad), be->release(be, dC - pad);
    if (dbias) be->release(be, dbias - pad);
    return out;
}

// Each case against the table's contract in fp64 and against the CPU backend, in the three
// precisions (the references are computed once per case).
static void test_gemm(void) {
    int cases[][10] = {  // batch, M, N, K, transA, transB, accumulate, bias, alpha x4, pad
        {1, 5, 7, 3, 0, 0, 0, 1, 4, 0},         {1, 33, 17, 65, 1, 0, 0, 0, 4, 1},
        {1, 16, 9, 31, 0, 1, 0, 1, 4, 0},       {3, 8, 6, 5, 1, 1, 0, 0, 1, 0},
        {4, 13, 11, 7, 0, 1, 1, 1, 4, 1},       {2, 9, 10, 12, 1, 0, 1, 0, 4, 0},
        {1, 394, 192, 64, 0, 0, 0, 1, 4, 0},    {1, 394, 64, 192, 0, 1, 1, 0, 4, 0},
        {1, 64, 192, 394, 1, 0, 1, 0, 4, 0},    {1, 1576, 768, 3072, 0, 1, 0, 0, 4, 0},
        {1, 256, 3072, 768, 0, 0, 0, 1, 4, 3},  {24, 197, 197, 64, 0, 1, 0, 0, 1, 0},
        {2, 40, 30, 20, 0, 0, 0, 1, 2, 0},      {1, 7, 1000, 64, 0, 0, 0, 1, 4, 1},
    };
    struct { Backend *be; const char *tag; double tol; } runs[] = {
        {gpu, "fp32", 1e-4}, {gpu_tf32, "tf32", 5e-3}, {gpu_bf16, "bf16", 1e-2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int bt = cases[c][0], M = cases[c][1], N = cases[c][2], K = cases[c][3], ta = cases[c][4], tb = cases[c][5],
            acc = cases[c][6], use_bias = cases[c][7];
        float alpha = cases[c][8] / 4.0f;
        size_t pad = (size_t)cases[c][9], nC = (size_t)bt * M * N;
        float *A = randn((size_t)bt * M * K, 1, 1), *B = randn((size_t)bt * K * N, 2, 1), *C0 = randn(nC, 3, 1),
              *bias = randn(N, 4, 1);
        int rc1, rc2;
        float *ref = gemm_on(cpu, bt, M, N, K, A, ta, B, tb, C0, use_bias ? bias : NULL, alpha, acc, pad, &rc1);
        // The table's contract in fp64: alpha * op(A) op(B) + bias (+ C); rows of B^T first
        // so the inner loop runs over contiguous memory.
        float *naive = malloc(nC * sizeof(float));
        double *bt_row = malloc((size_t)K * sizeof(double));
        for (int b = 0; b < bt; b++)
            for (int j = 0; j < N; j++) {
                for (int k = 0; k < K; k++)
                    bt_row[k] = tb ? B[(size_t)b * K * N + (size_t)j * K + k] : B[(size_t)b * K * N + (size_t)k * N + j];
                for (int i = 0; i < M; i++) {
                    double sum = 0;
                    for (int k = 0; k < K; k++)
                        sum += bt_row[k] *
                               (ta ? A[(size_t)b * M * K + (size_t)k * M + i] : A[(size_t)b * M * K + (size_t)i * K + k]);
                    sum = alpha * sum + (use_bias ? bias[j] : 0) + (acc ? C0[(size_t)b * M * N + (size_t)i * N + j] : 0);
                    naive[(size_t)b * M * N + (size_t)i * N + j] = (float)sum;
                }
            }
        free(bt_row);
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
            float *out = gemm_on(runs[r].be, bt, M, N, K, A, ta, B, tb, C0, use_bias ? bias : NULL, alpha, acc, pad, &rc2);
            double d = check_rel_diff(out, naive, nC), dc = check_rel_diff(out, ref, nC);
            CHECK(rc2 == 0 && d <= runs[r].tol, "%s gemm case %zu (%dx%dx%d batch %d, tA %d tB %d acc %d bias %d alpha %g "
                  "pad %zu): rc %d, rel diff to fp64 %.3g > %.1g (%s)", runs[r].tag, c, M, N, K, bt, ta, tb, acc, use_bias,
                  alpha, pad, rc2, d, runs[r].tol, rc2 ? vit_error() : "");
            // Against the CPU backend too, except alpha != 1 with a bias: oneDNN's output scale
            // there also scales the bias (alpha * (AB + bias)), which the table's contract does not.
            if (!(use_bias && alpha != 1.0f))
                CHECK(rc1 == 0 && dc <= runs[r].tol, "%s gemm case %zu: rel diff to the CPU backend %.3g > %.1g",
                      runs[r].tag, c, dc, runs[r].tol);
            free(out);
        }
        free(A), free(B), free(C0), free(bias), free(ref), free(naive);
    }
}

// ---- elementwise and row ops ----------------------------------------------------------------
static void compare(const char *what, const float *a, const float *ref, size_t n, double tol) {
    double d = check_rel_diff(a, ref, n);
    CHECK(d <= tol, "%s: rel diff %.3g > %.1g", what, d, tol);
}

static void test_pointwise(void) {
    size_t n = 100003;
    float *x = randn(n, 10, 2), *dy = randn(n, 11, 1);
    for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
        float *res[2][2];
        Backend *bes[2] = {cpu, gpu};
        for (int k = 0; k < 2; k++) {
            Backend *be = bes[k];
            float *dx = up(be, x, n, 0), *ddy = up(be, dy, n, 0), *dout = be->alloc(be, n * sizeof(float));
            be->gelu_forward(be, dout, dx, n, tanh_approx);
            res[k][0] = down(be, dout, n);
            be->gelu_backward(be, ddy, dx, ddy, n, tanh_approx);  // in place, as allowed
            res[k][1] = down(be, ddy, n);
            be->release(be, dx), be->release(be, ddy), be->release(be, dout);
        }
        compare(tanh_approx ? "gelu_forward (tanh)" : "gelu_forward (erf)", res[1][0], res[0][0], n, 1e-5);
        compare(tanh_approx ? "gelu_backward (tanh)" : "gelu_backward (erf)", res[1][1], res[0][1], n, 1e-5);
        for (int k = 0; k < 2; k++) free(res[k][0]), free(res[k][1]);
    }
    // tanh, add (aliased), scale
    float *res[2][4];
    Backend *bes[2] = {cpu, gpu};
    for (int k = 0; k < 2; k++) {
        Backend *be = bes[k];
        float *dx = up(be, x, n, 0), *ddy = up(be, dy, n, 0), *t = be->alloc(be, n * sizeof(float));
        be->tanh_forward(be, t, dx, n);
        res[k][0] = down(be, t, n);
        be->tanh_backward(be, ddy, t, ddy, n);
        res[k][1] = down(be, ddy, n);
        be->add(be, dx, dx, ddy, n);
        res[k][2] = down(be, dx, n);
        be->scale(be, dx, n, -0.37f);
        res[k][3] = down(be, dx, n);
        be->release(be, dx), be->release(be, ddy), be->release(be, t);
    }
    compare("tanh_forward", res[1][0], res[0][0], n, 1e-5);
    compare("tanh_backward", res[1][1], res[0][1], n, 1e-5);
    compare("add", res[1][2], res[0][2], n, 1e-5);
    compare("scale", res[1][3], res[0][3], n, 1e-5);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 4; j++) free(res[k][j]);
    // sum_squares: both sum in double
    float *dg = up(gpu, x, n, 1), *dc = up(cpu, x, n, 1);
    double sg = gpu->sum_squares(gpu, dg, n), sc = cpu->sum_squares(cpu, dc, n);
    CHECK(fabs(sg - sc) <= 1e-10 * sc, "sum_squares: %.17g vs cpu %.17g", sg, sc);
    gpu->release(gpu, dg - 1), cpu->release(cpu, dc - 1);
    free(x), free(dy);
}

static void test_dropout(void) {
    size_t sizes[] = {1, 7, 4099, 1000003};
    float rates[] = {0.1f, 0.5f};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = randn(n, 20, 1);
        for (int ri = 0; ri < 2; ri++) {
            uint64_t seed = 0x1234567890abcdefull + si;
            uint32_t step = 3 + (uint32_t)ri, site = 5 * (uint32_t)si + 1;
            float *out[2], *back[2];
            Backend *bes[2] = {cpu, gpu};
            for (int k = 0; k < 2; k++) {
                Backend *be = bes[k];
                float *d = up(be, x, n, 0), *o = be->alloc(be, n * sizeof(float));
                be->dropout_forward(be, o, d, n, rates[ri], seed, step, site);
                out[k] = down(be, o, n);
                be->dropout_backward(be, d, d, n, rates[ri], seed, step, site);  // in place
                back[k] = down(be, d, n);
                be->release(be, d), be->release(be, o);
            }
            size_t mask_diff = 0, rng_diff = 0;
            for (size_t i = 0; i < n; i++) {
                mask_diff += (out[0][i] == 0.0f) != (out[1][i] == 0.0f);
                rng_diff += (out[1][i] != 0.0f) != rng_keep(seed, step, site, i, 1.0f - rates[ri]);
            }
            CHECK(mask_diff == 0 && rng_diff == 0, "dropout n %zu rate %g: %zu mask differences from the CPU, %zu "
                  "from rng_keep", n, rates[ri], mask_diff, rng_diff);
            CHECK(memcmp(out[0], out[1], n * sizeof(float)) == 0, "dropout_forward n %zu: values differ", n);
            CHECK(memcmp(back[0], back[1], n * sizeof(float)) == 0, "dropout_backward n %zu: values differ", n);
            for (int k = 0; k < 2; k++) free(out[k]), free(back[k]);
        }
        free(x);
    }
}

// The fused ops of the training step against the CPU's: the same dropout masks exactly
// (zeros in the same places), values within 1e-5; dbias and the in-place forms as the model
// calls them. Widths off the multiples of 4 and of the warp, and ViT-B's.
static void fused_case(int rows, int C, float rate, int tanh_approx) {
    size_t n = (size_t)rows * C;
    float *x = randn(n, 50, 1), *y = randn(n, 51, 2), *w = randn(C, 52, 1), *b = randn(C, 53, 0.5f),
          *db0 = randn(C, 54, 1);
    float *res[2][7];
    Backend *bes[2] = {cpu, gpu};
    for (int k = 0; k < 2; k++) {
        Backend *be = bes[k];
        float *dx = up(be, x, n, 0), *dy = up(be, y, n, 0), *dw = up(be, w, C, 0), *dbs = up(be, b, C, 0);
        float *sum = be->alloc(be, n * sizeof(float)), *ln = be->alloc(be, n * sizeof(float));
        float *mean = be->alloc(be, rows * sizeof(float)), *rstd = be->alloc(be, rows * sizeof(float));
        float *db = up(be, db0, C, 0);
        be->residual_layernorm_forward(be, sum, ln, mean, rstd, dx, dy, dw, dbs, rows, C, 1e-6f, rate, 77, 5, 3);
        res[k][0] = down(be, sum, n);
        res[k][1] = down(be, ln, n);
        res[k][2] = down(be, rstd, rows);
        be->residual_layernorm_forward(be, dx, NULL, NULL, NULL, dx, dy, NULL, NULL, rows, C, 0.0f, rate, 77, 5, 4);
        res[k][3] = down(be, dx, n);  // in place, no LayerNorm
        be->gelu_dropout_forward(be, sum, dy, n, tanh_approx, rate, 77, 6, 1);
        res[k][4] = down(be, sum, n);
        be->gelu_dropout_backward(be, ln, db, dy, ln, rows, C, tanh_approx, rate, 77, 6, 1);  // dinp aliases dout
        res[k][5] = down(be, ln, n);
        res[k][6] = down(be, db, C);
        float *all[] = {dx, dy, dw, dbs, sum, ln, mean, rstd, db};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->release(be, all[i]);
    }
    const char *names[7] = {"residual_layernorm sum", "residual_layernorm out", "residual_layernorm rstd",
                            "residual add in place", "gelu_dropout_forward", "gelu_dropout_backward",
                            "gelu_dropout_backward dbias"};
    size_t lens[7] = {n, n, (size_t)rows, n, n, n, (size_t)C};
    for (int j = 0; j < 7; j++) {
        char what[160];
        snprintf(what, sizeof what, "%s (%dx%d, rate %g, %s)", names[j], rows, C, rate, tanh_approx ? "tanh" : "erf");
        compare(what, res[1][j], res[0][j], lens[j], 1e-5);
        size_t zeros = 0;
        for (size_t i = 0; i < lens[j]; i++) zeros += (res[0][j][i] == 0.0f) != (res[1][j][i] == 0.0f);
        CHECK(j == 5 || zeros == 0, "%s: %zu dropout mask differences", what, zeros);
    }
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 7; j++) free(res[k][j]);
    free(x), free(y), free(w), free(b), free(db0);
}

static void test_fused(void) {
    fused_case(37, 77, 0.0f, 0);
    fused_case(37, 77, 0.1f, 1);
    fused_case(197 * 2, 768, 0.1f, 0);
    fused_case(50, 3072, 0.5f, 0);
}

// Asynchronous uploads from page-locked memory: the data arrives, and a copy into a buffer
// that earlier ops still read waits for them (the ops see the old contents).
static void test_upload_async(void) {
    size_t n = ((size_t)1 << 22) + 5;
    float *h = gpu->alloc_host(gpu, n * sizeof(float)), *h2 = gpu->alloc_host(gpu, n * sizeof(float));
    CHECK(h && h2, "alloc_host of %zu floats: %s", n, h && h2 ? "" : vit_error());
    if (!h || !h2) return;
    for (size_t i = 0; i < n; i++) h[i] = (float)i, h2[i] = -(float)i;
    float *d = gpu->alloc(gpu, n * sizeof(float)), *copy = gpu->alloc(gpu, n * sizeof(float));
    gpu->upload_async(gpu, d, h, n * sizeof(float));
    gpu->wait_uploads(gpu);
    gpu->scale(gpu, d, n, 2.0f);   // reads the first upload...
    gpu->add(gpu, copy, d, d, n);  // ...copy = 4 h
    gpu->upload_async(gpu, d, h2, n * sizeof(float));  // ...so this one waits for both ops
    gpu->wait_uploads(gpu);
    float *a = down(gpu, copy, n), *b = down(gpu, d, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += a[i] != 4.0f * (float)i || b[i] != -(float)i;
    CHECK(bad == 0, "asynchronous uploads ordered with the ops: %zu wrong values", bad);
    free(a), free(b);
    gpu->release(gpu, d), gpu->release(gpu, copy);
    gpu->release_host(gpu, h), gpu->release_host(gpu, h2);
}

static void test_reductions(void) {
    int shapes[][2] = {{6, 37}, {394, 64}, {3152, 768}, {2, 1280}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int rows = shapes[si][0], C = shapes[si][1];
        size_t n = (size_t)rows * C;
        float *x = randn(n, 30, 2), *w = randn(C, 31, 1), *b = randn(C, 32, 1), *dy = randn(n, 33, 1);
        float *dx0 = randn(n, 34, 1), *dw0 = randn(C, 35, 1), *db0 = randn(C, 36, 1);
        for (size_t i = 0; i < n; i++) x[i] += 0.5f;
        float *r[2][7];
        Backend *bes[2] = {cpu, gpu};
        for (int k = 0; k < 2; k++) {
            Backend *be = bes[k];
            float *dx = up(be, x, n, 0), *dw = up(be, w, C, 1), *db = up(be, b, C, 0), *ddy = up(be, dy, n, 0);
            float *o = be->alloc(be, n * sizeof(float)), *mean = be->alloc(be, rows * sizeof(float)),
                  *rstd = be->alloc(be, rows * sizeof(float));
            float *gx = up(be, dx0, n, 0), *gw = up(be, dw0, C, 0), *gb = up(be, db0, C, 1), *bb = up(be, db0, C, 0);
            be->layernorm_forward(be, o, mean, rstd, dx, dw, db, rows, C, 1e-6f);
            r[k][0] = down(be, o, n);
            r[k][1] = down(be, mean, rows);
            r[k][2] = down(be, rstd, rows);
            be->layernorm_backward(be, gx, gw, gb, ddy, dx, dw, mean, rstd, rows, C);
            r[k][3] = down(be, gx, n);
            r[k][4] = down(be, gw, C);
            r[k][5] = down(be, gb, C);
            be->bias_backward(be, bb, ddy, rows, C);
            r[k][6] = down(be, bb, C);
            float *ptrs[] = {dx, dw - 1, db, ddy, o, mean, rstd, gx, gw, gb - 1, bb};
            for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) be->release(be, ptrs[i]);
        }
        const char *names[] = {"layernorm_forward out", "layernorm_forward mean", "layernorm_forward rstd",
                               "layernorm_backward dinp", "layernorm_backward dscale", "layernorm_backward dbias",
                               "bias_backward"};
        size_t lens[] = {n, (size_t)rows, (size_t)rows, n, (size_t)C, (size_t)C, (size_t)C};
        for (int j = 0; j < 7; j++) {
            char what[96];
            snprintf(what, sizeof what, "%s (%d x %d)", names[j], rows, C);
            compare(what, r[1][j], r[0][j], lens[j], 1e-5);
        }
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 7; j++) free(r[k][j]);
        free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0);
    }
}

static void test_tokens(void) {
    int B = 3, S = 32, C = 3, P = 8, G = S / P, T = 1 + G * G, D = 48;
    size_t nimg = (size_t)B * S * S * C, npatch = (size_t)B * G * G * P * P * C;
    uint8_t *img = malloc(nimg);
    for (size_t i = 0; i < nimg; i++) img[i] = (uint8_t)(rng_uniform(3, 40, i) * 256);
    float *emb = randn((size_t)B * (T - 1) * D, 41, 1), *cls = randn(D, 42, 1), *pos = randn((size_t)T * D, 43, 1);
    float *dx = randn((size_t)B * T * D, 44, 1), *dcls0 = randn(D, 45, 1), *dpos0 = randn((size_t)T * D, 46, 1);
    float *dc = randn((size_t)B * D, 47, 1);
    float *r[2][7];
    Backend *bes[2] = {cpu, gpu};
    for (int k = 0; k < 2; k++) {
        Backend *be = bes[k];
        uint8_t *dimg = upb(be, img, nimg);
        float *patches = be->alloc(be, npatch * sizeof(float)), *x = be->alloc(be, (size_t)B * T * D * sizeof(float));
        float *demb = up(be, emb, (size_t)B * (T - 1) * D, 0), *dcl = up(be, cls, D, 0), *dp = up(be, pos, (size_t)T * D, 0);
        float *ddx = up(be, dx, (size_t)B * T * D, 0), *gcls = up(be, dcls0, D, 0), *gpos = up(be, dpos0, (size_t)T * D, 0);
        float *gemb = be->alloc(be, (size_t)B * (T - 1) * D * sizeof(float)), *cl = be->alloc(be, (size_t)B * D * sizeof(float));
        float *ddc = up(be, dc, (size_t)B * D, 0);
        be->patchify(be, patches, dimg, B, S, C, P);
        r[k][0] = down(be, patches, npatch);
        be->tokens_forward(be, x, demb, dcl, dp, B, T, D);
        r[k][1] = down(be, x, (size_t)B * T * D);
        be->tokens_backward(be, gemb, gcls, gpos, ddx, B, T, D);
        r[k][2] = down(be, gemb, (size_t)B * (T - 1) * D);
        r[k][3] = down(be, gcls, D);
        r[k][4] = down(be, gpos, (size_t)T * D);
        be->gather_cls(be, cl, x, B, T, D);
        r[k][5] = down(be, cl, (size_t)B * D);
        be->scatter_cls(be, x, ddc, B, T, D);
        r[k][6] = down(be, x, (size_t)B * T * D);
        void *ptrs[] = {dimg, patches, x, demb, dcl, dp, ddx, gcls, gpos, gemb, cl, ddc};
        for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) be->release(be, ptrs[i]);
    }
    const char *names[] = {"patchify", "tokens_forward", "tokens_backward demb", "tokens_backward dcls",
                           "tokens_backward dpos", "gather_cls", "scatter_cls"};
    size_t lens[] = {npatch, (size_t)B * T * D, (size_t)B * (T - 1) * D, (size_t)D, (size_t)T * D, (size_t)B * D,
                     (size_t)B * T * D};
    for (int j = 0; j < 7; j++) compare(names[j], r[1][j], r[0][j], lens[j], 1e-5);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 7; j++) free(r[k][j]);
    free(img), free(emb), free(cls), free(pos), free(dx), free(dcls0), free(dpos0), free(dc);
}

static void test_xent(void) {
    int shapes[][2] = {{5, 10}, {64, 1000}, {3, 21843}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int B = shapes[si][0], K = shapes[si][1];
        float *z = randn((size_t)B * K, 50, 3);
        int *lab = malloc(B * sizeof(int));
        for (int b = 0; b < B; b++) lab[b] = (int)(rng_uniform(5, 51, b) * K);
        for (int sm = 0; sm < 2; sm++) {
            float smoothing = sm ? 0.1f : 0.0f;
            float *r[2][3];
            Backend *bes[2] = {cpu, gpu};
            for (int k = 0; k < 2; k++) {
                Backend *be = bes[k];
                float *dz = up(be, z, (size_t)B * K, 0), *p = be->alloc(be, (size_t)B * K * sizeof(float));
                float *l = be->alloc(be, B * sizeof(float)), *g = be->alloc(be, (size_t)B * K * sizeof(float));
                int *dl = upb(be, lab, B * sizeof(int));
                be->xent_forward(be, p, l, dz, dl, B, K, smoothing);
                r[k][0] = down(be, p, (size_t)B * K);
                r[k][1] = down(be, l, B);
                be->xent_backward(be, g, p, dl, B, K, smoothing, 0.125f);
                r[k][2] = down(be, g, (size_t)B * K);
                be->release(be, dz), be->release(be, p), be->release(be, l), be->release(be, g), be->release(be, dl);
            }
            char what[3][80];
            snprintf(what[0], 80, "xent_forward probs (%d x %d, smoothing %g)", B, K, smoothing);
            snprintf(what[1], 80, "xent_forward losses (%d x %d, smoothing %g)", B, K, smoothing);
            snprintf(what[2], 80, "xent_backward (%d x %d, smoothing %g)", B, K, smoothing);
            compare(what[0], r[1][0], r[0][0], (size_t)B * K, 1e-5);
            compare(what[1], r[1][1], r[0][1], B, 1e-5);
            compare(what[2], r[1][2], r[0][2], (size_t)B * K, 1e-5);
            for (int k = 0; k < 2; k++)
                for (int j = 0; j < 3; j++) free(r[k][j]);
        }
        free(z), free(lab);
    }
}

// ---- attention --------------------------------------------------------------------------------
// One shape on the CPU and on `dev`: out, dq, dk, dv compared within tol (the backward uses
// the device's own forward state, so the two kernels must agree on it).
static void attention_case(Backend *dev, const char *tag, int B, int T, int H, int hd, double tol) {
    size_t n = (size_t)B * T * H * hd;
    float *q = randn(n, 60, 1), *k = randn(n, 61, 1), *v = randn(n, 62, 1), *dout = randn(n, 63, 1);
    float *r[2][4];
    int rc[2] = {0, 0};
    Backend *bes[2] = {cpu, dev};
    for (int b = 0; b < 2; b++) {
        Backend *be = bes[b];
        size_t ns = be->attention_state_floats(be, B, T, H, hd), nw = be->attention_scratch_floats(be, B, T, H, hd);
        float *dq = up(be, q, n, 0), *dk = up(be, k, n, 0), *dv = up(be, v, n, 0), *ddo = up(be, dout, n, 0);
        float *o = be->alloc(be, n * sizeof(float)), *st = be->alloc(be, ns * sizeof(float)),
              *sc = be->alloc(be, nw * sizeof(float));
        float *gq = be->alloc(be, n * sizeof(float)), *gk = be->alloc(be, n * sizeof(float)),
              *gv = be->alloc(be, n * sizeof(float));
        rc[b] |= be->attention_forward(be, o, st, sc, dq, dk, dv, B, T, H, hd);
        r[b][0] = down(be, o, n);
        rc[b] |= be->attention_backward(be, gq, gk, gv, ddo, o, st, sc, dq, dk, dv, B, T, H, hd);
        r[b][1] = down(be, gq, n);
        r[b][2] = down(be, gk, n);
        r[b][3] = down(be, gv, n);
        float *ptrs[] = {dq, dk, dv, ddo, o, st, sc, gq, gk, gv};
        for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) be->release(be, ptrs[i]);
    }
    CHECK(rc[0] == 0 && rc[1] == 0, "%s attention B %d T %d H %d hd %d: rc %d/%d (%s)", tag, B, T, H, hd, rc[0], rc[1],
          vit_error());
    const char *names[] = {"out", "dq", "dk", "dv"};
    for (int j = 0; j < 4; j++) {
        char what[96];
        snprintf(what, sizeof what, "%s attention %s (B %d T %d H %d hd %d)", tag, names[j], B, T, H, hd);
        compare(what, r[1][j], r[0][j], n, tol);
    }
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 4; j++) free(r[b][j]);
    free(q), free(k), free(v), free(dout);
}

static void test_attention(void) {
    int shapes[][4] = {{2, 5, 3, 16}, {2, 17, 4, 16}, {2, 197, 3, 64}, {1, 577, 2, 128},
                       {2, 50, 2, 80}, {1, 33, 2, 33}, {3, 1, 2, 64}, {1, 65, 1, 96}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        attention_case(gpu, "fp32", shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], 1e-4);
    // bf16 precision: the tensor-core kernels for hd 32/64/128 (operands, P and dS rounded to
    // bf16: 8 significant bits, fp32 softmax and sums), bound 2e-2; other hd fall back to fp32.
    int bf[][4] = {{2, 197, 3, 64}, {2, 50, 3, 64}, {1, 65, 2, 32}, {3, 1, 2, 64}, {1, 130, 1, 128}, {1, 33, 2, 80}};
    for (size_t si = 0; si < sizeof bf / sizeof bf[0]; si++)
        attention_case(gpu_bf16, "bf16", bf[si][0], bf[si][1], bf[si][2], bf[si][3], 2e-2);
    // The mma.sync kernels (VIT_CUDA_ATTENTION=mma) for hd 32/64, same bound: one key and one
    // query, tiles that end on and just past 64, ViT-B/16's 197 and 577 tokens, an odd head count.
    int mm[][4] = {{3, 1, 2, 64}, {2, 17, 3, 32}, {1, 64, 2, 64}, {1, 65, 2, 64}, {2, 128, 1, 32},
                   {2, 197, 3, 64}, {1, 577, 2, 64}, {1, 130, 5, 64}};
    for (size_t si = 0; si < sizeof mm / sizeof mm[0]; si++)
        attention_case(gpu_mma, "bf16 mma", mm[si][0], mm[si][1], mm[si][2], mm[si][3], 2e-2);
}

// ---- optimizer --------------------------------------------------------------------------------
static void test_optimizer(void) {
    size_t n = 50001;
    const char *kinds[] = {"sgd", "adam", "adamw", "rmsprop"};
    for (int ki = 0; ki < 4; ki++) {
        OptimConfig oc;
        optim_config_default(&oc, kinds[ki]);
        float *p = randn(n, 70, 1), *m = randn(n, 71, 0.1f), *v = randn(n, 72, 0.1f);
        for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];  // second moments are non-negative
        float *r[2][3];
        Backend *bes[2] = {cpu, gpu};
        for (int b = 0; b < 2; b++) {
            Backend *be = bes[b];
            float *dp = up(be, p, n, 0), *dm = up(be, m, n, 1), *dv = up(be, v, n, 0);
            for (int t = 1; t <= 3; t++) {
                float *g = randn(n, 73 + t, 0.5f);
                float *dg = up(be, g, n, 0);
                OptimStep s = {oc.kind, 1e-2f * t, oc.momentum, oc.beta1, oc.beta2, oc.rho, oc.epsilon,
                               t == 2 ? 0.05f : 0.0f, t, t == 3 ? 0.3f : 1.0f};
                be->optimizer_update(be, dp, dg, optim_uses_m(oc.kind) ? dm : NULL, optim_uses_v(oc.kind) ? dv : NULL,
                                     n, &s);
                be->release(be, dg);
                free(g);
            }
            r[b][0] = down(be, dp, n);
            r[b][1] = down(be, dm, n);
            r[b][2] = down(be, dv, n);
            be->release(be, dp), be->release(be, dm - 1), be->release(be, dv);
        }
        char what[3][64];
        snprintf(what[0], 64, "optimizer %s params", kinds[ki]);
        snprintf(what[1], 64, "optimizer %s m", kinds[ki]);
        snprintf(what[2], 64, "optimizer %s v", kinds[ki]);
        for (int j = 0; j < 3; j++) compare(what[j], r[1][j], r[0][j], n, 1e-5);
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 3; j++) free(r[b][j]);
        free(p), free(m), free(v);
    }
}

// The multi-tensor update: the GPU's one launch over a chunk table against the CPU's segments
// bit for bit (both round every operation to nearest), and against the GPU's own one update
// per segment. Odd sizes around the 8192-float chunks, an empty segment, slots in another
// order than the parameters, and floats between segments that must stay as they were. Step 2
// passes other segments than steps 1 and 3, so the cached table is rebuilt and rebuilt back.
static void test_optimizer_segments(void) {
    enum { NS = 8 };
    const size_t sizes[NS] = {1, 8191, 8192, 8193, 0, 3, 100003, 17};
    const int decays[NS] = {1, 0, 1, 0, 1, 1, 0, 1};
    OptimSegment segs[NS];
    size_t np = 0, ns = 7;
    for (int i = 0; i < NS; i++) {
        np += 4;  // a gap before each segment
        segs[i] = (OptimSegment){np, 0, sizes[i], decays[i]};
        np += sizes[i];
    }
    np += 4;
    for (int i = NS - 1; i >= 0; i--) {  // slots in reverse order, 2 floats apart
        segs[i].slot = ns;
        ns += sizes[i] + 2;
    }
    OptimSegment other[3] = {segs[6], segs[0], segs[3]};  // step 2: a different table
    const char *kinds[] = {"sgd", "adam", "adamw", "rmsprop"};
    for (int ki = 0; ki < 4; ki++) {
        OptimConfig oc;
        optim_config_default(&oc, kinds[ki]);
        int um = optim_uses_m(oc.kind), uv = optim_uses_v(oc.kind);
        float *p = randn(np, 80, 1), *m = randn(ns, 81, 0.1f), *v = randn(ns, 82, 0.1f);
        for (size_t i = 0; i < ns; i++) v[i] = v[i] * v[i];
        // r[run][p, m, v]: runs are cpu segments, gpu segments, gpu one update per segment.
        float *r[3][3];
        Backend *bes[3] = {cpu, gpu, gpu};
        for (int run = 0; run < 3; run++) {
            Backend *be = bes[run];
            float *dp = up(be, p, np, 1), *dm = up(be, m, ns, 0), *dv = up(be, v, ns, 1);
            for (int t = 1; t <= 3; t++) {
                float *g = randn(np, 83 + t, 0.5f), *dg = up(be, g, np, 1);
                OptimStep s = {oc.kind, 1e-2f * t, oc.momentum, oc.beta1, oc.beta2, oc.rho, oc.epsilon, 0.05f, t,
                               0.5f + 0.2f * t};
                const OptimSegment *sg = t == 2 ? other : segs;
                int n = t == 2 ? 3 : NS;
                if (run < 2) {
                    be->optimizer_update_segments(be, dp, dg, um ? dm : NULL, uv ? dv : NULL, sg, n, &s);
                } else {
                    for (int i = 0; i < n; i++) {
                        OptimStep si = s;
                        if (!sg[i].decay) si.weight_decay = 0.0f;
                        be->optimizer_update(be, dp + sg[i].param, dg + sg[i].param, um ? dm + sg[i].slot : NULL,
                                             uv ? dv + sg[i].slot : NULL, sg[i].n, &si);
                    }
                }
                be->release(be, dg - 1);
                free(g);
            }
            r[run][0] = down(be, dp, np);
            r[run][1] = down(be, dm, ns);
            r[run][2] = down(be, dv, ns);
            be->release(be, dp - 1), be->release(be, dm), be->release(be, dv - 1);
        }
        const char *names[3] = {"params", "m", "v"};
        size_t lens[3] = {np, ns, ns};
        for (int j = 0; j < 3; j++) {
            CHECK(!memcmp(r[1][j], r[0][j], lens[j] * sizeof(float)),
                  "optimizer segments %s %s: gpu not bit-identical to the cpu (rel diff %.3g)", kinds[ki], names[j],
                  check_rel_diff(r[1][j], r[0][j], lens[j]));
            CHECK(!memcmp(r[1][j], r[2][j], lens[j] * sizeof(float)),
                  "optimizer segments %s %s: gpu not bit-identical to its per-segment updates (rel diff %.3g)",
                  kinds[ki], names[j], check_rel_diff(r[1][j], r[2][j], lens[j]));
        }
        // Between segments (and in slots the kind does not use) nothing moved.
        int untouched = 1;
        size_t at = 0;
        for (int i = 0; i < NS; i++) {
            for (; at < segs[i].param; at++) untouched &= !memcmp(&r[1][0][at], &p[at], sizeof(float));
            at += segs[i].n;
        }
        for (; at < np; at++) untouched &= !memcmp(&r[1][0][at], &p[at], sizeof(float));
        if (!um) untouched &= !memcmp(r[1][1], m, ns * sizeof(float));
        if (!uv) untouched &= !memcmp(r[1][2], v, ns * sizeof(float));
        CHECK(untouched, "optimizer segments %s: floats outside the segments changed on the gpu", kinds[ki]);
        for (int run = 0; run < 3; run++)
            for (int j = 0; j < 3; j++) free(r[run][j]);
        free(p), free(m), free(v);
    }
}

// ---- whole model ------------------------------------------------------------------------------
static ViTConfig small_config(int representation, int gelu_tanh) {
    ViTConfig c;
    memset(&c, 0, sizeof c);
    strcpy(c.name, "ViT-test");
    c.hidden = 64, c.mlp = 128, c.heads = 4, c.layers = 2, c.patch = 8, c.image = 32, c.channels = 3;
    c.classes = 10, c.representation = representation, c.dropout = 0.1f, c.gelu_tanh = gelu_tanh;
    return c;
}

// Official initialisation, but a random head: with the official zero head nothing below it
// would get a gradient in the first step.
static float *initial_params(const ViTConfig *c) {
    ParamTable t;
    ParamOffsets o;
    params_build(&t, &o, c);
    float *h = malloc(t.total * sizeof(float));
    params_init(&t, h, 11);
    size_t head_in = c->representation ? (size_t)c->representation : (size_t)c->hidden;
    for (size_t i = 0; i < head_in * c->classes + c->classes; i++)
        h[o.head_kernel + i] = (float)(0.2 * rng_normal(12, 80, i));
    params_free(&t, &o);
    return h;
}

// Images with a class-dependent brightness, so a few steps learn something.
static void make_batch(uint8_t *img, int *lab, int B, const ViTConfig *c, uint32_t batch_index) {
    size_t per = (size_t)c->image * c->image * c->channels;
    for (int b = 0; b < B; b++) {
        uint64_t id = (uint64_t)batch_index * B + b;
        lab[b] = (int)(rng_uniform(21, 90, id) * c->classes);
        for (size_t i = 0; i < per; i++) {
            double u = rng_uniform(21, 91, id * per + i);
            img[b * per + i] = (uint8_t)(lab[b] * 20 + u * 60);
        }
    }
}

typedef struct {
    float losses[2 * 8];   // per sample, both micro-batches
    float *grads, *params;
} StepResult;

// One update with accumulation 2: forward + backward twice, then optim_step (sgd with
// momentum, clipping on: linear in the gradient, so small differences stay small).
static int whole_step(Backend *be, const ViTConfig *c, const float *init, StepResult *r) {
    enum { B = 8, A = 2 };
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    be->zero(be, m.grads, n * sizeof(float));
    OptimConfig oc;
    optim_config_default(&oc, "sgd");
    float *mom = be->alloc(be, n * sizeof(float));
    be->zero(be, mom, n * sizeof(float));
    uint8_t *img = malloc(B * per);
    int lab[B], rc = VIT_OK;
    for (int a = 0; a < A && rc == VIT_OK; a++) {
        make_batch(img, lab, B, c, (uint32_t)a);
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 99, (uint32_t)a);
        if (rc == VIT_OK) memcpy(r->losses + a * B, m.host_losses, B * sizeof(float));
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / (B * A), 99, (uint32_t)a);
    }
    double norm = 0;
    r->grads = malloc(n * sizeof(float));
    be->download(be, r->grads, m.grads, n * sizeof(float));
    if (rc == VIT_OK) rc = optim_step(be, &m.table, m.params, m.grads, mom, NULL, &oc, 0.05f, 1, &norm);
    r->params = malloc(n * sizeof(float));
    be->download(be, r->params, m.params, n * sizeof(float));
    free(img);
    be->release(be, mom);
    vit_destroy(&m);
    return rc;
}

static void test_whole_step(void) {
    for (int variant = 0; variant < 2; variant++) {
        ViTConfig c = small_config(variant ? 16 : 0, variant);
        float *init = initial_params(&c);
        StepResult rc_, rg;
        int e1 = whole_step(cpu, &c, init, &rc_);
        const char *m1 = e1 ? vit_error() : "";
        CHECK(e1 == 0, "whole step on the CPU: %s", m1);
        int e2 = whole_step(gpu, &c, init, &rg);
        CHECK(e2 == 0, "whole step on the GPU: %s", e2 ? vit_error() : "");
        const char *tag = variant ? "pre_logits + tanh GELU" : "plain";
        double dl = check_rel_diff(rg.losses, rc_.losses, 16);
        CHECK(dl <= 1e-5, "whole step (%s): losses rel diff %.3g", tag, dl);
        ParamTable t;
        ParamOffsets o;
        params_build(&t, &o, &c);
        // Per tensor, relative to the larger of its own scale and 1e-2 of the whole buffer's:
        // some gradients are exactly zero in exact arithmetic (the key bias: softmax ignores
        // a shift shared by all keys), and there both devices hold only rounding noise.
        double gmax = 0, pmax = 0;
        for (size_t i = 0; i < t.total; i++) {
            gmax = fmax(gmax, fabs(rc_.grads[i]));
            pmax = fmax(pmax, fabs(rc_.params[i]));
        }
        int bad_g = 0, bad_p = 0;
        for (int i = 0; i < t.count; i++) {
            const ParamEntry *e = &t.entries[i];
            double sg = 0, sp = 0, mg = 0, mp = 0;
            for (size_t j = e->offset; j < e->offset + e->size; j++) {
                sg = fmax(sg, fabs(rc_.grads[j]));
                sp = fmax(sp, fabs(rc_.params[j]));
                mg = fmax(mg, fabs(rg.grads[j] - rc_.grads[j]));
                mp = fmax(mp, fabs(rg.params[j] - rc_.params[j]));
                if (!(rg.grads[j] == rg.grads[j]) || !(rg.params[j] == rg.params[j])) mg = mp = INFINITY;  // NaN
            }
            double dg = mg / fmax(sg, 1e-2 * gmax), dp = mp / fmax(sp, 1e-2 * pmax);
            if (!(dg <= 1e-4) && bad_g++ < 5) fprintf(stderr, "  gradient %s: rel diff %.3g\n", e->name, dg);
            if (!(dp <= 1e-5) && bad_p++ < 5) fprintf(stderr, "  parameter %s: rel diff %.3g\n", e->name, dp);
        }
        CHECK(bad_g == 0, "whole step (%s): %d gradient tensors differ by more than 1e-4", tag, bad_g);
        CHECK(bad_p == 0, "whole step (%s): %d updated parameter tensors differ by more than 1e-5", tag, bad_p);
        params_free(&t, &o);
        free(init), free(rc_.grads), free(rc_.params), free(rg.grads), free(rg.params);
    }
}

// 50 updates (batch 8, no accumulation) on the same data: the mean loss of every step.
static int train_run(Backend *be, const ViTConfig *c, const float *init, int steps, float *losses) {
    enum { B = 8 };
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    OptimConfig oc;
    optim_config_default(&oc, "adamw");
    float *mom1 = be->alloc(be, n * sizeof(float)), *mom2 = be->alloc(be, n * sizeof(float));
    be->zero(be, mom1, n * sizeof(float));
    be->zero(be, mom2, n * sizeof(float));
    uint8_t *img = malloc(B * per);
    int lab[B], rc = VIT_OK;
    for (int s = 0; s < steps && rc == VIT_OK; s++) {
        make_batch(img, lab, B, c, (uint32_t)(100 + s % 10));
        be->zero(be, m.grads, n * sizeof(float));
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 5, (uint32_t)s);
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 5, (uint32_t)s);
        double sum = 0, norm;
        for (int b = 0; b < B; b++) sum += m.host_losses[b];
        losses[s] = (float)(sum / B);
        if (rc == VIT_OK) rc = optim_step(be, &m.table, m.params, m.grads, mom1, mom2, &oc, 1e-3f, s + 1, &norm);
    }
    free(img);
    be->release(be, mom1), be->release(be, mom2);
    vit_destroy(&m);
    return rc;
}

static void test_training_run(void) {
    enum { STEPS = 50 };
    ViTConfig c = small_config(0, 0);
    float *init = initial_params(&c);
    float lc[STEPS], lg[STEPS], lb[STEPS];
    int e1 = train_run(cpu, &c, init, STEPS, lc);
    CHECK(e1 == 0, "50-step run on the CPU: %s", e1 ? vit_error() : "");
    int e2 = train_run(gpu, &c, init, STEPS, lg);
    CHECK(e2 == 0, "50-step run on the GPU (fp32): %s", e2 ? vit_error() : "");
    int e3 = train_run(gpu_bf16, &c, init, STEPS, lb);
    CHECK(e3 == 0, "50-step run on the GPU (bf16): %s", e3 ? vit_error() : "");
    double worst32 = 0, worst16 = 0;
    int at32 = 0, at16 = 0;
    for (int s = 0; s < STEPS; s++) {
        double scale = fabs(lc[s]) > 1 ? fabs(lc[s]) : 1;
        double d32 = fabs(lg[s] - lc[s]) / scale, d16 = fabs(lb[s] - lc[s]) / scale;
        if (!(d32 <= worst32)) worst32 = d32, at32 = s;
        if (!(d16 <= worst16)) worst16 = d16, at16 = s;
    }
    printf("50-step run: loss %.4f -> %.4f (cpu), %.4f -> %.4f (gpu fp32), %.4f -> %.4f (gpu bf16); worst "
           "differences %.2g (fp32, step %d), %.2g (bf16, step %d)\n",
           lc[0], lc[STEPS - 1], lg[0], lg[STEPS - 1], lb[0], lb[STEPS - 1], worst32, at32, worst16, at16);
    CHECK(worst32 <= 1e-3, "50-step run: fp32 GPU loss at step %d is %.6f, CPU %.6f", at32, lg[at32], lc[at32]);
    CHECK(worst16 <= 0.1, "50-step run: bf16 GPU loss at step %d is %.6f, CPU %.6f", at16, lb[at16], lc[at16]);
    free(init);
}

// ---- errors -----------------------------------------------------------------------------------
static void test_errors(void) {
    // An impossible allocation fails with a message naming the size; the backend stays usable.
    void *p = gpu->alloc(gpu, (size_t)1 << 52);
    CHECK(p == NULL && strstr(vit_error(), "MiB"), "huge alloc: %p, message '%s'", p, vit_error());
    float one = 3.0f, back = 0;
    float *d = gpu->alloc(gpu, sizeof(float));
    gpu->upload(gpu, d, &one, sizeof one);
    gpu->download(gpu, &back, d, sizeof back);
    CHECK(d && back == 3.0f, "backend unusable after a failed allocation (read back %g)", back);
    gpu->release(gpu, d);
    // An unsupported head dimension is refused without breaking the backend.
    int rc = gpu->attention_forward(gpu, NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 1, 129);
    CHECK(rc != 0 && strstr(vit_error(), "head dimension"), "hd 129: rc %d, '%s'", rc, vit_error());
    CHECK(!strcmp(gpu->name, "cuda") || getenv("VIT_TEST_CUDA_ON_CPU"), "backend name '%s'", gpu->name);
}

#ifdef VIT_NCCL
// ---- NCCL with one rank -----------------------------------------------------------------------
// No MPI here: the communicator has this process alone, so a sum is the identity. A bucket
// all-reduced in place is unchanged, and the bucketed sync driven by a backward pass (small
// buckets, so many start while the pass runs) leaves every gradient bit-identical to a pass
// without it. Ordering between the streams only shows with several ranks (tests/cli_gpu_dist.sh).
static void on_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

static void test_nccl(void) {
    NcclSync *s = nccl_sync_create(gpu);
    CHECK(s != NULL, "nccl_sync_create with one rank: %s", s ? "" : vit_error());
    if (!s) return;
    GradTransport t = nccl_sync_transport(s);
    size_t n = ((size_t)1 << 20) + 3;
    float *h = randn(n, 40, 1.0f), *d = up(gpu, h, n, 1);
    t.start(t.ctx, d, n);
    int rc = t.finish(t.ctx);
    float *back = down(gpu, d, n);
    CHECK(rc == 0 && !memcmp(back, h, n * sizeof(float)), "one-rank in-place all-reduce of %zu floats: rc %d %s", n,
          rc, rc ? vit_error() : "(values changed)");
    free(back);
    int counts[1] = {(int)n}, displs[1] = {0};  // --zero 1's parameter all-gather: one rank owns it all
    rc = t.allgather(t.ctx, d, counts, displs);
    back = down(gpu, d, n);
    CHECK(rc == 0 && !memcmp(back, h, n * sizeof(float)), "one-rank parameter all-gather: rc %d %s", rc,
          rc ? vit_error() : "(values changed)");
    free(h), free(back);
    gpu->release(gpu, d - 1);

    enum { B = 8 };
    ViTConfig c = small_config(0, 0);
    float *init = initial_params(&c);
    ViT m;
    if (vit_create(&m, &c, gpu, B, 1)) {
        CHECK(0, "model on the GPU: %s", vit_error());
        nccl_sync_destroy(s);
        free(init);
        return;
    }
    size_t np = m.table.total, per = (size_t)c.image * c.image * c.channels;
    uint8_t *img = malloc(B * per);
    int lab[B];
    make_batch(img, lab, B, &c, 0);
    gpu->upload(gpu, m.params, init, np * sizeof(float));
    float *grads[2];
    GradSync *g = gradsync_create_with(m.grads, np, 4099, &t);
    for (int with = 0; with < 2; with++) {
        gpu->zero(gpu, m.grads, np * sizeof(float));
        gradsync_begin(g);
        m.grad_ready = with ? on_ready : NULL;
        m.grad_ready_ctx = g;
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 99, 0);
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 99, 0);
        if (rc == VIT_OK && with) rc = gradsync_finish(g);
        CHECK(rc == VIT_OK, "backward pass %s the NCCL buckets: %s", with ? "with" : "without", rc ? vit_error() : "");
        grads[with] = down(gpu, m.grads, np);
    }
    CHECK(!memcmp(grads[0], grads[1], np * sizeof(float)), "one-rank NCCL buckets (%zu of them) changed the gradients",
          gradsync_buckets(g));
    double w = gradsync_wait_seconds(g);
    CHECK(w >= 0 && w < 10, "NCCL wait seconds %g", w);
    printf("nccl (one rank): %zu buckets over %zu gradients unchanged; exposed wait %.3f ms\n", gradsync_buckets(g), np,
           1e3 * w);
    m.grad_ready = NULL;
    gradsync_destroy(g);
    nccl_sync_destroy(s);
    free(grads[0]), free(grads[1]), free(img), free(init);
    vit_destroy(&m);
}
#endif

int main(void) {
    int on_cpu = getenv("VIT_TEST_CUDA_ON_CPU") && !strcmp(getenv("VIT_TEST_CUDA_ON_CPU"), "1");
    if (!on_cpu && backend_cuda_device_count() == 0) {
        printf("test_cuda: skipped (no CUDA device)\n");
        return 0;
    }
    cpu = backend_cpu_create(0);
    if (on_cpu) {
        gpu = gpu_tf32 = gpu_bf16 = gpu_mma = backend_cpu_create(0);
    } else {
        gpu = backend_cuda_create(0, CUDA_FP32);
        gpu_tf32 = backend_cuda_create(0, CUDA_TF32);
        gpu_bf16 = backend_cuda_create(0, CUDA_BF16);
        setenv("VIT_CUDA_ATTENTION", "mma", 1);  // read at creation
        gpu_mma = backend_cuda_create(0, CUDA_BF16);
        unsetenv("VIT_CUDA_ATTENTION");
    }
    if (!cpu || !gpu || !gpu_tf32 || !gpu_bf16 || !gpu_mma) {
        CHECK(0, "creating the backends: %s", vit_error());
        return check_report("test_cuda");
    }
    test_gemm();
    test_pointwise();
    test_dropout();
    test_fused();
    test_upload_async();
    test_reductions();
    test_tokens();
    test_xent();
    test_attention();
    test_optimizer();
    test_optimizer_segments();
    test_whole_step();
    test_training_run();
    if (!on_cpu) test_errors();
#ifdef VIT_NCCL
    if (!on_cpu) test_nccl();
#endif
    if (!on_cpu) {
        gpu->destroy(gpu);
        gpu_tf32->destroy(gpu_tf32);
        gpu_bf16->destroy(gpu_bf16);
        gpu_mma->destroy(gpu_mma);
    } else {
        gpu->destroy(gpu);
    }
    cpu->destroy(cpu);
    return check_report("test_cuda");
}
