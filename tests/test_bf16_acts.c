// bf16 activations (issue 15 item 3: vit_create_ex(..., VIT_STORE_BF16) on a backend with the
// bf16-activation ops) through the CPU backend, so that vit.c's path is tested without a GPU:
//  - the switch: without the ops VIT_STORE_BF16 still means bf16 storage (the default path);
//  - with bf16 products the path is bit-identical to fp32 activations: there every product
//    rounds its activation operand to bf16 itself, here the op that makes it writes it rounded,
//    and the CPU's gemm_bf16 runs the same products (q, k, v as one strided batch included);
//  - against fp32 throughout (fp32 products) it stays within bf16 resolution, logits and every
//    gradient;
//  - with activation checkpointing (VIT_RECOMPUTE) the gradients are bit-identical again;
//  - the bf16-activation model is planned for a larger batch than it runs (q, k, v and their
//    gradients are one allocation each, strided by the planned batch).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/status.h"

static double rel_diff(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

enum { B = 4, STEPS = 2, NMODELS = 4 };

// Two micro-steps of forward + backward (dropout on, gradients accumulated) on model m, with
// bf16 products or not; the logits and losses of the last step into logits/losses.
static int run(Backend *be, ViT *m, const ViTConfig *c, int bf16_products, float *logits, float *losses) {
    const float smoothing = 0.1f;
    const uint64_t seed = 7;
    uint8_t images[B * 16 * 16 * 3];
    int labels[B];
    vit_init_params(m, 5);
    randomize_head(m, 5);
    be->zero(be, m->grads, m->table.total * sizeof(float));
    backend_cpu_set_bf16(be, bf16_products);
    int rc = 0;
    for (int s = 0; s < STEPS && !rc; s++) {
        synth_batch(images, labels, B, c, (uint32_t)s);
        rc = vit_forward(m, images, labels, B, 1, smoothing, seed, (uint32_t)s) ||
             vit_backward(m, B, smoothing, 1.0f / (B * STEPS), seed, (uint32_t)s);
    }
    backend_cpu_set_bf16(be, 0);
    memcpy(logits, m->host_logits, (size_t)B * c->classes * sizeof(float));
    memcpy(losses, m->host_losses, (size_t)B * sizeof(float));
    return rc;
}

int main(void) {
    Backend *be = backend_cpu_create(0);
    CHECK(be != NULL, "cpu backend");
    if (!be) return check_report("bf16_acts");
    ViTConfig c = small_config("bf16_acts");

    // Without the ops (the CPU default) the switch means bf16 storage, as before.
    ViT plain;
    CHECK(vit_create_ex(&plain, &c, be, B, 1, VIT_STORE_BF16) == 0 && plain.store_bf16 && !plain.bf16_acts,
          "without the bf16-activation ops VIT_STORE_BF16 keeps bf16 storage: %s", vit_error());
    vit_destroy(&plain);

    backend_cpu_set_bf16_acts(be, 1);
    // fp32 throughout; fp32 activations with bf16 products; bf16 activations; and recomputed.
    static const char *const names[NMODELS] = {"fp32", "bf16 products", "bf16 activations", "bf16 activations, recompute"};
    const int options[NMODELS] = {0, 0, VIT_STORE_BF16, VIT_STORE_BF16 | VIT_RECOMPUTE};
    const int products[NMODELS] = {0, 1, 1, 1};
    ViT m[NMODELS];
    float *logits[NMODELS], losses[NMODELS][B];
    int built = 1;
    for (int i = 0; i < NMODELS; i++) {
        int ok = vit_create_ex(&m[i], &c, be, i == 2 ? B + 2 : B, 1, options[i]) == 0;
        CHECK(ok, "%s model builds: %s", names[i], vit_error());
        built &= ok;
    }
    if (!built) return check_report("bf16_acts");
    CHECK(!m[0].bf16_acts && !m[1].bf16_acts && m[2].bf16_acts && !m[2].store_bf16 && m[3].bf16_acts && m[3].recompute,
          "the bf16-activation path is chosen by VIT_STORE_BF16 on a backend with the ops, also with recompute");
    for (int i = 0; i < NMODELS; i++) {
        logits[i] = malloc((size_t)B * c.classes * sizeof(float));
        CHECK(run(be, &m[i], &c, products[i], logits[i], losses[i]) == 0, "%s: forward and backward: %s", names[i],
              vit_error());
    }
    size_t nl = (size_t)B * c.classes, np = m[0].table.total;

    // Same products, same roundings: bit for bit.
    CHECK(!memcmp(logits[2], logits[1], nl * sizeof(float)) && !memcmp(losses[2], losses[1], sizeof losses[1]),
          "bf16 activations: logits and losses bit-identical to fp32 activations with bf16 products");
    CHECK(!memcmp(m[2].grads, m[1].grads, np * sizeof(float)),
          "bf16 activations: gradients bit-identical to fp32 activations with bf16 products (relative difference "
          "%.3g)", rel_diff(m[2].grads, m[1].grads, np));
    CHECK(!memcmp(m[3].grads, m[2].grads, np * sizeof(float)), "bf16 activations with recompute: gradients "
          "bit-identical (relative difference %.3g)", rel_diff(m[3].grads, m[2].grads, np));

    // Against fp32 throughout: bf16 resolution (8 significant bits), normwise per tensor.
    double el = rel_diff(logits[2], logits[0], nl), worst = 0;
    CHECK(el <= 2e-2, "bf16 activations: logits within %.3g of fp32 (tolerance 2e-2)", el);
    for (int i = 0; i < m[0].table.count; i++) {
        const ParamEntry *e = &m[0].table.entries[i];
        if (strstr(e->name, "key/bias")) continue;  // zero in exact arithmetic: pure noise
        double r = rel_diff(m[2].grads + e->offset, m[0].grads + e->offset, e->size);
        worst = fmax(worst, r);
        CHECK(isfinite(r) && r <= 5e-2, "%s: gradient relative difference to fp32 %.3g > 5e-2", e->name, r);
    }
    printf("bf16_acts: bit-identical to bf16 products over fp32 activations; against fp32: logits %.2g, worst "
           "gradient %.2g (relative)\n", el, worst);
    for (int i = 0; i < NMODELS; i++) {
        vit_destroy(&m[i]);
        free(logits[i]);
    }
    be->destroy(be);
    return check_report("bf16_acts");
}
