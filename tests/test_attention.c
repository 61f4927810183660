// The CPU attention (src/backend/cpu/cpu_attention.c) against a naive fp64 triple loop:
// forward output and saved probabilities, backward dQ, dK, dV from the analytic formulas,
// on ViT's shapes (T = 197, hd = 64) and small ones that hit every tile edge, through both
// product paths (AVX2/FMA kernel and dnnl_sgemm).
// Tolerances, normwise per tensor (max|ours - ref| / max|ref|):
//   fp32 1e-5 (fp32 sums of up to T terms; measured 1.2e-6);
//   bf16 1e-3 against the fp64 loop on the same bf16-rounded operands (measured 2.7e-4, 4.4e-4
//   in the -O1 sanitizer build: an fp32 P or dS next to a bf16 rounding boundary may round the
//   other way, 2^-8 on that element), while the fp32 results miss that reference by more than
//   twice the tolerance (checked per shape).
// Also: every output element written (outputs start as NaN), scratch used within
// attention_scratch_floats (exact-size buffers, run under ASan), results independent of the
// thread count bit for bit.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_math.h"
#include "check.h"
#include "util/rng.h"

#define TOL_FP32 1e-5
#define TOL_BF16 1e-3

typedef struct {
    int B, T, H, hd;
    float *q, *k, *v, *dout;                       // inputs (B, T, H*hd)
    double *out, *probs, *dq, *dk, *dv;            // reference
} Case;

static float rnd(uint32_t stream, size_t i) { return (float)rng_normal(7, stream, i); }

static float maybe_round(float x, int bf16) { return bf16 ? cpu_bf16_round(x) : x; }

// fp64 reference; with bf16, each product's operands are rounded to bf16 first, as the
// backend does (Q, K, V, dO; P before P V and P^T dO; dS before dS K and dS^T Q).
static void reference(Case *c, int bf16) {
    int T = c->T, hd = c->hd, D = c->H * hd;
    double alpha = 1.0 / sqrt(hd);
    double *dp = malloc(sizeof(double) * T * T);
    float *pr = malloc(sizeof(float) * T * T), *dsr = malloc(sizeof(float) * T * T);
#define AT(x, t, ch) maybe_round((x)[((size_t)b * T + (t)) * D + h * hd + (ch)], bf16)
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++) {
            double *P = c->probs + ((size_t)b * c->H + h) * T * T;
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int e = 0; e < hd; e++) s += (double)AT(c->q, i, e) * AT(c->k, j, e);
                    P[i * T + j] = s * alpha;
                    mx = fmax(mx, P[i * T + j]);
                }
                for (int j = 0; j < T; j++) sum += (P[i * T + j] = exp(P[i * T + j] - mx));
                for (int j = 0; j < T; j++) {
                    P[i * T + j] /= sum;
                    pr[i * T + j] = maybe_round((float)P[i * T + j], bf16);
                }
            }
            for (int i = 0; i < T; i++)
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += (bf16 ? pr[i * T + j] : P[i * T + j]) * AT(c->v, j, e);
                    c->out[((size_t)b * T + i) * D + h * hd + e] = o;
                }
            for (int i = 0; i < T; i++) {
                double dot = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int e = 0; e < hd; e++) s += (double)AT(c->dout, i, e) * AT(c->v, j, e);
                    dp[i * T + j] = s;
                    dot += P[i * T + j] * s;
                }
                for (int j = 0; j < T; j++) {
                    dp[i * T + j] = P[i * T + j] * (dp[i * T + j] - dot);  // dS
                    dsr[i * T + j] = maybe_round((float)dp[i * T + j], bf16);
                }
            }
            for (int t = 0; t < T; t++)
                for (int e = 0; e < hd; e++) {
                    double gq = 0, gk = 0, gv = 0;
                    for (int j = 0; j < T; j++) {
                        gq += (bf16 ? dsr[t * T + j] : dp[t * T + j]) * AT(c->k, j, e);
                        gk += (bf16 ? dsr[j * T + t] : dp[j * T + t]) * AT(c->q, j, e);
                        gv += (bf16 ? pr[j * T + t] : P[j * T + t]) * AT(c->dout, j, e);
                    }
                    size_t o = ((size_t)b * T + t) * D + h * hd + e;
                    c->dq[o] = gq * alpha, c->dk[o] = gk * alpha, c->dv[o] = gv;
                }
        }
#undef AT
    free(dp), free(pr), free(dsr);
}

static double rel(const float *got, const double *ref, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        if (!(d <= md)) md = d;  // NaN (an element never written) propagates as a failure
        mr = fmax(mr, fabs(ref[i]));
    }
    return md / fmax(mr, 1e-30);
}

typedef struct {
    float *out, *probs, *dq, *dk, *dv;
    int rc;
} Result;

static float *nans(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static Result run(Backend *be, const Case *c) {
    size_t n = (size_t)c->B * c->T * c->H * c->hd;
    Result r = {nans(n), nans(be->attention_state_floats(be, c->B, c->T, c->H, c->hd)), nans(n), nans(n), nans(n), 0};
    // Exactly the advertised size, so ASan sees any write past it.
    size_t ns = be->attention_scratch_floats(be, c->B, c->T, c->H, c->hd);
    float *scratch = nans(ns ? ns : 1);
    r.rc = be->attention_forward(be, r.out, r.probs, scratch, c->q, c->k, c->v, c->B, c->T, c->H, c->hd);
    r.rc |= be->attention_backward(be, r.dq, r.dk, r.dv, c->dout, r.out, r.probs, scratch, c->q, c->k, c->v, c->B, c->T,
                                   c->H, c->hd);
    free(scratch);
    return r;
}

static void result_free(Result *r) { free(r->out), free(r->probs), free(r->dq), free(r->dk), free(r->dv); }

static Case case_new(int B, int T, int H, int hd, uint32_t seed) {
    Case c = {.B = B, .T = T, .H = H, .hd = hd};
    size_t n = (size_t)B * T * H * hd, np = (size_t)B * H * T * T;
    float *x[4];
    for (int t = 0; t < 4; t++) {
        x[t] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) x[t][i] = rnd(seed * 4 + t, i);
    }
    c.q = x[0], c.k = x[1], c.v = x[2], c.dout = x[3];
    c.out = malloc(n * sizeof(double)), c.dq = malloc(n * sizeof(double)), c.dk = malloc(n * sizeof(double));
    c.dv = malloc(n * sizeof(double)), c.probs = malloc(np * sizeof(double));
    return c;
}

static void case_free(Case *c) {
    free(c->q), free(c->k), free(c->v), free(c->dout);
    free(c->out), free(c->probs), free(c->dq), free(c->dk), free(c->dv);
}

// Checks one result against the reference; returns the worst relative difference.
static double check_against(const Result *r, const Case *c, double tol, const char *what) {
    size_t n = (size_t)c->B * c->T * c->H * c->hd, np = (size_t)c->B * c->H * c->T * c->T;
    double e[5] = {rel(r->out, c->out, n), rel(r->probs, c->probs, np), rel(r->dq, c->dq, n), rel(r->dk, c->dk, n),
                   rel(r->dv, c->dv, n)};
    const char *names[5] = {"out", "probs", "dq", "dk", "dv"};
    double worst = 0;
    CHECK(r->rc == 0, "%s B %d T %d H %d hd %d: rc %d", what, c->B, c->T, c->H, c->hd, r->rc);
    for (int i = 0; i < 5; i++) {
        CHECK(e[i] < tol, "%s B %d T %d H %d hd %d: %s off by %.3g (tolerance %.g)", what, c->B, c->T, c->H, c->hd,
              names[i], e[i], tol);
        worst = fmax(worst, e[i]);
    }
    return worst;
}

static int same(const Result *a, const Result *b, const Case *c) {
    size_t n = (size_t)c->B * c->T * c->H * c->hd * sizeof(float);
    size_t np = (size_t)c->B * c->H * c->T * c->T * sizeof(float);
    return !memcmp(a->out, b->out, n) && !memcmp(a->probs, b->probs, np) && !memcmp(a->dq, b->dq, n) &&
           !memcmp(a->dk, b->dk, n) && !memcmp(a->dv, b->dv, n);
}

int main(void) {
    Backend *be2 = backend_cpu_create(2), *be1 = backend_cpu_create(1);
    // T, hd: the required ones; then N edges of 4 and 12 columns, T = 1, and T = 300 for
    // several row panels and products over more than one block of K (256) rows.
    const int shapes[][2] = {{5, 8},  {17, 8}, {197, 8}, {5, 64}, {17, 64}, {197, 64},
                             {17, 12}, {7, 4},  {33, 20}, {1, 3},  {300, 16}};
    double worst32 = 0, worst16 = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], hd = shapes[s][1];
        Case c = case_new(2, T, 3, hd, (uint32_t)s);
        reference(&c, 0);
        for (int path = 0; path < 2; path++) {
            cpu_attention_use_sgemm(path);
            const char *what = path ? "fp32 sgemm" : "fp32 kernel";
            Result r2 = run(be2, &c), r1 = run(be1, &c);
            worst32 = fmax(worst32, check_against(&r2, &c, TOL_FP32, what));
            CHECK(same(&r1, &r2, &c), "%s T %d hd %d: 1 and 2 threads differ", what, T, hd);
            result_free(&r1);
            result_free(&r2);
        }
        cpu_attention_use_sgemm(0);
        Result f32 = run(be2, &c);
        reference(&c, 1);
        // The bf16 check means something only if the fp32 results miss the bf16 reference by
        // well over its tolerance (the rounding is really there to be matched).
        size_t n = (size_t)2 * T * 3 * hd;
        double gap = fmax(fmax(rel(f32.out, c.out, n), rel(f32.dq, c.dq, n)),
                          fmax(rel(f32.dk, c.dk, n), rel(f32.dv, c.dv, n)));
        CHECK(gap > 2 * TOL_BF16, "T %d hd %d: fp32 results within %.3g of the bf16 reference", T, hd, gap);
        for (int path = 0; path < 2; path++) {
            cpu_attention_use_sgemm(path);
            backend_cpu_set_bf16(be2, 1);
            Result r = run(be2, &c);
            backend_cpu_set_bf16(be2, 0);
            worst16 = fmax(worst16, check_against(&r, &c, TOL_BF16, path ? "bf16 sgemm" : "bf16 kernel"));
            result_free(&r);
        }
        cpu_attention_use_sgemm(0);
        result_free(&f32);
        case_free(&c);
    }
    printf("attention: worst relative difference fp32 %.3g, bf16 %.3g\n", worst32, worst16);
    be1->destroy(be1);
    be2->destroy(be2);
    return check_report("attention");
}
