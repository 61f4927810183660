// The profiling wrapper: each op forwards to the inner backend (passing the inner table, whose
// impl the op needs) and, while the profiler is active, records a span with a cost model.
//
// Cost models, the same for every backend so that figures compare across devices:
//  - flops are counted only where arithmetic is the point: gemm and attention. The other ops
//    are bound by memory and transcendental calls; a flop count for them would be invented,
//    so it is 0 ("-" in the table) and GB/s is their yardstick.
//  - bytes are the compulsory traffic in fp32: every input read once, every output written
//    once, "+=" outputs read and written. Re-reads inside a kernel and a backend's private
//    scratch are not counted, so GB/s is a lower bound of what the memory system moved.
#include "profiled_backend.h"
#include <stdlib.h>
#include "util/status.h"

typedef struct {
    Backend *inner;
    Profiler *prof;
    int sync;
} Wrap;

// The start time when recording, 0 when not (the clock counts from boot, never 0 in use).
static inline uint64_t span_start(const Wrap *w) { return profiler_active(w->prof) ? prof_clock_ns() : 0; }

static void span_end(const Wrap *w, uint64_t t0, const ProfOpSpan *op) {
    if (w->sync) w->inner->synchronize(w->inner);
    prof_record_op(w->prof, op, t0, prof_clock_ns());
}

#define I64(x) ((int64_t)(x))
#define F4 4.0  // bytes per fp32 element, as a double so that counts cannot overflow

// ---- memory --------------------------------------------------------------------------------

static void *w_alloc(Backend *be, size_t bytes) {
    Wrap *w = be->impl;
    return w->inner->alloc(w->inner, bytes);
}

static void w_release(Backend *be, void *p) {
    Wrap *w = be->impl;
    w->inner->release(w->inner, p);
}

static void w_synchronize(Backend *be) {
    Wrap *w = be->impl;
    w->inner->synchronize(w->inner);
}

static void *w_alloc_host(Backend *be, size_t bytes) {
    Wrap *w = be->impl;
    return w->inner->alloc_host(w->inner, bytes);
}

static void w_release_host(Backend *be, void *p) {
    Wrap *w = be->impl;
    w->inner->release_host(w->inner, p);
}

static void w_wait_uploads(Backend *be) {
    Wrap *w = be->impl;
    w->inner->wait_uploads(w->inner);
}

// An asynchronous upload's span is the time to start it (or, where the wrapper synchronizes
// each op (CUDA), to finish the work queued so far and it).
static void w_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->upload_async(w->inner, dst, src, bytes);
    if (t0) span_end(w, t0, &(ProfOpSpan){"upload_async", "bytes", {I64(bytes)}, 0, (double)bytes});
}

// Transfers count their bytes once: the bus carries them once.
static void w_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->upload(w->inner, dst, src, bytes);
    if (t0) span_end(w, t0, &(ProfOpSpan){"upload", "bytes", {I64(bytes)}, 0, (double)bytes});
}

static void w_download(Backend *be, void *dst, const void *src, size_t bytes) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->download(w->inner, dst, src, bytes);
    if (t0) span_end(w, t0, &(ProfOpSpan){"download", "bytes", {I64(bytes)}, 0, (double)bytes});
}

static void w_zero(Backend *be, void *p, size_t bytes) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->zero(w->inner, p, bytes);
    if (t0) span_end(w, t0, &(ProfOpSpan){"zero", "bytes", {I64(bytes)}, 0, (double)bytes});
}

// ---- matrix products -------------------------------------------------------------------------

// 2*batch*M*N*K flops (the bias and alpha are noise); bytes: A, B and C once per batch, C
// read too when accumulating, the bias row once.
static int w_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
                  int transB, float *C, const float *bias, float alpha, int accumulate) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->gemm(w->inner, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate);
    if (t0) {
        double mn = (double)M * N, b = batch;
        span_end(w, t0,
                 &(ProfOpSpan){"gemm", "batch,M,N,K,transA,transB,accumulate,bias",
                               {batch, M, N, K, transA, transB, accumulate, bias != NULL},
                               2.0 * b * mn * K,
                               F4 * (b * ((double)M * K + (double)K * N + mn) + (accumulate ? b * mn : 0) +
                                     (bias ? N : 0))});
    }
    return rc;
}

// dbias += column sums: dout read, dbias read and written.
static void w_bias_backward(Backend *be, float *dbias, const float *dout, int M, int N) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->bias_backward(w->inner, dbias, dout, M, N);
    if (t0) span_end(w, t0, &(ProfOpSpan){"bias_backward", "M,N", {M, N}, 0, F4 * ((double)M * N + 2.0 * N)});
}

// ---- normalisation and element-wise ops ---------------------------------------------------

// inp read, out written (rows*C each); scale, bias read (C each); mean, rstd written (rows each).
static void w_layernorm_forward(Backend *be, float *out, float *mean, float *rstd, const float *inp,
                                const float *scale, const float *bias, int rows, int C, float eps) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->layernorm_forward(w->inner, out, mean, rstd, inp, scale, bias, rows, C, eps);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"layernorm_forward", "rows,C", {rows, C}, 0,
                                      F4 * (2.0 * rows * C + 2.0 * C + 2.0 * rows)});
}

// dout, inp read and dinp read+written (rows*C each: 4); scale read, dscale and dbias read+written
// (C each: 5); mean, rstd read (rows each: 2).
static void w_layernorm_backward(Backend *be, float *dinp, float *dscale, float *dbias, const float *dout,
                                 const float *inp, const float *scale, const float *mean, const float *rstd, int rows,
                                 int C) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->layernorm_backward(w->inner, dinp, dscale, dbias, dout, inp, scale, mean, rstd, rows, C);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"layernorm_backward", "rows,C", {rows, C}, 0,
                                      F4 * (4.0 * rows * C + 5.0 * C + 2.0 * rows)});
}

// One input, one output: 2n floats.
static void w_gelu_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gelu_forward(w->inner, out, inp, n, tanh_approx);
    if (t0) span_end(w, t0, &(ProfOpSpan){"gelu_forward", "n,tanh", {I64(n), tanh_approx}, 0, F4 * 2 * n});
}

// inp and dout read, dinp written: 3n floats.
static void w_gelu_backward(Backend *be, float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gelu_backward(w->inner, dinp, inp, dout, n, tanh_approx);
    if (t0) span_end(w, t0, &(ProfOpSpan){"gelu_backward", "n,tanh", {I64(n), tanh_approx}, 0, F4 * 3 * n});
}

static void w_tanh_forward(Backend *be, float *out, const float *inp, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->tanh_forward(w->inner, out, inp, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"tanh_forward", "n", {I64(n)}, 0, F4 * 2 * n});
}

static void w_tanh_backward(Backend *be, float *dinp, const float *out, const float *dout, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->tanh_backward(w->inner, dinp, out, dout, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"tanh_backward", "n", {I64(n)}, 0, F4 * 3 * n});
}

// The mask comes from a counter-based generator, not memory: 2n floats.
static void w_dropout_forward(Backend *be, float *out, const float *inp, size_t n, float rate, uint64_t seed,
                              uint32_t step, uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->dropout_forward(w->inner, out, inp, n, rate, seed, step, site);
    if (t0) span_end(w, t0, &(ProfOpSpan){"dropout_forward", "n,site", {I64(n), site}, 0, F4 * 2 * n});
}

static void w_dropout_backward(Backend *be, float *dinp, const float *dout, size_t n, float rate, uint64_t seed,
                               uint32_t step, uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->dropout_backward(w->inner, dinp, dout, n, rate, seed, step, site);
    if (t0) span_end(w, t0, &(ProfOpSpan){"dropout_backward", "n,site", {I64(n), site}, 0, F4 * 2 * n});
}

static void w_add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->add(w->inner, out, a, b, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"add", "n", {I64(n)}, 0, F4 * 3 * n});
}

// gemm's counts for one product (A, B, C once; bias) plus the GELU it ends with (not counted).
static int w_gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C,
                            const float *bias, int tanh_approx) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->gemm_bias_gelu(w->inner, M, N, K, A, B, C, bias, tanh_approx);
    if (t0)
        span_end(w, t0,
                 &(ProfOpSpan){"gemm_bias_gelu", "M,N,K,tanh", {M, N, K, tanh_approx}, 2.0 * M * N * K,
                               F4 * ((double)M * K + (double)K * N + (double)M * N + N)});
    return rc;
}

static void w_to_bf16(Backend *be, uint16_t *dst, const float *src, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->to_bf16(w->inner, dst, src, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"to_bf16", "n", {I64(n)}, 0, 6.0 * n});
}

static void w_from_bf16(Backend *be, float *dst, const uint16_t *src, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->from_bf16(w->inner, dst, src, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"from_bf16", "n", {I64(n)}, 0, 6.0 * n});
}

static void w_scale(Backend *be, float *x, size_t n, float s) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->scale(w->inner, x, n, s);
    if (t0) span_end(w, t0, &(ProfOpSpan){"scale", "n", {I64(n)}, 0, F4 * 2 * n});
}

static double w_sum_squares(Backend *be, const float *x, size_t n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    double r = w->inner->sum_squares(w->inner, x, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"sum_squares", "n", {I64(n)}, 0, F4 * n});
    return r;
}

// ---- embedding and head ---------------------------------------------------------------------

// B*S*S*C image bytes read, as many floats written.
static void w_patchify(Backend *be, float *patches, const uint8_t *images, int B, int S, int C, int P) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->patchify(w->inner, patches, images, B, S, C, P);
    if (t0) span_end(w, t0, &(ProfOpSpan){"patchify", "B,S,C,P", {B, S, C, P}, 0, (1 + F4) * B * S * S * C});
}

// x written (B*T*D), emb read (B*(T-1)*D), cls and pos read (D + T*D).
static void w_tokens_forward(Backend *be, float *x, const float *emb, const float *cls, const float *pos, int B, int T,
                             int D) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->tokens_forward(w->inner, x, emb, cls, pos, B, T, D);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"tokens_forward", "B,T,D", {B, T, D}, 0,
                                      F4 * D * ((double)B * T + (double)B * (T - 1) + 1 + T)});
}

// dx read (B*T*D), demb written (B*(T-1)*D), dcls and dpos read+written (2*(D + T*D)).
static void w_tokens_backward(Backend *be, float *demb, float *dcls, float *dpos, const float *dx, int B, int T,
                              int D) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->tokens_backward(w->inner, demb, dcls, dpos, dx, B, T, D);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"tokens_backward", "B,T,D", {B, T, D}, 0,
                                      F4 * D * ((double)B * T + (double)B * (T - 1) + 2.0 * (1 + T))});
}

static void w_gather_cls(Backend *be, float *out, const float *x, int B, int T, int D) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gather_cls(w->inner, out, x, B, T, D);
    if (t0) span_end(w, t0, &(ProfOpSpan){"gather_cls", "B,T,D", {B, T, D}, 0, F4 * 2.0 * B * D});
}

// dx written whole (B*T*D), dcls read (B*D).
static void w_scatter_cls(Backend *be, float *dx, const float *dcls, int B, int T, int D) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->scatter_cls(w->inner, dx, dcls, B, T, D);
    if (t0) span_end(w, t0, &(ProfOpSpan){"scatter_cls", "B,T,D", {B, T, D}, 0, F4 * ((double)B * T * D + (double)B * D)});
}

// logits read and probs written (B*K each), labels read and losses written (B each).
static void w_xent_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels, int B,
                           int K, float smoothing) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->xent_forward(w->inner, probs, losses, logits, labels, B, K, smoothing);
    if (t0) span_end(w, t0, &(ProfOpSpan){"xent_forward", "B,K", {B, K}, 0, F4 * (2.0 * B * K + 2.0 * B)});
}

// probs read and dlogits written (B*K each), labels read (B).
static void w_xent_backward(Backend *be, float *dlogits, const float *probs, const int *labels, int B, int K,
                            float smoothing, float scale) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->xent_backward(w->inner, dlogits, probs, labels, B, K, smoothing, scale);
    if (t0) span_end(w, t0, &(ProfOpSpan){"xent_backward", "B,K", {B, K}, 0, F4 * (2.0 * B * K + B)});
}

// Regularisation ops. drop_path: B*n floats read and written (the masks are generated).
static void w_drop_path(Backend *be, float *out, const float *inp, int B, size_t n, float rate, uint64_t seed,
                        uint32_t step, uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->drop_path(w->inner, out, inp, B, n, rate, seed, step, site);
    if (t0) span_end(w, t0, &(ProfOpSpan){"drop_path", "B,n,site", {B, I64(n), site}, 0, F4 * 2.0 * B * n});
}

// The patches read and written in place (B*S*S*C), weights and boxes (6 per sample).
static void w_mix_images(Backend *be, float *patches, const float *wt, const int *box, int B, int S, int C, int P) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->mix_images(w->inner, patches, wt, box, B, S, C, P);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"mix_images", "B,S,C,P", {B, S, C, P}, 0, F4 * (2.0 * B * S * S * C + 6.0 * B)});
}

// As xent_forward/xent_backward, plus two weights per sample.
static void w_xent_mix_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                               const float *wt, int B, int K, float smoothing) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->xent_mix_forward(w->inner, probs, losses, logits, labels, wt, B, K, smoothing);
    if (t0) span_end(w, t0, &(ProfOpSpan){"xent_mix_forward", "B,K", {B, K}, 0, F4 * (2.0 * B * K + 4.0 * B)});
}

static void w_xent_mix_backward(Backend *be, float *dlogits, const float *probs, const int *labels, const float *wt,
                                int B, int K, float smoothing, float scale) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->xent_mix_backward(w->inner, dlogits, probs, labels, wt, B, K, smoothing, scale);
    if (t0) span_end(w, t0, &(ProfOpSpan){"xent_mix_backward", "B,K", {B, K}, 0, F4 * (2.0 * B * K + 3.0 * B)});
}

// ---- attention --------------------------------------------------------------------------------

static size_t w_attention_state_floats(Backend *be, int B, int T, int H, int hd) {
    Wrap *w = be->impl;
    return w->inner->attention_state_floats(w->inner, B, T, H, hd);
}

static size_t w_attention_scratch_floats(Backend *be, int B, int T, int H, int hd) {
    Wrap *w = be->impl;
    return w->inner->attention_scratch_floats(w->inner, B, T, H, hd);
}

// The saved state is backend-defined (probabilities on the CPU, statistics in a flash
// kernel), so its size is asked of the backend; scratch is the backend's business, uncounted.
static double state_bytes(const Wrap *w, int B, int T, int H, int hd) {
    return w->inner->attention_state_floats ? F4 * w->inner->attention_state_floats(w->inner, B, T, H, hd) : 0;
}

// 4*B*H*T*T*hd flops: Q K^T and P V, 2*T*T*hd each per head (softmax not counted). Bytes:
// q, k, v read and out written (B*T*H*hd each), the state written.
static int w_attention_forward(Backend *be, float *out, float *state, float *scratch, const float *q, const float *k,
                               const float *v, int B, int T, int H, int hd) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->attention_forward(w->inner, out, state, scratch, q, k, v, B, T, H, hd);
    if (t0) {
        double bthd = (double)B * T * H * hd;
        span_end(w, t0, &(ProfOpSpan){"attention_forward", "B,T,H,hd", {B, T, H, hd}, 4.0 * bthd * T,
                                      F4 * 4 * bthd + state_bytes(w, B, T, H, hd)});
    }
    return rc;
}

// 8*B*H*T*T*hd flops: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q. A backend that
// recomputes P (Q K^T, flash style) does 2*T*T*hd more per head that are not counted: the count
// is the algorithm's, so GFLOP/s compare across backends. Bytes: dout, q, k, v read, dq, dk,
// dv written (B*T*H*hd each), the state read.
static int w_attention_backward(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *state, float *scratch, const float *q, const float *k, const float *v, int B, int T, int H,
                                int hd) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->attention_backward(w->inner, dq, dk, dv, dout, out, state, scratch, q, k, v, B, T, H, hd);
    if (t0) {
        double bthd = (double)B * T * H * hd;
        span_end(w, t0, &(ProfOpSpan){"attention_backward", "B,T,H,hd", {B, T, H, hd}, 8.0 * bthd * T,
                                      F4 * 7 * bthd + state_bytes(w, B, T, H, hd)});
    }
    return rc;
}

// ---- optimizer ----------------------------------------------------------------------------------

// Per parameter: params read+written, grads read, each slot the kind uses read+written:
// sgd (m) 5, adam/adamw (m, v) 7, rmsprop (v) 5 floats.
static void w_residual_layernorm_forward(Backend *be, float *sum, float *out, float *mean, float *rstd,
                                         const float *x, const float *y, const float *scale, const float *bias,
                                         int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                         uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->residual_layernorm_forward(w->inner, sum, out, mean, rstd, x, y, scale, bias, rows, C, eps, rate, seed,
                                         step, site);
    // x and y read, sum written, and with the LayerNorm its output and statistics.
    double n = (double)rows * C, bytes = F4 * (out ? 4 * n + 2 * C + 2.0 * rows : 3 * n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"residual_layernorm", "rows,C", {rows, C}, 0, bytes});
}

static void w_gelu_dropout_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx, float rate,
                                   uint64_t seed, uint32_t step, uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gelu_dropout_forward(w->inner, out, inp, n, tanh_approx, rate, seed, step, site);
    if (t0) span_end(w, t0, &(ProfOpSpan){"gelu_dropout_forward", "n,tanh", {I64(n), tanh_approx}, 0, F4 * 2 * n});
}

static void w_gelu_dropout_backward(Backend *be, float *dinp, float *dbias, const float *inp, const float *dout,
                                    int rows, int cols, int tanh_approx, float rate, uint64_t seed, uint32_t step,
                                    uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gelu_dropout_backward(w->inner, dinp, dbias, inp, dout, rows, cols, tanh_approx, rate, seed, step, site);
    double n = (double)rows * cols;
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"gelu_dropout_backward", "rows,cols", {rows, cols}, 0, F4 * (3 * n + 2 * cols)});
}

static void w_optimizer_update_segments(Backend *be, float *params, const float *grads, float *m, float *v,
                                        const OptimSegment *segs, int nsegs, const OptimStep *s) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->optimizer_update_segments(w->inner, params, grads, m, v, segs, nsegs, s);
    if (t0) {
        double n = 0;
        for (int i = 0; i < nsegs; i++) n += (double)segs[i].n;
        int floats = s->kind == OPT_ADAM || s->kind == OPT_ADAMW ? 7 : 5;  // as w_optimizer_update
        span_end(w, t0, &(ProfOpSpan){"optimizer_update", "n,kind", {I64(n), s->kind}, 0, F4 * floats * n});
    }
}

static void w_optimizer_update(Backend *be, float *params, const float *grads, float *m, float *v, size_t n,
                               const OptimStep *s) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->optimizer_update(w->inner, params, grads, m, v, n, s);
    if (t0) {
        int floats = s->kind == OPT_ADAM || s->kind == OPT_ADAMW ? 7 : 5;
        span_end(w, t0, &(ProfOpSpan){"optimizer_update", "n,kind", {I64(n), s->kind}, 0, F4 * floats * n});
    }
}

// The average and the parameters read, the average written.
static void w_ema_update(Backend *be, float *ema, const float *params, size_t n, float weight) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->ema_update(w->inner, ema, params, n, weight);
    if (t0) span_end(w, t0, &(ProfOpSpan){"ema_update", "n", {I64(n)}, 0, F4 * 3.0 * n});
}

// ---- device-side step scalars ----------------------------------------------------------------

static void w_scalars_write(Backend *be, double *dst, const double *src, int n) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->scalars_write(w->inner, dst, src, n);
    if (t0) span_end(w, t0, &(ProfOpSpan){"scalars_write", "n", {n}, 0, 8.0 * n});
}

// The gradient read once (as sum_squares), a few doubles written.
static void w_grad_norm_clip(Backend *be, double *sc, const float *grads, size_t n, float clip_norm) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->grad_norm_clip(w->inner, sc, grads, n, clip_norm);
    if (t0) span_end(w, t0, &(ProfOpSpan){"grad_norm_clip", "n", {I64(n)}, 0, F4 * n});
}

static void w_optimizer_update_scalars(Backend *be, float *params, const float *grads, float *m, float *v,
                                       const OptimSegment *segs, int nsegs, const OptimStep *s, const double *sc) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->optimizer_update_scalars(w->inner, params, grads, m, v, segs, nsegs, s, sc);
    if (t0) {
        double n = 0;
        for (int i = 0; i < nsegs; i++) n += (double)segs[i].n;
        int floats = s->kind == OPT_ADAM || s->kind == OPT_ADAMW ? 7 : 5;  // as w_optimizer_update
        span_end(w, t0, &(ProfOpSpan){"optimizer_update", "n,kind", {I64(n), s->kind}, 0, F4 * floats * n});
    }
}

// Logits and losses read.
static void w_metrics_accumulate(Backend *be, double *acc, const float *losses, const float *logits,
                                 const int *labels, int B, int K) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->metrics_accumulate(w->inner, acc, losses, logits, labels, B, K);
    if (t0) span_end(w, t0, &(ProfOpSpan){"metrics_accumulate", "B,K", {B, K}, 0, F4 * (double)B * (K + 2)});
}

// ---- bf16 activations (backend.h) ---------------------------------------------------------------
// As their fp32 ops, with 2 bytes for each bf16 element.
static int w_gemm_bf16(Backend *be, const GemmBf16 *g) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->gemm_bf16(w->inner, g);
    if (t0) {
        double mn = (double)g->M * g->N, b = g->batch, ea = g->a_bf16 ? 2 : 4, eb = g->b_bf16 ? 2 : 4;
        span_end(w, t0,
                 &(ProfOpSpan){"gemm_bf16", "batch,M,N,K,transA,transB,accumulate,bias",
                               {g->batch, g->M, g->N, g->K, g->transA, g->transB, g->accumulate, g->bias != NULL},
                               2.0 * b * mn * g->K,
                               b * ((double)g->M * g->K * ea + (double)g->K * g->N * eb + F4 * mn) +
                                   (g->accumulate ? F4 * b * mn : 0) + (g->bias ? F4 * g->N : 0)});
    }
    return rc;
}

static void w_layernorm_forward_bf16(Backend *be, uint16_t *out, float *mean, float *rstd, const float *inp,
                                     const float *scale, const float *bias, int rows, int C, float eps) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->layernorm_forward_bf16(w->inner, out, mean, rstd, inp, scale, bias, rows, C, eps);
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"layernorm_forward_bf16", "rows,C", {rows, C}, 0,
                                      6.0 * rows * C + F4 * (2.0 * C + 2.0 * rows)});
}

static void w_residual_layernorm_forward_bf16(Backend *be, float *sum, uint16_t *out, float *mean, float *rstd,
                                              const float *x, const float *y, const float *scale, const float *bias,
                                              int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                              uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->residual_layernorm_forward_bf16(w->inner, sum, out, mean, rstd, x, y, scale, bias, rows, C, eps, rate,
                                              seed, step, site);
    double n = (double)rows * C;
    if (t0)
        span_end(w, t0, &(ProfOpSpan){"residual_layernorm_bf16", "rows,C", {rows, C}, 0,
                                      14.0 * n + F4 * (2.0 * C + 2.0 * rows)});
}

static void w_gelu_dropout_forward_bf16(Backend *be, uint16_t *out, const float *inp, size_t n, int tanh_approx,
                                        float rate, uint64_t seed, uint32_t step, uint32_t site) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    w->inner->gelu_dropout_forward_bf16(w->inner, out, inp, n, tanh_approx, rate, seed, step, site);
    if (t0) span_end(w, t0, &(ProfOpSpan){"gelu_dropout_forward_bf16", "n,tanh", {I64(n), tanh_approx}, 0, 6.0 * n});
}

static int w_attention_forward_bf16(Backend *be, float *out, uint16_t *out_bf16, float *state, float *scratch,
                                    const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    Wrap *w = be->impl;
    uint64_t t0 = span_start(w);
    int rc = w->inner->attention_forward_bf16(w->inner, out, out_bf16, state, scratch, q, k, v, B, T, H, hd);
    if (t0) {
        double bthd = (double)B * T * H * hd;
        span_end(w, t0, &(ProfOpSpan){"attention_forward_bf16", "B,T,H,hd", {B, T, H, hd}, 4.0 * bthd * T,
                                      F4 * 4 * bthd + 2 * bthd + state_bytes(w, B, T, H, hd)});
    }
    return rc;
}

// Frees the wrapper only; inner belongs to the caller.
static void w_destroy(Backend *be) {
    free(be->impl);
    free(be);
}

// name, details, impl and 57 function pointers. When backend.h gains an op this stops the build, so the
// new op cannot stay NULL here (a crash) or be copied unwrapped (called with the wrong impl).
_Static_assert(sizeof(Backend) == 3 * sizeof(void *) + 57 * sizeof(void (*)(void)),
               "backend.h changed: wrap the new op in profiled_backend.c, then update this count");

Backend *backend_profiled(Backend *inner, Profiler *p, int sync) {
    if (!inner || !p) {
        vit_fail("backend_profiled: %s", inner ? "no profiler" : "no backend to wrap");
        return NULL;
    }
    if (sync && !inner->synchronize) {
        vit_fail("backend_profiled: the %s backend has no synchronize", inner->name ? inner->name : "inner");
        return NULL;
    }
    Backend *be = calloc(1, sizeof *be);
    Wrap *w = calloc(1, sizeof *w);
    if (!be || !w) {
        free(be);
        free(w);
        vit_fail("out of memory creating the profiled backend");
        return NULL;
    }
    *w = (Wrap){inner, p, !!sync};
    be->name = inner->name;
    be->details = inner->details;
    be->impl = w;
    be->destroy = w_destroy;
    // An op the inner table lacks stays NULL, so callers see the same table.
#define WRAP(op) be->op = inner->op ? w_##op : NULL
    WRAP(alloc);
    WRAP(release);
    WRAP(upload);
    WRAP(download);
    WRAP(zero);
    WRAP(synchronize);
    WRAP(alloc_host);
    WRAP(release_host);
    WRAP(upload_async);
    WRAP(wait_uploads);
    WRAP(gemm);
    WRAP(gemm_bias_gelu);
    WRAP(bias_backward);
    WRAP(layernorm_forward);
    WRAP(layernorm_backward);
    WRAP(gelu_forward);
    WRAP(gelu_backward);
    WRAP(tanh_forward);
    WRAP(tanh_backward);
    WRAP(dropout_forward);
    WRAP(dropout_backward);
    WRAP(residual_layernorm_forward);
    WRAP(gelu_dropout_forward);
    WRAP(gelu_dropout_backward);
    WRAP(add);
    WRAP(scale);
    WRAP(sum_squares);
    WRAP(patchify);
    WRAP(tokens_forward);
    WRAP(tokens_backward);
    WRAP(gather_cls);
    WRAP(scatter_cls);
    WRAP(attention_state_floats);
    WRAP(attention_scratch_floats);
    WRAP(attention_forward);
    WRAP(attention_backward);
    WRAP(xent_forward);
    WRAP(xent_backward);
    WRAP(drop_path);
    WRAP(mix_images);
    WRAP(xent_mix_forward);
    WRAP(xent_mix_backward);
    WRAP(to_bf16);
    WRAP(from_bf16);
    WRAP(gemm_bf16);
    WRAP(layernorm_forward_bf16);
    WRAP(residual_layernorm_forward_bf16);
    WRAP(gelu_dropout_forward_bf16);
    WRAP(attention_forward_bf16);
    WRAP(optimizer_update);
    WRAP(optimizer_update_segments);
    WRAP(ema_update);
    WRAP(scalars_write);
    WRAP(grad_norm_clip);
    WRAP(optimizer_update_scalars);
    WRAP(metrics_accumulate);
#undef WRAP
    return be;
}
