// The CUDA backend: device selection, the arena-backed memory ops, error bookkeeping and
// the op table. Ops live in cuda_*.cu; all of them run in order on one stream.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_bf16_acts.h"
#include "cuda_common.h"

static const size_t WORKSPACE_BYTES = (size_t)32 << 20;  // cuBLASLt's advice for Hopper

int cuda_fail(CudaState *s, const char *op, const char *fmt, ...) {
    if (!s->failed) {
        int n = snprintf(s->error, sizeof s->error, "cuda %s: ", op);
        va_list ap;
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < sizeof s->error) vsnprintf(s->error + n, sizeof s->error - n, fmt, ap);
        va_end(ap);
        s->failed = 1;
    }
    return vit_fail("%s", s->error);
}

int cuda_check(CudaState *s, cudaError_t e, const char *op) {
    if (e == cudaSuccess) return VIT_OK;
    return cuda_fail(s, op, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
}

int cuda_check_launch(CudaState *s, const char *op) { return cuda_check(s, cudaGetLastError(), op); }

int cuda_failed(CudaState *s) { return s->failed ? vit_fail("%s", s->error) : VIT_OK; }

void *cuda_scratch(CudaState *s, void **buf, size_t *cap, size_t bytes, const char *what) {
    if (bytes <= *cap && *buf) return *buf;
    cuda_arena_release(s->arena, *buf);
    *cap = 0;
    size_t want = (bytes + ((size_t)1 << 20) - 1) >> 20 << 20;  // whole MiB: fewer regrowths
    *buf = cuda_arena_alloc(s->arena, want);
    if (!*buf) {
        cuda_fail(s, what, "%s", vit_error());
        return NULL;
    }
    *cap = want;
    return *buf;
}

static void *cu_alloc(Backend *be, size_t bytes) {
    CudaState *s = cuda_state(be);
    return cuda_arena_alloc(s->arena, bytes);  // NULL with the arena's message naming the size
}

static void cu_release(Backend *be, void *p) { cuda_arena_release(cuda_state(be)->arena, p); }

// Host buffers are ordinary (pageable) memory the caller may reuse at once: wait for the copy.
static void cu_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaState *s = cuda_state(be);
    if (s->failed || !bytes) return;
    if (cuda_check(s, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s->stream), "upload")) return;
    cuda_check(s, cudaStreamSynchronize(s->stream), "upload");
}

// After a failure the host buffer is filled with NaN bytes: never a silently stale result.
static void cu_download(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaState *s = cuda_state(be);
    if (!bytes) return;
    if (!s->failed && !cuda_check(s, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s->stream), "download"))
        cuda_check(s, cudaStreamSynchronize(s->stream), "download");
    if (s->failed) memset(dst, 0xff, bytes);
}

// Page-locked: the copy engine reads it directly, so copies from it are truly asynchronous.
static void *cu_alloc_host(Backend *be, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is the caller's to report, not a broken device
        vit_fail("out of page-locked host memory allocating %.1f MiB (%s)", bytes / 1048576.0, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cu_release_host(Backend *be, void *p) {
    if (p) cuda_check(cuda_state(be), cudaFreeHost(p), "release_host");
}

// The copy waits for the ops issued so far (dst may be the input of one of them) and then
// runs on the copy stream while later ops run; wait_uploads joins it back into the op stream.
static void cu_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaState *s = cuda_state(be);
    if (s->failed || !bytes) return;
    if (cuda_check(s, cudaEventRecord(s->ops_issued, s->stream), "upload_async") ||
        cuda_check(s, cudaStreamWaitEvent(s->copy_stream, s->ops_issued, 0), "upload_async") ||
        cuda_check(s, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s->copy_stream), "upload_async"))
        return;
    cuda_check(s, cudaEventRecord(s->copies_done, s->copy_stream), "upload_async");
}

static void cu_wait_uploads(Backend *be) {
    CudaState *s = cuda_state(be);
    if (!s->failed) cuda_check(s, cudaStreamWaitEvent(s->stream, s->copies_done, 0), "wait_uploads");
}

static void cu_zero(Backend *be, void *p, size_t bytes) {
    CudaState *s = cuda_state(be);
    if (s->failed || !bytes) return;
    cuda_check(s, cudaMemsetAsync(p, 0, bytes, s->stream), "zero");
}

static void cu_synchronize(Backend *be) {
    CudaState *s = cuda_state(be);
    if (!s->failed && !cuda_check(s, cudaStreamSynchronize(s->stream), "synchronize"))
        cuda_check(s, cudaStreamSynchronize(s->copy_stream), "synchronize");
}

static void cu_destroy(Backend *be) {
    if (!be) return;
    CudaState *s = cuda_state(be);
    if (s) {
        if (s->stream) cudaStreamSynchronize(s->stream);
        if (s->copy_stream) cudaStreamSynchronize(s->copy_stream);
        cuda_attention_cudnn_destroy(s);
        cuda_gemm_cache_destroy(s->gemm);
        if (s->lt) cublasLtDestroy(s->lt);
        cuda_arena_destroy(s->arena);
        if (s->stream) cudaStreamDestroy(s->stream);
        if (s->copy_stream) cudaStreamDestroy(s->copy_stream);
        if (s->ops_issued) cudaEventDestroy(s->ops_issued);
        if (s->copies_done) cudaEventDestroy(s->copies_done);
        cudaGetLastError();
        free(s->optim_host);  // its device table went with the arena
        free(s->optim_segs);
        free(s);
    }
    free(be);
}

int cuda_is_backend(Backend *be) { return be && be->destroy == cu_destroy; }

int backend_cuda_device(Backend *be) {
    return be && be->destroy == cu_destroy ? cuda_state(be)->device : -1;
}

void *backend_cuda_stream(Backend *be) {
    return be && be->destroy == cu_destroy ? (void *)cuda_state(be)->stream : NULL;
}

int backend_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        vit_fail("--device cuda: no CUDA device found (cudaGetDeviceCount: %s)", cudaGetErrorString(e));
        return 0;
    }
    if (n <= 0) vit_fail("--device cuda: no CUDA device found (cudaGetDeviceCount: 0 devices)");
    return n > 0 ? n : 0;
}

// The opt-in switches (docs/gpu.md), read once at creation: VIT_CUDA_ATTENTION picks the bf16
// attention kernels, VIT_CUDA_EPILOGUES=1 turns on the cuBLASLt epilogue products.
static int read_switches(CudaState *s) {
    static const char *names[] = {"", "simt", "wmma", "mma", "cudnn"};
    const char *att = getenv("VIT_CUDA_ATTENTION"), *epi = getenv("VIT_CUDA_EPILOGUES");
    s->attention = CUDA_ATT_AUTO;
    if (att && *att) {
        int found = 0;
        for (int i = 1; i < 5 && !found; i++)
            if (!strcmp(att, names[i])) s->attention = (CudaAttention)i, found = 1;
        if (!found) return vit_fail("VIT_CUDA_ATTENTION=%s: expected simt, wmma, mma or cudnn", att);
    }
    if (s->attention == CUDA_ATT_CUDNN && cuda_attention_cudnn_missing())
        return vit_fail("VIT_CUDA_ATTENTION=cudnn: %s", cuda_attention_cudnn_missing());
    s->attention_mma = s->attention == CUDA_ATT_MMA;
    if (epi && *epi && strcmp(epi, "0") && strcmp(epi, "1"))
        return vit_fail("VIT_CUDA_EPILOGUES=%s: expected 0 or 1", epi);
    s->epilogues = epi && !strcmp(epi, "1");
    const char *prec = s->precision == CUDA_BF16 ? "bf16" : s->precision == CUDA_TF32 ? "tf32" : "fp32";
    snprintf(s->details, sizeof s->details, "cuBLASLt %s products%s, attention: %s", prec,
             s->epilogues ? " with epilogues" : "",
             s->precision != CUDA_BF16 ? "simt" : s->attention == CUDA_ATT_AUTO ? "wmma" : names[s->attention]);
    return VIT_OK;
}

// Fails the creation: frees what exists and leaves one message.
static Backend *create_failed(Backend *be, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static Backend *create_failed(Backend *be, const char *fmt, ...) {
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cu_destroy(be);
    vit_fail("--device cuda: %s", msg);
    return NULL;
}

Backend *backend_cuda_create(int device, CudaPrecision precision) {
    int count = backend_cuda_device_count();
    if (count == 0) return NULL;
    if (device < 0 || device >= count) {
        vit_fail("--device cuda: device %d does not exist (%d found)", device, count);
        return NULL;
    }
    if (precision != CUDA_FP32 && precision != CUDA_TF32 && precision != CUDA_BF16) {
        vit_fail("--device cuda: unknown precision %d", (int)precision);
        return NULL;
    }
    Backend *be = (Backend *)calloc(1, sizeof *be);
    CudaState *s = (CudaState *)calloc(1, sizeof *s);
    if (!be || !s) {
        free(be);
        free(s);
        vit_fail("out of memory creating the CUDA backend");
        return NULL;
    }
    be->impl = s;
    s->device = device;
    s->precision = precision;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return create_failed(be, "cudaSetDevice: %s", cudaGetErrorString(e));
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess) return create_failed(be, "cudaGetDeviceProperties: %s", cudaGetErrorString(e));
    if (prop.major < 8)
        return create_failed(be, "%s has compute capability %d.%d; this build needs 8.0 or newer", prop.name,
                             prop.major, prop.minor);
    s->sm_count = prop.multiProcessorCount;
    if (read_switches(s)) return create_failed(be, "%s", vit_error());
    s->smem_optin = prop.sharedMemPerBlockOptin;
    e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s->copy_stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) return create_failed(be, "cudaStreamCreate: %s", cudaGetErrorString(e));
    e = cudaEventCreateWithFlags(&s->ops_issued, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->copies_done, cudaEventDisableTiming);
    if (e != cudaSuccess) return create_failed(be, "cudaEventCreate: %s", cudaGetErrorString(e));
    cublasStatus_t st = cublasLtCreate(&s->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        s->lt = NULL;
        return create_failed(be, "cublasLtCreate: %s", cublasLtGetStatusString(st));
    }
    s->arena = cuda_arena_create();
    s->gemm = cuda_gemm_cache_create();
    if (!s->arena || !s->gemm) return create_failed(be, "%s", "out of host memory");
    s->workspace = cuda_arena_alloc(s->arena, WORKSPACE_BYTES);
    if (!s->workspace) return create_failed(be, "%s", vit_error());
    s->workspace_bytes = WORKSPACE_BYTES;

    be->name = "cuda";
    be->details = s->details;
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->upload = cu_upload;
    be->download = cu_download;
    be->zero = cu_zero;
    be->synchronize = cu_synchronize;
    be->alloc_host = cu_alloc_host;
    be->release_host = cu_release_host;
    be->upload_async = cu_upload_async;
    be->wait_uploads = cu_wait_uploads;
    be->gemm = cuda_gemm;
    be->destroy = cu_destroy;
    cuda_install_ops(be);
    cuda_install_regularize(be);
    cuda_install_attention(be);
    cuda_install_optimizer(be);
    cuda_install_epilogues(be);  // after the ops: its fallbacks call them
    if (cuda_install_bf16_acts(be)) return create_failed(be, "%s", vit_error());  // opt-in, after the ops
    return be;
}
