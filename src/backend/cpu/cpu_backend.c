// The CPU backend: memory is plain aligned host memory; ops live in cpu_*.c.
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "cpu.h"
#include "cpu_isa.h"
#include "util/status.h"

static void *cpu_alloc(Backend *be, size_t bytes) {
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded ? rounded : 64)) {
        vit_fail("out of memory allocating %.1f MiB", bytes / 1048576.0);
        return NULL;
    }
    return p;
}

static void cpu_release(Backend *be, void *p) { free(p); }
static void cpu_copy(Backend *be, void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_zero(Backend *be, void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_synchronize(Backend *be) {}
// The CPU's device memory is host memory: an upload is a copy, done when it returns.
static void cpu_wait_uploads(Backend *be) {}

static void cpu_destroy(Backend *be) {
    CpuState *s = be->impl;
    cpu_gemm_cache_destroy(s->gemm);
    free(s->partials);
    free(s);
    free(be);
}

void backend_cpu_set_bf16(Backend *be, int on) { ((CpuState *)be->impl)->bf16 = on; }

Backend *backend_cpu_create(int threads) {
    Backend *be = calloc(1, sizeof *be);
    CpuState *s = calloc(1, sizeof *s);
    if (!be || !s) {
        free(be);
        free(s);
        vit_fail("out of memory creating the CPU backend");
        return NULL;
    }
    if (threads > 0) omp_set_num_threads(threads);
    s->threads = omp_get_max_threads();
    s->gemm = cpu_gemm_cache_create();
    if (!s->gemm) {
        free(be);
        free(s);
        vit_fail("oneDNN: cannot create a CPU engine");
        return NULL;
    }
    be->name = "cpu";
    snprintf(s->details, sizeof s->details, "%s matmul, %s kernels, %d threads", cpu_gemm_library(s->gemm),
             cpu_isa_name(cpu_isa()), s->threads);
    be->details = s->details;
    be->impl = s;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->zero = cpu_zero;
    be->synchronize = cpu_synchronize;
    be->alloc_host = cpu_alloc;
    be->release_host = cpu_release;
    be->upload_async = cpu_copy;
    be->wait_uploads = cpu_wait_uploads;
    be->gemm = cpu_gemm;
    be->gemm_bias_gelu = cpu_gemm_bias_gelu;
    be->destroy = cpu_destroy;
    cpu_install_ops(be);
    cpu_install_regularize(be);
    cpu_install_attention(be);
    cpu_install_optimizer(be);
    return be;
}
