// The CPU attention (src/backend/cpu/cpu_attention.c) against a naive fp64 triple loop:
// forward output and saved probabilities, backward dQ, dK, dV from the analytic formulas,
// on ViT's shapes (T = 197 and 577, hd = 64), the demo's (T = 50, hd = 16) and small ones
// that hit every tile edge, through every kernel set the CPU has: AVX-512, AVX2/FMA (both
// chosen with cpu_isa_force) and dnnl_sgemm (cpu_attention_use_sgemm; also what
// VIT_CPU_ISA=generic gets, checked bit for bit).
// Tolerances, normwise per tensor (max|ours - ref| / max|ref|):
//   fp32 1e-5 (fp32 sums of up to T terms; measured 1.2e-6);
//   bf16 1e-3 against the fp64 loop on the same bf16-rounded operands (measured 2.7e-4, 4.4e-4
//   in the -O1 sanitizer build: an fp32 P or dS next to a bf16 rounding boundary may round the
//   other way, 2^-8 on that element), while the fp32 results miss that reference by more than
//   twice the tolerance (checked per shape).
// Also: every output element written (outputs start as NaN), scratch used within
// attention_scratch_floats (exact-size buffers, run under ASan), results independent of the
// thread count bit for bit (per kernel set, fp32 and bf16), and the AVX-512 and AVX2 results
// not all identical (the dispatch really switches kernels).
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_isa.h"
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
// backend does (Q, K, V, dO; P before P V and P^T dO; dS before dS K and dS^T Q). The P that
// is rounded is the backend's fp32 P (`p32`, checked against the fp64 P on its own) when
// given: a P within an fp32 rounding error of a bf16 rounding boundary rounds either way, a
// 2^-8 change of that element, which at T = 577 (where each output averages many more terms
// and max|out| is small) alone came to 0.99e-3 of max|out|.
static void reference(Case *c, int bf16, const float *p32) {
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
                    float p = p32 ? p32[((size_t)b * c->H + h) * T * T + i * T + j] : (float)P[i * T + j];
                    pr[i * T + j] = maybe_round(p, bf16);
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

// A kernel set: the instruction set forced with cpu_isa_force, or dnnl_sgemm.
typedef struct {
    const char *name;
    int isa, sgemm;
} Path;

static const Path paths[] = {{"avx512", CPU_ISA_AVX512, 0},
                             {"avx2", CPU_ISA_AVX2, 0},
                             {"sgemm", CPU_ISA_AVX512 + 1, 1},
                             {"generic", CPU_ISA_GENERIC, 0}};
enum { PATHS = sizeof paths / sizeof paths[0], GENERIC = 3, SGEMM = 2 };

// Selects a path; 0 when the CPU lacks its instruction set.
static int select_path(const Path *p) {
    cpu_attention_use_sgemm(p->sgemm);
    return (int)cpu_isa_force(p->isa) == p->isa || p->isa > CPU_ISA_AVX512;
}

static void default_path(void) {
    cpu_attention_use_sgemm(0);
    cpu_isa_force(CPU_ISA_AVX512 + 1);
}

int main(void) {
    Backend *be2 = backend_cpu_create(2), *be1 = backend_cpu_create(1);
    // T, hd, B, H: the required ones; the demo's (50, 16); N edges of 4 and 12 columns (and 5
    // of 16 at T = 197: 197 = 12 * 16 + 5), T = 1, T = 5 (fewer rows than a tile), head sizes
    // of 1, 2, 2.5 and 4 vectors of 16; T = 300 and 577 for several row panels and products
    // over more than one block of K (128 and 256) rows.
    const int shapes[][4] = {{5, 8, 2, 3},   {17, 8, 2, 3},   {197, 8, 2, 3},  {5, 64, 2, 3},  {17, 64, 2, 3},
                             {197, 64, 2, 3}, {17, 12, 2, 3}, {7, 4, 2, 3},    {33, 20, 2, 3}, {1, 3, 2, 3},
                             {300, 16, 2, 3}, {5, 16, 2, 3},  {50, 16, 2, 4},  {50, 32, 2, 3}, {197, 32, 2, 2},
                             {50, 80, 2, 3},  {197, 80, 1, 2}, {5, 80, 2, 3},   {577, 64, 1, 2}, {577, 16, 1, 2}};
    int available[PATHS], differ = 0;
    for (int p = 0; p < PATHS; p++) {
        available[p] = select_path(&paths[p]);
        if (!available[p]) printf("attention: this CPU lacks %s, not tested\n", paths[p].name);
    }
    default_path();
    double worst32[PATHS] = {0}, worst16[PATHS] = {0};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], hd = shapes[s][1], B = shapes[s][2], H = shapes[s][3];
        Case c = case_new(B, T, H, hd, (uint32_t)s);
        reference(&c, 0, NULL);
        Result r32[PATHS];
        for (int p = 0; p < PATHS; p++) {
            if (!available[p]) continue;
            select_path(&paths[p]);
            char what[32];
            snprintf(what, sizeof what, "fp32 %s", paths[p].name);
            Result r1 = run(be1, &c);
            r32[p] = run(be2, &c);
            worst32[p] = fmax(worst32[p], check_against(&r32[p], &c, TOL_FP32, what));
            CHECK(same(&r1, &r32[p], &c), "%s T %d hd %d: 1 and 2 threads differ", what, T, hd);
            result_free(&r1);
        }
        if (available[0] && available[1]) differ |= !same(&r32[0], &r32[1], &c);
        CHECK(same(&r32[GENERIC], &r32[SGEMM], &c), "T %d hd %d: generic and sgemm differ", T, hd);
        default_path();
        Result f32 = run(be2, &c);
        int gap_checked = 0;
        Result r16[PATHS];
        for (int p = 0; p < PATHS; p++) {
            if (!available[p]) continue;
            select_path(&paths[p]);
            char what[32];
            snprintf(what, sizeof what, "bf16 %s", paths[p].name);
            backend_cpu_set_bf16(be1, 1);
            backend_cpu_set_bf16(be2, 1);
            Result r1 = run(be1, &c), r2 = run(be2, &c);
            backend_cpu_set_bf16(be1, 0);
            backend_cpu_set_bf16(be2, 0);
            CHECK(same(&r1, &r2, &c), "%s T %d hd %d: 1 and 2 threads differ", what, T, hd);
            result_free(&r1);
            result_free(&r32[p]);
            r16[p] = r2;
            if (p == GENERIC) {  // the sgemm path's kernels: the same results, no need for another reference
                CHECK(same(&r16[GENERIC], &r16[SGEMM], &c), "bf16 T %d hd %d: generic and sgemm differ", T, hd);
                continue;
            }
            reference(&c, 1, r2.probs);
            if (!gap_checked++) {
                // The bf16 check means something only if the fp32 results miss the bf16 reference
                // by well over its tolerance (the rounding is really there to be matched).
                size_t n = (size_t)B * T * H * hd;
                double gap = fmax(fmax(rel(f32.out, c.out, n), rel(f32.dq, c.dq, n)),
                                  fmax(rel(f32.dk, c.dk, n), rel(f32.dv, c.dv, n)));
                CHECK(gap > 2 * TOL_BF16, "T %d hd %d: fp32 results within %.3g of the bf16 reference", T, hd, gap);
            }
            worst16[p] = fmax(worst16[p], check_against(&r2, &c, TOL_BF16, what));
        }
        for (int p = 0; p < PATHS; p++)
            if (available[p]) result_free(&r16[p]);
        default_path();
        result_free(&f32);
        case_free(&c);
    }
    if (available[0] && available[1]) CHECK(differ, "avx512 and avx2 gave identical results: dispatch not switching?");
    for (int p = 0; p < GENERIC; p++)
        if (available[p])
            printf("attention %-6s: worst relative difference fp32 %.3g, bf16 %.3g\n", paths[p].name, worst32[p],
                   worst16[p]);
    be1->destroy(be1);
    be2->destroy(be2);
    return check_report("attention");
}
