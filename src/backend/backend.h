// The compute interface the model is written against. A backend implements every op
// for its device (cpu: oneDNN + OpenMP loops; cuda: cuBLASLt + own kernels). Model code
// only ever sees this table and opaque device pointers, never a backend's headers.
//
// Conventions: row-major tensors; token activations are (B, T, D); ops named *_backward
// overwrite their input-gradient outputs unless the comment says "+=" (parameter
// gradients always accumulate, so gradient accumulation over micro-batches is free).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { OPT_SGD, OPT_ADAM, OPT_ADAMW, OPT_RMSPROP } OptimizerKind;

// One optimizer update over a contiguous range of parameters.
typedef struct {
    OptimizerKind kind;
    float lr;
    float momentum;      // sgd
    float beta1, beta2;  // adam, adamw
    float rho;           // rmsprop
    float epsilon;
    float weight_decay;  // decoupled: p -= lr * wd * p (0 for ranges without decay)
    int t;               // 1-based update count (adam bias correction)
    float grad_scale;    // gradients are multiplied by this first (global-norm clipping)
} OptimStep;

// One parameter range of a multi-tensor optimizer update (offsets in floats).
typedef struct {
    size_t param, slot, n;
    int decay;
} OptimSegment;

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

    // bf16 storage of the activations the backward pass reads (-d bf16): dst = src rounded to
    // the nearest bf16 (ties to even, NaN kept) as raw bf16 bits, and back. A backend may
    // leave both NULL; the model then keeps those activations in fp32.
    void (*to_bf16)(Backend *be, uint16_t *dst, const float *src, size_t n);
    void (*from_bf16)(Backend *be, float *dst, const uint16_t *src, size_t n);

    // One optimizer update of n parameters with slots m and v (unused slots may be NULL).
    void (*optimizer_update)(Backend *be, float *params, const float *grads, float *m, float *v, size_t n,
                             const OptimStep *s);
    // The same update over many parameter ranges in one call (one kernel launch on a GPU, one
    // parallel region on the CPU): segment i updates params/grads [param, param + n) with slots
    // m/v [slot, slot + n), and applies s->weight_decay only where `decay` is set.
    void (*optimizer_update_segments)(Backend *be, float *params, const float *grads, float *m, float *v,
                                      const OptimSegment *segs, int nsegs, const OptimStep *s);

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
