// Matrix products through cuBLASLt. The op table is row-major and cuBLASLt column-major:
// a row-major M x N matrix C is the column-major N x M matrix C^T, so C = op(A) op(B) is
// computed as C^T = op(B)^T op(A)^T, with our B in cuBLASLt's A slot and our A in its B
// slot. The bias is broadcast over our rows = over cuBLASLt's columns, which is exactly
// its BIAS epilogue (a vector as long as D's column-major rows, N). Accumulation is beta=1
// with C and D the same buffer.
//
// Descriptors, layouts and the heuristic's algorithm are made once per distinct
// (shape, transposes, bias, accumulate, operand alignments) and reused: a training step
// after the first creates nothing. All products share the backend's one workspace.
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>
#include "cuda_bf16_acts.h"
#include "cuda_common.h"

typedef struct {
    int batch, M, N, K, transA, transB, has_bias, accumulate;
    unsigned align_a, align_b, align_c, align_bias;  // bytes, of what cuBLASLt is handed
    int fused_bias;                                  // 0: bias added by cuda_add_bias after the product
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;               // cuBLASLt's A (our B), B (our A), C = D
    cublasLtMatmulAlgo_t algo;
} GemmEntry;

// A product with a cuBLASLt epilogue beyond the bias (VIT_CUDA_EPILOGUES=1): batch 1, the same
// layouts as GemmEntry's, one entry per distinct key; `supported` 0 remembers that no algorithm
// exists (the callers then run the plain ops; never retried).
typedef struct {
    int M, N, K, transA, transB, accumulate;
    uint32_t epilogue;
    int64_t aux_ld;
    unsigned align_a, align_b, align_c, align_bias, align_aux;
    int supported;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} EpiEntry;

// A gemm_bf16 product (VIT_CUDA_BF16_ACTS=1): bf16 A and B as given, strided batches.
typedef struct {
    int batch, M, N, K, transA, transB, has_bias, accumulate;
    long long stride_a, stride_b, stride_c, stride_bias;
    unsigned align_a, align_b, align_c, align_bias;
    int fused_bias;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} Bf16Entry;

struct GemmCache {
    GemmEntry *entries;
    int count, capacity;
    EpiEntry *epi;
    int nepi, epicap;
    Bf16Entry *b16;
    int nb16, b16cap;
};

GemmCache *cuda_gemm_cache_create(void) { return (GemmCache *)calloc(1, sizeof(GemmCache)); }

static void entry_free(GemmEntry *e) {
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    e->op = NULL, e->la = e->lb = e->lc = NULL;
}

static void epi_free(EpiEntry *e) {
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    e->op = NULL, e->la = e->lb = e->lc = NULL;
}

void cuda_gemm_cache_destroy(GemmCache *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) entry_free(&c->entries[i]);
    for (int i = 0; i < c->nepi; i++) epi_free(&c->epi[i]);
    for (int i = 0; i < c->nb16; i++) {
        Bf16Entry *e = &c->b16[i];
        if (e->op) cublasLtMatmulDescDestroy(e->op);
        if (e->la) cublasLtMatrixLayoutDestroy(e->la);
        if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
        if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    }
    free(c->entries);
    free(c->epi);
    free(c->b16);
    free(c);
}

// Largest power of two (up to 256) dividing the address and, for batches, the stride.
static unsigned alignment(const void *p, size_t stride_bytes, int batch) {
    uintptr_t v = (uintptr_t)p;
    if (batch > 1) v |= (uintptr_t)stride_bytes;
    unsigned a = 256;
    while (a > 1 && (v & (a - 1))) a >>= 1;
    return a;
}

#define LT(call)                                                            \
    do {                                                                    \
        cublasStatus_t st_ = (call);                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                 \
            why = #call;                                                    \
            status = st_;                                                   \
            goto fail;                                                      \
        }                                                                   \
    } while (0)

static cublasStatus_t layout(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld,
                             int batch, int64_t stride) {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, t, rows, cols, ld);
    if (st != CUBLAS_STATUS_SUCCESS || batch == 1) return st;
    int32_t count = batch;
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
    return st;
}

// The three layouts of C = op(A) op(B) (our names; M x N row-major C): cuBLASLt's A is our B,
// its B our A, its C = D our C.
static cublasStatus_t make_layouts(CudaState *s, int batch, int M, int N, int K, int transA, int transB,
                                   cublasLtMatrixLayout_t *la, cublasLtMatrixLayout_t *lb, cublasLtMatrixLayout_t *lc) {
    cudaDataType ab = s->precision == CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    // cuBLASLt A = our B: stored K x N row-major (N x K column-major, used as is) or N x K (transposed).
    cublasStatus_t st = layout(la, ab, transB ? K : N, transB ? N : K, transB ? K : N, batch, (int64_t)K * N);
    // cuBLASLt B = our A: stored M x K row-major (K x M column-major) or K x M (transposed).
    if (st == CUBLAS_STATUS_SUCCESS)
        st = layout(lb, ab, transA ? M : K, transA ? K : M, transA ? M : K, batch, (int64_t)M * K);
    if (st == CUBLAS_STATUS_SUCCESS) st = layout(lc, CUDA_R_32F, N, M, N, batch, (int64_t)M * N);
    return st;
}

// The heuristic's constraints: the shared workspace and the operands' alignments (ours: a, b, c).
static cublasStatus_t make_preference(CudaState *s, cublasLtMatmulPreference_t *pref, uint32_t a, uint32_t b,
                                      uint32_t c) {
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(pref);
    uint64_t ws = s->workspace_bytes;
    const struct {
        cublasLtMatmulPreferenceAttributes_t attr;
        const void *v;
        size_t n;
    } set[] = {{CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws},
               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &b, sizeof b},  // cuBLASLt's A is our B
               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &a, sizeof a},
               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c, sizeof c},
               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c, sizeof c}};
    for (size_t i = 0; i < sizeof set / sizeof set[0] && st == CUBLAS_STATUS_SUCCESS; i++)
        st = cublasLtMatmulPreferenceSetAttribute(*pref, set[i].attr, set[i].v, set[i].n);
    return st;
}

// Builds descriptors and picks the algorithm; with a bias that no algorithm fuses, falls
// back to an unfused product (and a separate bias kernel).
static int entry_create(CudaState *s, GemmEntry *e, const void *bias_ptr) {
    const char *why = "";
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulPreference_t pref = NULL;
    cublasComputeType_t compute = s->precision == CUDA_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    int M = e->M, N = e->N, K = e->K;
    LT(make_layouts(s, e->batch, M, N, K, e->transA, e->transB, &e->la, &e->lb, &e->lc));
    LT(make_preference(s, &pref, e->align_a, e->align_b, e->align_c));
    for (int attempt = 0; attempt < 2; attempt++) {
        e->fused_bias = e->has_bias && attempt == 0;
        if (e->has_bias && attempt == 1) {
            cublasLtMatmulDescDestroy(e->op);
            e->op = NULL;
        } else if (attempt == 1) {
            break;
        }
        LT(cublasLtMatmulDescCreate(&e->op, compute, CUDA_R_32F));
        int32_t ta = e->transB ? CUBLAS_OP_T : CUBLAS_OP_N, tb = e->transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        LT(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        LT(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (e->fused_bias) {
            uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
            LT(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
            // The heuristic reads the pointer's value to learn its alignment.
            LT(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof bias_ptr));
        }
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        memset(&res, 0, sizeof res);
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s->lt, e->op, e->la, e->lb, e->lc, e->lc, pref, 1, &res, &found);
        if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
            e->algo = res.algo;
            cublasLtMatmulPreferenceDestroy(pref);
            return VIT_OK;
        }
        status = st != CUBLAS_STATUS_SUCCESS ? st : CUBLAS_STATUS_NOT_SUPPORTED;
        why = "cublasLtMatmulAlgoGetHeuristic found no algorithm";
    }
fail:
    // Nothing was queued: an unsupported product, not a broken device (the backend stays usable).
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    entry_free(e);
    return vit_fail("cuda gemm: %dx%dx%d (batch %d, transA %d, transB %d%s): %s: %s", M, N, K, e->batch,
                    e->transA, e->transB, e->has_bias ? ", bias" : "", why, cublasLtGetStatusString(status));
}

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    CUDA_FOR(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t n, int cols) {
    CUDA_FOR(i, n) out[i] += bias[i % cols];
}

void cuda_add_bias(CudaState *s, float *out, const float *bias, size_t rows, int cols) {
    size_t n = rows * cols;
    if (!n) return;
    add_bias_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(out, bias, n, cols);
    cuda_check_launch(s, "gemm bias");
}

// The operands cuBLASLt reads: A and B themselves, or with CUDA_BF16 their bf16 copies (one
// scratch buffer, both copies 256-byte aligned: activations stay fp32, only products round).
static int gemm_operands(CudaState *s, const float *A, size_t nA, const float *B, size_t nB, const void **a_op,
                         const void **b_op, size_t *esize) {
    *a_op = A, *b_op = B, *esize = sizeof(float);
    if (s->precision != CUDA_BF16) return VIT_OK;
    size_t offB = (nA * 2 + 255) / 256 * 256;
    char *buf = (char *)cuda_scratch(s, &s->bf16, &s->bf16_bytes, offB + nB * 2, "gemm (bf16 operands)");
    if (!buf) return VIT_ERR;
    to_bf16_kernel<<<cuda_blocks(s, nA, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)buf, A, nA);
    to_bf16_kernel<<<cuda_blocks(s, nB, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)(buf + offB), B, nB);
    if (cuda_check_launch(s, "gemm (bf16 operands)")) return VIT_ERR;
    *a_op = buf, *b_op = buf + offB, *esize = 2;
    return VIT_OK;
}

int cuda_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B, int transB,
              float *C, const float *bias, float alpha, int accumulate) {
    CudaState *s = cuda_state(be);
    if (cuda_failed(s)) return VIT_ERR;
    if (batch < 1 || M < 0 || N < 0 || K < 0)
        return vit_fail("cuda gemm: bad shape %dx%dx%d (batch %d)", M, N, K, batch);
    if (M == 0 || N == 0) return VIT_OK;
    if (K == 0) {  // an empty sum: C = (C) + bias
        if (!accumulate) cuda_check(s, cudaMemsetAsync(C, 0, (size_t)batch * M * N * sizeof(float), s->stream), "gemm");
        if (bias) cuda_add_bias(s, C, bias, (size_t)batch * M, N);
        return cuda_failed(s);
    }
    const void *a_op, *b_op;
    size_t esize;
    if (gemm_operands(s, A, (size_t)batch * M * K, B, (size_t)batch * K * N, &a_op, &b_op, &esize)) return VIT_ERR;
    // alpha != 1 with a bias: keep the bias out of cuBLASLt (our contract is alpha*AB + bias).
    int want_fused = bias != NULL && alpha == 1.0f;
    GemmEntry key;
    memset(&key, 0, sizeof key);
    key.batch = batch, key.M = M, key.N = N, key.K = K, key.transA = transA != 0, key.transB = transB != 0;
    key.has_bias = want_fused, key.accumulate = accumulate != 0;
    key.align_a = alignment(a_op, (size_t)M * K * esize, batch);
    key.align_b = alignment(b_op, (size_t)K * N * esize, batch);
    key.align_c = alignment(C, (size_t)M * N * sizeof(float), batch);
    key.align_bias = want_fused ? alignment(bias, 0, 1) : 0;
    GemmCache *c = s->gemm;
    GemmEntry *e = NULL;
    for (int i = 0; i < c->count && !e; i++) {
        GemmEntry *x = &c->entries[i];
        if (x->batch == key.batch && x->M == M && x->N == N && x->K == K && x->transA == key.transA &&
            x->transB == key.transB && x->has_bias == key.has_bias && x->accumulate == key.accumulate &&
            x->align_a == key.align_a && x->align_b == key.align_b && x->align_c == key.align_c &&
            x->align_bias == key.align_bias)
            e = x;
    }
    if (!e) {
        if (c->count == c->capacity) {
            int cap = c->capacity ? 2 * c->capacity : 32;
            GemmEntry *n = (GemmEntry *)realloc(c->entries, (size_t)cap * sizeof *n);
            if (!n) return cuda_fail(s, "gemm", "out of host memory for the matmul cache");
            c->entries = n;
            c->capacity = cap;
        }
        e = &c->entries[c->count];
        *e = key;
        if (entry_create(s, e, bias) != VIT_OK) return VIT_ERR;
        c->count++;
    }
    if (e->fused_bias) {
        cublasStatus_t st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (st != CUBLAS_STATUS_SUCCESS) return cuda_fail(s, "gemm", "bias pointer: %s", cublasLtGetStatusString(st));
    }
    float beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasLtMatmul(s->lt, e->op, &alpha, b_op, e->la, a_op, e->lb, &beta, C, e->lc, C, e->lc, &e->algo,
                                       s->workspace, s->workspace_bytes, s->stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cuda_fail(s, "gemm", "%dx%dx%d (batch %d): cublasLtMatmul: %s", M, N, K, batch,
                         cublasLtGetStatusString(st));
    if (bias && !e->fused_bias) cuda_add_bias(s, C, bias, (size_t)batch * M, N);
    return cuda_check_launch(s, "gemm");
}

// ---- epilogue products (VIT_CUDA_EPILOGUES=1; never run on a GPU yet: docs/gpu.md) ------------
// Each public product below equals a composition of table ops and runs that composition
// unless the switch is on and cuBLASLt has an algorithm with the epilogue for the shape:
//  - GELU epilogues only for the tanh approximation (cuBLASLt's GELU is the tanh form, as
//    PyTorch's addmm fallback assumes); erf GELU always runs vit's own kernels;
//  - bias gradients (BGRADA, DGELU_BGRAD) are written by cuBLASLt, not added: they land in
//    s->bgrad and a small kernel adds them (the contract's +=). They sum what the product
//    reads: with CUDA_BF16 the bf16-rounded dY (relative error ~2^-9 per term), in fp32 not
//    in double as bias_backward does: the one numerical change besides the products.

__global__ void add_vec_kernel(float *dst, const float *src, int n) { CUDA_FOR(i, n) dst[i] += src[i]; }

// The entry for `key` (found, or built now). NULL only when out of host memory.
static EpiEntry *epi_entry(CudaState *s, const EpiEntry *key, const void *bias, const void *aux) {
    GemmCache *c = s->gemm;
    for (int i = 0; i < c->nepi; i++) {
        EpiEntry *x = &c->epi[i];
        if (x->M == key->M && x->N == key->N && x->K == key->K && x->transA == key->transA &&
            x->transB == key->transB && x->accumulate == key->accumulate && x->epilogue == key->epilogue &&
            x->aux_ld == key->aux_ld && x->align_a == key->align_a && x->align_b == key->align_b &&
            x->align_c == key->align_c && x->align_bias == key->align_bias && x->align_aux == key->align_aux)
            return x;
    }
    if (c->nepi == c->epicap) {
        int cap = c->epicap ? 2 * c->epicap : 16;
        EpiEntry *n = (EpiEntry *)realloc(c->epi, (size_t)cap * sizeof *n);
        if (!n) {
            cuda_fail(s, "gemm epilogue", "out of host memory for the matmul cache");
            return NULL;
        }
        c->epi = n, c->epicap = cap;
    }
    EpiEntry *e = &c->epi[c->nepi++];
    *e = *key;
    e->op = NULL, e->la = e->lb = e->lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasComputeType_t compute = s->precision == CUDA_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    int32_t ta = e->transB ? CUBLAS_OP_T : CUBLAS_OP_N, tb = e->transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st = make_layouts(s, 1, e->M, e->N, e->K, e->transA, e->transB, &e->la, &e->lb, &e->lc);
    if (st == CUBLAS_STATUS_SUCCESS) st = make_preference(s, &pref, e->align_a, e->align_b, e->align_c);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescCreate(&e->op, compute, CUDA_R_32F);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e->epilogue, sizeof e->epilogue);
    // The heuristic reads the pointers' values to learn their alignment.
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (st == CUBLAS_STATUS_SUCCESS && aux) {
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &e->aux_ld,
                                                sizeof e->aux_ld);
    }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    memset(&res, 0, sizeof res);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(s->lt, e->op, e->la, e->lb, e->lc, e->lc, pref, 1, &res, &found);
    e->supported = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (e->supported) e->algo = res.algo;
    else epi_free(e);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return e;
}

// C (= or +=) op(A) op(B) with epilogue `epi` (batch 1), where an algorithm exists: 1 when it
// ran, 0 when none exists (nothing queued), VIT_ERR on failure. bias: the BIAS_POINTER (a bias
// read, or a bias gradient written); aux: the GELU input (written or read) with leading dim N.
static int epi_run(CudaState *s, uint32_t epi, int M, int N, int K, const float *A, int transA, const float *B,
                   int transB, float *C, int accumulate, const void *bias, const float *aux) {
    if (!s->epilogues || M <= 0 || N <= 0 || K <= 0 || (aux && N % 8)) return 0;  // aux ld: a multiple of 8
    int bf16 = s->precision == CUDA_BF16;
    EpiEntry key;
    memset(&key, 0, sizeof key);
    key.M = M, key.N = N, key.K = K, key.transA = transA != 0, key.transB = transB != 0;
    key.accumulate = accumulate != 0, key.epilogue = epi, key.aux_ld = aux ? N : 0;
    // With CUDA_BF16 the operands are the 256-byte aligned copies gemm_operands makes.
    key.align_a = bf16 ? 256 : alignment(A, 0, 1);
    key.align_b = bf16 ? 256 : alignment(B, 0, 1);
    key.align_c = alignment(C, 0, 1), key.align_bias = alignment(bias, 0, 1);
    key.align_aux = aux ? alignment(aux, 0, 1) : 0;
    EpiEntry *e = epi_entry(s, &key, bias, aux);
    if (!e) return VIT_ERR;
    if (!e->supported) return 0;
    const void *a_op, *b_op;
    size_t esize;
    if (gemm_operands(s, A, (size_t)M * K, B, (size_t)K * N, &a_op, &b_op, &esize)) return VIT_ERR;
    cublasStatus_t st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (st == CUBLAS_STATUS_SUCCESS && aux)
        st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmul(s->lt, e->op, &alpha, b_op, e->la, a_op, e->lb, &beta, C, e->lc, C, e->lc, &e->algo,
                            s->workspace, s->workspace_bytes, s->stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cuda_fail(s, "gemm epilogue", "%dx%dx%d (epilogue %u): cublasLtMatmul: %s", M, N, K, (unsigned)epi,
                         cublasLtGetStatusString(st));
    return cuda_check_launch(s, "gemm epilogue") ? VIT_ERR : 1;
}

// The bias-gradient output of an epilogue (n floats), added to dbias once the product ran.
static float *bgrad_buffer(CudaState *s, int n) {
    return (float *)cuda_scratch(s, &s->bgrad, &s->bgrad_bytes, (size_t)n * sizeof(float), "gemm epilogue");
}

static int bgrad_add(CudaState *s, float *dbias, const float *bgrad, int n) {
    add_vec_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(dbias, bgrad, n);
    return cuda_check_launch(s, "gemm epilogue (bias gradient)");
}

static int count(CudaState *s, int ran) {
    if (ran == 1) s->epi_fused++;
    if (ran == 0) s->epi_unfused++;
    return ran;
}

// The op table's gemm_bias_gelu (installed only with VIT_CUDA_EPILOGUES=1 until checked on a
// GPU): GELU_BIAS for the tanh form, else the product with its bias and GELU in place after it.
static int gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C, const float *bias,
                          int tanh_approx) {
    CudaState *s = cuda_state(be);
    if (cuda_failed(s)) return VIT_ERR;
    int ran = 0;
    if (tanh_approx && bias) ran = epi_run(s, CUBLASLT_EPILOGUE_GELU_BIAS, M, N, K, A, 0, B, 0, C, 0, bias, NULL);
    if (count(s, ran)) return ran == 1 ? VIT_OK : VIT_ERR;
    if (cuda_gemm(be, 1, M, N, K, A, 0, B, 0, C, bias, 1.0f, 0)) return VIT_ERR;
    be->gelu_forward(be, C, C, (size_t)M * N, tanh_approx);  // elementwise: in place is safe
    return cuda_failed(s);
}

void cuda_install_epilogues(Backend *be) {
    if (cuda_state(be)->epilogues) be->gemm_bias_gelu = gemm_bias_gelu;
}

static CudaState *epi_state(Backend *be, const char *fn) {
    if (!cuda_is_backend(be)) {
        vit_fail("%s: not a CUDA backend", fn);
        return NULL;
    }
    CudaState *s = cuda_state(be);
    return cuda_failed(s) ? NULL : s;
}

int backend_cuda_gemm_wgrad_bgrad(Backend *be, int rows, int in, int out, const float *x, const float *dy, float *dW,
                                  float *dbias) {
    CudaState *s = epi_state(be, "backend_cuda_gemm_wgrad_bgrad");
    if (!s) return VIT_ERR;
    // dW (in x out) += x^T dy: cuBLASLt's A is dy (out x rows column-major) and the bias
    // gradient sums it over k = rows: BGRADA, one value per row of D (out).
    float *g = s->epilogues ? bgrad_buffer(s, out) : NULL;
    if (s->epilogues && !g) return VIT_ERR;
    int ran = epi_run(s, CUBLASLT_EPILOGUE_BGRADA, in, out, rows, x, 1, dy, 0, dW, 1, g, NULL);
    if (count(s, ran) == 1) return bgrad_add(s, dbias, g, out);
    if (ran) return VIT_ERR;
    if (cuda_gemm(be, 1, in, out, rows, x, 1, dy, 0, dW, NULL, 1.0f, 1)) return VIT_ERR;
    be->bias_backward(be, dbias, dy, rows, out);
    return cuda_failed(s);
}

int backend_cuda_gemm_bias_gelu_aux(Backend *be, int rows, int in, int out, const float *x, const float *W,
                                    const float *bias, float *pre, float *y, int tanh_approx) {
    CudaState *s = epi_state(be, "backend_cuda_gemm_bias_gelu_aux");
    if (!s) return VIT_ERR;
    int ran = 0;
    if (tanh_approx) ran = epi_run(s, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, rows, out, in, x, 0, W, 0, y, 0, bias, pre);
    if (count(s, ran)) return ran == 1 ? VIT_OK : VIT_ERR;
    if (cuda_gemm(be, 1, rows, out, in, x, 0, W, 0, pre, bias, 1.0f, 0)) return VIT_ERR;
    be->gelu_forward(be, y, pre, (size_t)rows * out, tanh_approx);
    return cuda_failed(s);
}

int backend_cuda_gemm_dgelu_bgrad(Backend *be, int rows, int in, int out, const float *dy, const float *W,
                                  const float *pre, float *dx, float *dbias, int tanh_approx) {
    CudaState *s = epi_state(be, "backend_cuda_gemm_dgelu_bgrad");
    if (!s) return VIT_ERR;
    // dx (rows x in) = (dy W^T) * gelu'(pre); the bias gradient sums dx over rows = over the
    // columns of D (in x rows column-major): one value per row of D, as DGELU_BGRAD writes it.
    float *g = s->epilogues && tanh_approx ? bgrad_buffer(s, in) : NULL;
    if (s->epilogues && tanh_approx && !g) return VIT_ERR;
    int ran = 0;
    if (tanh_approx) ran = epi_run(s, CUBLASLT_EPILOGUE_DGELU_BGRAD, rows, in, out, dy, 0, W, 1, dx, 0, g, pre);
    if (count(s, ran) == 1) return bgrad_add(s, dbias, g, in);
    if (ran) return VIT_ERR;
    if (cuda_gemm(be, 1, rows, in, out, dy, 0, W, 1, dx, NULL, 1.0f, 0)) return VIT_ERR;
    be->gelu_dropout_backward(be, dx, dbias, pre, dx, rows, in, tanh_approx, 0.0f, 0, 0, 0);
    return cuda_failed(s);
}

void backend_cuda_epilogue_counts(Backend *be, long *fused, long *unfused) {
    CudaState *s = cuda_is_backend(be) ? cuda_state(be) : NULL;
    *fused = s ? s->epi_fused : 0;
    *unfused = s ? s->epi_unfused : 0;
}

const char *backend_cuda_attention_last(Backend *be) {
    const char *p = cuda_is_backend(be) ? cuda_state(be)->attention_last : NULL;
    return p ? p : "none";
}

// ---- gemm_bf16 (VIT_CUDA_BF16_ACTS=1; never run on a GPU yet: docs/gpu.md) -----------------
// bf16 operands go to cuBLASLt as they are; an fp32 one (a weight, a gradient) is rounded into
// the bf16 scratch first, the whole strided span at once so its batch stride stays. Products
// in fp32 (CUBLAS_COMPUTE_32F), C fp32. A batch stride of 0 repeats one matrix (q, k and v
// from one LayerNorm output); where cuBLASLt has no batched algorithm for the strides, the
// batches run one product each.

// Elements a strided operand spans: batch matrices of n, stride apart.
static size_t span(int batch, long long stride, size_t n) { return batch > 1 ? (size_t)(batch - 1) * stride + n : n; }

// The entry for `key`, built now if new (with bias_ptr for the heuristic); NULL with vit_fail
// when none exists (nothing queued).
static Bf16Entry *bf16_entry(CudaState *s, const Bf16Entry *key, const float *bias_ptr) {
    GemmCache *c = s->gemm;
    for (int i = 0; i < c->nb16; i++) {
        Bf16Entry *x = &c->b16[i];
        if (x->batch == key->batch && x->M == key->M && x->N == key->N && x->K == key->K &&
            x->transA == key->transA && x->transB == key->transB && x->has_bias == key->has_bias &&
            x->accumulate == key->accumulate && x->stride_a == key->stride_a && x->stride_b == key->stride_b &&
            x->stride_c == key->stride_c && x->stride_bias == key->stride_bias && x->align_a == key->align_a &&
            x->align_b == key->align_b && x->align_c == key->align_c && x->align_bias == key->align_bias)
            return x;
    }
    if (c->nb16 == c->b16cap) {
        int cap = c->b16cap ? 2 * c->b16cap : 16;
        Bf16Entry *n = (Bf16Entry *)realloc(c->b16, (size_t)cap * sizeof *n);
        if (!n) {
            cuda_fail(s, "gemm_bf16", "out of host memory for the matmul cache");
            return NULL;
        }
        c->b16 = n, c->b16cap = cap;
    }
    Bf16Entry e = *key;
    e.op = NULL, e.la = e.lb = e.lc = NULL;
    const char *why = "";
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulPreference_t pref = NULL;
    int M = e.M, N = e.N, K = e.K, bt = e.batch;
    // cuBLASLt's A is our B, its B our A (cuda_gemm's layouts, with our strides).
    LT(layout(&e.la, CUDA_R_16BF, e.transB ? K : N, e.transB ? N : K, e.transB ? K : N, bt, e.stride_b));
    LT(layout(&e.lb, CUDA_R_16BF, e.transA ? M : K, e.transA ? K : M, e.transA ? M : K, bt, e.stride_a));
    LT(layout(&e.lc, CUDA_R_32F, N, M, N, bt, e.stride_c));
    LT(make_preference(s, &pref, e.align_a, e.align_b, e.align_c));
    for (int attempt = 0; attempt < 2; attempt++) {
        e.fused_bias = e.has_bias && attempt == 0;
        if (attempt == 1 && !e.has_bias) break;
        if (e.op) cublasLtMatmulDescDestroy(e.op);
        e.op = NULL;
        LT(cublasLtMatmulDescCreate(&e.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        int32_t ta = e.transB ? CUBLAS_OP_T : CUBLAS_OP_N, tb = e.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        LT(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        LT(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (e.fused_bias) {
            uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
            int64_t bstride = e.stride_bias;
            LT(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
            LT(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof bias_ptr));
            if (bt > 1)
                LT(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bstride,
                                                  sizeof bstride));
        }
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        memset(&res, 0, sizeof res);
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s->lt, e.op, e.la, e.lb, e.lc, e.lc, pref, 1, &res, &found);
        if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
            e.algo = res.algo;
            cublasLtMatmulPreferenceDestroy(pref);
            c->b16[c->nb16] = e;
            return &c->b16[c->nb16++];
        }
        status = st != CUBLAS_STATUS_SUCCESS ? st : CUBLAS_STATUS_NOT_SUPPORTED;
        why = "cublasLtMatmulAlgoGetHeuristic found no algorithm";
    }
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (e.op) cublasLtMatmulDescDestroy(e.op);
    if (e.la) cublasLtMatrixLayoutDestroy(e.la);
    if (e.lb) cublasLtMatrixLayoutDestroy(e.lb);
    if (e.lc) cublasLtMatrixLayoutDestroy(e.lc);
    vit_fail("cuda gemm_bf16: %dx%dx%d (batch %d, transA %d, transB %d%s): %s: %s", M, N, K, bt, e.transA, e.transB,
             e.has_bias ? ", bias" : "", why, cublasLtGetStatusString(status));
    return NULL;
}

// One product of bf16 operands a, b (device pointers, strides as in g).
static int bf16_run(CudaState *s, const GemmBf16 *g, const void *a, const void *b) {
    int want_fused = g->bias != NULL && g->alpha == 1.0f;
    Bf16Entry key;
    memset(&key, 0, sizeof key);
    key.batch = g->batch, key.M = g->M, key.N = g->N, key.K = g->K;
    key.transA = g->transA != 0, key.transB = g->transB != 0, key.has_bias = want_fused;
    key.accumulate = g->accumulate != 0;
    int bt = g->batch;
    key.stride_a = bt > 1 ? g->stride_a : 0, key.stride_b = bt > 1 ? g->stride_b : 0;
    key.stride_c = bt > 1 ? g->stride_c : 0, key.stride_bias = bt > 1 && want_fused ? g->stride_bias : 0;
    key.align_a = alignment(a, (size_t)key.stride_a * 2, bt);
    key.align_b = alignment(b, (size_t)key.stride_b * 2, bt);
    key.align_c = alignment(g->C, (size_t)key.stride_c * 4, bt);
    key.align_bias = want_fused ? alignment(g->bias, (size_t)key.stride_bias * 4, bt) : 0;
    Bf16Entry *e = bf16_entry(s, &key, g->bias);
    if (!e) return VIT_ERR;
    if (e->fused_bias) {
        cublasStatus_t st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                           sizeof g->bias);
        if (st != CUBLAS_STATUS_SUCCESS)
            return cuda_fail(s, "gemm_bf16", "bias pointer: %s", cublasLtGetStatusString(st));
    }
    float alpha = g->alpha, beta = g->accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasLtMatmul(s->lt, e->op, &alpha, b, e->la, a, e->lb, &beta, g->C, e->lc, g->C, e->lc,
                                       &e->algo, s->workspace, s->workspace_bytes, s->stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cuda_fail(s, "gemm_bf16", "%dx%dx%d (batch %d): cublasLtMatmul: %s", g->M, g->N, g->K, bt,
                         cublasLtGetStatusString(st));
    if (g->bias && !e->fused_bias)
        for (int i = 0; i < bt; i++)
            cuda_add_bias(s, g->C + i * g->stride_c, g->bias + i * g->stride_bias, (size_t)g->M, g->N);
    return cuda_check_launch(s, "gemm_bf16");
}

int cuda_gemm_bf16(Backend *be, const GemmBf16 *g) {
    CudaState *s = cuda_state(be);
    if (cuda_failed(s)) return VIT_ERR;
    int bt = g->batch, M = g->M, N = g->N, K = g->K;
    if (bt < 1 || M < 0 || N < 0 || K < 0) return vit_fail("cuda gemm_bf16: bad shape %dx%dx%d (batch %d)", M, N, K, bt);
    if (M == 0 || N == 0) return VIT_OK;
    if (K == 0) {  // an empty sum: C = (C) + bias, batch by batch
        for (int i = 0; i < bt; i++) {
            float *C = g->C + i * g->stride_c;
            if (!g->accumulate) cuda_check(s, cudaMemsetAsync(C, 0, (size_t)M * N * sizeof(float), s->stream), "gemm_bf16");
            if (g->bias) cuda_add_bias(s, C, g->bias + i * g->stride_bias, (size_t)M, N);
        }
        return cuda_failed(s);
    }
    // fp32 operands to bf16, each span 256-byte aligned in the scratch.
    size_t nA = span(bt, g->stride_a, (size_t)M * K), nB = span(bt, g->stride_b, (size_t)K * N);
    size_t offB = g->a_bf16 ? 0 : (nA * 2 + 255) / 256 * 256, need = offB + (g->b_bf16 ? 0 : nB * 2);
    char *buf = NULL;
    if (need) {
        buf = (char *)cuda_scratch(s, &s->bf16, &s->bf16_bytes, need, "gemm_bf16 (fp32 operands)");
        if (!buf) return VIT_ERR;
    }
    const void *a = g->A, *b = g->B;
    if (!g->a_bf16) {
        to_bf16_kernel<<<cuda_blocks(s, nA, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)buf, (const float *)g->A, nA);
        a = buf;
    }
    if (!g->b_bf16) {
        to_bf16_kernel<<<cuda_blocks(s, nB, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)(buf + offB),
                                                                       (const float *)g->B, nB);
        b = buf + offB;
    }
    if (cuda_check_launch(s, "gemm_bf16 (fp32 operands)")) return VIT_ERR;
    if (bf16_run(s, g, a, b) == VIT_OK) return VIT_OK;
    if (bt == 1 || cuda_failed(s)) return VIT_ERR;
    // No batched algorithm for these strides: one product per batch (nothing was queued).
    for (int i = 0; i < bt; i++) {
        GemmBf16 one = *g;
        one.batch = 1;
        one.C = g->C + i * g->stride_c;
        one.bias = g->bias ? g->bias + i * g->stride_bias : NULL;
        if (bf16_run(s, &one, (const char *)a + (size_t)(i * g->stride_a) * 2, (const char *)b + (size_t)(i * g->stride_b) * 2))
            return VIT_ERR;
    }
    return VIT_OK;
}
