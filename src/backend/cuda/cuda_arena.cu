// The run's device memory: a few large cudaMalloc'd chunks, carved first-fit into 256-byte
// aligned blocks. The model plans all its buffers up front, so cudaMalloc runs a handful
// of times at start and never inside a training step; released blocks go back to their
// chunk's free list (merged with free neighbours) and chunks are freed only at the end.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_common.h"

enum { ALIGN = 256 };
static const size_t CHUNK_BYTES = (size_t)1 << 30;  // default chunk: 1 GiB
static const size_t CHUNK_ROUND = (size_t)2 << 20;  // chunks are whole 2 MiB pages

typedef struct { size_t off, size; } Span;

typedef struct {
    char *base;
    size_t size;
    Span *free;  // sorted by offset, never adjacent (merged on release)
    int nfree, capfree;
} Chunk;

typedef struct {
    char *ptr;
    size_t size;
    int chunk;
} Used;

struct CudaArena {
    Chunk *chunks;
    int nchunks, capchunks;
    Used *used;
    size_t nused, capused;
    pthread_mutex_t mu;  // the backend is used from one thread, but allocation should never race
};

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

CudaArena *cuda_arena_create(void) {
    CudaArena *a = (CudaArena *)calloc(1, sizeof *a);
    if (a) pthread_mutex_init(&a->mu, NULL);
    return a;
}

void cuda_arena_destroy(CudaArena *a) {
    if (!a) return;
    for (int i = 0; i < a->nchunks; i++) {
        cudaFree(a->chunks[i].base);
        free(a->chunks[i].free);
    }
    free(a->chunks);
    free(a->used);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static int span_insert(Chunk *c, int at, Span s) {
    if (c->nfree == c->capfree) {
        int cap = c->capfree ? 2 * c->capfree : 16;
        Span *n = (Span *)realloc(c->free, (size_t)cap * sizeof *n);
        if (!n) return VIT_ERR;
        c->free = n;
        c->capfree = cap;
    }
    memmove(c->free + at + 1, c->free + at, (size_t)(c->nfree - at) * sizeof(Span));
    c->free[at] = s;
    c->nfree++;
    return VIT_OK;
}

static void span_remove(Chunk *c, int at) {
    memmove(c->free + at, c->free + at + 1, (size_t)(c->nfree - at - 1) * sizeof(Span));
    c->nfree--;
}

// First fit inside existing chunks; NULL when none has room.
static char *carve(CudaArena *a, size_t need, int *chunk) {
    for (int ci = 0; ci < a->nchunks; ci++) {
        Chunk *c = &a->chunks[ci];
        for (int i = 0; i < c->nfree; i++) {
            Span *s = &c->free[i];
            if (s->size < need) continue;
            char *p = c->base + s->off;
            s->off += need;
            s->size -= need;
            if (s->size == 0) span_remove(c, i);
            *chunk = ci;
            return p;
        }
    }
    return NULL;
}

static int add_chunk(CudaArena *a, size_t need) {
    size_t want = round_up(need > CHUNK_BYTES ? need : CHUNK_BYTES, CHUNK_ROUND);
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && want > free_b) want = round_up(need, CHUNK_ROUND);
    cudaGetLastError();
    if (a->nchunks == a->capchunks) {
        int cap = a->capchunks ? 2 * a->capchunks : 8;
        Chunk *n = (Chunk *)realloc(a->chunks, (size_t)cap * sizeof *n);
        if (!n) return vit_fail("out of host memory for the device arena");
        a->chunks = n;
        a->capchunks = cap;
    }
    void *base = NULL;
    cudaError_t e = cudaMalloc(&base, want);
    if (e != cudaSuccess) {
        cudaGetLastError();  // an out-of-memory cudaMalloc must not poison later launch checks
        return vit_fail("--device cuda: out of GPU memory allocating %.1f MiB (cudaMalloc of %.1f MiB: %s; "
                        "%.1f MiB free of %.1f MiB)",
                        need / 1048576.0, want / 1048576.0, cudaGetErrorString(e), free_b / 1048576.0,
                        total_b / 1048576.0);
    }
    Chunk *c = &a->chunks[a->nchunks];
    memset(c, 0, sizeof *c);
    c->base = (char *)base;
    c->size = want;
    Span all = {0, want};
    if (span_insert(c, 0, all)) {
        cudaFree(base);
        return vit_fail("out of host memory for the device arena");
    }
    a->nchunks++;
    return VIT_OK;
}

void *cuda_arena_alloc(CudaArena *a, size_t bytes) {
    size_t need = round_up(bytes ? bytes : 1, ALIGN);
    pthread_mutex_lock(&a->mu);
    // Room for the record first, so a carved block is never lost to a failed realloc.
    if (a->nused == a->capused) {
        size_t cap = a->capused ? 2 * a->capused : 256;
        Used *n = (Used *)realloc(a->used, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&a->mu);
            vit_fail("out of host memory for the device arena");
            return NULL;
        }
        a->used = n;
        a->capused = cap;
    }
    int chunk = -1;
    char *p = carve(a, need, &chunk);
    if (!p && add_chunk(a, need) == VIT_OK) p = carve(a, need, &chunk);
    if (p) {
        Used u = {p, need, chunk};
        a->used[a->nused++] = u;
    }
    pthread_mutex_unlock(&a->mu);
    return p;
}

void cuda_arena_release(CudaArena *a, void *ptr) {
    if (!ptr) return;
    pthread_mutex_lock(&a->mu);
    size_t i = a->nused;
    while (i > 0 && a->used[i - 1].ptr != (char *)ptr) i--;  // recent blocks go first, usually
    if (i == 0) {
        pthread_mutex_unlock(&a->mu);
        return;  // not ours: ignore, as free() of a foreign pointer would be worse
    }
    Used u = a->used[i - 1];
    a->used[i - 1] = a->used[--a->nused];
    Chunk *c = &a->chunks[u.chunk];
    Span s = {(size_t)(u.ptr - c->base), u.size};
    int at = 0;
    while (at < c->nfree && c->free[at].off < s.off) at++;
    // Merge with the free span before and/or after.
    int merged = 0;
    if (at > 0 && c->free[at - 1].off + c->free[at - 1].size == s.off) {
        c->free[at - 1].size += s.size;
        merged = 1;
        if (at < c->nfree && s.off + s.size == c->free[at].off) {
            c->free[at - 1].size += c->free[at].size;
            span_remove(c, at);
        }
    } else if (at < c->nfree && s.off + s.size == c->free[at].off) {
        c->free[at].off = s.off;
        c->free[at].size += s.size;
        merged = 1;
    }
    if (!merged) span_insert(c, at, s);  // on host OOM the block is lost, never double-used
    pthread_mutex_unlock(&a->mu);
}
