// The Vision Transformer, forward and backward, written out layer by layer against the
// backend op table. Activations are planned from (config, micro-batch) and allocated once.
#pragma once
#include <stdint.h>
#include "backend/backend.h"
#include "config.h"
#include "data/mixup.h"
#include "params.h"

// What one encoder block keeps from its forward pass for the backward pass.
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd;  // LayerNorm_0 output and statistics
    float *q, *k, *v;                  // projections (B, T, D)
    float *att_state;                  // backend-defined (softmax probabilities on the CPU)
    float *att_out;                    // heads merged, input of the out projection
    float *resid1;                     // x + attention branch
    float *ln2, *ln2_mean, *ln2_rstd;  // LayerNorm_2
    float *fc1;                        // MLP pre-activation (B, T, mlp)
    float *gelu;                       // GELU output after dropout (input of Dense_1)
    uint16_t *packed;                  // store_bf16: ln1, q, k, v, att_out, ln2, fc1, gelu in bf16
    // bf16_acts: the products' operands as their ops write them, in bf16 (ln1, ln2 and gelu are
    // then NULL; q, k, v are one allocation at q, so the three come from one product).
    uint16_t *ln1_h, *att_h, *ln2_h, *gelu_h;
} BlockActs;

typedef struct {
    ViTConfig cfg;
    ParamTable table;
    ParamOffsets off;
    Backend *be;
    int batch;          // micro-batch the activations are planned for
    int training;       // gradients and backward buffers allocated
    int recompute;      // activation checkpointing: blocks share one BlockActs set (training only)
    int store_bf16;     // saved activations kept in bf16 between the passes (training only)
    int bf16_acts;      // the backend's bf16-activation ops write the products' operands (training only)

    float *params, *grads;      // device, table.total floats each (grads NULL for inference)

    // activations (device)
    uint8_t *images;            // (B, S, S, C) of the current batch: one of image_buf
    int *labels;                // (B), one of label_buf
    uint8_t *image_buf[2];      // two input buffers: the next batch is staged into one while
    int *label_buf[2];          // the current one is in use (vit_stage)
    int stage_slot;             // the buffer vit_stage fills next
    int staged_B;               // images in the staged batch (0: none staged)
    int staged_labels;          // it came with labels
    float *patches, *emb;       // (B*G*G, P*P*C), (B*G*G, D)
    float **x;                  // layers+1 residual-stream tensors (B, T, D)
    BlockActs *blocks;          // per block; all alias one set for inference and with recompute;
                                // with store_bf16 the eight packed tensors share one fp32 set
    float *cls_x, *cls_ln, *cls_mean, *cls_rstd;  // final LayerNorm on the class tokens only
    float *pre;                 // tanh(pre_logits) (B, R)
    float *logits, *probs, *losses;
    // scratch (device)
    float *s_nd1, *s_nd2, *dq, *dk, *dv, *s_nm, *att_scratch;
    float *dres, *dlogits, *dpre, *dcls_ln, *dcls_x, *demb;

    // host copies of the last forward pass's outputs
    float *host_logits, *host_losses;
    // Device sums (METRICS doubles, backend.h) for passes with labels: when set, vit_forward
    // adds the batch's loss and hits to them (metrics_accumulate) instead of copying logits and
    // losses to the host, and waits for nothing (src/train/step.c sets it around its passes).
    double *metrics;

    size_t activation_bytes;    // device memory planned for activations and scratch

    // Regularisation of training passes (vit_set_regularization; zero: none).
    float drop_path;            // stochastic depth: block l's two branches drop per sample at
                                // vit_drop_path_rate(drop_path, l, layers)
    MixupConfig mix;            // Mixup/CutMix of each training batch (src/data/mixup.h)
    int mixed;                  // the last training forward pass mixed its targets: the backward
                                // pass takes the gradient of the mixed loss
    float *mix_w;               // device: image weights (2 per sample), then target weights at
                                // mix_w + 2 * batch (2 per sample)
    int *mix_box;               // device: CutMix boxes, 4 per sample
    MixDraw *mix_draws;         // host: the current batch's draws and plan (batch each), and the
    MixSample *mix_plan;        // staging of mix_w and mix_box
    float *mix_host_w;
    int *mix_host_box;

    // Called by vit_backward when the gradients of params[offset, offset+count) will not
    // change again in this pass, top of the buffer first (data parallelism starts their
    // all-reduce there). NULL: not called. Ops are complete on the host when it is called
    // only for synchronous backends; an asynchronous one must order the reduction itself.
    void (*grad_ready)(void *ctx, size_t offset, size_t count);
    void *grad_ready_ctx;
} ViT;

// Builds the parameter table and plans all buffers for micro-batches of up to `batch`.
// Parameters are left uninitialised: call vit_init_params or upload into m->params.
int vit_create(ViT *m, const ViTConfig *cfg, Backend *be, int batch, int training);
// vit_create with options (ignored without `training`):
// VIT_RECOMPUTE: activation checkpointing. The forward pass keeps only each block's input,
//   and vit_backward re-runs each block's forward (same ops, same dropout keys) just before
//   its backward. Gradients are unchanged; ViT-B/16 at 224 plans 4.65x less activation
//   memory for ~23% more CPU step time.
// VIT_STORE_BF16: the activations that the backward pass reads only as matrix-product
//   operands (LayerNorm outputs, q, k, v, merged heads, GELU output) and the MLP
//   pre-activation are kept in bf16 between the passes, as under PyTorch's bf16 autocast.
//   Meant for bf16 matrix products, which round those operands to bf16 anyway; only GELU's
//   derivative sees a rounded input. Needs the backend's to_bf16/from_bf16 (else ignored)
//   and gives way to VIT_RECOMPUTE. Where the backend has the bf16-activation ops (backend.h:
//   VIT_CUDA_BF16_ACTS=1 on a GPU, backend_cpu_set_bf16_acts on the CPU) it means bf16
//   activations instead (m->bf16_acts, also with VIT_RECOMPUTE): LayerNorm, GELU(+dropout),
//   attention and the fused residual op write the products' operands in bf16 once, every
//   product reads them through gemm_bf16, and q, k and v come from one product. Master weights,
//   LayerNorm statistics, the residual stream, the MLP pre-activation, q, k, v and the loss
//   stay fp32.
enum { VIT_RECOMPUTE = 1, VIT_STORE_BF16 = 2 };
int vit_create_ex(ViT *m, const ViTConfig *cfg, Backend *be, int batch, int training, int options);
void vit_destroy(ViT *m);
// Initialises parameters on the host as the official code does and uploads them.
int vit_init_params(ViT *m, uint64_t seed);

// Forward pass over B <= batch images (host uint8 (B, S, S, C)). With labels (host, B
// ints in 0..classes-1) it also computes per-sample losses. Copies logits (and losses)
// to m->host_logits / m->host_losses (with m->metrics set: adds to those device sums instead,
// logits and losses stay on the device). `training` enables dropout, drop path and mixing (with
// labels; vit_set_regularization), all keyed by (seed, step).
// images NULL: the batch of the last vit_stage (labels ignored; the staged batch's are used).
int vit_forward(ViT *m, const uint8_t *images, const int *labels, int B, int training, float smoothing,
                uint64_t seed, uint32_t step);
// Starts copying the next batch (images and, when not NULL, labels, host memory as for
// vit_forward) to the device, into the input buffer the current batch does not use: on a
// GPU the copy runs beside the current batch's backward pass. The host memory must stay
// unchanged until the vit_forward(m, NULL, ...) that consumes the batch returns.
int vit_stage(ViT *m, const uint8_t *images, const int *labels, int B);
// Backward pass of the last forward pass (which must have had labels): adds
// loss_scale * d(sum of per-sample losses)/d(params) into m->grads.
int vit_backward(ViT *m, int B, float smoothing, float loss_scale, uint64_t seed, uint32_t step);

// Regularisation of the training passes, as timm's (timm/layers/drop.py, timm/data/mixup.py):
// stochastic depth at `drop_path` (0..1) for the last block, and Mixup/CutMix as `mix` says
// (NULL or all zero: off). Refuses nonsense (the message names the flag), and an odd batch
// when mixing is on. Off, the passes are exactly those of a model without them.
int vit_set_regularization(ViT *m, float drop_path, const MixupConfig *mix);
// Block l of L's drop-path rate for a final rate R: torch.linspace(0, R, L)[l] in fp32, as
// timm builds its dpr list (0 for L = 1).
float vit_drop_path_rate(float R, int l, int L);
// The rng_keep site of block l's drop path on branch 0 (attention) or 1 (MLP): sample b of a
// training step is kept where rng_keep(seed, step, site, b, 1 - rate) is 1.
uint32_t vit_drop_path_site(int l, int branch);
