// Activation checkpointing (vit_create_ex(..., recompute = 1)) against the ordinary model
// on the CPU backend: the same ops on the same inputs in the same order, so logits, losses,
// every gradient and the grad_ready calls must be bit-identical, with dropout on and two
// accumulated micro-steps. Then the planned memory of ViT-B/16 at 224 (planned only), and
// step times on/off as a print, never an assertion (VIT_RECOMPUTE_BENCH=1 adds ViT-B/16).
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/clock.h"
#include "util/rng.h"
#include "util/status.h"

// The grad_ready calls of one backward pass, in order.
typedef struct {
    size_t calls[64][2];
    int n;
} ReadyLog;

static void on_ready(void *ctx, size_t offset, size_t count) {
    ReadyLog *r = ctx;
    if (r->n < 64) r->calls[r->n][0] = offset, r->calls[r->n][1] = count;
    r->n++;
}

// Names the first parameter tensor whose gradients differ bit-wise, or NULL.
static const char *first_diff(const ViT *a, const ViT *b) {
    for (int i = 0; i < a->table.count; i++) {
        const ParamEntry *e = &a->table.entries[i];
        if (memcmp(a->grads + e->offset, b->grads + e->offset, e->size * sizeof(float))) return e->name;
    }
    return NULL;
}

static void test_bit_identical(Backend *be) {
    ViTConfig c = small_config("recompute");
    const int B = 4, A = 2;
    const float smoothing = 0.1f;
    const uint64_t seed = 11;
    ViT off, on;
    CHECK(vit_create(&off, &c, be, B, 1) == 0, "model builds: %s", vit_error());
    CHECK(vit_create_ex(&on, &c, be, B, 1, 1) == 0, "recompute model builds: %s", vit_error());
    CHECK(on.recompute == 1 && off.recompute == 0, "recompute flag stored");
    vit_init_params(&off, 5);
    vit_init_params(&on, 5);
    randomize_head(&off, 5);
    randomize_head(&on, 5);
    size_t n = off.table.total;
    be->zero(be, off.grads, n * sizeof(float));
    be->zero(be, on.grads, n * sizeof(float));
    ReadyLog roff = {0}, ron = {0};
    off.grad_ready = on_ready, off.grad_ready_ctx = &roff;
    on.grad_ready = on_ready, on.grad_ready_ctx = &ron;

    size_t img = (size_t)B * c.image * c.image * c.channels;
    uint8_t *images = malloc(img);
    int labels[4];
    for (int k = 0; k < A; k++) {
        synth_batch(images, labels, B, &c, (uint32_t)k);
        int rf = vit_forward(&off, images, labels, B, 1, smoothing, seed, (uint32_t)k) |
                 vit_forward(&on, images, labels, B, 1, smoothing, seed, (uint32_t)k);
        CHECK(rf == 0, "micro-step %d: forward: %s", k, vit_error());
        CHECK(!memcmp(off.host_logits, on.host_logits, (size_t)B * c.classes * sizeof(float)),
              "micro-step %d: logits differ", k);
        CHECK(!memcmp(off.host_losses, on.host_losses, (size_t)B * sizeof(float)), "micro-step %d: losses differ", k);
        roff.n = ron.n = 0;
        int rb = vit_backward(&off, B, smoothing, 1.0f / (B * A), seed, (uint32_t)k) |
                 vit_backward(&on, B, smoothing, 1.0f / (B * A), seed, (uint32_t)k);
        CHECK(rb == 0, "micro-step %d: backward: %s", k, vit_error());
        CHECK(roff.n == c.layers + 2 && ron.n == roff.n && !memcmp(roff.calls, ron.calls, sizeof roff.calls),
              "micro-step %d: grad_ready calls differ (%d vs %d)", k, roff.n, ron.n);
    }
    const char *d = first_diff(&off, &on);
    CHECK(!d, "gradients differ, first in %s", d ? d : "");
    double ss = be->sum_squares(be, off.grads, n);
    CHECK(ss > 0 && ss == be->sum_squares(be, on.grads, n), "gradients nonzero and equal (|g|^2 = %.6g)", ss);
    CHECK(be->sum_squares(be, off.grads + off.off.blocks[0].q_kernel, (size_t)c.hidden * c.hidden) > 0,
          "the first block's gradients are nonzero (the backward pass reached it)");
    CHECK(on.activation_bytes < off.activation_bytes, "recompute plans less (%zu vs %zu bytes)", on.activation_bytes,
          off.activation_bytes);

    // An evaluation forward pass without dropout on the recompute model still matches.
    CHECK(vit_forward(&off, images, NULL, B, 0, 0, 0, 0) == 0 && vit_forward(&on, images, NULL, B, 0, 0, 0, 0) == 0 &&
              !memcmp(off.host_logits, on.host_logits, (size_t)B * c.classes * sizeof(float)),
          "evaluation logits differ");
    printf("recompute: 3 layers, dropout 0.1, 2 micro-steps: logits, losses, gradients bit-identical\n");
    free(images);
    vit_destroy(&off);
    vit_destroy(&on);
}

// Plans without allocating: the CPU backend's table with a token allocation, so the
// ViT-B/16 plans (several GiB at batch 64) cost nothing. vit_create never touches memory.
static void *token_alloc(Backend *be, size_t bytes) { return malloc(1); }
static void token_release(Backend *be, void *p) { free(p); }

static double mib(size_t bytes) { return bytes / 1048576.0; }

static void test_memory(Backend *cpu) {
    Backend planner = *cpu;
    planner.alloc = token_alloc;
    planner.release = token_release;
    ViTConfig c;
    config_from_preset(&c, "ViT-B_16");
    c.image = 224;
    int batches[] = {8, 64};
    for (int i = 0; i < 2; i++) {
        ViT off, on, inf;
        int ok = vit_create(&off, &c, &planner, batches[i], 1) == 0 &&
                 vit_create_ex(&on, &c, &planner, batches[i], 1, 1) == 0 &&
                 vit_create_ex(&inf, &c, &planner, batches[i], 0, 1) == 0;
        CHECK(ok, "ViT-B/16 plans: %s", vit_error());
        if (!ok) return;
        double ratio = (double)off.activation_bytes / on.activation_bytes;
        printf("recompute: ViT-B/16 224 batch %d: activations %.0f MiB -> %.0f MiB (%.2fx less); inference %.0f MiB\n",
               batches[i], mib(off.activation_bytes), mib(on.activation_bytes), ratio, mib(inf.activation_bytes));
        CHECK(ratio >= 3.0, "ViT-B/16 224 batch %d: activation memory ratio %.2f < 3", batches[i], ratio);
        CHECK(inf.recompute == 0 && inf.activation_bytes < on.activation_bytes,
              "inference ignores recompute and plans least");
        vit_destroy(&off);
        vit_destroy(&on);
        vit_destroy(&inf);
    }
}

// Seconds of one training step (forward + backward), best of `reps` after one warm-up
// step, interleaving off and on so drift of the machine hits both alike.
static void time_steps(Backend *be, const ViTConfig *c, int B, int reps) {
    ViT m[2];
    if (vit_create(&m[0], c, be, B, 1) || vit_create_ex(&m[1], c, be, B, 1, 1)) {
        CHECK(0, "timing models build: %s", vit_error());
        return;
    }
    size_t img = (size_t)B * c->image * c->image * c->channels;
    uint8_t *images = malloc(img);
    int *labels = malloc((size_t)B * sizeof(int));
    synth_batch(images, labels, B, c, 0);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r <= reps; r++)
        for (int k = 0; k < 2; k++) {
            if (r == 0) vit_init_params(&m[k], 1), be->zero(be, m[k].grads, m[k].table.total * sizeof(float));
            double t0 = clock_seconds();
            int rc = vit_forward(&m[k], images, labels, B, 1, 0.1f, 1, (uint32_t)r) ||
                     vit_backward(&m[k], B, 0.1f, 1.0f / B, 1, (uint32_t)r);
            be->synchronize(be);
            double t = clock_seconds() - t0;
            CHECK(rc == 0, "timing step: %s", vit_error());
            if (r > 0 && t < best[k]) best[k] = t;
        }
    printf("recompute: %s-shaped (D %d, %d layers, %d tokens) batch %d: step %.3f s off, %.3f s on (%+.1f%%), "
           "activations %.0f -> %.0f MiB\n",
           c->name, c->hidden, c->layers, config_tokens(c), B, best[0], best[1], 100 * (best[1] / best[0] - 1),
           mib(m[0].activation_bytes), mib(m[1].activation_bytes));
    free(images);
    free(labels);
    vit_destroy(&m[0]);
    vit_destroy(&m[1]);
}

int main(void) {
    Backend *be = backend_cpu_create(0);
    if (!be) {
        fprintf(stderr, "%s\n", vit_error());
        return 1;
    }
    test_bit_identical(be);
    test_memory(be);
    ViTConfig s = {.hidden = 192, .mlp = 768, .heads = 3, .layers = 4, .patch = 4, .image = 32, .channels = 3,
                   .classes = 10, .representation = 0, .dropout = 0.1f, .gelu_tanh = 0};
    strcpy(s.name, "ViT-Ti");
    time_steps(be, &s, 16, 3);
    const char *bench = getenv("VIT_RECOMPUTE_BENCH");
    if (bench && !strcmp(bench, "1")) {
        ViTConfig b;
        config_from_preset(&b, "ViT-B_16");
        b.image = 224;
        time_steps(be, &b, 8, 2);
    }
    be->destroy(be);
    return check_report("recompute");
}
