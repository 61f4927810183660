// Mixup and CutMix draws and plans (see mixup.h). The logic follows timm's Mixup class step
// by step; the random numbers are this project's own (Philox, util/rng.h), so a step's
// draws depend only on (seed, step) and a resumed run mixes its batches as the original.
#include "mixup.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/rng.h"
#include "util/status.h"

// Counter tags: the fourth Philox word of every mixup draw, apart from dropout's and the
// rng_uniform/rng_normal streams' words.
enum { TAG_MIX = 0x6d697875, TAG_BETA = 0x62000000 };

static double cutmix_alpha(const MixupConfig *c) { return c->minmax[1] > 0 ? 1.0 : c->cutmix_alpha; }

int mixup_enabled(const MixupConfig *c) { return c->mixup_alpha > 0 || cutmix_alpha(c) > 0; }

int mixup_parse_mode(const char *text, MixMode *mode) {
    static const char *const names[] = {"batch", "pair", "elem"};
    for (int i = 0; i < 3; i++)
        if (!strcasecmp(text, names[i])) {
            *mode = (MixMode)i;
            return VIT_OK;
        }
    return vit_fail("--mixup_mode %s: expected batch, pair or elem", text);
}

int mixup_parse_minmax(const char *text, double minmax[2]) {
    minmax[0] = minmax[1] = 0;
    if (!*text) return VIT_OK;
    char *end;
    double lo = strtod(text, &end), hi = -1;
    if (end != text && *end == ',') {
        const char *second = end + 1;
        hi = strtod(second, &end);
        if (end == second) hi = -1;
    }
    if (*end || !(lo >= 0) || !(hi > lo) || !(hi <= 1))
        return vit_fail("--cutmix_minmax %s: expected LO,HI with 0 <= LO < HI <= 1 (box sides as fractions of the "
                        "image)", text);
    minmax[0] = lo, minmax[1] = hi;
    return VIT_OK;
}

int mixup_validate(const MixupConfig *c, int B, int S) {
    if (!(c->mixup_alpha >= 0)) return vit_fail("--mixup %g: must be >= 0 (0 = off)", c->mixup_alpha);
    if (!(c->cutmix_alpha >= 0)) return vit_fail("--cutmix %g: must be >= 0 (0 = off)", c->cutmix_alpha);
    if (!(c->prob >= 0 && c->prob <= 1)) return vit_fail("--mixup_prob %g: must be in [0, 1]", c->prob);
    if (!(c->switch_prob >= 0 && c->switch_prob <= 1))
        return vit_fail("--mixup_switch_prob %g: must be in [0, 1]", c->switch_prob);
    if (c->mode != MIX_BATCH && c->mode != MIX_PAIR && c->mode != MIX_ELEM)
        return vit_fail("--mixup_mode: unknown mode %d", (int)c->mode);
    if (!mixup_enabled(c)) return VIT_OK;
    if (B % 2)
        return vit_fail("--batch_size: mixup/CutMix mix image b with image B-1-b, so the batch of each process must "
                        "be even (it is %d), as timm asserts", B);
    if (S > 0 && c->minmax[1] > 0 && (int)(S * c->minmax[0]) >= (int)(S * c->minmax[1]))
        return vit_fail("--cutmix_minmax %g,%g: for %d-pixel images the smallest box side %d is not below the "
                        "largest %d", c->minmax[0], c->minmax[1], S, (int)(S * c->minmax[0]), (int)(S * c->minmax[1]));
    return VIT_OK;
}

int mixup_slots(const MixupConfig *c, int B) { return c->mode == MIX_BATCH ? 1 : c->mode == MIX_PAIR ? B / 2 : B; }

// ---- the Beta sampler ------------------------------------------------------------------
static double u01(uint32_t bits) { return (double)bits / 4294967296.0; }  // [0, 1)

// log of a Gamma(a, 1) draw, a >= 1 (Marsaglia and Tsang, 2000): candidate attempt t uses
// the Philox counter (index, stream, TAG_BETA | gamma << 8 | t).
static double log_gamma_draw(uint64_t seed, uint32_t stream, uint64_t index, int gamma, double a) {
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (uint32_t t = 0; t < 64; t++) {
        Philox4 r = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), stream,
                               TAG_BETA | (uint32_t)gamma << 8 | t);
        double x = sqrt(-2.0 * log(rng_u01_open(r.v[0]))) * cos(6.283185307179586 * u01(r.v[1]));
        double v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = rng_u01_open(r.v[2]);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return log(d * v);
    }
    return log(d);  // 64 rejections in a row: probability below 1e-80
}

static double log_gamma(uint64_t seed, uint32_t stream, uint64_t index, int gamma, double a) {
    if (a >= 1) return log_gamma_draw(seed, stream, index, gamma, a);
    // Gamma(a) = Gamma(a + 1) U^(1/a), kept in logarithms (U^(1/a) underflows for small a).
    Philox4 r = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), stream, TAG_BETA | (uint32_t)gamma << 8 | 0xff);
    return log_gamma_draw(seed, stream, index, gamma, a + 1) + log(rng_u01_open(r.v[0])) / a;
}

double mixup_beta(uint64_t seed, uint32_t stream, uint64_t index, double a) {
    double g1 = log_gamma(seed, stream, index, 0, a), g2 = log_gamma(seed, stream, index, 1, a);
    return 1.0 / (1.0 + exp(g2 - g1));  // G1 / (G1 + G2)
}

// ---- draws -----------------------------------------------------------------------------
// randint(lo, hi) from one 32-bit word: lo + floor(u (hi - lo)), u in [0, 1).
static int randint(uint32_t bits, int lo, int hi) { return lo + (int)(u01(bits) * (hi - lo)); }

void mixup_draw(const MixupConfig *c, uint64_t seed, uint32_t step, int slots, int H, int W, MixDraw *d) {
    double ma = c->mixup_alpha, ca = cutmix_alpha(c);
    for (int i = 0; i < slots; i++) {
        MixDraw *x = &d[i];
        memset(x, 0, sizeof *x);
        Philox4 r = philox4x32(seed, (uint32_t)i, step, 0, TAG_MIX);
        x->apply = u01(r.v[0]) < c->prob;
        x->cutmix = ma > 0 && ca > 0 ? u01(r.v[1]) < c->switch_prob : !(ma > 0);
        // Streams 0 and 1: mixup's and CutMix's weights, one index per (step, slot).
        x->lam = mixup_beta(seed, (uint32_t)x->cutmix, (uint64_t)step << 32 | (uint32_t)i, x->cutmix ? ca : ma);
        x->cy = randint(r.v[2], 0, H);
        x->cx = randint(r.v[3], 0, W);
        if (c->minmax[1] > 0) {
            Philox4 q = philox4x32(seed, (uint32_t)i, step, 1, TAG_MIX);
            x->cut_h = randint(q.v[0], (int)(H * c->minmax[0]), (int)(H * c->minmax[1]));
            x->cut_w = randint(q.v[1], (int)(W * c->minmax[0]), (int)(W * c->minmax[1]));
            x->yl = randint(q.v[2], 0, H - x->cut_h + 1);
            x->xl = randint(q.v[3], 0, W - x->cut_w + 1);
        }
    }
}

// ---- timm's logic on the draws -----------------------------------------------------------
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

void mixup_rand_bbox(int H, int W, double lam, int single, int cy, int cx, int box[4]) {
    int cut_h, cut_w;
    if (single) {  // numpy float32 scalars: 1 - lam, sqrt and H * ratio all round to fp32
        float ratio = sqrtf(1.0f - (float)lam);
        cut_h = (int)((float)H * ratio);
        cut_w = (int)((float)W * ratio);
    } else {
        double ratio = sqrt(1.0 - lam);
        cut_h = (int)(H * ratio);
        cut_w = (int)(W * ratio);
    }
    box[0] = clampi(cy - cut_h / 2, 0, H);
    box[1] = clampi(cy + (cut_h + 1) / 2, 0, H);
    box[2] = clampi(cx - cut_w / 2, 0, W);
    box[3] = clampi(cx + (cut_w + 1) / 2, 0, W);
}

double mixup_box_lam(int H, int W, const int box[4]) {
    return 1.0 - (double)((long)(box[1] - box[0]) * (box[3] - box[2])) / (double)((long)H * W);
}

// The sample's arguments for a mixing weight lam (already rounded as its mode rounds it).
static MixSample sample_for(double lam, int cutmix, const int box[4]) {
    MixSample s = {.lam = lam};
    s.tgt_w[0] = (float)lam, s.tgt_w[1] = (float)(1.0 - lam);
    if (cutmix) {
        s.img_w[0] = 1.0f, s.img_w[1] = 0.0f;
        for (int k = 0; k < 4; k++) s.box[k] = box[k];
        s.mixed = box[1] > box[0] && box[3] > box[2];
    } else {
        s.img_w[0] = s.tgt_w[0], s.img_w[1] = s.tgt_w[1];
        s.mixed = 1;
    }
    return s;
}

int mixup_plan(const MixupConfig *c, const MixDraw *d, int B, int H, int W, MixSample *s) {
    const int none[4] = {0, 0, 0, 0};
    for (int b = 0; b < B; b++) s[b] = sample_for(1.0, 0, none), s[b].mixed = 0;
    int single = c->mode != MIX_BATCH, slots = mixup_slots(c, B), mixed = 0;
    for (int i = 0; i < slots; i++) {
        double lam = d[i].apply ? d[i].lam : 1.0;
        if (single) lam = (float)lam;
        if (lam == 1.0) continue;
        int box[4] = {0, 0, 0, 0};
        if (d[i].cutmix) {
            if (c->minmax[1] > 0) {
                box[0] = d[i].yl, box[1] = d[i].yl + d[i].cut_h, box[2] = d[i].xl, box[3] = d[i].xl + d[i].cut_w;
            } else {
                mixup_rand_bbox(H, W, lam, single, d[i].cy, d[i].cx, box);
            }
            lam = mixup_box_lam(H, W, box);
            if (single) lam = (float)lam;
        }
        MixSample m = sample_for(lam, d[i].cutmix, box);
        if (c->mode == MIX_BATCH) {
            for (int b = 0; b < B; b++) s[b] = m;
            return m.mixed ? B : 0;
        }
        s[i] = m;
        mixed += m.mixed;
        if (c->mode == MIX_PAIR) {
            s[B - 1 - i] = m;
            mixed += m.mixed;
        }
    }
    return mixed;
}

void mixup_on_off(float smoothing, int K, float *on, float *off) {
    double o = (double)smoothing / K;
    *off = (float)o;
    *on = (float)(1.0 - (double)smoothing + o);
}

void mixup_targets(const MixSample *s, const int *labels, int B, int K, float smoothing, float *t) {
    float on, off;
    mixup_on_off(smoothing, K, &on, &off);
    for (int b = 0; b < B; b++) {
        int ya = labels[b], yb = labels[B - 1 - b];
        for (int k = 0; k < K; k++) {
            float pa = s[b].tgt_w[0] * (k == ya ? on : off), pb = s[b].tgt_w[1] * (k == yb ? on : off);
            t[(size_t)b * K + k] = pa + pb;
        }
    }
}
