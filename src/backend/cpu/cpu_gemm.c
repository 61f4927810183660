// Matrix products through oneDNN's matmul primitive (oneDNN 2.x or 3.x: the build takes the
// 3.x from the Python package index when `make deps` installed it, else Debian's 2.6; the two
// APIs differ only in how descriptors are made). A primitive is created once per distinct
// (shape, transposes, bias, alpha, accumulate, epilogue, operand type) and reused: creation
// costs far more than a small product. All primitives share one user-managed scratchpad that
// grows while primitives are created (the first step) and is then reused.
//
// bf16 mode: both operands rounded to bf16 (nearest even), products and sums in fp32. Where
// oneDNN has a native bf16 kernel for this CPU (AVX512-BF16, AMX) the rounded operands are
// stored as bf16 and go through it (twice the fp32 rate); elsewhere they stay fp32 and go
// through the fp32 kernels: the same numbers up to summation order, no speed-up.
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_version.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "cpu.h"
#include "cpu_math.h"
#include "util/status.h"

typedef struct {
    int batch, M, N, K, transA, transB, has_bias, accumulate;
    int gelu;  // epilogue: 0 none, 1 GELU (erf), 2 GELU (tanh approximation)
    int bf16;  // operands stored as bf16 (native bf16 kernel)
    float alpha;
    dnnl_primitive_t prim;
    dnnl_memory_t src, weights, bias, dst, scratch;
    size_t scratch_bytes;
} GemmEntry;

struct GemmCache {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    GemmEntry *entries;
    int count, capacity;
    void *scratch;
    size_t scratch_bytes;
    float *transposed;          // B transposed for products where that is faster (see cpu_gemm)
    size_t transposed_floats;
    void *rounded;              // bf16-rounded copies of A and B (bf16 mode): uint16 or float
    size_t rounded_bytes;
    int native_bf16;            // -1 not yet probed, 0 no native bf16 kernel, 1 native
    char library[96];           // "oneDNN 3.2.0 (brg:avx512_core)", for start-up lines
};

GemmCache *cpu_gemm_cache_create(void) {
    GemmCache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->native_bf16 = -1;
    if (dnnl_engine_create(&c->engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags) != dnnl_success) {
        free(c);
        return NULL;
    }
    return c;
}

void cpu_gemm_cache_destroy(GemmCache *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) {
        GemmEntry *e = &c->entries[i];
        dnnl_primitive_destroy(e->prim);
        dnnl_memory_destroy(e->src);
        dnnl_memory_destroy(e->weights);
        if (e->bias) dnnl_memory_destroy(e->bias);
        dnnl_memory_destroy(e->dst);
        dnnl_memory_destroy(e->scratch);
    }
    free(c->entries);
    free(c->scratch);
    free(c->transposed);
    free(c->rounded);
    dnnl_stream_destroy(c->stream);
    dnnl_engine_destroy(c->engine);
    free(c);
}

#if DNNL_VERSION_MAJOR >= 3
typedef dnnl_memory_desc_t MemDesc;  // a handle: made, used, destroyed
#define MD(md) (md)
static void md_free(MemDesc md) {
    if (md) dnnl_memory_desc_destroy(md);
}
#else
typedef dnnl_memory_desc_t MemDesc;  // a struct
#define MD(md) (&(md))
static void md_free(MemDesc md) { (void)md; }
#endif

static void md_strided(MemDesc *md, int nd, const dnnl_dims_t dims, dnnl_data_type_t dt, const dnnl_dims_t strides) {
#if DNNL_VERSION_MAJOR >= 3
    *md = NULL;
    dnnl_memory_desc_create_with_strides(md, nd, dims, dt, strides);
#else
    dnnl_memory_desc_init_by_strides(md, nd, dims, dt, strides);
#endif
}

// A logical rows x cols matrix per batch; `trans` means it is stored cols x rows.
static void matrix_desc(MemDesc *md, int batch, int rows, int cols, int trans, dnnl_data_type_t dt) {
    if (batch == 1) {
        dnnl_dims_t dims = {rows, cols};
        dnnl_dims_t strides = {trans ? 1 : cols, trans ? rows : 1};
        md_strided(md, 2, dims, dt, strides);
    } else {
        dnnl_dims_t dims = {batch, rows, cols};
        dnnl_dims_t strides = {(dnnl_dim_t)rows * cols, trans ? 1 : cols, trans ? rows : 1};
        md_strided(md, 3, dims, dt, strides);
    }
}

static const char *impl_name(dnnl_primitive_desc_t pd) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) != dnnl_success || !name) return "?";
    return name;
}

// Which of oneDNN's matmul kernels to take when several fit: the name prefix in
// VIT_MATMUL_IMPL ("gemm", "brg", or "default": oneDNN's first choice), else "gemm".
// oneDNN 3.2 ranks its brgemm kernels first, yet on Zen 4 its jit gemm kernels ran every ViT-B
// product shape as fast or faster: 200-226 against 126-131 GFLOP/s fp32 for the products
// with a wide plain B (fc1 forward, its weight gradient), 420-450 against 400-410 bf16 at
// batch 64 (bench/gemm_ceiling). A fixed rule, not a timing, so runs repeat bit for bit.
static const char *preferred_impl(void) {
    const char *env = getenv("VIT_MATMUL_IMPL");
    if (env && *env) return strcmp(env, "default") ? env : NULL;
    return "gemm";
}

// pd, or the next of its implementations whose name starts with the preferred prefix; the
// first choice again when none does (next_impl leaves pd on its last entry).
static dnnl_primitive_desc_t prefer_impl(GemmCache *c, dnnl_primitive_desc_t pd, MemDesc mds[4],
                                         const_dnnl_primitive_attr_t attr) {
#if DNNL_VERSION_MAJOR >= 3
    const char *want = preferred_impl();
    if (!want) return pd;
    size_t n = strlen(want);
    do
        if (!strncmp(impl_name(pd), want, n)) return pd;
    while (dnnl_primitive_desc_next_impl(pd) == dnnl_success);
    dnnl_primitive_desc_destroy(pd);
    pd = NULL;
    if (dnnl_matmul_primitive_desc_create(&pd, c->engine, mds[0], mds[1], mds[3], mds[2], attr) != dnnl_success)
        return NULL;
#else
    (void)c, (void)mds, (void)attr;
#endif
    return pd;
}

// The primitive descriptor for an entry, or NULL (message set) when oneDNN rejects it.
static dnnl_primitive_desc_t entry_desc(GemmCache *c, const GemmEntry *e, MemDesc mds[4]) {
    dnnl_data_type_t in = e->bf16 ? dnnl_bf16 : dnnl_f32;
    matrix_desc(&mds[0], e->batch, e->M, e->K, e->transA, in);
    matrix_desc(&mds[1], e->batch, e->K, e->N, e->transB, in);
    matrix_desc(&mds[2], e->batch, e->M, e->N, 0, dnnl_f32);
    if (e->has_bias) {  // one bias row, broadcast over rows (and batch)
        dnnl_dims_t dims = {1, 1, e->N};
        dnnl_dims_t strides = {e->N, e->N, 1};
        md_strided(&mds[3], e->batch == 1 ? 2 : 3, e->batch == 1 ? dims + 1 : dims, dnnl_f32,
                   e->batch == 1 ? strides + 1 : strides);
    }
    dnnl_primitive_attr_t attr;
    dnnl_primitive_attr_create(&attr);
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    dnnl_post_ops_t po;
    dnnl_post_ops_create(&po);
#if DNNL_VERSION_MAJOR >= 3
    // 3.x has no output scale: alpha is a linear post-op ahead of the sum (bias is never
    // combined with alpha != 1 here, see gemm_fp32).
    if (e->alpha != 1.0f) dnnl_post_ops_append_eltwise(po, dnnl_eltwise_linear, e->alpha, 0.0f);
    if (e->accumulate) dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef);
    if (e->gelu) dnnl_post_ops_append_eltwise(po, e->gelu == 1 ? dnnl_eltwise_gelu_erf : dnnl_eltwise_gelu_tanh, 0, 0);
#else
    if (e->alpha != 1.0f) dnnl_primitive_attr_set_output_scales(attr, 1, 0, &e->alpha);
    if (e->accumulate) dnnl_post_ops_append_sum(po, 1.0f);
    if (e->gelu) dnnl_post_ops_append_eltwise(po, 1.0f, e->gelu == 1 ? dnnl_eltwise_gelu_erf : dnnl_eltwise_gelu_tanh, 0, 0);
#endif
    dnnl_primitive_attr_set_post_ops(attr, po);
    dnnl_post_ops_destroy(po);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st;
#if DNNL_VERSION_MAJOR >= 3
    st = dnnl_matmul_primitive_desc_create(&pd, c->engine, mds[0], mds[1], e->has_bias ? mds[3] : NULL, mds[2], attr);
#else
    dnnl_matmul_desc_t desc;
    st = dnnl_matmul_desc_init(&desc, &mds[0], &mds[1], e->has_bias ? &mds[3] : NULL, &mds[2]);
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &desc, attr, c->engine, NULL);
#endif
    if (st == dnnl_success) pd = prefer_impl(c, pd, mds, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success || !pd) {
        vit_fail("oneDNN: matmul %dx%dx%d (batch %d, %s): no implementation (status %d)", e->M, e->N, e->K, e->batch,
                 e->bf16 ? "bf16" : "fp32", (int)st);
        return NULL;
    }
    return pd;
}

static int create_entry(GemmCache *c, GemmEntry *e) {
    MemDesc mds[4] = {0};
    dnnl_primitive_desc_t pd = entry_desc(c, e, mds);
    int rc = VIT_ERR;
    if (!pd) goto done;
    dnnl_status_t st = dnnl_primitive_create(&e->prim, pd);
    const_dnnl_memory_desc_t scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0;
    dnnl_memory_create(&e->scratch, scratch_md, c->engine, DNNL_MEMORY_NONE);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        vit_fail("oneDNN: matmul primitive creation failed (status %d)", (int)st);
        goto done;
    }
    dnnl_memory_create(&e->src, MD(mds[0]), c->engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&e->weights, MD(mds[1]), c->engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&e->dst, MD(mds[2]), c->engine, DNNL_MEMORY_NONE);
    e->bias = NULL;
    if (e->has_bias) dnnl_memory_create(&e->bias, MD(mds[3]), c->engine, DNNL_MEMORY_NONE);
    rc = VIT_OK;
done:
    for (int i = 0; i < 4; i++)
        if (i < 3 || e->has_bias) md_free(mds[i]);
    return rc;
}

// Whether oneDNN runs bf16 products natively here: a reference ("ref") implementation would
// be far slower than the fp32 kernels on rounded operands. Probed once, on a B/16-sized product.
static int probe_native_bf16(GemmCache *c) {
    if (c->native_bf16 >= 0) return c->native_bf16;
    const char *env = getenv("VIT_BF16_NATIVE");  // 0: the fp32 kernels on rounded operands (A/B runs, tests)
    if (env && !strcmp(env, "0")) return c->native_bf16 = 0;
    GemmEntry e = {.batch = 1, .M = 1024, .N = 768, .K = 768, .bf16 = 1, .alpha = 1.0f};
    MemDesc mds[4] = {0};
    dnnl_primitive_desc_t pd = entry_desc(c, &e, mds);
    c->native_bf16 = pd && !strstr(impl_name(pd), "ref");
    if (pd) dnnl_primitive_desc_destroy(pd);
    for (int i = 0; i < 3; i++) md_free(mds[i]);
    return c->native_bf16;
}

const char *cpu_gemm_library(GemmCache *c) {
    if (!c->library[0]) {
        const dnnl_version_t *v = dnnl_version();
        GemmEntry e = {.batch = 1, .M = 1024, .N = 768, .K = 768, .alpha = 1.0f};
        MemDesc mds[4] = {0};
        dnnl_primitive_desc_t pd = entry_desc(c, &e, mds);
        snprintf(c->library, sizeof c->library, "oneDNN %d.%d.%d (%s%s)", v->major, v->minor, v->patch,
                 pd ? impl_name(pd) : "?", probe_native_bf16(c) ? ", native bf16" : "");
        if (pd) dnnl_primitive_desc_destroy(pd);
        for (int i = 0; i < 3; i++) md_free(mds[i]);
        }
    return c->library;
}

// dst (K x N) = src^T for src stored N x K, in cache-sized tiles.
static void transpose(float *dst, const float *src, int K, int N) {
    enum { TILE = 32 };
#pragma omp parallel for collapse(2) schedule(static)
    for (int j0 = 0; j0 < N; j0 += TILE)
        for (int k0 = 0; k0 < K; k0 += TILE)
            for (int j = j0; j < j0 + TILE && j < N; j++)
                for (int k = k0; k < k0 + TILE && k < K; k++) dst[(size_t)k * N + j] = src[(size_t)j * K + k];
}

static void round_bf16(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = cpu_bf16_round(src[i]);
}

// The same rounding, kept as the top 16 bits (what native bf16 kernels read).
static void to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float r = cpu_bf16_round(src[i]);
        uint32_t u;
        memcpy(&u, &r, 4);
        dst[i] = (uint16_t)(u >> 16);
    }
}

// C = alpha * op(A) op(B) [+ bias] [+ C], then the GELU epilogue; A and B are fp32, or bf16
// bit patterns when `bf16` (native bf16 kernel).
static int gemm_run(Backend *be, int batch, int M, int N, int K, const void *A, int transA, const void *B, int transB,
                    float *C, const float *bias, float alpha, int accumulate, int gelu, int bf16) {
    GemmCache *c = ((CpuState *)be->impl)->gemm;
    if (bias && alpha != 1.0f) {
        // A scaled product plus an unscaled bias is not one primitive in both oneDNN APIs
        // (2.x scales the bias too); the contract is alpha * A @ B + bias.
        if (gelu) return vit_fail("cpu gemm: a GELU epilogue with alpha != 1 and a bias is not supported");
        if (gemm_run(be, batch, M, N, K, A, transA, B, transB, C, NULL, alpha, accumulate, 0, bf16)) return VIT_ERR;
        for (size_t r = 0; r < (size_t)batch * M; r++)
            for (int j = 0; j < N; j++) C[r * N + j] += bias[j];
        return VIT_OK;
    }
    // oneDNN 2.6's kernels for a transposed B are much slower than for a plain one when the
    // output is wider than the contraction (measured 100 vs 160 GFLOP/s for the 1576 x 3072 x
    // 768 input gradient of ViT-B's second MLP layer on AVX2); copying B^T first costs far
    // less. oneDNN 3's brgemm kernels run both layouts at the same rate.
    if (DNNL_VERSION_MAJOR < 3 && !bf16 && batch == 1 && transB && !transA && N > K &&
        (size_t)M * N * K >= ((size_t)1 << 24)) {
        size_t need = (size_t)K * N;
        if (need > c->transposed_floats) {
            free(c->transposed);
            c->transposed = NULL;
            if (posix_memalign((void **)&c->transposed, 64, need * sizeof(float)))
                return vit_fail("out of memory for a transposed matrix (%zu floats)", need);
            c->transposed_floats = need;
        }
        transpose(c->transposed, B, K, N);
        B = c->transposed;
        transB = 0;
    }
    GemmEntry key = {.batch = batch, .M = M, .N = N, .K = K, .transA = transA, .transB = transB,
                     .has_bias = bias != NULL, .accumulate = accumulate, .gelu = gelu, .bf16 = bf16, .alpha = alpha};
    GemmEntry *e = NULL;
    for (int i = 0; i < c->count && !e; i++) {
        GemmEntry *x = &c->entries[i];
        if (x->batch == batch && x->M == M && x->N == N && x->K == K && x->transA == transA &&
            x->transB == transB && x->has_bias == key.has_bias && x->accumulate == accumulate && x->gelu == gelu &&
            x->bf16 == bf16 && x->alpha == alpha)
            e = x;
    }
    if (!e) {
        if (c->count == c->capacity) {
            int cap = c->capacity ? 2 * c->capacity : 32;
            GemmEntry *n = realloc(c->entries, (size_t)cap * sizeof *n);
            if (!n) return vit_fail("out of memory for the matmul cache");
            c->entries = n;
            c->capacity = cap;
        }
        e = &c->entries[c->count];
        *e = key;
        if (create_entry(c, e) != VIT_OK) return VIT_ERR;
        c->count++;
        if (e->scratch_bytes > c->scratch_bytes) {
            free(c->scratch);
            c->scratch = NULL;
            if (posix_memalign(&c->scratch, 64, e->scratch_bytes))
                return vit_fail("out of memory for the matmul scratchpad (%zu bytes)", e->scratch_bytes);
            c->scratch_bytes = e->scratch_bytes;
        }
    }
    dnnl_memory_set_data_handle(e->src, (void *)A);
    dnnl_memory_set_data_handle(e->weights, (void *)B);
    dnnl_memory_set_data_handle(e->dst, C);
    dnnl_memory_set_data_handle(e->scratch, c->scratch);
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, e->src},
                               {DNNL_ARG_WEIGHTS, e->weights},
                               {DNNL_ARG_DST, e->dst},
                               {DNNL_ARG_SCRATCHPAD, e->scratch},
                               {DNNL_ARG_BIAS, e->bias}};
    if (bias) dnnl_memory_set_data_handle(e->bias, (void *)bias);
    dnnl_status_t st = dnnl_primitive_execute(e->prim, c->stream, bias ? 5 : 4, args);
    if (st == dnnl_success) st = dnnl_stream_wait(c->stream);
    if (st != dnnl_success) return vit_fail("oneDNN: matmul %dx%dx%d failed (status %d)", M, N, K, (int)st);
    return VIT_OK;
}

static int gemm_any(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
                    int transB, float *C, const float *bias, float alpha, int accumulate, int gelu) {
    if (!((CpuState *)be->impl)->bf16)
        return gemm_run(be, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate, gelu, 0);
    GemmCache *c = ((CpuState *)be->impl)->gemm;
    int native = probe_native_bf16(c);
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N, elem = native ? 2 : 4;
    size_t need = (na + nb) * elem + 64;
    if (need > c->rounded_bytes) {
        free(c->rounded);
        c->rounded = NULL;
        if (posix_memalign(&c->rounded, 64, need))
            return vit_fail("out of memory for bf16 operands (%zu bytes)", need);
        c->rounded_bytes = need;
    }
    char *ra = c->rounded, *rb = ra + (na * elem + 63) / 64 * 64;
    if (native) {
        to_bf16((uint16_t *)ra, A, na);
        to_bf16((uint16_t *)rb, B, nb);
    } else {
        round_bf16((float *)ra, A, na);
        round_bf16((float *)rb, B, nb);
    }
    return gemm_run(be, batch, M, N, K, ra, transA, rb, transB, C, bias, alpha, accumulate, gelu, native);
}

int cpu_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
             int transB, float *C, const float *bias, float alpha, int accumulate) {
    if (cpu_failed(be)) return VIT_ERR;
    return gemm_any(be, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate, 0);
}

// GELU as oneDNN's eltwise post-op: applied to each output tile while it is in registers,
// instead of a second pass over the (rows x N) result.
int cpu_gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C, const float *bias,
                       int tanh_approx) {
    if (cpu_failed(be)) return VIT_ERR;
    return gemm_any(be, 1, M, N, K, A, 0, B, 0, C, bias, 1.0f, 0, tanh_approx ? 2 : 1);
}

int cpu_gemm_bf16(Backend *be, int M, int N, int K, const uint16_t *A, int transA, const uint16_t *B, int transB,
                  float *C) {
    if (!probe_native_bf16(((CpuState *)be->impl)->gemm))
        return vit_fail("oneDNN has no native bf16 matmul for this CPU");
    return gemm_run(be, 1, M, N, K, A, transA, B, transB, C, NULL, 1.0f, 0, 0, 1);
}
