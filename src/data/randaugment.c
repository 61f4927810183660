// timm's RandAugment. Sources of the definitions: timm/data/auto_augment.py (policy grammar,
// op sets, level-to-argument functions, magnitude noise, sign flips, fill colour) and Pillow's
// libImaging (ImagingBlend, the 3x3 filter, the affine transform's bilinear and bicubic
// filters, RGB -> L) and ImageOps/ImageEnhance. Rounding follows Pillow's: blends and
// filters truncate, lookup tables are exact, so the results are Pillow's byte for byte
// (tests/test_randaugment.c checks them against fixtures written by timm itself).
//
// Layout: interleaved bytes, 3 per pixel (RGB) or 1 (gray, PIL's mode "L").
#include "data/randaugment.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX__
#include <immintrin.h>
#endif

#include "util/rng.h"
#include "util/status.h"

// Counter tag of op slot k: TAG_RA + 2k (choice, gate, sign, resample), + 1 (magnitude noise).
#define TAG_RA 0x52000000u
#define LEVEL_DENOM 10.0  // timm's _LEVEL_DENOM: magnitude 10 is the "full" level

static const char *const k_names[RA_OP_COUNT] = {
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing", "Solarize",
    "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast", "ContrastIncreasing",
    "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
};

// timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (15 ops each, in timm's order).
static const RandAugOp k_plain[15] = {
    RA_AUTOCONTRAST, RA_EQUALIZE, RA_INVERT, RA_ROTATE, RA_POSTERIZE, RA_SOLARIZE, RA_SOLARIZE_ADD, RA_COLOR,
    RA_CONTRAST, RA_BRIGHTNESS, RA_SHARPNESS, RA_SHEAR_X, RA_SHEAR_Y, RA_TRANSLATE_X_REL, RA_TRANSLATE_Y_REL,
};
static const RandAugOp k_increasing[15] = {
    RA_AUTOCONTRAST, RA_EQUALIZE, RA_INVERT, RA_ROTATE, RA_POSTERIZE_INC, RA_SOLARIZE_INC, RA_SOLARIZE_ADD,
    RA_COLOR_INC, RA_CONTRAST_INC, RA_BRIGHTNESS_INC, RA_SHARPNESS_INC, RA_SHEAR_X, RA_SHEAR_Y,
    RA_TRANSLATE_X_REL, RA_TRANSLATE_Y_REL,
};
// timm's _RAND_WEIGHTED_0 ("tweights"), in its dict order.
static const RandAugOp k_weighted[15] = {
    RA_ROTATE, RA_SHEAR_X, RA_SHEAR_Y, RA_TRANSLATE_X_REL, RA_TRANSLATE_Y_REL, RA_COLOR_INC, RA_SHARPNESS_INC,
    RA_AUTOCONTRAST, RA_SOLARIZE_INC, RA_SOLARIZE_ADD, RA_CONTRAST_INC, RA_BRIGHTNESS_INC, RA_EQUALIZE,
    RA_POSTERIZE_INC, RA_INVERT,
};
static const double k_weights[15] = {3, 2, 2, 1, 1, .25, .25, .25, .05, .05, .05, .05, .05, .05, .05};

const char *randaug_op_name(RandAugOp op) { return op >= 0 && op < RA_OP_COUNT ? k_names[op] : "?"; }

void randaug_defaults(RandAugConfig *c) {
    memset(c, 0, sizeof *c);
    c->magnitude = 10;
    c->num_ops = 2;
    c->prob = 0.5f;
    c->translate_pct = 0.45;
    // timm's fill is the dataset mean in bytes; vit normalises with mean 0.5 (x/127.5 - 1),
    // and round(255 * 0.5) = 128, which is also timm's own default _FILL.
    c->fill[0] = c->fill[1] = c->fill[2] = 128;
    c->resample = RA_RESAMPLE_RANDOM;
}

// ---------------------------------------------------------------- policy string

// A whole-string base-10 integer (Python's int() on the digits timm splits off).
static int parse_int(const char *s, long *v) {
    char *end;
    errno = 0;
    *v = strtol(s, &end, 10);
    return *s && !*end && !errno && *v >= 0 && *v <= 1000000;
}

static int parse_double(const char *s, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return *s && !*end && !errno && isfinite(*v);
}

// One numeric section "<key><number>" (timm splits at the first digit). mstd and mmax keep
// their first value (timm's hparams.setdefault); the others their last.
static int parse_section(RandAugConfig *c, const char *sec, const char *flag, const char *spec, int *mstd_set,
                         int *mmax_set) {
    size_t k = strcspn(sec, "0123456789");
    if (!sec[k])
        return vit_fail("%s %s: section '%s' has no number (sections: m, n, p, mstd, mmax, inc, tweights)", flag,
                        spec, sec);
    char key[16];
    if (k >= sizeof key) return vit_fail("%s %s: unknown section '%s'", flag, spec, sec);
    memcpy(key, sec, k);
    key[k] = 0;
    const char *val = sec + k;
    long iv = 0;
    double dv = 0;
    if (!strcmp(key, "mstd") || !strcmp(key, "p")) {
        if (!parse_double(val, &dv))
            return vit_fail("%s %s: '%s': expected a number after '%s'", flag, spec, sec, key);
        if (!strcmp(key, "p")) {
            if (dv < 0 || dv > 1) return vit_fail("%s %s: '%s': p must be in [0, 1]", flag, spec, sec);
            c->prob = (float)dv;
        } else if (!*mstd_set) {
            c->mstd = dv > 100 ? INFINITY : dv;  // timm: above 100 means uniform in [0, m]
            *mstd_set = 1;
        }
        return VIT_OK;
    }
    if (strcmp(key, "m") && strcmp(key, "n") && strcmp(key, "mmax") && strcmp(key, "inc"))
        return vit_fail("%s %s: unknown section '%s' (sections: m, n, p, mstd, mmax, inc, tweights)", flag, spec,
                        sec);
    if (!parse_int(val, &iv)) return vit_fail("%s %s: '%s': expected an integer after '%s'", flag, spec, sec, key);
    if (!strcmp(key, "m")) {
        c->magnitude = (int)iv;
    } else if (!strcmp(key, "n")) {
        if (iv > RA_MAX_NUM_OPS) return vit_fail("%s %s: '%s': at most %d ops", flag, spec, sec, RA_MAX_NUM_OPS);
        c->num_ops = (int)iv;
    } else if (!strcmp(key, "mmax")) {
        if (!*mmax_set) c->mmax = (int)iv;
        *mmax_set = 1;
    } else {
        c->increasing = iv != 0;
    }
    return VIT_OK;
}

int randaug_parse(RandAugConfig *c, const char *spec, const char *flag) {
    randaug_defaults(c);
    if (!spec || !*spec) return VIT_OK;
    char buf[256];
    if (strlen(spec) >= sizeof buf) return vit_fail("%s: policy longer than %zu characters", flag, sizeof buf - 1);
    strcpy(buf, spec);
    char *save = NULL, *sec = strtok_r(buf, "-", &save);
    if (!sec || strcmp(sec, "rand") || spec[0] == '-')
        return vit_fail("%s %s: expected a RandAugment policy 'rand-...' (e.g. rand-m9-mstd0.5-inc1)", flag, spec);
    if (strstr(spec, "--") || spec[strlen(spec) - 1] == '-')
        return vit_fail("%s %s: empty section between '-'", flag, spec);
    int mstd_set = 0, mmax_set = 0;
    while ((sec = strtok_r(NULL, "-", &save))) {
        if (sec[0] == 't') {
            if (strcmp(sec, "tweights"))
                return vit_fail("%s %s: transform set '%s' is not supported (only tweights)", flag, spec, sec + 1);
            c->weighted = 1;
            continue;
        }
        if (parse_section(c, sec, flag, spec, &mstd_set, &mmax_set)) return VIT_ERR;
    }
    const RandAugOp *set = c->weighted ? k_weighted : c->increasing ? k_increasing : k_plain;
    c->n_choices = 15;
    for (int i = 0; i < 15; i++) {
        c->choices[i] = set[i];
        c->weights[i] = c->weighted ? k_weights[i] : 1.0;
    }
    if (c->weighted && c->num_ops > c->n_choices)
        return vit_fail("%s %s: n%d: tweights draws without replacement from %d ops", flag, spec, c->num_ops,
                        c->n_choices);
    c->enabled = 1;
    return VIT_OK;
}

// ---------------------------------------------------------------- levels and draws

double randaug_op_arg(RandAugOp op, double m, int negate, double translate_pct) {
    double s = negate ? -1.0 : 1.0, v;
    switch (op) {
    case RA_ROTATE: return s * ((m / LEVEL_DENOM) * 30.0);
    case RA_POSTERIZE: return (double)(int)((m / LEVEL_DENOM) * 4);
    case RA_POSTERIZE_INC: return 4.0 - (double)(int)((m / LEVEL_DENOM) * 4);
    case RA_SOLARIZE: v = (double)(int)((m / LEVEL_DENOM) * 256); return v < 256 ? v : 256;
    case RA_SOLARIZE_INC: v = (double)(int)((m / LEVEL_DENOM) * 256); return 256 - (v < 256 ? v : 256);
    case RA_SOLARIZE_ADD: v = (double)(int)((m / LEVEL_DENOM) * 110); return v < 128 ? v : 128;
    case RA_COLOR: case RA_CONTRAST: case RA_BRIGHTNESS: case RA_SHARPNESS:
        return (m / LEVEL_DENOM) * 1.8 + 0.1;
    case RA_COLOR_INC: case RA_CONTRAST_INC: case RA_BRIGHTNESS_INC: case RA_SHARPNESS_INC:
        v = 1.0 + s * ((m / LEVEL_DENOM) * 0.9);
        return v > 0.1 ? v : 0.1;
    case RA_SHEAR_X: case RA_SHEAR_Y: return s * ((m / LEVEL_DENOM) * 0.3);
    case RA_TRANSLATE_X_REL: case RA_TRANSLATE_Y_REL: return s * ((m / LEVEL_DENOM) * translate_pct);
    default: return 0.0;  // AutoContrast, Equalize, Invert take no argument
    }
}

// Uniform integer in [0, n) by multiply-shift.
static int uniform_int(uint32_t bits, int n) { return (int)(((uint64_t)bits * (uint32_t)n) >> 32); }

// Weighted choice among the entries not yet taken (numpy's choice without replacement is
// sequential sampling proportional to the remaining weights).
static int weighted_pick(const RandAugConfig *c, const int *taken, uint32_t bits) {
    double total = 0;
    for (int i = 0; i < c->n_choices; i++)
        if (!taken[i]) total += c->weights[i];
    double u = (double)bits / 4294967296.0 * total, acc = 0;
    int last = -1;
    for (int i = 0; i < c->n_choices; i++) {
        if (taken[i]) continue;
        acc += c->weights[i];
        last = i;
        if (u < acc) return i;
    }
    return last;
}

void randaug_draws(const RandAugConfig *c, uint64_t seed, uint32_t epoch, uint64_t index, RandAugDraw *out) {
    int taken[RA_MAX_CHOICES] = {0};
    const double upper = c->mmax ? c->mmax : LEVEL_DENOM;  // timm: magnitude_max or _LEVEL_DENOM
    for (int k = 0; k < c->num_ops && k < RA_MAX_NUM_OPS; k++) {
        Philox4 r = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), epoch, TAG_RA + 2u * (uint32_t)k);
        int i;
        if (c->weighted) {
            i = weighted_pick(c, taken, r.v[0]);
            taken[i] = 1;
        } else {
            i = uniform_int(r.v[0], c->n_choices);  // with replacement, as timm's uniform choice
        }
        RandAugDraw *d = &out[k];
        d->op = c->choices[i];
        d->applied = c->prob >= 1.0f || rng_u01(r.v[1]) < c->prob;
        d->negate = (int)(r.v[2] >> 31);
        d->resample = c->resample != RA_RESAMPLE_RANDOM ? c->resample : (r.v[3] >> 31) ? RA_BICUBIC : RA_BILINEAR;
        double m = c->magnitude;
        if (c->mstd > 0) {
            Philox4 q = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), epoch,
                                   TAG_RA + 2u * (uint32_t)k + 1u);
            if (isinf(c->mstd)) {
                m = m * ((double)q.v[2] / 4294967296.0);
            } else {
                double u1 = rng_u01_open(q.v[0]), u2 = rng_u01_open(q.v[1]);
                m += c->mstd * (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
            }
        }
        d->magnitude = m < upper ? (m > 0 ? m : 0) : upper;
    }
}

// ---------------------------------------------------------------- lookup-table ops

static void histogram(const uint8_t *px, size_t n, int ch, uint32_t h[3][256]) {
    memset(h, 0, sizeof(uint32_t) * 3 * 256);
    if (ch == 1) {
        for (size_t i = 0; i < n; i++) h[0][px[i]]++;
    } else {
        for (size_t i = 0; i < n; i++) {
            h[0][px[3 * i]]++;
            h[1][px[3 * i + 1]]++;
            h[2][px[3 * i + 2]]++;
        }
    }
}

static void apply_luts(uint8_t *px, size_t n, int ch, uint8_t lut[3][256]) {
    if (ch == 1) {
        for (size_t i = 0; i < n; i++) px[i] = lut[0][px[i]];
    } else {
        for (size_t i = 0; i < n; i++) {
            px[3 * i] = lut[0][px[3 * i]];
            px[3 * i + 1] = lut[1][px[3 * i + 1]];
            px[3 * i + 2] = lut[2][px[3 * i + 2]];
        }
    }
}

// ImageOps.autocontrast (cutoff 0): each band's [lo, hi] stretched to [0, 255].
static void autocontrast(uint8_t *px, size_t n, int ch) {
    uint32_t h[3][256];
    uint8_t lut[3][256];
    histogram(px, n, ch, h);
    for (int b = 0; b < ch; b++) {
        int lo = 0, hi = 255;
        while (lo < 255 && !h[b][lo]) lo++;
        while (hi > 0 && !h[b][hi]) hi--;
        if (hi <= lo) {
            for (int i = 0; i < 256; i++) lut[b][i] = (uint8_t)i;
            continue;
        }
        double scale = 255.0 / (hi - lo), offset = -lo * scale;
        for (int i = 0; i < 256; i++) {
            int v = (int)(i * scale + offset);  // Python's int(): toward zero
            lut[b][i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    apply_luts(px, n, ch, lut);
}

// ImageOps.equalize: each band through its cumulative histogram, with PIL's integer steps.
static void equalize(uint8_t *px, size_t n, int ch) {
    uint32_t h[3][256];
    uint8_t lut[3][256];
    histogram(px, n, ch, h);
    for (int b = 0; b < ch; b++) {
        uint64_t total = 0, last = 0;
        int nonzero = 0;
        for (int i = 0; i < 256; i++)
            if (h[b][i]) total += h[b][i], last = h[b][i], nonzero++;
        uint64_t step = nonzero > 1 ? (total - last) / 255 : 0;
        uint64_t acc = step / 2;
        for (int i = 0; i < 256; i++) {
            uint64_t v = step ? acc / step : (uint64_t)i;
            lut[b][i] = (uint8_t)(v < 255 ? v : 255);  // Image.point clips the table to bytes
            acc += h[b][i];
        }
    }
    apply_luts(px, n, ch, lut);
}

// Elementwise byte maps (ImageOps.invert/posterize/solarize, timm's solarize_add), written as
// arithmetic so the compiler vectorises them.
static void invert(uint8_t *px, size_t n) {
    for (size_t i = 0; i < n; i++) px[i] = (uint8_t)(255 - px[i]);
}

static void posterize(uint8_t *px, size_t n, int bits) {
    if (bits >= 8) return;  // timm returns the image unchanged
    // Pillow >= 12 refuses bits < 1 (timm then raises); older Pillow and TF keep 0 bits: black.
    uint8_t mask = bits <= 0 ? 0 : (uint8_t)(0xFFu << (8 - bits));
    for (size_t i = 0; i < n; i++) px[i] &= mask;
}

static void solarize(uint8_t *px, size_t n, int threshold) {
    for (size_t i = 0; i < n; i++) px[i] = px[i] < threshold ? px[i] : (uint8_t)(255 - px[i]);
}

static void solarize_add(uint8_t *px, size_t n, int add) {
    for (size_t i = 0; i < n; i++) {
        int v = px[i] + add;
        px[i] = px[i] < 128 ? (uint8_t)(v < 255 ? v : 255) : px[i];
    }
}

// ---------------------------------------------------------------- ImageEnhance

// PIL's ImagingBlend(degenerate, image, alpha) into img: alpha in [0, 1] truncates, outside
// it clips and truncates; float arithmetic as Pillow's.
static void blend(const uint8_t *deg, uint8_t *img, size_t n, float alpha) {
    if (alpha == 0.0f) {
        memcpy(img, deg, n);
    } else if (alpha == 1.0f) {
        return;
    } else if (alpha >= 0.0f && alpha <= 1.0f) {
        for (size_t i = 0; i < n; i++) img[i] = (uint8_t)((float)deg[i] + alpha * (float)(img[i] - deg[i]));
    } else {
        for (size_t i = 0; i < n; i++) {
            float t = (float)deg[i] + alpha * (float)(img[i] - deg[i]);
            t = t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t;
            img[i] = (uint8_t)t;
        }
    }
}

// The same against a constant degenerate image (Brightness: 0, Contrast: the mean gray).
static void blend_const(uint8_t *img, size_t n, int deg, float alpha) {
    if (alpha == 1.0f) return;
    const float d = (float)deg;
    if (alpha >= 0.0f && alpha <= 1.0f) {
        for (size_t i = 0; i < n; i++) img[i] = (uint8_t)(d + alpha * (float)(img[i] - deg));
    } else {
        for (size_t i = 0; i < n; i++) {
            float t = d + alpha * (float)(img[i] - deg);
            t = t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t;
            img[i] = (uint8_t)t;
        }
    }
}

// PIL's RGB -> L (Convert.c's L24, ITU-R 601-2 in 16-bit fixed point).
static inline int luma_l24(const uint8_t *p) { return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16; }

// ImageEnhance.Color: blend with the image's gray (convert("L") then back). A gray image is
// its own degenerate, so the op leaves it unchanged, as for PIL's mode "L".
static void color(uint8_t *px, size_t npix, int ch, float f, uint8_t *scratch) {
    if (ch == 1) return;
    for (size_t i = 0; i < npix; i++) {
        uint8_t g = (uint8_t)luma_l24(px + 3 * i);
        scratch[3 * i] = scratch[3 * i + 1] = scratch[3 * i + 2] = g;
    }
    blend(scratch, px, npix * 3, f);
}

// ImageEnhance.Contrast: blend with a constant image at the rounded mean luma.
static void contrast(uint8_t *px, size_t npix, int ch, float f) {
    uint64_t sum = 0;
    if (ch == 1)
        for (size_t i = 0; i < npix; i++) sum += px[i];
    else
        for (size_t i = 0; i < npix; i++) sum += (uint64_t)luma_l24(px + 3 * i);
    double mean = (double)sum / (double)npix;
    blend_const(px, npix * ch, (int)(mean + 0.5), f);
}

// ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1,
// scale 13; border pixels copied). Pillow's float sum + 0.5, truncated, equals the integer
// floor((2 S + 13) / 26) here, S being the weighted sum: never near a rounding boundary.
static void sharpness(uint8_t *px, int w, int h, int ch, float f, uint8_t *scratch) {
    const size_t stride = (size_t)w * ch;
    memcpy(scratch, px, stride * h);
    for (int y = 1; y < h - 1; y++) {
        const uint8_t *a = px + (size_t)(y - 1) * stride, *b = a + stride, *c = b + stride;
        uint8_t *o = scratch + (size_t)y * stride;
        for (size_t i = (size_t)ch; i < stride - ch; i++) {
            unsigned s = (unsigned)a[i - ch] + a[i] + a[i + ch] + b[i - ch] + 5u * b[i] + b[i + ch] + c[i - ch] + c[i] +
                         c[i + ch];
            o[i] = (uint8_t)((2u * s + 13u) / 26u);
        }
    }
    blend(scratch, px, stride * h, f);
}

// ---------------------------------------------------------------- affine transforms

// Image.transform(AFFINE, a, resample, fillcolor): output pixel (x, y) samples the input at
// (a0 (x + 1/2) + a1 (y + 1/2) + a2, a3 (x + 1/2) + a4 (y + 1/2) + a5) with Pillow's filters.
//
// Speed: a pixel's channels travel together in the lanes of one 4-double vector (the 4th lane
// of an RGB pixel is the next pixel's red, ignored), so each tap is one 4-byte load and the
// interpolation runs once per pixel instead of once per channel. Lane arithmetic is the
// scalar double arithmetic Pillow does, in the same order, so results stay bit-identical. The
// source is a copy with 16 bytes of slack after it, for the last pixel's 4-byte load.
//
// The helpers taking or returning these vectors are static and always inlined, so the 32-byte
// vector calling convention GCC warns about without AVX (-Wpsabi) is never used.
#define VINLINE static inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef double v4d __attribute__((vector_size(32)));

typedef struct {
    const uint8_t *src;  // w * h * ch bytes, then at least 3 readable bytes
    int w, h, ch;
    size_t stride;
    uint8_t fill[3];
} Warp;

static inline int clampi(int v, int hi) { return v < 0 ? 0 : v > hi ? hi : v; }

// A pixel's bytes as doubles (RGB: 4 lanes from one 4-byte load).
VINLINE v4d load_px(const uint8_t *p, int ch) {
    if (ch == 1) return (v4d){p[0], 0, 0, 0};
#ifdef __AVX__
    int32_t u;
    memcpy(&u, p, 4);
    return (v4d)_mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(u)));
#else
    return (v4d){p[0], p[1], p[2], p[3]};
#endif
}

// Pillow's BILINEAR(v, a, b, d) and BICUBIC (a = -1) macros, lane by lane. On bytes Pillow
// forms p2..p4 in integers; those are exact in doubles too, so one form serves both passes.
VINLINE v4d lerp(v4d a, v4d b, double d) { return a + (b - a) * d; }

VINLINE v4d cubic(v4d v1, v4d v2, v4d v3, v4d v4, double d) {
    v4d p1 = v2, p2 = -v1 + v3, p3 = 2 * (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4;
    return p1 + d * (p2 + d * (p3 + d * p4));
}

// Truncation toward zero with clipping to [0, 255]: Pillow's bicubic store; its bilinear
// results already lie in [0, 255], where this is the plain truncation Pillow does.
VINLINE void store_px(uint8_t *o, v4d v, int ch) {
    if (ch == 1) {
        o[0] = v[0] <= 0.0 ? 0 : v[0] >= 255.0 ? 255 : (uint8_t)v[0];
        return;
    }
#ifdef __AVX__
    // Truncate to int32, then saturate to bytes: the same as clip-then-truncate.
    __m128i i = _mm256_cvttpd_epi32((__m256d)v);
    i = _mm_packus_epi16(_mm_packus_epi32(i, i), i);
    uint32_t u = (uint32_t)_mm_cvtsi128_si32(i);
    memcpy(o, &u, 3);
#else
    for (int c = 0; c < 3; c++) o[c] = v[c] <= 0.0 ? 0 : v[c] >= 255.0 ? 255 : (uint8_t)v[c];
#endif
}

static inline void put_fill(uint8_t *o, const uint8_t *fill, int ch) {
    for (int c = 0; c < ch; c++) o[c] = fill[c];
}

// One output pixel with both coordinates general (rotation): (xs, ys) is the sample position
// inside the image minus 1/2 (Pillow's xin -= 0.5).
static inline __attribute__((always_inline)) void sample_bilinear(const Warp *g, double xs, double ys, uint8_t *out,
                                                                   const int ch) {
    const double fx = floor(xs), fy = floor(ys), dx = xs - fx, dy = ys - fy;
    const int x = (int)fx, y = (int)fy;
    const uint8_t *r0 = g->src + (size_t)clampi(y, g->h - 1) * g->stride;
    const int x0 = clampi(x, g->w - 1) * ch, x1 = clampi(x + 1, g->w - 1) * ch;
    v4d v1 = lerp(load_px(r0 + x0, ch), load_px(r0 + x1, ch), dx), v2 = v1;
    if (y + 1 < g->h) {  // y >= -1: the row below exists unless past the bottom
        const uint8_t *r1 = g->src + (size_t)(y + 1) * g->stride;
        v2 = lerp(load_px(r1 + x0, ch), load_px(r1 + x1, ch), dx);
    }
    store_px(out, lerp(v1, v2, dy), ch);
}

// A row's horizontal cubic at taps xi[0..3].
VINLINE v4d cubic_row(const uint8_t *r, const int *xi, int ch, double d) {
    return cubic(load_px(r + xi[0], ch), load_px(r + xi[1], ch), load_px(r + xi[2], ch), load_px(r + xi[3], ch), d);
}

static inline __attribute__((always_inline)) void sample_bicubic(const Warp *g, double xs, double ys, uint8_t *out,
                                                                  const int ch) {
    const double fx = floor(xs), fy = floor(ys), dx = xs - fx, dy = ys - fy;
    const int x = (int)fx - 1, y = (int)fy - 1;
    int xi[4];
    for (int i = 0; i < 4; i++) xi[i] = clampi(x + i, g->w - 1) * ch;
    // Rows past the edge repeat the previous row's value (Pillow's BICUBIC_BODY).
    v4d v[4];
    v[0] = cubic_row(g->src + (size_t)clampi(y, g->h - 1) * g->stride, xi, ch, dx);
    for (int j = 1; j < 4; j++)
        v[j] = y + j >= 0 && y + j < g->h ? cubic_row(g->src + (size_t)(y + j) * g->stride, xi, ch, dx) : v[j - 1];
    store_px(out, cubic(v[0], v[1], v[2], v[3], dy), ch);
}

// Per row, the positions, their floors and fractions are computed first (vector loops); a
// pixel whose taps all lie inside the image then reads them at fixed offsets, without the
// clamping and edge tests of the general samplers (same arithmetic, same bytes).
typedef struct {
    double *fx, *fy;  // w: position - 1/2, then its fraction
    int *ix, *iy;     // w: floors
    uint8_t *in;      // w: inside the image
} GenBuf;

static inline __attribute__((always_inline)) void general_row(const Warp *g, const double a[6], int resample, int y,
                                                              const GenBuf *b, uint8_t *o, const int ch) {
    const int w = g->w, lo = resample == RA_BICUBIC ? 1 : 0, hi = resample == RA_BICUBIC ? 2 : 1;
    const double yh = y + 0.5;
    for (int x = 0; x < w; x++) {
        const double xh = x + 0.5;
        double xin = a[0] * xh + a[1] * yh + a[2], yin = a[3] * xh + a[4] * yh + a[5];
        b->in[x] = xin >= 0.0 && xin < w && yin >= 0.0 && yin < g->h;
        b->fx[x] = xin - 0.5;
        b->fy[x] = yin - 0.5;
    }
    for (int x = 0; x < w; x++) {
        double f = floor(b->fx[x]), e = floor(b->fy[x]);
        b->ix[x] = (int)f, b->iy[x] = (int)e;
        b->fx[x] -= f, b->fy[x] -= e;
    }
    const size_t st = g->stride;
    for (int x = 0; x < w; x++, o += ch) {
        const int tx = b->ix[x], ty = b->iy[x];
        const double dx = b->fx[x], dy = b->fy[x];
        if (!b->in[x]) {
            put_fill(o, g->fill, ch);
        } else if (tx - lo < 0 || tx + hi >= w || ty - lo < 0 || ty + hi >= g->h) {
            // Near the edges: the general samplers (floor + fraction gives the position back exactly).
            if (resample == RA_BICUBIC) sample_bicubic(g, tx + dx, ty + dy, o, ch);
            else sample_bilinear(g, tx + dx, ty + dy, o, ch);
        } else if (resample == RA_BICUBIC) {
            const uint8_t *p = g->src + (size_t)(ty - 1) * st + (size_t)(tx - 1) * ch;
            const int xi[4] = {0, ch, 2 * ch, 3 * ch};
            v4d v1 = cubic_row(p, xi, ch, dx), v2 = cubic_row(p + st, xi, ch, dx);
            v4d v3 = cubic_row(p + 2 * st, xi, ch, dx), v4 = cubic_row(p + 3 * st, xi, ch, dx);
            store_px(o, cubic(v1, v2, v3, v4, dy), ch);
        } else {
            const uint8_t *p = g->src + (size_t)ty * st + (size_t)tx * ch;
            v4d v1 = lerp(load_px(p, ch), load_px(p + ch, ch), dx);
            v4d v2 = lerp(load_px(p + st, ch), load_px(p + st + ch, ch), dx);
            store_px(o, lerp(v1, v2, dy), ch);
        }
    }
}

static inline __attribute__((always_inline)) void warp_general_ch(const Warp *g, const double a[6], int resample,
                                                                  uint8_t *dst, const int ch) {
    const size_t w = (size_t)g->w;
    GenBuf b;
    b.fx = malloc(w * (2 * sizeof(double) + 2 * sizeof(int) + 1));
    if (!b.fx) {  // no room for the row buffers: every pixel through the general samplers
        for (int y = 0; y < g->h; y++)
            for (int x = 0; x < g->w; x++) {
                const double xh = x + 0.5, yh = y + 0.5;
                double xin = a[0] * xh + a[1] * yh + a[2], yin = a[3] * xh + a[4] * yh + a[5];
                uint8_t *o = dst + (size_t)y * g->stride + (size_t)x * ch;
                if (xin < 0.0 || xin >= g->w || yin < 0.0 || yin >= g->h) put_fill(o, g->fill, ch);
                else if (resample == RA_BICUBIC) sample_bicubic(g, xin - 0.5, yin - 0.5, o, ch);
                else sample_bilinear(g, xin - 0.5, yin - 0.5, o, ch);
            }
        return;
    }
    b.fy = b.fx + w;
    b.ix = (int *)(b.fy + w);
    b.iy = b.ix + w;
    b.in = (uint8_t *)(b.iy + w);
    for (int y = 0; y < g->h; y++) general_row(g, a, resample, y, &b, dst + (size_t)y * g->stride, ch);
    free(b.fx);
}

// Matrices whose y coordinate is y + 1/2 exactly (ShearX, TranslateX): the vertical weight is
// 0, which makes Pillow's 2-D filters their horizontal pass on row y alone, bit for bit.
//
// Per row, the sample positions are computed first (a vector loop). Where consecutive pixels
// read consecutive source pixels (tap = x + K for one K, no tap clamped) with the same
// fraction, they form a run, interpolated byte by byte from contiguous source bytes with one
// weight: a straight vector loop. (The fraction is the same across most of a row: x + 1/2 is
// a multiple of the rounding unit, so the rounding of the position only changes where the sum
// crosses a power of two.) The few other pixels take the per-pixel path. Both do Pillow's
// arithmetic, so the choice never changes a byte.
typedef struct {
    double *pos;   // w: sample position - 1/2, then its fraction
    int *tap;      // w: floor of it
    uint8_t *in;   // w: inside the image
} RowBuf;

// Bilinear over a run: o[j] = trunc(A[j] + (A[j + ch] - A[j]) d).
static void run_bilinear(const uint8_t *restrict A, double d, size_t n, int ch, uint8_t *restrict o) {
    const uint8_t *restrict B = A + ch;
    for (size_t j = 0; j < n; j++) o[j] = (uint8_t)(int)((double)A[j] + (double)(B[j] - A[j]) * d);
}

// Bicubic over a run: taps A - ch, A, A + ch, A + 2 ch; clipped, truncated.
static void run_bicubic(const uint8_t *restrict A, double t, size_t n, int ch, uint8_t *restrict o) {
    const uint8_t *restrict P = A - ch, *restrict B = A + ch, *restrict C = A + 2 * ch;
    for (size_t j = 0; j < n; j++) {
        double v1 = P[j], v2 = A[j], v3 = B[j], v4 = C[j];
        double p2 = -v1 + v3, p3 = 2 * (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4;
        double v = v2 + t * (p2 + t * (p3 + t * p4));
        v = v < 0.0 ? 0.0 : v;
        v = v > 255.0 ? 255.0 : v;
        o[j] = (uint8_t)(int)v;
    }
}

// One pixel of the horizontal pass with clamped taps (Pillow's XCLIP).
static inline __attribute__((always_inline)) void row_pixel(const uint8_t *r, int xf, double d, int wl, int resample,
                                                            uint8_t *o, const int ch) {
    if (resample == RA_BICUBIC) {
        int xi[4] = {clampi(xf - 1, wl) * ch, clampi(xf, wl) * ch, clampi(xf + 1, wl) * ch, clampi(xf + 2, wl) * ch};
        store_px(o, cubic_row(r, xi, ch, d), ch);
    } else {
        store_px(o, lerp(load_px(r + clampi(xf, wl) * ch, ch), load_px(r + clampi(xf + 1, wl) * ch, ch), d), ch);
    }
}

static inline __attribute__((always_inline)) void warp_row(const Warp *g, const double a[6], int resample, int y,
                                                           const RowBuf *b, uint8_t *dst, const int ch) {
    const int w = g->w, wl = w - 1, lo = resample == RA_BICUBIC ? 1 : 0, hi = resample == RA_BICUBIC ? 2 : 1;
    const double yh = y + 0.5;
    for (int x = 0; x < w; x++) {
        double xin = a[0] * (x + 0.5) + a[1] * yh + a[2];
        b->in[x] = xin >= 0.0 && xin < w;
        b->pos[x] = xin - 0.5;
    }
    for (int x = 0; x < w; x++) {
        double f = floor(b->pos[x]);
        b->tap[x] = (int)f;  // in range whenever the pixel is inside the image
        b->pos[x] -= f;
    }
    const uint8_t *r = g->src + (size_t)y * g->stride;
    uint8_t *o = dst + (size_t)y * g->stride;
    for (int x = 0; x < w;) {
        if (!b->in[x]) {
            put_fill(o + (size_t)x * ch, g->fill, ch);
            x++;
            continue;
        }
        const int k = b->tap[x] - x;
        const double d = b->pos[x];
        int e = x;
        while (e < w && b->in[e] && b->tap[e] - e == k && b->pos[e] == d && b->tap[e] - lo >= 0 && b->tap[e] + hi <= wl)
            e++;
        if (e - x < 4) {  // too short for a run: per pixel
            row_pixel(r, b->tap[x], d, wl, resample, o + (size_t)x * ch, ch);
            x++;
            continue;
        }
        const uint8_t *A = r + (size_t)(x + k) * ch;
        if (resample == RA_BICUBIC)
            run_bicubic(A, d, (size_t)(e - x) * ch, ch, o + (size_t)x * ch);
        else
            run_bilinear(A, d, (size_t)(e - x) * ch, ch, o + (size_t)x * ch);
        x = e;
    }
}

static void warp_rows(const Warp *g, const double a[6], int resample, uint8_t *dst) {
    const size_t w = (size_t)g->w;
    RowBuf b;
    b.pos = malloc(w * (sizeof(double) + sizeof(int) + 1));
    if (!b.pos) {  // no room for the row buffers: every pixel on the per-pixel path
        for (int y = 0; y < g->h; y++)
            for (int x = 0; x < g->w; x++) {
                double xin = a[0] * (x + 0.5) + a[1] * (y + 0.5) + a[2];
                uint8_t *o = dst + (size_t)y * g->stride + (size_t)x * g->ch;
                if (!(xin >= 0.0 && xin < g->w)) {
                    put_fill(o, g->fill, g->ch);
                } else {
                    double f = floor(xin - 0.5);
                    const uint8_t *r = g->src + (size_t)y * g->stride;
                    if (g->ch == 3) row_pixel(r, (int)f, xin - 0.5 - f, g->w - 1, resample, o, 3);
                    else row_pixel(r, (int)f, xin - 0.5 - f, g->w - 1, resample, o, 1);
                }
            }
        return;
    }
    b.tap = (int *)(b.pos + w);
    b.in = (uint8_t *)(b.tap + w);
    for (int y = 0; y < g->h; y++) {
        if (g->ch == 3) warp_row(g, a, resample, y, &b, dst, 3);
        else warp_row(g, a, resample, y, &b, dst, 1);
    }
    free(b.pos);
}

// dst (h x w) = src (w x h) transposed, `ch` bytes per pixel, in cache-sized tiles.
static inline __attribute__((always_inline)) void transpose_ch(const uint8_t *src, int w, int h, uint8_t *dst,
                                                               const int ch) {
    for (int y0 = 0; y0 < h; y0 += 32)
        for (int x0 = 0; x0 < w; x0 += 32)
            for (int y = y0; y < h && y < y0 + 32; y++)
                for (int x = x0; x < w && x < x0 + 32; x++)
                    memcpy(dst + ((size_t)x * h + y) * ch, src + ((size_t)y * w + x) * ch, (size_t)ch);
}

static void transpose(const uint8_t *src, int w, int h, int ch, uint8_t *dst) {
    if (ch == 3) transpose_ch(src, w, h, dst, 3);
    else transpose_ch(src, w, h, dst, 1);
}

// Matrices whose x coordinate is x + 1/2 exactly (ShearY, TranslateY): Pillow's vertical pass
// on column x. That is the horizontal pass on the transposed image with (1, a3, a5): its
// position (x' + 1/2) + a3 (y' + 1/2) + a5 is the same sum in the other order (exact), and
// Pillow's past-the-edge rows (the previous row's value) are the clamped taps of the
// horizontal pass. `tmp` holds w * h * ch + 16 bytes.
static void warp_cols(const Warp *g, const double a[6], int resample, uint8_t *dst, uint8_t *tmp) {
    const size_t n = (size_t)g->w * g->h * g->ch;
    transpose(g->src, g->w, g->h, g->ch, tmp);
    memset(tmp + n, 0, 16);
    Warp t = *g;
    t.src = tmp, t.w = g->h, t.h = g->w, t.stride = (size_t)g->h * g->ch;
    const double at[6] = {1, a[3], a[5], 0, 1, 0};
    uint8_t *out = (uint8_t *)g->src;  // the source copy is free again once transposed
    warp_rows(&t, at, resample, out);
    transpose(out, t.w, t.h, g->ch, dst);
}

// The warps compiled once per channel count, so the per-pixel code has no channel branches.
#define WARP_DISPATCH(name)                                                          \
    static void name(const Warp *g, const double a[6], int resample, uint8_t *dst) { \
        if (g->ch == 3)                                                              \
            name##_ch(g, a, resample, dst, 3);                                       \
        else                                                                         \
            name##_ch(g, a, resample, dst, 1);                                       \
    }
WARP_DISPATCH(warp_general)

// Python's round(x, 15), which Image.rotate applies to the matrix entries (printf rounds the
// exact binary value half-to-even, as Python does).
static double round15(double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15f", x);
    return strtod(buf, NULL);
}

// Image.rotate(deg, expand=False): Pillow's exact shortcuts for multiples of 90 degrees, else
// the affine transform about the center (w/2, h/2) with its rounded matrix. 1: handled here.
static int rotate_shortcut(const Warp *g, double angle, uint8_t *dst) {
    const int w = g->w, h = g->h, ch = g->ch;
    if (angle == 0) {
        memcpy(dst, g->src, g->stride * h);
        return 1;
    }
    int quarter = angle == 180 ? 2 : (angle == 90 || angle == 270) && w == h ? (angle == 90 ? 1 : 3) : 0;
    if (!quarter) return 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            // Source pixel of output (x, y): 180: (w-1-x, h-1-y); 90 (counter-clockwise):
            // (w-1-y, x); 270: (y, h-1-x).
            int sx = quarter == 2 ? w - 1 - x : quarter == 1 ? w - 1 - y : y;
            int sy = quarter == 2 ? h - 1 - y : quarter == 1 ? x : h - 1 - x;
            memcpy(dst + (size_t)y * g->stride + (size_t)x * ch, g->src + (size_t)sy * g->stride + (size_t)sx * ch,
                   (size_t)ch);
        }
    return 1;
}

static void rotate(const Warp *g, double degrees, int resample, uint8_t *dst) {
    double angle = fmod(degrees, 360.0);
    if (angle < 0) angle += 360.0;  // Python's % takes the divisor's sign
    if (rotate_shortcut(g, angle, dst)) return;
    const double rad = -(angle * (3.141592653589793 / 180.0)), cx = g->w / 2.0, cy = g->h / 2.0;
    double a[6] = {round15(cos(rad)), round15(sin(rad)), 0.0, round15(-sin(rad)), round15(cos(rad)), 0.0};
    const double t2 = a[0] * -cx + a[1] * -cy + a[2], t5 = a[3] * -cx + a[4] * -cy + a[5];
    a[2] = t2 + cx;
    a[5] = t5 + cy;
    warp_general(g, a, resample, dst);
}

// `scratch` (2 (w * h * ch + 16) bytes) receives a copy of the image, the warp's source, and
// the transposed image of the vertical warps.
static void geometric(RandAugOp op, double arg, int resample, const uint8_t fill[3], uint8_t *px, int w, int h,
                      int ch, uint8_t *scratch) {
    const size_t n = (size_t)w * h * ch;
    memcpy(scratch, px, n);
    memset(scratch + n, 0, 16);
    Warp g = {scratch, w, h, ch, (size_t)w * ch, {fill[0], fill[1], fill[2]}};
    if (ch == 1) g.fill[0] = (uint8_t)luma_l24(fill);  // the fill colour as PIL's "L" would have it
    double a[6] = {1, 0, 0, 0, 1, 0};
    switch (op) {
    case RA_ROTATE: rotate(&g, arg, resample, px); break;
    case RA_SHEAR_X: a[1] = arg; warp_rows(&g, a, resample, px); break;
    case RA_TRANSLATE_X_REL: a[2] = arg * w; warp_rows(&g, a, resample, px); break;
    case RA_SHEAR_Y: a[3] = arg; warp_cols(&g, a, resample, px, scratch + n + 16); break;
    default: a[5] = arg * h; warp_cols(&g, a, resample, px, scratch + n + 16); break;  // RA_TRANSLATE_Y_REL
    }
}

// ---------------------------------------------------------------- entry points

void randaug_apply_op(RandAugOp op, double arg, int resample, const uint8_t fill[3], uint8_t *px, int w, int h,
                      int ch, uint8_t *scratch) {
    const size_t npix = (size_t)w * h, n = npix * ch;
    switch (op) {
    case RA_AUTOCONTRAST: autocontrast(px, npix, ch); break;
    case RA_EQUALIZE: equalize(px, npix, ch); break;
    case RA_INVERT: invert(px, n); break;
    case RA_POSTERIZE: case RA_POSTERIZE_INC: posterize(px, n, (int)arg); break;
    case RA_SOLARIZE: case RA_SOLARIZE_INC: solarize(px, n, (int)arg); break;
    case RA_SOLARIZE_ADD: solarize_add(px, n, (int)arg); break;
    // ImageEnhance passes the factor to Image.blend as a C float.
    case RA_COLOR: case RA_COLOR_INC: color(px, npix, ch, (float)arg, scratch); break;
    case RA_CONTRAST: case RA_CONTRAST_INC: contrast(px, npix, ch, (float)arg); break;
    case RA_BRIGHTNESS: case RA_BRIGHTNESS_INC: blend_const(px, n, 0, (float)arg); break;
    case RA_SHARPNESS: case RA_SHARPNESS_INC: sharpness(px, w, h, ch, (float)arg, scratch); break;
    case RA_ROTATE: case RA_SHEAR_X: case RA_SHEAR_Y: case RA_TRANSLATE_X_REL: case RA_TRANSLATE_Y_REL:
        geometric(op, arg, resample, fill, px, w, h, ch, scratch);
        break;
    default: break;
    }
}

int randaug_apply(const RandAugConfig *c, uint8_t *px, int w, int h, int channels, uint64_t seed, uint32_t epoch,
                  uint64_t index) {
    if (!c || !c->enabled || c->num_ops <= 0) return VIT_OK;
    RandAugDraw d[RA_MAX_NUM_OPS];
    randaug_draws(c, seed, epoch, index, d);
    uint8_t *scratch = NULL;
    for (int k = 0; k < c->num_ops && k < RA_MAX_NUM_OPS; k++) {
        if (!d[k].applied) continue;
        if (!scratch && !(scratch = malloc(2 * ((size_t)w * h * channels + 16))))
            return vit_fail("RandAugment: out of memory for a %dx%d image", w, h);
        double arg = randaug_op_arg(d[k].op, d[k].magnitude, d[k].negate, c->translate_pct);
        randaug_apply_op(d[k].op, arg, d[k].resample, c->fill, px, w, h, channels, scratch);
    }
    free(scratch);
    return VIT_OK;
}
