// The CPU backend's kernels against each other: under every instruction set the CPU has
// (cpu_isa_force) the same bits as the generic loops, or within fp32 rounding where sums run
// in another order, and the same bits on one thread as on two. The ops against fp64
// references, finite differences and their contracts are tests/test_backend_ops.c's (on every
// instruction set and backend); this file keeps what that table does not check: determinism
// across instruction sets and thread counts, and the AVX-512 bf16 conversion kernels called
// directly.
#include <math.h>
#include <omp.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_ops_avx512.h"
#include "bf16_inputs.h"
#include "check.h"
#include "util/rng.h"
#include "util/status.h"

static Backend *be;

static float *randn(size_t n, uint32_t stream, float s) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * rng_normal(42, stream, i));
    return x;
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

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

// fp32 -> bf16 as the generic loop rounds (the reference of every instruction set).
static uint16_t bf16_ref(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Both AVX-512 to_bf16 kernels called directly, whichever of them the op picks on this CPU
// (test_backend_ops checks the op itself under every instruction set).
static void test_bf16_kernels(void) {
    if (cpu_isa() != CPU_ISA_AVX512) return;
    size_t n = 200003;  // not a multiple of 16
    uint32_t *bits = malloc(n * sizeof(uint32_t));
    bf16_test_bits(bits, n);
    float *src = malloc(n * sizeof(float));
    memcpy(src, bits, n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t));
    size_t bad = 0;
    for (int native = 0; native < 1 + cpu_has_avx512_bf16(); native++) {
        (native ? cpu_avx512_to_bf16_native : cpu_avx512_to_bf16)(h, src, n);
        for (size_t i = 0; i < n; i++) bad += h[i] != bf16_ref(bits[i]);
    }
    CHECK(bad == 0, "AVX-512 to_bf16 kernels (%s): %zu values off the reference",
          cpu_has_avx512_bf16() ? "integer and vcvtneps2bf16" : "integer", bad);
    free(bits), free(src), free(h);
}

// ---- the error model ------------------------------------------------------------------------
// A void op that cannot get its reduction scratch (address space capped just above what the
// process holds) leaves NaN in its output, and the next int-returning op fails with the
// message (backend.h's error model) instead of the process aborting.
static void test_latched_failure(void) {
#if defined(__SANITIZE_ADDRESS__)
    printf("ops: latched failure not checked under AddressSanitizer (it reserves the address space)\n");
#else
    Backend *b = backend_cpu_create(1);
    size_t n = (size_t)16 << 20;  // bias_backward over one row: n doubles of scratch
    float *dout = calloc(n, sizeof(float)), *dbias = calloc(n, sizeof(float)), c = 0, one = 1;
    long pages = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (statm && fscanf(statm, "%ld", &pages) != 1) pages = 0;
    if (statm) fclose(statm);
    struct rlimit old, cap;
    getrlimit(RLIMIT_AS, &old);
    cap = old;
    cap.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (n * sizeof(double)) / 4;
    if (!pages || !dout || !dbias || setrlimit(RLIMIT_AS, &cap)) {
        printf("ops: latched failure not checked (cannot cap the address space)\n");
    } else {
        b->bias_backward(b, dbias, dout, 1, (int)n);
        setrlimit(RLIMIT_AS, &old);
        CHECK(isnan(dbias[0]) && isnan(dbias[n - 1]), "an op without its scratch leaves NaN, got %g", dbias[0]);
        int rc = b->gemm(b, 1, 1, 1, 1, &one, 0, &one, 0, &c, NULL, 1.0f, 0);
        CHECK(rc == VIT_ERR && strstr(vit_error(), "out of memory"), "the next gemm reports it (rc %d: %s)", rc,
              vit_error());
    }
    free(dout), free(dbias);
    b->destroy(b);
#endif
}

int main(void) {
    be = backend_cpu_create(0);
    find_isas();
    printf("ops: kernels checked under %d instruction sets:", n_isas);
    for (int k = 0; k < n_isas; k++) printf(" %s", cpu_isa_name(isas[k]));
    printf("\n");
    test_isa_agreement();
    test_bf16_kernels();
    test_latched_failure();
    be->destroy(be);
    return check_report("ops");
}
