// ViT forward and backward, top to bottom. Shapes: B images, T = 1 + G*G tokens, D hidden,
// N = B*T token rows; Dense kernels are (in, out) so y = x @ kernel + bias.
#include "vit.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/status.h"


// Dropout sites: three per block (attention output, GELU output, MLP output).
static uint32_t site(int layer, int k) { return (uint32_t)(layer * 3 + k); }

// Drop-path sites: two per block, far from the dropout sites.
uint32_t vit_drop_path_site(int l, int branch) { return 0x64700000u + (uint32_t)(2 * l + branch); }

// torch's linspace in fp32: start + step i for the first half, end - step (L - 1 - i) (one
// rounding, as its kernel's fma) for the rest.
float vit_drop_path_rate(float R, int l, int L) {
    if (L < 2 || !(R > 0)) return 0.0f;
    float step = R / (float)(L - 1);
    return l < L / 2 ? step * (float)l : fmaf(-step, (float)(L - 1 - l), R);
}

typedef struct {
    Backend *be;
    size_t bytes;
    int failed;
} Planner;

static void *plan(Planner *p, size_t bytes) {
    if (p->failed) return NULL;
    void *ptr = p->be->alloc(p->be, bytes);
    if (!ptr) {
        p->failed = 1;
        return NULL;
    }
    p->bytes += bytes;
    return ptr;
}
#define PLAN_F(n) ((float *)plan(&pl, (size_t)(n) * sizeof(float)))

// bf16_acts: a block's tensors for N token rows (q, k, v in one allocation; the products'
// operands in bf16).
static void plan_bf16_acts(Planner *p, BlockActs *a, size_t N, size_t D, size_t M) {
    a->ln1_h = plan(p, N * D * sizeof(uint16_t));
    a->q = plan(p, 3 * N * D * sizeof(float));
    a->k = a->q ? a->q + N * D : NULL;
    a->v = a->q ? a->q + 2 * N * D : NULL;
    a->att_out = plan(p, N * D * sizeof(float));
    a->att_h = plan(p, N * D * sizeof(uint16_t));
    a->ln2_h = plan(p, N * D * sizeof(uint16_t));
    a->fc1 = plan(p, N * M * sizeof(float));
    a->gelu_h = plan(p, N * M * sizeof(uint16_t));
}

int vit_create(ViT *m, const ViTConfig *cfg, Backend *be, int batch, int training) {
    return vit_create_ex(m, cfg, be, batch, training, 0);
}

int vit_create_ex(ViT *m, const ViTConfig *cfg, Backend *be, int batch, int training, int options) {
    memset(m, 0, sizeof *m);
    if (config_validate(cfg)) return VIT_ERR;
    if (batch < 1) return vit_fail("--batch_size %d: must be positive", batch);
    m->cfg = *cfg;
    m->be = be;
    m->batch = batch;
    m->training = training;
    m->recompute = training && (options & VIT_RECOMPUTE);
    m->bf16_acts = training && (options & VIT_STORE_BF16) && be->gemm_bf16 && be->layernorm_forward_bf16 &&
                   be->residual_layernorm_forward_bf16 && be->gelu_dropout_forward_bf16 && be->attention_forward_bf16;
    m->store_bf16 = training && !m->recompute && !m->bf16_acts && (options & VIT_STORE_BF16) && be->to_bf16 &&
                    be->from_bf16;
    if (params_build(&m->table, &m->off, cfg)) return VIT_ERR;

    const ViTConfig *c = cfg;
    size_t B = batch, T = config_tokens(c), D = c->hidden, M = c->mlp, N = B * T, G2 = (size_t)config_grid(c) * config_grid(c);
    size_t R = c->representation, K = c->classes, H = c->heads, hd = D / H;
    Planner pl = {be, 0, 0};
    m->params = PLAN_F(m->table.total);
    if (training) m->grads = PLAN_F(m->table.total);
    size_t param_bytes = pl.bytes;

    for (int k = 0; k < 2; k++) {
        m->image_buf[k] = plan(&pl, B * c->image * c->image * c->channels);
        m->label_buf[k] = plan(&pl, B * sizeof(int));
    }
    m->images = m->image_buf[0];
    m->labels = m->label_buf[0];
    m->patches = PLAN_F(B * G2 * c->patch * c->patch * c->channels);
    m->emb = PLAN_F(B * G2 * D);
    m->x = calloc((size_t)c->layers + 1, sizeof *m->x);
    m->blocks = calloc((size_t)c->layers, sizeof *m->blocks);
    if (!m->x || !m->blocks) return vit_fail("out of memory planning activations");
    m->x[0] = PLAN_F(N * D);
    size_t att_state = be->attention_state_floats(be, (int)B, (int)T, (int)H, (int)hd);
    for (int l = 0; l < c->layers; l++) {
        BlockActs *a = &m->blocks[l];
        // Inference keeps nothing per layer: every block reuses the buffers of block 0 and
        // updates the residual stream x[0] in place. Recompute shares the block
        // buffers too but keeps every block input x[l]: the backward pass rebuilds the rest.
        if ((!training || m->recompute) && l > 0) {
            *a = m->blocks[0];
            m->x[l + 1] = training ? PLAN_F(N * D) : m->x[0];
            continue;
        }
        // store_bf16: the eight packed tensors are fp32 only while their block is being
        // computed, so all blocks share block 0's; each block keeps its bf16 copies.
        if (m->store_bf16 && l > 0) {
            const BlockActs *s = &m->blocks[0];
            *a = (BlockActs){.ln1 = s->ln1, .q = s->q, .k = s->k, .v = s->v, .att_out = s->att_out,
                             .ln2 = s->ln2, .fc1 = s->fc1, .gelu = s->gelu};
        } else if (m->bf16_acts) {
            plan_bf16_acts(&pl, a, N, D, M);
        } else {
            a->ln1 = PLAN_F(N * D);
            a->q = PLAN_F(N * D);
            a->k = PLAN_F(N * D);
            a->v = PLAN_F(N * D);
            a->att_out = PLAN_F(N * D);
            a->ln2 = PLAN_F(N * D);
            // Inference with a fused GELU epilogue never holds the pre-activation.
            a->fc1 = training || !be->gemm_bias_gelu ? PLAN_F(N * M) : NULL;
            a->gelu = PLAN_F(N * M);
        }
        if (m->store_bf16) a->packed = plan(&pl, (6 * N * D + 2 * N * M) * sizeof(uint16_t));
        a->ln1_mean = PLAN_F(N);
        a->ln1_rstd = PLAN_F(N);
        a->att_state = PLAN_F(att_state);
        a->resid1 = training ? PLAN_F(N * D) : NULL;  // inference adds into x in place
        a->ln2_mean = PLAN_F(N);
        a->ln2_rstd = PLAN_F(N);
        m->x[l + 1] = training ? PLAN_F(N * D) : m->x[0];
    }
    m->cls_x = PLAN_F(B * D);
    m->cls_ln = PLAN_F(B * D);
    m->cls_mean = PLAN_F(B);
    m->cls_rstd = PLAN_F(B);
    if (R) m->pre = PLAN_F(B * R);
    m->logits = PLAN_F(B * K);
    m->probs = PLAN_F(B * K);
    m->losses = PLAN_F(B);
    m->att_scratch = PLAN_F(be->attention_scratch_floats(be, (int)B, (int)T, (int)H, (int)hd));
    if (training) {
        m->mix_w = PLAN_F(4 * B);
        m->mix_box = plan(&pl, 4 * B * sizeof(int));
        m->s_nd1 = PLAN_F(N * D);
        m->s_nd2 = PLAN_F(N * D);
        m->dq = PLAN_F((m->bf16_acts ? 3 : 1) * N * D);  // bf16_acts: one product's (3, N, D) output
        m->dk = m->bf16_acts ? (m->dq ? m->dq + N * D : NULL) : PLAN_F(N * D);
        m->dv = m->bf16_acts ? (m->dq ? m->dq + 2 * N * D : NULL) : PLAN_F(N * D);
        m->s_nm = PLAN_F(N * M);
        m->dres = PLAN_F(N * D);
        m->dlogits = PLAN_F(B * K);
        if (R) m->dpre = PLAN_F(B * R);
        m->dcls_ln = PLAN_F(B * D);
        m->dcls_x = PLAN_F(B * D);
        m->demb = PLAN_F(B * G2 * D);
    }
    if (pl.failed) return VIT_ERR;
    m->activation_bytes = pl.bytes - param_bytes;
    m->host_logits = malloc(B * K * sizeof(float));
    m->host_losses = malloc(B * sizeof(float));
    if (!m->host_logits || !m->host_losses) return vit_fail("out of memory");
    if (training) {
        m->mix_draws = malloc(B * sizeof *m->mix_draws);
        m->mix_plan = malloc(B * sizeof *m->mix_plan);
        m->mix_host_w = calloc(4 * B, sizeof(float));  // uploaded whole, also past a smaller batch
        m->mix_host_box = malloc(4 * B * sizeof(int));
        if (!m->mix_draws || !m->mix_plan || !m->mix_host_w || !m->mix_host_box) return vit_fail("out of memory");
    }
    return VIT_OK;
}

void vit_destroy(ViT *m) {
    Backend *be = m->be;
    if (!be) return;
    if (m->bf16_acts) m->dk = m->dv = NULL;  // inside dq's allocation
    // Free every distinct device pointer once (inference and recompute alias block buffers).
    float **ptrs[] = {&m->params, &m->grads, &m->patches, &m->emb, &m->cls_x, &m->cls_ln, &m->cls_mean,
                      &m->cls_rstd, &m->pre, &m->logits, &m->probs, &m->losses, &m->s_nd1, &m->s_nd2,
                      &m->dq, &m->dk, &m->dv, &m->s_nm, &m->att_scratch, &m->dres, &m->dlogits, &m->dpre,
                      &m->dcls_ln, &m->dcls_x, &m->demb, &m->mix_w};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) be->release(be, *ptrs[i]);
    be->release(be, m->mix_box);
    for (int k = 0; k < 2; k++) {
        be->release(be, m->image_buf[k]);
        be->release(be, m->label_buf[k]);
    }
    int L = m->cfg.layers, owned = m->training && !m->recompute ? L : (L > 0 ? 1 : 0);
    for (int l = 0; l < owned && m->blocks; l++) {
        BlockActs *a = &m->blocks[l];
        float *own[] = {a->ln1_mean, a->ln1_rstd, a->att_state, a->resid1, a->ln2_mean, a->ln2_rstd};
        for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) be->release(be, own[i]);
        if (m->bf16_acts) {  // k and v live in q's allocation
            void *mine[] = {a->ln1_h, a->q, a->att_out, a->att_h, a->ln2_h, a->fc1, a->gelu_h};
            for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++) be->release(be, mine[i]);
        } else if (l == 0 || !m->store_bf16) {  // store_bf16 blocks share block 0's
            float *shared[] = {a->ln1, a->q, a->k, a->v, a->att_out, a->ln2, a->fc1, a->gelu};
            for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) be->release(be, shared[i]);
        }
        be->release(be, a->packed);
    }
    if (m->x) {
        int xs = m->training ? L + 1 : 1;
        for (int i = 0; i < xs; i++) be->release(be, m->x[i]);
    }
    free(m->x);
    free(m->blocks);
    free(m->host_logits);
    free(m->host_losses);
    free(m->mix_draws), free(m->mix_plan), free(m->mix_host_w), free(m->mix_host_box);
    params_free(&m->table, &m->off);
    memset(m, 0, sizeof *m);
}

int vit_init_params(ViT *m, uint64_t seed) {
    float *host = malloc(m->table.total * sizeof(float));
    if (!host) return vit_fail("out of memory initialising %zu parameters", m->table.total);
    params_init(&m->table, host, seed);
    m->be->upload(m->be, m->params, host, m->table.total * sizeof(float));
    free(host);
    return VIT_OK;
}

// y (rows, out) = x (rows, in) @ W (in, out) + b
static int linear_forward(Backend *be, float *y, const float *x, const float *W, const float *b, int rows, int in,
                          int out) {
    return be->gemm(be, 1, rows, out, in, x, 0, W, 0, y, b, 1.0f, 0);
}

// dx (=, or += when accumulate_dx) = dy @ W^T; dW += x^T @ dy; db += colsum(dy). dx may be
// NULL, and db too where a fused op has already summed it.
static int linear_backward(Backend *be, float *dx, float *dW, float *db, const float *dy, const float *x,
                           const float *W, int rows, int in, int out, int accumulate_dx) {
    if (dx && be->gemm(be, 1, rows, in, out, dy, 0, W, 1, dx, NULL, 1.0f, accumulate_dx)) return VIT_ERR;
    if (be->gemm(be, 1, in, out, rows, x, 1, dy, 0, dW, NULL, 1.0f, 1)) return VIT_ERR;
    if (db) be->bias_backward(be, db, dy, rows, out);
    return VIT_OK;
}

// ---- bf16 activations (m->bf16_acts) ----------------------------------------------------------
// The products read their activation operand in bf16 as its op wrote it (gemm_bf16); weights
// and gradients are fp32 and the backend rounds them, as every bf16 product does.

// y (rows, out) = x (rows, in, bf16) @ W (in, out) + b
static int linear_forward_h(Backend *be, float *y, const uint16_t *x, const float *W, const float *b, int rows, int in,
                            int out) {
    GemmBf16 g = {.batch = 1, .M = rows, .N = out, .K = in, .A = x, .B = W, .a_bf16 = 1, .C = y, .bias = b,
                  .alpha = 1.0f};
    return be->gemm_bf16(be, &g);
}

// linear_backward with x in bf16: dx (=, or +=) dy @ W^T; dW += x^T @ dy; db += colsum(dy).
static int linear_backward_h(Backend *be, float *dx, float *dW, float *db, const float *dy, const uint16_t *x,
                             const float *W, int rows, int in, int out, int accumulate_dx) {
    GemmBf16 gx = {.batch = 1, .M = rows, .N = in, .K = out, .A = dy, .B = W, .transB = 1, .C = dx, .alpha = 1.0f,
                   .accumulate = accumulate_dx};
    GemmBf16 gw = {.batch = 1, .M = in, .N = out, .K = rows, .A = x, .B = dy, .a_bf16 = 1, .transA = 1, .C = dW,
                   .alpha = 1.0f, .accumulate = 1};
    if ((dx && be->gemm_bf16(be, &gx)) || be->gemm_bf16(be, &gw)) return VIT_ERR;
    if (db) be->bias_backward(be, db, dy, rows, out);
    return VIT_OK;
}

// The query, key and value kernels (and biases) of a block are equally far apart in the
// parameter table (kernel, bias, kernel, bias, ...: params.c), so they are three matrices of
// one strided batch; 0 if a layout ever breaks that (then three products run).
static long long qkv_stride(size_t q, size_t k, size_t v) {
    long long d = (long long)k - (long long)q;
    return d > 0 && (long long)v - (long long)k == d ? d : 0;
}

// q, k, v (one allocation, planned for the full batch: k - q apart) = LN0 output @ their
// kernels + biases: one product.
static int qkv_forward(ViT *m, const BlockOffsets *w, BlockActs *a, int N, int D) {
    Backend *be = m->be;
    const float *p = m->params;
    long long sw = qkv_stride(w->q_kernel, w->k_kernel, w->v_kernel), sb = qkv_stride(w->q_bias, w->k_bias, w->v_bias);
    GemmBf16 g = {.batch = 3, .M = N, .N = D, .K = D, .A = a->ln1_h, .B = p + w->q_kernel, .a_bf16 = 1,
                  .stride_b = sw, .stride_c = a->k - a->q, .stride_bias = sb, .C = a->q, .bias = p + w->q_bias,
                  .alpha = 1.0f};
    if (sw && sb) return be->gemm_bf16(be, &g);
    return linear_forward_h(be, a->q, a->ln1_h, p + w->q_kernel, p + w->q_bias, N, D, D) ||
                   linear_forward_h(be, a->k, a->ln1_h, p + w->k_kernel, p + w->k_bias, N, D, D) ||
                   linear_forward_h(be, a->v, a->ln1_h, p + w->v_kernel, p + w->v_bias, N, D, D)
               ? VIT_ERR
               : VIT_OK;
}

// From dq, dk, dv (one allocation) back to dx (LN0's output gradient): three products that
// add into dx; the three weight gradients as one product; the bias gradients.
static int qkv_backward(ViT *m, const BlockOffsets *w, const BlockActs *a, float *dx, int N, int D) {
    Backend *be = m->be;
    const float *p = m->params;
    float *g = m->grads;
    const float *dy[] = {m->dq, m->dk, m->dv};
    size_t kern[] = {w->q_kernel, w->k_kernel, w->v_kernel}, bias[] = {w->q_bias, w->k_bias, w->v_bias};
    for (int i = 0; i < 3; i++) {
        GemmBf16 gx = {.batch = 1, .M = N, .N = D, .K = D, .A = dy[i], .B = p + kern[i], .transB = 1, .C = dx,
                       .alpha = 1.0f, .accumulate = i > 0};
        if (be->gemm_bf16(be, &gx)) return VIT_ERR;
        be->bias_backward(be, g + bias[i], dy[i], N, D);
    }
    long long sw = qkv_stride(w->q_kernel, w->k_kernel, w->v_kernel);
    GemmBf16 gw = {.batch = 3, .M = D, .N = D, .K = N, .A = a->ln1_h, .B = m->dq, .a_bf16 = 1, .transA = 1,
                   .stride_b = m->dk - m->dq, .stride_c = sw, .C = g + w->q_kernel, .alpha = 1.0f, .accumulate = 1};
    if (sw) return be->gemm_bf16(be, &gw);
    for (int i = 0; i < 3; i++) {
        GemmBf16 one = {.batch = 1, .M = D, .N = D, .K = N, .A = a->ln1_h, .B = dy[i], .a_bf16 = 1, .transA = 1,
                        .C = g + kern[i], .alpha = 1.0f, .accumulate = 1};
        if (be->gemm_bf16(be, &one)) return VIT_ERR;
    }
    return VIT_OK;
}

// block_forward with bf16 activations (same ops, same dropout keys; out NULL as there).
static int block_forward_bf16(ViT *m, int l, BlockActs *a, int B, int training, uint64_t seed, uint32_t step,
                              float *out) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    const float *p = m->params;
    const BlockOffsets *w = &m->off.blocks[l];
    int T = config_tokens(c), D = c->hidden, Mlp = c->mlp, N = B * T, H = c->heads, hd = D / H;
    float drop = training ? c->dropout : 0.0f, eps = config_layernorm_eps(c);
    float dp = training ? vit_drop_path_rate(m->drop_path, l, c->layers) : 0.0f;
    const float *x = m->x[l];
    be->layernorm_forward_bf16(be, a->ln1_h, a->ln1_mean, a->ln1_rstd, x, p + w->ln0_scale, p + w->ln0_bias, N, D, eps);
    if (qkv_forward(m, w, a, N, D) ||
        be->attention_forward_bf16(be, a->att_out, a->att_h, a->att_state, m->att_scratch, a->q, a->k, a->v, B, T, H,
                                   hd) ||
        linear_forward_h(be, m->s_nd1, a->att_h, p + w->out_kernel, p + w->out_bias, N, D, D))
        return VIT_ERR;
    if (dp > 0) be->drop_path(be, m->s_nd1, m->s_nd1, B, (size_t)T * D, dp, seed, step, vit_drop_path_site(l, 0));
    be->residual_layernorm_forward_bf16(be, a->resid1, a->ln2_h, a->ln2_mean, a->ln2_rstd, x, m->s_nd1,
                                        p + w->ln2_scale, p + w->ln2_bias, N, D, eps, drop, seed, step, site(l, 0));
    if (linear_forward_h(be, a->fc1, a->ln2_h, p + w->fc1_kernel, p + w->fc1_bias, N, D, Mlp)) return VIT_ERR;
    be->gelu_dropout_forward_bf16(be, a->gelu_h, a->fc1, (size_t)N * Mlp, c->gelu_tanh, drop, seed, step, site(l, 1));
    if (!out) return VIT_OK;
    if (linear_forward_h(be, m->s_nd1, a->gelu_h, p + w->fc2_kernel, p + w->fc2_bias, N, Mlp, D)) return VIT_ERR;
    if (dp > 0) be->drop_path(be, m->s_nd1, m->s_nd1, B, (size_t)T * D, dp, seed, step, vit_drop_path_site(l, 1));
    be->residual_layernorm_forward(be, out, NULL, NULL, NULL, a->resid1, m->s_nd1, NULL, NULL, N, D, 0.0f, drop, seed,
                                   step, site(l, 2));
    return VIT_OK;
}

// store_bf16: a block's eight packed tensors to their bf16 copies (after its forward pass)
// or back (before its backward pass), for B images.
static float ln_eps(const ViT *m) { return config_layernorm_eps(&m->cfg); }

static void pack_block(ViT *m, BlockActs *a, int B, int unpack) {
    Backend *be = m->be;
    size_t N = (size_t)B * config_tokens(&m->cfg), ND = N * m->cfg.hidden, NM = N * m->cfg.mlp;
    float *t[] = {a->ln1, a->q, a->k, a->v, a->att_out, a->ln2, a->fc1, a->gelu};
    size_t n[] = {ND, ND, ND, ND, ND, ND, NM, NM};
    uint16_t *dst = a->packed;
    for (int i = 0; i < 8; i++) {
        if (unpack)
            be->from_bf16(be, t[i], dst, n[i]);
        else
            be->to_bf16(be, dst, t[i], n[i]);
        dst += n[i];
    }
}

// LayerNorm_0 of the block input x, the q, k, v projections and attention, into `a`: the
// attention branch up to its out projection, the same for training and inference.
static int attention_heads(ViT *m, int l, BlockActs *a, int B, const float *x) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    const float *p = m->params;
    const BlockOffsets *w = &m->off.blocks[l];
    int T = config_tokens(c), D = c->hidden, N = B * T, H = c->heads, hd = D / H;
    be->layernorm_forward(be, a->ln1, a->ln1_mean, a->ln1_rstd, x, p + w->ln0_scale, p + w->ln0_bias, N, D, ln_eps(m));
    return linear_forward(be, a->q, a->ln1, p + w->q_kernel, p + w->q_bias, N, D, D) ||
                   linear_forward(be, a->k, a->ln1, p + w->k_kernel, p + w->k_bias, N, D, D) ||
                   linear_forward(be, a->v, a->ln1, p + w->v_kernel, p + w->v_bias, N, D, D) ||
                   be->attention_forward(be, a->att_out, a->att_state, m->att_scratch, a->q, a->k, a->v, B, T, H, hd)
               ? VIT_ERR
               : VIT_OK;
}

// Inference (no dropout, nothing kept): the residual stream x is updated in place, each
// branch's last product adding into it (the product's accumulate, a fused epilogue), and
// GELU runs as fc1's epilogue where the backend has one.
static int block_forward_inplace(ViT *m, int l, BlockActs *a, int B) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    const float *p = m->params;
    const BlockOffsets *w = &m->off.blocks[l];
    int T = config_tokens(c), D = c->hidden, Mlp = c->mlp, N = B * T;
    float *x = m->x[l];
    if (attention_heads(m, l, a, B, x) ||
        be->gemm(be, 1, N, D, D, a->att_out, 0, p + w->out_kernel, 0, x, p + w->out_bias, 1.0f, 1))
        return VIT_ERR;
    be->layernorm_forward(be, a->ln2, a->ln2_mean, a->ln2_rstd, x, p + w->ln2_scale, p + w->ln2_bias, N, D, ln_eps(m));
    if (be->gemm_bias_gelu) {
        if (be->gemm_bias_gelu(be, N, Mlp, D, a->ln2, p + w->fc1_kernel, a->gelu, p + w->fc1_bias, c->gelu_tanh))
            return VIT_ERR;
    } else {
        if (linear_forward(be, a->fc1, a->ln2, p + w->fc1_kernel, p + w->fc1_bias, N, D, Mlp)) return VIT_ERR;
        be->gelu_forward(be, a->gelu, a->fc1, (size_t)N * Mlp, c->gelu_tanh);
    }
    return be->gemm(be, 1, N, D, Mlp, a->gelu, 0, p + w->fc2_kernel, 0, x, p + w->fc2_bias, 1.0f, 1);
}

// Encoder block l from its input m->x[l] into `a`, writing its output to `out`. With out
// NULL it stops once `a` holds everything the backward pass reads (the recompute in
// vit_backward): the MLP's second matrix product, dropout and residual add are not needed.
// Dropout and drop-path masks are keyed by (seed, step, site), so a re-run reproduces them
// exactly. Drop path scales each branch's output per sample before its dropout (timm applies it
// after; both are per-element products, so only the rounding of the product can differ).
static int block_forward(ViT *m, int l, BlockActs *a, int B, int training, uint64_t seed, uint32_t step,
                         float *out) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    const float *p = m->params;
    const BlockOffsets *w = &m->off.blocks[l];
    int T = config_tokens(c), D = c->hidden, Mlp = c->mlp, N = B * T;
    float drop = training ? c->dropout : 0.0f;
    float dp = training ? vit_drop_path_rate(m->drop_path, l, c->layers) : 0.0f;
    const float *x = m->x[l];
    if (out == x) return block_forward_inplace(m, l, a, B);
    if (m->bf16_acts) return block_forward_bf16(m, l, a, B, training, seed, step, out);
    // resid1 = x + DropPath(Dropout(MHSA(LN0(x)))), and LN2 of it in the same pass
    if (attention_heads(m, l, a, B, x) ||
        linear_forward(be, m->s_nd1, a->att_out, p + w->out_kernel, p + w->out_bias, N, D, D))
        return VIT_ERR;
    if (dp > 0) be->drop_path(be, m->s_nd1, m->s_nd1, B, (size_t)T * D, dp, seed, step, vit_drop_path_site(l, 0));
    be->residual_layernorm_forward(be, a->resid1, a->ln2, a->ln2_mean, a->ln2_rstd, x, m->s_nd1, p + w->ln2_scale,
                                   p + w->ln2_bias, N, D, ln_eps(m), drop, seed, step, site(l, 0));
    // out = resid1 + DropPath(Dropout(Dense_1(Dropout(GELU(Dense_0(LN2))))))
    if (linear_forward(be, a->fc1, a->ln2, p + w->fc1_kernel, p + w->fc1_bias, N, D, Mlp)) return VIT_ERR;
    be->gelu_dropout_forward(be, a->gelu, a->fc1, (size_t)N * Mlp, c->gelu_tanh, drop, seed, step, site(l, 1));
    if (!out) return VIT_OK;
    if (linear_forward(be, m->s_nd1, a->gelu, p + w->fc2_kernel, p + w->fc2_bias, N, Mlp, D)) return VIT_ERR;
    if (dp > 0) be->drop_path(be, m->s_nd1, m->s_nd1, B, (size_t)T * D, dp, seed, step, vit_drop_path_site(l, 1));
    be->residual_layernorm_forward(be, out, NULL, NULL, NULL, a->resid1, m->s_nd1, NULL, NULL, N, D, 0.0f, drop, seed,
                                   step, site(l, 2));
    return VIT_OK;
}

int vit_set_regularization(ViT *m, float drop_path, const MixupConfig *mix) {
    if (!(drop_path >= 0 && drop_path <= 1)) return vit_fail("--drop_path %g: must be in [0, 1]", drop_path);
    MixupConfig off = {0};
    if (!mix) mix = &off;
    if (mixup_validate(mix, m->batch, m->cfg.image)) return VIT_ERR;
    if ((drop_path > 0 || mixup_enabled(mix)) && !m->training)
        return vit_fail("drop path and mixup are for training: the model is inference-only");
    m->drop_path = drop_path;
    m->mix = *mix;
    return VIT_OK;
}

// Mixup/CutMix of the current batch (patchified) as drawn for (seed, step): the image weights
// and boxes go to the device for mix_images, the target weights for the mixed loss.
static void mix_batch(ViT *m, int B, uint64_t seed, uint32_t step) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    int S = c->image;
    mixup_draw(&m->mix, seed, step, mixup_slots(&m->mix, B), S, S, m->mix_draws);
    int changed = mixup_plan(&m->mix, m->mix_draws, B, S, S, m->mix_plan);
    float *w = m->mix_host_w, *tw = m->mix_host_w + 2 * m->batch;
    for (int b = 0; b < B; b++) {
        const MixSample *x = &m->mix_plan[b];
        w[2 * b] = x->img_w[0], w[2 * b + 1] = x->img_w[1];
        tw[2 * b] = x->tgt_w[0], tw[2 * b + 1] = x->tgt_w[1];
        // Element by element: GCC 12 -O3 vectorises a memcpy of the box with an aligned load here
        // (16-byte vmovdqa at 8 mod 16) and faults.
        for (int k = 0; k < 4; k++) m->mix_host_box[4 * b + k] = x->box[k];
    }
    be->upload(be, m->mix_w, m->mix_host_w, 4 * (size_t)m->batch * sizeof(float));
    if (changed) {
        be->upload(be, m->mix_box, m->mix_host_box, 4 * (size_t)B * sizeof(int));
        be->mix_images(be, m->patches, m->mix_w, m->mix_box, B, S, c->channels, c->patch);
    }
    m->mixed = 1;
}

int vit_stage(ViT *m, const uint8_t *images, const int *labels, int B) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    if (B < 1 || B > m->batch) return vit_fail("batch of %d images, model planned for 1..%d", B, m->batch);
    int k = m->stage_slot;
    be->upload_async(be, m->image_buf[k], images, (size_t)B * c->image * c->image * c->channels);
    if (labels) be->upload_async(be, m->label_buf[k], labels, (size_t)B * sizeof(int));
    m->staged_B = B;
    m->staged_labels = labels != NULL;
    return VIT_OK;
}

int vit_forward(ViT *m, const uint8_t *images, const int *labels, int B, int training, float smoothing,
                uint64_t seed, uint32_t step) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    if (training && !m->training) return vit_fail("training forward pass on an inference-only model");
    if (images && vit_stage(m, images, labels, B)) return VIT_ERR;
    if (m->staged_B != B)
        return vit_fail("forward pass over %d images: %d are staged", B, m->staged_B);
    // The staged buffer becomes the current one; the next batch is staged into the other.
    int k = m->stage_slot;
    m->stage_slot = 1 - k;
    m->staged_B = 0;
    m->images = m->image_buf[k];
    m->labels = m->label_buf[k];
    int has_labels = m->staged_labels;
    be->wait_uploads(be);
    const float *p = m->params;
    const ParamOffsets *o = &m->off;
    int T = config_tokens(c), D = c->hidden, G2 = config_grid(c) * config_grid(c);
    int R = c->representation, K = c->classes, pin = c->patch * c->patch * c->channels;

    // Patch embedding as a matrix product over extracted patches, then class token + position.
    be->patchify(be, m->patches, m->images, B, c->image, c->channels, c->patch);
    m->mixed = 0;
    if (training && has_labels && mixup_enabled(&m->mix)) mix_batch(m, B, seed, step);
    if (linear_forward(be, m->emb, m->patches, p + o->embed_kernel, p + o->embed_bias, B * G2, pin, D)) return VIT_ERR;
    be->tokens_forward(be, m->x[0], m->emb, p + o->cls, p + o->pos, B, T, D);

    for (int l = 0; l < c->layers; l++) {
        if (block_forward(m, l, &m->blocks[l], B, training, seed, step, m->x[l + 1])) return VIT_ERR;
        if (m->store_bf16) pack_block(m, &m->blocks[l], B, 0);
    }

    // Only the class token reaches the head, so the final LayerNorm runs on those rows alone.
    be->gather_cls(be, m->cls_x, m->x[c->layers], B, T, D);
    be->layernorm_forward(be, m->cls_ln, m->cls_mean, m->cls_rstd, m->cls_x, p + o->norm_scale, p + o->norm_bias, B, D,
                          ln_eps(m));
    const float *head_in = m->cls_ln;
    if (R) {
        if (linear_forward(be, m->pre, m->cls_ln, p + o->pre_kernel, p + o->pre_bias, B, D, R)) return VIT_ERR;
        be->tanh_forward(be, m->pre, m->pre, (size_t)B * R);
        head_in = m->pre;
    }
    if (linear_forward(be, m->logits, head_in, p + o->head_kernel, p + o->head_bias, B, R ? R : D, K)) return VIT_ERR;
    // With m->metrics the sums stay on the device and the pass waits for nothing.
    if (!m->metrics || !has_labels) be->download(be, m->host_logits, m->logits, (size_t)B * K * sizeof(float));
    if (has_labels) {
        if (m->mixed)
            be->xent_mix_forward(be, m->probs, m->losses, m->logits, m->labels, m->mix_w + 2 * m->batch, B, K,
                                 smoothing);
        else
            be->xent_forward(be, m->probs, m->losses, m->logits, m->labels, B, K, smoothing);
        if (m->metrics)
            be->metrics_accumulate(be, m->metrics, m->losses, m->logits, m->labels, B, K);
        else
            be->download(be, m->host_losses, m->losses, (size_t)B * sizeof(float));
    }
    return VIT_OK;
}

// The gradient at a branch's output (the attention branch: dropout site k 0, drop-path
// branch 0; the MLP: 2 and 1), from d(loss)/d(sum) in dres: back through the branch's dropout
// and drop path into s_nd1, or dres itself when neither is on.
static const float *branch_grad(ViT *m, int l, int k, int branch, int B, uint64_t seed, uint32_t step) {
    Backend *be = m->be;
    const ViTConfig *c = &m->cfg;
    size_t per = (size_t)config_tokens(c) * c->hidden;
    float drop = c->dropout, dp = vit_drop_path_rate(m->drop_path, l, c->layers);
    const float *g = m->dres;
    if (drop > 0) {
        be->dropout_backward(be, m->s_nd1, g, per * B, drop, seed, step, site(l, k));
        g = m->s_nd1;
    }
    if (dp > 0) {
        be->drop_path(be, m->s_nd1, g, B, per, dp, seed, step, vit_drop_path_site(l, branch));
        g = m->s_nd1;
    }
    return g;
}

// Block l's backward pass with bf16 activations: d(loss)/d(block output) in dres becomes
// d(loss)/d(block input), the products reading the bf16 operands the forward pass wrote.
static int block_backward_bf16(ViT *m, int l, const BlockActs *a, int B, uint64_t seed, uint32_t step) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    const float *p = m->params;
    float *g = m->grads;
    const BlockOffsets *w = &m->off.blocks[l];
    int T = config_tokens(c), D = c->hidden, Mlp = c->mlp, N = B * T, H = c->heads, hd = D / H;
    const float *dz = branch_grad(m, l, 2, 1, B, seed, step);
    if (linear_backward_h(be, m->s_nm, g + w->fc2_kernel, g + w->fc2_bias, dz, a->gelu_h, p + w->fc2_kernel, N, Mlp, D,
                          0))
        return VIT_ERR;
    be->gelu_dropout_backward(be, m->s_nm, g + w->fc1_bias, a->fc1, m->s_nm, N, Mlp, c->gelu_tanh, c->dropout, seed,
                              step, site(l, 1));
    if (linear_backward_h(be, m->s_nd2, g + w->fc1_kernel, NULL, m->s_nm, a->ln2_h, p + w->fc1_kernel, N, D, Mlp, 0))
        return VIT_ERR;
    be->layernorm_backward(be, m->dres, g + w->ln2_scale, g + w->ln2_bias, m->s_nd2, a->resid1, p + w->ln2_scale,
                           a->ln2_mean, a->ln2_rstd, N, D);
    const float *datt = branch_grad(m, l, 0, 0, B, seed, step);
    if (linear_backward_h(be, m->s_nd2, g + w->out_kernel, g + w->out_bias, datt, a->att_h, p + w->out_kernel, N, D,
                          D, 0) ||
        be->attention_backward(be, m->dq, m->dk, m->dv, m->s_nd2, a->att_out, a->att_state, m->att_scratch, a->q,
                               a->k, a->v, B, T, H, hd) ||
        qkv_backward(m, w, a, m->s_nd1, N, D))
        return VIT_ERR;
    be->layernorm_backward(be, m->dres, g + w->ln0_scale, g + w->ln0_bias, m->s_nd1, m->x[l], p + w->ln0_scale,
                           a->ln1_mean, a->ln1_rstd, N, D);
    return VIT_OK;
}

int vit_backward(ViT *m, int B, float smoothing, float loss_scale, uint64_t seed, uint32_t step) {
    const ViTConfig *c = &m->cfg;
    Backend *be = m->be;
    if (!m->training) return vit_fail("backward pass on an inference-only model");
    const float *p = m->params;
    float *g = m->grads;
    const ParamOffsets *o = &m->off;
    int T = config_tokens(c), D = c->hidden, Mlp = c->mlp, N = B * T, G2 = config_grid(c) * config_grid(c);
    int H = c->heads, hd = D / H, R = c->representation, K = c->classes, pin = c->patch * c->patch * c->channels;
    float drop = c->dropout;

    // Head, pre_logits, final LayerNorm (class tokens only), back into the residual stream.
    if (m->mixed)
        be->xent_mix_backward(be, m->dlogits, m->probs, m->labels, m->mix_w + 2 * m->batch, B, K, smoothing,
                              loss_scale);
    else
        be->xent_backward(be, m->dlogits, m->probs, m->labels, B, K, smoothing, loss_scale);
    if (R) {
        if (linear_backward(be, m->dpre, g + o->head_kernel, g + o->head_bias, m->dlogits, m->pre, p + o->head_kernel,
                            B, R, K, 0))
            return VIT_ERR;
        be->tanh_backward(be, m->dpre, m->pre, m->dpre, (size_t)B * R);
        if (linear_backward(be, m->dcls_ln, g + o->pre_kernel, g + o->pre_bias, m->dpre, m->cls_ln, p + o->pre_kernel,
                            B, D, R, 0))
            return VIT_ERR;
    } else if (linear_backward(be, m->dcls_ln, g + o->head_kernel, g + o->head_bias, m->dlogits, m->cls_ln,
                               p + o->head_kernel, B, D, K, 0)) {
        return VIT_ERR;
    }
    be->zero(be, m->dcls_x, (size_t)B * D * sizeof(float));
    be->layernorm_backward(be, m->dcls_x, g + o->norm_scale, g + o->norm_bias, m->dcls_ln, m->cls_x, p + o->norm_scale,
                           m->cls_mean, m->cls_rstd, B, D);
    be->scatter_cls(be, m->dres, m->dcls_x, B, T, D);
    size_t top = o->norm_scale;  // encoder_norm, pre_logits and head follow the blocks
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, top, m->table.total - top);

    // dres holds d(loss)/d(block output); each block turns it into d(loss)/d(block input).
    // Gradients live at the same offsets as the parameters (g + w->..., p + w->...).
    for (int l = c->layers - 1; l >= 0; l--) {
        const BlockOffsets *w = &o->blocks[l];
        BlockActs *a = &m->blocks[l];
        // Recompute: rebuild this block's activations from its kept input first. The forward
        // pass that preceded a backward pass had dropout on (as `drop` above assumes).
        if (m->recompute && block_forward(m, l, a, B, 1, seed, step, NULL)) return VIT_ERR;
        if (m->store_bf16) pack_block(m, a, B, 1);
        if (m->bf16_acts) {
            if (block_backward_bf16(m, l, a, B, seed, step)) return VIT_ERR;
            if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, w->ln0_scale, top - w->ln0_scale);
            top = w->ln0_scale;
            continue;
        }
        // MLP branch
        const float *dz = branch_grad(m, l, 2, 1, B, seed, step);
        if (linear_backward(be, m->s_nm, g + w->fc2_kernel, g + w->fc2_bias, dz, a->gelu, p + w->fc2_kernel, N, Mlp,
                            D, 0))
            return VIT_ERR;
        be->gelu_dropout_backward(be, m->s_nm, g + w->fc1_bias, a->fc1, m->s_nm, N, Mlp, c->gelu_tanh, drop, seed,
                                  step, site(l, 1));
        if (linear_backward(be, m->s_nd2, g + w->fc1_kernel, NULL, m->s_nm, a->ln2, p + w->fc1_kernel, N, D, Mlp, 0))
            return VIT_ERR;
        be->layernorm_backward(be, m->dres, g + w->ln2_scale, g + w->ln2_bias, m->s_nd2, a->resid1,
                               p + w->ln2_scale, a->ln2_mean, a->ln2_rstd, N, D);
        // Attention branch
        const float *datt = branch_grad(m, l, 0, 0, B, seed, step);
        if (linear_backward(be, m->s_nd2, g + w->out_kernel, g + w->out_bias, datt, a->att_out, p + w->out_kernel, N,
                            D, D, 0) ||
            be->attention_backward(be, m->dq, m->dk, m->dv, m->s_nd2, a->att_out, a->att_state, m->att_scratch, a->q, a->k, a->v,
                                   B, T, H, hd) ||
            linear_backward(be, m->s_nd1, g + w->q_kernel, g + w->q_bias, m->dq, a->ln1, p + w->q_kernel, N, D, D, 0) ||
            linear_backward(be, m->s_nd1, g + w->k_kernel, g + w->k_bias, m->dk, a->ln1, p + w->k_kernel, N, D, D, 1) ||
            linear_backward(be, m->s_nd1, g + w->v_kernel, g + w->v_bias, m->dv, a->ln1, p + w->v_kernel, N, D, D, 1))
            return VIT_ERR;
        be->layernorm_backward(be, m->dres, g + w->ln0_scale, g + w->ln0_bias, m->s_nd1, m->x[l], p + w->ln0_scale,
                               a->ln1_mean, a->ln1_rstd, N, D);
        if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, w->ln0_scale, top - w->ln0_scale);
        top = w->ln0_scale;
    }

    be->tokens_backward(be, m->demb, g + o->cls, g + o->pos, m->dres, B, T, D);
    if (linear_backward(be, NULL, g + o->embed_kernel, g + o->embed_bias, m->demb, m->patches, p + o->embed_kernel,
                        B * G2, pin, D, 0))
        return VIT_ERR;
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, 0, top);
    return VIT_OK;
}
