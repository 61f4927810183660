// The training augmentation: crop windows against TF's sample_distorted_bounding_box rules,
// the resize against PIL (fixture from tools/check_resize.py), the saturation against a port
// of TF's HSV round trip, flip/brightness/saturation/rotation ranges, determinism in
// (seed, epoch, index), and identical bytes from two threads and from one. Ends with a speed
// figure (augment alone, and JPEG decode + augment) for a 500x375 photo at 224.
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "check.h"
#include "data/augment.h"
#include "data/image.h"
#include "util/clock.h"
#include "util/status.h"

static const char *g_fixture = "tests/fixtures/resize_pil.bin";

// A 500x375 photo stand-in: smooth gradients plus mild noise, nothing left-right symmetric.
static Image make_image(int w, int h, unsigned seed) {
    Image img = {malloc((size_t)w * h * 3), w, h};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            seed = seed * 1103515245u + 12345u;
            int n = (int)((seed >> 16) % 17) - 8;
            uint8_t *p = img.pixels + ((size_t)y * w + x) * 3;
            int v[3] = {40 + 170 * x / w + n, 30 + 190 * y / h + n, 128 + (int)(60 * sin(x * 0.05 + y * 0.03)) + n};
            for (int c = 0; c < 3; c++) p[c] = (uint8_t)(v[c] < 0 ? 0 : v[c] > 255 ? 255 : v[c]);
        }
    return img;
}

static Image make_uniform(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
    Image img = {malloc((size_t)w * h * 3), w, h};
    for (size_t i = 0; i < (size_t)w * h; i++) img.pixels[3 * i] = r, img.pixels[3 * i + 1] = g, img.pixels[3 * i + 2] = b;
    return img;
}

// ---------------------------------------------------------------- crop window

static void test_defaults(void) {
    AugmentConfig a;
    augment_defaults(&a);
    CHECK(a.min_object_covered == 0.6f && a.aspect_min == 0.75f && a.aspect_max == 1.33f && a.area_min == 0.6f &&
              a.area_max == 1.0f && a.attempts == 100,
          "crop defaults");
    CHECK(fabsf(a.brightness - 32.0f / 255.0f) < 1e-7f && a.saturation_lo == 0.5f && a.saturation_hi == 1.5f,
          "photometric defaults");
    CHECK(a.rotate_deg == 0 && a.flip == 1, "rotate 0, flip on");
}

static void test_crop_window(int W, int H) {
    AugmentConfig a;
    augment_defaults(&a);
    const int n = 2000;
    int inside = 1, area_ok = 1, aspect_ok = 1, whole = 0, x_min = W, x_max = 0, same_as_first = 0;
    double area_sum = 0, aspect_sum = 0, first = -1;
    for (int i = 0; i < n; i++) {
        int x, y, w, h;
        augment_crop_window(W, H, &a, 7, 3, (uint64_t)i, &x, &y, &w, &h);
        if (x < 0 || y < 0 || w < 1 || h < 1 || x + w > W || y + h > H) {
            if (inside) CHECK(0, "%dx%d draw %d: window %dx%d at (%d,%d) outside", W, H, i, w, h, x, y);
            inside = 0;
            continue;
        }
        double frac = (double)w * h / ((double)W * H);
        // TF compares the float area with 0.6 * W * H exactly: no slack below.
        if (frac < 0.6 - 1e-6 || frac > 1.0) {
            if (area_ok) CHECK(0, "%dx%d draw %d: area fraction %.4f", W, H, i, frac);
            area_ok = 0;
        }
        // w = round(h * aspect): the ratio may miss the range by half a pixel over h (and by the
        // one-step height repair, another pixel).
        double asp = (double)w / h, slack = 1.5 / h;
        if (asp < 0.75 - slack || asp > 1.33 + slack) {
            if (aspect_ok) CHECK(0, "%dx%d draw %d: aspect %.4f (%dx%d)", W, H, i, asp, w, h);
            aspect_ok = 0;
        }
        whole += x == 0 && y == 0 && w == W && h == H;
        area_sum += frac;
        aspect_sum += asp;
        if (x < x_min) x_min = x;
        if (x + w > x_max) x_max = x + w;
        if (first < 0) first = frac;
        same_as_first += frac == first;
        int x2, y2, w2, h2;
        augment_crop_window(W, H, &a, 7, 3, (uint64_t)i, &x2, &y2, &w2, &h2);
        if (x2 != x || y2 != y || w2 != w || h2 != h) CHECK(0, "crop window not deterministic at %d", i);
    }
    CHECK(inside, "%dx%d: all %d windows inside the image", W, H, n);
    CHECK(area_ok, "%dx%d: area fractions within [0.6, 1]", W, H);
    CHECK(aspect_ok, "%dx%d: aspect ratios within [0.75, 1.33] up to rounding", W, H);
    // Some aspect ratio always fits a 4:3 photo, so the fallback must be (nearly) unused.
    CHECK(whole < n / 50, "%dx%d: %d of %d draws fell back to the whole image", W, H, whole, n);
    // Height uniform between the limits: for 4:3 images the mean fraction lands near 0.7-0.75
    // (the image's short side caps the larger windows).
    double mean_area = area_sum / n, mean_aspect = aspect_sum / n;
    CHECK(mean_area > 0.66 && mean_area < 0.85, "%dx%d: mean area fraction %.3f", W, H, mean_area);
    CHECK(mean_aspect > 0.9 && mean_aspect < 1.2, "%dx%d: mean aspect %.3f", W, H, mean_aspect);
    CHECK(same_as_first < n / 10, "%dx%d: windows vary (%d repeats of the first)", W, H, same_as_first);
    CHECK(x_min == 0 && x_max == W, "%dx%d: windows reach both edges (x from %d to %d)", W, H, x_min, x_max);
    printf("crop %dx%d: mean area %.3f, mean aspect %.3f, fallback %d/%d\n", W, H, mean_area, mean_aspect, whole, n);
}

static void test_crop_fallback(void) {
    AugmentConfig a;
    augment_defaults(&a);
    int x, y, w, h, whole = 0;
    // 1x100: any aspect in [0.75, 1.33] needs a width near the height, so nothing fits.
    for (int i = 0; i < 200; i++) {
        augment_crop_window(1, 100, &a, 1, 0, (uint64_t)i, &x, &y, &w, &h);
        whole += x == 0 && y == 0 && w == 1 && h == 100;
    }
    CHECK(whole == 200, "1x100: whole image every time (%d/200)", whole);
    // 640x200: 60% of the area needs a width of at least 384 at height 200, aspect >= 1.92.
    augment_crop_window(640, 200, &a, 1, 0, 5, &x, &y, &w, &h);
    CHECK(x == 0 && y == 0 && w == 640 && h == 200, "640x200: whole image");
    augment_crop_window(100, 1, &a, 1, 0, 5, &x, &y, &w, &h);
    CHECK(x == 0 && y == 0 && w == 100 && h == 1, "100x1: whole image");
    augment_crop_window(1, 1, &a, 1, 0, 5, &x, &y, &w, &h);
    CHECK(x == 0 && y == 0 && w == 1 && h == 1, "1x1: whole image");
    a.attempts = 0;
    augment_crop_window(500, 375, &a, 1, 0, 5, &x, &y, &w, &h);
    CHECK(x == 0 && y == 0 && w == 500 && h == 375, "no attempts: whole image");
    // Small images still give legal windows.
    augment_defaults(&a);
    int ok = 1;
    for (int i = 0; i < 500; i++) {
        augment_crop_window(7, 5, &a, 2, 1, (uint64_t)i, &x, &y, &w, &h);
        ok &= x >= 0 && y >= 0 && w >= 1 && h >= 1 && x + w <= 7 && y + h <= 5 && w * h >= 21;
    }
    CHECK(ok, "7x5: windows inside, area >= 0.6");
}

// ---------------------------------------------------------------- resize

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

// PIL's BILINEAR upscale is the same half-pixel-center bilinear, but PIL computes in fixed
// point and rounds to 8 bits between its horizontal and vertical passes: tolerance 1 level.
static void test_resize_pil(void) {
    FILE *f = fopen(g_fixture, "rb");
    if (!f) {
        CHECK(0, "cannot open %s (python3 tools/check_resize.py writes it)", g_fixture);
        return;
    }
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK(n > 16 && memcmp(buf, "RSZ1", 4) == 0, "fixture magic");
    if (n <= 16 || memcmp(buf, "RSZ1", 4)) return;
    int sw = (int)rd32(buf + 4), sh = (int)rd32(buf + 8);
    const uint8_t *src = buf + 12, *p = src + (size_t)sw * sh * 3;
    int cases = (int)rd32(p);
    p += 4;
    CHECK(cases >= 1, "fixture has cases");
    for (int k = 0; k < cases; k++) {
        int x0 = (int)rd32(p), y0 = (int)rd32(p + 4), cw = (int)rd32(p + 8), ch = (int)rd32(p + 12);
        int dw = (int)rd32(p + 16), dh = (int)rd32(p + 20);
        const uint8_t *want = p + 24;
        p = want + (size_t)dw * dh * 3;
        if ((size_t)(p - buf) > n) {
            CHECK(0, "fixture truncated");
            return;
        }
        uint8_t *got = malloc((size_t)dw * dh * 3);
        int rc = augment_resize_bilinear(src, sw, sh, x0, y0, cw, ch, got, dw, dh);
        CHECK(rc == VIT_OK, "resize case %d: %s", k, vit_error());
        int worst = 0;
        for (int i = 0; i < dw * dh * 3; i++) worst = fmax(worst, abs(got[i] - want[i]));
        CHECK(worst <= 1, "resize %dx%d@(%d,%d) -> %dx%d vs PIL: max diff %d", cw, ch, x0, y0, dw, dh, worst);
        free(got);
    }
}

// Both internal paths (vertical-first for moderate ratios, direct 4-tap for windows over
// twice the output width) against a double-precision bilinear written here.
static void test_resize_paths(void) {
    Image img = make_image(300, 200, 3);
    const int cases[][6] = {{10, 20, 250, 150, 224, 224}, {0, 0, 300, 200, 64, 48}, {5, 7, 280, 30, 40, 90},
                            {0, 0, 300, 200, 300, 200}, {17, 3, 1, 1, 5, 5}};
    for (int k = 0; k < 5; k++) {
        int x0 = cases[k][0], y0 = cases[k][1], cw = cases[k][2], ch = cases[k][3], dw = cases[k][4],
            dh = cases[k][5];
        uint8_t *got = malloc((size_t)dw * dh * 3);
        CHECK(augment_resize_bilinear(img.pixels, 300, 200, x0, y0, cw, ch, got, dw, dh) == VIT_OK, "resize ok");
        int worst = 0;
        for (int y = 0; y < dh; y++) {
            double sy = fmin(fmax((y + 0.5) * ch / dh - 0.5, 0), ch - 1);
            int a0 = (int)sy, a1 = a0 + 1 < ch ? a0 + 1 : ch - 1;
            for (int x = 0; x < dw; x++) {
                double sx = fmin(fmax((x + 0.5) * cw / dw - 0.5, 0), cw - 1);
                int b0 = (int)sx, b1 = b0 + 1 < cw ? b0 + 1 : cw - 1;
                for (int c = 0; c < 3; c++) {
#define PX(yy, xx) img.pixels[((size_t)(y0 + (yy)) * 300 + x0 + (xx)) * 3 + c]
                    double top = PX(a0, b0) + (PX(a0, b1) - PX(a0, b0)) * (sx - b0);
                    double bot = PX(a1, b0) + (PX(a1, b1) - PX(a1, b0)) * (sx - b0);
#undef PX
                    int want = (int)(top + (bot - top) * (sy - a0) + 0.5);
                    worst = fmax(worst, abs(got[((size_t)y * dw + x) * 3 + c] - want));
                }
            }
        }
        // Float against double: a value within rounding of .5 may go either way.
        CHECK(worst <= 1, "resize %dx%d -> %dx%d vs double bilinear: max diff %d", cw, ch, dw, dh, worst);
        if (cw == dw && ch == dh) CHECK(worst == 0 && !memcmp(got, img.pixels, (size_t)dw * dh * 3), "identity");
        free(got);
    }
    uint8_t out[27];
    CHECK(augment_resize_bilinear(img.pixels, 300, 200, 250, 0, 51, 10, out, 3, 3) == VIT_ERR &&
              strstr(vit_error(), "not inside"),
          "window past the edge refused: %s", vit_error());
    CHECK(augment_resize_bilinear(img.pixels, 300, 200, 0, 0, 10, 10, out, 0, 3) == VIT_ERR, "zero output refused");
    image_free(&img);
}

// ---------------------------------------------------------------- photometric

// TF's adjust_saturation kernel, written out: RGB -> HSV, S *= factor clipped to [0, 1],
// HSV -> RGB by hue sector.
static void tf_saturate(float *rgb, float factor) {
    float r = rgb[0], g = rgb[1], b = rgb[2];
    float v = fmaxf(r, fmaxf(g, b)), range = v - fminf(r, fminf(g, b));
    float s = v > 0 ? range / v : 0, h = 0;
    if (range > 0) {
        float norm = 1.0f / (6.0f * range);
        h = r == v ? norm * (g - b) : g == v ? norm * (b - r) + 2.0f / 6.0f : norm * (r - g) + 4.0f / 6.0f;
    }
    if (h < 0) h += 1;
    s = fminf(1.0f, fmaxf(0.0f, s * factor));
    float c = s * v, m = v - c, dh = h * 6, f = dh;
    int sector = (int)dh;
    while (f <= 0) f += 2;
    while (f > 2) f -= 2;
    float x = c * (1 - fabsf(f - 1)), o[3];
    switch (sector) {
    case 0: o[0] = c, o[1] = x, o[2] = 0; break;
    case 1: o[0] = x, o[1] = c, o[2] = 0; break;
    case 2: o[0] = 0, o[1] = c, o[2] = x; break;
    case 3: o[0] = 0, o[1] = x, o[2] = c; break;
    case 4: o[0] = x, o[1] = 0, o[2] = c; break;
    case 5: o[0] = c, o[1] = 0, o[2] = x; break;
    default: o[0] = o[1] = o[2] = 0;
    }
    for (int k = 0; k < 3; k++) rgb[k] = o[k] + m;
}

static void test_color_vs_tf(void) {
    unsigned s = 12345;
#define RND() ((s = s * 1664525u + 1013904223u) >> 8) * (1.0f / 16777216.0f)
    const int n = 20000;
    float *px = malloc((size_t)n * 3 * sizeof *px), *ref = malloc((size_t)n * 3 * sizeof *ref);
    double worst = 0;
    for (int round = 0; round < 4; round++) {
        float delta = (2 * RND() - 1) * (round < 2 ? 32.0f / 255.0f : 0.4f);
        float factor = round == 0 ? 1.5f : round == 1 ? 0.5f : 2 * RND();
        for (int i = 0; i < 3 * n; i++) px[i] = RND();
        for (int i = 0; i < 9; i++) px[i] = 0.5f;  // gray and near-gray pixels
        px[10] = 0.5f + 1e-6f;
        for (int i = 0; i < n; i++) {
            float *r = ref + 3 * i;
            for (int c = 0; c < 3; c++) r[c] = px[3 * i + c] + delta;  // TF's adjust_brightness
            tf_saturate(r, factor);
            for (int c = 0; c < 3; c++) r[c] = fminf(1.0f, fmaxf(0.0f, r[c]));  // clip_by_value
        }
        augment_color(px, (size_t)n, delta, factor);
        for (int i = 0; i < 3 * n; i++) worst = fmax(worst, fabs(px[i] - ref[i]));
    }
#undef RND
    // TF goes through hue in float; the closed form does not: differences are float rounding.
    CHECK(worst < 1e-5, "brightness + saturation vs TF's HSV round trip: max diff %.2e", worst);
    free(px);
    free(ref);
}

// Uniform gray: saturation has no effect, brightness moves every pixel alike by up to 32.
static void test_brightness_gray(void) {
    Image img = make_uniform(60, 40, 128, 128, 128);
    AugmentConfig a;
    augment_defaults(&a);
    const int size = 16, n = 1000;
    uint8_t out[16 * 16 * 3];
    int lo = 255, hi = 0, uniform = 1, rc = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        rc |= augment_train(&img, size, 3, &a, 99, 0, (uint64_t)i, out);
        for (int k = 1; k < size * size * 3; k++) uniform &= out[k] == out[0];
        lo = out[0] < lo ? out[0] : lo;
        hi = out[0] > hi ? out[0] : hi;
        sum += out[0];
    }
    CHECK(rc == VIT_OK, "augment: %s", vit_error());
    CHECK(uniform, "gray stays uniform gray (saturation does nothing)");
    CHECK(lo >= 96 && hi <= 160, "brightness within 128 +- 32: [%d, %d]", lo, hi);
    CHECK(lo <= 98 && hi >= 158, "brightness spans its range: [%d, %d]", lo, hi);
    CHECK(fabs(sum / n - 128) < 3, "brightness mean %.2f near 128", sum / n);
    image_free(&img);
}

// Uniform color, brightness off: V (the max channel) and hue stay, S = 0.75 scales by
// [0.5, 1.5] and clips at 1, so the min channel spans 200 * (1 - S') in [0, 125].
static void test_saturation_color(void) {
    Image img = make_uniform(50, 50, 200, 100, 50);
    AugmentConfig a;
    augment_defaults(&a);
    a.brightness = 0;
    const int size = 8, n = 600;
    uint8_t out[8 * 8 * 3];
    int vmax_ok = 1, hue_ok = 1, bmin = 255, bmax = 0, clipped = 0;
    for (int i = 0; i < n; i++) {
        augment_train(&img, size, 3, &a, 5, 1, (uint64_t)i, out);
        int r = out[0], g = out[1], b = out[2];
        vmax_ok &= r == 200;
        // (g - b) / (r - b) = 1/3 for the unchanged hue; rounding costs up to a level each.
        hue_ok &= abs(3 * (g - b) - (r - b)) <= 4;
        bmin = b < bmin ? b : bmin;
        bmax = b > bmax ? b : bmax;
        clipped += b == 0;
    }
    CHECK(vmax_ok, "saturation keeps V");
    CHECK(hue_ok, "saturation keeps hue");
    CHECK(bmin == 0 && bmax >= 122 && bmax <= 125, "min channel spans [0, 125]: [%d, %d]", bmin, bmax);
    // Factors above 4/3 clip S to 1: a sixth of the draws.
    CHECK(clipped > n / 10 && clipped < n / 4, "S clipped in %d of %d draws", clipped, n);
    image_free(&img);
}

// ---------------------------------------------------------------- flip, rotation, channels

static void test_flip(void) {
    Image img = make_image(500, 375, 11);
    AugmentConfig a, nf;
    augment_defaults(&a);
    nf = a;
    nf.flip = 0;
    const int size = 24, n = 1000;
    uint8_t o[24 * 24 * 3], r[24 * 24 * 3];
    int mirrored = 0, same = 0, other = 0;
    for (int i = 0; i < n; i++) {
        augment_train(&img, size, 3, &a, 42, 2, (uint64_t)i, o);
        augment_train(&img, size, 3, &nf, 42, 2, (uint64_t)i, r);
        int eq = !memcmp(o, r, sizeof o), mir = 1;
        for (int y = 0; y < size && mir; y++)
            for (int x = 0; x < size; x++)
                if (memcmp(o + (y * size + x) * 3, r + (y * size + size - 1 - x) * 3, 3)) {
                    mir = 0;
                    break;
                }
        same += eq && !mir;
        mirrored += mir && !eq;
        other += !eq && !mir;
    }
    // Everything else equal, a flipped output is exactly the mirror of the unflipped one.
    CHECK(other == 0 && same + mirrored == n, "flip: %d identical, %d mirrored, %d neither", same, mirrored, other);
    // Binomial(1000, 0.5): sd 16, bounds at 4 sd.
    CHECK(mirrored > 436 && mirrored < 564, "flip probability %.3f near 0.5", (double)mirrored / n);
    image_free(&img);
}

static void test_rotation(void) {
    Image img = make_uniform(80, 60, 200, 200, 200);
    AugmentConfig a;
    augment_defaults(&a);
    a.brightness = 0;
    a.rotate_deg = 30;
    const int size = 33, n = 200;  // odd: the center is a pixel, which rotation keeps
    uint8_t out[33 * 33 * 3];
    int center_ok = 1, dark_corners = 0, mid_edge_ok = 1;
    for (int i = 0; i < n; i++) {
        augment_train(&img, size, 3, &a, 8, 0, (uint64_t)i, out);
        center_ok &= out[(16 * size + 16) * 3] == 200;
        // A corner leaves the image for any angle over about 1 degree: zero fill darkens it.
        dark_corners += out[0] < 150;
        // Edge midpoints move by at most 16 * (1 - cos 30) < 2.2 pixels inward-or-out; the point
        // one pixel in from the top stays mostly inside.
        mid_edge_ok &= out[(2 * size + 16) * 3] >= 150;
    }
    CHECK(center_ok, "rotation keeps the center pixel");
    CHECK(dark_corners > n * 8 / 10, "rotation zero-fills corners (%d of %d draws)", dark_corners, n);
    CHECK(mid_edge_ok, "rotation keeps the middle of the edges");
    // rotate_deg 0: no rotation at all, so a uniform image stays uniform.
    a.rotate_deg = 0;
    int uniform = 1;
    for (int i = 0; i < 50; i++) {
        augment_train(&img, size, 3, &a, 8, 0, (uint64_t)i, out);
        for (int k = 0; k < size * size * 3; k++) uniform &= out[k] == 200;
    }
    CHECK(uniform, "no rotation: uniform image unchanged");
    image_free(&img);
}

static void test_gray_channel(void) {
    Image img = make_image(120, 90, 4);
    AugmentConfig a;
    augment_defaults(&a);
    uint8_t rgb[20 * 20 * 3], luma[20 * 20];
    int worst = 0;
    for (int i = 0; i < 20; i++) {
        augment_train(&img, 20, 3, &a, 3, 0, (uint64_t)i, rgb);
        augment_train(&img, 20, 1, &a, 3, 0, (uint64_t)i, luma);
        for (int k = 0; k < 400; k++) {
            double l = 0.299 * rgb[3 * k] + 0.587 * rgb[3 * k + 1] + 0.114 * rgb[3 * k + 2];
            worst = fmax(worst, fabs(luma[k] - l));
        }
    }
    // Luma from unrounded floats vs from rounded bytes: at most one level apart.
    CHECK(worst <= 1, "1 channel is the luma of the RGB output (max diff %d)", worst);
    image_free(&img);
}

static void test_errors(void) {
    Image img = make_image(10, 10, 1), empty = {0};
    AugmentConfig a;
    augment_defaults(&a);
    uint8_t out[16 * 16 * 3];
    CHECK(augment_train(&img, 0, 3, &a, 0, 0, 0, out) == VIT_ERR && strstr(vit_error(), "size"), "size 0 refused");
    CHECK(augment_train(&img, 16, 2, &a, 0, 0, 0, out) == VIT_ERR && strstr(vit_error(), "channels"),
          "channels 2 refused");
    CHECK(augment_train(&empty, 16, 3, &a, 0, 0, 0, out) == VIT_ERR && strstr(vit_error(), "empty"),
          "empty image refused");
    CHECK(augment_train(&img, 16, 3, NULL, 0, 0, 0, out) == VIT_ERR, "null config refused");
    CHECK(augment_train(&img, 16, 3, &a, 0, 0, 0, out) == VIT_OK, "10x10 -> 16 ok (upscale)");
    image_free(&img);
}

// ---------------------------------------------------------------- determinism and threads

static void test_determinism(void) {
    Image img = make_image(500, 375, 21);
    AugmentConfig a;
    augment_defaults(&a);
    a.rotate_deg = 10;  // cover every random decision
    const size_t n = 64 * 64 * 3;
    uint8_t *o1 = malloc(n), *o2 = malloc(n);
    augment_train(&img, 64, 3, &a, 1234, 5, 77, o1);
    augment_train(&img, 64, 3, &a, 1234, 5, 77, o2);
    CHECK(!memcmp(o1, o2, n), "same (seed, epoch, index): same bytes");
    augment_train(&img, 64, 3, &a, 1234, 5, 78, o2);
    CHECK(memcmp(o1, o2, n), "another index: other bytes");
    augment_train(&img, 64, 3, &a, 1234, 6, 77, o2);
    CHECK(memcmp(o1, o2, n), "another epoch: other bytes");
    augment_train(&img, 64, 3, &a, 1235, 5, 77, o2);
    CHECK(memcmp(o1, o2, n), "another seed: other bytes");
    augment_train(&img, 64, 3, &a, 1234, 5, 77 + (1ull << 32), o2);
    CHECK(memcmp(o1, o2, n), "index high word counts");
    free(o1);
    free(o2);
    image_free(&img);
}

typedef struct {
    const Image *img;
    const AugmentConfig *a;
    int size, first, step, count;
    uint8_t *out;  // count images, slot i for index i
    int rc;
} Job;

static void *run_job(void *p) {
    Job *j = p;
    size_t bytes = (size_t)j->size * j->size * 3;
    for (int i = j->first; i < j->count; i += j->step)
        j->rc |= augment_train(j->img, j->size, 3, j->a, 555, 4, (uint64_t)i, j->out + i * bytes);
    return NULL;
}

static void test_threads(int rotate) {
    Image img = make_image(500, 375, 33);
    AugmentConfig a;
    augment_defaults(&a);
    a.rotate_deg = rotate ? 15 : 0;
    const int size = 96, count = 32;
    size_t bytes = (size_t)size * size * 3;
    uint8_t *serial = malloc(bytes * count), *par = malloc(bytes * count);
    Job s = {&img, &a, size, 0, 1, count, serial, 0};
    run_job(&s);
    // Two threads, interleaved indices, in whatever order the scheduler picks.
    Job t[2] = {{&img, &a, size, 0, 2, count, par, 0}, {&img, &a, size, 1, 2, count, par, 0}};
    pthread_t th[2];
    int started = 1;
    for (int k = 0; k < 2; k++) started &= pthread_create(&th[k], NULL, run_job, &t[k]) == 0;
    CHECK(started, "threads started");
    if (started) {
        for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
        CHECK(s.rc == 0 && t[0].rc == 0 && t[1].rc == 0, "all augmentations succeeded");
        CHECK(!memcmp(serial, par, bytes * count), "2 threads = serial, byte for byte (rotate %d)", rotate);
    }
    free(serial);
    free(par);
    image_free(&img);
}

// ---------------------------------------------------------------- speed (reported, not checked)

static void speed(void) {
    Image img = make_image(500, 375, 77);
    // A typical photo JPEG: quality 90, 4:2:0 chroma.
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *jpg = NULL;
    unsigned long jn = 0;
    jpeg_mem_dest(&c, &jpg, &jn);
    c.image_width = 500, c.image_height = 375, c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = img.pixels + (size_t)c.next_scanline * 500 * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);

    AugmentConfig a;
    augment_defaults(&a);
    uint8_t *out = malloc(224 * 224 * 3);
    int rc = 0, n = 0;
    double t0 = clock_seconds(), t;
    do rc |= augment_train(&img, 224, 3, &a, 1, 0, (uint64_t)n++, out);
    while ((t = clock_seconds() - t0) < 0.4);
    double aug = n / t;
    n = 0;
    t0 = clock_seconds();
    do {
        Image d;
        rc |= image_decode(&d, jpg, jn, "speed", 224);
        if (d.pixels) rc |= augment_train(&d, 224, 3, &a, 1, 0, (uint64_t)n++, out);
        image_free(&d);
    } while ((t = clock_seconds() - t0) < 0.4 && !rc);
    CHECK(rc == 0, "speed runs succeed: %s", vit_error());
    printf("speed (one thread, 500x375 -> 224): augment %.0f img/s, JPEG decode + augment %.0f img/s\n", aug, n / t);
    free(out);
    free(jpg);
    image_free(&img);
}

int main(int argc, char **argv) {
    if (argc > 1) g_fixture = argv[1];
    test_defaults();
    test_crop_window(500, 375);
    test_crop_window(375, 500);
    test_crop_window(400, 400);
    test_crop_fallback();
    test_resize_pil();
    test_resize_paths();
    test_color_vs_tf();
    test_brightness_gray();
    test_saturation_color();
    test_flip();
    test_rotation();
    test_gray_channel();
    test_errors();
    test_determinism();
    test_threads(0);
    test_threads(1);
    if (!getenv("VIT_SKIP_SPEED")) speed();
    return check_report("augment");
}
