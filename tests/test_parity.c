// The whole model against the PyTorch reference (tools/vit_ref.py, fixtures from
// tools/make_fixtures.py): logits, loss, every gradient, and the parameters after three
// updates of each optimizer with clipping active and gradient accumulation 2.
// fp32 agreement: 1e-5 relative on logits and loss, 1e-4 on gradients and parameters
// (normwise per tensor: max|ours - ref| / max|ref|).
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "io/safetensors.h"
#include "model/vit.h"
#include "train/update.h"
#include "util/status.h"

static StFile fx;

static int meta_int(const char *key) {
    const char *v = st_meta(&fx, key);
    if (!v) {
        fprintf(stderr, "fixture lacks metadata %s\n", key);
        exit(1);
    }
    return atoi(v);
}

static float meta_float(const char *key) {
    const char *v = st_meta(&fx, key);
    return v ? strtof(v, NULL) : 0.0f;
}

static const float *tensor(const char *fmt, const char *a, const char *b, size_t expect_floats) {
    char name[256];
    snprintf(name, sizeof name, fmt, a, b);
    const StTensor *t = st_find(&fx, name);
    if (!t || t->dtype != ST_F32 || t->nbytes != expect_floats * sizeof(float)) {
        fprintf(stderr, "fixture tensor %s missing or of the wrong size\n", name);
        exit(1);
    }
    return t->data;
}

static void load_params(ViT *m) {
    for (int i = 0; i < m->table.count; i++) {
        const ParamEntry *e = &m->table.entries[i];
        memcpy(m->params + e->offset, tensor("param/%s%s", e->name, "", e->size), e->size * sizeof(float));
    }
}

static const uint8_t *micro_images(int k, size_t bytes) {
    const StTensor *t = st_find(&fx, "input/images");
    return (const uint8_t *)t->data + (size_t)k * bytes;
}

static const int *micro_labels(int k, int B) {
    const StTensor *t = st_find(&fx, "input/labels");
    return (const int *)t->data + (size_t)k * B;
}

// The true gradient of a key bias is exactly zero (softmax ignores a shift shared by all
// keys), so its computed value is pure rounding noise and is checked in absolute terms.
static int is_key_bias(const char *name) {
    size_t n = strlen(name);
    return n > 8 && !strcmp(name + n - 8, "key/bias");
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "tests/fixtures/parity.safetensors";
    if (st_read(&fx, path)) {
        fprintf(stderr, "%s\n", vit_error());
        return 1;
    }
    ViTConfig c = {.hidden = meta_int("hidden"), .mlp = meta_int("mlp"), .heads = meta_int("heads"),
                   .layers = meta_int("layers"), .patch = meta_int("patch"), .image = meta_int("image"),
                   .channels = meta_int("channels"), .classes = meta_int("classes"),
                   .representation = meta_int("representation"), .dropout = 0.0f, .gelu_tanh = 0};
    strcpy(c.name, "parity");
    int B = meta_int("batch"), A = meta_int("grad_accum"), K = c.classes;
    size_t img_bytes = (size_t)c.image * c.image * c.channels;
    Backend *be = backend_cpu_create(0);
    ViT m;
    CHECK(vit_create(&m, &c, be, B, 1) == 0, "model builds: %s", vit_error());
    size_t n = m.table.total;

    // Forward and backward of micro-batch 0.
    load_params(&m);
    be->zero(be, m.grads, n * sizeof(float));
    CHECK(vit_forward(&m, micro_images(0, (size_t)B * img_bytes), micro_labels(0, B), B, 1, 0.0f, 0, 0) == 0, "forward");
    double rl = check_rel_diff(m.host_logits, tensor("logits%s%s", "", "", (size_t)B * K), (size_t)B * K);
    CHECK(rl <= 1e-5, "logits: relative difference %.3g > 1e-5", rl);
    float loss = 0;
    for (int b = 0; b < B; b++) loss += m.host_losses[b] / B;
    double rloss = check_rel_diff(&loss, tensor("loss%s%s", "", "", 1), 1);
    CHECK(rloss <= 1e-5, "loss %.7f: relative difference %.3g > 1e-5", loss, rloss);
    CHECK(vit_backward(&m, B, 0.0f, 1.0f / B, 0, 0) == 0, "backward");
    double worst = 0;
    for (int i = 0; i < m.table.count; i++) {
        const ParamEntry *e = &m.table.entries[i];
        const float *ref = tensor("grad/%s%s", e->name, "", e->size);
        if (is_key_bias(e->name)) {
            double mx = 0;
            for (size_t j = 0; j < e->size; j++) mx = fmax(mx, fabs(m.grads[e->offset + j] - ref[j]));
            CHECK(mx < 1e-6, "grad %s: max |diff| %.3g (true value is zero)", e->name, mx);
            continue;
        }
        double r = check_rel_diff(m.grads + e->offset, ref, e->size);
        worst = fmax(worst, r);
        CHECK(r <= 1e-4, "grad %s: relative difference %.3g > 1e-4", e->name, r);
    }
    printf("parity: logits %.2g, loss %.2g, worst gradient %.2g (relative)\n", rl, rloss, worst);

    // The inference-only model (one set of block buffers, no gradients) gives the same logits.
    ViT inf;
    CHECK(vit_create(&inf, &c, be, B, 0) == 0, "inference model builds");
    load_params(&inf);
    CHECK(vit_forward(&inf, micro_images(0, (size_t)B * img_bytes), NULL, B, 0, 0.0f, 0, 0) == 0, "inference forward");
    double ri = check_rel_diff(inf.host_logits, tensor("logits%s%s", "", "", (size_t)B * K), (size_t)B * K);
    CHECK(ri <= 1e-5, "inference-only logits: relative difference %.3g", ri);
    CHECK(inf.activation_bytes < m.activation_bytes, "inference plans less memory (%zu vs %zu bytes)",
          inf.activation_bytes, m.activation_bytes);
    vit_destroy(&inf);

    // Label smoothing 0.1 on the same batch.
    CHECK(vit_forward(&m, micro_images(0, (size_t)B * img_bytes), micro_labels(0, B), B, 0, 0.1f, 0, 0) == 0, "forward");
    loss = 0;
    for (int b = 0; b < B; b++) loss += m.host_losses[b] / B;
    double rls = check_rel_diff(&loss, tensor("loss_ls%s%s", "", "", 1), 1);
    CHECK(rls <= 1e-5, "loss with label smoothing 0.1: relative difference %.3g", rls);

    // Three updates of each optimizer, two micro-batches each, clipping active.
    const char *opts[] = {"sgd", "adam", "adamw", "rmsprop"};
    float *m1 = malloc(n * sizeof(float)), *m2 = malloc(n * sizeof(float));
    for (int k = 0; k < 4; k++) {
        const char *name = opts[k];
        char key[64];
        OptimConfig oc;
        optim_config_default(&oc, name);
#define META(field, prefix) snprintf(key, sizeof key, prefix "_%s", name), (st_meta(&fx, key) ? (oc.field = meta_float(key)) : 0)
        META(clip_norm, "clip"); META(weight_decay, "wd"); META(epsilon, "eps"); META(beta1, "beta1");
        META(beta2, "beta2"); META(momentum, "momentum"); META(rho, "rho");
        snprintf(key, sizeof key, "lr_%s", name);
        float lr = meta_float(key);
        load_params(&m);
        memset(m1, 0, n * sizeof(float));
        memset(m2, 0, n * sizeof(float));
        int clipped = 0;
        for (int u = 0; u < 3; u++) {
            be->zero(be, m.grads, n * sizeof(float));
            for (int a = 0; a < A; a++) {
                int mb = u * A + a;
                vit_forward(&m, micro_images(mb, (size_t)B * img_bytes), micro_labels(mb, B), B, 1, 0.0f, 0, 0);
                vit_backward(&m, B, 0.0f, 1.0f / ((float)B * A), 0, 0);
            }
            double norm;
            optim_step(be, &m.table, m.params, m.grads, m1, m2, &oc, lr, u + 1, &norm);
            clipped += norm > oc.clip_norm;
            if (getenv("PARITY_VERBOSE")) printf("%s update %d norm %.6f\n", name, u + 1, norm);
        }
        CHECK(clipped == 3, "%s: clipping active on all 3 updates (%d)", name, clipped);
        double w = 0;
        for (int i = 0; i < m.table.count; i++) {
            const ParamEntry *e = &m.table.entries[i];
            const float *ref = tensor("after/%s/%s", name, e->name, e->size);
            if (is_key_bias(e->name) && oc.kind == OPT_ADAMW) {
                // AdamW's epsilon (1e-8) is below the rounding noise of this zero
                // gradient, so each update may move it by up to lr: bound that instead.
                double mx = 0;
                for (size_t j = 0; j < e->size; j++) mx = fmax(mx, fabs(m.params[e->offset + j] - ref[j]));
                CHECK(mx <= 3 * lr * 1.001, "%s %s: moved %.3g > 3 lr", name, e->name, mx);
                continue;
            }
            double r = check_rel_diff(m.params + e->offset, ref, e->size);
            w = fmax(w, r);
            CHECK(r <= 1e-4, "%s: %s after 3 updates: relative difference %.3g > 1e-4", name, e->name, r);
        }
        printf("parity: %s after 3 updates, worst parameter %.2g (relative)\n", name, w);
    }
    free(m1), free(m2);

    // bf16: the model with -d bf16 (gemm operands rounded to bf16, fp32 elsewhere) against
    // the reference under PyTorch's CPU autocast to bfloat16 (tools/make_bf16_fixture.py),
    // whose activations between products are bf16 too: agreement at bf16 resolution
    // (8 bits of mantissa, 3.9e-3 per rounding) over a few chained products.
    StFile bf = {0};
    const char *bf_path = "tests/fixtures/parity_bf16.safetensors";
    CHECK(st_read(&bf, bf_path) == 0, "%s: %s", bf_path, vit_error());
    // Twice: activations between the passes in fp32, then in bf16 (VIT_STORE_BF16, what
    // `vit train -d bf16` plans), against the same fixture and tolerances.
    for (int store = 0; store < 2 && bf.count; store++) {
        ViT ms;
        ViT *mm = &m;
        if (store) {
            CHECK(vit_create_ex(&ms, &c, be, B, 1, VIT_STORE_BF16) == 0 && ms.store_bf16, "bf16-storing model builds");
            mm = &ms;
        }
        const char *how = store ? "bf16-stored" : "fp32-stored";
        load_params(mm);
        backend_cpu_set_bf16(be, 1);
        be->zero(be, mm->grads, n * sizeof(float));
        CHECK(vit_forward(mm, micro_images(0, (size_t)B * img_bytes), micro_labels(0, B), B, 1, 0.0f, 0, 0) == 0,
              "bf16 forward (%s)", how);
        const StTensor *lt = st_find(&bf, "logits"), *ls = st_find(&bf, "loss");
        CHECK(lt && lt->nbytes == (size_t)B * K * sizeof(float) && ls, "bf16 fixture holds logits and loss");
        if (lt && ls && lt->nbytes == (size_t)B * K * sizeof(float)) {
            double rb = check_rel_diff(mm->host_logits, lt->data, (size_t)B * K);
            CHECK(rb <= 3e-2, "bf16 logits: relative difference %.3g > 3e-2", rb);
            float bl = 0;
            for (int b = 0; b < B; b++) bl += mm->host_losses[b] / B;
            double rbl = check_rel_diff(&bl, ls->data, 1);
            CHECK(rbl <= 1e-2, "bf16 loss %.5f: relative difference %.3g > 1e-2", bl, rbl);
            CHECK(vit_backward(mm, B, 0.0f, 1.0f / B, 0, 0) == 0, "bf16 backward (%s)", how);
            double bw = 0;
            for (int i = 0; i < mm->table.count; i++) {
                const ParamEntry *e = &mm->table.entries[i];
                char name[256];
                snprintf(name, sizeof name, "grad/%s", e->name);
                const StTensor *g = st_find(&bf, name);
                CHECK(g && g->nbytes == e->size * sizeof(float), "bf16 fixture holds %s", name);
                if (!g || g->nbytes != e->size * sizeof(float) || is_key_bias(e->name)) continue;
                double r = check_rel_diff(mm->grads + e->offset, g->data, e->size);
                bw = fmax(bw, r);
                CHECK(r <= 5e-2, "bf16 grad %s: relative difference %.3g > 5e-2", e->name, r);
            }
            printf("parity bf16 (%s activations) vs torch autocast: logits %.2g, loss %.2g, worst gradient %.2g "
                   "(relative)\n", how, rb, rbl, bw);
        }
        backend_cpu_set_bf16(be, 0);
        if (store) vit_destroy(&ms);
    }
    st_free(&bf);
    vit_destroy(&m);
    be->destroy(be);
    st_free(&fx);
    return check_report("parity");
}
