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
// The opt-in paths (docs/gpu.md; environment variables read at backend creation, set here per
// backend): every VIT_CUDA_ATTENTION choice (simt, wmma, mma, cudnn) against the CPU's fp32
// attention, normwise within 2e-2 (the bf16 bound of test_backend_ops), each checked to have
// run the kernels it names where they apply, and the 50-step run with mma and cudnn too; the
// VIT_CUDA_EPILOGUES=1 products against the same products with the switch off (the plain ops)
// on the same device, 1e-5 normwise, except bf16 bias gradients 1e-2 (they sum bf16-rounded
// terms), with at least one product fused in bf16; and inference logits with the fused
// gemm_bias_gelu against the CPU's, 1e-4, for erf and tanh GELU. A build without cuDNN
// prints a note instead of the cudnn cases. VIT_CUDA_BF16_ACTS=1 (bf16 activations): one
// training step against the CPU backend's bf16-activation path and the GPU's default bf16 path,
// logits and losses 2e-2, gradients 5e-2 normwise.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda_backend.h"
#include "backend/cuda_graph.h"
#include "check.h"
#include "model/vit.h"
#include "train/update.h"
#include "util/rng.h"
#include "util/status.h"
#ifdef VIT_NCCL
#include "dist/nccl_sync.h"
#endif

static Backend *cpu, *gpu, *gpu_bf16;
static int on_cpu;  // VIT_TEST_CUDA_ON_CPU=1: CPU backends stand in for the GPU's

// A CUDA backend created with VIT_CUDA_ATTENTION / VIT_CUDA_EPILOGUES set to att / epi (NULL:
// unset), the caller's environment restored afterwards. NULL with vit_error() on failure.
static Backend *create_with(const char *att, const char *epi, CudaPrecision prec) {
    const char *names[2] = {"VIT_CUDA_ATTENTION", "VIT_CUDA_EPILOGUES"}, *want[2] = {att, epi};
    char *saved[2];
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(names[i]);
        saved[i] = v ? strdup(v) : NULL;
        if (want[i]) setenv(names[i], want[i], 1);
        else unsetenv(names[i]);
    }
    Backend *be = backend_cuda_create(0, prec);
    for (int i = 0; i < 2; i++) {
        if (saved[i]) setenv(names[i], saved[i], 1);
        else unsetenv(names[i]);
        free(saved[i]);
    }
    return be;
}

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
    // The same bf16 run with the opt-in attention kernels (cudnn: cuDNN's forward, and its
    // backward where cuDNN has an engine, else this backend's kernels from cuDNN's statistics).
    static const char *paths[] = {"mma", "cudnn"};
    for (int p = 0; p < 2 && !on_cpu; p++) {
        Backend *be = create_with(paths[p], NULL, CUDA_BF16);
        if (!be && strstr(vit_error(), "no cuDNN")) {
            printf("50-step run with VIT_CUDA_ATTENTION=%s: skipped (%s)\n", paths[p], vit_error());
            continue;
        }
        CHECK(be != NULL, "backend with VIT_CUDA_ATTENTION=%s: %s", paths[p], be ? "" : vit_error());
        if (!be) continue;
        int e = train_run(be, &c, init, STEPS, lb);
        CHECK(e == 0, "50-step run with VIT_CUDA_ATTENTION=%s: %s", paths[p], e ? vit_error() : "");
        double worst = 0;
        int at = 0;
        for (int s = 0; s < STEPS; s++) {
            double d = fabs(lb[s] - lc[s]) / (fabs(lc[s]) > 1 ? fabs(lc[s]) : 1);
            if (!(d <= worst)) worst = d, at = s;
        }
        printf("50-step run, bf16, VIT_CUDA_ATTENTION=%s (last pass: %s): loss %.4f -> %.4f; worst difference %.2g "
               "(step %d)\n", paths[p], backend_cuda_attention_last(be), lb[0], lb[STEPS - 1], worst, at);
        CHECK(worst <= 0.1, "50-step run with VIT_CUDA_ATTENTION=%s: loss at step %d is %.6f, CPU %.6f", paths[p], at,
              lb[at], lc[at]);
        be->destroy(be);
    }
    free(init);
}

// ---- opt-in attention kernels ------------------------------------------------------------------
static double attention_run(Backend *be, const int *sh, float *const *in, float *const *ref, const char **ran_fwd,
                            const char **ran_bwd, double *err) {
    int B = sh[0], T = sh[1], H = sh[2], hd = sh[3];
    size_t n = (size_t)B * T * H * hd, ns = be->attention_state_floats(be, B, T, H, hd);
    size_t nw = be->attention_scratch_floats(be, B, T, H, hd);
    // Outputs start as NaN: an element never written fails the comparison.
    float *nan = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) nan[i] = NAN;
    float *d[4], *o = up(be, nan, n, 0), *g[3];
    for (int i = 0; i < 4; i++) d[i] = up(be, in[i], n, 0);
    for (int i = 0; i < 3; i++) g[i] = up(be, nan, n, 0);
    free(nan);
    float *st = be->alloc(be, (ns + 1) * sizeof(float)), *sc = be->alloc(be, (nw + 1) * sizeof(float));
    int rc = be->attention_forward(be, o, st, sc, d[0], d[1], d[2], B, T, H, hd);
    *ran_fwd = backend_cuda_attention_last(be);
    if (rc == 0) rc = be->attention_backward(be, g[0], g[1], g[2], d[3], o, st, sc, d[0], d[1], d[2], B, T, H, hd);
    *ran_bwd = backend_cuda_attention_last(be);
    float *res[4] = {down(be, o, n), down(be, g[0], n), down(be, g[1], n), down(be, g[2], n)};
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        err[i] = rc ? INFINITY : check_rel_diff(res[i], ref[i], n);
        if (!(err[i] <= worst)) worst = err[i];
        free(res[i]);
    }
    if (rc) fprintf(stderr, "  attention: %s\n", vit_error());
    for (int i = 0; i < 4; i++) be->release(be, d[i]);
    for (int i = 0; i < 3; i++) be->release(be, g[i]);
    be->release(be, o), be->release(be, st), be->release(be, sc);
    return worst;
}

// Every VIT_CUDA_ATTENTION path against the CPU's fp32 attention, and that it ran what it names.
static void test_attention_paths(void) {
    static const char *paths[] = {"simt", "wmma", "mma", "cudnn"};
    static const int shapes[][4] = {{2, 197, 3, 64}, {2, 50, 4, 32}, {1, 65, 2, 128}, {2, 17, 2, 40}, {1, 9, 2, 20}};
    Backend *bes[4];
    for (int p = 0; p < 4; p++) {
        bes[p] = create_with(paths[p], NULL, CUDA_BF16);
        if (!bes[p] && p == 3 && strstr(vit_error(), "no cuDNN")) printf("attention cudnn: skipped (%s)\n", vit_error());
        else CHECK(bes[p] != NULL, "backend with VIT_CUDA_ATTENTION=%s: %s", paths[p], bes[p] ? "" : vit_error());
    }
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int *sh = shapes[c];
        int B = sh[0], T = sh[1], H = sh[2], hd = sh[3];
        size_t n = (size_t)B * T * H * hd;
        float *in[4], *ref[4];
        for (int i = 0; i < 4; i++) in[i] = randn(n, 300 + 4 * (uint32_t)c + i, 1.0f);
        // The reference: the CPU backend in fp32 (host pointers).
        float *o = malloc(n * sizeof(float)), *g[3];
        for (int i = 0; i < 3; i++) g[i] = malloc(n * sizeof(float));
        float *st = malloc((cpu->attention_state_floats(cpu, B, T, H, hd) + 1) * sizeof(float));
        float *sc = malloc((cpu->attention_scratch_floats(cpu, B, T, H, hd) + 1) * sizeof(float));
        int rc = cpu->attention_forward(cpu, o, st, sc, in[0], in[1], in[2], B, T, H, hd);
        if (rc == 0) rc = cpu->attention_backward(cpu, g[0], g[1], g[2], in[3], o, st, sc, in[0], in[1], in[2], B, T, H, hd);
        CHECK(rc == 0, "CPU attention B %d T %d H %d hd %d: %s", B, T, H, hd, rc ? vit_error() : "");
        ref[0] = o, ref[1] = g[0], ref[2] = g[1], ref[3] = g[2];
        for (int p = 0; p < 4 && rc == 0; p++) {
            if (!bes[p]) continue;
            const char *f = "", *b = "";
            double err[4], worst = attention_run(bes[p], sh, in, ref, &f, &b, err);
            printf("attention %-5s B %d T %3d H %d hd %3d: ran %s / %s; out %.2g dq %.2g dk %.2g dv %.2g\n", paths[p], B,
                   T, H, hd, f, b, err[0], err[1], err[2], err[3]);
            CHECK(worst <= 2e-2, "attention VIT_CUDA_ATTENTION=%s B %d T %d H %d hd %d: rel diff %.3g from the CPU",
                  paths[p], B, T, H, hd, worst);
            // What each choice must run where it applies (else the default kernels take over).
            const char *want = p == 0                                ? "simt"
                               : p == 3 && hd % 8 == 0               ? "cudnn"
                               : p == 2 && (hd == 32 || hd == 64)    ? "mma"
                               : hd == 32 || hd == 64 || hd == 128   ? "wmma"
                                                                     : "simt";
            CHECK(!strcmp(f, want), "attention VIT_CUDA_ATTENTION=%s hd %d: the forward pass ran %s, not %s", paths[p],
                  hd, f, want);
        }
        for (int i = 0; i < 4; i++) free(in[i]), free(ref[i]);
        free(st), free(sc);
    }
    for (int p = 0; p < 4; p++)
        if (bes[p]) bes[p]->destroy(bes[p]);
}

// ---- opt-in cuBLASLt epilogue products ------------------------------------------------------------
// One product on the fused and the plain backend from the same inputs; returns the worst
// normwise difference of its outputs (outs[i] of sizes ns[i]), bias gradients (is_bias) apart.
typedef struct {
    int rows, in, out;
} EShape;

static void epi_compare(const char *what, Backend *fb, Backend *pb, float *const *fo, float *const *po, const size_t *ns,
                        const int *is_bias, int nout, int bf16, int rc1, int rc2) {
    CHECK(rc1 == 0 && rc2 == 0, "%s: rc %d / %d (%s)", what, rc1, rc2, rc1 || rc2 ? vit_error() : "");
    for (int i = 0; i < nout; i++) {
        float *a = down(fb, fo[i], ns[i]), *b = down(pb, po[i], ns[i]);
        double d = check_rel_diff(a, b, ns[i]), tol = is_bias[i] && bf16 ? 1e-2 : 1e-5;
        CHECK(d <= tol, "%s output %d: fused vs plain rel diff %.3g (bound %g)", what, i, d, tol);
        free(a), free(b);
    }
}

static void epi_shape(Backend *fb, Backend *pb, const EShape *e, int tanh_approx, int bf16) {
    int R = e->rows, I = e->in, O = e->out;
    size_t nx = (size_t)R * I, nw = (size_t)I * O, ny = (size_t)R * O;
    float *x = randn(nx, 400, 1.0f), *w = randn(nw, 401, 0.1f), *dy = randn(ny, 402, 1.0f);
    float *bo = randn(O, 403, 0.5f), *bi = randn(I, 404, 0.5f), *pre = randn(nx, 405, 1.0f);
    Backend *be[2] = {fb, pb};
    float *dW[2], *db[2], *pr[2], *y[2], *dx[2], *dbi[2];
    int rc[3][2];
    char what[128];
    for (int k = 0; k < 2; k++) {
        float *dX = up(be[k], x, nx, 0), *dWt = up(be[k], w, nw, 0), *dDy = up(be[k], dy, ny, 0);
        float *dBo = up(be[k], bo, O, 0), *dPre = up(be[k], pre, nx, 0);
        dW[k] = up(be[k], w, nw, 0), db[k] = up(be[k], bo, O, 0);  // += targets start non-zero
        rc[0][k] = backend_cuda_gemm_wgrad_bgrad(be[k], R, I, O, dX, dDy, dW[k], db[k]);
        pr[k] = up(be[k], dy, ny, 0), y[k] = up(be[k], dy, ny, 0);
        rc[1][k] = backend_cuda_gemm_bias_gelu_aux(be[k], R, I, O, dX, dWt, dBo, pr[k], y[k], tanh_approx);
        dx[k] = up(be[k], x, nx, 0), dbi[k] = up(be[k], bi, I, 0);
        rc[2][k] = backend_cuda_gemm_dgelu_bgrad(be[k], R, I, O, dDy, dWt, dPre, dx[k], dbi[k], tanh_approx);
    }
    const char *prec = bf16 ? "bf16" : "fp32", *g = tanh_approx ? "tanh" : "erf";
    size_t n0[2] = {nw, (size_t)O}, n1[2] = {ny, ny}, n2[2] = {nx, (size_t)I};
    int b0[2] = {0, 1}, b1[2] = {0, 0}, b2[2] = {0, 1};
    snprintf(what, sizeof what, "wgrad_bgrad %s %dx%dx%d", prec, R, I, O);
    epi_compare(what, fb, pb, (float *[]){dW[0], db[0]}, (float *[]){dW[1], db[1]}, n0, b0, 2, bf16, rc[0][0], rc[0][1]);
    snprintf(what, sizeof what, "bias_gelu_aux %s %s %dx%dx%d", prec, g, R, I, O);
    epi_compare(what, fb, pb, (float *[]){pr[0], y[0]}, (float *[]){pr[1], y[1]}, n1, b1, 2, bf16, rc[1][0], rc[1][1]);
    snprintf(what, sizeof what, "dgelu_bgrad %s %s %dx%dx%d", prec, g, R, I, O);
    epi_compare(what, fb, pb, (float *[]){dx[0], dbi[0]}, (float *[]){dx[1], dbi[1]}, n2, b2, 2, bf16, rc[2][0],
                rc[2][1]);
    free(x), free(w), free(dy), free(bo), free(bi), free(pre);
    // Device buffers go with the backends (arena).
}

// Inference logits through the model with the fused gemm_bias_gelu against the CPU's.
static void epi_inference(Backend *fb, int gelu_tanh) {
    enum { B = 4 };
    ViTConfig c = small_config(0, gelu_tanh);
    float *init = initial_params(&c);
    float logits[2][B * 10];
    Backend *be[2] = {cpu, fb};
    uint8_t *img = malloc((size_t)B * c.image * c.image * c.channels);
    int lab[B];
    make_batch(img, lab, B, &c, 7);
    for (int k = 0; k < 2; k++) {
        ViT m;
        int rc = vit_create(&m, &c, be[k], B, 0);
        if (rc == VIT_OK) {
            be[k]->upload(be[k], m.params, init, m.table.total * sizeof(float));
            rc = vit_forward(&m, img, NULL, B, 0, 0.0f, 0, 0);
            if (rc == VIT_OK) memcpy(logits[k], m.host_logits, sizeof logits[k]);
            vit_destroy(&m);
        }
        CHECK(rc == VIT_OK, "inference on %s: %s", k ? "the GPU with epilogues" : "the CPU", rc ? vit_error() : "");
    }
    double d = check_rel_diff(logits[1], logits[0], B * 10);
    CHECK(d <= 1e-4, "inference logits with the fused gemm_bias_gelu (%s GELU): rel diff %.3g from the CPU",
          gelu_tanh ? "tanh" : "erf", d);
    free(img), free(init);
}

static void test_epilogues(void) {
    static const EShape shapes[] = {{394, 192, 768}, {37, 29, 50}, {197, 64, 256}};
    for (int bf16 = 0; bf16 < 2; bf16++) {
        CudaPrecision prec = bf16 ? CUDA_BF16 : CUDA_FP32;
        Backend *fb = create_with(NULL, "1", prec), *pb = create_with(NULL, "0", prec);
        CHECK(fb && pb, "backends with VIT_CUDA_EPILOGUES=1 / 0: %s", fb && pb ? "" : vit_error());
        if (!fb || !pb) {
            if (fb) fb->destroy(fb);
            if (pb) pb->destroy(pb);
            continue;
        }
        CHECK(fb->gemm_bias_gelu != NULL && pb->gemm_bias_gelu == NULL,
              "gemm_bias_gelu is installed with VIT_CUDA_EPILOGUES=1 only");
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
            for (int th = 0; th < 2; th++) epi_shape(fb, pb, &shapes[c], th, bf16);
        if (!bf16)
            for (int th = 0; th < 2; th++) epi_inference(fb, th);
        long fused, unfused, pf, pu;
        backend_cuda_epilogue_counts(fb, &fused, &unfused);
        backend_cuda_epilogue_counts(pb, &pf, &pu);
        printf("epilogues (%s): %ld products fused, %ld as plain ops (switch off: %ld fused)\n", bf16 ? "bf16" : "fp32",
               fused, unfused, pf);
        CHECK(pf == 0, "VIT_CUDA_EPILOGUES=0 fused %ld products", pf);
        if (bf16) CHECK(fused > 0, "VIT_CUDA_EPILOGUES=1: no product ran fused in bf16 (cuBLASLt offered no algorithm)");
        fb->destroy(fb);
        pb->destroy(pb);
    }
}

// ---- opt-in bf16 activations (VIT_CUDA_BF16_ACTS=1) ---------------------------------------------
// One training forward + backward (batch 8, dropout on) of a model asked for VIT_STORE_BF16:
// logits, losses and gradients to the host (freed by the caller); *acts: it took the
// bf16-activation path.
typedef struct {
    float *logits, *losses, *grads;
    size_t nparams;
    int acts;
} ActsResult;

static int acts_step(Backend *be, const ViTConfig *c, const float *init, ActsResult *r) {
    enum { B = 8 };
    ViT m;
    if (vit_create_ex(&m, c, be, B, 1, VIT_STORE_BF16)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    be->zero(be, m.grads, n * sizeof(float));
    uint8_t *img = malloc(B * per);
    int lab[B];
    make_batch(img, lab, B, c, 3);
    int rc = vit_forward(&m, img, lab, B, 1, 0.1f, 5, 1);
    if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 5, 1);
    r->acts = m.bf16_acts, r->nparams = n;
    r->logits = malloc((size_t)B * c->classes * sizeof(float));
    r->losses = malloc(B * sizeof(float));
    memcpy(r->logits, m.host_logits, (size_t)B * c->classes * sizeof(float));
    memcpy(r->losses, m.host_losses, B * sizeof(float));
    r->grads = down(be, m.grads, n);
    free(img);
    vit_destroy(&m);
    return rc;
}

// The GPU's bf16-activation step against the CPU backend's (bf16 products, bf16-activation
// ops: tests/test_bf16_acts.c checks that path against fp32) and against the GPU's default
// bf16 path (fp32 activations, operands rounded inside each product): logits and losses 2e-2,
// gradients 5e-2 normwise (the bf16 attention kernels round otherwise than the CPU's), and the
// switch installs the ops only with bf16 products.
static void test_bf16_acts(void) {
    setenv("VIT_CUDA_BF16_ACTS", "1", 1);
    Backend *acts = backend_cuda_create(0, CUDA_BF16), *fp32 = backend_cuda_create(0, CUDA_FP32);
    unsetenv("VIT_CUDA_BF16_ACTS");
    CHECK(acts && fp32, "backends with VIT_CUDA_BF16_ACTS=1: %s", acts && fp32 ? "" : vit_error());
    if (!acts || !fp32) {
        if (acts) acts->destroy(acts);
        if (fp32) fp32->destroy(fp32);
        return;
    }
    CHECK(acts->gemm_bf16 && acts->attention_forward_bf16 && !fp32->gemm_bf16 && !gpu_bf16->gemm_bf16,
          "the bf16-activation ops are installed with VIT_CUDA_BF16_ACTS=1 and bf16 products only");
    fp32->destroy(fp32);
    ViTConfig c = small_config(0, 0);
    float *init = initial_params(&c);
    backend_cpu_set_bf16(cpu, 1);
    backend_cpu_set_bf16_acts(cpu, 1);
    ActsResult rg, rc_, rd;
    int ok = acts_step(acts, &c, init, &rg) == VIT_OK && acts_step(cpu, &c, init, &rc_) == VIT_OK &&
             acts_step(gpu_bf16, &c, init, &rd) == VIT_OK;
    backend_cpu_set_bf16_acts(cpu, 0);
    backend_cpu_set_bf16(cpu, 0);
    CHECK(ok, "bf16-activation steps: %s", ok ? "" : vit_error());
    if (ok) {
        CHECK(rg.acts && rc_.acts && !rd.acts, "the bf16-activation path ran where the ops exist (gpu %d, cpu %d, "
              "default gpu %d)", rg.acts, rc_.acts, rd.acts);
        const ActsResult *other[2] = {&rc_, &rd};
        const char *names[2] = {"the CPU's bf16 activations", "the GPU's default bf16 path"};
        for (int i = 0; i < 2; i++) {
            double dl = check_rel_diff(rg.logits, other[i]->logits, 8 * (size_t)c.classes);
            double ds = check_rel_diff(rg.losses, other[i]->losses, 8);
            double dg = check_rel_diff(rg.grads, other[i]->grads, rg.nparams);
            printf("bf16 activations (gpu) against %s: logits %.2g, losses %.2g, gradients %.2g\n", names[i], dl, ds,
                   dg);
            CHECK(dl <= 2e-2 && ds <= 2e-2 && dg <= 5e-2, "bf16 activations against %s: logits %.3g, losses %.3g "
                  "(2e-2), gradients %.3g (5e-2)", names[i], dl, ds, dg);
        }
    }
    ActsResult *all[3] = {&rg, &rc_, &rd};
    for (int i = 0; i < 3 && ok; i++) free(all[i]->logits), free(all[i]->losses), free(all[i]->grads);
    free(init);
    acts->destroy(acts);
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
    // Nonsense in the opt-in switches is refused at creation with a message naming the variable.
    Backend *bad = create_with("bogus", NULL, CUDA_BF16);
    CHECK(!bad && strstr(vit_error(), "VIT_CUDA_ATTENTION"), "VIT_CUDA_ATTENTION=bogus: '%s'", vit_error());
    Backend *bad2 = create_with(NULL, "yes", CUDA_BF16);
    CHECK(!bad2 && strstr(vit_error(), "VIT_CUDA_EPILOGUES"), "VIT_CUDA_EPILOGUES=yes: '%s'", vit_error());
    if (bad) bad->destroy(bad);
    if (bad2) bad2->destroy(bad2);
}

#ifdef VIT_NCCL
// ---- NCCL with one rank -----------------------------------------------------------------------
// No MPI here: the communicator has this process alone, so a sum is the identity. A bucket
// all-reduced in place is unchanged, and the bucketed sync driven by a backward pass (small
// buckets, so many start while the pass runs) leaves every gradient bit-identical to a pass
// without it. Ordering between the streams only shows with several ranks (tests/cli_gpu_dist.sh).
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

// ---- one step as a CUDA graph (VIT_CUDA_GRAPH=1) ----------------------------------------------
// Six adamw updates (batch 8, dropout off, a new learning rate every step) of the whole step --
// forward with the metric sums on the device, backward, grad_norm_clip and
// optimizer_update_scalars -- run eagerly, and run with each input buffer's step captured on
// its second use and replayed after (the host writes lr and the bias corrections with
// scalars_write before each launch): parameters, norms and metric sums bit for bit the eager
// run's after every step. Then a capture that waits for the host (a download) must be refused
// with a message, on a backend of its own (the refused wait is latched there).
enum { GRAPH_STEPS = 6 };
typedef struct {
    double norm[GRAPH_STEPS], loss[GRAPH_STEPS];
    float *params[GRAPH_STEPS];
    int replayed;
} GraphRun;

static void no_wait(Backend *be) { (void)be; }

static int graph_steps(Backend *be, const ViTConfig *c, const float *init, int use_graph, GraphRun *r) {
    enum { B = 8 };
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    size_t n = m.table.total, per = (size_t)c->image * c->image * c->channels;
    be->upload(be, m.params, init, n * sizeof(float));
    OptimConfig oc;
    optim_config_default(&oc, "adamw");
    float *m1 = be->alloc(be, n * sizeof(float)), *m2 = be->alloc(be, n * sizeof(float));
    double *sc = be->alloc(be, (STEP_SCALARS + METRICS) * sizeof(double));
    be->zero(be, m1, n * sizeof(float)), be->zero(be, m2, n * sizeof(float));
    const OptimSegment seg = {0, 0, n, 1, 1.0f};
    const OptimStep st = {oc.kind, 0, oc.momentum, oc.beta1, oc.beta2, oc.rho, oc.epsilon, oc.weight_decay, 0, 1};
    CudaGraph *g[2] = {NULL, NULL};
    if (use_graph) g[0] = backend_cuda_graph_create(be), g[1] = backend_cuda_graph_create(be);
    uint8_t *img = malloc(B * per);
    int lab[B], rc = use_graph && (!g[0] || !g[1]) ? VIT_ERR : VIT_OK;
    m.metrics = sc + STEP_SCALARS;
    for (int s = 0; s < GRAPH_STEPS && rc == VIT_OK; s++) {
        make_batch(img, lab, B, c, (uint32_t)(200 + s));
        int k = m.stage_slot;
        rc = vit_stage(&m, img, lab, B);
        be->zero(be, m.grads, n * sizeof(float));
        be->zero(be, sc + STEP_SCALARS, METRICS * sizeof(double));
        const int t = s + 1;
        const double known[4] = {0, 1e-3 * (1 + s), 1.0 - pow(oc.beta1, t), sqrt(1.0 - pow(oc.beta2, t))};
        be->scalars_write(be, sc + STEP_SKIP, known, 4);
        int capture = use_graph && s >= 2 && !backend_cuda_graph_ready(g[k]);
        if (use_graph && s >= 2) be->wait_uploads(be);
        Backend view = *be;  // inside a capture the upload wait is the one above
        view.wait_uploads = no_wait;
        int began = capture && (rc = backend_cuda_graph_begin(g[k])) == VIT_OK;
        if (began) m.be = &view;
        if (rc == VIT_OK && (!use_graph || s < 2 || capture)) {
            rc = vit_forward(&m, NULL, NULL, B, 1, 0.1f, 5, (uint32_t)s);
            if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 5, (uint32_t)s);
            m.be->grad_norm_clip(m.be, sc, m.grads, n, oc.clip_norm);
            m.be->optimizer_update_scalars(m.be, m.params, m.grads, m1, m2, &seg, 1, &st, sc);
        } else if (rc == VIT_OK) {  // a replay: vit_forward's bookkeeping by hand
            m.stage_slot = 1 - k, m.staged_B = 0, m.images = m.image_buf[k], m.labels = m.label_buf[k];
        }
        m.be = be;
        if (began) {  // always closed, so the stream leaves capture mode
            int end = backend_cuda_graph_end(g[k]);
            if (rc == VIT_OK) rc = end;
        }
        if (use_graph && s >= 2 && rc == VIT_OK) rc = backend_cuda_graph_launch(g[k]), r->replayed++;
        double h[STEP_SCALARS + METRICS];
        be->download(be, h, sc, sizeof h);
        r->norm[s] = h[STEP_NORM], r->loss[s] = h[STEP_SCALARS + METRIC_LOSS];
        r->params[s] = down(be, m.params, n);
    }
    if (rc) fprintf(stderr, "graph steps (%s): %s\n", use_graph ? "graph" : "eager", vit_error());
    for (int i = 0; i < 2; i++)
        if (g[i]) backend_cuda_graph_destroy(g[i]);
    free(img);
    be->release(be, m1), be->release(be, m2), be->release(be, sc);
    m.metrics = NULL;
    vit_destroy(&m);
    return rc;
}

static void test_graph(void) {
    Backend *be = backend_cuda_create(0, CUDA_BF16);
    CHECK(be != NULL, "graph: creating a backend: %s", be ? "" : vit_error());
    if (!be) return;
    for (int variant = 0; variant < 2; variant++) {
        ViTConfig c = small_config(variant ? 16 : 0, variant);
        c.dropout = 0;  // masks follow the step counter, which a graph freezes
        float *init = initial_params(&c);
        GraphRun e, g;
        memset(&e, 0, sizeof e), memset(&g, 0, sizeof g);
        int re = graph_steps(be, &c, init, 0, &e), rg = graph_steps(be, &c, init, 1, &g);
        CHECK(re == 0 && rg == 0, "graph (variant %d): eager %d, graph %d: %s", variant, re, rg, vit_error());
        size_t n = 0;
        {
            ParamTable t;
            ParamOffsets o;
            params_build(&t, &o, &c);
            n = t.total;
            params_free(&t, &o);
        }
        int same = re == 0 && rg == 0 && g.replayed == GRAPH_STEPS - 2;
        for (int s = 0; s < GRAPH_STEPS && same; s++)
            same = e.norm[s] == g.norm[s] && e.loss[s] == g.loss[s] && e.params[s] && g.params[s] &&
                   !memcmp(e.params[s], g.params[s], n * sizeof(float));
        printf("graph: variant %d: %d of %d steps replayed, last loss sum %.9g, norm %.9g\n", variant, g.replayed,
               GRAPH_STEPS, g.loss[GRAPH_STEPS - 1], g.norm[GRAPH_STEPS - 1]);
        CHECK(same, "graph (variant %d): replayed steps differ from the eager steps (norms, loss sums or parameters)",
              variant);
        for (int s = 0; s < GRAPH_STEPS; s++) free(e.params[s]), free(g.params[s]);
        free(init);
    }
    be->destroy(be);
    // A capture with a host wait inside is refused with a message (the failure stays latched
    // in that backend, which is thrown away).
    Backend *bad = backend_cuda_create(0, CUDA_FP32);
    CudaGraph *g = bad ? backend_cuda_graph_create(bad) : NULL;
    if (g) {
        float *d = bad->alloc(bad, 64 * sizeof(float)), h[64];
        int rb = backend_cuda_graph_begin(g);
        bad->zero(bad, d, sizeof h);
        bad->download(bad, h, d, sizeof h);
        int re = backend_cuda_graph_end(g);
        CHECK(rb == 0 && re != 0 && !backend_cuda_graph_ready(g), "graph: a capture with a download was not refused");
        printf("graph: a capture with a download: %s\n", re ? vit_error() : "accepted");
        backend_cuda_graph_destroy(g);
    }
    if (bad) bad->destroy(bad);
}

int main(void) {
    on_cpu = getenv("VIT_TEST_CUDA_ON_CPU") && !strcmp(getenv("VIT_TEST_CUDA_ON_CPU"), "1");
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
    if (!on_cpu) test_attention_paths();
    if (!on_cpu) test_epilogues();
    if (!on_cpu) test_graph();
    if (!on_cpu) test_bf16_acts();
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
