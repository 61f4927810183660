// Roofline calibration: one op timed in batches, best batch kept, for a matrix product large
// enough to reach the matrix units' rate and an add over buffers far larger than the caches.
#include "roofline.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "backend/backend.h"
#include "util/clock.h"
#include "util/status.h"

enum { GEMM_MIN_N = 1024, GEMM_MAX_N = 4096, MAX_REPS = 5, MAX_BATCH = 10000 };
static const size_t ADD_BYTES = (size_t)64 << 20;  // per buffer: past any L2 and most L3s
static const double GROW_BELOW_S = 2e-3;  // a product this quick is too small to fill the device
static const double BATCH_S = 5e-3;       // calls timed together, so synchronize and the clock are noise
static const double BUDGET_S = 0.4;       // per ceiling: no batch starts after this, once two ran

typedef struct {
    Backend *be;
    int n;         // gemm: n x n times n x n
    size_t elems;  // add: elements per buffer
    float *a, *b, *c;
} Work;

typedef int (*Call)(Work *w);

static int gemm_call(Work *w) {
    return w->be->gemm(w->be, 1, w->n, w->n, w->n, w->a, 0, w->b, 0, w->c, NULL, 1.0f, 0);
}

static int add_call(Work *w) {
    w->be->add(w->be, w->c, w->a, w->b, w->elems);
    return VIT_OK;
}

static void sync(Backend *be) {
    if (be->synchronize) be->synchronize(be);
}

// Seconds that `calls` calls take, synchronized before and after (a GPU runs them async).
static int timed(Work *w, Call call, long calls, double *sec) {
    sync(w->be);
    double t0 = clock_seconds();
    for (long i = 0; i < calls; i++)
        if (call(w)) return VIT_ERR;
    sync(w->be);
    *sec = clock_seconds() - t0;
    return VIT_OK;
}

// One untimed call (oneDNN primitive creation, cuBLASLt heuristics, first page touches),
// then one timed: a rough seconds per call.
static int probe(Work *w, Call call, double *t1) {
    double warm;
    return timed(w, call, 1, &warm) || timed(w, call, 1, t1) ? VIT_ERR : VIT_OK;
}

// Best seconds per call over batches of >= BATCH_S (the probe counts as one): the fastest
// batch is the one least disturbed by other processes, page faults and clock changes.
static int best_of(Work *w, Call call, double t1, double *best) {
    long calls = t1 >= BATCH_S ? 1 : (long)fmin(MAX_BATCH, ceil(BATCH_S / fmax(t1, 1e-7)));
    *best = t1;
    double start = clock_seconds();
    for (int r = 0; r < MAX_REPS && (r < 2 || clock_seconds() - start < BUDGET_S); r++) {
        double t;
        if (timed(w, call, calls, &t)) return VIT_ERR;
        if (t / calls < *best) *best = t / calls;
    }
    return VIT_OK;
}

static void release3(Work *w) {
    if (w->a) w->be->release(w->be, w->a);
    if (w->b) w->be->release(w->be, w->b);
    if (w->c) w->be->release(w->be, w->c);
    w->a = w->b = w->c = NULL;
}

static int alloc3(Work *w, size_t bytes) {
    w->a = w->be->alloc(w->be, bytes);
    w->b = w->a ? w->be->alloc(w->be, bytes) : NULL;
    w->c = w->b ? w->be->alloc(w->be, bytes) : NULL;
    if (w->c) return VIT_OK;
    release3(w);
    return VIT_ERR;
}

// Operands with varied bits: a GPU multiplying zeros draws less power and clocks higher.
static int fill_operands(Work *w) {
    size_t n = (size_t)w->n * w->n;
    float *h = malloc(n * sizeof *h);
    if (!h) return vit_fail("roofline: out of host memory for a %d x %d matrix", w->n, w->n);
    for (size_t i = 0; i < n; i++) h[i] = 0.05f * (float)((int)(i % 13) - 6);
    w->be->upload(w->be, w->a, h, n * sizeof *h);
    w->be->upload(w->be, w->b, h, n * sizeof *h);
    w->be->zero(w->be, w->c, n * sizeof *h);
    free(h);
    return VIT_OK;
}

// Square products from GEMM_MIN_N, doubled while one takes under GROW_BELOW_S (a GPU, or
// a CPU with many cores); a larger size that does not fit keeps the smaller one's figure.
static int gemm_rate(Backend *be, double *gflops) {
    double rate = 0;
    for (int n = GEMM_MIN_N; n <= GEMM_MAX_N; n *= 2) {
        Work w = {.be = be, .n = n};
        if (alloc3(&w, (size_t)n * n * sizeof(float))) {
            if (rate > 0) break;
            return VIT_ERR;
        }
        double flops = 2.0 * n * n * n, t1 = 0, best = 0;
        int rc = fill_operands(&w);
        if (!rc) rc = probe(&w, gemm_call, &t1);
        int last = rc || t1 >= GROW_BELOW_S || 2 * n > GEMM_MAX_N;
        if (!rc && last) rc = best_of(&w, gemm_call, t1, &best);
        release3(&w);
        if (rc) {
            char why[512];
            snprintf(why, sizeof why, "%s", vit_error());
            return vit_fail("roofline: the %d x %d x %d matrix product failed: %s", n, n, n, why);
        }
        rate = flops / (last ? best : t1) / 1e9;
        if (last) break;
    }
    *gflops = rate;
    return VIT_OK;
}

// out = a + b over three ADD_BYTES buffers, zeroed first so every page exists before timing.
static int add_rate(Backend *be, double *gbs) {
    Work w = {.be = be, .elems = ADD_BYTES / sizeof(float)};
    if (alloc3(&w, ADD_BYTES)) return VIT_ERR;
    be->zero(be, w.a, ADD_BYTES);
    be->zero(be, w.b, ADD_BYTES);
    be->zero(be, w.c, ADD_BYTES);
    double t1 = 0, best = 0;
    int rc = probe(&w, add_call, &t1);
    if (!rc) rc = best_of(&w, add_call, t1, &best);
    release3(&w);
    *gbs = rc ? 0 : 12.0 * (double)w.elems / best / 1e9;
    return rc;
}

int roofline_valid(const Roofline *r) {
    return r && isfinite(r->gflops) && r->gflops > 0 && isfinite(r->gbs) && r->gbs > 0;
}

int roofline_measure(Backend *be, Roofline *out) {
    if (out) *out = (Roofline){0};
    if (!be || !out) return vit_fail("roofline_measure: %s", be ? "no result to fill" : "no backend");
    if (!be->gemm || !be->add || !be->alloc || !be->release || !be->upload || !be->zero)
        return vit_fail("roofline: the %s backend lacks gemm, add or a memory op", be->name ? be->name : "");
    double t0 = clock_seconds();
    Roofline r = {0};
    if (gemm_rate(be, &r.gflops) || add_rate(be, &r.gbs)) return VIT_ERR;
    r.seconds = clock_seconds() - t0;
    if (!roofline_valid(&r))
        return vit_fail("roofline: the clock gave no usable time (%g GFLOP/s, %g GB/s)", r.gflops, r.gbs);
    *out = r;
    return VIT_OK;
}
