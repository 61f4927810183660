// Every op of the backend table (src/backend/backend.h) on every backend present, against
// references written here in fp64, in the manner of ggml's test-backend-ops.
//
// Backends ("targets"): the CPU backend under each instruction set the CPU has (generic,
// avx2, avx512 through cpu_isa_force), each also in bf16 mode (backend_cpu_set_bf16) for the
// ops that mode changes (gemm, gemm_bias_gelu, attention); with VIT_CUDA and a device, the
// CUDA backend in fp32, and in tf32 (gemm), bf16 (gemm, attention) and bf16 with the mma.sync
// attention kernels (attention). Without a device the CUDA targets are skipped with a note.
// VIT_TEST_CUDA_ON_CPU=1 adds a second CPU backend that stands in for a device (the same
// comparisons, a check of this harness on machines without one). Device targets are also
// compared with the CPU backend's results, and run the large (ViT-B sized) shapes too.
//
// Per op: shapes with odd sizes (not multiples of 4, 8 or 16; T = 197 and 1; tiny ones),
// inputs from the counter-based generator, outputs that start as NaN (an element never
// written fails), the fp64 reference, and a tolerance per dtype. Backward ops are checked
// against central finite differences in fp64 of the reference forward op on sampled elements
// (and the fp64 analytic gradients against those differences), or, where the op is linear,
// against the adjoint of its forward op. Dropout masks must be exactly rng_keep's on every
// target (so equal across instruction sets and devices), scaled by 1/(1 - rate), with the
// keep rate within 5 sigma. Fused ops must equal their composition of plain ops bit for bit
// on the same target (backend.h promises it).
//
// Tolerances (err_norm: max|got - ref| / max|ref|; err_elem: max |got - ref| / max(1, |ref|)):
//   gemm: fp32 1e-5 normwise; bf16 mode 1e-5 against the fp64 products of bf16-rounded
//     operands (fp32 sums), and it must miss the unrounded reference by 10x more (it really
//     rounds); tf32 5e-3 against the unrounded reference.
//   gemm_bias_gelu 1e-5 elementwise (bf16: rounded operands as gemm).
//   layernorm 1e-5 (out, elementwise; gradients normwise), mean/rstd 1e-6 elementwise.
//   gelu/tanh forward 1e-6, backward 1e-5 elementwise; column sums 1e-6 elementwise.
//   attention fp32 1e-5 normwise; bf16 2e-2 against the unrounded reference (operands and
//     probabilities rounded to 8 significant bits).
//   cross-entropy 1e-6 elementwise; optimizer 1e-5 (parameters elementwise, slots normwise);
//   ema_update 1e-6 elementwise (weight 1 an exact copy);
//   sum_squares 1e-10 relative. Data movement (patchify, tokens, cls), add, scale, dropout,
//   bf16 conversions: exact. drop_path and mix_images: exact (rng_keep's samples; the pixel
//   rule), their targets exact; xent_mix as cross-entropy.
// Device results against the CPU backend's: normwise within the same tolerance, dropout
// masks and the multi-tensor optimizer update bit for bit.
//
// Coverage: the test lists every member of struct Backend (Member below) and checks that the
// list names every pointer-sized slot after `impl`, so a member added to the struct without
// a case here fails with its offset. Each op call goes through OP(), which records it; every
// op must have been called on every primary target (fp32, all ops) unless it is optional
// (gemm_bias_gelu; to_bf16 and from_bf16 together) and absent there.
//
// Not here (elsewhere): thread-count determinism and bit identity across instruction sets
// (test_ops), attention's bf16 rounding model and scratch bounds under ASan (test_attention),
// model-level parity (test_parity, test_cuda). VIT_TEST_OPS=name runs the cases whose name
// contains `name` (and skips the coverage check).
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "bf16_inputs.h"
#include "check.h"
#include "util/rng.h"
#include "util/status.h"
#ifdef VIT_CUDA
#include "backend/cuda_backend.h"
#endif

// ---- tolerances ---------------------------------------------------------------------------
#define TOL_GEMM 1e-5
#define TOL_GEMM_TF32 5e-3
#define TOL_GEMM_GELU 1e-5
#define TOL_SUMS 1e-6
#define TOL_LN 1e-5
#define TOL_LN_STATS 1e-6
#define TOL_LN_GRAD 1e-5
#define TOL_ACT 1e-6
#define TOL_ACT_GRAD 1e-5
#define TOL_ATTN 1e-5
#define TOL_ATTN_BF16 2e-2
#define TOL_XENT 1e-6
#define TOL_OPTIM 1e-5
#define TOL_EMA 1e-6
#define TOL_SSQ 1e-10
// The fp64 analytic gradients of this file against fp64 finite differences (checks the
// references themselves).
#define TOL_FD_REF 1e-6

// ---- targets ------------------------------------------------------------------------------
typedef enum { P_FP32, P_TF32, P_BF16 } Prec;
static const char *const prec_names[] = {"fp32", "tf32", "bf16"};
enum { K_OP = 1, K_GEMM = 2, K_ATTN = 4 };  // what a target runs: the other ops, products, attention
enum { K_ACTS = 8 };  // the bf16-activation ops alone (a device with bf16 products and VIT_CUDA_BF16_ACTS=1)
enum { MAX_SLOTS = 128, MAX_TARGETS = 16, SLOT = sizeof(void (*)(void)) };

typedef struct {
    char label[48];
    Backend *be;
    int isa;      // CPU backend: the instruction set forced while it runs (-1: the process default)
    int cpu;      // the CPU backend (its bf16 mode is set per target)
    int device;   // stands for another device: also compared with the CPU backend, runs big shapes
    Prec prec;
    unsigned kinds;
    int primary;  // runs every op: the coverage check applies
    Backend *(*create)(void);  // a fresh instance of the same backend (the lifecycle check)
    unsigned char used[MAX_SLOTS];
} Target;

static Target targets[MAX_TARGETS];
static int ntargets, have_device, default_isa, runs_total;
static Target *cur;  // the target running now

#define BE (cur->be)
// Every op call goes through OP, which records that the op ran on this target.
#define OP(f) (mark(offsetof(Backend, f)), cur->be->f)
static void mark(size_t off) { cur->used[off / SLOT] = 1; }

static int runs(const Target *t, unsigned kind) { return (t->kinds & kind) != 0; }

static void enter(Target *t) {
    cur = t;
    cpu_isa_force(t->isa >= 0 ? t->isa : CPU_ISA_AVX512 + 1);
    if (t->cpu) backend_cpu_set_bf16(t->be, t->prec == P_BF16);
    runs_total++;
}

// The CPU target whose results device targets are compared with: the default instruction set,
// the same precision class (bf16 with bf16, fp32 with fp32 and tf32).
static int is_base(const Target *t) { return !t->device && t->cpu && t->isa == default_isa; }
static int pclass(const Target *t) { return t->prec == P_BF16; }

// ---- host helpers -------------------------------------------------------------------------
static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static float *randn(size_t n, uint32_t stream, double scale, double shift) {
    float *x = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(shift + scale * rng_normal(2024, stream, i));
    return x;
}

static double *to64(const float *x, size_t n) {
    double *d = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static float *dupf(const float *x, size_t n) {
    float *d = xmalloc(n * sizeof(float));
    memcpy(d, x, n * sizeof(float));
    return d;
}

static int same(const void *a, const void *b, size_t bytes) { return !memcmp(a, b, bytes); }

// fp32 -> bf16 -> fp32, nearest even, NaN kept (what bf16 mode does to gemm operands).
static float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = (u | 0x400000u) & 0xffff0000u;
    else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

// fp32 bits -> bf16 bits as the generic loop rounds (quiet NaN kept).
static uint16_t bf16_bits(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Sample k of n elements to check against finite differences: spread over the array,
// always including the first and the last.
static size_t sample(size_t k, size_t nsamples, size_t n) {
    if (n <= 1 || nsamples <= 1) return 0;
    if (k == nsamples - 1) return n - 1;
    return (size_t)(rng_uniform(77, 1, k) * (double)n) % n;
}

// ---- error measures and the checks that use them ------------------------------------------
static double err_norm(const float *got, const double *ref, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= md)) md = d;
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    if (md != md) return INFINITY;
    return md / (mr > 1e-30 ? mr : 1e-30);
}

// err_norm relative to the larger of max|ref| and `floor`.
static double err_floor(const float *got, const double *ref, size_t n, double floor) {
    double md = 0, mr = floor;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= md)) md = d;
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    if (md != md) return INFINITY;
    return md / (mr > 1e-30 ? mr : 1e-30);
}

static double err_elem(const float *got, const double *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
        if (!(d <= m)) m = d;
    }
    return m != m ? INFINITY : m;
}

// got against another backend's float results, normwise.
static double err_vs(const float *got, const float *base, size_t n) {
    double d = check_rel_diff(got, base, n);
    return d != d ? INFINITY : d;
}

// The worst error seen per (op, precision), for the summary.
typedef struct {
    const char *op;
    Prec prec;
    double err, tol;
} Worst;
static Worst worst[96];
static int nworst;

static void record(const char *op, double err, double tol) {
    Worst *w = NULL;
    for (int i = 0; i < nworst && !w; i++)
        if (!strcmp(worst[i].op, op) && worst[i].prec == cur->prec) w = &worst[i];
    if (!w && nworst < (int)(sizeof worst / sizeof worst[0])) {
        w = &worst[nworst++];
        *w = (Worst){op, cur->prec, 0, tol};
    }
    if (w && !(err / tol <= w->err / w->tol)) w->err = err, w->tol = tol;
}

static void expect(const char *op, const char *what, double err, double tol) {
    CHECK(err <= tol, "%s on %s: %s: error %.3g > tolerance %.1g", op, cur->label, what, err, tol);
    record(op, err, tol);
}

// Against the CPU backend's result of the same case (device targets), kept in *base when this
// target is the baseline. The caller frees *base.
static void versus_cpu(const char *op, const char *what, float **base, const float *got, size_t n, double tol) {
    if (is_base(cur)) {
        free(*base);
        *base = dupf(got, n);
    } else if (cur->device && *base) {
        double e = err_vs(got, *base, n);
        CHECK(e <= tol, "%s on %s: %s: differs from the CPU backend by %.3g > %.1g", op, cur->label, what, e, tol);
    }
}

// Sampled elements of a gradient against finite differences, normwise: relative to the larger
// of max|ref| and `floor` (the size of the terms that cancel, where they do).
static void expect_fd(const char *op, const char *what, const float *got, const double *fd, const size_t *idx,
                      int nfd, const double *ref, size_t n, double floor, double tol) {
    double mr = floor, md = 0;
    for (size_t i = 0; i < n; i++) mr = fmax(mr, fabs(ref[i]));
    for (int s = 0; s < nfd; s++) {
        double d = fabs((double)got[idx[s]] - fd[s]);
        if (!(d <= md)) md = d;
    }
    double e = md != md ? INFINITY : md / fmax(mr, 1e-30);
    CHECK(e <= tol, "%s on %s: %s against finite differences: error %.3g > %.1g", op, cur->label, what, e, tol);
    record(op, e, tol);
}

// The fp64 analytic gradient of this file against its own finite differences (once per shape).
static void expect_ref_fd(const char *op, const char *what, const double *ref, size_t n, const double *fd,
                          const size_t *idx, int nfd) {
    double mr = 0, md = 0;
    for (size_t i = 0; i < n; i++) mr = fmax(mr, fabs(ref[i]));
    for (int s = 0; s < nfd; s++) md = fmax(md, fabs(ref[idx[s]] - fd[s]));
    CHECK(md <= TOL_FD_REF * fmax(mr, 1e-30), "%s: %s: the fp64 reference gradient misses finite differences "
          "by %.3g (max %.3g)", op, what, md, mr);
}

// ---- device memory of one run ---------------------------------------------------------------
static struct {
    void *p[256];
    int n;
} pool;

static void *dalloc(size_t bytes) {
    void *p = OP(alloc)(BE, bytes ? bytes : 4);
    if (!p) {
        fprintf(stderr, "%s: alloc of %zu bytes failed: %s\n", cur->label, bytes, vit_error());
        exit(1);
    }
    if (pool.n == (int)(sizeof pool.p / sizeof pool.p[0])) abort();
    pool.p[pool.n++] = p;
    return p;
}

// A device copy of n host floats, at `pad` floats past the allocation (misaligned on purpose).
static float *dput(const float *h, size_t n, size_t pad) {
    float *d = (float *)dalloc((n + pad) * sizeof(float)) + pad;
    OP(upload)(BE, d, h, n * sizeof(float));
    return d;
}

static void *dputb(const void *h, size_t bytes) {
    void *d = dalloc(bytes);
    OP(upload)(BE, d, h, bytes);
    return d;
}

// An output buffer of n floats that starts as NaN, at `pad` floats past the allocation.
static float *dnanp(size_t n, size_t pad) {
    static float *nans;
    static size_t cap;
    if (n > cap) {
        free(nans);
        nans = xmalloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) nans[i] = NAN;
        cap = n;
    }
    return dput(nans, n, pad);
}

static float *dnan(size_t n) { return dnanp(n, 0); }

static float *dget(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof(float));
    OP(download)(BE, h, d, n * sizeof(float));
    return h;
}

static void dfree(void) {
    for (int i = 0; i < pool.n; i++) OP(release)(BE, pool.p[i]);
    pool.n = 0;
}

// ---- fp64 math ------------------------------------------------------------------------------
static double gelu64(double x, int t) {
    if (t) return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

static double gelu_grad64(double x, int t) {
    if (t) {
        double c = sqrt(2 / M_PI), u = c * (x + 0.044715 * x * x * x), th = tanh(u);
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * c * (1 + 3 * 0.044715 * x * x);
    }
    return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
}

// d/dx f at x by central differences, the step scaled to x.
static double fd1(double (*f)(double, int), double x, int t) {
    double h = 1e-5 * fmax(1.0, fabs(x));
    return (f(x + h, t) - f(x - h, t)) / (2 * h);
}

static double tanh64(double x, int unused) { return tanh(x); }

// ============================================================================================
// memory: alloc release upload download zero synchronize alloc_host release_host upload_async
// wait_uploads destroy
// ============================================================================================
static void case_memory(void) {
    for (Target *t = targets; t < targets + ntargets; t++) {
        if (!t->primary) continue;
        enter(t);
        CHECK(BE->name && BE->name[0] && BE->details, "%s: the backend has a name and details", t->label);
        // Round trips of odd byte counts, and zero over a sub-range.
        size_t sizes[] = {1, 13, 4099 * 4 + 3, ((size_t)1 << 20) + 5};
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t bytes = sizes[si];
            unsigned char *h = xmalloc(bytes), *back = xmalloc(bytes);
            for (size_t i = 0; i < bytes; i++) h[i] = (unsigned char)(i * 131 + 7);
            void *d = dalloc(bytes);
            OP(upload)(BE, d, h, bytes);
            OP(synchronize)(BE);
            memset(back, 0, bytes);
            OP(download)(BE, back, d, bytes);
            CHECK(same(back, h, bytes), "%s: upload/download of %zu bytes", t->label, bytes);
            size_t off = bytes / 3, len = bytes - off - bytes / 5;
            OP(zero)(BE, (char *)d + off, len);
            OP(synchronize)(BE);
            OP(download)(BE, back, d, bytes);
            size_t bad = 0;
            for (size_t i = 0; i < bytes; i++) bad += back[i] != (i >= off && i < off + len ? 0 : h[i]);
            CHECK(bad == 0, "%s: zero of bytes [%zu, %zu) of %zu: %zu bytes wrong", t->label, off, off + len, bytes, bad);
            free(h), free(back);
            dfree();
        }
        // Asynchronous uploads from alloc_host memory: the data arrives, and a copy into a
        // buffer that earlier ops still read waits for them (the ops see the old contents).
        size_t n = t->device ? ((size_t)1 << 22) + 5 : ((size_t)1 << 16) + 5;
        float *h1 = OP(alloc_host)(BE, n * sizeof(float)), *h2 = OP(alloc_host)(BE, n * sizeof(float));
        CHECK(h1 && h2, "%s: alloc_host of %zu floats: %s", t->label, n, h1 && h2 ? "" : vit_error());
        if (h1 && h2) {
            for (size_t i = 0; i < n; i++) h1[i] = (float)i, h2[i] = -(float)i;
            float *d = dalloc(n * sizeof(float)), *copy = dalloc(n * sizeof(float));
            OP(upload_async)(BE, d, h1, n * sizeof(float));
            OP(wait_uploads)(BE);
            OP(scale)(BE, d, n, 2.0f);   // reads the first upload...
            OP(add)(BE, copy, d, d, n);  // ...copy = 4 h1
            OP(upload_async)(BE, d, h2, n * sizeof(float));  // ...so this one waits for both ops
            OP(wait_uploads)(BE);
            OP(synchronize)(BE);
            float *a = dget(copy, n), *b = dget(d, n);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) bad += a[i] != 4.0f * (float)i || b[i] != -(float)i;
            CHECK(bad == 0, "%s: asynchronous uploads ordered with the ops: %zu wrong values", t->label, bad);
            free(a), free(b);
            dfree();
        }
        if (h1) OP(release_host)(BE, h1);
        if (h2) OP(release_host)(BE, h2);
#ifndef __SANITIZE_ADDRESS__  // ASan aborts on an impossible allocation instead of failing it
        // An impossible allocation: NULL with a message naming the size; the backend stays usable.
        void *huge = OP(alloc)(BE, (size_t)1 << 52);
        CHECK(huge == NULL && strstr(vit_error(), "MiB"), "%s: alloc of 4 PiB: %p, message '%s'", t->label, huge,
              vit_error());
        if (huge) OP(release)(BE, huge);
#endif
        float one = 3.0f, back = 0;
        float *d = dput(&one, 1, 0);
        OP(download)(BE, &back, d, sizeof back);
        CHECK(back == 3.0f, "%s: usable after a failed allocation (read back %g)", t->label, back);
        dfree();
        // A second instance of the same backend: created, used and destroyed on its own.
        Backend *fresh = t->create ? t->create() : NULL;
        CHECK(fresh != NULL, "%s: a second instance: %s", t->label, fresh ? "" : vit_error());
        if (fresh) {
            CHECK(fresh->destroy == BE->destroy && !strcmp(fresh->name, BE->name), "%s: the second instance is a '%s'",
                  t->label, fresh->name);
            float *p = fresh->alloc(fresh, 64 * sizeof(float)), v = 5.0f, w = 0;
            fresh->upload(fresh, p, &v, sizeof v);
            fresh->download(fresh, &w, p, sizeof w);
            fresh->release(fresh, p);
            CHECK(w == 5.0f, "%s: the second instance stores (%g)", t->label, w);
            mark(offsetof(Backend, destroy));
            fresh->destroy(fresh);
            enter(t);  // creating a CPU backend may not change the process's settings, but be sure
        }
    }
}

// ============================================================================================
// gemm
// ============================================================================================
// C = alpha op(A) op(B) + bias + C0 in fp64, operands rounded to bf16 first when `bf16`.
static void gemm_ref(double *C, int bt, int M, int N, int K, const float *A, int ta, const float *B, int tb,
                     const float *C0, const float *bias, float alpha, int acc, int bf16) {
#pragma omp parallel
    {
        double *col = xmalloc((size_t)K * sizeof(double)), *row = xmalloc((size_t)K * sizeof(double));
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < bt; b++)
            for (int j = 0; j < N; j++) {
                const float *Bb = B + (size_t)b * K * N, *Ab = A + (size_t)b * M * K;
                for (int k = 0; k < K; k++) {
                    float w = tb ? Bb[(size_t)j * K + k] : Bb[(size_t)k * N + j];
                    col[k] = bf16 ? round_bf16(w) : w;
                }
                for (int i = 0; i < M; i++) {
                    for (int k = 0; k < K; k++) {
                        float a = ta ? Ab[(size_t)k * M + i] : Ab[(size_t)i * K + k];
                        row[k] = bf16 ? round_bf16(a) : a;
                    }
                    double s = 0;
                    for (int k = 0; k < K; k++) s += row[k] * col[k];
                    size_t o = (size_t)b * M * N + (size_t)i * N + j;
                    C[o] = (double)alpha * s + (bias ? bias[j] : 0) + (acc ? C0[o] : 0);
                }
            }
        free(col), free(row);
    }
}

static void case_gemm(void) {
    static const int shapes[][11] = {
        // batch, M, N, K, transA, transB, accumulate, bias, alpha x4, pad, big
        {1, 1, 1, 1, 0, 0, 0, 1, 4, 0, 0},       {1, 5, 7, 3, 0, 0, 0, 1, 4, 0, 0},
        {1, 33, 17, 65, 1, 0, 0, 0, 4, 1, 0},    {1, 16, 9, 31, 0, 1, 0, 1, 1, 0, 0},
        {3, 8, 6, 5, 1, 1, 0, 0, 1, 0, 0},       {4, 13, 11, 7, 0, 1, 1, 1, 4, 1, 0},
        {2, 9, 10, 12, 1, 0, 1, 0, 4, 0, 0},     {2, 40, 30, 20, 0, 0, 0, 1, 2, 0, 0},
        {1, 7, 1000, 64, 0, 0, 0, 1, 4, 1, 0},   {1, 37, 29, 300, 0, 1, 0, 1, 4, 0, 0},
        {1, 394, 192, 64, 0, 0, 0, 1, 4, 0, 0},  {1, 394, 64, 192, 0, 1, 1, 0, 4, 0, 0},
        {1, 64, 192, 394, 1, 0, 1, 0, 4, 0, 0},  {6, 197, 197, 64, 0, 1, 0, 0, 1, 0, 0},
        {1, 1576, 768, 3072, 0, 1, 0, 0, 4, 0, 1}, {1, 256, 3072, 768, 0, 0, 0, 1, 4, 3, 1},
        {24, 197, 197, 64, 0, 1, 0, 0, 1, 0, 1},
    };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int *s = shapes[c];
        int bt = s[0], M = s[1], N = s[2], K = s[3], ta = s[4], tb = s[5], acc = s[6], use_bias = s[7];
        float alpha = s[8] / 4.0f;
        size_t pad = (size_t)s[9], nA = (size_t)bt * M * K, nB = (size_t)bt * K * N, nC = (size_t)bt * M * N;
        if (s[10] && !have_device) continue;
        float *A = randn(nA, 1, 1, 0), *B = randn(nB, 2, 1, 0), *C0 = randn(nC, 3, 1, 0), *bias = randn(N, 4, 1, 0);
        double *ref = xmalloc(nC * sizeof(double)), *ref_bf = NULL;
        gemm_ref(ref, bt, M, N, K, A, ta, B, tb, C0, use_bias ? bias : NULL, alpha, acc, 0);
        char what[128];
        snprintf(what, sizeof what, "%dx%dx%d batch %d tA %d tB %d acc %d bias %d alpha %g pad %zu", M, N, K, bt, ta, tb,
                 acc, use_bias, alpha, pad);
        float *base[2] = {NULL, NULL};
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_GEMM)) continue;
            enter(t);
            if (t->prec == P_BF16 && !ref_bf) {
                ref_bf = xmalloc(nC * sizeof(double));
                gemm_ref(ref_bf, bt, M, N, K, A, ta, B, tb, C0, use_bias ? bias : NULL, alpha, acc, 1);
            }
            float *dA = dput(A, nA, pad), *dB = dput(B, nB, pad);
            float *dC = acc ? dput(C0, nC, pad) : dnanp(nC, pad);  // an overwritten output starts as NaN
            float *dbias = use_bias ? dput(bias, N, pad) : NULL;
            int rc = OP(gemm)(BE, bt, M, N, K, dA, ta, dB, tb, dC, dbias, alpha, acc);
            CHECK(rc == 0, "gemm on %s: %s: rc %d (%s)", t->label, what, rc, rc ? vit_error() : "");
            float *out = dget(dC, nC);
            double tol = t->prec == P_TF32 ? TOL_GEMM_TF32 : TOL_GEMM;
            double e = err_norm(out, t->prec == P_BF16 ? ref_bf : ref, nC);
            expect("gemm", what, e, tol);
            if (t->prec == P_BF16 && K >= 16) {
                double e32 = err_norm(out, ref, nC);
                CHECK(e32 > 10 * e, "gemm on %s: %s: bf16 mode should miss the fp32 reference by the rounding "
                      "(%.3g against %.3g from the rounded one)", t->label, what, e32, e);
            }
            versus_cpu("gemm", what, &base[pclass(t)], out, nC, tol);
            free(out);
            dfree();
        }
        free(A), free(B), free(C0), free(bias), free(ref), free(ref_bf), free(base[0]), free(base[1]);
    }
}

// ============================================================================================
// gemm_bias_gelu (optional)
// ============================================================================================
static void case_gemm_bias_gelu(void) {
    static const int shapes[][3] = {{1, 1, 1}, {37, 29, 50}, {197, 65, 33}, {394, 192, 64}, {13, 300, 17}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int M = shapes[c][0], N = shapes[c][1], K = shapes[c][2];
        size_t nC = (size_t)M * N;
        float *A = randn((size_t)M * K, 21, 1, 0), *B = randn((size_t)K * N, 22, 0.3, 0), *bias = randn(N, 23, 1, 0);
        double *pre[2] = {xmalloc(nC * sizeof(double)), xmalloc(nC * sizeof(double))}, *ref = xmalloc(nC * sizeof(double));
        gemm_ref(pre[0], 1, M, N, K, A, 0, B, 0, NULL, bias, 1.0f, 0, 0);
        gemm_ref(pre[1], 1, M, N, K, A, 0, B, 0, NULL, bias, 1.0f, 0, 1);
        for (int th = 0; th < 2; th++) {
            char what[96];
            snprintf(what, sizeof what, "%dx%dx%d %s", M, N, K, th ? "tanh" : "erf");
            float *base[2] = {NULL, NULL};
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_GEMM)) continue;
                enter(t);
                if (!BE->gemm_bias_gelu) continue;  // optional
                for (size_t i = 0; i < nC; i++) ref[i] = gelu64(pre[t->prec == P_BF16][i], th);
                float *dA = dput(A, (size_t)M * K, 0), *dB = dput(B, (size_t)K * N, 0), *db = dput(bias, N, 0);
                float *dC = dnan(nC);
                int rc = OP(gemm_bias_gelu)(BE, M, N, K, dA, dB, dC, db, th);
                CHECK(rc == 0, "gemm_bias_gelu on %s: %s: rc %d (%s)", t->label, what, rc, rc ? vit_error() : "");
                float *out = dget(dC, nC);
                double tol = t->prec == P_TF32 ? TOL_GEMM_TF32 : TOL_GEMM_GELU;
                expect("gemm_bias_gelu", what, err_elem(out, ref, nC), tol);
                versus_cpu("gemm_bias_gelu", what, &base[pclass(t)], out, nC, tol);
                free(out);
                dfree();
            }
            free(base[0]), free(base[1]);
        }
        free(A), free(B), free(bias), free(pre[0]), free(pre[1]), free(ref);
    }
}

// ============================================================================================
// bias_backward (column sums; the adjoint of adding a bias to every row)
// ============================================================================================
static void case_bias_backward(void) {
    static const int shapes[][2] = {{1, 1}, {6, 37}, {394, 64}, {131, 773}, {2, 1280}, {3152, 768}, {70, 3}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int rows = shapes[c][0], cols = shapes[c][1];
        size_t n = (size_t)rows * cols;
        float *dy = randn(n, 30, 1, 0), *init = randn(cols, 31, 1, 0);
        double *ref = xmalloc(cols * sizeof(double));
        for (int j = 0; j < cols; j++) {
            double s = 0;
            for (int i = 0; i < rows; i++) s += dy[(size_t)i * cols + j];
            ref[j] = init[j] + s;
        }
        char what[64];
        snprintf(what, sizeof what, "%d x %d", rows, cols);
        float *base[2] = {NULL, NULL};
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *ddy = dput(dy, n, 0), *db = dput(init, cols, 1);
            OP(bias_backward)(BE, db, ddy, rows, cols);
            float *out = dget(db, cols);
            expect("bias_backward", what, err_elem(out, ref, cols), TOL_SUMS);
            versus_cpu("bias_backward", what, &base[0], out, cols, TOL_SUMS);
            free(out);
            dfree();
        }
        free(dy), free(init), free(ref), free(base[0]), free(base[1]);
    }
}

// ============================================================================================
// layernorm_forward, layernorm_backward
// ============================================================================================
// LayerNorm of rows [r0, r1) in fp64; out, mean, rstd may be NULL. Returns sum(R * out).
static double ln_ref(double *out, double *mean, double *rstd, const double *x, const double *w, const double *b,
                     const float *R, int r0, int r1, int C, double eps) {
    double loss = 0;
    for (int i = r0; i < r1; i++) {
        const double *xi = x + (size_t)i * C;
        double m = 0, v = 0;
        for (int j = 0; j < C; j++) m += xi[j];
        m /= C;
        for (int j = 0; j < C; j++) v += (xi[j] - m) * (xi[j] - m);
        v /= C;
        double r = 1 / sqrt(v + eps);
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
        for (int j = 0; j < C; j++) {
            double y = (xi[j] - m) * r * w[j] + b[j];
            if (out) out[(size_t)i * C + j] = y;
            if (R) loss += R[(size_t)i * C + j] * y;
        }
    }
    return loss;
}

// Gradients of sum(dy * LayerNorm(x)) in fp64, added to dx, dw, db; into scale[3] the size of
// the terms each gradient sums (dinp: rstd |dy w|, where a row of C = 2 cancels to nearly 0;
// dscale: sum |dy xhat|; dbias: sum |dy|), against which fp32 rounding is measured.
static void ln_back_ref(double *dx, double *dw, double *db, double scale[3], const float *dy, const double *x,
                        const double *w, int rows, int C, double eps) {
    double *aw = calloc(2 * (size_t)C, sizeof(double)), *ab = aw + C;
    scale[0] = scale[1] = scale[2] = 0;
    for (int i = 0; i < rows; i++) {
        const double *xi = x + (size_t)i * C;
        const float *g = dy + (size_t)i * C;
        double m = 0, v = 0;
        for (int j = 0; j < C; j++) m += xi[j];
        m /= C;
        for (int j = 0; j < C; j++) v += (xi[j] - m) * (xi[j] - m);
        v /= C;
        double r = 1 / sqrt(v + eps), sg = 0, sgx = 0;
        for (int j = 0; j < C; j++) {
            double xh = (xi[j] - m) * r, gw = g[j] * w[j];
            sg += gw, sgx += gw * xh;
            dw[j] += g[j] * xh;
            db[j] += g[j];
            aw[j] += fabs(g[j] * xh), ab[j] += fabs(g[j]);
            scale[0] = fmax(scale[0], r * fabs(gw));
        }
        for (int j = 0; j < C; j++) {
            double xh = (xi[j] - m) * r;
            dx[(size_t)i * C + j] += r * (g[j] * w[j] - sg / C - xh * sgx / C);
        }
    }
    for (int j = 0; j < C; j++) scale[1] = fmax(scale[1], aw[j]), scale[2] = fmax(scale[2], ab[j]);
    free(aw);
}

static void case_layernorm(void) {
    static const int shapes[][2] = {{2, 1}, {3, 2}, {6, 37}, {197, 64}, {131, 773}, {2, 1280}, {394, 768}, {3152, 768}};
    const float eps = 1e-6f;
    enum { NFD = 6 };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int rows = shapes[c][0], C = shapes[c][1];
        size_t n = (size_t)rows * C;
        float *x = randn(n, 40, 2, 0.5), *w = randn(C, 41, 1, 0), *b = randn(C, 42, 1, 0), *dy = randn(n, 43, 1, 0);
        float *dx0 = randn(n, 44, 1, 0), *dw0 = randn(C, 45, 1, 0), *db0 = randn(C, 46, 1, 0);
        double *x64 = to64(x, n), *w64 = to64(w, C), *b64 = to64(b, C);
        double *out = xmalloc(n * sizeof(double)), *mean = xmalloc(rows * sizeof(double)),
               *rstd = xmalloc(rows * sizeof(double));
        ln_ref(out, mean, rstd, x64, w64, b64, NULL, 0, rows, C, eps);
        // Gradients (without the initial values the op adds to) and their finite differences.
        double *gx = calloc(n, sizeof(double)), *gw = calloc(C, sizeof(double)), *gb = calloc(C, sizeof(double));
        double gscale[3];
        ln_back_ref(gx, gw, gb, gscale, dy, x64, w64, rows, C, eps);
        double *ins[3] = {x64, w64, b64}, *grads[3] = {gx, gw, gb}, fd[3][NFD];
        size_t lens[3] = {n, (size_t)C, (size_t)C}, idx[3][NFD];
        for (int a = 0; a < 3; a++)
            for (int s = 0; s < NFD; s++) {
                size_t i = idx[a][s] = sample(s, NFD, lens[a]);
                int r0 = a == 0 ? (int)(i / C) : 0, r1 = a == 0 ? r0 + 1 : rows;  // rows that change
                double keep = ins[a][i], h = 1e-5 * fmax(1, fabs(keep));
                ins[a][i] = keep + h;
                double lp = ln_ref(NULL, NULL, NULL, x64, w64, b64, dy, r0, r1, C, eps);
                ins[a][i] = keep - h;
                double lm = ln_ref(NULL, NULL, NULL, x64, w64, b64, dy, r0, r1, C, eps);
                ins[a][i] = keep;
                fd[a][s] = (lp - lm) / (2 * h);
            }
        const char *gnames[3] = {"dinp", "dscale", "dbias"};
        char what[96];
        snprintf(what, sizeof what, "%d x %d", rows, C);
        for (int a = 0; a < 3; a++) expect_ref_fd("layernorm_backward", gnames[a], grads[a], lens[a], fd[a], idx[a], NFD);
        double *tot[3] = {xmalloc(n * sizeof(double)), xmalloc(C * sizeof(double)), xmalloc(C * sizeof(double))};
        float *inits[3] = {dx0, dw0, db0};
        for (int a = 0; a < 3; a++)
            for (size_t i = 0; i < lens[a]; i++) tot[a][i] = inits[a][i] + grads[a][i];
        float *base[6] = {NULL};
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *dx = dput(x, n, 0), *dw = dput(w, C, 1), *dbb = dput(b, C, 0), *ddy = dput(dy, n, 0);
            float *o = dnan(n), *dm = dnan(rows), *dr = dnan(rows);
            OP(layernorm_forward)(BE, o, dm, dr, dx, dw, dbb, rows, C, eps);
            float *ho = dget(o, n), *hm = dget(dm, rows), *hr = dget(dr, rows);
            snprintf(what, sizeof what, "%d x %d out", rows, C);
            expect("layernorm_forward", what, err_elem(ho, out, n), TOL_LN);
            versus_cpu("layernorm_forward", what, &base[0], ho, n, TOL_LN);
            snprintf(what, sizeof what, "%d x %d mean", rows, C);
            expect("layernorm_forward", what, err_elem(hm, mean, rows), TOL_LN_STATS);
            // rstd relative to itself (it is 1000 where a row is constant).
            double er = 0;
            for (int i = 0; i < rows; i++) er = fmax(er, fabs(hr[i] - rstd[i]) / rstd[i]);
            if (er != er) er = INFINITY;
            snprintf(what, sizeof what, "%d x %d rstd", rows, C);
            expect("layernorm_forward", what, er, TOL_LN_STATS);
            // Backward from the target's own mean and rstd, into gradients that hold values.
            float *gdx = dput(dx0, n, 0), *gdw = dput(dw0, C, 0), *gdb = dput(db0, C, 1);
            OP(layernorm_backward)(BE, gdx, gdw, gdb, ddy, dx, dw, dm, dr, rows, C);
            float *hg[3] = {dget(gdx, n), dget(gdw, C), dget(gdb, C)};
            for (int a = 0; a < 3; a++) {
                snprintf(what, sizeof what, "%d x %d %s (+=)", rows, C, gnames[a]);
                expect("layernorm_backward", what, err_floor(hg[a], tot[a], lens[a], gscale[a]), TOL_LN_GRAD);
                versus_cpu("layernorm_backward", what, &base[1 + a], hg[a], lens[a], TOL_LN_GRAD);
                float *diff = xmalloc(lens[a] * sizeof(float));  // what the op added
                for (size_t i = 0; i < lens[a]; i++) diff[i] = (float)((double)hg[a][i] - inits[a][i]);
                expect_fd("layernorm_backward", what, diff, fd[a], idx[a], NFD, grads[a], lens[a], gscale[a],
                          TOL_LN_GRAD);
                free(diff);
            }
            free(ho), free(hm), free(hr), free(hg[0]), free(hg[1]), free(hg[2]);
            dfree();
        }
        for (int i = 0; i < 6; i++) free(base[i]);
        free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0), free(x64), free(w64), free(b64);
        free(out), free(mean), free(rstd), free(gx), free(gw), free(gb), free(tot[0]), free(tot[1]), free(tot[2]);
    }
}

// ============================================================================================
// gelu_forward, gelu_backward, tanh_forward, tanh_backward
// ============================================================================================
// Inputs of n elements: random (scale 2), or at n == 0 the edges of the range.
static const float edges[] = {-30, -12, -9.5f, -6, -5.5f, -3, -1, -0.5f, -1e-3f, -0.0f, 0, 1e-6f, 0.3f, 1,
                              2.5f, 5, 9, 12, 30, 88};

static float *act_inputs(size_t *n) {
    if (*n) return randn(*n, 50, 2, 0);
    *n = sizeof edges / sizeof edges[0];
    return dupf(edges, *n);
}

static void case_gelu(void) {
    size_t sizes[] = {0, 1, 3, 17, 301, 4099, 100003};
    enum { NFD = 8 };
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int th = 0; th < 2; th++) {
            size_t n = sizes[si];
            float *x = act_inputs(&n), *dy = randn(n, 51, 1, 0);
            double *ref = xmalloc(n * sizeof(double)), *gref = xmalloc(n * sizeof(double)), fd[NFD];
            size_t idx[NFD];
            for (size_t i = 0; i < n; i++) ref[i] = gelu64(x[i], th), gref[i] = dy[i] * gelu_grad64(x[i], th);
            for (int s = 0; s < NFD; s++) idx[s] = sample(s, NFD, n), fd[s] = dy[idx[s]] * fd1(gelu64, x[idx[s]], th);
            char what[64];
            snprintf(what, sizeof what, "n %zu%s %s", n, sizes[si] ? "" : " (range edges)", th ? "tanh" : "erf");
            expect_ref_fd("gelu_backward", what, gref, n, fd, idx, NFD);
            float *base[2] = {NULL, NULL};
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_OP)) continue;
                enter(t);
                float *dx = dput(x, n, 0), *o = dnan(n), *g = dnan(n), *ddy = dput(dy, n, 0);
                OP(gelu_forward)(BE, o, dx, n, th);
                OP(gelu_backward)(BE, g, dx, ddy, n, th);
                OP(gelu_backward)(BE, ddy, dx, ddy, n, th);  // dinp aliasing dout
                float *ho = dget(o, n), *hg = dget(g, n), *hi = dget(ddy, n);
                expect("gelu_forward", what, err_elem(ho, ref, n), TOL_ACT);
                expect("gelu_backward", what, err_elem(hg, gref, n), TOL_ACT_GRAD);
                expect_fd("gelu_backward", what, hg, fd, idx, NFD, gref, n, 0, TOL_ACT_GRAD);
                CHECK(same(hi, hg, n * sizeof(float)), "gelu_backward on %s: %s: in place differs", t->label, what);
                versus_cpu("gelu_forward", what, &base[0], ho, n, TOL_ACT);
                versus_cpu("gelu_backward", what, &base[1], hg, n, TOL_ACT_GRAD);
                free(ho), free(hg), free(hi);
                dfree();
            }
            free(x), free(dy), free(ref), free(gref), free(base[0]), free(base[1]);
        }
    // Infinities and NaN: gelu(inf) = inf, gelu(NaN) is NaN (erf form).
    for (Target *t = targets; t < targets + ntargets; t++) {
        if (!runs(t, K_OP)) continue;
        enter(t);
        float special[3] = {INFINITY, -INFINITY, NAN}, *d = dput(special, 3, 0);
        OP(gelu_forward)(BE, d, d, 3, 0);
        float *h = dget(d, 3);
        CHECK(h[0] == INFINITY && isnan(h[2]), "gelu_forward on %s: gelu(inf) = %g, gelu(NaN) = %g", t->label, h[0],
              h[2]);
        free(h);
        dfree();
    }
}

static void case_tanh(void) {
    size_t sizes[] = {0, 1, 3, 17, 301, 4099, 100003};
    enum { NFD = 8 };
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = act_inputs(&n), *dy = randn(n, 52, 1, 0);
        double *ref = xmalloc(n * sizeof(double)), *gref = xmalloc(n * sizeof(double)), fd[NFD];
        size_t idx[NFD];
        for (size_t i = 0; i < n; i++) ref[i] = tanh(x[i]);
        for (int s = 0; s < NFD; s++) idx[s] = sample(s, NFD, n), fd[s] = dy[idx[s]] * fd1(tanh64, x[idx[s]], 0);
        char what[64];
        snprintf(what, sizeof what, "n %zu%s", n, sizes[si] ? "" : " (range edges)");
        float *base[2] = {NULL, NULL};
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *dx = dput(x, n, 0), *o = dnan(n), *g = dnan(n), *ddy = dput(dy, n, 0);
            OP(tanh_forward)(BE, o, dx, n);
            OP(tanh_backward)(BE, g, o, ddy, n);
            OP(tanh_backward)(BE, ddy, o, ddy, n);  // dinp aliasing dout
            float *ho = dget(o, n), *hg = dget(g, n), *hi = dget(ddy, n);
            // The op's formula on its own output, and the derivative of tanh at x.
            for (size_t i = 0; i < n; i++) gref[i] = dy[i] * (1 - (double)ho[i] * ho[i]);
            expect("tanh_forward", what, err_elem(ho, ref, n), TOL_ACT);
            expect("tanh_backward", what, err_elem(hg, gref, n), TOL_ACT);
            for (size_t i = 0; i < n; i++) gref[i] = dy[i] * (1 - ref[i] * ref[i]);
            expect_fd("tanh_backward", what, hg, fd, idx, NFD, gref, n, 0, TOL_ACT_GRAD);
            CHECK(same(hi, hg, n * sizeof(float)), "tanh_backward on %s: %s: in place differs", t->label, what);
            versus_cpu("tanh_forward", what, &base[0], ho, n, TOL_ACT);
            versus_cpu("tanh_backward", what, &base[1], hg, n, TOL_ACT_GRAD);
            free(ho), free(hg), free(hi);
            dfree();
        }
        free(x), free(dy), free(ref), free(gref), free(base[0]), free(base[1]);
    }
}

// ============================================================================================
// dropout_forward, dropout_backward
// ============================================================================================
// What inverted dropout must give, bit for bit: inp * (1/keep) in fp32 where rng_keep keeps.
static float *dropout_expected(const float *in, size_t n, float rate, uint64_t seed, uint32_t step, uint32_t site) {
    float keep = 1.0f - rate, inv = 1.0f / keep, *o = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) o[i] = rng_keep(seed, step, site, i, keep) ? in[i] * inv : 0.0f;
    return o;
}

static size_t bits_differ(const float *a, const float *b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return bad;
}

static void case_dropout(void) {
    size_t sizes[] = {1, 7, 17, 4099, 100003, 1000003};
    float rates[] = {0.0f, 0.1f, 0.3f, 0.5f};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (size_t ri = 0; ri < sizeof rates / sizeof rates[0]; ri++) {
            size_t n = sizes[si];
            float rate = rates[ri], keep = 1.0f - rate;
            uint64_t seed = 0x1234567890abcdefull + si;
            uint32_t step = 3 + (uint32_t)ri, site = 5 * (uint32_t)si + 1;
            float *x = randn(n, 60, 1, 0.5), *dy = randn(n, 61, 1, 0);
            float *want = dropout_expected(x, n, rate, seed, step, site),
                  *want_b = dropout_expected(dy, n, rate, seed, step, site);
            char what[64];
            snprintf(what, sizeof what, "n %zu rate %g", n, rate);
            // The 1/(1 - rate) scaling in fp32, and the keep rate of the mask itself.
            float inv = 1.0f / keep;
            CHECK(fabs(inv * (1.0 - rate) - 1) < 1e-6, "dropout: scale %.9g for rate %g", inv, rate);
            if (n >= 100000) {
                size_t kept = 0;
                for (size_t i = 0; i < n; i++) kept += rng_keep(seed, step, site, i, keep);
                double frac = (double)kept / n, sigma = sqrt(keep * (1.0 - keep) / n);
                CHECK(fabs(frac - keep) <= 5 * sigma + 1e-12, "dropout %s: rng_keep keeps %.5f (expected %.5f +- %.2g)",
                      what, frac, keep, 5 * sigma);
            }
            float *first = NULL;  // the first target's output: every other must give its bits
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_OP)) continue;
                enter(t);
                float *dx = dput(x, n, 0), *o = dnan(n), *g = dput(dy, n, 1), *other = dnan(n);
                OP(dropout_forward)(BE, o, dx, n, rate, seed, step, site);
                OP(dropout_backward)(BE, g, g, n, rate, seed, step, site);  // in place
                OP(dropout_forward)(BE, dx, dx, n, rate, seed, step, site);   // in place
                OP(dropout_forward)(BE, other, o, n, rate, seed, step + 1, site);
                float *ho = dget(o, n), *hg = dget(g, n), *hi = dget(dx, n), *h2 = dget(other, n);
                size_t bf = bits_differ(ho, want, n), bb = bits_differ(hg, want_b, n), bi = bits_differ(hi, want, n);
                CHECK(bf == 0, "dropout_forward on %s: %s: %zu elements differ from rng_keep's mask x 1/(1-rate)",
                      t->label, what, bf);
                CHECK(bb == 0, "dropout_backward on %s: %s (in place): %zu elements differ from the forward mask",
                      t->label, what, bb);
                CHECK(bi == 0, "dropout_forward on %s: %s: in place differs in %zu elements", t->label, what, bi);
                if (rate > 0 && n >= 4099) {  // another step, another mask
                    size_t changed = 0;
                    for (size_t i = 0; i < n; i++) changed += (ho[i] == 0) != (h2[i] == 0);
                    CHECK(changed > n * rate / 4, "dropout_forward on %s: %s: the next step's mask changes only %zu",
                          t->label, what, changed);
                }
                if (!first) {
                    first = dupf(ho, n);
                } else {
                    size_t d = bits_differ(ho, first, n);
                    CHECK(d == 0, "dropout_forward on %s: %s: %zu elements differ from %s", t->label, what, d,
                          targets[0].label);
                }
                free(ho), free(hg), free(hi), free(h2);
                dfree();
            }
            free(x), free(dy), free(want), free(want_b), free(first);
        }
}

// ============================================================================================
// residual_layernorm_forward, gelu_dropout_forward, gelu_dropout_backward (fused)
// ============================================================================================
static void case_residual_layernorm(void) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {37, 77}, {13, 300}, {394, 768}, {50, 3072}};
    float rates[] = {0.0f, 0.1f, 0.5f};
    const float eps = 1e-6f;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (size_t ri = 0; ri < sizeof rates / sizeof rates[0]; ri++) {
            int rows = shapes[c][0], C = shapes[c][1];
            size_t n = (size_t)rows * C;
            float rate = rates[ri];
            uint64_t seed = 77;
            uint32_t step = 5, site = 3 + (uint32_t)c;
            float *x = randn(n, 70, 1, 0), *y = randn(n, 71, 2, 0), *w = randn(C, 72, 1, 0), *b = randn(C, 73, 0.5, 0);
            float *dy_ = dropout_expected(y, n, rate, seed, step, site), *sum = xmalloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++) sum[i] = x[i] + dy_[i];  // exactly what the op must store
            double *s64 = to64(sum, n), *w64 = to64(w, C), *b64 = to64(b, C);
            double *out = xmalloc(n * sizeof(double)), *mean = xmalloc(rows * sizeof(double)),
                   *rstd = xmalloc(rows * sizeof(double));
            ln_ref(out, mean, rstd, s64, w64, b64, NULL, 0, rows, C, eps);
            char what[64];
            snprintf(what, sizeof what, "%d x %d rate %g", rows, C, rate);
            float *base = NULL;
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_OP)) continue;
                enter(t);
                float *dx = dput(x, n, 0), *ddy = dput(y, n, 0), *dw = dput(w, C, 0), *db = dput(b, C, 0);
                float *ds = dnan(n), *dout = dnan(n), *dm = dnan(rows), *dr = dnan(rows);
                OP(residual_layernorm_forward)(BE, ds, dout, dm, dr, dx, ddy, dw, db, rows, C, eps, rate, seed, step, site);
                // The composition: dropout (in place on a copy of y), add, layernorm.
                float *t1 = dput(y, n, 0), *s2 = dnan(n), *o2 = dnan(n), *m2 = dnan(rows), *r2 = dnan(rows);
                if (rate > 0) OP(dropout_forward)(BE, t1, t1, n, rate, seed, step, site);
                OP(add)(BE, s2, dx, t1, n);
                OP(layernorm_forward)(BE, o2, m2, r2, s2, dw, db, rows, C, eps);
                // In place without LayerNorm: sum aliasing x.
                float *alias = dput(x, n, 0);
                OP(residual_layernorm_forward)(BE, alias, NULL, NULL, NULL, alias, ddy, NULL, NULL, rows, C, 0.0f, rate,
                                               seed, step, site);
                float *hs = dget(ds, n), *ho = dget(dout, n), *hm = dget(dm, rows), *hr = dget(dr, rows);
                float *cs = dget(s2, n), *co = dget(o2, n), *cm = dget(m2, rows), *cr = dget(r2, rows);
                float *ha = dget(alias, n);
                size_t bs = bits_differ(hs, sum, n);
                CHECK(bs == 0, "residual_layernorm_forward on %s: %s: sum differs from x + dropout(y) in %zu elements",
                      t->label, what, bs);
                CHECK(same(hs, cs, n * 4) && same(ho, co, n * 4) && same(hm, cm, rows * 4) && same(hr, cr, rows * 4),
                      "residual_layernorm_forward on %s: %s: differs from dropout + add + layernorm_forward", t->label,
                      what);
                CHECK(same(ha, sum, n * 4), "residual_layernorm_forward on %s: %s: in place without LayerNorm differs",
                      t->label, what);
                expect("residual_layernorm_forward", what, err_elem(ho, out, n), TOL_LN);
                expect("residual_layernorm_forward", what, err_elem(hm, mean, rows), TOL_LN_STATS);
                versus_cpu("residual_layernorm_forward", what, &base, ho, n, TOL_LN);
                free(hs), free(ho), free(hm), free(hr), free(cs), free(co), free(cm), free(cr), free(ha);
                dfree();
            }
            free(x), free(y), free(w), free(b), free(dy_), free(sum), free(s64), free(w64), free(b64), free(out);
            free(mean), free(rstd), free(base);
        }
}

static void case_gelu_dropout(void) {
    static const int shapes[][2] = {{1, 1}, {70, 3}, {5, 17}, {53, 517}, {50, 3072}, {394, 3072}};
    float rates[] = {0.0f, 0.1f, 0.5f};
    enum { NFD = 8 };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (size_t ri = 0; ri < sizeof rates / sizeof rates[0]; ri++)
            for (int th = 0; th < 2; th++) {
                int rows = shapes[c][0], cols = shapes[c][1];
                size_t n = (size_t)rows * cols;
                if (n > 200000 && (ri != 1 || th)) continue;  // the largest once
                float rate = rates[ri], keep = 1.0f - rate, inv = 1.0f / keep;
                uint64_t seed = 11;
                uint32_t step = 3, site = 7 + (uint32_t)c;
                float *x = randn(n, 80, 2, 0), *dy = randn(n, 81, 1, 0), *db0 = randn(cols, 82, 1, 0);
                double *fwd = xmalloc(n * sizeof(double)), *gx = xmalloc(n * sizeof(double)),
                       *gb = xmalloc(cols * sizeof(double)), *gbt = xmalloc(cols * sizeof(double));
                unsigned char *kept = xmalloc(n);
                for (int j = 0; j < cols; j++) gb[j] = 0;
                for (size_t i = 0; i < n; i++) {
                    kept[i] = rate > 0 ? (unsigned char)rng_keep(seed, step, site, i, keep) : 1;
                    double m = kept[i] ? (rate > 0 ? (double)inv : 1.0) : 0.0;
                    fwd[i] = m * gelu64(x[i], th);
                    gx[i] = m * dy[i] * gelu_grad64(x[i], th);
                    gb[i % cols] += gx[i];
                }
                for (int j = 0; j < cols; j++) gbt[j] = db0[j] + gb[j];
                // Finite differences of sum(dy * dropout(GELU(x + bias))) in x, and in the bias.
                double fdx[NFD], fdb[NFD];
                size_t ix[NFD], ib[NFD];
                for (int s = 0; s < NFD; s++) {
                    size_t i = ix[s] = sample(s, NFD, n);
                    double m = kept[i] ? (rate > 0 ? (double)inv : 1.0) : 0.0;
                    fdx[s] = m * dy[i] * fd1(gelu64, x[i], th);
                    int j = (int)(ib[s] = sample(s, NFD, cols));
                    double lp = 0, lm = 0, h = 1e-5;
                    for (int r = 0; r < rows; r++) {
                        size_t e = (size_t)r * cols + j;
                        double me = kept[e] ? (rate > 0 ? (double)inv : 1.0) : 0.0;
                        lp += dy[e] * me * gelu64(x[e] + h, th);
                        lm += dy[e] * me * gelu64(x[e] - h, th);
                    }
                    fdb[s] = (lp - lm) / (2 * h);
                }
                char what[80];
                snprintf(what, sizeof what, "%d x %d rate %g %s", rows, cols, rate, th ? "tanh" : "erf");
                expect_ref_fd("gelu_dropout_backward", "dinp", gx, n, fdx, ix, NFD);
                expect_ref_fd("gelu_dropout_backward", "dbias", gb, cols, fdb, ib, NFD);
                float *base[3] = {NULL, NULL, NULL};
                for (Target *t = targets; t < targets + ntargets; t++) {
                    if (!runs(t, K_OP)) continue;
                    enter(t);
                    float *dx = dput(x, n, 0), *o = dnan(n), *o2 = dnan(n);
                    OP(gelu_dropout_forward)(BE, o, dx, n, th, rate, seed, step, site);
                    OP(gelu_forward)(BE, o2, dx, n, th);  // the composition
                    if (rate > 0) OP(dropout_forward)(BE, o2, o2, n, rate, seed, step, site);
                    float *g = dput(dy, n, 0), *db = dput(db0, cols, 1);
                    OP(gelu_dropout_backward)(BE, g, db, dx, g, rows, cols, th, rate, seed, step, site);  // in place
                    float *g2 = dput(dy, n, 0), *db2 = dput(db0, cols, 0);
                    if (rate > 0) OP(dropout_backward)(BE, g2, g2, n, rate, seed, step, site);
                    OP(gelu_backward)(BE, g2, dx, g2, n, th);
                    OP(bias_backward)(BE, db2, g2, rows, cols);
                    float *ho = dget(o, n), *hc = dget(o2, n), *hg = dget(g, n), *hb = dget(db, cols);
                    float *hg2 = dget(g2, n), *hb2 = dget(db2, cols);
                    CHECK(same(ho, hc, n * 4), "gelu_dropout_forward on %s: %s: differs from gelu + dropout", t->label,
                          what);
                    CHECK(same(hg, hg2, n * 4) && same(hb, hb2, cols * 4), "gelu_dropout_backward on %s: %s: differs "
                          "from dropout + gelu + bias backward", t->label, what);
                    size_t badmask = 0;
                    for (size_t i = 0; i < n; i++) badmask += !kept[i] && (ho[i] != 0 || hg[i] != 0);
                    CHECK(badmask == 0, "gelu_dropout on %s: %s: %zu dropped elements not zero", t->label, what, badmask);
                    expect("gelu_dropout_forward", what, err_elem(ho, fwd, n), TOL_ACT / keep);  // GELU's error x 1/keep
                    expect("gelu_dropout_backward", what, err_elem(hg, gx, n), TOL_ACT_GRAD);
                    expect("gelu_dropout_backward", what, err_norm(hb, gbt, cols), TOL_ACT_GRAD);
                    expect_fd("gelu_dropout_backward", what, hg, fdx, ix, NFD, gx, n, 0, TOL_ACT_GRAD);
                    for (int j = 0; j < cols; j++) hb2[j] = (float)((double)hb[j] - db0[j]);  // what the op added
                    expect_fd("gelu_dropout_backward", what, hb2, fdb, ib, NFD, gb, cols, 0, TOL_ACT_GRAD);
                    versus_cpu("gelu_dropout_forward", what, &base[0], ho, n, TOL_ACT);
                    versus_cpu("gelu_dropout_backward", what, &base[1], hg, n, TOL_ACT_GRAD);
                    versus_cpu("gelu_dropout_backward", what, &base[2], hb, cols, TOL_ACT_GRAD);
                    free(ho), free(hc), free(hg), free(hb), free(hg2), free(hb2);
                    dfree();
                }
                free(x), free(dy), free(db0), free(fwd), free(gx), free(gb), free(gbt), free(kept);
                free(base[0]), free(base[1]), free(base[2]);
            }
}

// ============================================================================================
// add, scale, sum_squares
// ============================================================================================
static void case_add_scale(void) {
    size_t sizes[] = {1, 17, 100003};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *a = randn(n, 90, 1, 0), *b = randn(n, 91, 3, 0), *sum = xmalloc(n * 4), *sc = xmalloc(n * 4);
        const float s = -0.37f;
        for (size_t i = 0; i < n; i++) sum[i] = a[i] + b[i], sc[i] = a[i] * s;  // correctly rounded in fp32
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *da = dput(a, n, 0), *db = dput(b, n, 0), *o = dnan(n), *a2 = dput(a, n, 0), *b2 = dput(b, n, 1);
            OP(add)(BE, o, da, db, n);
            OP(add)(BE, a2, a2, db, n);  // out aliasing a
            OP(add)(BE, b2, da, b2, n);  // out aliasing b
            OP(scale)(BE, da, n, s);
            float *ho = dget(o, n), *ha = dget(a2, n), *hb = dget(b2, n), *hs = dget(da, n);
            CHECK(bits_differ(ho, sum, n) == 0 && bits_differ(ha, sum, n) == 0 && bits_differ(hb, sum, n) == 0,
                  "add on %s: n %zu: not the fp32 sum (out of place %zu, aliasing a %zu, aliasing b %zu wrong)",
                  t->label, n, bits_differ(ho, sum, n), bits_differ(ha, sum, n), bits_differ(hb, sum, n));
            CHECK(bits_differ(hs, sc, n) == 0, "scale on %s: n %zu: %zu elements not the fp32 product", t->label, n,
                  bits_differ(hs, sc, n));
            free(ho), free(ha), free(hb), free(hs);
            dfree();
        }
        free(a), free(b), free(sum), free(sc);
    }
}

static void case_sum_squares(void) {
    size_t sizes[] = {0, 1, 17, 100003, 1000003};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = randn(n, 95, 2, 0.3);
        double ref = 0, comp = 0;  // Neumaier-compensated, as exact as fp64 gets
        for (size_t i = 0; i < n; i++) {
            double v = (double)x[i] * x[i], s = ref + v;
            comp += fabs(ref) >= fabs(v) ? (ref - s) + v : (v - s) + ref;
            ref = s;
        }
        ref += comp;
        double cpu = NAN;
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *d = dput(x, n, 1);
            double got = OP(sum_squares)(BE, d, n), e = n ? fabs(got - ref) / ref : fabs(got);
            char what[32];
            snprintf(what, sizeof what, "n %zu", n);
            expect("sum_squares", what, e != e ? INFINITY : e, TOL_SSQ);
            if (is_base(t)) cpu = got;
            if (t->device && n)
                CHECK(fabs(got - cpu) <= TOL_SSQ * cpu, "sum_squares on %s: n %zu: %.17g, the CPU backend %.17g",
                      t->label, n, got, cpu);
            dfree();
        }
        free(x);
    }
}

// ============================================================================================
// patchify, tokens_forward, tokens_backward, gather_cls, scatter_cls
// ============================================================================================
static void case_patchify(void) {
    static const int shapes[][4] = {{2, 8, 3, 4}, {3, 32, 3, 8}, {2, 28, 1, 7}, {1, 5, 1, 5}, {2, 30, 3, 6}, {1, 224, 3, 16}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int B = shapes[c][0], S = shapes[c][1], C = shapes[c][2], P = shapes[c][3], G = S / P, len = P * P * C;
        size_t nimg = (size_t)B * S * S * C, np = (size_t)B * G * G * len;
        uint8_t *img = xmalloc(nimg);
        for (size_t i = 0; i < nimg; i++) img[i] = (uint8_t)(rng_uniform(3, 40, i) * 256);
        img[0] = 0, img[nimg - 1] = 255;
        float *want = xmalloc(np * sizeof(float)), k = 2.0f / 255.0f;
        for (int b = 0; b < B; b++)
            for (int gy = 0; gy < G; gy++)
                for (int gx = 0; gx < G; gx++)
                    for (int py = 0; py < P; py++)
                        for (int px = 0; px < P; px++)
                            for (int ch = 0; ch < C; ch++)
                                want[((size_t)b * G * G + gy * G + gx) * len + (py * P + px) * C + ch] =
                                    (float)img[(((size_t)b * S + gy * P + py) * S + gx * P + px) * C + ch] * k - 1.0f;
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            uint8_t *di = dputb(img, nimg);
            float *dp = dnan(np);
            OP(patchify)(BE, dp, di, B, S, C, P);
            float *h = dget(dp, np);
            size_t bad = bits_differ(h, want, np);
            CHECK(bad == 0, "patchify on %s: B %d S %d C %d P %d: %zu values wrong", t->label, B, S, C, P, bad);
            free(h);
            dfree();
        }
        free(img), free(want);
    }
}

static const int token_shapes[][3] = {{1, 2, 3}, {2, 5, 5}, {3, 17, 48}, {2, 197, 64}, {4, 50, 192}};

static void case_tokens(void) {
    for (size_t c = 0; c < sizeof token_shapes / sizeof token_shapes[0]; c++) {
        int B = token_shapes[c][0], T = token_shapes[c][1], D = token_shapes[c][2];
        size_t ne = (size_t)B * (T - 1) * D, nx = (size_t)B * T * D;
        float *emb = randn(ne, 100, 1, 0), *cls = randn(D, 101, 1, 0), *pos = randn((size_t)T * D, 102, 1, 0);
        float *dx = randn(nx, 103, 1, 0), *dcls0 = randn(D, 104, 1, 0), *dpos0 = randn((size_t)T * D, 105, 1, 0);
        float *want = xmalloc(nx * sizeof(float));
        double *gcls = xmalloc(D * sizeof(double)), *gpos = xmalloc((size_t)T * D * sizeof(double));
        for (int b = 0; b < B; b++)
            for (int tt = 0; tt < T; tt++)
                for (int j = 0; j < D; j++)
                    want[((size_t)b * T + tt) * D + j] =
                        (tt ? emb[((size_t)b * (T - 1) + tt - 1) * D + j] : cls[j]) + pos[(size_t)tt * D + j];
        for (int tt = 0; tt < T; tt++)
            for (int j = 0; j < D; j++) {
                double s = 0;
                for (int b = 0; b < B; b++) s += dx[((size_t)b * T + tt) * D + j];
                gpos[(size_t)tt * D + j] = dpos0[(size_t)tt * D + j] + s;
                if (tt == 0) gcls[j] = dcls0[j] + s;
            }
        char what[64];
        snprintf(what, sizeof what, "B %d T %d D %d", B, T, D);
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *de = dput(emb, ne, 0), *dc = dput(cls, D, 1), *dp = dput(pos, (size_t)T * D, 0), *x = dnan(nx);
            float *ddx = dput(dx, nx, 0), *ge = dnan(ne), *gc = dput(dcls0, D, 0), *gp = dput(dpos0, (size_t)T * D, 1);
            OP(tokens_forward)(BE, x, de, dc, dp, B, T, D);
            OP(tokens_backward)(BE, ge, gc, gp, ddx, B, T, D);
            float *hx = dget(x, nx), *he = dget(ge, ne), *hc = dget(gc, D), *hp = dget(gp, (size_t)T * D);
            size_t bad = bits_differ(hx, want, nx), bade = 0;
            CHECK(bad == 0, "tokens_forward on %s: %s: %zu values wrong", t->label, what, bad);
            for (int b = 0; b < B; b++)
                for (int tt = 1; tt < T; tt++)
                    bade += bits_differ(he + ((size_t)b * (T - 1) + tt - 1) * D, dx + ((size_t)b * T + tt) * D, D);
            CHECK(bade == 0, "tokens_backward on %s: %s: demb: %zu values not copied from dx", t->label, what, bade);
            expect("tokens_backward", what, err_elem(hc, gcls, D), TOL_SUMS);
            expect("tokens_backward", what, err_elem(hp, gpos, (size_t)T * D), TOL_SUMS);
            // The adjoint: <tokens_forward(emb, cls, pos), dx> = <emb, demb> + <cls, dcls> + <pos, dpos>.
            double lhs = 0, rhs = 0, mag = 0;
            for (size_t i = 0; i < nx; i++) lhs += (double)hx[i] * dx[i], mag += fabs((double)hx[i] * dx[i]);
            for (size_t i = 0; i < ne; i++) rhs += (double)emb[i] * he[i];
            for (int j = 0; j < D; j++) rhs += (double)cls[j] * ((double)hc[j] - dcls0[j]);
            for (size_t i = 0; i < (size_t)T * D; i++) rhs += (double)pos[i] * ((double)hp[i] - dpos0[i]);
            expect("tokens_backward", "adjoint of tokens_forward", fabs(lhs - rhs) / fmax(mag, 1e-30), TOL_SUMS);
            free(hx), free(he), free(hc), free(hp);
            dfree();
        }
        free(emb), free(cls), free(pos), free(dx), free(dcls0), free(dpos0), free(want), free(gcls), free(gpos);
    }
}

static void case_cls(void) {
    for (size_t c = 0; c < sizeof token_shapes / sizeof token_shapes[0]; c++) {
        int B = token_shapes[c][0], T = token_shapes[c][1], D = token_shapes[c][2];
        size_t nx = (size_t)B * T * D;
        float *x = randn(nx, 110, 1, 0), *dc = randn((size_t)B * D, 111, 1, 0);
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *dx = dput(x, nx, 0), *o = dnan((size_t)B * D), *ddc = dput(dc, (size_t)B * D, 1), *g = dnan(nx);
            OP(gather_cls)(BE, o, dx, B, T, D);
            OP(scatter_cls)(BE, g, ddc, B, T, D);
            float *ho = dget(o, (size_t)B * D), *hg = dget(g, nx);
            size_t bad = 0, bads = 0;
            for (int b = 0; b < B; b++) bad += bits_differ(ho + (size_t)b * D, x + (size_t)b * T * D, D);
            for (int b = 0; b < B; b++)
                for (int tt = 0; tt < T; tt++)
                    for (int j = 0; j < D; j++) {
                        float v = hg[((size_t)b * T + tt) * D + j], w = tt ? 0.0f : dc[(size_t)b * D + j];
                        bads += memcmp(&v, &w, 4) != 0;
                    }
            CHECK(bad == 0, "gather_cls on %s: B %d T %d D %d: %zu values wrong", t->label, B, T, D, bad);
            CHECK(bads == 0, "scatter_cls on %s: B %d T %d D %d: %zu values wrong (the rest must be 0)", t->label, B, T,
                  D, bads);
            // scatter_cls is gather_cls's adjoint: <gather(x), dc> = <x, scatter(dc)>, exactly.
            double l = 0, r = 0;
            for (size_t i = 0; i < (size_t)B * D; i++) l += (double)ho[i] * dc[i];
            for (size_t i = 0; i < nx; i++) r += (double)x[i] * hg[i];
            CHECK(fabs(l - r) <= 1e-12 * fmax(1, fabs(l)), "scatter_cls on %s: not the adjoint of gather_cls (%g, %g)",
                  t->label, l, r);
            free(ho), free(hg);
            dfree();
        }
        free(x), free(dc);
    }
}

// ============================================================================================
// attention_state_floats, attention_scratch_floats, attention_forward, attention_backward
// ============================================================================================
typedef struct {
    int B, T, H, hd;
} AShape;

// One (b, h) pair in fp64: out, and with dout the gradients; returns sum(dout * out) over it.
static double attn_pair(const AShape *s, int b, int h, const double *q, const double *k, const double *v,
                        const double *dout, double *out, double *dq, double *dk, double *dv, double *P, double *dP) {
    int T = s->T, hd = s->hd, D = s->H * hd;
    double alpha = 1 / sqrt(hd), loss = 0;
#define AT(x, t, e) (x)[((size_t)b * T + (t)) * D + (size_t)h * hd + (e)]
    for (int i = 0; i < T; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < T; j++) {
            double d = 0;
            for (int e = 0; e < hd; e++) d += AT(q, i, e) * AT(k, j, e);
            P[(size_t)i * T + j] = d * alpha;
            mx = fmax(mx, d * alpha);
        }
        for (int j = 0; j < T; j++) sum += (P[(size_t)i * T + j] = exp(P[(size_t)i * T + j] - mx));
        for (int j = 0; j < T; j++) P[(size_t)i * T + j] /= sum;
        for (int e = 0; e < hd; e++) {
            double o = 0;
            for (int j = 0; j < T; j++) o += P[(size_t)i * T + j] * AT(v, j, e);
            if (out) AT(out, i, e) = o;
            loss += AT(dout, i, e) * o;
        }
    }
    if (!dq) return loss;
    for (int i = 0; i < T; i++) {
        double dot = 0;
        for (int j = 0; j < T; j++) {
            double d = 0;
            for (int e = 0; e < hd; e++) d += AT(dout, i, e) * AT(v, j, e);
            dP[(size_t)i * T + j] = d;
            dot += P[(size_t)i * T + j] * d;
        }
        for (int j = 0; j < T; j++) dP[(size_t)i * T + j] = P[(size_t)i * T + j] * (dP[(size_t)i * T + j] - dot);
    }
    for (int t = 0; t < T; t++)
        for (int e = 0; e < hd; e++) {
            double gq = 0, gk = 0, gv = 0;
            for (int j = 0; j < T; j++) {
                gq += dP[(size_t)t * T + j] * AT(k, j, e);
                gk += dP[(size_t)j * T + t] * AT(q, j, e);
                gv += P[(size_t)j * T + t] * AT(dout, j, e);
            }
            AT(dq, t, e) = gq * alpha, AT(dk, t, e) = gk * alpha, AT(dv, t, e) = gv;
        }
#undef AT
    return loss;
}

static void case_attention(void) {
    static const int shapes[][5] = {  // B, T, H, hd, big
        {2, 7, 3, 4, 0},   {2, 5, 3, 16, 0},  {2, 17, 4, 16, 0},  {1, 50, 4, 16, 0},  {2, 197, 3, 64, 0},
        {3, 1, 2, 64, 0},  {1, 33, 2, 33, 0}, {1, 65, 1, 96, 0},  {2, 50, 2, 80, 0},  {1, 65, 2, 32, 0},
        {2, 17, 3, 32, 0}, {1, 64, 2, 64, 0}, {2, 128, 1, 32, 0}, {1, 130, 5, 64, 0}, {1, 130, 1, 128, 0},
        {1, 577, 2, 128, 1}, {1, 577, 2, 64, 1}};
    enum { NFD = 3, CANARY = 64 };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        AShape s = {shapes[c][0], shapes[c][1], shapes[c][2], shapes[c][3]};
        if (shapes[c][4] && !have_device) continue;
        int T = s.T, D = s.H * s.hd;
        size_t n = (size_t)s.B * T * D;
        float *in[4] = {randn(n, 120, 1, 0), randn(n, 121, 1, 0), randn(n, 122, 1, 0), randn(n, 123, 1, 0)};
        double *q = to64(in[0], n), *k = to64(in[1], n), *v = to64(in[2], n), *dout = to64(in[3], n);
        double *out = xmalloc(n * sizeof(double)), *g[3];
        for (int a = 0; a < 3; a++) g[a] = xmalloc(n * sizeof(double));
#pragma omp parallel
        {
            double *P = xmalloc((size_t)T * T * sizeof(double)), *dP = xmalloc((size_t)T * T * sizeof(double));
#pragma omp for schedule(dynamic)
            for (int bh = 0; bh < s.B * s.H; bh++)
                attn_pair(&s, bh / s.H, bh % s.H, q, k, v, dout, out, g[0], g[1], g[2], P, dP);
            free(P), free(dP);
        }
        // Finite differences of sum(dout * attention(q, k, v)): only the perturbed pair changes.
        double fd[3][NFD], *P = xmalloc((size_t)T * T * sizeof(double));
        size_t idx[3][NFD];
        double *ins[3] = {q, k, v};
        for (int a = 0; a < 3; a++)
            for (int r = 0; r < NFD; r++) {
                size_t i = idx[a][r] = sample(r, NFD, n);
                int b = (int)(i / ((size_t)T * D)), h = (int)(i % D) / s.hd;
                double keep = ins[a][i], hh = 1e-5;
                ins[a][i] = keep + hh;
                double lp = attn_pair(&s, b, h, q, k, v, dout, NULL, NULL, NULL, NULL, P, NULL);
                ins[a][i] = keep - hh;
                double lm = attn_pair(&s, b, h, q, k, v, dout, NULL, NULL, NULL, NULL, P, NULL);
                ins[a][i] = keep;
                fd[a][r] = (lp - lm) / (2 * hh);
            }
        free(P);
        const char *gn[3] = {"dq", "dk", "dv"};
        char what[96];
        for (int a = 0; a < 3; a++) {
            snprintf(what, sizeof what, "B %d T %d H %d hd %d %s", s.B, T, s.H, s.hd, gn[a]);
            expect_ref_fd("attention_backward", what, g[a], n, fd[a], idx[a], NFD);
        }
        float *base[2][4] = {{NULL}};
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_ATTN)) continue;
            enter(t);
            size_t ns = OP(attention_state_floats)(BE, s.B, T, s.H, s.hd),
                   nw = OP(attention_scratch_floats)(BE, s.B, T, s.H, s.hd);
            // State and scratch of exactly the sizes asked for, then canaries that must survive.
            float canary[CANARY];
            for (int i = 0; i < CANARY; i++) canary[i] = 1234.5f + i;
            float *st = dalloc((ns + CANARY) * sizeof(float)), *sc = dalloc((nw + CANARY) * sizeof(float));
            OP(upload)(BE, st + ns, canary, sizeof canary);
            OP(upload)(BE, sc + nw, canary, sizeof canary);
            float *dq = dput(in[0], n, 0), *dk = dput(in[1], n, 0), *dv = dput(in[2], n, 0), *ddo = dput(in[3], n, 0);
            float *o = dnan(n), *gq = dnan(n), *gk = dnan(n), *gv = dnan(n);
            int rc = OP(attention_forward)(BE, o, st, sc, dq, dk, dv, s.B, T, s.H, s.hd);
            int rc2 = OP(attention_backward)(BE, gq, gk, gv, ddo, o, st, sc, dq, dk, dv, s.B, T, s.H, s.hd);
            snprintf(what, sizeof what, "B %d T %d H %d hd %d", s.B, T, s.H, s.hd);
            CHECK(rc == 0 && rc2 == 0, "attention on %s: %s: rc %d/%d (%s)", t->label, what, rc, rc2,
                  rc || rc2 ? vit_error() : "");
            float *c1 = dget(st + ns, CANARY), *c2 = dget(sc + nw, CANARY);
            CHECK(same(c1, canary, sizeof canary) && same(c2, canary, sizeof canary), "attention on %s: %s: wrote past "
                  "attention_state_floats (%zu) or attention_scratch_floats (%zu)", t->label, what, ns, nw);
            free(c1), free(c2);
            double tol = t->prec == P_BF16 ? TOL_ATTN_BF16 : TOL_ATTN;
            float *ho = dget(o, n), *hg[3] = {dget(gq, n), dget(gk, n), dget(gv, n)};
            expect("attention_forward", what, err_norm(ho, out, n), tol);
            versus_cpu("attention_forward", what, &base[pclass(t)][0], ho, n, tol);
            for (int a = 0; a < 3; a++) {
                snprintf(what, sizeof what, "B %d T %d H %d hd %d %s", s.B, T, s.H, s.hd, gn[a]);
                expect("attention_backward", what, err_norm(hg[a], g[a], n), tol);
                expect_fd("attention_backward", what, hg[a], fd[a], idx[a], NFD, g[a], n, 0, tol);
                versus_cpu("attention_backward", what, &base[pclass(t)][1 + a], hg[a], n, tol);
                free(hg[a]);
            }
            free(ho);
            dfree();
        }
        for (int p = 0; p < 2; p++)
            for (int a = 0; a < 4; a++) free(base[p][a]);
        for (int a = 0; a < 4; a++) free(in[a]);
        for (int a = 0; a < 3; a++) free(g[a]);
        free(q), free(k), free(v), free(dout), free(out);
    }
}

// ============================================================================================
// xent_forward, xent_backward
// ============================================================================================
// Loss of one sample in fp64 (probabilities into p when not NULL).
static double xent_row(const double *z, int K, int label, double sm, double *p) {
    double mx = -INFINITY, sum = 0, loss = 0;
    for (int k = 0; k < K; k++) mx = fmax(mx, z[k]);
    for (int k = 0; k < K; k++) sum += exp(z[k] - mx);
    double lse = mx + log(sum);
    for (int k = 0; k < K; k++) {
        double logp = z[k] - lse;
        if (p) p[k] = exp(logp);
        loss -= (sm / K + (k == label ? 1 - sm : 0)) * logp;
    }
    return loss;
}

static void case_xent(void) {
    static const int shapes[][2] = {{1, 1}, {2, 3}, {5, 9}, {5, 10}, {64, 1000}, {3, 21843}};
    enum { NFD = 8 };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (int si = 0; si < 2; si++) {
            int B = shapes[c][0], K = shapes[c][1];
            size_t n = (size_t)B * K;
            float sm = si ? 0.1f : 0.0f, scale = si ? 0.125f : 1.0f;
            float *z = randn(n, 130, 3, 0);
            double *z64 = to64(z, n), *p = xmalloc(n * sizeof(double)), *loss = xmalloc(B * sizeof(double));
            int *lab = xmalloc(B * sizeof(int));
            for (int b = 0; b < B; b++) lab[b] = (int)(rng_uniform(5, 131, (uint64_t)b + 7 * c) * K);
            for (int b = 0; b < B; b++) loss[b] = xent_row(z64 + (size_t)b * K, K, lab[b], sm, p + (size_t)b * K);
            // d(scale * sum of losses)/dz: scale (p - target), and its finite differences.
            double *gz = xmalloc(n * sizeof(double)), fd[NFD];
            size_t idx[NFD];
            for (size_t i = 0; i < n; i++) {
                int b = (int)(i / K), k = (int)(i % K);
                gz[i] = scale * (p[i] - ((double)sm / K + (k == lab[b] ? 1 - (double)sm : 0)));
            }
            for (int s = 0; s < NFD; s++) {
                size_t i = idx[s] = sample(s, NFD, n);
                int b = (int)(i / K);
                double keep = z64[i], h = 1e-5;
                z64[i] = keep + h;
                double lp = xent_row(z64 + (size_t)b * K, K, lab[b], sm, NULL);
                z64[i] = keep - h;
                double lm = xent_row(z64 + (size_t)b * K, K, lab[b], sm, NULL);
                z64[i] = keep;
                fd[s] = scale * (lp - lm) / (2 * h);
            }
            char what[64];
            snprintf(what, sizeof what, "%d x %d smoothing %g scale %g", B, K, sm, scale);
            expect_ref_fd("xent_backward", what, gz, n, fd, idx, NFD);
            double *gown = xmalloc(n * sizeof(double));
            float *base[3] = {NULL, NULL, NULL};
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_OP)) continue;
                enter(t);
                float *dz = dput(z, n, 0), *dp = dnan(n), *dl = dnan(B), *dg = dnan(n);
                int *dlab = dputb(lab, B * sizeof(int));
                OP(xent_forward)(BE, dp, dl, dz, dlab, B, K, sm);
                OP(xent_backward)(BE, dg, dp, dlab, B, K, sm, scale);
                float *hp = dget(dp, n), *hl = dget(dl, B), *hg = dget(dg, n);
                expect("xent_forward", what, err_elem(hp, p, n), TOL_XENT);
                expect("xent_forward", what, err_elem(hl, loss, B), TOL_XENT);
                // The backward formula on the op's own probabilities, then against the gradient.
                for (size_t i = 0; i < n; i++) {
                    int b = (int)(i / K), k = (int)(i % K);
                    float target = sm / K + (k == lab[b] ? 1.0f - sm : 0.0f);
                    gown[i] = scale * ((double)hp[i] - target);
                }
                expect("xent_backward", what, err_elem(hg, gown, n), TOL_XENT);
                expect_fd("xent_backward", what, hg, fd, idx, NFD, gz, n, 0, TOL_XENT);
                versus_cpu("xent_forward", what, &base[0], hp, n, TOL_XENT);
                versus_cpu("xent_forward", what, &base[1], hl, B, TOL_XENT);
                versus_cpu("xent_backward", what, &base[2], hg, n, TOL_XENT);
                free(hp), free(hl), free(hg);
                dfree();
            }
            free(z), free(z64), free(p), free(loss), free(lab), free(gz), free(gown);
            free(base[0]), free(base[1]), free(base[2]);
        }
}

// ============================================================================================
// drop_path, mix_images, xent_mix_forward, xent_mix_backward (regularisation)
// ============================================================================================
// What drop path must give, bit for bit: whole samples times 1/keep (fp32) where rng_keep
// keeps sample b, +0 where it drops it.
static float *drop_path_expected(const float *in, int B, size_t n, float rate, uint64_t seed, uint32_t step,
                                 uint32_t site) {
    float keep = 1.0f - rate, inv = keep > 0 ? 1.0f / keep : 0.0f, *o = xmalloc((size_t)B * n * sizeof(float));
    for (int b = 0; b < B; b++) {
        int kept = rng_keep(seed, step, site, (uint64_t)b, keep);
        for (size_t j = 0; j < n; j++) o[(size_t)b * n + j] = kept ? in[(size_t)b * n + j] * inv : 0.0f;
    }
    return o;
}

static void case_drop_path(void) {
    static const struct { int B; size_t n; } shapes[] = {{1, 1}, {3, 7}, {4, 17 * 48}, {7, 4099}, {2, 9000}};
    float rates[] = {0.1f, 0.5f, 1.0f, 0.0181818176f};
    enum { NFD = 6 };
    // The mask: keep fraction of rng_keep over many samples, and the fp32 scale.
    for (size_t ri = 0; ri < sizeof rates / sizeof rates[0]; ri++) {
        float keep = 1.0f - rates[ri];
        size_t kept = 0, N = 200000;
        for (size_t b = 0; b < N; b++) kept += rng_keep(99, 4, 0x64700003u, b, keep);
        double frac = (double)kept / N, sigma = sqrt(keep * (1.0 - keep) / N);
        CHECK(fabs(frac - keep) <= 5 * sigma + 1e-12, "drop_path: rng_keep keeps %.5f of samples (expected %.5f)", frac,
              (double)keep);
    }
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (size_t ri = 0; ri < sizeof rates / sizeof rates[0]; ri++) {
            int B = shapes[c].B;
            size_t n = shapes[c].n, total = (size_t)B * n;
            float rate = rates[ri];
            uint64_t seed = 0xfeedull + c;
            uint32_t step = 7 + (uint32_t)ri, site = 0x64700000u + (uint32_t)c;
            float *x = randn(total, 170, 1, 0.3), *dy = randn(total, 171, 1, 0);
            float *want = drop_path_expected(x, B, n, rate, seed, step, site);
            float *want_b = drop_path_expected(dy, B, n, rate, seed, step, site);
            // Finite differences of sum(dy * drop_path(x)) in x: the op is its own adjoint.
            double fd[NFD];
            size_t idx[NFD];
            for (int s = 0; s < NFD; s++) {
                size_t i = idx[s] = sample(s, NFD, total);
                double h = 1e-3, xp = (double)x[i] + h, xm = (double)x[i] - h;
                float keep = 1.0f - rate;
                double m = rng_keep(seed, step, site, i / n, keep) ? (double)(1.0f / keep) : 0.0;
                fd[s] = dy[i] * (xp * m - xm * m) / (2 * h);
            }
            double *gref = to64(want_b, total);
            char what[80];
            snprintf(what, sizeof what, "B %d n %zu rate %g", B, n, rate);
            float *first = NULL;
            for (Target *t = targets; t < targets + ntargets; t++) {
                if (!runs(t, K_OP)) continue;
                enter(t);
                float *dx = dput(x, total, 1), *o = dnan(total), *g = dput(dy, total, 0);
                OP(drop_path)(BE, o, dx, B, n, rate, seed, step, site);
                OP(drop_path)(BE, g, g, B, n, rate, seed, step, site);  // the backward pass, in place
                float *ho = dget(o, total), *hg = dget(g, total);
                size_t bf = bits_differ(ho, want, total), bb = bits_differ(hg, want_b, total);
                CHECK(bf == 0, "drop_path on %s: %s: %zu elements differ from rng_keep's samples x 1/(1-rate)",
                      t->label, what, bf);
                CHECK(bb == 0, "drop_path on %s: %s (in place): %zu elements differ", t->label, what, bb);
                expect_fd("drop_path", what, hg, fd, idx, NFD, gref, total, 0, TOL_ACT_GRAD);
                if (!first) {
                    first = dupf(ho, total);
                } else {
                    size_t d = bits_differ(ho, first, total);
                    CHECK(d == 0, "drop_path on %s: %s: %zu elements differ from %s", t->label, what, d,
                          targets[0].label);
                }
                free(ho), free(hg);
                dfree();
            }
            free(x), free(dy), free(want), free(want_b), free(gref), free(first);
        }
}

// Sample b's image-space rule (backend.h), on patches (b, g, e) of S x S x C images.
static void mix_expected(float *out, const float *in, const float *w, const int *box, int B, int S, int C, int P) {
    int G = S / P, len = P * P * C;
    size_t per = (size_t)G * G * len;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G * G; g++)
            for (int e = 0; e < len; e++) {
                int y = g / G * P + e / (P * C), x = g % G * P + e / C % P;
                size_t i = b * per + (size_t)g * len + e, j = (size_t)(B - 1 - b) * per + (size_t)g * len + e;
                const int *bx = box + 4 * b;
                float own = w[2 * b] * in[i], other = w[2 * b + 1] * in[j];
                out[i] = y >= bx[0] && y < bx[1] && x >= bx[2] && x < bx[3] ? in[j] : own + other;
            }
}

static void case_mix_images(void) {
    static const int shapes[][4] = {{2, 8, 3, 4}, {3, 8, 1, 2}, {6, 12, 3, 4}, {1, 5, 1, 5}, {4, 32, 3, 8}, {8, 16, 2, 16}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int B = shapes[c][0], S = shapes[c][1], C = shapes[c][2], P = shapes[c][3];
        size_t n = (size_t)B * S * S * C;
        float *x = randn(n, 180, 0.5, 0), *want = xmalloc(n * sizeof(float)), *w = xmalloc(2 * B * sizeof(float));
        int *box = xmalloc(4 * B * sizeof(int));
        // Per sample: a blend, a partial box, a box over the whole image, an empty box, (1, 0).
        for (int b = 0; b < B; b++) {
            double u = rng_uniform(6, 181, (uint64_t)b + 10 * c);
            float lam = (float)rng_uniform(6, 182, (uint64_t)b + 10 * c);
            int kind = b % 5, *bx = box + 4 * b;
            w[2 * b] = kind == 4 ? 1.0f : lam, w[2 * b + 1] = kind == 4 ? 0.0f : (float)(1.0 - lam);
            int y0 = (int)(u * S), x0 = (int)(rng_uniform(6, 183, (uint64_t)b) * S);
            int y1 = y0 + 1 + (int)(rng_uniform(6, 184, (uint64_t)b) * (S - y0)), x1 = x0 + 1 + (S - x0) / 2;
            bx[0] = bx[1] = bx[2] = bx[3] = 0;
            if (kind == 1) bx[0] = y0, bx[1] = y1, bx[2] = x0, bx[3] = x1 > S ? S : x1;
            if (kind == 2) bx[0] = 0, bx[1] = S, bx[2] = 0, bx[3] = S;
            if (kind == 3) bx[0] = bx[1] = y0, bx[2] = 0, bx[3] = S;
        }
        // x is the image (b, y, x, c); the op sees it patchified.
        int G = S / P, len = P * P * C;
        float *xp = xmalloc(n * sizeof(float)), *hp = xmalloc(n * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int y = 0; y < S; y++)
                for (int xx = 0; xx < S; xx++)
                    for (int ch = 0; ch < C; ch++)
                        xp[(size_t)b * G * G * len + (size_t)(y / P * G + xx / P) * len + (y % P * P + xx % P) * C + ch] =
                            x[(((size_t)b * S + y) * S + xx) * C + ch];
        mix_expected(want, xp, w, box, B, S, C, P);
        size_t boxed = 0;
        for (size_t i = 0; i < n; i++) boxed += want[i] != xp[i];
        CHECK(boxed > 0, "mix_images: B %d S %d: the case changes nothing", B, S);
        for (Target *t = targets; t < targets + ntargets; t++) {
            if (!runs(t, K_OP)) continue;
            enter(t);
            float *dp = dput(xp, n, 1), *dw = dput(w, 2 * (size_t)B, 0);
            int *db = dputb(box, 4 * B * sizeof(int));
            OP(mix_images)(BE, dp, dw, db, B, S, C, P);
            OP(download)(BE, hp, dp, n * sizeof(float));
            size_t bad = bits_differ(hp, want, n);
            CHECK(bad == 0, "mix_images on %s: B %d S %d C %d P %d: %zu values differ from the pixel rule", t->label, B,
                  S, C, P, bad);
            dfree();
        }
        free(x), free(want), free(w), free(box), free(xp), free(hp);
    }
}

// One sample's loss against the fp32 soft target t (fp64 sums); probabilities into p.
static double xent_soft_row(const double *z, const float *t, int K, double *p) {
    double mx = -INFINITY, sum = 0, loss = 0;
    for (int k = 0; k < K; k++) mx = fmax(mx, z[k]);
    for (int k = 0; k < K; k++) sum += exp(z[k] - mx);
    double lse = mx + log(sum);
    for (int k = 0; k < K; k++) {
        if (p) p[k] = exp(z[k] - lse);
        loss -= t[k] * (z[k] - lse);
    }
    return loss;
}

static void case_xent_mix(void) {
    static const int shapes[][2] = {{1, 1}, {2, 3}, {5, 9}, {6, 10}, {64, 1000}, {3, 21843}};
    enum { NFD = 8 };
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (int si = 0; si < 2; si++) {
            int B = shapes[c][0], K = shapes[c][1];
            size_t n = (size_t)B * K;
            float sm = si ? 0.1f : 0.0f, scale = si ? 0.125f : 1.0f;
            float *z = randn(n, 190, 3, 0), *w = xmalloc(2 * B * sizeof(float)), *t = xmalloc(n * sizeof(float));
            int *lab = xmalloc(B * sizeof(int));
            for (int b = 0; b < B; b++) {
                lab[b] = (int)(rng_uniform(5, 191, (uint64_t)b + 7 * c) * K);
                float lam = b % 3 == 2 ? 1.0f : (float)rng_uniform(5, 192, (uint64_t)b + 7 * c);
                w[2 * b] = lam, w[2 * b + 1] = (float)(1.0 - lam);
            }
            // The targets as backend.h states them: timm's one_hot values in fp32, two roundings.
            double off = (double)sm / K;
            float offf = (float)off, onf = (float)(1.0 - (double)sm + off);
            for (int b = 0; b < B; b++)
                for (int k = 0; k < K; k++) {
                    float a = w[2 * b] * (k == lab[b] ? onf : offf), o = w[2 * b + 1] * (k == lab[B - 1 - b] ? onf : offf);
                    t[(size_t)b * K + k] = a + o;
                }
            double *z64 = to64(z, n), *p = xmalloc(n * sizeof(double)), *loss = xmalloc(B * sizeof(double));
            for (int b = 0; b < B; b++) loss[b] = xent_soft_row(z64 + (size_t)b * K, t + (size_t)b * K, K, p + (size_t)b * K);
            double *gz = xmalloc(n * sizeof(double)), fd[NFD];
            size_t idx[NFD];
            for (size_t i = 0; i < n; i++) gz[i] = scale * (p[i] - t[i]);
            for (int s = 0; s < NFD; s++) {
                size_t i = idx[s] = sample(s, NFD, n);
                int b = (int)(i / K);
                double keep = z64[i], h = 1e-5;
                z64[i] = keep + h;
                double lp = xent_soft_row(z64 + (size_t)b * K, t + (size_t)b * K, K, NULL);
                z64[i] = keep - h;
                double lm = xent_soft_row(z64 + (size_t)b * K, t + (size_t)b * K, K, NULL);
                z64[i] = keep;
                fd[s] = scale * (lp - lm) / (2 * h);
            }
            char what[64];
            snprintf(what, sizeof what, "%d x %d smoothing %g scale %g", B, K, sm, scale);
            // Targets whose weights sum to 1 sum to 1, so the gradient is p - t (checked here).
            expect_ref_fd("xent_mix_backward", what, gz, n, fd, idx, NFD);
            float *base[3] = {NULL, NULL, NULL};
            for (Target *tg = targets; tg < targets + ntargets; tg++) {
                if (!runs(tg, K_OP)) continue;
                enter(tg);
                float *dz = dput(z, n, 0), *dp = dnan(n), *dl = dnan(B), *dg = dnan(n), *dt = dnan(n);
                float *dw = dput(w, 2 * (size_t)B, 1), *zero = dnan(n);
                int *dlab = dputb(lab, B * sizeof(int));
                OP(zero)(BE, zero, n * sizeof(float));
                OP(xent_mix_forward)(BE, dp, dl, dz, dlab, dw, B, K, sm);
                OP(xent_mix_backward)(BE, dg, dp, dlab, dw, B, K, sm, scale);
                OP(xent_mix_backward)(BE, dt, zero, dlab, dw, B, K, sm, -1.0f);  // -(0 - t): the targets
                float *hp = dget(dp, n), *hl = dget(dl, B), *hg = dget(dg, n), *ht = dget(dt, n);
                size_t tb = 0;  // by value: -1 * (0 - 0) is -0
                for (size_t i = 0; i < n; i++) tb += ht[i] != t[i];
                CHECK(tb == 0, "xent_mix_backward on %s: %s: %zu targets differ from the fp32 rule", tg->label, what, tb);
                expect("xent_mix_forward", what, err_elem(hp, p, n), TOL_XENT);
                expect("xent_mix_forward", what, err_elem(hl, loss, B), TOL_XENT);
                expect("xent_mix_backward", what, err_elem(hg, gz, n), TOL_XENT);
                expect_fd("xent_mix_backward", what, hg, fd, idx, NFD, gz, n, 0, TOL_XENT);
                versus_cpu("xent_mix_forward", what, &base[0], hp, n, TOL_XENT);
                versus_cpu("xent_mix_forward", what, &base[1], hl, B, TOL_XENT);
                versus_cpu("xent_mix_backward", what, &base[2], hg, n, TOL_XENT);
                free(hp), free(hl), free(hg), free(ht);
                dfree();
            }
            free(z), free(w), free(t), free(lab), free(z64), free(p), free(loss), free(gz);
            free(base[0]), free(base[1]), free(base[2]);
        }
}

// ============================================================================================
// to_bf16, from_bf16 (optional, both or neither)
// ============================================================================================
static void case_bf16(void) {
    size_t n = 200003;  // above the threaded size, not a multiple of 16
    uint32_t *bits = xmalloc(n * sizeof(uint32_t));
    uint16_t *want = xmalloc(n * sizeof(uint16_t)), *all = xmalloc(65536 * sizeof(uint16_t));
    bf16_test_bits(bits, n);
    for (size_t i = 0; i < n; i++) want[i] = bf16_bits(bits[i]);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    CHECK(round_bf16(1.0f + 1.0f / 256) == 1.0f && round_bf16(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256,
          "this test's bf16 rounding: nearest even at bf16's 8-bit mantissa");
    for (Target *t = targets; t < targets + ntargets; t++) {
        if (!runs(t, K_OP)) continue;
        enter(t);
        CHECK(!BE->to_bf16 == !BE->from_bf16, "%s: to_bf16 and from_bf16 come together", t->label);
        if (!BE->to_bf16 || !BE->from_bf16) continue;  // optional
        float *src = dput((const float *)bits, n, 0), *wide = dnan(65536), *back = dnan(n);
        uint16_t *h = dalloc(n * sizeof(uint16_t)), *dall = dputb(all, 65536 * sizeof(uint16_t));
        OP(to_bf16)(BE, h, src, n);
        OP(from_bf16)(BE, wide, dall, 65536);
        OP(from_bf16)(BE, back, h, n);
        uint16_t *hh = xmalloc(n * sizeof(uint16_t));
        OP(download)(BE, hh, h, n * sizeof(uint16_t));
        float *hw = dget(wide, 65536), *hb = dget(back, n);
        size_t bad = 0, bad_back = 0;
        for (size_t i = 0; i < n; i++) bad += hh[i] != want[i];
        for (int i = 0; i < 65536; i++) bad_back += memcmp(&hw[i], &(uint32_t){(uint32_t)i << 16}, 4) != 0;
        for (size_t i = 0; i < n; i++) bad_back += memcmp(&hb[i], &(uint32_t){(uint32_t)want[i] << 16}, 4) != 0;
        CHECK(bad == 0, "to_bf16 on %s: %zu of %zu values rounded otherwise than nearest even (NaN, inf, ties, "
              "denormals included)", t->label, bad, n);
        CHECK(bad_back == 0, "from_bf16 on %s: %zu values widened wrongly", t->label, bad_back);
        free(hh), free(hw), free(hb);
        dfree();
    }
    free(bits), free(want), free(all);
}

// ============================================================================================
// gemm_bf16, layernorm_forward_bf16, residual_layernorm_forward_bf16, gelu_dropout_forward_bf16,
// attention_forward_bf16 (optional, all or none: the bf16-activation ops)
// ============================================================================================
#define TOL_ACT_BF16 5e-3  // one bf16 rounding of each output (half an ulp: up to 2^-8 relative) and the fp32 op's

// host bf16 bits widened to floats
static float *widen_bf16(const uint16_t *h, size_t n) {
    float *x = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) memcpy(&x[i], &(uint32_t){(uint32_t)h[i] << 16}, 4);
    return x;
}

// The bf16 output h (device, n) is the fp32 output f (device, n) of the same target rounded:
// the ops' contract, bit for bit. Returns the widened host copy of h (the caller frees it).
static float *expect_rounded(const char *op, const char *what, const uint16_t *h, const float *f, size_t n) {
    uint16_t *hh = xmalloc(n * sizeof(uint16_t));
    OP(download)(BE, hh, h, n * sizeof(uint16_t));
    float *hf = dget(f, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &hf[i], 4);
        bad += hh[i] != bf16_bits(u);
    }
    CHECK(bad == 0, "%s on %s: %s: %zu of %zu outputs are not the fp32 op's rounded to bf16", op, cur->label, what,
          bad, n);
    float *w = widen_bf16(hh, n);
    free(hh), free(hf);
    return w;
}

// softmax(q k^T / sqrt(hd)) v per (b, h) in fp64, (B, T, H*hd) layout.
static void attention_ref64(double *out, const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    int D = H * hd;
    double *p = xmalloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = q + ((size_t)b * T + i) * D + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    const float *kj = k + ((size_t)b * T + j) * D + h * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)qi[d] * kj[d];
                    p[j] = s / sqrt((double)hd);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++) sum += p[j] = exp(p[j] - mx);
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += p[j] * v[((size_t)b * T + j) * D + h * hd + d];
                    out[((size_t)b * T + i) * D + h * hd + d] = o / sum;
                }
            }
    free(p);
}

static void case_bf16_acts(void) {
    const uint64_t seed = 99;
    const uint32_t step = 3, site = 5;
    for (Target *t = targets; t < targets + ntargets; t++) {
        if (!runs(t, K_OP | K_ACTS)) continue;
        enter(t);
        int any = BE->gemm_bf16 || BE->layernorm_forward_bf16 || BE->residual_layernorm_forward_bf16 ||
                  BE->gelu_dropout_forward_bf16 || BE->attention_forward_bf16;
        int all = BE->gemm_bf16 && BE->layernorm_forward_bf16 && BE->residual_layernorm_forward_bf16 &&
                  BE->gelu_dropout_forward_bf16 && BE->attention_forward_bf16;
        CHECK(any == all, "%s: the bf16-activation ops come all or none", t->label);
        if (!all) continue;  // optional
        char what[96];

        // LayerNorm and the fused residual op, rows x C.
        static const int ln_shapes[][2] = {{1, 1}, {37, 96}, {394, 768}};
        for (size_t sh = 0; sh < sizeof ln_shapes / sizeof ln_shapes[0]; sh++) {
            int rows = ln_shapes[sh][0], C = ln_shapes[sh][1];
            size_t n = (size_t)rows * C;
            snprintf(what, sizeof what, "%dx%d", rows, C);
            float *x = randn(n, 90, 2, 0.5), *y = randn(n, 91, 1, 0), *w = randn(C, 92, 1, 1), *b = randn(C, 93, 1, 0);
            double *x64 = to64(x, n), *w64 = to64(w, C), *b64 = to64(b, C), *ref = xmalloc(n * sizeof(double));
            float *dx = dput(x, n, 0), *dy = dput(y, n, 1), *dw = dput(w, C, 0), *db = dput(b, C, 0);
            float *o32 = dnan(n), *m32 = dnan(rows), *r32 = dnan(rows), *mh = dnan(rows), *rh = dnan(rows);
            uint16_t *oh = dalloc(n * sizeof(uint16_t));
            OP(layernorm_forward)(BE, o32, m32, r32, dx, dw, db, rows, C, 1e-6f);
            OP(layernorm_forward_bf16)(BE, oh, mh, rh, dx, dw, db, rows, C, 1e-6f);
            float *got = expect_rounded("layernorm_forward_bf16", what, oh, o32, n);
            float *a1 = dget(m32, rows), *a2 = dget(mh, rows), *a3 = dget(r32, rows), *a4 = dget(rh, rows);
            CHECK(same(a1, a2, rows * sizeof(float)) && same(a3, a4, rows * sizeof(float)),
                  "layernorm_forward_bf16 on %s: %s: mean and rstd as layernorm_forward's", t->label, what);
            ln_ref(ref, NULL, NULL, x64, w64, b64, NULL, 0, rows, C, 1e-6);
            expect("layernorm_forward_bf16", what, err_norm(got, ref, n), TOL_ACT_BF16);
            free(got), free(a1), free(a2), free(a3), free(a4);

            // residual: sum = x + dropout(y), out = LN(sum), against residual_layernorm_forward
            float *s32 = dnan(n), *sh16 = dnan(n);
            OP(residual_layernorm_forward)(BE, s32, o32, m32, r32, dx, dy, dw, db, rows, C, 1e-6f, 0.25f, seed, step,
                                           site);
            OP(residual_layernorm_forward_bf16)(BE, sh16, oh, mh, rh, dx, dy, dw, db, rows, C, 1e-6f, 0.25f, seed,
                                                step, site);
            got = expect_rounded("residual_layernorm_forward_bf16", what, oh, o32, n);
            float *hs = dget(s32, n), *hs16 = dget(sh16, n);
            a1 = dget(m32, rows), a2 = dget(mh, rows);
            CHECK(same(hs, hs16, n * sizeof(float)) && same(a1, a2, rows * sizeof(float)),
                  "residual_layernorm_forward_bf16 on %s: %s: sum and mean as residual_layernorm_forward's", t->label,
                  what);
            double *s64 = to64(hs, n);
            ln_ref(ref, NULL, NULL, s64, w64, b64, NULL, 0, rows, C, 1e-6);
            expect("residual_layernorm_forward_bf16", what, err_norm(got, ref, n), TOL_ACT_BF16);
            free(got), free(hs), free(hs16), free(a1), free(a2), free(s64);
            free(x), free(y), free(w), free(b), free(x64), free(w64), free(b64), free(ref);
            dfree();
        }

        // GELU (+ dropout), erf and tanh, rate 0 and 0.2.
        for (int k = 0; k < 4; k++) {
            int tanh_approx = k & 1;
            float rate = k & 2 ? 0.2f : 0.0f;
            size_t n = 100003;
            snprintf(what, sizeof what, "n %zu tanh %d rate %g", n, tanh_approx, rate);
            float *x = randn(n, 94, 3, 0), *dxp = dput(x, n, 0), *o32 = dnan(n);
            uint16_t *oh = dalloc(n * sizeof(uint16_t));
            OP(gelu_dropout_forward)(BE, o32, dxp, n, tanh_approx, rate, seed, step, site);
            OP(gelu_dropout_forward_bf16)(BE, oh, dxp, n, tanh_approx, rate, seed, step, site);
            float *got = expect_rounded("gelu_dropout_forward_bf16", what, oh, o32, n);
            double *ref = xmalloc(n * sizeof(double));
            for (size_t i = 0; i < n; i++)
                ref[i] = rate > 0 && !rng_keep(seed, step, site, i, 1.0f - rate)
                             ? 0.0
                             : gelu64(x[i], tanh_approx) / (rate > 0 ? 1.0f - rate : 1.0f);
            expect("gelu_dropout_forward_bf16", what, err_norm(got, ref, n), TOL_ACT_BF16);
            free(got), free(ref), free(x);
            dfree();
        }

        // Attention: out as attention_forward's, out_bf16 its rounding.
        {
            int Bq = 2, T = 13, H = 2, hd = 16;
            size_t n = (size_t)Bq * T * H * hd;
            snprintf(what, sizeof what, "B %d T %d H %d hd %d", Bq, T, H, hd);
            float *q = randn(n, 95, 1, 0), *k = randn(n, 96, 1, 0), *v = randn(n, 97, 1, 0);
            float *dq = dput(q, n, 0), *dk = dput(k, n, 0), *dv = dput(v, n, 0);
            float *st = dnan(OP(attention_state_floats)(BE, Bq, T, H, hd) + 1);
            float *sc = dnan(OP(attention_scratch_floats)(BE, Bq, T, H, hd) + 1);
            float *o32 = dnan(n), *o2 = dnan(n);
            uint16_t *oh = dalloc(n * sizeof(uint16_t));
            int rc = OP(attention_forward)(BE, o32, st, sc, dq, dk, dv, Bq, T, H, hd);
            rc |= OP(attention_forward_bf16)(BE, o2, oh, st, sc, dq, dk, dv, Bq, T, H, hd);
            CHECK(rc == 0, "attention_forward_bf16 on %s: %s: %s", t->label, what, rc ? vit_error() : "");
            float *h1 = dget(o32, n), *h2 = dget(o2, n);
            CHECK(same(h1, h2, n * sizeof(float)), "attention_forward_bf16 on %s: %s: out as attention_forward's",
                  t->label, what);
            float *got = expect_rounded("attention_forward_bf16", what, oh, o2, n);
            double *ref = xmalloc(n * sizeof(double));
            attention_ref64(ref, q, k, v, Bq, T, H, hd);
            expect("attention_forward_bf16", what, err_norm(got, ref, n), TOL_ACT_BF16);
            free(got), free(h1), free(h2), free(ref), free(q), free(k), free(v);
            dfree();
        }

        // gemm_bf16: bf16 or fp32 operands, strided batches (stride 0 repeats A; a gap between
        // B's matrices as between the q, k, v kernels), bias per batch, alpha, accumulate.
        static const int gshapes[][12] = {
            // batch, M, N, K, transA, transB, a_bf16, b_bf16, bias, alpha x4, accumulate, A shared
            {1, 5, 7, 3, 0, 0, 1, 0, 1, 4, 0, 0},    {3, 37, 24, 24, 0, 0, 1, 0, 1, 4, 0, 1},
            {3, 24, 24, 37, 1, 0, 1, 0, 0, 4, 1, 1}, {2, 16, 9, 31, 0, 1, 0, 0, 1, 2, 0, 0},
            {1, 33, 17, 65, 1, 1, 1, 1, 0, 4, 1, 0}, {1, 64, 96, 48, 0, 1, 0, 1, 1, 4, 0, 0},
        };
        for (size_t sh = 0; sh < sizeof gshapes / sizeof gshapes[0]; sh++) {
            const int *s = gshapes[sh];
            int bt = s[0], M = s[1], N = s[2], K = s[3], ta = s[4], tb = s[5], ah = s[6], bh = s[7], ub = s[8];
            int acc = s[10], shared = s[11];
            float alpha = s[9] / 4.0f;
            long long sa = shared ? 0 : (long long)M * K, sb = (long long)K * N + N, sc = (long long)M * N, sbias = 3LL * N;
            size_t nA = shared ? (size_t)M * K : (size_t)bt * M * K, nB = (size_t)(bt - 1) * sb + (size_t)K * N;
            size_t nC = (size_t)bt * M * N, nbias = (size_t)(bt - 1) * sbias + N;
            snprintf(what, sizeof what, "%dx%dx%d batch %d tA %d tB %d A %s B %s bias %d alpha %g acc %d%s", M, N, K,
                     bt, ta, tb, ah ? "bf16" : "fp32", bh ? "bf16" : "fp32", ub, alpha, acc, shared ? " A shared" : "");
            float *A = randn(nA, 98, 1, 0), *Bm = randn(nB, 99, 1, 0), *C0 = randn(nC, 100, 1, 0);
            float *bias = randn(nbias, 101, 1, 0);
            uint16_t *Ah = xmalloc(nA * sizeof(uint16_t)), *Bh = xmalloc(nB * sizeof(uint16_t));
            for (size_t i = 0; i < nA; i++) {  // bf16 operands: the rounded values, as bits
                uint32_t u;
                memcpy(&u, &A[i], 4);
                Ah[i] = bf16_bits(u);
            }
            for (size_t i = 0; i < nB; i++) {
                uint32_t u;
                memcpy(&u, &Bm[i], 4);
                Bh[i] = bf16_bits(u);
            }
            double *ref = xmalloc(nC * sizeof(double));
            for (int b = 0; b < bt; b++)  // gemm_ref rounds both operands to bf16
                gemm_ref(ref + (size_t)b * M * N, 1, M, N, K, A + b * sa, ta, Bm + b * sb, tb, C0 + (size_t)b * M * N,
                         ub ? bias + b * sbias : NULL, alpha, acc, 1);
            const void *dA = ah ? dputb(Ah, nA * sizeof(uint16_t)) : (const void *)dput(A, nA, 1);
            const void *dB = bh ? dputb(Bh, nB * sizeof(uint16_t)) : (const void *)dput(Bm, nB, 0);
            float *dC = acc ? dput(C0, nC, 0) : dnan(nC), *dbias = ub ? dput(bias, nbias, 0) : NULL;
            GemmBf16 g = {bt, M, N, K, dA, dB, ah, bh, ta, tb, sa, sb, sc, sbias, dC, dbias, alpha, acc};
            int rc = OP(gemm_bf16)(BE, &g);
            CHECK(rc == 0, "gemm_bf16 on %s: %s: rc %d (%s)", t->label, what, rc, rc ? vit_error() : "");
            float *out = dget(dC, nC);
            expect("gemm_bf16", what, err_norm(out, ref, nC), TOL_GEMM);
            free(out), free(A), free(Bm), free(C0), free(bias), free(Ah), free(Bh), free(ref);
            dfree();
        }
    }
}

// ============================================================================================
// optimizer_update, optimizer_update_segments
// ============================================================================================
static const char *const kind_names[] = {"sgd", "adam", "adamw", "rmsprop"};
static int uses_m(int kind) { return kind != OPT_RMSPROP; }
static int uses_v(int kind) { return kind != OPT_SGD; }

static OptimStep make_step(int kind, int t, float wd, float gs) {
    OptimStep s = {(OptimizerKind)kind, 1e-2f * t, 0.9f, 0.9f, 0.999f, 0.9f, kind == OPT_ADAMW ? 1e-8f : 1e-2f, wd, t,
                   gs};
    return s;
}

// One update of element i in fp64, as README.md's formulas (decoupled decay first).
static void optim_ref(double *p, double g, double *m, double *v, const OptimStep *s, double wd) {
    double lr = s->lr, gi = g * s->grad_scale, w = *p * (1 - lr * wd), b1 = s->beta1, b2 = s->beta2;
    switch (s->kind) {
    case OPT_SGD: *m = s->momentum * *m - lr * gi, *p = w + *m; break;
    case OPT_ADAM:
        *m = b1 * *m + (1 - b1) * gi, *v = b2 * *v + (1 - b2) * gi * gi;
        *p = w - lr * sqrt(1 - pow(b2, s->t)) / (1 - pow(b1, s->t)) * *m / (sqrt(*v) + s->epsilon);
        break;
    case OPT_ADAMW:
        *m = b1 * *m + (1 - b1) * gi, *v = b2 * *v + (1 - b2) * gi * gi;
        *p = w - lr * (*m / (1 - pow(b1, s->t))) / (sqrt(*v / (1 - pow(b2, s->t))) + s->epsilon);
        break;
    case OPT_RMSPROP:
        *v = s->rho * *v + (1 - s->rho) * gi * gi, *p = w - lr * gi / (sqrt(*v) + s->epsilon);
        break;
    }
}

static void case_optimizer(void) {
    size_t sizes[] = {1, 17, 257, 50001};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int kind = OPT_SGD; kind <= OPT_RMSPROP; kind++) {
            size_t n = sizes[si];
            int um = uses_m(kind), uv = uses_v(kind);
            float *p = randn(n, 140, 1, 0), *m = randn(n, 141, 0.1, 0), *v = randn(n, 142, 0.1, 0), *g[3];
            for (size_t i = 0; i < n; i++) v[i] *= v[i];  // second moments are non-negative
            for (int t = 0; t < 3; t++) g[t] = randn(n, 143 + t, 0.5, 0);
            double *rp = to64(p, n), *rm = to64(m, n), *rv = to64(v, n);
            for (int t = 1; t <= 3; t++) {
                OptimStep s = make_step(kind, t, t == 2 ? 0.05f : 0.0f, t == 3 ? 0.3f : 1.0f);
                for (size_t i = 0; i < n; i++) optim_ref(&rp[i], g[t - 1][i], &rm[i], &rv[i], &s, s.weight_decay);
            }
            char what[64];
            snprintf(what, sizeof what, "%s n %zu, 3 steps", kind_names[kind], n);
            float *base[3] = {NULL, NULL, NULL};
            for (Target *tg = targets; tg < targets + ntargets; tg++) {
                if (!runs(tg, K_OP)) continue;
                enter(tg);
                float *dp = dput(p, n, 0), *dm = dput(m, n, 1), *dv = dput(v, n, 0);
                for (int t = 1; t <= 3; t++) {
                    OptimStep s = make_step(kind, t, t == 2 ? 0.05f : 0.0f, t == 3 ? 0.3f : 1.0f);
                    float *dg = dput(g[t - 1], n, 0);
                    OP(optimizer_update)(BE, dp, dg, um ? dm : NULL, uv ? dv : NULL, n, &s);  // unused slots NULL
                }
                float *hp = dget(dp, n), *hm = dget(dm, n), *hv = dget(dv, n);
                expect("optimizer_update", what, err_elem(hp, rp, n), TOL_OPTIM);
                if (um) expect("optimizer_update", what, err_norm(hm, rm, n), TOL_OPTIM);
                if (uv) expect("optimizer_update", what, err_norm(hv, rv, n), TOL_OPTIM);
                CHECK((um || same(hm, m, n * 4)) && (uv || same(hv, v, n * 4)), "optimizer_update on %s: %s: an "
                      "unused slot changed", tg->label, what);
                versus_cpu("optimizer_update", what, &base[0], hp, n, TOL_OPTIM);
                versus_cpu("optimizer_update", what, &base[1], hm, n, TOL_OPTIM);
                versus_cpu("optimizer_update", what, &base[2], hv, n, TOL_OPTIM);
                free(hp), free(hm), free(hv);
                dfree();
            }
            free(p), free(m), free(v), free(g[0]), free(g[1]), free(g[2]), free(rp), free(rm), free(rv);
            free(base[0]), free(base[1]), free(base[2]);
        }
}

// The multi-tensor update: against one optimizer_update per segment on the same target bit
// for bit, against fp64, and on devices against the CPU bit for bit (both round every
// operation to nearest). Odd sizes around 8192-float chunks, an empty segment, slots in
// another order than the parameters, floats between segments that must stay as they were;
// step 2 passes other segments than steps 1 and 3 (a device caching its table rebuilds it).
static void case_optimizer_segments(void) {
    enum { NS = 8 };
    const size_t sizes[NS] = {1, 8191, 8192, 8193, 0, 3, 100003, 17};
    const int decays[NS] = {1, 0, 1, 0, 1, 1, 0, 1};
    const float scales[NS] = {1.0f, 0.75f, 0.31640625f, 1.0f, 0.5f, 0.1f, 0.5625f, 1.0f};  // layer-wise lr scales
    OptimSegment segs[NS];
    size_t np = 0, ns = 7;
    for (int i = 0; i < NS; i++) {
        np += 4;  // a gap before each segment
        segs[i] = (OptimSegment){np, 0, sizes[i], decays[i], scales[i]};
        np += sizes[i];
    }
    np += 4;
    for (int i = NS - 1; i >= 0; i--) {  // slots in reverse order, 2 floats apart
        segs[i].slot = ns;
        ns += sizes[i] + 2;
    }
    OptimSegment other[3] = {segs[6], segs[0], segs[3]};
    for (int kind = OPT_SGD; kind <= OPT_RMSPROP; kind++) {
        int um = uses_m(kind), uv = uses_v(kind);
        float *p = randn(np, 150, 1, 0), *m = randn(ns, 151, 0.1, 0), *v = randn(ns, 152, 0.1, 0), *g[3];
        for (size_t i = 0; i < ns; i++) v[i] *= v[i];
        for (int t = 0; t < 3; t++) g[t] = randn(np, 153 + t, 0.5, 0);
        double *rp = to64(p, np), *rm = to64(m, ns), *rv = to64(v, ns);
        for (int t = 1; t <= 3; t++) {
            OptimStep s = make_step(kind, t, 0.05f, 0.5f + 0.2f * t);
            const OptimSegment *sg = t == 2 ? other : segs;
            for (int i = 0; i < (t == 2 ? 3 : NS); i++) {
                OptimStep si = s;
                si.lr = s.lr * sg[i].lr_scale;  // the segment's rate, and with it its weight decay
                for (size_t e = 0; e < sg[i].n; e++)
                    optim_ref(&rp[sg[i].param + e], g[t - 1][sg[i].param + e], &rm[sg[i].slot + e], &rv[sg[i].slot + e],
                              &si, sg[i].decay ? s.weight_decay : 0.0);
            }
        }
        float *base[3] = {NULL, NULL, NULL};
        for (Target *tg = targets; tg < targets + ntargets; tg++) {
            if (!runs(tg, K_OP)) continue;
            enter(tg);
            float *r[2][3];
            for (int run = 0; run < 2; run++) {  // the segments op, then one update per segment
                float *dp = dput(p, np, 1), *dm = dput(m, ns, 0), *dv = dput(v, ns, 1);
                for (int t = 1; t <= 3; t++) {
                    OptimStep s = make_step(kind, t, 0.05f, 0.5f + 0.2f * t);
                    const OptimSegment *sg = t == 2 ? other : segs;
                    int nsg = t == 2 ? 3 : NS;
                    float *dg = dput(g[t - 1], np, 1);
                    if (run == 0) {
                        OP(optimizer_update_segments)(BE, dp, dg, um ? dm : NULL, uv ? dv : NULL, sg, nsg, &s);
                    } else {
                        for (int i = 0; i < nsg; i++) {
                            OptimStep si = s;
                            if (!sg[i].decay) si.weight_decay = 0.0f;
                            si.lr = s.lr * sg[i].lr_scale;
                            OP(optimizer_update)(BE, dp + sg[i].param, dg + sg[i].param, um ? dm + sg[i].slot : NULL,
                                                 uv ? dv + sg[i].slot : NULL, sg[i].n, &si);
                        }
                    }
                }
                r[run][0] = dget(dp, np), r[run][1] = dget(dm, ns), r[run][2] = dget(dv, ns);
                dfree();
            }
            const char *names[3] = {"params", "m", "v"};
            size_t lens[3] = {np, ns, ns};
            for (int j = 0; j < 3; j++) {
                CHECK(same(r[0][j], r[1][j], lens[j] * 4), "optimizer_update_segments on %s: %s %s: not bit-identical "
                      "to one optimizer_update per segment", tg->label, kind_names[kind], names[j]);
                if (is_base(tg)) {
                    free(base[j]);
                    base[j] = dupf(r[0][j], lens[j]);
                } else if (tg->device && base[j]) {
                    CHECK(same(r[0][j], base[j], lens[j] * 4), "optimizer_update_segments on %s: %s %s: not "
                          "bit-identical to the CPU backend (rel diff %.3g)", tg->label, kind_names[kind], names[j],
                          err_vs(r[0][j], base[j], lens[j]));
                }
            }
            char what[32];
            snprintf(what, sizeof what, "%s", kind_names[kind]);
            expect("optimizer_update_segments", what, err_elem(r[0][0], rp, np), TOL_OPTIM);
            if (um) expect("optimizer_update_segments", what, err_norm(r[0][1], rm, ns), TOL_OPTIM);
            if (uv) expect("optimizer_update_segments", what, err_norm(r[0][2], rv, ns), TOL_OPTIM);
            // Between segments (and in slots the kind does not use) nothing moved.
            int untouched = 1;
            size_t at = 0;
            for (int i = 0; i < NS; i++) {
                for (; at < segs[i].param; at++) untouched &= same(&r[0][0][at], &p[at], 4);
                at += segs[i].n;
            }
            for (; at < np; at++) untouched &= same(&r[0][0][at], &p[at], 4);
            if (!um) untouched &= same(r[0][1], m, ns * 4);
            if (!uv) untouched &= same(r[0][2], v, ns * 4);
            CHECK(untouched, "optimizer_update_segments on %s: %s: floats outside the segments changed", tg->label,
                  kind_names[kind]);
            for (int run = 0; run < 2; run++)
                for (int j = 0; j < 3; j++) free(r[run][j]);
        }
        free(p), free(m), free(v), free(g[0]), free(g[1]), free(g[2]), free(rp), free(rm), free(rv);
        free(base[0]), free(base[1]), free(base[2]);
    }
}

// The device-side step scalars: scalars_write round-trips exactly; grad_norm_clip gives the
// norm of sum_squares on the same target bit for bit, the fp32 clip scale above the clip norm
// (1 below it) and a skip for a non-finite norm; optimizer_update_scalars over four updates
// (clipped, unclipped, a NaN gradient, then clipped again) equals the host-scalar
// optimizer_update_segments with the same figures bit for bit, leaves every bit of params and
// slots alone on the skipped update and on one the host marks skipped, and devices match the
// CPU backend bit for bit.
static void case_step_scalars(void) {
    enum { NS = 5, STEPS = 5 };
    const size_t sizes[NS] = {1, 8193, 0, 100003, 17};
    const int decays[NS] = {1, 0, 1, 1, 0};
    const float scales[NS] = {1.0f, 0.75f, 0.5f, 0.31640625f, 1.0f};
    const float clip = 1.0f, gscale[STEPS] = {0.02f, 0.001f, 0.02f, 0.03f, 0.02f};  // norms ~6, ~0.3, NaN, ~9, ~6
    OptimSegment segs[NS];
    size_t np = 0, ns = 3;
    for (int i = 0; i < NS; i++) {
        np += 2;
        segs[i] = (OptimSegment){np, ns, sizes[i], decays[i], scales[i]};
        np += sizes[i], ns += sizes[i] + 1;
    }
    double probe[STEP_SCALARS];
    for (int i = 0; i < STEP_SCALARS; i++) probe[i] = i == 2 ? NAN : -1.5e300 + i * 0.1;
    for (int kind = OPT_SGD; kind <= OPT_RMSPROP; kind++) {
        int um = uses_m(kind), uv = uses_v(kind);
        float *p = randn(np, 160, 1, 0), *m = randn(ns, 161, 0.1, 0), *v = randn(ns, 162, 0.1, 0), *g[STEPS];
        for (size_t i = 0; i < ns; i++) v[i] *= v[i];
        for (int t = 0; t < STEPS; t++) g[t] = randn(np, 163 + t, gscale[t], 0);
        g[2][np / 2] = NAN;
        float *base[3] = {NULL, NULL, NULL};
        for (Target *tg = targets; tg < targets + ntargets; tg++) {
            if (!runs(tg, K_OP)) continue;
            enter(tg);
            double h[STEP_SCALARS];
            float *r[2][3];
            for (int run = 0; run < 2; run++) {  // device scalars, then the host-scalar op
                double *sc = dalloc(STEP_SCALARS * sizeof(double));
                if (run == 0) {
                    OP(scalars_write)(BE, sc, probe, STEP_SCALARS);
                    OP(download)(BE, h, sc, sizeof h);
                    CHECK(same(h, probe, sizeof h), "scalars_write on %s: the doubles did not round-trip", tg->label);
                }
                float *dp = dput(p, np, 1), *dm = dput(m, ns, 0), *dv = dput(v, ns, 1);
                for (int t = 1; t <= STEPS; t++) {
                    OptimStep s = make_step(kind, t, 0.05f, 1.0f);
                    float *dg = dput(g[t - 1], np, 1);
                    const int host_skip = t == 4;  // the host's own skip (a bad loss), finite norm
                    if (run == 0) {
                        const double known[4] = {host_skip, s.lr, 1.0 - pow(s.beta1, t),
                                                 sqrt(1.0 - pow(s.beta2, t))};
                        OP(scalars_write)(BE, sc + STEP_SKIP, known, 4);
                        OP(grad_norm_clip)(BE, sc, dg, np, clip);
                        OptimStep junk = s;  // the op must take lr, scale and t from sc
                        junk.lr = 1e3f, junk.grad_scale = 7.0f, junk.t = 1000;
                        OP(optimizer_update_scalars)(BE, dp, dg, um ? dm : NULL, uv ? dv : NULL, segs, NS, &junk, sc);
                        OP(download)(BE, h, sc, sizeof h);
                        double norm = sqrt(OP(sum_squares)(BE, dg, np));
                        double scale = clip > 0 && norm > clip ? (double)(float)(clip / norm) : 1.0;
                        int skip = host_skip || !isfinite(norm);
                        CHECK((same(&h[STEP_NORM], &norm, 8) || (norm != norm && h[STEP_NORM] != h[STEP_NORM])) &&
                                  (norm != norm || h[STEP_SCALE] == scale) && (h[STEP_SKIP] != 0) == skip,
                              "grad_norm_clip on %s: update %d: norm %.17g scale %.9g skip %g, expected %.17g %.9g %d",
                              tg->label, t, h[STEP_NORM], h[STEP_SCALE], h[STEP_SKIP], norm, scale, skip);
                    } else {
                        double norm = sqrt(OP(sum_squares)(BE, dg, np));
                        if (host_skip || !isfinite(norm)) continue;
                        if (norm > clip) s.grad_scale = (float)(clip / norm);
                        OP(optimizer_update_segments)(BE, dp, dg, um ? dm : NULL, uv ? dv : NULL, segs, NS, &s);
                    }
                }
                r[run][0] = dget(dp, np), r[run][1] = dget(dm, ns), r[run][2] = dget(dv, ns);
                dfree();
            }
            const char *names[3] = {"params", "m", "v"};
            size_t lens[3] = {np, ns, ns};
            for (int j = 0; j < 3; j++) {
                CHECK(same(r[0][j], r[1][j], lens[j] * 4), "optimizer_update_scalars on %s: %s %s: not bit-identical "
                      "to optimizer_update_segments with the host's scalars (skips included)", tg->label,
                      kind_names[kind], names[j]);
                if (is_base(tg)) {
                    free(base[j]);
                    base[j] = dupf(r[0][j], lens[j]);
                } else if (tg->device && base[j]) {
                    CHECK(same(r[0][j], base[j], lens[j] * 4), "optimizer_update_scalars on %s: %s %s: not "
                          "bit-identical to the CPU backend (rel diff %.3g)", tg->label, kind_names[kind], names[j],
                          err_vs(r[0][j], base[j], lens[j]));
                }
            }
            for (int run = 0; run < 2; run++)
                for (int j = 0; j < 3; j++) free(r[run][j]);
        }
        for (int t = 0; t < STEPS; t++) free(g[t]);
        free(p), free(m), free(v), free(base[0]), free(base[1]), free(base[2]);
    }
}

// metrics_accumulate against count_hits' rule written out here: exact sums (losses in order
// from 0 in double), ties ranked by index (a constant row: only label 0 is a hit), K below 5,
// "+=" onto what the buffer held, and a batch with an infinite loss counted as non-finite.
static void case_metrics(void) {
    const int shapes[][2] = {{37, 11}, {5, 3}, {1, 1000}};
    for (int si = 0; si < 3; si++) {
        int B = shapes[si][0], K = shapes[si][1];
        float *z = randn((size_t)B * K, 170 + si, 1, 0), *loss = randn(B, 173 + si, 1, 2);
        int *y = xmalloc((size_t)B * sizeof(int));
        for (int b = 0; b < B; b++) y[b] = (b * 7 + 3) % K;
        for (int k = 0; k < K; k++) z[k] = 0.25f;                          // row 0 constant: a tie everywhere
        if (B > 2) z[(size_t)2 * K + (y[2] + 1) % K] = z[(size_t)2 * K + y[2]];  // a tie with the label
        double ref[2][METRICS], start[METRICS] = {1.5, 2, 3, 0};
        for (int call = 0; call < 2; call++) {
            double *e = ref[call];
            memcpy(e, call ? ref[0] : start, sizeof start);
            double sum = 0;
            for (int b = 0; b < B; b++) {
                sum += call && b == B / 2 ? INFINITY : loss[b];
                int above = 0;
                for (int k = 0; k < K; k++) {
                    float a = z[(size_t)b * K + k], mine = z[(size_t)b * K + y[b]];
                    above += a > mine || (a == mine && k < y[b]);
                }
                e[METRIC_TOP1] += above == 0, e[METRIC_TOP5] += above < 5;
            }
            e[METRIC_LOSS] += sum, e[METRIC_NONFINITE] += !isfinite(sum);
        }
        for (Target *tg = targets; tg < targets + ntargets; tg++) {
            if (!runs(tg, K_OP)) continue;
            enter(tg);
            double *acc = dalloc(METRICS * sizeof(double)), h[METRICS];
            OP(upload)(BE, acc, start, sizeof start);
            float *dz = dput(z, (size_t)B * K, 1), *dl = dput(loss, B, 0);
            int *dy = dputb(y, (size_t)B * sizeof(int));
            for (int call = 0; call < 2; call++) {
                if (call) {
                    float inf = INFINITY;
                    OP(upload)(BE, dl + B / 2, &inf, sizeof inf);
                }
                OP(metrics_accumulate)(BE, acc, dl, dz, dy, B, K);
                OP(download)(BE, h, acc, sizeof h);
                CHECK(same(h, ref[call], sizeof h), "metrics_accumulate on %s: B %d K %d call %d: loss %.17g top1 %g "
                      "top5 %g nonfinite %g, expected %.17g %g %g %g", tg->label, B, K, call, h[0], h[1], h[2], h[3],
                      ref[call][0], ref[call][1], ref[call][2], ref[call][3]);
            }
            dfree();
        }
        free(z), free(loss), free(y);
    }
}

// The weights' moving average: lerp in PyTorch's two-sided form against fp64 (elementwise),
// weight 1 an exact copy, weight 0 no change, devices bit for bit against the CPU.
static void case_ema(void) {
    const size_t sizes[] = {1, 17, 100003};
    const float weights[] = {0.0f, 2e-4f, 0.01f, 0.3f, 0.5f, 0.7f, 1.0f};
    enum { NW = sizeof weights / sizeof weights[0] };
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *e = randn(n, 160, 1, 0), *p = randn(n, 161, 1, 0.2);
        float *base[NW] = {NULL};
        for (Target *tg = targets; tg < targets + ntargets; tg++) {
            if (!runs(tg, K_OP)) continue;
            enter(tg);
            for (int k = 0; k < NW; k++) {
                float w = weights[k];
                double *ref = xmalloc(n * sizeof(double));
                for (size_t i = 0; i < n; i++) ref[i] = e[i] + (double)w * ((double)p[i] - e[i]);
                float *de = dput(e, n, 1), *dp = dput(p, n, 0);
                OP(ema_update)(BE, de, dp, n, w);
                float *he = dget(de, n);
                char what[48];
                snprintf(what, sizeof what, "n %zu, weight %g", n, w);
                expect("ema_update", what, err_elem(he, ref, n), TOL_EMA);
                if (w == 1.0f) CHECK(same(he, p, n * 4), "ema_update on %s: %s: not an exact copy", tg->label, what);
                if (w == 0.0f) CHECK(same(he, e, n * 4), "ema_update on %s: %s: changed the average", tg->label, what);
                if (is_base(tg)) {
                    free(base[k]);
                    base[k] = dupf(he, n);
                } else if (tg->device && base[k]) {
                    CHECK(same(he, base[k], n * 4), "ema_update on %s: %s: not bit-identical to the CPU backend",
                          tg->label, what);
                }
                free(he), free(ref);
                dfree();
            }
        }
        for (int k = 0; k < NW; k++) free(base[k]);
        free(e), free(p);
    }
}

// ============================================================================================
// The op list and the coverage check
// ============================================================================================
typedef struct {
    const char *name;
    void (*run)(void);
} Case;

static const Case cases[] = {
    {"memory", case_memory},
    {"gemm", case_gemm},
    {"gemm_bias_gelu", case_gemm_bias_gelu},
    {"bias_backward", case_bias_backward},
    {"layernorm", case_layernorm},
    {"gelu", case_gelu},
    {"tanh", case_tanh},
    {"dropout", case_dropout},
    {"residual_layernorm", case_residual_layernorm},
    {"gelu_dropout", case_gelu_dropout},
    {"add_scale", case_add_scale},
    {"sum_squares", case_sum_squares},
    {"patchify", case_patchify},
    {"tokens", case_tokens},
    {"cls", case_cls},
    {"attention", case_attention},
    {"xent", case_xent},
    {"drop_path", case_drop_path},
    {"mix_images", case_mix_images},
    {"xent_mix", case_xent_mix},
    {"bf16", case_bf16},
    {"bf16_acts", case_bf16_acts},
    {"optimizer", case_optimizer},
    {"optimizer_segments", case_optimizer_segments},
    {"ema", case_ema},
    {"step_scalars", case_step_scalars},
    {"metrics", case_metrics},
};
enum { NCASES = sizeof cases / sizeof cases[0] };

typedef struct {
    const char *name;
    size_t offset;
    int optional;      // may be NULL (backend.h says so)
    const char *kase;  // the case that tests it
} Member;

#define MEMBER(f, optional, kase) {#f, offsetof(Backend, f), optional, kase}
// Every function-pointer member of struct Backend, in declaration order.
static const Member members[] = {
    MEMBER(alloc, 0, "memory"),
    MEMBER(release, 0, "memory"),
    MEMBER(upload, 0, "memory"),
    MEMBER(download, 0, "memory"),
    MEMBER(zero, 0, "memory"),
    MEMBER(synchronize, 0, "memory"),
    MEMBER(alloc_host, 0, "memory"),
    MEMBER(release_host, 0, "memory"),
    MEMBER(upload_async, 0, "memory"),
    MEMBER(wait_uploads, 0, "memory"),
    MEMBER(gemm, 0, "gemm"),
    MEMBER(gemm_bias_gelu, 1, "gemm_bias_gelu"),
    MEMBER(bias_backward, 0, "bias_backward"),
    MEMBER(layernorm_forward, 0, "layernorm"),
    MEMBER(layernorm_backward, 0, "layernorm"),
    MEMBER(gelu_forward, 0, "gelu"),
    MEMBER(gelu_backward, 0, "gelu"),
    MEMBER(tanh_forward, 0, "tanh"),
    MEMBER(tanh_backward, 0, "tanh"),
    MEMBER(dropout_forward, 0, "dropout"),
    MEMBER(dropout_backward, 0, "dropout"),
    MEMBER(residual_layernorm_forward, 0, "residual_layernorm"),
    MEMBER(gelu_dropout_forward, 0, "gelu_dropout"),
    MEMBER(gelu_dropout_backward, 0, "gelu_dropout"),
    MEMBER(add, 0, "add_scale"),
    MEMBER(scale, 0, "add_scale"),
    MEMBER(sum_squares, 0, "sum_squares"),
    MEMBER(patchify, 0, "patchify"),
    MEMBER(tokens_forward, 0, "tokens"),
    MEMBER(tokens_backward, 0, "tokens"),
    MEMBER(gather_cls, 0, "cls"),
    MEMBER(scatter_cls, 0, "cls"),
    MEMBER(attention_state_floats, 0, "attention"),
    MEMBER(attention_scratch_floats, 0, "attention"),
    MEMBER(attention_forward, 0, "attention"),
    MEMBER(attention_backward, 0, "attention"),
    MEMBER(xent_forward, 0, "xent"),
    MEMBER(xent_backward, 0, "xent"),
    MEMBER(drop_path, 0, "drop_path"),
    MEMBER(mix_images, 0, "mix_images"),
    MEMBER(xent_mix_forward, 0, "xent_mix"),
    MEMBER(xent_mix_backward, 0, "xent_mix"),
    MEMBER(to_bf16, 1, "bf16"),
    MEMBER(from_bf16, 1, "bf16"),
    MEMBER(gemm_bf16, 1, "bf16_acts"),
    MEMBER(layernorm_forward_bf16, 1, "bf16_acts"),
    MEMBER(residual_layernorm_forward_bf16, 1, "bf16_acts"),
    MEMBER(gelu_dropout_forward_bf16, 1, "bf16_acts"),
    MEMBER(attention_forward_bf16, 1, "bf16_acts"),
    MEMBER(optimizer_update, 0, "optimizer"),
    MEMBER(optimizer_update_segments, 0, "optimizer_segments"),
    MEMBER(ema_update, 0, "ema"),
    MEMBER(scalars_write, 0, "step_scalars"),
    MEMBER(grad_norm_clip, 0, "step_scalars"),
    MEMBER(optimizer_update_scalars, 0, "step_scalars"),
    MEMBER(metrics_accumulate, 0, "metrics"),
    MEMBER(destroy, 0, "memory"),
};
enum { NMEMBERS = sizeof members / sizeof members[0] };

// The list against the struct: the ops start right after `impl`, and every pointer-sized slot
// from there to the end of struct Backend is named exactly once, and has a case.
static void check_member_list(void) {
    size_t first = offsetof(Backend, impl) + sizeof(void *), end = sizeof(Backend);
    CHECK(offsetof(Backend, alloc) == first, "struct Backend: %zu bytes between impl and alloc: a member there has "
          "no entry in this test's op list (add it with a case)", offsetof(Backend, alloc) - first);
    CHECK((end - first) % SLOT == 0, "struct Backend: %zu bytes after impl is not a whole number of function "
          "pointers: a member that is not one has no entry in this test's op list", end - first);
    CHECK(end / SLOT <= MAX_SLOTS, "struct Backend has grown past this test's %d slots", (int)MAX_SLOTS);
    for (size_t off = first; off + SLOT <= end; off += SLOT) {
        int named = 0;
        for (int i = 0; i < NMEMBERS; i++) named += members[i].offset == off;
        CHECK(named == 1, "struct Backend: the member at offset %zu (op slot %zu) is named %d times in this test's op "
              "list: a new op needs an entry and a case here", off, (off - first) / SLOT, named);
    }
    for (int i = 0; i < NMEMBERS; i++) {
        int found = 0;
        for (int c = 0; c < NCASES; c++) found += !strcmp(cases[c].name, members[i].kase);
        CHECK(found == 1, "op %s: its case '%s' is not in the case table", members[i].name, members[i].kase);
    }
}

// After the cases: every op was called on every primary target, or is optional and absent.
static void check_coverage(void) {
    for (Target *t = targets; t < targets + ntargets; t++) {
        if (!t->primary) continue;
        for (int i = 0; i < NMEMBERS; i++) {
            const Member *mb = &members[i];
            void (*fn)(void);
            memcpy(&fn, (const char *)t->be + mb->offset, sizeof fn);
            if (!fn) {
                CHECK(mb->optional, "%s: op %s is NULL but not optional", t->label, mb->name);
                CHECK(!t->cpu, "%s: the CPU backend has every optional op (backend.h), but not %s", t->label, mb->name);
                if (t == targets) printf("  %s: %s absent (optional)\n", t->label, mb->name);
                continue;
            }
            CHECK(t->used[mb->offset / SLOT], "%s: op %s (offset %zu) was never called by its case '%s'", t->label,
                  mb->name, mb->offset, mb->kase);
        }
    }
}

// ============================================================================================
// main
// ============================================================================================
static Backend *create_cpu(void) { return backend_cpu_create(0); }
#ifdef VIT_CUDA
static Backend *create_cuda(void) { return backend_cuda_create(0, CUDA_FP32); }
#endif

static Target *add_target(const char *label, Backend *be, int isa, int cpu, int device, Prec prec, unsigned kinds,
                          Backend *(*create)(void)) {
    if (ntargets == MAX_TARGETS) abort();
    Target *t = &targets[ntargets++];
    memset(t, 0, sizeof *t);
    snprintf(t->label, sizeof t->label, "%s", label);
    t->be = be, t->isa = isa, t->cpu = cpu, t->device = device, t->prec = prec, t->kinds = kinds;
    t->primary = prec == P_FP32 && kinds == (K_OP | K_GEMM | K_ATTN);
    t->create = create;
    return t;
}

int main(void) {
    double t0 = omp_get_wtime();
    const char *only = getenv("VIT_TEST_OPS");
    check_member_list();
    Backend *cpu = backend_cpu_create(0), *cpu2 = NULL;
    if (!cpu) {
        CHECK(0, "creating the CPU backend: %s", vit_error());
        return check_report("backend_ops");
    }
    backend_cpu_set_bf16_acts(cpu, 1);  // opt-in: the CPU backend then has every optional op
    default_isa = (int)cpu_isa_force(CPU_ISA_AVX512 + 1);
    int isas[3], nisas = 0;
    for (int isa = CPU_ISA_GENERIC; isa <= CPU_ISA_AVX512; isa++)
        if ((int)cpu_isa_force(isa) == isa) isas[nisas++] = isa;
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    char label[48];
    for (int i = 0; i < nisas; i++) {
        snprintf(label, sizeof label, "cpu/%s", cpu_isa_name(isas[i]));
        add_target(label, cpu, isas[i], 1, 0, P_FP32, K_OP | K_GEMM | K_ATTN, create_cpu);
    }
    for (int i = 0; i < nisas; i++) {
        snprintf(label, sizeof label, "cpu/%s bf16", cpu_isa_name(isas[i]));
        add_target(label, cpu, isas[i], 1, 0, P_BF16, K_GEMM | K_ATTN, create_cpu);
    }
    const char *on_cpu = getenv("VIT_TEST_CUDA_ON_CPU");
    if (on_cpu && !strcmp(on_cpu, "1")) {
        cpu2 = backend_cpu_create(0);
        if (cpu2) backend_cpu_set_bf16_acts(cpu2, 1);
        if (cpu2) {
            add_target("cpu-as-device", cpu2, -1, 1, 1, P_FP32, K_OP | K_GEMM | K_ATTN, create_cpu);
            add_target("cpu-as-device bf16", cpu2, -1, 1, 1, P_BF16, K_GEMM | K_ATTN, create_cpu);
            have_device = 1;
        }
    }
#ifdef VIT_CUDA
    Backend *cu[4] = {NULL, NULL, NULL, NULL}, *cu_acts = NULL;
    if (backend_cuda_device_count() > 0) {
        cu[0] = backend_cuda_create(0, CUDA_FP32);
        cu[1] = backend_cuda_create(0, CUDA_TF32);
        cu[2] = backend_cuda_create(0, CUDA_BF16);
        setenv("VIT_CUDA_ATTENTION", "mma", 1);  // read at creation
        cu[3] = backend_cuda_create(0, CUDA_BF16);
        unsetenv("VIT_CUDA_ATTENTION");
        CHECK(cu[0] && cu[1] && cu[2] && cu[3], "creating the CUDA backends: %s", vit_error());
        if (cu[0] && cu[1] && cu[2] && cu[3]) {
            add_target("cuda fp32", cu[0], -1, 0, 1, P_FP32, K_OP | K_GEMM | K_ATTN, create_cuda);
            add_target("cuda tf32", cu[1], -1, 0, 1, P_TF32, K_GEMM, NULL);
            add_target("cuda bf16", cu[2], -1, 0, 1, P_BF16, K_GEMM | K_ATTN, NULL);
            add_target("cuda bf16 mma", cu[3], -1, 0, 1, P_BF16, K_ATTN, NULL);
            have_device = 1;
        }
        setenv("VIT_CUDA_BF16_ACTS", "1", 1);  // read at creation
        cu_acts = backend_cuda_create(0, CUDA_BF16);
        unsetenv("VIT_CUDA_BF16_ACTS");
        CHECK(cu_acts && cu_acts->gemm_bf16, "creating the CUDA backend with bf16 activations: %s", vit_error());
        if (cu_acts) add_target("cuda bf16 acts", cu_acts, -1, 0, 1, P_BF16, K_ACTS, NULL);
    } else {
        printf("backend_ops: cuda skipped (%s)\n", vit_error());
    }
#else
    printf("backend_ops: cuda skipped (built without CUDA)\n");
#endif
    printf("backend_ops: targets:");
    for (int i = 0; i < ntargets; i++) printf("%s %s", i ? "," : "", targets[i].label);
    printf("\n");

    int ran = 0;
    for (int c = 0; c < NCASES; c++) {
        if (only && !strstr(cases[c].name, only)) continue;
        double tc = omp_get_wtime();
        int failed = check_failed, passed = check_passed;
        cases[c].run();
        ran++;
        printf("  %-20s %6d checks, %d failed, %.2f s\n", cases[c].name, check_passed + check_failed - passed - failed,
               check_failed - failed, omp_get_wtime() - tc);
    }
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    backend_cpu_set_bf16(cpu, 0);
    if (!only) check_coverage();
    printf("backend_ops: worst error against the fp64 references (tolerance):\n");
    for (int i = 0; i < nworst; i++)
        printf("  %-28s %s %9.3g (%.0g)\n", worst[i].op, prec_names[worst[i].prec], worst[i].err, worst[i].tol);
    printf("backend_ops: %d cases, %d ops, %d targets, %d runs (case x shape x target), %.1f s\n", ran, NMEMBERS,
           ntargets, runs_total, omp_get_wtime() - t0);
#ifdef VIT_CUDA
    for (int i = 0; i < 4; i++)
        if (cu[i]) cu[i]->destroy(cu[i]);
    if (cu_acts) cu_acts->destroy(cu_acts);
#endif
    if (cpu2) cpu2->destroy(cpu2);
    cpu->destroy(cpu);
    return check_report("backend_ops");
}
