// Optimizer updates over a contiguous range of fp32 parameters (formulas in README.md):
// sgd and rmsprop as Keras defines them, adam with Keras' epsilon placement (the recipe),
// adamw as PyTorch's AdamW. Weight decay is decoupled and applied first.
#include <math.h>
#include "cpu.h"

static void optimizer_update(Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                             const OptimStep *s) {
    const float lr = s->lr, gs = s->grad_scale, decay = 1.0f - s->lr * s->weight_decay;
    switch (s->kind) {
    case OPT_SGD: {
        const float mom = s->momentum;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float w = p[i] * decay;
            m[i] = mom * m[i] - lr * (g[i] * gs);
            p[i] = w + m[i];
        }
        break;
    }
    case OPT_ADAM:
    case OPT_ADAMW: {
        const float b1 = s->beta1, b2 = s->beta2, eps = s->epsilon;
        const double c1 = 1.0 - pow(b1, s->t), c2 = 1.0 - pow(b2, s->t);
        // Keras: lr_t = lr sqrt(c2)/c1, p -= lr_t m / (sqrt(v) + eps)
        // PyTorch: p -= lr (m/c1) / (sqrt(v/c2) + eps)
        const float lr_t = (float)(lr * sqrt(c2) / c1), inv_c1 = (float)(1.0 / c1), inv_sqrt_c2 = (float)(1.0 / sqrt(c2));
        const int keras = s->kind == OPT_ADAM;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * gs, w = p[i] * decay;
            m[i] = b1 * m[i] + (1.0f - b1) * gi;
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
            if (keras)
                p[i] = w - lr_t * m[i] / (sqrtf(v[i]) + eps);
            else
                p[i] = w - lr * (m[i] * inv_c1) / (sqrtf(v[i]) * inv_sqrt_c2 + eps);
        }
        break;
    }
    case OPT_RMSPROP: {
        const float rho = s->rho, eps = s->epsilon;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * gs, w = p[i] * decay;
            v[i] = rho * v[i] + (1.0f - rho) * gi * gi;
            p[i] = w - lr * gi / (sqrtf(v[i]) + eps);
        }
        break;
    }
    }
}

void cpu_install_optimizer(Backend *be) { be->optimizer_update = optimizer_update; }
