// The recipe's training augmentation. Randomness: one Philox call per decision group, with
// key = seed and counter = (index low, index high, epoch, tag); the tag separates the crop
// attempts from the photometric draws, so an image's result is a pure function of
// (seed, epoch, index) whatever thread or order computes it.
//
// Speed: the crop is never materialised. Each output row interpolates two window rows
// vertically over the window's full width (contiguous bytes, vectorised), then gathers the
// output columns horizontally into planar R, G, B rows, on which brightness, saturation,
// clipping and rounding run as straight vector loops. Flipping just reverses the column taps.
#include "data/augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/rng.h"
#include "util/status.h"

// Counter tags (the fourth Philox word): crop attempt i uses TAG_CROP + i, the photometric
// draws TAG_PHOTO. Distinct high bytes keep them apart for up to 2^24 attempts.
#define TAG_CROP 0x43000000u
#define TAG_PHOTO 0x50000000u
#define MAX_ATTEMPTS (1 << 24)
// Largest output side accepted: keeps every size product far from int overflow.
#define MAX_SIZE 16384

void augment_defaults(AugmentConfig *a) {
    a->min_object_covered = 0.6f;
    a->aspect_min = 0.75f;
    a->aspect_max = 1.33f;
    a->area_min = 0.6f;
    a->area_max = 1.0f;
    a->attempts = 100;
    a->brightness = 32.0f / 255.0f;
    a->saturation_lo = 0.5f;
    a->saturation_hi = 1.5f;
    a->rotate_deg = 0.0f;
    a->flip = 1;
    randaug_defaults(&a->ra);
    erase_defaults(&a->erase);
}

int augment_set_timm(AugmentConfig *a, const char *aa, float reprob, const char *remode, int recount) {
    if (randaug_parse(&a->ra, aa ? aa : "", "--aa")) return VIT_ERR;
    if (!(reprob >= 0.0f && reprob <= 1.0f)) return vit_fail("--reprob %g: must be in [0, 1]", reprob);
    if (recount < 1 || recount > ERASE_MAX_COUNT)
        return vit_fail("--recount %d: must be in [1, %d]", recount, ERASE_MAX_COUNT);
    if (erase_parse_mode(remode ? remode : "pixel", &a->erase.mode, "--remode")) return VIT_ERR;
    a->erase.prob = reprob;
    a->erase.max_count = recount;
    return VIT_OK;
}

int augment_extra(uint8_t *px, int size, int channels, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                  uint64_t index) {
    if (!a || !px) return VIT_OK;
    if (randaug_apply(&a->ra, px, size, size, channels, seed, epoch, index)) return VIT_ERR;
    random_erase(&a->erase, px, size, size, channels, seed, epoch, index);
    return VIT_OK;
}

static Philox4 draw(uint64_t seed, uint32_t epoch, uint64_t index, uint32_t tag) {
    return philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), epoch, tag);
}

// Uniform integer in [0, n) by multiply-shift (bias below 2^-32 * n: irrelevant here).
static int uniform_int(uint32_t bits, int n) { return (int)(((uint64_t)bits * (uint32_t)n) >> 32); }

// One attempt of TF's GenerateRandomCrop (sample_distorted_bounding_box_op.cc): the height is
// uniform over the integers between the heights giving the minimum and the maximum area at
// this aspect ratio (capped so the width and height fit), the width is round(height * aspect),
// and a rounding miss of the area range is repaired by one step up or down before giving up.
// Float arithmetic as TF's, so the same windows are accepted. Returns 0 when it fails.
static int random_crop(int W, int H, float amin, float amax, float aspect, Philox4 r, int *x, int *y, int *w,
                       int *h) {
    if (!(amax > 0) || !(aspect > 0) || amin > amax) return 0;
    const float min_area = amin * (float)W * (float)H, max_area = amax * (float)W * (float)H;
    long height = lrintf(sqrtf(min_area / aspect));
    long max_height = lrintf(sqrtf(max_area / aspect));
    if (lrintf((float)max_height * aspect) > W) {
        // The largest height whose rounded width still fits.
        max_height = (long)(((double)W + 0.5 - 1e-7) / aspect);
        if (lrintf((float)max_height * aspect) > W) max_height--;
    }
    if (max_height > H) max_height = H;
    if (height >= max_height) height = max_height;
    if (height < max_height) height += uniform_int(r.v[1], (int)(max_height - height + 1));
    long width = lrintf((float)height * aspect);
    float area = (float)width * (float)height;
    if (area < min_area) {
        height++;
        width = lrintf((float)height * aspect);
        area = (float)width * (float)height;
    }
    if (area > max_area) {
        height--;
        width = lrintf((float)height * aspect);
        area = (float)width * (float)height;
    }
    if (area < min_area || area > max_area || width > W || height > H || width <= 0 || height <= 0) return 0;
    // TF draws offsets in [0, W - width), never touching the right/bottom edge; we take every
    // valid offset, [0, W - width], so the distribution is symmetric under flips.
    *y = uniform_int(r.v[2], (int)(H - height + 1));
    *x = uniform_int(r.v[3], (int)(W - width + 1));
    *w = (int)width;
    *h = (int)height;
    return 1;
}

void augment_crop_window(int width, int height, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                         uint64_t index, int *x, int *y, int *w, int *h) {
    *x = *y = 0;
    *w = width > 0 ? width : 0;
    *h = height > 0 ? height : 0;
    if (width <= 0 || height <= 0 || !a) return;
    int attempts = a->attempts < MAX_ATTEMPTS ? a->attempts : MAX_ATTEMPTS;
    // The one bounding box is the whole image, so "covers min_object_covered of it" is a
    // bound on the crop's area fraction (TF also rejects crops under one pixel).
    const float image_area = (float)((long long)width * height);
    for (int i = 0; i < attempts; i++) {
        Philox4 r = draw(seed, epoch, index, TAG_CROP + (uint32_t)i);
        float aspect = rng_u01(r.v[0]) * (a->aspect_max - a->aspect_min) + a->aspect_min;
        int cx, cy, cw, ch;
        if (!random_crop(width, height, a->area_min, a->area_max, aspect, r, &cx, &cy, &cw, &ch)) continue;
        float area = (float)((long long)cw * ch);
        if (area < 1.0f || area / image_area < a->min_object_covered) continue;
        *x = cx, *y = cy, *w = cw, *h = ch;
        return;
    }
}

// ---------------------------------------------------------------- resize

// Half-pixel-centered source position of output i along one axis, clamped to the window (so
// both taps coincide at the borders, as TF's resize and PIL's edge normalisation do).
static void axis_tap(int i, int in_len, int out_len, int *i0, int *i1, float *t) {
    double s = ((double)i + 0.5) * ((double)in_len / (double)out_len) - 0.5;
    if (s < 0) s = 0;
    if (s > in_len - 1) s = in_len - 1;
    int k = (int)s;
    *i0 = k;
    *i1 = k + 1 < in_len ? k + 1 : in_len - 1;
    *t = (float)(s - k);
}

typedef struct {
    const uint8_t *src;  // top-left pixel of the window
    size_t stride;       // bytes per image row
    int cw, ch, dw, dh;
    int *xa, *xb;        // per output column: byte offsets of the left / right tap in a window row
    float *xt;           // per output column: weight of the right tap
    float *vrow;         // cw * 3 floats, or NULL for the direct path
} Resizer;

// Scratch floats the resizer needs beyond its tap tables.
static size_t resizer_floats(int cw, int dw) { return cw <= 2 * dw ? (size_t)cw * 3 : 0; }

// `mem` holds 3 * dw + resizer_floats(cw, dw) floats (ints and floats are both 4 bytes).
static void resizer_init(Resizer *r, const uint8_t *px, int sw, int x0, int y0, int cw, int ch, int dw, int dh,
                         int flip, float *mem) {
    r->stride = (size_t)sw * 3;
    r->src = px + (size_t)y0 * r->stride + (size_t)x0 * 3;
    r->cw = cw, r->ch = ch, r->dw = dw, r->dh = dh;
    r->xa = (int *)mem;
    r->xb = (int *)(mem + dw);
    r->xt = mem + 2 * (size_t)dw;
    // Vertical-first touches every window column once per output row: the cheaper order
    // unless the window is over twice as wide as the output, when most columns go unused.
    r->vrow = resizer_floats(cw, dw) ? mem + 3 * (size_t)dw : NULL;
    for (int j = 0; j < dw; j++) {
        int i0, i1;
        float t;
        axis_tap(j, cw, dw, &i0, &i1, &t);
        int o = flip ? dw - 1 - j : j;  // flipping after the resize = mirrored column taps
        r->xa[o] = 3 * i0;
        r->xb[o] = 3 * i1;
        r->xt[o] = t;
    }
}

// Output row y as planar floats in [0, 255].
static void resize_row(const Resizer *r, int y, float *restrict R, float *restrict G, float *restrict B) {
    int i0, i1;
    float ty;
    axis_tap(y, r->ch, r->dh, &i0, &i1, &ty);
    const uint8_t *restrict r0 = r->src + (size_t)i0 * r->stride;
    const uint8_t *restrict r1 = r->src + (size_t)i1 * r->stride;
    const int *xa = r->xa, *xb = r->xb;
    const float *xt = r->xt;
    if (r->vrow) {
        float *restrict v = r->vrow;
        const int n = r->cw * 3;
        for (int k = 0; k < n; k++) v[k] = (float)r0[k] + (float)(r1[k] - r0[k]) * ty;
        for (int j = 0; j < r->dw; j++) {
            const float *a = v + xa[j], *b = v + xb[j];
            float t = xt[j];
            R[j] = a[0] + (b[0] - a[0]) * t;
            G[j] = a[1] + (b[1] - a[1]) * t;
            B[j] = a[2] + (b[2] - a[2]) * t;
        }
    } else {
        float *out[3] = {R, G, B};
        for (int j = 0; j < r->dw; j++) {
            int a = xa[j], b = xb[j];
            float t = xt[j];
            for (int c = 0; c < 3; c++) {
                float top = (float)r0[a + c] + (float)(r0[b + c] - r0[a + c]) * t;
                float bot = (float)r1[a + c] + (float)(r1[b + c] - r1[a + c]) * t;
                out[c][j] = top + (bot - top) * ty;
            }
        }
    }
}

// Rounds clamped planar floats in [0, 255] to interleaved bytes: RGB, or luma for 1 channel.
static void store_row(const float *R, const float *G, const float *B, int n, int channels, uint8_t *out) {
    if (channels == 3) {
        for (int j = 0; j < n; j++) {
            out[3 * j] = (uint8_t)(R[j] + 0.5f);
            out[3 * j + 1] = (uint8_t)(G[j] + 0.5f);
            out[3 * j + 2] = (uint8_t)(B[j] + 0.5f);
        }
    } else {
        for (int j = 0; j < n; j++) {
            float l = 0.299f * R[j] + 0.587f * G[j] + 0.114f * B[j] + 0.5f;
            out[j] = (uint8_t)(l < 255.0f ? l : 255.0f);  // the weights may sum to 1 + ulp
        }
    }
}

static int check_window(int sw, int sh, int x0, int y0, int cw, int ch, int dw, int dh) {
    if (sw < 1 || sh < 1 || cw < 1 || ch < 1 || x0 < 0 || y0 < 0 || x0 > sw - cw || y0 > sh - ch)
        return vit_fail("resize: window %dx%d at (%d, %d) not inside the %dx%d image", cw, ch, x0, y0, sw, sh);
    if (dw < 1 || dh < 1 || dw > MAX_SIZE || dh > MAX_SIZE)
        return vit_fail("resize: output size %dx%d out of range [1, %d]", dw, dh, MAX_SIZE);
    return VIT_OK;
}

int augment_resize_bilinear(const uint8_t *src, int sw, int sh, int x0, int y0, int cw, int ch, uint8_t *dst,
                            int dw, int dh) {
    if (!src || !dst) return vit_fail("resize: null image");
    if (check_window(sw, sh, x0, y0, cw, ch, dw, dh)) return VIT_ERR;
    float *mem = malloc((6 * (size_t)dw + resizer_floats(cw, dw)) * sizeof *mem);
    if (!mem) return vit_fail("resize: out of memory");
    float *R = mem, *G = R + dw, *B = G + dw;
    Resizer r;
    resizer_init(&r, src, sw, x0, y0, cw, ch, dw, dh, 0, B + dw);
    for (int y = 0; y < dh; y++) {
        resize_row(&r, y, R, G, B);
        // Interpolation keeps values in [0, 255]; clamp only against rounding of the weights.
        for (int j = 0; j < dw; j++) {
            R[j] = R[j] < 255.0f ? R[j] : 255.0f;
            G[j] = G[j] < 255.0f ? G[j] : 255.0f;
            B[j] = B[j] < 255.0f ? B[j] : 255.0f;
        }
        store_row(R, G, B, dw, 3, dst + (size_t)y * dw * 3);
    }
    free(mem);
    return VIT_OK;
}

// ---------------------------------------------------------------- photometric

// Brightness then TF's adjust_saturation then clipping, for one pixel in [0, hi] units.
// TF converts to HSV, scales S = range / V by `sat`, clips S to [0, 1] and converts back.
// Hue and V are unchanged, so every channel keeps its place between min and max:
// c' = V - (V - c) * S'/S, with S'/S = min(sat, V / range). That closed form needs no hue,
// no branches and no per-sector cases, so it vectorises. V <= 0 gives S = 0 in TF, hence
// a gray pixel at V: the ratio 0 does that; range 0 leaves the pixel as it is either way.
static inline void color_pixel(float *pr, float *pg, float *pb, float delta, float sat, float hi) {
    float r = *pr + delta, g = *pg + delta, b = *pb + delta;
    float v = r > g ? r : g;
    v = v > b ? v : b;
    float m = r < g ? r : g;
    m = m < b ? m : b;
    float range = v - m;
    float k = v / (range > 1e-20f ? range : 1e-20f);
    k = k < sat ? k : sat;
    k = k > 0.0f ? k : 0.0f;
    r = v - (v - r) * k;
    g = v - (v - g) * k;
    b = v - (v - b) * k;
    r = r < 0.0f ? 0.0f : r > hi ? hi : r;
    g = g < 0.0f ? 0.0f : g > hi ? hi : g;
    b = b < 0.0f ? 0.0f : b > hi ? hi : b;
    *pr = r, *pg = g, *pb = b;
}

void augment_color(float *rgb, size_t n, float delta, float saturation) {
    for (size_t i = 0; i < n; i++) color_pixel(rgb + 3 * i, rgb + 3 * i + 1, rgb + 3 * i + 2, delta, saturation, 1.0f);
}

static void color_row(float *restrict R, float *restrict G, float *restrict B, int n, float delta, float sat) {
    for (int j = 0; j < n; j++) color_pixel(R + j, G + j, B + j, delta, sat, 255.0f);
}

// ---------------------------------------------------------------- rotation

// Row y of the planar size x size image P (3 planes) rotated about its center by the angle
// with cosine cs and sine sn: bilinear sampling, neighbours outside the image count as 0.
static void rotate_row(const float *P, int size, int y, float cs, float sn, float *R, float *G, float *B) {
    const size_t plane = (size_t)size * size;
    const float c = 0.5f * (float)(size - 1), dy = (float)y - c;
    for (int x = 0; x < size; x++) {
        float dx = (float)x - c;
        // Inverse mapping: where in the source the output pixel comes from.
        float sx = cs * dx + sn * dy + c, sy = -sn * dx + cs * dy + c;
        float fx0 = floorf(sx), fy0 = floorf(sy);
        int x0 = (int)fx0, y0 = (int)fy0;
        float tx = sx - fx0, ty = sy - fy0;
        float w[4] = {(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty};
        int xs[4] = {x0, x0 + 1, x0, x0 + 1}, ys[4] = {y0, y0, y0 + 1, y0 + 1};
        float acc[3] = {0, 0, 0};
        for (int k = 0; k < 4; k++) {
            if (xs[k] < 0 || xs[k] >= size || ys[k] < 0 || ys[k] >= size) continue;
            size_t o = (size_t)ys[k] * size + xs[k];
            for (int ch = 0; ch < 3; ch++) acc[ch] += w[k] * P[ch * plane + o];
        }
        R[x] = acc[0], G[x] = acc[1], B[x] = acc[2];
    }
}

// ---------------------------------------------------------------- entry point

int augment_train(const Image *img, int size, int channels, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                  uint64_t index, uint8_t *out) {
    if (size < 1 || size > MAX_SIZE) return vit_fail("augment: size must be in [1, %d] (got %d)", MAX_SIZE, size);
    if (channels != 1 && channels != 3)
        return vit_fail("augment: channels must be 1 or 3 (got %d)", channels);
    if (!img || !img->pixels || img->width < 1 || img->height < 1) return vit_fail("augment: empty image");
    if (!a || !out) return vit_fail("augment: null config or output");

    int x0, y0, cw, ch;
    augment_crop_window(img->width, img->height, a, seed, epoch, index, &x0, &y0, &cw, &ch);

    // Independent draws, one 32-bit word each: flip, brightness, saturation, angle.
    Philox4 r = draw(seed, epoch, index, TAG_PHOTO);
    const int flip = a->flip && (r.v[0] >> 31);
    const float delta = (2.0f * rng_u01(r.v[1]) - 1.0f) * a->brightness * 255.0f;  // in [0, 255] units
    const float sat = a->saturation_lo + rng_u01(r.v[2]) * (a->saturation_hi - a->saturation_lo);
    const float angle = a->rotate_deg > 0 ? (2.0f * rng_u01(r.v[3]) - 1.0f) * a->rotate_deg : 0.0f;
    const int rotate = angle != 0.0f;

    // One block: three planar rows, the resizer's tables and row, and for rotation the whole
    // resized image (planar), which the rotation samples from.
    const size_t plane = (size_t)size * size;
    const size_t floats = 3 * (size_t)size + 3 * (size_t)size + resizer_floats(cw, size) + (rotate ? 3 * plane : 0);
    // RandAugment works on the RGB bytes of the crop (timm's PIL image); a 1-channel model
    // then gets their luma, so the crop goes to a separate RGB buffer first.
    const int ra = a->ra.enabled && a->ra.num_ops > 0, sch = ra ? 3 : channels;
    uint8_t *rgb = ra && channels == 1 ? malloc(plane * 3) : NULL, *dst = rgb ? rgb : out;
    float *mem = malloc(floats * sizeof *mem);
    if (!mem || (ra && channels == 1 && !rgb)) {
        free(mem);
        free(rgb);
        return vit_fail("augment: out of memory for a %dx%d image", size, size);
    }
    float *R = mem, *G = R + size, *B = G + size, *full = B + size;
    Resizer rs;
    resizer_init(&rs, img->pixels, img->width, x0, y0, cw, ch, size, size, flip, full + (rotate ? 3 * plane : 0));

    if (rotate) {
        for (int y = 0; y < size; y++)
            resize_row(&rs, y, full + (size_t)y * size, full + plane + (size_t)y * size,
                       full + 2 * plane + (size_t)y * size);
        const float rad = angle * 0.017453292519943295f  /* pi / 180 */;
        const float cs = cosf(rad), sn = sinf(rad);
        for (int y = 0; y < size; y++) {
            rotate_row(full, size, y, cs, sn, R, G, B);
            color_row(R, G, B, size, delta, sat);
            store_row(R, G, B, size, sch, dst + (size_t)y * size * sch);
        }
    } else {
        for (int y = 0; y < size; y++) {
            resize_row(&rs, y, R, G, B);
            color_row(R, G, B, size, delta, sat);
            store_row(R, G, B, size, sch, dst + (size_t)y * size * sch);
        }
    }
    free(mem);
    int rc = ra ? randaug_apply(&a->ra, dst, size, size, 3, seed, epoch, index) : VIT_OK;
    if (rgb) {
        for (size_t i = 0; i < plane; i++) {
            const uint8_t *p = rgb + 3 * i;
            float l = 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2] + 0.5f;  // store_row's luma
            out[i] = (uint8_t)(l < 255.0f ? l : 255.0f);
        }
        free(rgb);
    }
    if (rc == VIT_OK) random_erase(&a->erase, out, size, size, channels, seed, epoch, index);
    return rc;
}
