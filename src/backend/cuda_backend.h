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

#ifdef __cplusplus
}
#endif
