// Attention through cuDNN's fused scaled-dot-product attention (VIT_CUDA_ATTENTION=cudnn, bf16
// precision only): the same op as cuda_attention.cu (scale 1/sqrt(hd), no mask, no dropout on
// the probabilities: vit has none there), with the same state, so every backward kernel of this
// backend can follow a cuDNN forward pass.
//
// API: cuDNN 9's backend graph API, the single-node SDPA operations
// (CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR since cuDNN 9.13, ..._SDPA_BWD_DESCRIPTOR since
// 9.17), built as cudnn-frontend builds its "unified" SDPA node: tensor descriptors, the
// operation, an operation graph, engine heuristics (mode A, then the fallback list), the first
// engine configuration that finalizes into an execution plan, a variant pack per call.
//
// Tensors: cuDNN's dims are [B, H, T, hd]; vit's q, k, v, out are (B, T, H*hd) row-major, so
// the strides are [T*H*hd, hd, H*hd, 1] (the "BSHD" layout cuDNN takes through strides, no
// transposes). They are fp32 here and cuDNN's SDPA takes fp16/bf16, so each call rounds them to
// bf16 copies in a scratch buffer (nearest even, as the bf16 gemms round their operands) and
// widens the results back. The softmax statistics ("Stats", fp32 [B, H, T, 1], strides
// [H*T, T, 1, 1]) are max + log(sum(exp(s - max))) of the scaled scores s: exactly the row
// log-sum-exp the other kernels keep in `state`, in the same order (b, h, t).
//
// Plans are built once per (B, T, H, hd) and direction and kept with their descriptors; a
// shape with no engine is remembered too (never retried): the forward pass then fails with a
// one-line message, the backward pass hands over to the backend's own kernels (reports say
// cuDNN's SDPA backward operation has engines on Blackwell only).
//
// NEVER RUN ON A GPU: written against cuDNN 9.19's headers; see docs/gpu.md for what the next
// device session must check.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>
#include "cuda_common.h"

#ifndef VIT_CUDNN
const char *cuda_attention_cudnn_missing(void) {
    return "this build has no cuDNN (cudnn_graph.h was not found at build time: see CUDNN_HOME in the Makefile)";
}
int cuda_attention_cudnn_usable(const CudaState *s, int hd) { return 0; }
int cuda_attention_cudnn_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                                 int B, int T, int H, int hd) {
    return vit_fail("cuda attention_forward: %s", cuda_attention_cudnn_missing());
}
int cuda_attention_cudnn_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                  int H, int hd) {
    return 0;
}
void cuda_attention_cudnn_destroy(CudaState *s) {}
#else
#include <cudnn_graph.h>

typedef cudnnBackendDescriptor_t Desc;
typedef __nv_bfloat16 bf16;

enum { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_DO, UID_DQ, UID_DK, UID_DV };
// MAX_KEEP: 10 tensors, the operation, the graph, then per heuristics mode 1 + 8 configs + 8 plans.
enum { MAX_KEEP = 64, MAX_CFGS = 8, NBUF = 8 };

typedef struct {
    int B, T, H, hd, backward;  // the key
    int ok;                     // 1: plan ready; 0: no engine (why says what refused)
    char why[200];
    Desc plan;
    int64_t workspace;
    Desc keep[MAX_KEEP];        // every descriptor the plan was built from, destroyed with it
    int nkeep;
} Plan;

struct CudnnAttn {
    cudnnHandle_t handle;
    Plan *plans;
    int nplans, cap;
    void *ws, *bf, *stats;      // plan workspace, bf16 copies, aligned statistics
    size_t ws_bytes, bf_bytes, stats_bytes;
};

const char *cuda_attention_cudnn_missing(void) { return NULL; }

int cuda_attention_cudnn_usable(const CudaState *s, int hd) {
    // cuDNN's SDPA takes head sizes that are multiples of 8 (up to 256; the op contract stops at 128).
    return s->attention == CUDA_ATT_CUDNN && s->precision == CUDA_BF16 && hd % 8 == 0;
}

// ---- descriptor building: the first failing call is recorded, later calls do nothing -------
typedef struct {
    Plan *p;
    cudnnStatus_t st;
    const char *what;
} Build;

static void build_fail(Build *b, cudnnStatus_t st, const char *what) {
    if (b->st == CUDNN_STATUS_SUCCESS) b->st = st, b->what = what;
}

static Desc make(Build *b, cudnnBackendDescriptorType_t type, const char *what) {
    Desc d = NULL;
    if (b->st != CUDNN_STATUS_SUCCESS) return NULL;
    if (b->p->nkeep == MAX_KEEP) {
        build_fail(b, CUDNN_STATUS_INTERNAL_ERROR, "too many descriptors (MAX_KEEP)");
        return NULL;
    }
    cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d);
    if (st != CUDNN_STATUS_SUCCESS) {
        build_fail(b, st, what);
        return NULL;
    }
    b->p->keep[b->p->nkeep++] = d;
    return d;
}

static void set(Build *b, Desc d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                const void *value, const char *what) {
    if (b->st != CUDNN_STATUS_SUCCESS) return;
    build_fail(b, cudnnBackendSetAttribute(d, name, type, count, value), what);
}

static void finalize(Build *b, Desc d, const char *what) {
    if (b->st != CUDNN_STATUS_SUCCESS) return;
    build_fail(b, cudnnBackendFinalize(d), what);
}

// A 4-d tensor descriptor: data type, dimensions, strides, unique id and a 16-byte alignment
// promise (every buffer handed over is 256-byte aligned: arena blocks, or copies into them).
static Desc tensor(Build *b, int64_t uid, cudnnDataType_t type, const int64_t *dims, const int64_t *strides,
                   bool by_value) {
    Desc d = make(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor descriptor");
    int64_t align = 16;
    set(b, d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor data type");
    set(b, d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dimensions");
    set(b, d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides");
    set(b, d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor unique id");
    set(b, d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    if (by_value) set(b, d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    finalize(b, d, "tensor finalize");
    return d;
}

// The SDPA operation of one direction over vit's layout.
static Desc sdpa_operation(Build *b, int B, int T, int H, int hd, int backward) {
    const int64_t qd[4] = {B, H, T, hd}, qs[4] = {(int64_t)T * H * hd, hd, (int64_t)H * hd, 1};
    const int64_t sd[4] = {B, H, T, 1}, ss[4] = {(int64_t)H * T, T, 1, 1}, one[4] = {1, 1, 1, 1};
    const cudnnDataType_t h = CUDNN_DATA_BFLOAT16, f = CUDNN_DATA_FLOAT;
    Desc q = tensor(b, UID_Q, h, qd, qs, false), k = tensor(b, UID_K, h, qd, qs, false);
    Desc v = tensor(b, UID_V, h, qd, qs, false), o = tensor(b, UID_O, h, qd, qs, false);
    Desc st = tensor(b, UID_STATS, f, sd, ss, false), sc = tensor(b, UID_SCALE, f, one, one, true);
    const cudnnBackendAttributeType_t D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    if (!backward) {
        Desc op = make(b, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "SDPA forward descriptor (cuDNN >= 9.13)");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, D, 1, &q, "SDPA forward Q");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, D, 1, &k, "SDPA forward K");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, D, 1, &v, "SDPA forward V");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, D, 1, &o, "SDPA forward O");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, D, 1, &st, "SDPA forward stats");
        set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, D, 1, &sc, "SDPA forward scale");
        finalize(b, op, "SDPA forward finalize");
        return op;
    }
    Desc dO = tensor(b, UID_DO, h, qd, qs, false), dQ = tensor(b, UID_DQ, h, qd, qs, false);
    Desc dK = tensor(b, UID_DK, h, qd, qs, false), dV = tensor(b, UID_DV, h, qd, qs, false);
    Desc op = make(b, CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR, "SDPA backward descriptor (cuDNN >= 9.17)");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_QDESC, D, 1, &q, "SDPA backward Q");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_KDESC, D, 1, &k, "SDPA backward K");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_VDESC, D, 1, &v, "SDPA backward V");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_ODESC, D, 1, &o, "SDPA backward O");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_DODDESC, D, 1, &dO, "SDPA backward dO");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_STATSDESC, D, 1, &st, "SDPA backward stats");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_SCALEDESC, D, 1, &sc, "SDPA backward scale");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_DQDESC, D, 1, &dQ, "SDPA backward dQ");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_DKDESC, D, 1, &dK, "SDPA backward dK");
    set(b, op, CUDNN_ATTR_OPERATION_SDPA_BWD_DVDESC, D, 1, &dV, "SDPA backward dV");
    finalize(b, op, "SDPA backward finalize");
    return op;
}

// The first engine configuration of the heuristics' list (mode A, then the fallback list)
// that finalizes into an execution plan.
static void find_plan(Build *b, cudnnHandle_t handle, Desc graph) {
    static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int m = 0; m < 2 && b->st == CUDNN_STATUS_SUCCESS && !b->p->plan; m++) {
        Desc heur = make(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics descriptor");
        set(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph,
            "heuristics graph");
        set(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m], "heuristics mode");
        finalize(b, heur, "heuristics finalize");
        Desc cfgs[MAX_CFGS];
        int64_t n = 0;
        for (int i = 0; i < MAX_CFGS; i++) cfgs[i] = make(b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
        if (b->st != CUDNN_STATUS_SUCCESS) return;
        build_fail(b, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                               MAX_CFGS, &n, cfgs),
                   "heuristics results");
        for (int64_t i = 0; i < n && i < MAX_CFGS && b->st == CUDNN_STATUS_SUCCESS && !b->p->plan; i++) {
            Desc plan = make(b, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan descriptor");
            set(b, plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "plan handle");
            set(b, plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i],
                "plan engine config");
            if (b->st != CUDNN_STATUS_SUCCESS) return;
            // An engine that refuses this shape fails here: try the next one.
            if (cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS) b->p->plan = plan;
        }
    }
    if (b->st == CUDNN_STATUS_SUCCESS && !b->p->plan) build_fail(b, CUDNN_STATUS_NOT_SUPPORTED, "no engine finalized");
}

static void plan_build(CudnnAttn *c, Plan *p) {
    Build b = {p, CUDNN_STATUS_SUCCESS, NULL};
    Desc op = sdpa_operation(&b, p->B, p->T, p->H, p->hd, p->backward);
    Desc graph = make(&b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph descriptor");
    set(&b, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &c->handle, "graph handle");
    set(&b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op, "graph operations");
    finalize(&b, graph, "graph finalize");
    find_plan(&b, c->handle, graph);
    int64_t ws = 0, count = 0;
    if (b.st == CUDNN_STATUS_SUCCESS)
        build_fail(&b, cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                                &count, &ws),
                   "plan workspace size");
    p->ok = b.st == CUDNN_STATUS_SUCCESS;
    p->workspace = ws;
    if (!p->ok) {
        char detail[96] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        snprintf(p->why, sizeof p->why, "%s: %s%s%s", b.what, cudnnGetErrorString(b.st), *detail ? "; " : "", detail);
    }
}

static void plan_free(Plan *p) {
    for (int i = p->nkeep - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(p->keep[i]);
    p->nkeep = 0;
    p->plan = NULL;
}

void cuda_attention_cudnn_destroy(CudaState *s) {
    CudnnAttn *c = s->cudnn;
    if (!c) return;
    for (int i = 0; i < c->nplans; i++) plan_free(&c->plans[i]);
    free(c->plans);
    if (c->handle) cudnnDestroy(c->handle);
    free(c);  // its buffers are arena blocks: they go with the arena
    s->cudnn = NULL;
}

// The handle on the backend's stream, made on first use. Refusals are the caller's (VIT_ERR,
// the backend stays usable): a missing or too old cuDNN is not a broken device.
static CudnnAttn *state_get(CudaState *s, const char *op) {
    if (s->cudnn) return s->cudnn;
    CudnnAttn *c = (CudnnAttn *)calloc(1, sizeof *c);
    if (!c) {
        vit_fail("cuda %s: out of host memory for cuDNN", op);
        return NULL;
    }
    cudnnStatus_t st = cudnnCreate(&c->handle);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(c->handle, s->stream);
    if (st != CUDNN_STATUS_SUCCESS) {
        if (c->handle) cudnnDestroy(c->handle);
        free(c);
        vit_fail("cuda %s: VIT_CUDA_ATTENTION=cudnn: cudnnCreate: %s (cuDNN %zu)", op, cudnnGetErrorString(st),
                 (size_t)cudnnGetVersion());
        return NULL;
    }
    s->cudnn = c;
    return c;
}

static Plan *plan_get(CudaState *s, CudnnAttn *c, int B, int T, int H, int hd, int backward) {
    for (int i = 0; i < c->nplans; i++) {
        Plan *p = &c->plans[i];
        if (p->B == B && p->T == T && p->H == H && p->hd == hd && p->backward == backward) return p;
    }
    if (c->nplans == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        Plan *n = (Plan *)realloc(c->plans, (size_t)cap * sizeof *n);
        if (!n) {
            vit_fail("cuda attention: out of host memory for cuDNN plans");
            return NULL;
        }
        c->plans = n, c->cap = cap;
    }
    Plan *p = &c->plans[c->nplans++];
    memset(p, 0, sizeof *p);
    p->B = B, p->T = T, p->H = H, p->hd = hd, p->backward = backward;
    plan_build(c, p);
    if (!p->ok) plan_free(p);  // keep the verdict, not the descriptors
    return p;
}

// ---- conversions between vit's fp32 tensors and cuDNN's bf16 ones ----------------------------
typedef struct {
    const float *src[5];
    bf16 *dst[5];
} ToBf16;
typedef struct {
    const bf16 *src[3];
    float *dst[3];
} FromBf16;

__global__ void cudnn_to_bf16_kernel(ToBf16 a, int count, size_t n) {
    CUDA_FOR(i, (size_t)count * n) {
        size_t t = i / n, j = i % n;
        a.dst[t][j] = __float2bfloat16_rn(a.src[t][j]);
    }
}

__global__ void cudnn_from_bf16_kernel(FromBf16 a, int count, size_t n) {
    CUDA_FOR(i, (size_t)count * n) {
        size_t t = i / n, j = i % n;
        a.dst[t][j] = __bfloat162float(a.src[t][j]);
    }
}

// NBUF bf16 tensors of n elements each, 256-byte aligned, in one growing scratch buffer.
static bf16 *bf_buffers(CudaState *s, CudnnAttn *c, size_t n, const char *op) {
    size_t slot = (n * sizeof(bf16) + 255) / 256 * 256;
    return (bf16 *)cuda_scratch(s, &c->bf, &c->bf_bytes, NBUF * slot, op);
}
static bf16 *bf_slot(bf16 *base, size_t n, int i) {
    return (bf16 *)((char *)base + (size_t)i * ((n * sizeof(bf16) + 255) / 256 * 256));
}

// Runs plan p over the (uid, pointer) pairs, with its workspace.
static int execute(CudaState *s, CudnnAttn *c, Plan *p, const int64_t *uids, void *const *ptrs, int n, const char *op) {
    void *ws = NULL;
    if (p->workspace > 0 && !(ws = cuda_scratch(s, &c->ws, &c->ws_bytes, (size_t)p->workspace, op))) return VIT_ERR;
    Desc vp = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(c->handle, p->plan, vp);
    if (vp) cudnnBackendDestroyDescriptor(vp);
    if (st != CUDNN_STATUS_SUCCESS) {
        char detail[96] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        return cuda_fail(s, op, "cuDNN SDPA (B %d T %d H %d hd %d): %s%s%s", p->B, p->T, p->H, p->hd,
                         cudnnGetErrorString(st), *detail ? "; " : "", detail);
    }
    return cuda_check_launch(s, op);
}

// The statistics cuDNN reads or writes: lse itself when 16-byte aligned (the alignment the
// plans promise), else an aligned copy.
static float *stats_buffer(CudaState *s, CudnnAttn *c, const float *lse, size_t n, const char *op) {
    if (!((uintptr_t)lse & 15)) return (float *)lse;
    return (float *)cuda_scratch(s, &c->stats, &c->stats_bytes, n * sizeof(float), op);
}

int cuda_attention_cudnn_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                                 int B, int T, int H, int hd) {
    const char *op = "attention_forward";
    CudnnAttn *c = state_get(s, op);
    if (!c) return VIT_ERR;
    Plan *p = plan_get(s, c, B, T, H, hd, 0);
    if (!p) return VIT_ERR;
    if (!p->ok)
        return vit_fail("cuda attention_forward: VIT_CUDA_ATTENTION=cudnn: cuDNN %zu has no SDPA forward plan for "
                        "B %d T %d H %d hd %d (%s)", (size_t)cudnnGetVersion(), B, T, H, hd, p->why);
    size_t n = (size_t)B * T * H * hd, ns = (size_t)B * H * T;
    bf16 *buf = bf_buffers(s, c, n, op);
    float *stats = stats_buffer(s, c, lse, ns, op);
    if (!buf || !stats) return VIT_ERR;
    bf16 *qb = bf_slot(buf, n, 0), *kb = bf_slot(buf, n, 1), *vb = bf_slot(buf, n, 2), *ob = bf_slot(buf, n, 3);
    ToBf16 in = {{q, k, v}, {qb, kb, vb}};
    cudnn_to_bf16_kernel<<<cuda_blocks(s, 3 * n, 256), 256, 0, s->stream>>>(in, 3, n);
    if (cuda_check_launch(s, op)) return VIT_ERR;
    float scale = 1.0f / sqrtf((float)hd);  // passed by value: read at the call
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE};
    void *const ptrs[] = {qb, kb, vb, ob, stats, &scale};
    if (execute(s, c, p, uids, ptrs, 6, op)) return VIT_ERR;
    FromBf16 o = {{ob}, {out}};
    cudnn_from_bf16_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(o, 1, n);
    if (stats != lse &&
        cuda_check(s, cudaMemcpyAsync(lse, stats, ns * sizeof(float), cudaMemcpyDeviceToDevice, s->stream), op))
        return VIT_ERR;
    return cuda_check_launch(s, op);
}

int cuda_attention_cudnn_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                  int H, int hd) {
    const char *op = "attention_backward";
    CudnnAttn *c = state_get(s, op);
    if (!c) return VIT_ERR;
    Plan *p = plan_get(s, c, B, T, H, hd, 1);
    if (!p) return VIT_ERR;
    if (!p->ok) return 0;  // the backend's own kernels take it from here
    size_t n = (size_t)B * T * H * hd, ns = (size_t)B * H * T;
    bf16 *buf = bf_buffers(s, c, n, op);
    float *stats = stats_buffer(s, c, lse, ns, op);
    if (!buf || !stats) return VIT_ERR;
    if (stats != lse &&
        cuda_check(s, cudaMemcpyAsync(stats, lse, ns * sizeof(float), cudaMemcpyDeviceToDevice, s->stream), op))
        return VIT_ERR;
    bf16 *b[NBUF];
    for (int i = 0; i < NBUF; i++) b[i] = bf_slot(buf, n, i);
    ToBf16 in = {{q, k, v, out, dout}, {b[0], b[1], b[2], b[3], b[4]}};
    cudnn_to_bf16_kernel<<<cuda_blocks(s, 5 * n, 256), 256, 0, s->stream>>>(in, 5, n);
    if (cuda_check_launch(s, op)) return VIT_ERR;
    float scale = 1.0f / sqrtf((float)hd);
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_SCALE, UID_DQ, UID_DK, UID_DV};
    void *const ptrs[] = {b[0], b[1], b[2], b[3], b[4], stats, &scale, b[5], b[6], b[7]};
    if (execute(s, c, p, uids, ptrs, 10, op)) return VIT_ERR;
    FromBf16 g = {{b[5], b[6], b[7]}, {dq, dk, dv}};
    cudnn_from_bf16_kernel<<<cuda_blocks(s, 3 * n, 256), 256, 0, s->stream>>>(g, 3, n);
    return cuda_check_launch(s, op) ? VIT_ERR : 1;
}
#endif
