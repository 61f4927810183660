#include "nccl_sync.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/status.h"

#ifdef VIT_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#include "backend/cuda_backend.h"

struct NcclSync {
    int device;
    ncclComm_t comm;
    cudaStream_t compute;   // the backend's stream (not ours to destroy)
    cudaStream_t stream;    // the sums run here
    cudaEvent_t ready;      // compute work up to a grad_ready call (ordering only)
    cudaEvent_t bwd_end, sums_end;  // the backward pass's end and the last sum's, timed
    int timing_pending;     // bwd_end/sums_end recorded and not yet added to wait
    double wait;
    int failed;
    char error[512];
};

// The first failure, kept for finish (start has no status to return).
static int nfail(NcclSync *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int nfail(NcclSync *s, const char *fmt, ...) {
    if (!s->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->error, sizeof s->error, fmt, ap);
        va_end(ap);
        s->failed = 1;
    }
    return vit_fail("%s", s->error);
}

static int ck_cuda(NcclSync *s, cudaError_t e, const char *call) {
    if (e == cudaSuccess) return VIT_OK;
    return nfail(s, "%s failed: %s (%s)", call, cudaGetErrorString(e), cudaGetErrorName(e));
}

static int ck_nccl(NcclSync *s, ncclResult_t r, const char *call) {
    if (r == ncclSuccess) return VIT_OK;
    // ncclGetLastError holds the detail (which peer, which transport) when NCCL has any.
    const char *last = s->comm ? ncclGetLastError(s->comm) : ncclGetLastError(NULL);
    return nfail(s, "%s failed: %s%s%s%s", call, ncclGetErrorString(r), last && *last ? " (" : "",
                 last && *last ? last : "", last && *last ? ")" : "");
}

NcclSync *nccl_sync_create(Backend *cuda) {
    int device = backend_cuda_device(cuda);
    void *compute = backend_cuda_stream(cuda);
    if (device < 0 || !compute) {
        vit_fail("NCCL gradient sums need the CUDA backend itself (--device cuda)");
        return NULL;
    }
    NcclSync *s = calloc(1, sizeof *s);
    if (!s) {
        vit_fail("out of memory for the NCCL state");
        return NULL;
    }
    s->device = device;
    s->compute = (cudaStream_t)compute;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int least, greatest;
    // A sum waits for its peers; at high priority its kernels get SMs as soon as they are
    // ready instead of queueing behind the backward pass's (what the overlap needs).
    if (ck_cuda(s, cudaSetDevice(device), "cudaSetDevice") ||
        (dist_rank() == 0 && ck_nccl(s, ncclGetUniqueId(&id), "ncclGetUniqueId")) ||
        dist_bcast(&id, sizeof id, 0) ||
        ck_nccl(s, ncclCommInitRank(&s->comm, dist_size(), id, dist_rank()), "ncclCommInitRank") ||
        ck_cuda(s, cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange") ||
        ck_cuda(s, cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking, greatest), "cudaStreamCreate") ||
        ck_cuda(s, cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming), "cudaEventCreate") ||
        ck_cuda(s, cudaEventCreate(&s->bwd_end), "cudaEventCreate") ||
        ck_cuda(s, cudaEventCreate(&s->sums_end), "cudaEventCreate")) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", vit_error());
        nccl_sync_destroy(s);
        vit_fail("--distributed --device cuda: %s", msg);
        return NULL;
    }
    return s;
}

void nccl_sync_destroy(NcclSync *s) {
    if (!s) return;
    cudaSetDevice(s->device);
    if (s->stream) cudaStreamSynchronize(s->stream);
    // After a failure the peers may be gone: abort rather than wait for them in destroy.
    if (s->comm && s->failed)
        ncclCommAbort(s->comm);
    else if (s->comm)
        ncclCommDestroy(s->comm);
    if (s->ready) cudaEventDestroy(s->ready);
    if (s->bwd_end) cudaEventDestroy(s->bwd_end);
    if (s->sums_end) cudaEventDestroy(s->sums_end);
    if (s->stream) cudaStreamDestroy(s->stream);
    cudaGetLastError();  // leave no sticky error behind for the backend
    free(s);
}

// Adds the last window's exposed wait: from the end of the backward pass to the end of the sums.
static void add_pending_wait(NcclSync *s) {
    if (!s->timing_pending) return;
    s->timing_pending = 0;
    float ms = 0;
    if (cudaEventSynchronize(s->sums_end) == cudaSuccess && cudaEventElapsedTime(&ms, s->bwd_end, s->sums_end) == cudaSuccess &&
        ms > 0)
        s->wait += ms / 1000.0;
    cudaGetLastError();
}

static void sync_start(void *ctx, float *buf, size_t count) {
    NcclSync *s = ctx;
    if (s->failed) return;
    // The bucket's gradients are final once the compute stream's work so far is done.
    if (ck_cuda(s, cudaEventRecord(s->ready, s->compute), "cudaEventRecord") ||
        ck_cuda(s, cudaStreamWaitEvent(s->stream, s->ready, 0), "cudaStreamWaitEvent"))
        return;
    ck_nccl(s, ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, s->comm, s->stream), "ncclAllReduce");
}

static int sync_finish(void *ctx) {
    NcclSync *s = ctx;
    if (s->failed) return vit_fail("%s", s->error);
    add_pending_wait(s);
    if (ck_cuda(s, cudaEventRecord(s->bwd_end, s->compute), "cudaEventRecord") ||
        ck_cuda(s, cudaEventRecord(s->sums_end, s->stream), "cudaEventRecord") ||
        ck_cuda(s, cudaStreamWaitEvent(s->compute, s->sums_end, 0), "cudaStreamWaitEvent"))
        return VIT_ERR;
    s->timing_pending = 1;
    // Errors of sums already done (a peer lost, a network fault) surface here, one window late at most.
    ncclResult_t async = ncclSuccess;
    if (ck_nccl(s, ncclCommGetAsyncError(s->comm, &async), "ncclCommGetAsyncError")) return VIT_ERR;
    return ck_nccl(s, async, "ncclAllReduce (asynchronous)");
}

static double sync_wait_seconds(void *ctx) {
    NcclSync *s = ctx;
    add_pending_wait(s);
    return s->wait;
}

// --zero 1: rank r's updated part, buf[displs[r], +counts[r]), broadcast from r to all, in
// place; one NCCL group, so the parts move together. On the compute stream: after the update
// that wrote them, before the next forward pass reads them (and before the next step's sums,
// whose stream waits for the compute stream first), with no host wait.
static int sync_allgather(void *ctx, float *buf, const int *counts, const int *displs) {
    NcclSync *s = ctx;
    if (s->failed) return vit_fail("%s", s->error);
    if (ck_nccl(s, ncclGroupStart(), "ncclGroupStart")) return VIT_ERR;
    for (int r = 0; r < dist_size(); r++) {
        float *part = buf + displs[r];
        if (ck_nccl(s, ncclBroadcast(part, part, (size_t)counts[r], ncclFloat, r, s->comm, s->compute),
                    "ncclBroadcast (parameter all-gather)")) {
            ncclGroupEnd();
            return VIT_ERR;
        }
    }
    return ck_nccl(s, ncclGroupEnd(), "ncclGroupEnd (parameter all-gather)");
}

GradTransport nccl_sync_transport(NcclSync *s) {
    GradTransport t = {"NCCL", s, sync_start, sync_finish, sync_wait_seconds, sync_allgather};
    return t;
}

#else  // built without NCCL

struct NcclSync {
    int unused;
};

NcclSync *nccl_sync_create(Backend *cuda) {
    (void)cuda;
    vit_fail("--distributed --device cuda: this vit was built without NCCL (install it so that nccl.h is in CUDA's "
             "include folder or /usr/include, then rebuild with make)");
    return NULL;
}
void nccl_sync_destroy(NcclSync *s) { free(s); }
GradTransport nccl_sync_transport(NcclSync *s) {
    GradTransport t = {"NCCL", s, NULL, NULL, NULL, NULL};
    return t;
}
#endif
