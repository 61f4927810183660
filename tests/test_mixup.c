// Mixup, CutMix and drop path against timm's own functions, through the fixture
// tests/fixtures/mixup_timm.safetensors (tools/make_mixup_fixtures.py: timm run with its random
// draws replaced by known ones):
//  - CutMix boxes (rand_bbox in double and in fp32, rand_bbox_minmax) and corrected lams:
//    exact;
//  - soft targets (mixup_target): the host rule and the CPU backend's xent_mix targets within
//    1e-6 (they come out exact);
//  - whole Mixup calls in every mode: the plan made from timm's draws, then the CPU backend's
//    mix_images on the patchified images and its targets, within 1e-6 of timm's mixed images
//    and targets (exact here too);
//  - drop path: the per-block rates (torch.linspace) exactly, and drop_path on ones with
//    rng_keep's keep pattern bit for bit (the fp32 1/(1 - p) scale);
//  - this project's Beta sampler: its CDF against numpy's Beta draws' within 0.015 and
//    against the exact CDFs of Beta(1, 1) and Beta(2, 2), and its moments; the draws'
//    frequencies; and the flags' one-line refusals.
#include <math.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "data/mixup.h"
#include "io/safetensors.h"
#include "model/vit.h"
#include "util/rng.h"
#include "util/status.h"

static const char *FIXTURE = "tests/fixtures/mixup_timm.safetensors";

static const StTensor *get(const StFile *f, const char *name, StDtype dt) {
    const StTensor *t = st_find(f, name);
    if (!t || t->dtype != dt) {
        CHECK(0, "%s: tensor %s missing or of another dtype", FIXTURE, name);
        return NULL;
    }
    return t;
}

static void test_boxes(const StFile *f) {
    const StTensor *t = get(f, "bbox", ST_F64);
    if (!t) return;
    const double *r = t->data;
    int n = (int)t->shape[0], bad = 0, badlam = 0, differ = 0;
    for (int i = 0; i < n; i++, r += 11) {
        int box[4], H = (int)r[0], W = (int)r[1];
        mixup_rand_bbox(H, W, r[2], (int)r[3], (int)r[4], (int)r[5], box);
        bad += box[0] != (int)r[6] || box[1] != (int)r[7] || box[2] != (int)r[8] || box[3] != (int)r[9];
        badlam += mixup_box_lam(H, W, box) != r[10];
        if (r[3] == 1) {  // where fp32 and double sides part, the fp32 path must be the one timm took
            int other[4];
            mixup_rand_bbox(H, W, r[2], 0, (int)r[4], (int)r[5], other);
            differ += memcmp(box, other, sizeof box) != 0;
        }
    }
    CHECK(bad == 0, "rand_bbox: %d of %d boxes differ from timm's", bad, n);
    CHECK(badlam == 0, "cutmix_bbox_and_lam: %d of %d corrected lams differ", badlam, n);
    printf("mixup: %d boxes as timm's (%d where the fp32 side differs from the double one)\n", n, differ);
    t = get(f, "bbox_minmax", ST_F64);
    if (!t) return;
    r = t->data;
    n = (int)t->shape[0], bad = 0;
    for (int i = 0; i < n; i++, r += 11) {
        MixupConfig c = {.cutmix_alpha = 0, .minmax = {r[2], r[3]}, .prob = 1, .mode = MIX_ELEM};
        MixDraw d = {.apply = 1, .cutmix = 1, .lam = 0.5, .cut_h = (int)r[4], .cut_w = (int)r[5], .yl = (int)r[6],
                     .xl = (int)r[7]};
        MixSample s[2];
        mixup_plan(&c, &d, 1, (int)r[0], (int)r[1], s);
        bad += s[0].box[0] != (int)r[6] || s[0].box[1] != (int)r[8] || s[0].box[2] != (int)r[7] ||
               s[0].box[3] != (int)r[9] || s[0].tgt_w[0] != (float)r[10];
    }
    CHECK(bad == 0 && n > 50, "rand_bbox_minmax: %d of %d boxes or lams differ from timm's", bad, n);
}

// The targets the CPU backend's xent_mix ops use: -(0 - t) from xent_mix_backward.
static void device_targets(Backend *be, const MixSample *s, const int *labels, int B, int K, float sm, float *t) {
    float *w = malloc(2 * (size_t)B * sizeof(float));
    for (int b = 0; b < B; b++) w[2 * b] = s[b].tgt_w[0], w[2 * b + 1] = s[b].tgt_w[1];
    float *dw = be->alloc(be, 2 * (size_t)B * sizeof(float)), *dz = be->alloc(be, (size_t)B * K * sizeof(float));
    float *dt = be->alloc(be, (size_t)B * K * sizeof(float));
    int *dl = be->alloc(be, (size_t)B * sizeof(int));
    be->upload(be, dw, w, 2 * (size_t)B * sizeof(float));
    be->upload(be, dl, labels, (size_t)B * sizeof(int));
    be->zero(be, dz, (size_t)B * K * sizeof(float));
    be->xent_mix_backward(be, dt, dz, dl, dw, B, K, sm, -1.0f);
    be->download(be, t, dt, (size_t)B * K * sizeof(float));
    be->release(be, dw), be->release(be, dz), be->release(be, dt), be->release(be, dl);
    free(w);
}

static void test_targets(const StFile *f, Backend *be) {
    const StTensor *info = get(f, "targets.K", ST_F64);
    if (!info) return;
    for (int i = 0; i < (int)info->shape[0]; i++) {
        const double *r = (const double *)info->data + 3 * i;
        char name[64];
        snprintf(name, sizeof name, "targets.lam%d", i);
        const StTensor *lam = get(f, name, ST_F64);
        snprintf(name, sizeof name, "targets.labels%d", i);
        const StTensor *lab = get(f, name, ST_I32);
        snprintf(name, sizeof name, "targets.out%d", i);
        const StTensor *out = get(f, name, ST_F32);
        if (!lam || !lab || !out) return;
        int B = (int)lab->shape[0], K = (int)r[2];
        float sm = (float)r[1];
        MixSample *s = calloc((size_t)B, sizeof *s);
        float *host = malloc((size_t)B * K * sizeof(float)), *dev = malloc((size_t)B * K * sizeof(float));
        for (int b = 0; b < B; b++) {
            double l = ((const double *)lam->data)[b];  // mode 1: already an fp32 value
            s[b].tgt_w[0] = (float)l, s[b].tgt_w[1] = (float)(1.0 - l);
        }
        mixup_targets(s, lab->data, B, K, sm, host);
        device_targets(be, s, lab->data, B, K, sm, dev);
        const float *want = out->data;
        double eh = 0, ed = 0;
        int exact = 1;
        for (size_t k = 0; k < (size_t)B * K; k++) {
            eh = fmax(eh, fabs(host[k] - want[k])), ed = fmax(ed, fabs(dev[k] - want[k]));
            exact &= host[k] == want[k] && dev[k] == want[k];
        }
        CHECK(eh <= 1e-6 && ed <= 1e-6, "mixup_target case %d (%s lam, smoothing %g, K %d): host %.3g, CPU backend "
              "%.3g off timm's", i, r[0] ? "per-sample fp32" : "one double", sm, K, eh, ed);
        if (!exact) printf("mixup: targets case %d within 1e-6 but not bit-exact\n", i);
        free(s), free(host), free(dev);
    }
}

// Image (b, c, y, x) of timm's layout <-> patches (b, gy*G+gx, (py*P+px)*C + c).
static void to_patches(float *p, const float *x, int B, int C, int S, int P) {
    int G = S / P, len = P * P * C;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < S; y++)
                for (int xx = 0; xx < S; xx++)
                    p[((size_t)b * G * G + (size_t)(y / P) * G + xx / P) * len + (y % P * P + xx % P) * C + c] =
                        x[(((size_t)b * C + c) * S + y) * S + xx];
}

static void run_mix_case(const StFile *f, Backend *be, int i, int *exact_cases) {
    char name[64];
    const StTensor *t[6];
    const char *parts[6] = {"config", "draws", "x", "labels", "mixed", "target"};
    StDtype dts[6] = {ST_F64, ST_F64, ST_F32, ST_I32, ST_F32, ST_F32};
    for (int k = 0; k < 6; k++) {
        snprintf(name, sizeof name, "mix%d.%s", i, parts[k]);
        if (!(t[k] = get(f, name, dts[k]))) return;
    }
    const double *cf = t[0]->data;
    MixupConfig c = {.mode = (MixMode)cf[0], .mixup_alpha = (float)cf[1], .cutmix_alpha = (float)cf[2],
                     .minmax = {cf[3], cf[4]}, .prob = (float)cf[5], .switch_prob = (float)cf[6]};
    float sm = (float)cf[7];
    int K = (int)cf[8], B = (int)cf[9], C = (int)cf[10], S = (int)cf[11], P = S % 4 ? S : 4;
    int slots = (int)t[1]->shape[0];
    CHECK(slots == mixup_slots(&c, B) && mixup_validate(&c, B, S) == VIT_OK, "mix case %d: %d slots for mode %d",
          i, slots, (int)c.mode);
    MixDraw *d = calloc((size_t)slots, sizeof *d);
    for (int k = 0; k < slots; k++) {
        const double *r = (const double *)t[1]->data + 9 * k;
        d[k] = (MixDraw){(int)r[0], (int)r[1], r[2], (int)r[3], (int)r[4], (int)r[5], (int)r[6], (int)r[7], (int)r[8]};
    }
    MixSample *s = calloc((size_t)B, sizeof *s);
    int changed = mixup_plan(&c, d, B, S, S, s);
    size_t n = (size_t)B * C * S * S;
    float *px = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    float *w = malloc(2 * (size_t)B * sizeof(float)), *tg = malloc((size_t)B * K * sizeof(float));
    int *box = malloc(4 * (size_t)B * sizeof(int));
    to_patches(px, t[2]->data, B, C, S, P);
    to_patches(want, t[4]->data, B, C, S, P);
    for (int b = 0; b < B; b++) {
        w[2 * b] = s[b].img_w[0], w[2 * b + 1] = s[b].img_w[1];
        for (int k = 0; k < 4; k++) box[4 * b + k] = s[b].box[k];  // not memcpy: see mix_batch in vit.c
    }
    float *dp = be->alloc(be, n * sizeof(float)), *dw = be->alloc(be, 2 * (size_t)B * sizeof(float));
    int *db = be->alloc(be, 4 * (size_t)B * sizeof(int));
    be->upload(be, dp, px, n * sizeof(float));
    be->upload(be, dw, w, 2 * (size_t)B * sizeof(float));
    be->upload(be, db, box, 4 * (size_t)B * sizeof(int));
    be->mix_images(be, dp, dw, db, B, S, C, P);
    be->download(be, got, dp, n * sizeof(float));
    device_targets(be, s, t[3]->data, B, K, sm, tg);
    double ex = 0, et = 0;
    size_t timm_changed = 0, inexact = 0;
    for (size_t k = 0; k < n; k++) {
        ex = fmax(ex, fabs(got[k] - want[k]));
        timm_changed += px[k] != want[k];
        inexact += got[k] != want[k];
    }
    const float *tt = t[5]->data;
    for (size_t k = 0; k < (size_t)B * K; k++) et = fmax(et, fabs(tg[k] - tt[k])), inexact += tg[k] != tt[k];
    static const char *modes[] = {"batch", "pair", "elem"};
    CHECK(ex <= 1e-6, "mix case %d (%s): mixed images %.3g off timm's", i, modes[c.mode], ex);
    CHECK(et <= 1e-6, "mix case %d (%s): targets %.3g off timm's", i, modes[c.mode], et);
    CHECK((changed > 0) == (timm_changed > 0), "mix case %d: the plan changes %d images, timm %zu values", i, changed,
          timm_changed);
    *exact_cases += inexact == 0;
    int cut = 0, blend = 0;
    for (int b = 0; b < B; b++) cut += s[b].mixed && s[b].box[1] > s[b].box[0], blend += s[b].mixed && !s[b].box[1];
    printf("mixup: case %2d %-5s B %2d S %2d: %d CutMix, %d mixup images; %s\n", i, modes[c.mode], B, S, cut, blend,
           inexact ? "within 1e-6" : "bit-exact");
    be->release(be, dp), be->release(be, dw), be->release(be, db);
    free(d), free(s), free(px), free(want), free(got), free(w), free(tg), free(box);
}

static void test_mix_calls(const StFile *f, Backend *be) {
    int cases = 0, exact = 0;
    char name[32];
    for (;; cases++) {
        snprintf(name, sizeof name, "mix%d.config", cases);
        if (!st_find(f, name)) break;
        run_mix_case(f, be, cases, &exact);
    }
    CHECK(cases >= 12, "only %d Mixup cases in the fixture", cases);
    printf("mixup: %d of %d whole Mixup calls bit-exact\n", exact, cases);
}

static void test_drop_path(const StFile *f, Backend *be) {
    const StTensor *t = get(f, "droppath.rates", ST_F64);
    if (!t) return;
    int bad = 0;
    for (int i = 0; i < (int)t->shape[0]; i++) {
        const double *r = (const double *)t->data + 34 * i;
        int L = (int)r[1];
        for (int l = 0; l < L; l++) bad += vit_drop_path_rate((float)r[0], l, L) != (float)r[2 + l];
    }
    CHECK(bad == 0, "drop path rates: %d differ from timm's calculate_drop_path_rates", bad);
    const StTensor *cs = get(f, "droppath.case", ST_F64);
    if (!cs) return;
    for (int i = 0; i < (int)cs->shape[0]; i++) {
        const double *r = (const double *)cs->data + 5 * i;
        float p = (float)r[0];
        uint64_t seed = (uint64_t)r[1];
        uint32_t step = (uint32_t)r[2], site = (uint32_t)r[3];
        int B = (int)r[4];
        char name[64];
        snprintf(name, sizeof name, "droppath.keep%d", i);
        const StTensor *keep = get(f, name, ST_F32);
        snprintf(name, sizeof name, "droppath.out%d", i);
        const StTensor *out = get(f, name, ST_F32);
        if (!keep || !out) return;
        int pat = 0, kept = 0;
        for (int b = 0; b < B; b++) {
            pat += rng_keep(seed, step, site, (uint64_t)b, 1.0f - p) != (((const float *)keep->data)[b] != 0);
            kept += ((const float *)keep->data)[b] != 0;
        }
        CHECK(pat == 0, "drop path case %d: the fixture's keep pattern is not rng_keep's (%d samples)", i, pat);
        size_t per = 15;  // timm's ones (B, 3, 5)
        float *ones = malloc((size_t)B * per * sizeof(float)), *got = malloc((size_t)B * per * sizeof(float));
        for (size_t k = 0; k < (size_t)B * per; k++) ones[k] = 1.0f;
        float *d = be->alloc(be, (size_t)B * per * sizeof(float));
        be->upload(be, d, ones, (size_t)B * per * sizeof(float));
        be->drop_path(be, d, d, B, per, p, seed, step, site);
        be->download(be, got, d, (size_t)B * per * sizeof(float));
        int diff = 0;
        for (int b = 0; b < B; b++)
            for (size_t j = 0; j < per; j++) diff += memcmp(&got[b * per + j], (const float *)out->data + b, 4) != 0;
        CHECK(diff == 0, "drop path case %d (p %g, %d of %d kept): %d values differ from timm's drop_path", i, p, kept,
              B, diff);
        be->release(be, d);
        free(ones), free(got);
    }
}

// Empirical CDF of n Beta(a, a) draws at x.
static double cdf_at(const double *v, int n, double x) {
    int c = 0;
    for (int i = 0; i < n; i++) c += v[i] <= x;
    return (double)c / n;
}

static void test_beta(const StFile *f) {
    const StTensor *t = get(f, "beta.cdf", ST_F64);
    if (!t) return;
    enum { N = 40000 };
    double *v = malloc(N * sizeof(double));
    for (int i = 0; i < (int)t->shape[0]; i++) {
        const double *r = (const double *)t->data + 20 * i;
        double a = r[0], mean = 0, var = 0, dmax = 0, dexact = 0;
        int out = 0;
        for (int k = 0; k < N; k++) {
            v[k] = mixup_beta(42, 3, (uint64_t)k, a);
            out += !(v[k] >= 0 && v[k] <= 1);
            mean += v[k];
        }
        mean /= N;
        for (int k = 0; k < N; k++) var += (v[k] - mean) * (v[k] - mean) / N;
        for (int p = 1; p < 20; p++) {
            double x = p / 20.0, c = cdf_at(v, N, x);
            dmax = fmax(dmax, fabs(c - r[p]));
            if (a == 1.0) dexact = fmax(dexact, fabs(c - x));
            if (a == 2.0) dexact = fmax(dexact, fabs(c - (3 * x * x - 2 * x * x * x)));
        }
        double want_var = 1.0 / (4 * (2 * a + 1)), se = sqrt(want_var / N);
        CHECK(out == 0, "Beta(%g, %g): %d draws outside [0, 1]", a, a, out);
        CHECK(dmax < 0.015, "Beta(%g, %g): CDF %.4f off numpy's", a, a, dmax);
        CHECK(dexact < 0.015, "Beta(%g, %g): CDF %.4f off the exact one", a, a, dexact);
        CHECK(fabs(mean - 0.5) < 5 * se && fabs(var / want_var - 1) < 0.05, "Beta(%g, %g): mean %.4f var %.5f (want "
              "0.5, %.5f)", a, a, mean, var, want_var);
        printf("mixup: Beta(%g, %g): CDF within %.4f of numpy's, mean %.4f, var %.5f (exact %.5f)\n", a, a, dmax, mean,
               var, want_var);
    }
    CHECK(mixup_beta(1, 0, 5, 0.8) == mixup_beta(1, 0, 5, 0.8) && mixup_beta(1, 0, 5, 0.8) != mixup_beta(1, 0, 6, 0.8),
          "Beta draws are a pure function of (seed, stream, index)");
    double tiny = mixup_beta(3, 0, 1, 1e-3);
    CHECK(tiny >= 0 && tiny <= 1, "Beta(0.001, 0.001) stays in [0, 1] (%g)", tiny);
    free(v);
}

// The draws' frequencies and ranges, and that the plan follows them.
static void test_draws(void) {
    MixupConfig c = {.mixup_alpha = 0.8f, .cutmix_alpha = 1.0f, .prob = 0.6f, .switch_prob = 0.3f, .mode = MIX_ELEM};
    enum { B = 64, STEPS = 100, H = 24, W = 20 };
    MixDraw d[B], e[B];
    MixSample s[B];
    int applied = 0, cut = 0, range = 0, total = B * STEPS, same = 1, paired = 1;
    for (uint32_t step = 0; step < STEPS; step++) {
        mixup_draw(&c, 9, step, B, H, W, d);
        mixup_draw(&c, 9, step, B, H, W, e);
        same &= !memcmp(d, e, sizeof d);
        for (int i = 0; i < B; i++) {
            applied += d[i].apply, cut += d[i].cutmix;
            range += d[i].cy < 0 || d[i].cy >= H || d[i].cx < 0 || d[i].cx >= W;
        }
    }
    double sa = sqrt(0.24 / total), sc = sqrt(0.21 / total);
    CHECK(fabs((double)applied / total - 0.6) < 5 * sa, "mixup_prob 0.6: %d of %d mixed", applied, total);
    CHECK(fabs((double)cut / total - 0.3) < 5 * sc, "mixup_switch_prob 0.3: %d of %d CutMix", cut, total);
    CHECK(range == 0 && same, "box centres inside the image, draws repeat (%d out)", range);
    c.mode = MIX_PAIR;
    mixup_draw(&c, 9, 1, mixup_slots(&c, B), H, W, d);
    mixup_plan(&c, d, B, H, W, s);
    for (int b = 0; b < B; b++) {
        const MixSample *x = &s[b], *y = &s[B - 1 - b];
        paired &= x->lam == y->lam && x->img_w[0] == y->img_w[0] && x->img_w[1] == y->img_w[1] &&
                  x->tgt_w[0] == y->tgt_w[0] && x->tgt_w[1] == y->tgt_w[1] && x->mixed == y->mixed &&
                  !memcmp(x->box, y->box, sizeof x->box);
    }
    CHECK(paired && mixup_slots(&c, B) == B / 2, "pair mode: samples b and B-1-b share their draw");
    c.minmax[0] = 0.25, c.minmax[1] = 0.75;
    mixup_draw(&c, 9, 2, B, H, W, d);
    int mm = 0;
    for (int i = 0; i < B; i++)
        mm += d[i].cut_h < 6 || d[i].cut_h >= 18 || d[i].cut_w < 5 || d[i].cut_w >= 15 || d[i].yl < 0 ||
              d[i].yl + d[i].cut_h > H || d[i].xl < 0 || d[i].xl + d[i].cut_w > W;
    CHECK(mm == 0, "minmax boxes: %d outside timm's ranges", mm);
}

static void test_refusals(void) {
    MixupConfig ok = {.mixup_alpha = 0.8f, .prob = 1, .switch_prob = 0.5f};
    MixupConfig c = ok;
    MixMode mode;
    double mm[2];
    CHECK(mixup_validate(&ok, 8, 32) == VIT_OK, "a good config passes: %s", vit_error());
    CHECK(mixup_validate(&c, 7, 32) && strstr(vit_error(), "even"), "odd batch refused: %s", vit_error());
    c = ok, c.mixup_alpha = -1;
    CHECK(mixup_validate(&c, 8, 32) && strstr(vit_error(), "--mixup "), "negative alpha: %s", vit_error());
    c = ok, c.prob = 1.5f;
    CHECK(mixup_validate(&c, 8, 32) && strstr(vit_error(), "--mixup_prob"), "prob > 1: %s", vit_error());
    c = ok, c.switch_prob = -0.1f;
    CHECK(mixup_validate(&c, 8, 32) && strstr(vit_error(), "--mixup_switch_prob"), "switch < 0: %s", vit_error());
    CHECK(mixup_parse_mode("pairs", &mode) && strstr(vit_error(), "--mixup_mode"), "unknown mode: %s", vit_error());
    CHECK(mixup_parse_mode("ELEM", &mode) == VIT_OK && mode == MIX_ELEM, "mode names");
    CHECK(mixup_parse_minmax("0.8,0.2", mm) && strstr(vit_error(), "--cutmix_minmax"), "minmax order: %s",
          vit_error());
    CHECK(mixup_parse_minmax("0.2", mm) && mixup_parse_minmax("0.2,1.5", mm) && mixup_parse_minmax("a,b", mm),
          "minmax shapes refused");
    CHECK(mixup_parse_minmax("0.2,0.8", mm) == VIT_OK && mm[0] == 0.2 && mm[1] == 0.8, "minmax parsed");
    c = ok, c.minmax[0] = 0.5, c.minmax[1] = 0.55;
    CHECK(mixup_validate(&c, 8, 8) && strstr(vit_error(), "--cutmix_minmax"), "minmax too narrow for the image: %s",
          vit_error());
    c.mixup_alpha = 0, c.minmax[0] = c.minmax[1] = 0;
    CHECK(!mixup_enabled(&c) && mixup_validate(&c, 7, 8) == VIT_OK, "off: an odd batch is fine");
}

int main(void) {
    StFile f;
    Backend *be = backend_cpu_create(0);
    if (st_read(&f, FIXTURE) || !be) {
        CHECK(0, "%s", vit_error());
        return check_report("mixup");
    }
    test_boxes(&f);
    test_targets(&f, be);
    test_mix_calls(&f, be);
    test_drop_path(&f, be);
    test_beta(&f);
    test_draws();
    test_refusals();
    st_free(&f);
    be->destroy(be);
    return check_report("mixup");
}
