// The compute interface the model is written against. A backend implements every op
// for its device (cpu: oneDNN + OpenMP loops; cuda: cuBLASLt + own kernels). Model code
// only ever sees this table and opaque device pointers, never a backend's headers.
//
// Conventions: row-major tensors; token activations are (B, T, D); ops named *_backward
// overwrite their input-gradient outputs unless the comment says "+=" (parameter
// gradients always accumulate, so gradient accumulation over micro-batches is free).
//
// The op contract (tests/test_backend_ops.c holds every backend to it, op by op):
//  - Pointers are device pointers from `alloc` (host memory on the CPU), fp32 unless the type
//    says otherwise, aligned to their element type only (a backend may pick faster kernels
//    for better aligned ones).
//    Ops are issued in order; a later op sees what an earlier one wrote. Results are meant
//    for the host only after `download` (or `synchronize`), which waits for the ops before it.
//  - Overwrite: every element of an output is written and nothing it held before is read:
//    gemm without `accumulate`, gemm_bias_gelu, the *_forward ops (out, mean, rstd, state),
//    the elementwise ops, gelu_dropout_backward's dinp, tokens_backward's demb, scatter_cls
//    (the whole dx, zeros included), attention_backward's dq/dk/dv, xent's outputs.
//  - "+=": the op adds to what the output holds (the caller zeroes it first when it wants
//    the value alone): gemm with `accumulate`, bias_backward, layernorm_backward (dinp as
//    well as dscale and dbias), gelu_dropout_backward's dbias, tokens_backward's dcls and dpos.
//  - Aliasing: only where a comment allows it (gelu/tanh/dropout/gelu_dropout backward: dinp
//    may be dout; dropout_forward: out may be inp; add: out may be a or b; residual
//    layernorm: sum may be x or y; scale and mix_images work in place; drop_path: out may be
//    inp). Everywhere else outputs must not overlap inputs or each other (gemm: C is neither
//    A nor B; gelu_dropout_forward's out is never inp).
//  - Dropout masks are the pure function rng_keep(seed, step, site, i) on every backend and
//    instruction set, kept elements scaled by 1/(1 - rate) in fp32: devices agree bit for bit.
//    The CPU backend gives the same bits whatever its thread count (tests/test_ops.c).
//  - Numerics: fp32, with the sums of the non-product ops (column sums, LayerNorm statistics,
//    cross-entropy, sum_squares) in double; the bf16 and tf32 modes change only the products
//    (gemm, gemm_bias_gelu, attention).
//
// Errors. Ops that return int (gemm, gemm_bias_gelu, attention_forward/backward) return
// VIT_OK or VIT_ERR with a one-line vit_fail message; alloc/alloc_host return NULL with one.
// An allocation failure or a refused shape (cuda attention's head dimension above 128)
// leaves the backend usable. The void ops cannot report: a failure is latched in the backend
// with its first message (later failures keep it). On the CPU the one such failure is an
// out-of-memory for the reduction scratch: the op leaves NaN in its outputs and the next
// int-returning op returns VIT_ERR with the message. On CUDA a failed call (a launch, a copy,
// a cuBLASLt call, a missing optimizer slot) is latched the same way; from then on every void op and copy does nothing,
// download fills its host buffer with 0xff bytes (NaN floats, never stale data), sum_squares
// returns NaN, and the next int-returning op returns VIT_ERR re-raising the first message.
// Kernels run asynchronously, so a fault inside one surfaces only at a later check (the next
// launch's check, synchronize, upload or download): a caller learns of a void op's failure
// from the next gemm or attention call, or from NaN in what it downloads (the trainer checks
// the loss and the gradient norm for that). There is no reset.
//
// Optional ops (may be NULL; test_backend_ops tests them where present): gemm_bias_gelu (the
// model then runs gemm and gelu_forward), to_bf16 and from_bf16 (both or neither; the model
// then keeps the activations of the backward pass in fp32), and the bf16-activation block
// (gemm_bf16 .. attention_forward_bf16, all or none; see there). The CPU backend has the first
// three, the CUDA backend none of them; the bf16-activation block is opt-in on both. Every
// other member must be set.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "optim/step.h"

// The device-side step scalars (scalars_write, grad_norm_clip, optimizer_update_scalars):
// indices into a buffer of STEP_SCALARS doubles. The host writes SKIP, LR, C1 and SQRT_C2.
enum { STEP_NORM, STEP_SCALE, STEP_SKIP, STEP_LR, STEP_C1, STEP_SQRT_C2, STEP_SCALARS = 8 };
// metrics_accumulate's sums: indices into a buffer of METRICS doubles.
enum { METRIC_LOSS, METRIC_TOP1, METRIC_TOP5, METRIC_NONFINITE, METRICS };

// The operands of gemm_bf16 (bf16 activations, below): C[b] = alpha * op(A[b]) @ op(B[b])
// (+ bias[b]) (+ C[b] if accumulate) for b < batch, shapes as gemm's, where X[b] is X + b *
// stride_x elements (strides >= 0; 0 repeats one matrix, so one A can meet three weights). A and B
// are fp32 or raw bf16 bits (a_bf16, b_bf16); C and bias are fp32.
typedef struct {
    int batch, M, N, K;
    const void *A, *B;
    int a_bf16, b_bf16, transA, transB;
    long long stride_a, stride_b, stride_c, stride_bias;
    float *C;
    const float *bias;  // may be NULL
    float alpha;
    int accumulate;
} GemmBf16;

typedef struct Backend Backend;
struct Backend {
    const char *name;
    // What does the work, for start-up lines: the matrix library and kernel set, the device.
    const char *details;
    void *impl;

    // Memory. alloc returns NULL (with vit_fail) when out of memory.
    void *(*alloc)(Backend *be, size_t bytes);
    void (*release)(Backend *be, void *p);
    void (*upload)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*download)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(Backend *be, void *p, size_t bytes);
    void (*synchronize)(Backend *be);
    // Host memory the device copies from fastest: page-locked on a GPU (copied by DMA with no
    // staging, and asynchronously), plain malloc on the CPU. NULL (with vit_fail) when out of memory.
    void *(*alloc_host)(Backend *be, size_t bytes);
    void (*release_host)(Backend *be, void *p);
    // Starts copying src to device memory dst and returns; the copy waits for the ops issued
    // so far (dst may still be in use) and runs beside the ops issued after it, until
    // wait_uploads makes the ops that follow it wait for every copy started. src must stay
    // unchanged until then.
    void (*upload_async)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*wait_uploads)(Backend *be);

    // C[b] = alpha * op(A[b]) @ op(B[b]) (+ bias broadcast over rows) (+ C[b] if accumulate)
    // for b < batch; C is M x N, op(A) is M x K, op(B) is K x N; A/B/C of consecutive
    // batches are contiguous. bias may be NULL. Returns VIT_ERR on failure.
    int (*gemm)(Backend *be, int batch, int M, int N, int K, const float *A, int transA,
                const float *B, int transB, float *C, const float *bias, float alpha, int accumulate);
    // C = GELU(A @ B + bias) (erf, or the tanh approximation) for plain A (M x K) and B (K x N):
    // the MLP's first layer with its activation as the product's epilogue, for forward passes
    // that keep no pre-activation (inference). May be NULL: the model then runs gemm and
    // gelu_forward.
    int (*gemm_bias_gelu)(Backend *be, int M, int N, int K, const float *A, const float *B, float *C,
                          const float *bias, int tanh_approx);
    // dbias[j] += sum_i dout[i*N + j]
    void (*bias_backward)(Backend *be, float *dbias, const float *dout, int M, int N);

    // LayerNorm over the last dimension C, saving mean and 1/std per row.
    void (*layernorm_forward)(Backend *be, float *out, float *mean, float *rstd, const float *inp,
                              const float *scale, const float *bias, int rows, int C, float eps);
    // dinp += ..., dscale += ..., dbias += ...
    void (*layernorm_backward)(Backend *be, float *dinp, float *dscale, float *dbias, const float *dout,
                               const float *inp, const float *scale, const float *mean, const float *rstd,
                               int rows, int C);

    void (*gelu_forward)(Backend *be, float *out, const float *inp, size_t n, int tanh_approx);
    // dinp = dout * gelu'(inp); dinp may alias dout
    void (*gelu_backward)(Backend *be, float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx);
    void (*tanh_forward)(Backend *be, float *out, const float *inp, size_t n);
    // dinp = dout * (1 - out^2); dinp may alias dout
    void (*tanh_backward)(Backend *be, float *dinp, const float *out, const float *dout, size_t n);

    // Inverted dropout with the counter-based mask rng_keep(seed, step, site, i); the
    // backward pass regenerates the same mask. out/dinp may alias their inputs.
    void (*dropout_forward)(Backend *be, float *out, const float *inp, size_t n, float rate,
                            uint64_t seed, uint32_t step, uint32_t site);
    void (*dropout_backward)(Backend *be, float *dinp, const float *dout, size_t n, float rate,
                             uint64_t seed, uint32_t step, uint32_t site);

    // Fused elementwise ops of the training step: one pass over memory where the unfused ops
    // make two or three. Each equals its composition of the ops above (same masks, same
    // rounding), which the tests check.
    //
    // sum = x + dropout(y) (rate 0: x + y; sum may alias x or y), then, when out is not NULL,
    // out = LayerNorm(sum) with mean and 1/std per row: a residual add with its branch's
    // dropout and the LayerNorm that reads it. Masks as dropout_forward over rows*C elements.
    void (*residual_layernorm_forward)(Backend *be, float *sum, float *out, float *mean, float *rstd, const float *x,
                                       const float *y, const float *scale, const float *bias, int rows, int C,
                                       float eps, float rate, uint64_t seed, uint32_t step, uint32_t site);
    // out = dropout(GELU(inp)) (rate 0: GELU alone); out must not alias inp (the backward
    // pass reads the pre-activation).
    void (*gelu_dropout_forward)(Backend *be, float *out, const float *inp, size_t n, int tanh_approx, float rate,
                                 uint64_t seed, uint32_t step, uint32_t site);
    // dinp = gelu'(inp) * dropout_backward(dout) over a rows x cols matrix, and
    // dbias += column sums of dinp: the backward pass of bias + GELU + dropout in one pass.
    // dinp may alias dout.
    void (*gelu_dropout_backward)(Backend *be, float *dinp, float *dbias, const float *inp, const float *dout,
                                  int rows, int cols, int tanh_approx, float rate, uint64_t seed, uint32_t step,
                                  uint32_t site);

    // out = a + b (out may alias a or b)
    void (*add)(Backend *be, float *out, const float *a, const float *b, size_t n);
    // out *= s
    void (*scale)(Backend *be, float *x, size_t n, float s);
    // Sum of squares of x, returned to the host in double precision.
    double (*sum_squares)(Backend *be, const float *x, size_t n);

    // uint8 images (B, S, S, C) -> patches (B, G*G, P*P*C) in [-1, 1], row-major patch
    // order, each patch flattened (py, px, c) as the HWIO embedding kernel expects.
    void (*patchify)(Backend *be, float *patches, const uint8_t *images, int B, int S, int C, int P);
    // x[b,0] = cls + pos[0]; x[b,t] = emb[b,t-1] + pos[t]
    void (*tokens_forward)(Backend *be, float *x, const float *emb, const float *cls, const float *pos,
                           int B, int T, int D);
    // demb = dx[:,1:]; dcls += sum_b dx[b,0]; dpos += sum_b dx[b]
    void (*tokens_backward)(Backend *be, float *demb, float *dcls, float *dpos, const float *dx,
                            int B, int T, int D);
    // out[b] = x[b,0,:]
    void (*gather_cls)(Backend *be, float *out, const float *x, int B, int T, int D);
    // dx = 0 except dx[b,0,:] = dcls[b]
    void (*scatter_cls)(Backend *be, float *dx, const float *dcls, int B, int T, int D);

    // Multi-head attention on q, k, v of shape (B, T, H*hd), out (B, T, H*hd).
    // The backend saves what its backward needs in `state` (attention_state_floats) and
    // uses `scratch` (attention_scratch_floats) as it likes.
    size_t (*attention_state_floats)(Backend *be, int B, int T, int H, int hd);
    size_t (*attention_scratch_floats)(Backend *be, int B, int T, int H, int hd);
    int (*attention_forward)(Backend *be, float *out, float *state, float *scratch, const float *q,
                             const float *k, const float *v, int B, int T, int H, int hd);
    // out is the forward pass's output (flash-style backends take D_i = dO_i . O_i from it).
    int (*attention_backward)(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                              const float *state, float *scratch, const float *q, const float *k,
                              const float *v, int B, int T, int H, int hd);

    // Softmax cross-entropy with label smoothing: probs (B,K), per-sample losses (B).
    void (*xent_forward)(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                         int B, int K, float smoothing);
    // dlogits = scale * (probs - smoothed one-hot)
    void (*xent_backward)(Backend *be, float *dlogits, const float *probs, const int *labels, int B, int K,
                          float smoothing, float scale);

    // Regularisation of the training step, as timm defines it (drop path; Mixup and CutMix,
    // whose per-sample arguments src/data/mixup.h draws). Every mixing op pairs sample b with
    // sample B-1-b (timm's x.flip(0)).
    //
    // Stochastic depth: out[b, j] = inp[b, j] * m_b for B samples of n floats each, m_b =
    // 1/(1 - rate) in fp32 where rng_keep(seed, step, site, b, 1 - rate) keeps sample b and +0
    // where it drops it (rate 1 drops every sample). Linear and diagonal, so the backward pass
    // is the same call on the gradient. out may alias inp.
    void (*drop_path)(Backend *be, float *out, const float *inp, int B, size_t n, float rate, uint64_t seed,
                      uint32_t step, uint32_t site);
    // Mixup/CutMix of B patchified images (B, G*G, P*P*C) of S x S pixels, in place (both
    // samples of a pair are read before either is written): pixel (y, x) of sample b inside
    // box[4b..4b+3] = yl, yh, xl, xh (half-open, pixel coordinates) takes sample B-1-b's value;
    // elsewhere fp32(fp32(w[2b] * own) + fp32(w[2b+1] * partner's)). w, box: device memory.
    void (*mix_images)(Backend *be, float *patches, const float *w, const int *box, int B, int S, int C, int P);
    // Softmax cross-entropy against soft targets t[b,k] = fp32(fp32(w[2b] a_k) + fp32(w[2b+1] c_k)),
    // a and c the smoothed one-hots of labels[b] and labels[B-1-b] (timm's one_hot: off =
    // smoothing/K, on = 1 - smoothing + off, in double, then fp32): probs (B,K), per-sample
    // losses -sum_k t_k log p_k (B). w: device memory, two floats per sample.
    void (*xent_mix_forward)(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                             const float *w, int B, int K, float smoothing);
    // dlogits = scale * (probs - t), t as xent_mix_forward's.
    void (*xent_mix_backward)(Backend *be, float *dlogits, const float *probs, const int *labels, const float *w,
                              int B, int K, float smoothing, float scale);

    // bf16 storage of the activations the backward pass reads (-d bf16): dst = src rounded to
    // the nearest bf16 (ties to even, NaN kept) as raw bf16 bits, and back. A backend may
    // leave both NULL; the model then keeps those activations in fp32.
    void (*to_bf16)(Backend *be, uint16_t *dst, const float *src, size_t n);
    void (*from_bf16)(Backend *be, float *dst, const uint16_t *src, size_t n);

    // bf16 activations (issue 15 item 3; docs/gpu.md): the ops that make a product's operand
    // write it in bf16, and a product that reads bf16 operands as they are. Optional, all or
    // none: the CUDA backend has them with bf16 products and VIT_CUDA_BF16_ACTS=1, the CPU
    // backend after backend_cpu_set_bf16_acts(be, 1) (tests). Each *_bf16 op writes exactly
    // the fp32 op's result rounded to bf16 (nearest even, as to_bf16), everything else as the
    // fp32 op (mean, rstd, sum in fp32).
    //
    // gemm_bf16: the products of bf16 values (fp32 operands rounded to bf16 first, nearest
    // even), summed in fp32, whatever the backend's precision. C[b] must not overlap each other,
    // A, B or bias. Returns VIT_ERR on failure (as gemm).
    int (*gemm_bf16)(Backend *be, const GemmBf16 *g);
    // layernorm_forward with out in bf16.
    void (*layernorm_forward_bf16)(Backend *be, uint16_t *out, float *mean, float *rstd, const float *inp,
                                   const float *scale, const float *bias, int rows, int C, float eps);
    // residual_layernorm_forward with out (not NULL) in bf16; sum fp32 (may alias x or y).
    void (*residual_layernorm_forward_bf16)(Backend *be, float *sum, uint16_t *out, float *mean, float *rstd,
                                            const float *x, const float *y, const float *scale, const float *bias,
                                            int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                            uint32_t site);
    // gelu_dropout_forward with out in bf16 (inp stays fp32: the backward pass reads it).
    void (*gelu_dropout_forward_bf16)(Backend *be, uint16_t *out, const float *inp, size_t n, int tanh_approx,
                                      float rate, uint64_t seed, uint32_t step, uint32_t site);
    // attention_forward writing out in fp32 (what attention_backward reads) and in bf16
    // (out_bf16: the out projection's operand).
    int (*attention_forward_bf16)(Backend *be, float *out, uint16_t *out_bf16, float *state, float *scratch,
                                  const float *q, const float *k, const float *v, int B, int T, int H, int hd);

    // One optimizer update of n parameters with slots m and v (unused slots may be NULL).
    void (*optimizer_update)(Backend *be, float *params, const float *grads, float *m, float *v, size_t n,
                             const OptimStep *s);
    // The same update over many parameter ranges in one call (one kernel launch on a GPU, one
    // parallel region on the CPU): segment i updates params/grads [param, param + n) with slots
    // m/v [slot, slot + n), and applies s->weight_decay only where `decay` is set, each segment
    // with learning rate fp32(s->lr * lr_scale): bit for bit one optimizer_update per segment
    // with that lr (and weight_decay 0 where `decay` is not set).
    void (*optimizer_update_segments)(Backend *be, float *params, const float *grads, float *m, float *v,
                                      const OptimSegment *segs, int nsegs, const OptimStep *s);
    // The moving average of the weights (--model_ema): ema = lerp(ema, params, weight) over n
    // floats in PyTorch's form (timm's ModelEmaV3): ema + weight * (params - ema) when |weight|
    // < 0.5, else params - (params - ema) * (1 - weight), each operation rounded in fp32, so
    // weight 1 (timm's first update) copies params exactly. ema must not overlap params.
    void (*ema_update)(Backend *be, float *ema, const float *params, size_t n, float weight);

    // Device-side step scalars: the figures of one update live in a small device buffer of
    // STEP_SCALARS doubles (indices StepScalar, train/update.c owns one per run), so that
    // norm, clip scale, skip decision and learning rate never travel through the host inside
    // a step, and a captured step (CUDA graph) replays with the rate the host writes before it.
    // On the CPU the buffer is plain memory and the results are bit for bit the host path's.
    //
    // dst[0..n) = src[0..n), 0 < n <= STEP_SCALARS, in op order; the host does not wait and may
    // reuse src once the call returns (on a GPU the values travel as kernel arguments).
    void (*scalars_write)(Backend *be, double *dst, const double *src, int n);
    // The global gradient norm and what follows from it: sc[STEP_NORM] = sqrt(sum of squares of
    // g[0..n)) (the sum exactly as sum_squares computes it on this backend), sc[STEP_SCALE] =
    // (double)fp32(clip_norm / norm) when clip_norm > 0 and norm > clip_norm, else 1, and
    // sc[STEP_SKIP] = 1 when the norm is not finite (a skip already set there is kept).
    void (*grad_norm_clip)(Backend *be, double *sc, const float *grads, size_t n, float clip_norm);
    // optimizer_update_segments with the step's scalars read from the device: lr =
    // fp32(sc[STEP_LR]), grad_scale = fp32(sc[STEP_SCALE]), the adam bias corrections from
    // sc[STEP_C1] = 1 - beta1^t and sc[STEP_SQRT_C2] = sqrt(1 - beta2^t) (s->lr, grad_scale and t
    // are ignored). Bit for bit the host-scalar op with those values; when sc[STEP_SKIP] != 0
    // nothing is written (parameters and slots keep their bits: a skipped update).
    void (*optimizer_update_scalars)(Backend *be, float *params, const float *grads, float *m, float *v,
                                     const OptimSegment *segs, int nsegs, const OptimStep *s, const double *sc);
    // Training metrics summed on the device, read by the host only when it reports them
    // ("+="): acc[METRIC_LOSS] += the B per-sample losses added in order from 0 in double,
    // acc[METRIC_TOP1] / acc[METRIC_TOP5] += the samples whose label ranks first / in the first
    // five of its logits row (higher first, ties by index: train/evaluate.c's count_hits),
    // acc[METRIC_NONFINITE] += 1 when this batch's loss sum is not finite.
    void (*metrics_accumulate)(Backend *be, double *acc, const float *losses, const float *logits, const int *labels,
                               int B, int K);

    void (*destroy)(Backend *be);
};

// Creates the CPU backend with `threads` OpenMP threads (0 = all cores).
Backend *backend_cpu_create(int threads);
// bf16 matrix products on the CPU backend (-d bf16): both operands of every gemm rounded to
// bf16 (nearest even), products and sums in fp32 -- what AVX512-BF16/AMX instructions
// compute, and where oneDNN has such a kernel for this CPU it runs them (about twice the
// fp32 rate). Elsewhere the rounded operands go through the fp32 kernels: the same numbers,
// no speed-up.
void backend_cpu_set_bf16(Backend *be, int on);
// Installs (on) or removes the CPU backend's bf16-activation ops (gemm_bf16 and the *_bf16
// ops above): off by default, so the model's CPU path is unchanged; tests turn them on.
void backend_cpu_set_bf16_acts(Backend *be, int on);
