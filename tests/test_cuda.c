// The CUDA backend against the CPU backend at model level (DESIGN.md's ladder, rung 5): one
// whole training step with accumulation 2, a 50-step run whose losses track the CPU's, and
// its error handling. Every op of the table on its own (against fp64 references and the CPU
// backend, in fp32, tf32, bf16 and bf16 with the mma.sync attention kernels) is
// tests/test_backend_ops.c's. Without a device it prints one line, "test_cuda: skipped (no
// CUDA device)", and exits 0 with no count: a skip is not a pass.
//
// Bounds, relative to the CPU's results:
//   whole step: losses 1e-5, each gradient tensor 1e-4, each updated parameter tensor 1e-5;
//   50 steps: every loss within 1e-3 x max(1, loss) of the CPU's in fp32, 0.1 x max(1, loss)
//   with bf16 matrix products (a looser sanity bound: bf16 training is a different run).
// VIT_TEST_CUDA_ON_CPU=1 runs the same comparisons with a second CPU backend in place of
// the GPU (a check of this harness on machines without one).
// Built with NCCL: a one-rank communicator sums a bucket and a backward pass's buckets as the
// identity, bit for bit (test_nccl).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda_backend.h"
#include "check.h"
#include "model/vit.h"
#include "train/update.h"
#include "util/rng.h"
#include "util/status.h"
#ifdef VIT_NCCL
#include "dist/nccl_sync.h"
#endif

static Backend *cpu, *gpu, *gpu_bf16;

// ---- whole model ------------------------------------------------------------------------------
static ViTConfig small_config(int representation, int gelu_tanh) {
    ViTConfig c;
    memset(&c, 0, sizeof c);
    strcpy(c.name, "ViT-test");
    c.hidden = 64, c.mlp = 128, c.heads = 4, c.layers = 2, c.patch = 8, c.image = 32, c.channels = 3;
    c.classes = 10, c.representation = representation, c.dropout = 0.1f, c.gelu_tanh = gelu_tanh;
    return c;
}

// Official initialisation, but a random head: with the official zero head nothing below it
// would get a gradient in the first step.
static float *initial_params(const ViTConfig *c) {
    ParamTable t;
    ParamOffsets o;
    params_build(&t, &o, c);
    float *h = malloc(t.total * sizeof(float));
    params_init(&t, h, 11);
    size_t head_in = c->representation ? (size_t)c->representation : (size_t)c->hidden;
    for (size_t i = 0; i < head_in * c->classes + c->classes; i++)
        h[o.head_kernel + i] = (float)(0.2 * rng_normal(12, 80, i));
    params_free(&t, &o);
    return h;
}

// Images with a class-dependent brightness, so a few steps learn something.
static void make_batch(uint8_t *img, int *lab, int B, const ViTConfig *c, uint32_t batch_index) {
    size_t per = (size_t)c->image * c->image * c->channels;
    for (int b = 0; b < B; b++) {
        uint64_t id = (uint64_t)batch_index * B + b;
        lab[b] = (int)(rng_uniform(21, 90, id) * c->classes);
        for (size_t i = 0; i < per; i++) {
            double u = rng_uniform(21, 91, id * per + i);
            img[b * per + i] = (uint8_t)(lab[b] * 20 + u * 60);
        }
    }
}

typedef struct {
    float losses[2 * 8];   // per sample, both micro-batches
    float *grads, *params;
} StepResult;

// One update with accumulation 2: forward + backward twice, then optim_step (sgd with
// momentum, clipping on: linear in the gradient, so small differences stay small).
static int whole_step(Backend *be, const ViTConfig *c, const float *init, StepResult *r) {
    enum { B = 8, A = 2 };
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    be->zero(be, m.grads, n * sizeof(float));
    OptimConfig oc;
    optim_config_default(&oc, "sgd");
    float *mom = be->alloc(be, n * sizeof(float));
    be->zero(be, mom, n * sizeof(float));
    uint8_t *img = malloc(B * per);
    int lab[B], rc = VIT_OK;
    for (int a = 0; a < A && rc == VIT_OK; a++) {
        make_batch(img, lab, B, c, (uint32_t)a);
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 99, (uint32_t)a);
        if (rc == VIT_OK) memcpy(r->losses + a * B, m.host_losses, B * sizeof(float));
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / (B * A), 99, (uint32_t)a);
    }
    double norm = 0;
    r->grads = malloc(n * sizeof(float));
    be->download(be, r->grads, m.grads, n * sizeof(float));
    if (rc == VIT_OK) rc = optim_step(be, &m.table, m.params, m.grads, mom, NULL, &oc, 0.05f, 1, &norm);
    r->params = malloc(n * sizeof(float));
    be->download(be, r->params, m.params, n * sizeof(float));
    free(img);
    be->release(be, mom);
    vit_destroy(&m);
    return rc;
}

static void test_whole_step(void) {
    for (int variant = 0; variant < 2; variant++) {
        ViTConfig c = small_config(variant ? 16 : 0, variant);
        float *init = initial_params(&c);
        StepResult rc_, rg;
        int e1 = whole_step(cpu, &c, init, &rc_);
        const char *m1 = e1 ? vit_error() : "";
        CHECK(e1 == 0, "whole step on the CPU: %s", m1);
        int e2 = whole_step(gpu, &c, init, &rg);
        CHECK(e2 == 0, "whole step on the GPU: %s", e2 ? vit_error() : "");
        const char *tag = variant ? "pre_logits + tanh GELU" : "plain";
        double dl = check_rel_diff(rg.losses, rc_.losses, 16);
        CHECK(dl <= 1e-5, "whole step (%s): losses rel diff %.3g", tag, dl);
        ParamTable t;
        ParamOffsets o;
        params_build(&t, &o, &c);
        // Per tensor, relative to the larger of its own scale and 1e-2 of the whole buffer's:
        // some gradients are exactly zero in exact arithmetic (the key bias: softmax ignores
        // a shift shared by all keys), and there both devices hold only rounding noise.
        double gmax = 0, pmax = 0;
        for (size_t i = 0; i < t.total; i++) {
            gmax = fmax(gmax, fabs(rc_.grads[i]));
            pmax = fmax(pmax, fabs(rc_.params[i]));
        }
        int bad_g = 0, bad_p = 0;
        for (int i = 0; i < t.count; i++) {
            const ParamEntry *e = &t.entries[i];
            double sg = 0, sp = 0, mg = 0, mp = 0;
            for (size_t j = e->offset; j < e->offset + e->size; j++) {
                sg = fmax(sg, fabs(rc_.grads[j]));
                sp = fmax(sp, fabs(rc_.params[j]));
                mg = fmax(mg, fabs(rg.grads[j] - rc_.grads[j]));
                mp = fmax(mp, fabs(rg.params[j] - rc_.params[j]));
                if (!(rg.grads[j] == rg.grads[j]) || !(rg.params[j] == rg.params[j])) mg = mp = INFINITY;  // NaN
            }
            double dg = mg / fmax(sg, 1e-2 * gmax), dp = mp / fmax(sp, 1e-2 * pmax);
            if (!(dg <= 1e-4) && bad_g++ < 5) fprintf(stderr, "  gradient %s: rel diff %.3g\n", e->name, dg);
            if (!(dp <= 1e-5) && bad_p++ < 5) fprintf(stderr, "  parameter %s: rel diff %.3g\n", e->name, dp);
        }
        CHECK(bad_g == 0, "whole step (%s): %d gradient tensors differ by more than 1e-4", tag, bad_g);
        CHECK(bad_p == 0, "whole step (%s): %d updated parameter tensors differ by more than 1e-5", tag, bad_p);
        params_free(&t, &o);
        free(init), free(rc_.grads), free(rc_.params), free(rg.grads), free(rg.params);
    }
}

// 50 updates (batch 8, no accumulation) on the same data: the mean loss of every step.
static int train_run(Backend *be, const ViTConfig *c, const float *init, int steps, float *losses) {
    enum { B = 8 };
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    OptimConfig oc;
    optim_config_default(&oc, "adamw");
    float *mom1 = be->alloc(be, n * sizeof(float)), *mom2 = be->alloc(be, n * sizeof(float));
    be->zero(be, mom1, n * sizeof(float));
    be->zero(be, mom2, n * sizeof(float));
    uint8_t *img = malloc(B * per);
    int lab[B], rc = VIT_OK;
    for (int s = 0; s < steps && rc == VIT_OK; s++) {
        make_batch(img, lab, B, c, (uint32_t)(100 + s % 10));
        be->zero(be, m.grads, n * sizeof(float));
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 5, (uint32_t)s);
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 5, (uint32_t)s);
        double sum = 0, norm;
        for (int b = 0; b < B; b++) sum += m.host_losses[b];
        losses[s] = (float)(sum / B);
        if (rc == VIT_OK) rc = optim_step(be, &m.table, m.params, m.grads, mom1, mom2, &oc, 1e-3f, s + 1, &norm);
    }
    free(img);
    be->release(be, mom1), be->release(be, mom2);
    vit_destroy(&m);
    return rc;
}

static void test_training_run(void) {
    enum { STEPS = 50 };
    ViTConfig c = small_config(0, 0);
    float *init = initial_params(&c);
    float lc[STEPS], lg[STEPS], lb[STEPS];
    int e1 = train_run(cpu, &c, init, STEPS, lc);
    CHECK(e1 == 0, "50-step run on the CPU: %s", e1 ? vit_error() : "");
    int e2 = train_run(gpu, &c, init, STEPS, lg);
    CHECK(e2 == 0, "50-step run on the GPU (fp32): %s", e2 ? vit_error() : "");
    int e3 = train_run(gpu_bf16, &c, init, STEPS, lb);
    CHECK(e3 == 0, "50-step run on the GPU (bf16): %s", e3 ? vit_error() : "");
    double worst32 = 0, worst16 = 0;
    int at32 = 0, at16 = 0;
    for (int s = 0; s < STEPS; s++) {
        double scale = fabs(lc[s]) > 1 ? fabs(lc[s]) : 1;
        double d32 = fabs(lg[s] - lc[s]) / scale, d16 = fabs(lb[s] - lc[s]) / scale;
        if (!(d32 <= worst32)) worst32 = d32, at32 = s;
        if (!(d16 <= worst16)) worst16 = d16, at16 = s;
    }
    printf("50-step run: loss %.4f -> %.4f (cpu), %.4f -> %.4f (gpu fp32), %.4f -> %.4f (gpu bf16); worst "
           "differences %.2g (fp32, step %d), %.2g (bf16, step %d)\n",
           lc[0], lc[STEPS - 1], lg[0], lg[STEPS - 1], lb[0], lb[STEPS - 1], worst32, at32, worst16, at16);
    CHECK(worst32 <= 1e-3, "50-step run: fp32 GPU loss at step %d is %.6f, CPU %.6f", at32, lg[at32], lc[at32]);
    CHECK(worst16 <= 0.1, "50-step run: bf16 GPU loss at step %d is %.6f, CPU %.6f", at16, lb[at16], lc[at16]);
    free(init);
}

// ---- errors -----------------------------------------------------------------------------------
static void test_errors(void) {
    // An impossible allocation fails with a message naming the size; the backend stays usable.
    void *p = gpu->alloc(gpu, (size_t)1 << 52);
    CHECK(p == NULL && strstr(vit_error(), "MiB"), "huge alloc: %p, message '%s'", p, vit_error());
    float one = 3.0f, back = 0;
    float *d = gpu->alloc(gpu, sizeof(float));
    gpu->upload(gpu, d, &one, sizeof one);
    gpu->download(gpu, &back, d, sizeof back);
    CHECK(d && back == 3.0f, "backend unusable after a failed allocation (read back %g)", back);
    gpu->release(gpu, d);
    // An unsupported head dimension is refused without breaking the backend.
    int rc = gpu->attention_forward(gpu, NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 1, 129);
    CHECK(rc != 0 && strstr(vit_error(), "head dimension"), "hd 129: rc %d, '%s'", rc, vit_error());
    CHECK(!strcmp(gpu->name, "cuda") || getenv("VIT_TEST_CUDA_ON_CPU"), "backend name '%s'", gpu->name);
}

#ifdef VIT_NCCL
// ---- NCCL with one rank -----------------------------------------------------------------------
// No MPI here: the communicator has this process alone, so a sum is the identity. A bucket
// all-reduced in place is unchanged, and the bucketed sync driven by a backward pass (small
// buckets, so many start while the pass runs) leaves every gradient bit-identical to a pass
// without it. Ordering between the streams only shows with several ranks (tests/cli_gpu_dist.sh).
static float *randn(size_t n, uint32_t stream, float s) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * rng_normal(7, stream, i));
    return x;
}

// A device copy of n host floats (n + pad allocated, the data at offset pad: misaligned on purpose).
static float *up(Backend *be, const float *h, size_t n, size_t pad) {
    float *d = be->alloc(be, (n + pad) * sizeof(float));
    if (!d) {
        fprintf(stderr, "alloc failed: %s\n", vit_error());
        exit(1);
    }
    be->upload(be, d + pad, h, n * sizeof(float));
    return d + pad;
}

static float *down(Backend *be, const float *d, size_t n) {
    float *h = malloc(n * sizeof(float) + 1);
    be->download(be, h, d, n * sizeof(float));
    return h;
}

static void on_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

static void test_nccl(void) {
    NcclSync *s = nccl_sync_create(gpu);
    CHECK(s != NULL, "nccl_sync_create with one rank: %s", s ? "" : vit_error());
    if (!s) return;
    GradTransport t = nccl_sync_transport(s);
    size_t n = ((size_t)1 << 20) + 3;
    float *h = randn(n, 40, 1.0f), *d = up(gpu, h, n, 1);
    t.start(t.ctx, d, n);
    int rc = t.finish(t.ctx);
    float *back = down(gpu, d, n);
    CHECK(rc == 0 && !memcmp(back, h, n * sizeof(float)), "one-rank in-place all-reduce of %zu floats: rc %d %s", n,
          rc, rc ? vit_error() : "(values changed)");
    free(back);
    int counts[1] = {(int)n}, displs[1] = {0};  // --zero 1's parameter all-gather: one rank owns it all
    rc = t.allgather(t.ctx, d, counts, displs);
    back = down(gpu, d, n);
    CHECK(rc == 0 && !memcmp(back, h, n * sizeof(float)), "one-rank parameter all-gather: rc %d %s", rc,
          rc ? vit_error() : "(values changed)");
    free(h), free(back);
    gpu->release(gpu, d - 1);

    enum { B = 8 };
    ViTConfig c = small_config(0, 0);
    float *init = initial_params(&c);
    ViT m;
    if (vit_create(&m, &c, gpu, B, 1)) {
        CHECK(0, "model on the GPU: %s", vit_error());
        nccl_sync_destroy(s);
        free(init);
        return;
    }
    size_t np = m.table.total, per = (size_t)c.image * c.image * c.channels;
    uint8_t *img = malloc(B * per);
    int lab[B];
    make_batch(img, lab, B, &c, 0);
    gpu->upload(gpu, m.params, init, np * sizeof(float));
    float *grads[2];
    GradSync *g = gradsync_create_with(m.grads, np, 4099, &t);
    for (int with = 0; with < 2; with++) {
        gpu->zero(gpu, m.grads, np * sizeof(float));
        gradsync_begin(g);
        m.grad_ready = with ? on_ready : NULL;
        m.grad_ready_ctx = g;
        rc = vit_forward(&m, img, lab, B, 1, 0.1f, 99, 0);
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 99, 0);
        if (rc == VIT_OK && with) rc = gradsync_finish(g);
        CHECK(rc == VIT_OK, "backward pass %s the NCCL buckets: %s", with ? "with" : "without", rc ? vit_error() : "");
        grads[with] = down(gpu, m.grads, np);
    }
    CHECK(!memcmp(grads[0], grads[1], np * sizeof(float)), "one-rank NCCL buckets (%zu of them) changed the gradients",
          gradsync_buckets(g));
    double w = gradsync_wait_seconds(g);
    CHECK(w >= 0 && w < 10, "NCCL wait seconds %g", w);
    printf("nccl (one rank): %zu buckets over %zu gradients unchanged; exposed wait %.3f ms\n", gradsync_buckets(g), np,
           1e3 * w);
    m.grad_ready = NULL;
    gradsync_destroy(g);
    nccl_sync_destroy(s);
    free(grads[0]), free(grads[1]), free(img), free(init);
    vit_destroy(&m);
}
#endif

int main(void) {
    int on_cpu = getenv("VIT_TEST_CUDA_ON_CPU") && !strcmp(getenv("VIT_TEST_CUDA_ON_CPU"), "1");
    if (!on_cpu && backend_cuda_device_count() == 0) {
        printf("test_cuda: skipped (no CUDA device)\n");
        return 0;
    }
    cpu = backend_cpu_create(0);
    if (on_cpu) {
        gpu = gpu_bf16 = backend_cpu_create(0);
    } else {
        gpu = backend_cuda_create(0, CUDA_FP32);
        gpu_bf16 = backend_cuda_create(0, CUDA_BF16);
    }
    if (!cpu || !gpu || !gpu_bf16) {
        CHECK(0, "creating the backends: %s", vit_error());
        return check_report("test_cuda");
    }
    test_whole_step();
    test_training_run();
    if (!on_cpu) test_errors();
#ifdef VIT_NCCL
    if (!on_cpu) test_nccl();
#endif
    if (!on_cpu) {
        gpu->destroy(gpu);
        gpu_bf16->destroy(gpu_bf16);
    } else {
        gpu->destroy(gpu);
    }
    cpu->destroy(cpu);
    return check_report("test_cuda");
}
