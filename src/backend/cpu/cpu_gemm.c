// Matrix products through oneDNN's matmul primitive. A primitive is created once per
// distinct (shape, transposes, bias, alpha, accumulate) and reused: creation costs far
// more than a small product. All primitives share one user-managed scratchpad that grows
// while primitives are created (the first step) and is then reused: no allocation per call.
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "cpu.h"
#include "cpu_math.h"
#include "util/status.h"

typedef struct {
    int batch, M, N, K, transA, transB, has_bias, accumulate;
    int gelu;  // epilogue: 0 none, 1 GELU (erf), 2 GELU (tanh approximation)
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
    float *rounded;             // bf16-rounded copies of A and B (bf16 mode)
    size_t rounded_floats;
};

GemmCache *cpu_gemm_cache_create(void) {
    GemmCache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
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

// A logical rows x cols matrix per batch; `trans` means it is stored cols x rows.
static void matrix_desc(dnnl_memory_desc_t *md, int batch, int rows, int cols, int trans) {
    if (batch == 1) {
        dnnl_dims_t dims = {rows, cols};
        dnnl_dims_t strides = {trans ? 1 : cols, trans ? rows : 1};
        dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
    } else {
        dnnl_dims_t dims = {batch, rows, cols};
        dnnl_dims_t strides = {(dnnl_dim_t)rows * cols, trans ? 1 : cols, trans ? rows : 1};
        dnnl_memory_desc_init_by_strides(md, 3, dims, dnnl_f32, strides);
    }
}

static int create_entry(GemmCache *c, GemmEntry *e) {
    dnnl_memory_desc_t a_md, b_md, c_md, bias_md;
    matrix_desc(&a_md, e->batch, e->M, e->K, e->transA);
    matrix_desc(&b_md, e->batch, e->K, e->N, e->transB);
    matrix_desc(&c_md, e->batch, e->M, e->N, 0);
    if (e->has_bias && e->batch == 1) matrix_desc(&bias_md, 1, 1, e->N, 0);
    if (e->has_bias && e->batch > 1) {  // one bias row broadcast over the batch
        dnnl_dims_t dims = {1, 1, e->N};
        dnnl_memory_desc_init_by_tag(&bias_md, 3, dims, dnnl_f32, dnnl_abc);
    }
    dnnl_matmul_desc_t desc;
    if (dnnl_matmul_desc_init(&desc, &a_md, &b_md, e->has_bias ? &bias_md : NULL, &c_md) != dnnl_success)
        return vit_fail("oneDNN: matmul %dx%dx%d (batch %d): descriptor rejected", e->M, e->N, e->K, e->batch);
    dnnl_primitive_attr_t attr;
    dnnl_primitive_attr_create(&attr);
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (e->alpha != 1.0f) dnnl_primitive_attr_set_output_scales(attr, 1, 0, &e->alpha);
    if (e->accumulate || e->gelu) {
        dnnl_post_ops_t po;
        dnnl_post_ops_create(&po);
        if (e->accumulate) dnnl_post_ops_append_sum(po, 1.0f);
        if (e->gelu)
            dnnl_post_ops_append_eltwise(po, 1.0f, e->gelu == 1 ? dnnl_eltwise_gelu_erf : dnnl_eltwise_gelu_tanh, 0, 0);
        dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, attr, c->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return vit_fail("oneDNN: matmul %dx%dx%d (batch %d): no implementation (status %d)", e->M, e->N, e->K,
                        e->batch, (int)st);
    st = dnnl_primitive_create(&e->prim, pd);
    const dnnl_memory_desc_t *scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0;
    dnnl_memory_create(&e->scratch, scratch_md, c->engine, DNNL_MEMORY_NONE);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) return vit_fail("oneDNN: matmul primitive creation failed (status %d)", (int)st);
    dnnl_memory_create(&e->src, &a_md, c->engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&e->weights, &b_md, c->engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&e->dst, &c_md, c->engine, DNNL_MEMORY_NONE);
    e->bias = NULL;
    if (e->has_bias) dnnl_memory_create(&e->bias, &bias_md, c->engine, DNNL_MEMORY_NONE);
    return VIT_OK;
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

static int gemm_fp32(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
                     int transB, float *C, const float *bias, float alpha, int accumulate, int gelu) {
    GemmCache *c = ((CpuState *)be->impl)->gemm;
    if (bias && alpha != 1.0f) {
        // oneDNN's output scale multiplies the bias too; the contract is alpha * A @ B + bias.
        if (gelu) return vit_fail("cpu gemm: a GELU epilogue with alpha != 1 and a bias is not supported");
        if (gemm_fp32(be, batch, M, N, K, A, transA, B, transB, C, NULL, alpha, accumulate, 0)) return VIT_ERR;
        for (size_t r = 0; r < (size_t)batch * M; r++)
            for (int j = 0; j < N; j++) C[r * N + j] += bias[j];
        return VIT_OK;
    }
    // oneDNN's kernels for a transposed B are much slower than for a plain one when the output
    // is wider than the contraction (measured 100 vs 160 GFLOP/s for the 1576 x 3072 x 768 input
    // gradient of ViT-B's second MLP layer on AVX2); copying B^T first costs far less.
    if (batch == 1 && transB && !transA && N > K && (size_t)M * N * K >= ((size_t)1 << 24)) {
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
                     .has_bias = bias != NULL, .accumulate = accumulate, .gelu = gelu, .alpha = alpha};
    GemmEntry *e = NULL;
    for (int i = 0; i < c->count && !e; i++) {
        GemmEntry *x = &c->entries[i];
        if (x->batch == batch && x->M == M && x->N == N && x->K == K && x->transA == transA &&
            x->transB == transB && x->has_bias == key.has_bias && x->accumulate == accumulate && x->gelu == gelu &&
            x->alpha == alpha)
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
        return gemm_fp32(be, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate, gelu);
    GemmCache *c = ((CpuState *)be->impl)->gemm;
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N;
    if (na + nb > c->rounded_floats) {
        free(c->rounded);
        c->rounded = NULL;
        if (posix_memalign((void **)&c->rounded, 64, (na + nb) * sizeof(float)))
            return vit_fail("out of memory for bf16 operands (%zu floats)", na + nb);
        c->rounded_floats = na + nb;
    }
    round_bf16(c->rounded, A, na);
    round_bf16(c->rounded + na, B, nb);
    return gemm_fp32(be, batch, M, N, K, c->rounded, transA, c->rounded + na, transB, C, bias, alpha, accumulate,
                     gelu);
}

int cpu_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
             int transB, float *C, const float *bias, float alpha, int accumulate) {
    return gemm_any(be, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate, 0);
}

// GELU as oneDNN's eltwise post-op: applied to each output tile while it is in registers,
// instead of a second pass over the (rows x N) result.
int cpu_gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C, const float *bias,
                       int tanh_approx) {
    return gemm_any(be, 1, M, N, K, A, 0, B, 0, C, bias, 1.0f, 0, tanh_approx ? 2 : 1);
}
