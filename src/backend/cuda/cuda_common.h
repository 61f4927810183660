// Internal declarations shared by the CUDA backend's files (compiled by nvcc only).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend/backend.h"
#include "util/status.h"
}
#include "backend/cuda_backend.h"

typedef struct CudaArena CudaArena;
typedef struct GemmCache GemmCache;
typedef struct CudnnAttn CudnnAttn;

// Which attention kernels run with bf16 precision (VIT_CUDA_ATTENTION, read at creation):
// AUTO and WMMA pick the WMMA kernels where usable; fp32 and tf32 always run the SIMT kernels.
typedef enum { CUDA_ATT_AUTO = 0, CUDA_ATT_SIMT, CUDA_ATT_WMMA, CUDA_ATT_MMA, CUDA_ATT_CUDNN } CudaAttention;

typedef struct {
    int device;
    CudaPrecision precision;
    int sm_count;
    size_t smem_optin;              // largest dynamic shared memory a block may ask for
    cudaStream_t stream;            // every op runs on this one stream, in order
    cudaStream_t copy_stream;       // upload_async's copies, beside the ops
    cudaEvent_t ops_issued;         // where the ops stood when a copy was started
    cudaEvent_t copies_done;        // after the newest copy started
    CudaArena *arena;
    cublasLtHandle_t lt;
    GemmCache *gemm;
    void *workspace;                // the one cuBLASLt workspace
    size_t workspace_bytes;
    void *bf16;                     // bf16 copies of gemm operands (CUDA_BF16)
    size_t bf16_bytes;
    void *reduce;                   // partial sums of reductions (doubles)
    size_t reduce_bytes;
    // optimizer_update_segments' chunk table (cuda_optim.cu), rebuilt only when the segments
    // change: the device copy, its host source (kept alive for the asynchronous copy) and
    // the segments it was built from (the cache key).
    void *optim_chunks;
    size_t optim_chunks_bytes;
    void *optim_host;
    size_t optim_host_cap;          // in chunks
    OptimSegment *optim_segs;
    int optim_nsegs, optim_segs_cap, optim_nchunks;
    int attention_mma;              // VIT_CUDA_ATTENTION=mma: the mma.sync attention kernels
    CudaAttention attention;        // VIT_CUDA_ATTENTION (attention_mma is attention == CUDA_ATT_MMA)
    CudnnAttn *cudnn;               // cuDNN handle, plans and buffers, made on first use
    const char *attention_last;     // the kernels the last attention pass ran (tests, logs)
    int epilogues;                  // VIT_CUDA_EPILOGUES=1: cuBLASLt epilogue products (cuda_gemm.cu)
    void *bgrad;                    // a bias-gradient epilogue's output, before it is added (+=)
    size_t bgrad_bytes;
    long epi_fused, epi_unfused;    // epilogue products run fused / as the plain ops
    char details[160];              // Backend.details
    int failed;                     // a CUDA call failed: later ops do nothing, int ops report it
    char error[512];
} CudaState;

static inline CudaState *cuda_state(Backend *be) { return (CudaState *)be->impl; }

// Records the first failure (message "<op>: ...") and returns VIT_ERR; later failures keep
// the first message, which is the one that explains the rest.
int cuda_fail(CudaState *s, const char *op, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// VIT_OK when e is cudaSuccess, else cuda_fail naming op and the CUDA error string.
int cuda_check(CudaState *s, cudaError_t e, const char *op);
// Checks the launch that just happened (configuration errors and earlier asynchronous faults).
int cuda_check_launch(CudaState *s, const char *op);
// For ops that return a status: VIT_ERR (re-raising the recorded message) once anything failed.
int cuda_failed(CudaState *s);

// Device memory from the run's arena: large cudaMalloc'd chunks carved into 256-byte
// aligned blocks. alloc returns NULL with vit_fail naming the size when the device is full.
CudaArena *cuda_arena_create(void);
void *cuda_arena_alloc(CudaArena *a, size_t bytes);
void cuda_arena_release(CudaArena *a, void *p);
void cuda_arena_destroy(CudaArena *a);

// A scratch buffer that grows (from the arena) to at least `bytes` and never shrinks, so
// steps after the first allocate nothing. NULL (and a recorded failure) when out of memory.
void *cuda_scratch(CudaState *s, void **buf, size_t *cap, size_t bytes, const char *what);

// Grid-stride loop over n elements; launches size their grids with cuda_blocks.
#define CUDA_FOR(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)gridDim.x * blockDim.x)

// Blocks for a grid-stride loop over n elements.
static inline unsigned cuda_blocks(const CudaState *s, size_t n, int threads) {
    size_t b = (n + threads - 1) / threads, cap = (size_t)s->sm_count * 32;
    if (b > cap) b = cap;
    return b ? (unsigned)b : 1u;
}

GemmCache *cuda_gemm_cache_create(void);
void cuda_gemm_cache_destroy(GemmCache *c);
int cuda_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B, int transB,
              float *C, const float *bias, float alpha, int accumulate);
// out[i, j] += bias[j] over rows x cols (the unfused bias path of cuda_gemm).
void cuda_add_bias(CudaState *s, float *out, const float *bias, size_t rows, int cols);

void cuda_install_ops(Backend *be);
// drop_path, mix_images, xent_mix_forward/backward (cuda_regularize.cu).
void cuda_install_regularize(Backend *be);
void cuda_install_attention(Backend *be);
// Kernels needing more than the default 48 KiB of dynamic shared memory must say so first.
template <typename Kernel>
static int cuda_allow_smem(CudaState *s, Kernel kernel, size_t bytes, const char *op) {
    if (bytes <= 48 * 1024) return VIT_OK;
    if (bytes > s->smem_optin)
        return cuda_fail(s, op, "needs %zu bytes of shared memory, the device allows %zu", bytes, s->smem_optin);
    return cuda_check(s, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes), op);
}
// Tensor-core (WMMA bf16) attention, same op and state as the fp32 kernels: used when the
// precision is CUDA_BF16, hd is 32, 64 or 128 and the loaded arrays are 16-byte aligned.
int cuda_attention_tc_usable(const CudaState *s, int hd, const void *const *ptrs, int n);
int cuda_attention_tc_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int hd);
int cuda_attention_tc_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B, int T, int H, int hd);
// D_i = dO_i . O_i per (b, h, row) into Dvec (B*H*T floats), for the tensor-core backward passes.
int cuda_attention_d(CudaState *s, float *Dvec, const float *dout, const float *out, int B, int T, int H, int hd);
// Register-resident mma.sync attention (cuda_attention_mma.cu): used instead of the WMMA
// kernels when VIT_CUDA_ATTENTION=mma was set at backend creation, the precision is bf16, hd is
// 32 or 64 and the arrays are 16-byte aligned.
int cuda_attention_mma_usable(const CudaState *s, int hd, const void *const *ptrs, int n);
int cuda_attention_mma_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                               int B, int T, int H, int hd);
int cuda_attention_mma_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B,
                                int T, int H, int hd);
void cuda_install_optimizer(Backend *be);

// Whether be was made by backend_cuda_create (cuda_backend.cu).
int cuda_is_backend(Backend *be);
// cuBLASLt epilogue products (cuda_gemm.cu): installs gemm_bias_gelu when s->epilogues is set.
void cuda_install_epilogues(Backend *be);

// cuDNN's fused attention (cuda_attention_cudnn.cu; VIT_CUDA_ATTENTION=cudnn). NULL when this
// build has cuDNN, else why not (the message for a VIT_CUDA_ATTENTION=cudnn request).
const char *cuda_attention_cudnn_missing(void);
// Used for the forward pass when selected, the precision is bf16 and hd is a multiple of 8.
int cuda_attention_cudnn_usable(const CudaState *s, int hd);
// Forward through cuDNN's SDPA operation: out, and lse (B*H*T floats, the same row
// log-sum-exp the other kernels keep). VIT_ERR with a message when cuDNN offers no engine.
int cuda_attention_cudnn_forward(CudaState *s, float *out, float *lse, const float *q, const float *k,
                                 const float *v, int B, int T, int H, int hd);
// Backward through cuDNN's SDPA backward operation: 1 when it ran, 0 when cuDNN has no engine
// for it (nothing queued: the caller runs its own kernels from the same lse), VIT_ERR on failure.
int cuda_attention_cudnn_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout,
                                  const float *out, const float *lse, const float *q, const float *k,
                                  const float *v, int B, int T, int H, int hd);
void cuda_attention_cudnn_destroy(CudaState *s);
