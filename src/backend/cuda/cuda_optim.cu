// Optimizer updates on the device over fp32 master weights, the formulas of
// src/backend/cpu/cpu_optim.c: step constants are computed on the host exactly as there,
// and the element updates use round-to-nearest intrinsics so that no product is fused
// into an fma here that the CPU rounds separately. The one-range kernels and the
// multi-segment kernel run the same *_element functions, so they give the same bits.
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_common.h"
#include "cuda_reduce.h"

#define MUL __fmul_rn
#define ADD __fadd_rn
#define SUB __fsub_rn
#define DIV __fdiv_rn

// Step constants, computed on the host once per call.
struct StepArgs {
    float lr, gs, mom, b1, b2, one_b1, one_b2, rho, one_rho, eps, lr_t, inv_c1, inv_sqrt_c2;
    int keras;
    double c1, sqrt_c2;  // adam: lr_t of a scaled learning rate is derived from these
};

// One element of each update: parameter index ip (params, grads), slot index is (m, v).
// Slots a kind does not use are never touched, so they may be NULL.
__device__ __forceinline__ void sgd_element(float *p, const float *g, float *m, size_t ip, size_t is, StepArgs a,
                                            float decay) {
    float w = MUL(p[ip], decay);
    float mi = SUB(MUL(a.mom, m[is]), MUL(a.lr, MUL(g[ip], a.gs)));
    m[is] = mi;
    p[ip] = ADD(w, mi);
}

__device__ __forceinline__ void adam_element(float *p, const float *g, float *m, float *v, size_t ip, size_t is,
                                             StepArgs a, float decay) {
    float gi = MUL(g[ip], a.gs), w = MUL(p[ip], decay);
    float mi = ADD(MUL(a.b1, m[is]), MUL(a.one_b1, gi));
    float vi = ADD(MUL(a.b2, v[is]), MUL(MUL(a.one_b2, gi), gi));
    m[is] = mi;
    v[is] = vi;
    if (a.keras)  // Keras: p -= lr_t m / (sqrt(v) + eps)
        p[ip] = SUB(w, DIV(MUL(a.lr_t, mi), ADD(sqrtf(vi), a.eps)));
    else          // PyTorch AdamW: p -= lr (m / c1) / (sqrt(v / c2) + eps)
        p[ip] = SUB(w, DIV(MUL(a.lr, MUL(mi, a.inv_c1)), ADD(MUL(sqrtf(vi), a.inv_sqrt_c2), a.eps)));
}

__device__ __forceinline__ void rmsprop_element(float *p, const float *g, float *v, size_t ip, size_t is, StepArgs a,
                                                float decay) {
    float gi = MUL(g[ip], a.gs), w = MUL(p[ip], decay);
    float vi = ADD(MUL(a.rho, v[is]), MUL(MUL(a.one_rho, gi), gi));
    v[is] = vi;
    p[ip] = SUB(w, DIV(MUL(a.lr, gi), ADD(sqrtf(vi), a.eps)));
}

// KIND is OPT_SGD, OPT_ADAM (adam and adamw: a.keras tells them apart) or OPT_RMSPROP.
template <int KIND>
__device__ __forceinline__ void update_element(float *p, const float *g, float *m, float *v, size_t ip, size_t is,
                                               StepArgs a, float decay) {
    if constexpr (KIND == OPT_SGD)
        sgd_element(p, g, m, ip, is, a, decay);
    else if constexpr (KIND == OPT_RMSPROP)
        rmsprop_element(p, g, v, ip, is, a, decay);
    else
        adam_element(p, g, m, v, ip, is, a, decay);
}

template <int KIND>
__global__ void range_kernel(float *p, const float *g, float *m, float *v, size_t n, StepArgs a, float decay) {
    CUDA_FOR(i, n) update_element<KIND>(p, g, m, v, i, i, a, decay);
}

// One block per chunk of the segment table: chunks are at most CHUNK floats of one segment,
// so big tensors spread over many blocks and a 192-float bias costs one small block.
static const size_t CHUNK = 8192;  // 32 floats per thread: ~700 blocks for a ViT-Ti, ~10k for a ViT-B
enum { SEG_THREADS = 256 };

struct OptimChunk {
    size_t param, slot;  // first float of the chunk in params/grads and in m/v
    unsigned n;          // floats, 1..CHUNK
    int decay;
    float lr_scale;      // the segment's (layer-wise decay)
};

// A segment's constants, as cpu_optim.c's scaled_consts: lr = fp32(lr * lr_scale), lr_t from
// it in double, and the decay multiplier 1 - lr * wd (wd 0 where the segment has none).
template <int KIND>
__global__ void segments_kernel(float *p, const float *g, float *m, float *v, const OptimChunk *chunks, StepArgs a,
                                float wd) {
    const OptimChunk c = chunks[blockIdx.x];
    StepArgs b = a;
    b.lr = MUL(a.lr, c.lr_scale);
    if (KIND == OPT_ADAM) b.lr_t = (float)__ddiv_rn(__dmul_rn((double)b.lr, a.sqrt_c2), a.c1);
    const float decay = SUB(1.0f, MUL(b.lr, c.decay ? wd : 0.0f));
    for (unsigned i = threadIdx.x; i < c.n; i += blockDim.x)
        update_element<KIND>(p, g, m, v, c.param + i, c.slot + i, b, decay);
}

// ema = lerp(ema, params, w), PyTorch's two-sided form as cpu_optim.c's ema_update.
__global__ void ema_kernel(float *e, const float *p, size_t n, float w, float rest, int small) {
    CUDA_FOR(i, n) {
        const float d = SUB(p[i], e[i]);
        e[i] = small ? ADD(e[i], MUL(w, d)) : SUB(p[i], MUL(d, rest));
    }
}

// The constants exactly as cpu_optim.c computes them.
static StepArgs step_args(const OptimStep *st) {
    StepArgs a;
    memset(&a, 0, sizeof a);
    a.lr = st->lr;
    a.gs = st->grad_scale;
    a.mom = st->momentum;
    a.rho = st->rho;
    a.one_rho = 1.0f - st->rho;
    a.eps = st->epsilon;
    const float b1 = st->beta1, b2 = st->beta2;
    a.b1 = b1;
    a.b2 = b2;
    a.one_b1 = 1.0f - b1;
    a.one_b2 = 1.0f - b2;
    if (st->kind == OPT_ADAM || st->kind == OPT_ADAMW) {
        const double c1 = 1.0 - pow(b1, st->t), c2 = 1.0 - pow(b2, st->t);
        a.c1 = c1;
        a.sqrt_c2 = sqrt(c2);
        a.lr_t = (float)(a.lr * a.sqrt_c2 / c1);
        a.inv_c1 = (float)(1.0 / c1);
        a.inv_sqrt_c2 = (float)(1.0 / sqrt(c2));
    }
    a.keras = st->kind == OPT_ADAM;
    return a;
}

// The multiplier of decoupled weight decay for a range with decay wd.
static float decay_factor(const OptimStep *st, float wd) {
    const float lr_wd = st->lr * wd;
    return 1.0f - lr_wd;
}

// Fails (and returns 0) when the kind needs a slot it was not given.
static int slots_ok(CudaState *s, const char *op, OptimizerKind kind, const float *m, const float *v) {
    switch (kind) {
    case OPT_SGD:
        if (!m) cuda_fail(s, op, "sgd needs its momentum slot");
        return m != NULL;
    case OPT_ADAM:
    case OPT_ADAMW:
        if (!m || !v) cuda_fail(s, op, "adam needs both moment slots");
        return m && v;
    case OPT_RMSPROP:
        if (!v) cuda_fail(s, op, "rmsprop needs its second-moment slot");
        return v != NULL;
    }
    cuda_fail(s, op, "unknown optimizer kind %d", (int)kind);
    return 0;
}

static void optimizer_update(Backend *be, float *p, const float *g, float *m, float *v, size_t n, const OptimStep *st) {
    CudaState *s = cuda_state(be);
    if (s->failed || !n || !slots_ok(s, "optimizer_update", st->kind, m, v)) return;
    const StepArgs a = step_args(st);
    const float decay = decay_factor(st, st->weight_decay);
    unsigned blocks = cuda_blocks(s, n, 256);
    switch (st->kind) {
    case OPT_SGD:
        range_kernel<OPT_SGD><<<blocks, 256, 0, s->stream>>>(p, g, m, v, n, a, decay);
        break;
    case OPT_ADAM:
    case OPT_ADAMW:
        range_kernel<OPT_ADAM><<<blocks, 256, 0, s->stream>>>(p, g, m, v, n, a, decay);
        break;
    case OPT_RMSPROP:
        range_kernel<OPT_RMSPROP><<<blocks, 256, 0, s->stream>>>(p, g, m, v, n, a, decay);
        break;
    }
    cuda_check_launch(s, "optimizer_update");
}

// Whether the cached chunk table was built from exactly these segments. Field by field, not
// memcmp: OptimSegment has tail padding the caller never sets.
static int same_segments(const CudaState *s, const OptimSegment *segs, int nsegs) {
    if (!s->optim_segs || s->optim_nsegs != nsegs) return 0;
    for (int i = 0; i < nsegs; i++) {
        const OptimSegment *a = &s->optim_segs[i], *b = &segs[i];
        if (a->param != b->param || a->slot != b->slot || a->n != b->n || !a->decay != !b->decay ||
            a->lr_scale != b->lr_scale)
            return 0;
    }
    return 1;
}

// Builds the chunk table of segs on the host and uploads it (on the stream, ahead of the
// kernel that reads it). Returns VIT_OK, or VIT_ERR with the failure recorded.
static int build_chunks(CudaState *s, const OptimSegment *segs, int nsegs) {
    const char *op = "optimizer_update_segments";
    s->optim_nsegs = -1;  // invalid until the table and its key are both in place
    size_t nchunks = 0;
    for (int i = 0; i < nsegs; i++) nchunks += (segs[i].n + CHUNK - 1) / CHUNK;
    if (nchunks > INT_MAX) return cuda_fail(s, op, "%zu chunks: too many for one grid", nchunks);
    // The host table may still be the source of the previous upload: let that finish before
    // overwriting it (segments change rarely: once per run, or per shard layout).
    if (s->optim_host && cuda_check(s, cudaStreamSynchronize(s->stream), op)) return VIT_ERR;
    if (nchunks > s->optim_host_cap) {
        void *h = realloc(s->optim_host, nchunks * sizeof(OptimChunk));
        if (!h) return cuda_fail(s, op, "out of host memory for %zu chunks", nchunks);
        s->optim_host = h;
        s->optim_host_cap = nchunks;
    }
    if (nsegs > s->optim_segs_cap) {
        void *k = realloc(s->optim_segs, (size_t)nsegs * sizeof(OptimSegment));
        if (!k) return cuda_fail(s, op, "out of host memory for %d segments", nsegs);
        s->optim_segs = (OptimSegment *)k;
        s->optim_segs_cap = nsegs;
    }
    OptimChunk *h = (OptimChunk *)s->optim_host;
    size_t k = 0;
    for (int i = 0; i < nsegs; i++)
        for (size_t off = 0; off < segs[i].n; off += CHUNK) {
            size_t len = segs[i].n - off < CHUNK ? segs[i].n - off : CHUNK;
            h[k++] = OptimChunk{segs[i].param + off, segs[i].slot + off, (unsigned)len, segs[i].decay != 0,
                                segs[i].lr_scale};
        }
    size_t bytes = nchunks * sizeof(OptimChunk);
    if (bytes) {  // none when every segment is empty
        if (!cuda_scratch(s, &s->optim_chunks, &s->optim_chunks_bytes, bytes, op)) return VIT_ERR;
        if (cuda_check(s, cudaMemcpyAsync(s->optim_chunks, h, bytes, cudaMemcpyHostToDevice, s->stream), op))
            return VIT_ERR;
    }
    if (nsegs) memcpy(s->optim_segs, segs, (size_t)nsegs * sizeof(OptimSegment));
    s->optim_nsegs = nsegs;
    s->optim_nchunks = (int)nchunks;
    return VIT_OK;
}

// All segments in one launch: one block per chunk of a table that is uploaded only when the
// segments differ from the last call's (a training run passes the same ones every step).
static void optimizer_update_segments(Backend *be, float *p, const float *g, float *m, float *v,
                                      const OptimSegment *segs, int nsegs, const OptimStep *st) {
    CudaState *s = cuda_state(be);
    const char *op = "optimizer_update_segments";
    if (s->failed || nsegs <= 0 || !slots_ok(s, op, st->kind, m, v)) return;
    if (!same_segments(s, segs, nsegs) && build_chunks(s, segs, nsegs)) return;
    if (!s->optim_nchunks) return;  // every segment empty
    const StepArgs a = step_args(st);
    // Each block derives its segment's rate and decay multiplier as optimizer_update would
    // from an OptimStep with the scaled rate (decay_factor's arithmetic, on the device).
    const float wd = st->weight_decay;
    const OptimChunk *chunks = (const OptimChunk *)s->optim_chunks;
    const unsigned blocks = (unsigned)s->optim_nchunks;
    switch (st->kind) {
    case OPT_SGD:
        segments_kernel<OPT_SGD><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd);
        break;
    case OPT_ADAM:
    case OPT_ADAMW:
        segments_kernel<OPT_ADAM><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd);
        break;
    case OPT_RMSPROP:
        segments_kernel<OPT_RMSPROP><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd);
        break;
    }
    cuda_check_launch(s, op);
}

static void ema_update(Backend *be, float *ema, const float *params, size_t n, float weight) {
    CudaState *s = cuda_state(be);
    if (s->failed || !n) return;
    const float rest = 1.0f - weight;
    ema_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(ema, params, n, weight, rest, fabsf(weight) < 0.5f);
    cuda_check_launch(s, "ema_update");
}

// ---- device-side step scalars ------------------------------------------------------------------
// The figures of an update stay in a small device buffer (backend.h's StepScalar indices), so
// that a step holds no host wait and a captured graph replays with new host values written
// ahead of it by scalars_write.

struct ScalarArgs {
    double v[STEP_SCALARS];
};

// The values ride in the launch's arguments: the host's copy is free on return, and a replayed
// graph never reads stale host memory.
__global__ void scalars_write_kernel(double *dst, ScalarArgs a, int n) {
    if (threadIdx.x < (unsigned)n) dst[threadIdx.x] = a.v[threadIdx.x];
}

static void scalars_write(Backend *be, double *dst, const double *src, int n) {
    CudaState *s = cuda_state(be);
    if (s->failed || n <= 0) return;
    if (n > STEP_SCALARS) {
        cuda_fail(s, "scalars_write", "%d doubles: at most %d", n, (int)STEP_SCALARS);
        return;
    }
    ScalarArgs a;
    memset(&a, 0, sizeof a);
    memcpy(a.v, src, (size_t)n * sizeof(double));
    scalars_write_kernel<<<1, 32, 0, s->stream>>>(dst, a, n);
    cuda_check_launch(s, "scalars_write");
}

// sum_squares' partition (cuda_ops.cu): the same fixed grid and block sums, hence its bits.
enum { NORM_BLOCKS = 1024, NORM_THREADS = 256 };

__global__ void norm_partial_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[32];
    double acc = 0;
    CUDA_FOR(i, n) acc += (double)x[i] * x[i];
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// The partials' sum as sum_squares' finishing kernel, then norm, clip scale and skip as the
// host computed them (double sqrt and division are correctly rounded on the device too).
__global__ void norm_finish_kernel(double *sc, const double *part, int n, float clip_norm) {
    __shared__ double sh[32];
    double acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += part[i];
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) {
        const double norm = sqrt(acc);
        sc[STEP_NORM] = norm;
        sc[STEP_SCALE] = clip_norm > 0 && norm > clip_norm ? (double)__double2float_rn(__ddiv_rn(clip_norm, norm)) : 1.0;
        if (!isfinite(norm)) sc[STEP_SKIP] = 1.0;
    }
}

static void grad_norm_clip(Backend *be, double *sc, const float *g, size_t n, float clip_norm) {
    CudaState *s = cuda_state(be);
    if (s->failed) return;
    double *part = (double *)cuda_scratch(s, &s->reduce, &s->reduce_bytes, NORM_BLOCKS * sizeof(double),
                                          "grad_norm_clip");
    if (!part) return;
    if (n)
        norm_partial_kernel<<<NORM_BLOCKS, NORM_THREADS, 0, s->stream>>>(part, g, n);
    else
        cudaMemsetAsync(part, 0, NORM_BLOCKS * sizeof(double), s->stream);  // sum_squares of nothing is 0
    norm_finish_kernel<<<1, NORM_THREADS, 0, s->stream>>>(sc, part, NORM_BLOCKS, clip_norm);
    cuda_check_launch(s, "grad_norm_clip");
}

// segments_kernel with lr, grad scale and adam's corrections read from sc (as step_args
// derives them on the host), and nothing written when the update is skipped.
template <int KIND>
__global__ void segments_scalars_kernel(float *p, const float *g, float *m, float *v, const OptimChunk *chunks,
                                        StepArgs a, float wd, const double *sc) {
    if (sc[STEP_SKIP] != 0) return;
    const OptimChunk c = chunks[blockIdx.x];
    StepArgs b = a;
    const float lr = __double2float_rn(sc[STEP_LR]);
    b.gs = __double2float_rn(sc[STEP_SCALE]);
    b.lr = MUL(lr, c.lr_scale);
    if (KIND == OPT_ADAM) {
        b.c1 = sc[STEP_C1], b.sqrt_c2 = sc[STEP_SQRT_C2];
        b.inv_c1 = __double2float_rn(__ddiv_rn(1.0, b.c1));
        b.inv_sqrt_c2 = __double2float_rn(__ddiv_rn(1.0, b.sqrt_c2));
        b.lr_t = __double2float_rn(__ddiv_rn(__dmul_rn((double)b.lr, b.sqrt_c2), b.c1));
    }
    const float decay = SUB(1.0f, MUL(b.lr, c.decay ? wd : 0.0f));
    for (unsigned i = threadIdx.x; i < c.n; i += blockDim.x)
        update_element<KIND>(p, g, m, v, c.param + i, c.slot + i, b, decay);
}

static void optimizer_update_scalars(Backend *be, float *p, const float *g, float *m, float *v,
                                     const OptimSegment *segs, int nsegs, const OptimStep *st, const double *sc) {
    CudaState *s = cuda_state(be);
    const char *op = "optimizer_update_scalars";
    if (s->failed || nsegs <= 0 || !slots_ok(s, op, st->kind, m, v)) return;
    // The chunk table is built (with a wait) only when the segments change: warm it up eagerly
    // before capturing a step, so the graph holds no host work.
    if (!same_segments(s, segs, nsegs) && build_chunks(s, segs, nsegs)) return;
    if (!s->optim_nchunks) return;
    const StepArgs a = step_args(st);  // the constants that do not change between updates
    const float wd = st->weight_decay;
    const OptimChunk *chunks = (const OptimChunk *)s->optim_chunks;
    const unsigned blocks = (unsigned)s->optim_nchunks;
    switch (st->kind) {
    case OPT_SGD:
        segments_scalars_kernel<OPT_SGD><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd, sc);
        break;
    case OPT_ADAM:
    case OPT_ADAMW:
        segments_scalars_kernel<OPT_ADAM><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd, sc);
        break;
    case OPT_RMSPROP:
        segments_scalars_kernel<OPT_RMSPROP><<<blocks, SEG_THREADS, 0, s->stream>>>(p, g, m, v, chunks, a, wd, sc);
        break;
    }
    cuda_check_launch(s, op);
}

// One thread per sample ranks its label (count_hits' rule); then one thread adds the losses in
// order from 0 in double, as the host loop did, and the counts.
enum { METRIC_THREADS = 256 };

__global__ void metrics_kernel(double *acc, const float *losses, const float *logits, const int *labels, int B, int K) {
    __shared__ int top1[METRIC_THREADS], top5[METRIC_THREADS];
    int h1 = 0, h5 = 0;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        const float *z = logits + (size_t)b * K;
        const int y = labels[b];
        const float mine = z[y];
        int above = 0;
        for (int k = 0; k < K; k++) above += z[k] > mine || (z[k] == mine && k < y);
        h1 += above == 0;
        h5 += above < 5;
    }
    top1[threadIdx.x] = h1, top5[threadIdx.x] = h5;
    __syncthreads();
    if (threadIdx.x == 0) {
        double loss = 0;
        for (int b = 0; b < B; b++) loss += losses[b];
        long long t1 = 0, t5 = 0;
        for (int i = 0; i < (int)blockDim.x; i++) t1 += top1[i], t5 += top5[i];
        acc[METRIC_LOSS] += loss;
        acc[METRIC_TOP1] += (double)t1;
        acc[METRIC_TOP5] += (double)t5;
        acc[METRIC_NONFINITE] += !isfinite(loss);
    }
}

static void metrics_accumulate(Backend *be, double *acc, const float *losses, const float *logits, const int *labels,
                               int B, int K) {
    CudaState *s = cuda_state(be);
    if (s->failed || B <= 0) return;
    metrics_kernel<<<1, METRIC_THREADS, 0, s->stream>>>(acc, losses, logits, labels, B, K);
    cuda_check_launch(s, "metrics_accumulate");
}

void cuda_install_optimizer(Backend *be) {
    be->scalars_write = scalars_write;
    be->grad_norm_clip = grad_norm_clip;
    be->optimizer_update_scalars = optimizer_update_scalars;
    be->metrics_accumulate = metrics_accumulate;
    be->optimizer_update = optimizer_update;
    be->optimizer_update_segments = optimizer_update_segments;
    be->ema_update = ema_update;
}
