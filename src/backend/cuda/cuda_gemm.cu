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
#include "cuda_common.h"

typedef struct {
    int batch, M, N, K, transA, transB, has_bias, accumulate;
    unsigned align_a, align_b, align_c, align_bias;  // bytes, of what cuBLASLt is handed
    int fused_bias;                                  // 0: bias added by cuda_add_bias after the product
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;               // cuBLASLt's A (our B), B (our A), C = D
    cublasLtMatmulAlgo_t algo;
} GemmEntry;

struct GemmCache {
    GemmEntry *entries;
    int count, capacity;
};

GemmCache *cuda_gemm_cache_create(void) { return (GemmCache *)calloc(1, sizeof(GemmCache)); }

static void entry_free(GemmEntry *e) {
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    e->op = NULL, e->la = e->lb = e->lc = NULL;
}

void cuda_gemm_cache_destroy(GemmCache *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) entry_free(&c->entries[i]);
    free(c->entries);
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

// Builds descriptors and picks the algorithm; with a bias that no algorithm fuses, falls
// back to an unfused product (and a separate bias kernel).
static int entry_create(CudaState *s, GemmEntry *e, const void *bias_ptr) {
    const char *why = "";
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulPreference_t pref = NULL;
    int bf16 = s->precision == CUDA_BF16;
    cudaDataType ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t compute = s->precision == CUDA_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    int M = e->M, N = e->N, K = e->K;
    // cuBLASLt A = our B: stored K x N row-major (N x K column-major, used as is) or N x K (transposed).
    LT(layout(&e->la, ab, e->transB ? K : N, e->transB ? N : K, e->transB ? K : N, e->batch, (int64_t)K * N));
    // cuBLASLt B = our A: stored M x K row-major (K x M column-major) or K x M (transposed).
    LT(layout(&e->lb, ab, e->transA ? M : K, e->transA ? K : M, e->transA ? M : K, e->batch, (int64_t)M * K));
    LT(layout(&e->lc, CUDA_R_32F, N, M, N, e->batch, (int64_t)M * N));
    LT(cublasLtMatmulPreferenceCreate(&pref));
    {
        uint64_t ws = s->workspace_bytes;
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        uint32_t aa = e->align_b, ba = e->align_a, ca = e->align_c;  // cuBLASLt's A is our B
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ba, sizeof ba));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ca, sizeof ca));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ca, sizeof ca));
    }
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
    size_t nA = (size_t)batch * M * K, nB = (size_t)batch * K * N;
    const void *a_op = A, *b_op = B;
    size_t esize = sizeof(float);
    if (s->precision == CUDA_BF16) {
        // Activations stay fp32: round both operands to bf16 copies in scratch first.
        size_t offB = (nA * 2 + 255) / 256 * 256;
        char *buf = (char *)cuda_scratch(s, &s->bf16, &s->bf16_bytes, offB + nB * 2, "gemm (bf16 operands)");
        if (!buf) return VIT_ERR;
        to_bf16_kernel<<<cuda_blocks(s, nA, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)buf, A, nA);
        to_bf16_kernel<<<cuda_blocks(s, nB, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)(buf + offB), B, nB);
        if (cuda_check_launch(s, "gemm (bf16 operands)")) return VIT_ERR;
        a_op = buf;
        b_op = buf + offB;
        esize = 2;
    }
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
