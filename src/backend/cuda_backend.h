// The CUDA backend's public face: plain C, no CUDA headers, so the CLI and tests can
// include it (only in builds with -DVIT_CUDA, where the library has the backend).
#pragma once
#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// How matrix products compute. Everything else (activations, statistics, optimizer state)
// stays fp32 in all three.
typedef enum {
    CUDA_FP32,  // fp32 with TF32 off: the reference
    CUDA_TF32,  // fp32 in memory, TF32 tensor cores (--allow_tf32)
    CUDA_BF16,  // A and B rounded to bf16, fp32 accumulation and output (--dtype bf16)
} CudaPrecision;

// Number of usable CUDA devices; 0 (with vit_fail saying why) when there is no driver,
// no device, or the library was built without CUDA support for this machine.
int backend_cuda_device_count(void);

// Creates the backend on device `device`. NULL with a one-line vit_fail message when no
// device is there, the driver is missing or too old, or cuBLASLt cannot start, e.g.
// "no CUDA device found (cudaGetDeviceCount: no CUDA-capable device is detected)".
Backend *backend_cuda_create(int device, CudaPrecision precision);

// For the NCCL gradient all-reduce (src/dist/nccl_sync.c), which must order its work against
// the backend's: the device and the one stream every op runs on (a cudaStream_t). -1 / NULL
// when `be` is not a backend made by backend_cuda_create (a profiling wrapper is not).
int backend_cuda_device(Backend *be);
void *backend_cuda_stream(Backend *be);

// Opt-in switches, read from the environment by backend_cuda_create (docs/gpu.md; never run on
// a GPU yet): VIT_CUDA_ATTENTION=simt|wmma|mma|cudnn picks the bf16 attention kernels (cudnn:
// cuDNN's fused SDPA), VIT_CUDA_EPILOGUES=1 turns on cuBLASLt epilogue products (and the op
// table's gemm_bias_gelu). Other values make backend_cuda_create fail with a message.
//
// Epilogue products the op table has no place for yet (the proposed optional ops are in
// docs/gpu.md). Each computes exactly the composition of table ops named, as one cuBLASLt call
// where VIT_CUDA_EPILOGUES=1 and an algorithm exists, else by those ops; VIT_ERR with a
// message on failure. All matrices row-major; rows = tokens.
//   wgrad_bgrad: dW (in x out) += x^T dy, dbias (out) += column sums of dy: linear_backward's
//     weight and bias gradients (gemm + bias_backward; epilogue BGRADA).
//   bias_gelu_aux: pre = x W + bias, y = GELU(pre) (gemm + gelu_forward; GELU_AUX_BIAS, tanh only).
//   dgelu_bgrad: dx = (dy W^T) * GELU'(pre), dbias (in) += column sums of dx (gemm +
//     gelu_dropout_backward at rate 0; DGELU_BGRAD, tanh only).
int backend_cuda_gemm_wgrad_bgrad(Backend *be, int rows, int in, int out, const float *x, const float *dy, float *dW,
                                  float *dbias);
int backend_cuda_gemm_bias_gelu_aux(Backend *be, int rows, int in, int out, const float *x, const float *W,
                                    const float *bias, float *pre, float *y, int tanh_approx);
int backend_cuda_gemm_dgelu_bgrad(Backend *be, int rows, int in, int out, const float *dy, const float *W,
                                  const float *pre, float *dx, float *dbias, int tanh_approx);
// How many epilogue products (the three above and gemm_bias_gelu) ran fused and how many ran
// as the plain ops, since creation (0, 0 for a backend that is not CUDA's).
void backend_cuda_epilogue_counts(Backend *be, long *fused, long *unfused);
// The kernels the last attention call ran: "cudnn", "mma", "wmma", "simt" or "none".
const char *backend_cuda_attention_last(Backend *be);

#ifdef __cplusplus
}
#endif
