// Optimizer updates on the device over fp32 master weights, the formulas of
// src/backend/cpu/cpu_optim.c: step constants are computed on the host exactly as there,
// and the element updates use round-to-nearest intrinsics so that no product is fused
// into an fma here that the CPU rounds separately.
#include <math.h>
#include "cuda_common.h"

#define MUL __fmul_rn
#define ADD __fadd_rn
#define SUB __fsub_rn
#define DIV __fdiv_rn

__global__ void sgd_kernel(float *p, const float *g, float *m, size_t n, float lr, float gs, float decay, float mom) {
    CUDA_FOR(i, n) {
        float w = MUL(p[i], decay);
        float mi = SUB(MUL(mom, m[i]), MUL(lr, MUL(g[i], gs)));
        m[i] = mi;
        p[i] = ADD(w, mi);
    }
}

__global__ void adam_kernel(float *p, const float *g, float *m, float *v, size_t n, float lr, float gs, float decay,
                            float b1, float b2, float one_b1, float one_b2, float eps, float lr_t, float inv_c1,
                            float inv_sqrt_c2, int keras) {
    CUDA_FOR(i, n) {
        float gi = MUL(g[i], gs), w = MUL(p[i], decay);
        float mi = ADD(MUL(b1, m[i]), MUL(one_b1, gi));
        float vi = ADD(MUL(b2, v[i]), MUL(MUL(one_b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        if (keras)  // Keras: p -= lr_t m / (sqrt(v) + eps)
            p[i] = SUB(w, DIV(MUL(lr_t, mi), ADD(sqrtf(vi), eps)));
        else        // PyTorch AdamW: p -= lr (m / c1) / (sqrt(v / c2) + eps)
            p[i] = SUB(w, DIV(MUL(lr, MUL(mi, inv_c1)), ADD(MUL(sqrtf(vi), inv_sqrt_c2), eps)));
    }
}

__global__ void rmsprop_kernel(float *p, const float *g, float *v, size_t n, float lr, float gs, float decay, float rho,
                               float one_rho, float eps) {
    CUDA_FOR(i, n) {
        float gi = MUL(g[i], gs), w = MUL(p[i], decay);
        float vi = ADD(MUL(rho, v[i]), MUL(MUL(one_rho, gi), gi));
        v[i] = vi;
        p[i] = SUB(w, DIV(MUL(lr, gi), ADD(sqrtf(vi), eps)));
    }
}

static void optimizer_update(Backend *be, float *p, const float *g, float *m, float *v, size_t n, const OptimStep *st) {
    CudaState *s = cuda_state(be);
    if (s->failed || !n) return;
    const float lr = st->lr, gs = st->grad_scale;
    const float lr_wd = st->lr * st->weight_decay, decay = 1.0f - lr_wd;
    unsigned blocks = cuda_blocks(s, n, 256);
    switch (st->kind) {
    case OPT_SGD:
        if (!m) {
            cuda_fail(s, "optimizer_update", "sgd needs its momentum slot");
            return;
        }
        sgd_kernel<<<blocks, 256, 0, s->stream>>>(p, g, m, n, lr, gs, decay, st->momentum);
        break;
    case OPT_ADAM:
    case OPT_ADAMW: {
        if (!m || !v) {
            cuda_fail(s, "optimizer_update", "adam needs both moment slots");
            return;
        }
        const float b1 = st->beta1, b2 = st->beta2;
        const double c1 = 1.0 - pow(b1, st->t), c2 = 1.0 - pow(b2, st->t);
        const float lr_t = (float)(lr * sqrt(c2) / c1), inv_c1 = (float)(1.0 / c1), inv_sqrt_c2 = (float)(1.0 / sqrt(c2));
        adam_kernel<<<blocks, 256, 0, s->stream>>>(p, g, m, v, n, lr, gs, decay, b1, b2, 1.0f - b1, 1.0f - b2,
                                                   st->epsilon, lr_t, inv_c1, inv_sqrt_c2, st->kind == OPT_ADAM);
        break;
    }
    case OPT_RMSPROP:
        if (!v) {
            cuda_fail(s, "optimizer_update", "rmsprop needs its second-moment slot");
            return;
        }
        rmsprop_kernel<<<blocks, 256, 0, s->stream>>>(p, g, v, n, lr, gs, decay, st->rho, 1.0f - st->rho, st->epsilon);
        break;
    default:
        cuda_fail(s, "optimizer_update", "unknown optimizer kind %d", (int)st->kind);
        return;
    }
    cuda_check_launch(s, "optimizer_update");
}

void cuda_install_optimizer(Backend *be) { be->optimizer_update = optimizer_update; }
