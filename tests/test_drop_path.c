// Stochastic depth (and Mixup/CutMix) in the whole model, on the CPU backend:
//  - rate 1 on 2 blocks: block 1 (rate 1) is always dropped, so logits, losses and the
//    gradients equal those of the 1-block model with the same parameters bit for bit, and
//    block 1's gradients are zero;
//  - rates 0, 0.2, 0.4, 0.6 on 4 blocks (dropout 0): which branch of which sample was dropped,
//    read off the residual stream (a dropped branch leaves it unchanged bit for bit), is
//    exactly rng_keep's decision at vit_drop_path_site, the kept fractions are within 5 sigma
//    of 1 - p, and a kept branch is the rate-0 branch times 1/(1 - p);
//  - a fixed-seed step with drop path, dropout and mixup repeats bit for bit, another step
//    differs, and --recompute gives the same bits;
//  - Mixup/CutMix in the model: the patches are the plan of (seed, step) applied to the
//    batch, the losses the mixed cross-entropy of the logits;
//  - off (rate 0, no mixing), no new op runs at all (a counting backend), so the passes are
//    those of the model before these features; evaluation ignores both.
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/rng.h"
#include "util/status.h"

static Backend *g_cpu;
static long g_calls[4];  // drop_path, mix_images, xent_mix_forward, xent_mix_backward

static void count_drop_path(Backend *be, float *out, const float *inp, int B, size_t n, float rate, uint64_t seed,
                            uint32_t step, uint32_t site) {
    g_calls[0]++;
    g_cpu->drop_path(g_cpu, out, inp, B, n, rate, seed, step, site);
}
static void count_mix(Backend *be, float *p, const float *w, const int *box, int B, int S, int C, int P) {
    g_calls[1]++;
    g_cpu->mix_images(g_cpu, p, w, box, B, S, C, P);
}
static void count_xf(Backend *be, float *probs, float *losses, const float *logits, const int *labels,
                     const float *w, int B, int K, float sm) {
    g_calls[2]++;
    g_cpu->xent_mix_forward(g_cpu, probs, losses, logits, labels, w, B, K, sm);
}
static void count_xb(Backend *be, float *d, const float *probs, const int *labels, const float *w, int B, int K,
                     float sm, float scale) {
    g_calls[3]++;
    g_cpu->xent_mix_backward(g_cpu, d, probs, labels, w, B, K, sm, scale);
}

static float *host_copy(ViT *m, const float *dev, size_t n) {
    float *h = malloc(n * sizeof(float));
    m->be->download(m->be, h, dev, n * sizeof(float));
    return h;
}

static const ParamEntry *entry(const ViT *m, const char *name) {
    for (int i = 0; i < m->table.count; i++)
        if (!strcmp(m->table.entries[i].name, name)) return &m->table.entries[i];
    return NULL;
}

static void step(ViT *m, const uint8_t *img, const int *lab, int B, uint32_t s) {
    int rc = vit_forward(m, img, lab, B, 1, 0.1f, 77, s) || vit_backward(m, B, 0.1f, 1.0f / B, 77, s);
    CHECK(rc == 0, "training step: %s", vit_error());
}

// Rate 1 on two blocks: the last block never contributes.
static void test_last_block_dropped(Backend *be) {
    ViTConfig c2 = small_config("dp2"), c1;
    c2.layers = 2, c2.dropout = 0;
    c1 = c2, c1.layers = 1;
    enum { B = 4 };
    ViT m2, m1;
    CHECK(vit_create(&m2, &c2, be, B, 1) == 0 && vit_create(&m1, &c1, be, B, 1) == 0, "models: %s", vit_error());
    CHECK(vit_drop_path_rate(1.0f, 0, 2) == 0.0f && vit_drop_path_rate(1.0f, 1, 2) == 1.0f, "linspace(0, 1, 2)");
    CHECK(vit_set_regularization(&m2, 1.0f, NULL) == 0, "rate 1 accepted: %s", vit_error());
    vit_init_params(&m2, 3);
    randomize_head(&m2, 3);
    float *p2 = host_copy(&m2, m2.params, m2.table.total), *p1 = malloc(m1.table.total * sizeof(float));
    for (int i = 0; i < m1.table.count; i++) {
        const ParamEntry *a = &m1.table.entries[i], *b = entry(&m2, a->name);
        memcpy(p1 + a->offset, p2 + b->offset, a->size * sizeof(float));
    }
    be->upload(be, m1.params, p1, m1.table.total * sizeof(float));
    be->zero(be, m1.grads, m1.table.total * sizeof(float));
    be->zero(be, m2.grads, m2.table.total * sizeof(float));
    uint8_t img[B * 16 * 16 * 3];
    int lab[B];
    synth_batch(img, lab, B, &c2, 5);
    step(&m1, img, lab, B, 0);
    step(&m2, img, lab, B, 0);
    CHECK(!memcmp(m1.host_logits, m2.host_logits, sizeof(float) * B * c2.classes) &&
              !memcmp(m1.host_losses, m2.host_losses, sizeof(float) * B),
          "rate 1 on the last block: logits and losses equal the 1-block model's");
    float *g1 = host_copy(&m1, m1.grads, m1.table.total), *g2 = host_copy(&m2, m2.grads, m2.table.total);
    int differ = 0, nonzero = 0;
    for (int i = 0; i < m1.table.count; i++) {
        const ParamEntry *a = &m1.table.entries[i], *b = entry(&m2, a->name);
        differ += memcmp(g1 + a->offset, g2 + b->offset, a->size * sizeof(float)) != 0;
    }
    const BlockOffsets *w = &m2.off.blocks[1];
    for (size_t k = w->ln0_scale; k < w->fc2_bias + (size_t)c2.hidden; k++) nonzero += g2[k] != 0;
    CHECK(differ == 0, "rate 1 on the last block: %d gradient tensors differ from the 1-block model's", differ);
    CHECK(nonzero == 0, "the dropped block's gradients are zero (%d are not)", nonzero);
    free(p1), free(p2), free(g1), free(g2);
    vit_destroy(&m1), vit_destroy(&m2);
}

// Whether sample b's rows of a and b are bit-identical.
static int same_sample(const float *a, const float *b, int s, size_t per) {
    return !memcmp(a + s * per, b + s * per, per * sizeof(float));
}

// Per-sample masks read off the residual stream, against rng_keep; the kept scale against rate 0.
static void test_masks(Backend *be) {
    ViTConfig c = small_config("dp4");
    c.layers = 4, c.dropout = 0;
    enum { B = 8, STEPS = 30 };
    const float R = 0.6f;
    ViT m, z;
    CHECK(vit_create(&m, &c, be, B, 1) == 0 && vit_create(&z, &c, be, B, 1) == 0, "models: %s", vit_error());
    CHECK(vit_set_regularization(&m, R, NULL) == 0, "rate %g: %s", R, vit_error());
    vit_init_params(&m, 8);
    vit_init_params(&z, 8);
    size_t per = (size_t)config_tokens(&c) * c.hidden, n = per * B;
    long kept[4][2] = {{0}}, mismatch = 0;
    double scale_err = 0;
    uint8_t img[B * 16 * 16 * 3];
    int lab[B];
    for (uint32_t s = 0; s < STEPS; s++) {
        synth_batch(img, lab, B, &c, 100 + s);
        CHECK(vit_forward(&m, img, lab, B, 1, 0, 31, s) == 0, "forward: %s", vit_error());
        for (int l = 0; l < c.layers; l++) {
            float p = vit_drop_path_rate(R, l, c.layers);
            float *x = host_copy(&m, m.x[l], n), *r = host_copy(&m, m.blocks[l].resid1, n);
            float *y = host_copy(&m, m.x[l + 1], n);
            for (int b = 0; b < B; b++) {
                int k0 = !same_sample(r, x, b, per), k1 = !same_sample(y, r, b, per);
                kept[l][0] += k0, kept[l][1] += k1;
                mismatch += k0 != rng_keep(31, s, vit_drop_path_site(l, 0), (uint64_t)b, 1.0f - p);
                mismatch += k1 != rng_keep(31, s, vit_drop_path_site(l, 1), (uint64_t)b, 1.0f - p);
            }
            if (l == 1) {  // block 1's input does not depend on drop path (block 0's rate is 0)
                CHECK(vit_forward(&z, img, lab, B, 1, 0, 31, s) == 0, "rate-0 forward");
                float *zx = host_copy(&z, z.x[1], n), *zr = host_copy(&z, z.blocks[1].resid1, n);
                CHECK(!memcmp(zx, x, n * sizeof(float)), "block 1's input is the same at rate 0");
                double md = 0, mr = 0, inv = 1.0 / (1.0 - p);
                for (int b = 0; b < B; b++) {
                    if (same_sample(r, x, b, per)) continue;
                    for (size_t j = b * per; j < (b + 1) * per; j++) {
                        double got = (double)r[j] - x[j], want = inv * ((double)zr[j] - zx[j]);
                        md = fmax(md, fabs(got - want)), mr = fmax(mr, fabs(want));
                    }
                }
                scale_err = fmax(scale_err, md / fmax(mr, 1e-30));
                free(zx), free(zr);
            }
            free(x), free(r), free(y);
        }
    }
    CHECK(mismatch == 0, "%ld per-sample drop decisions differ from rng_keep's", mismatch);
    CHECK(scale_err < 1e-5, "kept branches scaled by 1/(1 - p): error %.3g", scale_err);
    for (int l = 0; l < c.layers; l++) {
        double keep = 1.0 - vit_drop_path_rate(R, l, c.layers), N = (double)B * STEPS, sig = sqrt(keep * (1 - keep) / N);
        for (int k = 0; k < 2; k++) {
            double f = kept[l][k] / N;
            CHECK(fabs(f - keep) <= 5 * sig + 1e-12, "block %d branch %d: kept %.3f, expected %.3f", l, k, f, keep);
        }
        printf("drop_path: block %d (p %.2f): kept %.3f / %.3f of %d samples (expected %.3f)\n", l,
               vit_drop_path_rate(R, l, c.layers), kept[l][0] / (double)(B * STEPS), kept[l][1] / (double)(B * STEPS),
               B * STEPS, keep);
    }
    printf("drop_path: kept branches = rate-0 branches x 1/(1-p) within %.2g\n", scale_err);
    vit_destroy(&m), vit_destroy(&z);
}

// A step with drop path, dropout and mixup: the same bits twice and under --recompute.
static void test_repeat(Backend *be) {
    ViTConfig c = small_config("dprep");
    enum { B = 6, A = 2 };
    MixupConfig mix = {.mixup_alpha = 0.8f, .cutmix_alpha = 1.0f, .prob = 1, .switch_prob = 0.5f, .mode = MIX_ELEM};
    ViT m[3];
    for (int i = 0; i < 3; i++) {
        CHECK(vit_create_ex(&m[i], &c, be, B, 1, i == 2 ? VIT_RECOMPUTE : 0) == 0 &&
                  vit_set_regularization(&m[i], 0.3f, &mix) == 0,
              "model %d: %s", i, vit_error());
        vit_init_params(&m[i], 4);
        randomize_head(&m[i], 4);
        be->zero(be, m[i].grads, m[i].table.total * sizeof(float));
    }
    uint8_t img[B * 16 * 16 * 3];
    int lab[B];
    size_t K = (size_t)c.classes;
    float logits[3][B * 10];
    for (uint32_t s = 0; s < A; s++) {
        synth_batch(img, lab, B, &c, 40 + s);
        for (int i = 0; i < 3; i++) {
            step(&m[i], img, lab, B, s);
            memcpy(logits[i], m[i].host_logits, B * K * sizeof(float));
        }
        CHECK(!memcmp(logits[0], logits[1], sizeof logits[0]) && !memcmp(logits[0], logits[2], sizeof logits[0]),
              "micro-step %u: logits repeat bit for bit (and under recompute)", s);
    }
    float *g[3];
    for (int i = 0; i < 3; i++) g[i] = host_copy(&m[i], m[i].grads, m[i].table.total);
    size_t bytes = m[0].table.total * sizeof(float);
    CHECK(!memcmp(g[0], g[1], bytes) && !memcmp(g[0], g[2], bytes), "gradients repeat bit for bit (and under "
          "recompute)");
    // Another step number draws other masks and mixes: the logits move.
    step(&m[1], img, lab, B, 5);
    float *again = m[1].host_logits;
    CHECK(vit_forward(&m[0], img, lab, B, 1, 0.1f, 77, 1) == 0 && memcmp(again, m[0].host_logits, B * K * 4),
          "another step gives other logits");
    for (int i = 0; i < 3; i++) free(g[i]), vit_destroy(&m[i]);
}

// The model's mixing: its patches and losses from the plan of (seed, step).
static void test_model_mixing(Backend *be) {
    ViTConfig c = small_config("dpmix");
    c.dropout = 0;
    enum { B = 8 };
    MixupConfig mix = {.mixup_alpha = 0.8f, .cutmix_alpha = 1.0f, .prob = 0.8f, .switch_prob = 0.5f, .mode = MIX_ELEM};
    ViT m, plain;
    CHECK(vit_create(&m, &c, be, B, 1) == 0 && vit_create(&plain, &c, be, B, 1) == 0, "models: %s", vit_error());
    CHECK(vit_set_regularization(&m, 0, &mix) == 0, "mixing on: %s", vit_error());
    vit_init_params(&m, 6);
    vit_init_params(&plain, 6);
    uint8_t img[B * 16 * 16 * 3];
    int lab[B];
    synth_batch(img, lab, B, &c, 9);
    int S = c.image, P = c.patch, C = c.channels, G = S / P, len = P * P * C;
    size_t n = (size_t)B * S * S * C;
    int checked = 0, changed_total = 0;
    for (uint32_t s = 0; s < 6; s++) {
        CHECK(vit_forward(&m, img, lab, B, 1, 0.1f, 21, s) == 0 && vit_forward(&plain, img, lab, B, 1, 0.1f, 21, s) == 0,
              "forward: %s", vit_error());
        MixDraw d[B];
        MixSample p[B];
        mixup_draw(&mix, 21, s, B, S, S, d);
        changed_total += mixup_plan(&mix, d, B, S, S, p);
        float *pm = host_copy(&m, m.patches, n), *pp = host_copy(&plain, plain.patches, n);
        size_t bad = 0;
        for (int b = 0; b < B; b++)
            for (int g = 0; g < G * G; g++)
                for (int e = 0; e < len; e++) {
                    int y = g / G * P + e / (P * C), x = g % G * P + e / C % P, q = B - 1 - b, *bx = p[b].box;
                    size_t i = ((size_t)b * G * G + g) * len + e, j = ((size_t)q * G * G + g) * len + e;
                    float own = p[b].img_w[0] * pp[i], other = p[b].img_w[1] * pp[j];
                    float want = y >= bx[0] && y < bx[1] && x >= bx[2] && x < bx[3] ? pp[j] : own + other;
                    bad += memcmp(&want, &pm[i], 4) != 0;
                }
        CHECK(bad == 0, "step %u: %zu mixed patch values differ from the plan", s, bad);
        // The losses: timm's soft-target cross-entropy of the model's logits.
        float t[B * 10];
        mixup_targets(p, lab, B, c.classes, 0.1f, t);
        double worst = 0;
        for (int b = 0; b < B; b++) {
            const float *z = m.host_logits + b * c.classes;
            double mx = z[0], sum = 0, loss = 0;
            for (int k = 1; k < c.classes; k++) mx = fmax(mx, z[k]);
            for (int k = 0; k < c.classes; k++) sum += exp(z[k] - mx);
            for (int k = 0; k < c.classes; k++) loss -= t[b * c.classes + k] * (z[k] - mx - log(sum));
            worst = fmax(worst, fabs(loss - m.host_losses[b]) / fmax(1, fabs(loss)));
        }
        CHECK(worst < 1e-6, "step %u: losses %.3g off the soft-target cross-entropy", s, worst);
        checked++;
        free(pm), free(pp);
    }
    CHECK(checked == 6 && changed_total > 0, "mixing changed %d images over %d steps", changed_total, checked);
    vit_destroy(&m), vit_destroy(&plain);
}

// Off: no new op is called, and evaluation ignores drop path and mixing.
static void test_off(Backend *cpu) {
    Backend counting = *cpu;
    counting.drop_path = count_drop_path, counting.mix_images = count_mix;
    counting.xent_mix_forward = count_xf, counting.xent_mix_backward = count_xb;
    ViTConfig c = small_config("dpoff");
    enum { B = 4 };
    ViT off, on;
    MixupConfig mix = {.cutmix_alpha = 1.0f, .prob = 1, .switch_prob = 0.5f, .mode = MIX_BATCH};
    CHECK(vit_create(&off, &c, &counting, B, 1) == 0 && vit_create(&on, &c, &counting, B, 1) == 0, "models");
    CHECK(vit_set_regularization(&off, 0, NULL) == 0 && vit_set_regularization(&on, 0.2f, &mix) == 0, "settings");
    vit_init_params(&off, 2), vit_init_params(&on, 2);
    uint8_t img[B * 16 * 16 * 3];
    int lab[B];
    synth_batch(img, lab, B, &c, 1);
    step(&off, img, lab, B, 0);
    CHECK(g_calls[0] + g_calls[1] + g_calls[2] + g_calls[3] == 0, "rate 0, no mixing: no regularisation op runs");
    step(&on, img, lab, B, 0);
    long dp = 2 * 2 * (c.layers - 1);  // two branches of every block but the first, forward and backward
    CHECK(g_calls[0] == dp && g_calls[2] == 1 && g_calls[3] == 1, "on: %ld drop_path calls (want %ld), xent_mix %ld/%ld",
          g_calls[0], dp, g_calls[2], g_calls[3]);
    memset(g_calls, 0, sizeof g_calls);
    CHECK(vit_forward(&off, img, lab, B, 0, 0, 0, 0) == 0 && vit_forward(&on, img, lab, B, 0, 0, 0, 0) == 0 &&
              !memcmp(off.host_logits, on.host_logits, sizeof(float) * B * c.classes),
          "evaluation ignores drop path and mixing");
    CHECK(g_calls[0] + g_calls[1] + g_calls[2] + g_calls[3] == 0, "evaluation calls no regularisation op");
    CHECK(vit_set_regularization(&on, -0.1f, NULL) && strstr(vit_error(), "--drop_path"), "negative rate refused");
    CHECK(vit_set_regularization(&on, 1.5f, NULL) && strstr(vit_error(), "--drop_path"), "rate > 1 refused");
    ViT odd;
    CHECK(vit_create(&odd, &c, cpu, 3, 1) == 0 && vit_set_regularization(&odd, 0, &mix) &&
              strstr(vit_error(), "even"), "mixing an odd batch refused: %s", vit_error());
    vit_destroy(&odd);
    vit_destroy(&off), vit_destroy(&on);
}

int main(void) {
    g_cpu = backend_cpu_create(0);
    if (!g_cpu) {
        CHECK(0, "CPU backend: %s", vit_error());
        return check_report("drop_path");
    }
    test_last_block_dropped(g_cpu);
    test_masks(g_cpu);
    test_repeat(g_cpu);
    test_model_mixing(g_cpu);
    test_off(g_cpu);
    g_cpu->destroy(g_cpu);
    return check_report("drop_path");
}
