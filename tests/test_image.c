// Image decoding, the evaluation crop and PNG writing. Inputs are mostly encoded here with
// libjpeg/libpng into memory from known pixels: decoded PNGs must match exactly, JPEGs within
// a small tolerance; damaged inputs must come back as errors naming the input, and random
// corruption must never crash (this runs under ASan too). The evaluation crop is also checked
// against PIL and against TensorFlow's pipeline (fixtures from tools/).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "check.h"
#include "testdir.h"
#include "data/image.h"
#include "util/status.h"

// ---------------------------------------------------------------- encoders (test side)

typedef struct {
    uint8_t *data;
    size_t size;
} Buf;

// comps/in_cs describe `px`; out_cs is the colour space stored in the file.
static int g_progressive;  // next enc_jpeg writes a progressive file

static Buf enc_jpeg(const uint8_t *px, int w, int h, int comps, J_COLOR_SPACE in_cs,
                    J_COLOR_SPACE out_cs, int adobe, int quality) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *mem = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &mem, &n);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = comps;
    c.in_color_space = in_cs;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, out_cs);
    c.write_Adobe_marker = adobe ? TRUE : FALSE;
    jpeg_set_quality(&c, quality, TRUE);
    // Full-resolution chroma so solid colours stay within a tight tolerance.
    for (int i = 0; i < c.num_components; i++)
        c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
    if (g_progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * comps);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return (Buf){mem, n};
}

static void png_put(png_structp png, png_bytep p, size_t n) {
    Buf *b = png_get_io_ptr(png);
    b->data = realloc(b->data, b->size + n);
    if (!b->data) { fprintf(stderr, "out of memory\n"); exit(2); }
    memcpy(b->data + b->size, p, n);
    b->size += n;
}

static void png_flush_nop(png_structp png) { (void)png; }

// `raw` holds rows exactly as PNG stores them (packed bits, 16-bit big-endian).
static Buf enc_png(const uint8_t *raw, int w, int h, int color_type, int depth, int interlace,
                   const png_color *palette, int npalette, const uint8_t *trns, int ntrns) {
    Buf b = {NULL, 0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) { fprintf(stderr, "png encode failed\n"); exit(2); }
    png_set_write_fn(png, &b, png_put, png_flush_nop);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (palette) png_set_PLTE(png, info, palette, npalette);
    if (trns) png_set_tRNS(png, info, trns, ntrns, NULL);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    png_bytep *rows = malloc((size_t)h * sizeof *rows);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)(raw + (size_t)y * rowbytes);
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(rows);
    return b;
}

// ---------------------------------------------------------------- helpers

// Largest |decoded - expected| over all pixels against a per-pixel expectation.
typedef void (*ExpectFn)(int x, int y, int w, int h, int rgb[3]);

static int max_err(const Image *img, ExpectFn f) {
    int m = 0;
    for (int y = 0; y < img->height; y++)
        for (int x = 0; x < img->width; x++) {
            int e[3];
            f(x, y, img->width, img->height, e);
            const uint8_t *p = img->pixels + ((size_t)y * img->width + x) * 3;
            for (int c = 0; c < 3; c++) {
                int d = abs((int)p[c] - e[c]);
                if (d > m) m = d;
            }
        }
    return m;
}

static int g_solid[3];
static void expect_solid(int x, int y, int w, int h, int rgb[3]) {
    (void)x, (void)y, (void)w, (void)h;
    memcpy(rgb, g_solid, sizeof g_solid);
}

static uint8_t grad_r(int x, int y) { return (uint8_t)(x * 4 + y); }
static uint8_t grad_g(int x, int y) { return (uint8_t)(255 - 3 * y); }
static uint8_t grad_b(int x, int y) { return (uint8_t)((x * 2 + y * 3) & 255); }
static void expect_grad(int x, int y, int w, int h, int rgb[3]) {
    (void)w, (void)h;
    rgb[0] = grad_r(x, y), rgb[1] = grad_g(x, y), rgb[2] = grad_b(x, y);
}

// Smooth gradients for JPEG: sharp edges would exceed any small tolerance.
static void expect_smooth(int x, int y, int w, int h, int rgb[3]) {
    rgb[0] = 30 + 190 * x / (w - 1);
    rgb[1] = 220 - 180 * y / (h - 1);
    rgb[2] = 128;
}

static uint8_t *fill_rgb(int w, int h, ExpectFn f) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int e[3];
            f(x, y, w, h, e);
            for (int c = 0; c < 3; c++) p[((size_t)y * w + x) * 3 + c] = (uint8_t)e[c];
        }
    return p;
}

// ---------------------------------------------------------------- JPEG

static void test_jpeg_rgb(void) {
    int w = 48, h = 40;
    uint8_t *px = fill_rgb(w, h, expect_smooth);
    Buf b = enc_jpeg(px, w, h, 3, JCS_RGB, JCS_YCbCr, 0, 98);
    Image img;
    int rc = image_decode(&img, b.data, b.size, "rgb.jpg", 0);
    CHECK(rc == VIT_OK, "rgb jpeg: %s", vit_error());
    CHECK(img.width == w && img.height == h, "rgb jpeg size %dx%d", img.width, img.height);
    if (rc == VIT_OK) {
        int m = max_err(&img, expect_smooth);
        CHECK(m <= 6, "rgb jpeg gradient max error %d", m);
    }
    image_free(&img);
    CHECK(img.pixels == NULL && img.width == 0, "image_free clears");

    g_solid[0] = 200, g_solid[1] = 100, g_solid[2] = 50;
    uint8_t *solid = fill_rgb(w, h, expect_solid);
    Buf s = enc_jpeg(solid, w, h, 3, JCS_RGB, JCS_YCbCr, 0, 95);
    rc = image_decode(&img, s.data, s.size, "solid.jpg", 0);
    CHECK(rc == VIT_OK && max_err(&img, expect_solid) <= 3, "solid jpeg");
    image_free(&img);

    g_progressive = 1;
    Buf pj = enc_jpeg(px, w, h, 3, JCS_RGB, JCS_YCbCr, 0, 98);
    g_progressive = 0;
    rc = image_decode(&img, pj.data, pj.size, "progressive.jpg", 0);
    CHECK(rc == VIT_OK && img.width == w && img.height == h &&
              max_err(&img, expect_smooth) <= 6,
          "progressive jpeg: %s", vit_error());
    image_free(&img);
    rc = image_decode(&img, pj.data, pj.size * 2 / 3, "progressive-cut.jpg", 0);
    CHECK(rc == VIT_ERR && has(vit_error(), "progressive-cut.jpg"), "truncated progressive jpeg");
    free(px), free(solid), free(b.data), free(s.data), free(pj.data);
}

static void test_jpeg_gray(void) {
    int w = 33, h = 17;  // not multiples of the 8x8 block
    uint8_t *px = malloc((size_t)w * h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) px[y * w + x] = (uint8_t)(40 + 5 * x + 2 * y);
    Buf b = enc_jpeg(px, w, h, 1, JCS_GRAYSCALE, JCS_GRAYSCALE, 0, 98);
    Image img;
    int rc = image_decode(&img, b.data, b.size, "gray.jpg", 0);
    CHECK(rc == VIT_OK, "gray jpeg: %s", vit_error());
    CHECK(img.width == w && img.height == h, "gray jpeg size %dx%d", img.width, img.height);
    int m = 0, same = 1;
    for (int i = 0; rc == VIT_OK && i < w * h; i++) {
        const uint8_t *p = img.pixels + 3 * i;
        same &= p[0] == p[1] && p[1] == p[2];
        int d = abs((int)p[0] - px[i]);
        if (d > m) m = d;
    }
    CHECK(same, "gray jpeg: R == G == B");
    CHECK(m <= 4, "gray jpeg max error %d", m);
    image_free(&img);
    free(px), free(b.data);
}

// Target colour given as ink amounts (0 = none), stored per the file's convention.
static void test_jpeg_cmyk_case(const char *label, J_COLOR_SPACE out_cs, int adobe,
                                const int ink[4], const int rgb[3]) {
    int w = 24, h = 16;
    uint8_t *px = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h; i++)
        for (int c = 0; c < 4; c++) px[4 * i + c] = (uint8_t)(adobe ? 255 - ink[c] : ink[c]);
    Buf b = enc_jpeg(px, w, h, 4, JCS_CMYK, out_cs, adobe, 100);
    Image img;
    int rc = image_decode(&img, b.data, b.size, label, 0);
    CHECK(rc == VIT_OK, "%s: %s", label, vit_error());
    CHECK(img.width == w && img.height == h, "%s size", label);
    if (rc == VIT_OK) {
        memcpy(g_solid, rgb, sizeof g_solid);
        int m = max_err(&img, expect_solid);
        CHECK(m <= 4, "%s: max error %d (got %d,%d,%d)", label, m, img.pixels[0], img.pixels[1],
              img.pixels[2]);
    }
    image_free(&img);
    free(px), free(b.data);
}

static void test_jpeg_cmyk(void) {
    // C=0 M=127 Y=255 K=0 is orange; K=51 darkens every channel to 80%.
    const int orange[4] = {0, 127, 255, 0}, orange_rgb[3] = {255, 128, 0};
    const int dark[4] = {0, 127, 255, 51}, dark_rgb[3] = {204, 102, 0};
    test_jpeg_cmyk_case("adobe-cmyk.jpg", JCS_CMYK, 1, orange, orange_rgb);
    test_jpeg_cmyk_case("adobe-cmyk-k.jpg", JCS_CMYK, 1, dark, dark_rgb);
    test_jpeg_cmyk_case("plain-cmyk.jpg", JCS_CMYK, 0, orange, orange_rgb);
    test_jpeg_cmyk_case("ycck.jpg", JCS_YCCK, 1, dark, dark_rgb);
}

static void test_jpeg_scaling(void) {
    int w = 800, h = 600;
    g_solid[0] = 10, g_solid[1] = 200, g_solid[2] = 90;
    uint8_t *px = fill_rgb(w, h, expect_solid);
    Buf b = enc_jpeg(px, w, h, 3, JCS_RGB, JCS_YCbCr, 0, 90);
    static const struct { int min_side, w, h; } cases[] = {
        {0, 800, 600},  {100, 200, 150}, {75, 100, 75},   {76, 200, 150}, {150, 200, 150},
        {151, 400, 300}, {300, 400, 300}, {301, 800, 600}, {5000, 800, 600}, {1, 100, 75},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Image img;
        int rc = image_decode(&img, b.data, b.size, "big.jpg", cases[i].min_side);
        CHECK(rc == VIT_OK && img.width == cases[i].w && img.height == cases[i].h,
              "min_side %d: got %dx%d, want %dx%d", cases[i].min_side, img.width, img.height,
              cases[i].w, cases[i].h);
        if (rc == VIT_OK) CHECK(max_err(&img, expect_solid) <= 3, "scaled content");
        image_free(&img);
    }
    free(px), free(b.data);

    // Sides that do not divide by 8 round up: 801x601 at 1/8 is 101x76.
    px = fill_rgb(801, 601, expect_solid);
    b = enc_jpeg(px, 801, 601, 3, JCS_RGB, JCS_YCbCr, 0, 90);
    Image img;
    int rc = image_decode(&img, b.data, b.size, "odd.jpg", 76);
    CHECK(rc == VIT_OK && img.width == 101 && img.height == 76, "801x601/8: %dx%d", img.width,
          img.height);
    image_free(&img);
    rc = image_decode(&img, b.data, b.size, "odd.jpg", 77);
    CHECK(rc == VIT_OK && img.width == 201 && img.height == 151, "801x601/4: %dx%d", img.width,
          img.height);
    image_free(&img);
    free(px), free(b.data);
}

// ---------------------------------------------------------------- PNG

static void check_png(const char *label, Buf b, ExpectFn f, int w, int h, int tol) {
    Image img;
    int rc = image_decode(&img, b.data, b.size, label, 0);
    CHECK(rc == VIT_OK, "%s: %s", label, vit_error());
    CHECK(img.width == w && img.height == h, "%s: size %dx%d", label, img.width, img.height);
    if (rc == VIT_OK) {
        int m = max_err(&img, f);
        CHECK(m <= tol, "%s: max error %d", label, m);
    }
    image_free(&img);
    free(b.data);
}

static void test_png_rgb(void) {
    int w = 37, h = 23;
    uint8_t *rgb = fill_rgb(w, h, expect_grad);
    check_png("rgb.png", enc_png(rgb, w, h, PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0),
              expect_grad, w, h, 0);
    check_png("interlaced.png", enc_png(rgb, w, h, PNG_COLOR_TYPE_RGB, 8, 1, NULL, 0, NULL, 0),
              expect_grad, w, h, 0);

    uint8_t *rgba = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h; i++) {
        memcpy(rgba + 4 * i, rgb + 3 * i, 3);
        rgba[4 * i + 3] = (uint8_t)(i * 37);  // varied alpha, dropped on decode
    }
    check_png("rgba.png", enc_png(rgba, w, h, PNG_COLOR_TYPE_RGBA, 8, 0, NULL, 0, NULL, 0),
              expect_grad, w, h, 0);

    // 16-bit: v * 257 maps exactly to v; the low byte must not leak into the result.
    uint8_t *rgb16 = malloc((size_t)w * h * 6);
    for (int i = 0; i < w * h * 3; i++) rgb16[2 * i] = rgb16[2 * i + 1] = rgb[i];
    check_png("rgb16.png", enc_png(rgb16, w, h, PNG_COLOR_TYPE_RGB, 16, 0, NULL, 0, NULL, 0),
              expect_grad, w, h, 0);
    // Arbitrary low bytes: within one step of v16 * 255 / 65535.
    for (int i = 0; i < w * h * 3; i++) rgb16[2 * i + 1] = (uint8_t)(i * 13);
    Buf b = enc_png(rgb16, w, h, PNG_COLOR_TYPE_RGB, 16, 0, NULL, 0, NULL, 0);
    Image img;
    int rc = image_decode(&img, b.data, b.size, "rgb16b.png", 0), m = 0;
    for (int i = 0; rc == VIT_OK && i < w * h * 3; i++) {
        double want = (rgb16[2 * i] * 256 + rgb16[2 * i + 1]) * 255.0 / 65535.0;
        double d = fabs(img.pixels[i] - want);
        if (d > m) m = (int)ceil(d);
    }
    CHECK(rc == VIT_OK && m <= 1, "rgb16 arbitrary: rc %d max error %d", rc, m);
    image_free(&img);
    free(b.data), free(rgb), free(rgba), free(rgb16);
}

static uint8_t gray_at(int x, int y) { return (uint8_t)(x * 9 + y * 5); }
static void expect_gray(int x, int y, int w, int h, int rgb[3]) {
    (void)w, (void)h;
    rgb[0] = rgb[1] = rgb[2] = gray_at(x, y);
}
static void expect_bits(int x, int y, int w, int h, int rgb[3]) {
    (void)w, (void)h;
    rgb[0] = rgb[1] = rgb[2] = (x + y) % 3 == 0 ? 255 : 0;
}

static void test_png_gray(void) {
    int w = 29, h = 19;
    uint8_t *g = malloc((size_t)w * h), *ga = malloc((size_t)w * h * 2),
            *g16 = malloc((size_t)w * h * 2);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int i = y * w + x;
            g[i] = gray_at(x, y);
            ga[2 * i] = g[i], ga[2 * i + 1] = (uint8_t)(255 - x);
            g16[2 * i] = g16[2 * i + 1] = g[i];
        }
    check_png("gray.png", enc_png(g, w, h, PNG_COLOR_TYPE_GRAY, 8, 0, NULL, 0, NULL, 0),
              expect_gray, w, h, 0);
    check_png("gray-alpha.png",
              enc_png(ga, w, h, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, NULL, 0, NULL, 0), expect_gray,
              w, h, 0);
    check_png("gray16.png", enc_png(g16, w, h, PNG_COLOR_TYPE_GRAY, 16, 0, NULL, 0, NULL, 0),
              expect_gray, w, h, 0);

    // 1-bit gray, packed MSB first: 1 expands to 255.
    int rowbytes = (w + 7) / 8;
    uint8_t *bits = calloc((size_t)rowbytes * h, 1);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if ((x + y) % 3 == 0) bits[y * rowbytes + x / 8] |= (uint8_t)(0x80 >> (x % 8));
    check_png("gray1.png", enc_png(bits, w, h, PNG_COLOR_TYPE_GRAY, 1, 0, NULL, 0, NULL, 0),
              expect_bits, w, h, 0);
    free(g), free(ga), free(g16), free(bits);
}

static const png_color k_palette[4] = {{255, 0, 0}, {0, 128, 255}, {17, 34, 51}, {250, 250, 5}};
static void expect_palette(int x, int y, int w, int h, int rgb[3]) {
    (void)w, (void)h;
    const png_color *c = &k_palette[(x + 2 * y) % 4];
    rgb[0] = c->red, rgb[1] = c->green, rgb[2] = c->blue;
}

static void test_png_palette(void) {
    int w = 21, h = 13;
    uint8_t *idx8 = malloc((size_t)w * h);
    int rb2 = (w + 3) / 4;
    uint8_t *idx2 = calloc((size_t)rb2 * h, 1);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int v = (x + 2 * y) % 4;
            idx8[y * w + x] = (uint8_t)v;
            idx2[y * rb2 + x / 4] |= (uint8_t)(v << (6 - 2 * (x % 4)));
        }
    const uint8_t trns[4] = {0, 128, 255, 7};
    check_png("palette.png",
              enc_png(idx8, w, h, PNG_COLOR_TYPE_PALETTE, 8, 0, k_palette, 4, NULL, 0),
              expect_palette, w, h, 0);
    check_png("palette-trns.png",
              enc_png(idx8, w, h, PNG_COLOR_TYPE_PALETTE, 8, 0, k_palette, 4, trns, 4),
              expect_palette, w, h, 0);
    check_png("palette2.png",
              enc_png(idx2, w, h, PNG_COLOR_TYPE_PALETTE, 2, 1, k_palette, 4, NULL, 0),
              expect_palette, w, h, 0);
    free(idx8), free(idx2);
}

// ---------------------------------------------------------------- errors

static void expect_fail(const char *label, const uint8_t *data, size_t n, const char *part) {
    Image img = {(uint8_t *)1, 7, 7};  // must be cleared on failure
    int rc = image_decode(&img, data, n, label, 0);
    CHECK(rc == VIT_ERR, "%s: expected an error", label);
    CHECK(has(vit_error(), label), "%s: message names it: %s", label, vit_error());
    if (part) CHECK(has(vit_error(), part), "%s: message '%s' lacks '%s'", label, vit_error(), part);
    CHECK(img.pixels == NULL && img.width == 0 && img.height == 0, "%s: image cleared", label);
    if (rc == VIT_OK) image_free(&img);
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

// Random byte flips and cuts: either a valid image or an error naming the input, never a
// crash, a hang or a print.
static void fuzz(const char *label, const Buf *b, int rounds) {
    uint8_t *copy = malloc(b->size);
    int ok = 1;
    for (int r = 0; r < rounds; r++) {
        memcpy(copy, b->data, b->size);
        int flips = 1 + (int)(rnd() % 4);
        for (int i = 0; i < flips; i++) copy[8 + rnd() % (b->size - 8)] = (uint8_t)rnd();
        size_t n = r % 3 == 0 ? 1 + rnd() % b->size : b->size;
        Image img;
        int rc = image_decode(&img, copy, n, label, r % 2 ? 8 : 0);
        if (rc == VIT_OK)
            ok &= img.pixels != NULL && img.width > 0 && img.height > 0;
        else
            ok &= rc == VIT_ERR && has(vit_error(), label) && img.pixels == NULL;
        image_free(&img);
    }
    CHECK(ok, "%s: fuzzed inputs decode or fail cleanly", label);
    free(copy);
}

static void test_errors(void) {
    int w = 64, h = 48;
    uint8_t *px = fill_rgb(w, h, expect_smooth);
    Buf j = enc_jpeg(px, w, h, 3, JCS_RGB, JCS_YCbCr, 0, 90);
    Buf p = enc_png(px, w, h, PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0);

    expect_fail("half.jpg", j.data, j.size / 2, "Premature end");
    expect_fail("header-only.jpg", j.data, 200, NULL);
    expect_fail("no-eoi.jpg", j.data, j.size - 2, "Premature end");
    expect_fail("magic-only.jpg", j.data, 3, NULL);
    expect_fail("half.png", p.data, p.size / 2, NULL);
    expect_fail("no-iend.png", p.data, p.size - 12, NULL);
    expect_fail("sig-only.png", p.data, 8, NULL);

    const uint8_t garbage[] = "GIF89a this is not an image at all";
    expect_fail("garbage.bin", garbage, sizeof garbage, "not a JPEG or PNG image");
    expect_fail("short.bin", garbage, 2, "not a JPEG or PNG image");
    expect_fail("empty.jpg", garbage, 0, NULL);
    uint8_t junk[256];
    memcpy(junk, j.data, 3);
    for (size_t i = 3; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 31 + 7);
    expect_fail("junk.jpg", junk, sizeof junk, NULL);
    memcpy(junk, p.data, 8);
    expect_fail("junk.png", junk, sizeof junk, NULL);

    // A header claiming 65500 x 65500 pixels is refused, not allocated.
    Buf big = enc_jpeg(px, 16, 16, 3, JCS_RGB, JCS_YCbCr, 0, 90);
    for (size_t i = 0; i + 8 < big.size; i++)
        if (big.data[i] == 0xFF && big.data[i + 1] == 0xC0) {  // SOF0: height, width at +5
            big.data[i + 5] = big.data[i + 7] = 0xFF;
            big.data[i + 6] = big.data[i + 8] = 0xDC;
            break;
        }
    expect_fail("huge.jpg", big.data, big.size, NULL);

    fuzz("fuzz.jpg", &j, 300);
    fuzz("fuzz.png", &p, 300);
    free(px), free(j.data), free(p.data), free(big.data);
}

static void test_file(void) {
    int w = 12, h = 9;
    uint8_t *rgb = fill_rgb(w, h, expect_grad);
    Buf b = enc_png(rgb, w, h, PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0);
    char path[] = "/tmp/vitc_test_image_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd >= 0) {
        CHECK(write(fd, b.data, b.size) == (ssize_t)b.size, "write temp file");
        close(fd);
        Image img;
        int rc = image_decode_file(&img, path, 0);
        CHECK(rc == VIT_OK && img.width == w && img.height == h && max_err(&img, expect_grad) == 0,
              "decode_file: %s", vit_error());
        image_free(&img);
        unlink(path);
        rc = image_decode_file(&img, path, 0);
        CHECK(rc == VIT_ERR && has(vit_error(), path) &&
                  has(vit_error(), "No such file or directory"),
              "missing file: %s", vit_error());
        CHECK(img.pixels == NULL, "missing file: image cleared");
    }
    free(rgb), free(b.data);
}

// ---------------------------------------------------------------- eval crop

// The definition, spelled out in doubles over the whole resized image, then cropped. The new
// sides are the recipe's: float32 scale by the short side, rint (ties to even).
static void ref_crop(const Image *img, int size, int channels, double *out) {
    int w = img->width, h = img->height;
    float scale = h > w ? (float)size / (float)w : (float)size / (float)h;
    long rw = lrintf((float)w * scale), rh = lrintf((float)h * scale);
    long ox = (rw - size) / 2, oy = (rh - size) / 2;
    for (long Y = oy; Y < oy + size; Y++)
        for (long X = ox; X < ox + size; X++) {
            double sy = (Y + 0.5) * h / (double)rh - 0.5, sx = (X + 0.5) * w / (double)rw - 0.5;
            sy = sy < 0 ? 0 : sy > h - 1 ? h - 1 : sy;
            sx = sx < 0 ? 0 : sx > w - 1 ? w - 1 : sx;
            int y0 = (int)floor(sy), x0 = (int)floor(sx);
            int y1 = y0 + 1 < h ? y0 + 1 : h - 1, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
            double fy = sy - y0, fx = sx - x0, v[3];
            for (int c = 0; c < 3; c++) {
                double p00 = img->pixels[((size_t)y0 * w + x0) * 3 + c];
                double p01 = img->pixels[((size_t)y0 * w + x1) * 3 + c];
                double p10 = img->pixels[((size_t)y1 * w + x0) * 3 + c];
                double p11 = img->pixels[((size_t)y1 * w + x1) * 3 + c];
                v[c] = (1 - fy) * ((1 - fx) * p00 + fx * p01) + fy * ((1 - fx) * p10 + fx * p11);
            }
            double *o = out + ((Y - oy) * size + (X - ox)) * channels;
            if (channels == 3)
                o[0] = v[0], o[1] = v[1], o[2] = v[2];
            else
                o[0] = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        }
}

static void test_crop_vs_ref(int w, int h, int size, int channels) {
    Image img = {fill_rgb(w, h, expect_grad), w, h};
    size_t n = (size_t)size * size * channels;
    uint8_t *out = malloc(n);
    double *ref = malloc(n * sizeof *ref);
    int rc = image_eval_crop(&img, size, channels, out);
    CHECK(rc == VIT_OK, "crop %dx%d -> %d: %s", w, h, size, vit_error());
    ref_crop(&img, size, channels, ref);
    double m = 0;
    for (size_t i = 0; rc == VIT_OK && i < n; i++)
        if (fabs(out[i] - ref[i]) > m) m = fabs(out[i] - ref[i]);
    CHECK(m <= 1.0, "crop %dx%d -> %d x%d: max diff %.3f vs reference", w, h, size, channels, m);
    free(img.pixels), free(out), free(ref);
}

// At scale 1 (short side already `size`) the crop is an exact window of the input.
static void test_crop_centered(int w, int h, int size) {
    Image img = {fill_rgb(w, h, expect_grad), w, h};
    uint8_t *out = malloc((size_t)size * size * 3);
    int rc = image_eval_crop(&img, size, 3, out);
    int ox = (w - size) / 2, oy = (h - size) / 2, exact = rc == VIT_OK;
    for (int y = 0; exact && y < size; y++)
        for (int x = 0; x < size; x++) {
            const uint8_t *o = out + ((size_t)y * size + x) * 3;
            exact &= o[0] == grad_r(x + ox, y + oy) && o[1] == grad_g(x + ox, y + oy) &&
                     o[2] == grad_b(x + ox, y + oy);
        }
    CHECK(exact, "crop %dx%d -> %d is the centered window at (%d,%d)", w, h, size, ox, oy);
    free(img.pixels), free(out);
}

static void test_crop(void) {
    test_crop_vs_ref(50, 30, 16, 3);   // downscale, landscape
    test_crop_vs_ref(30, 50, 16, 3);   // portrait
    test_crop_vs_ref(50, 30, 64, 3);   // upscale
    test_crop_vs_ref(37, 37, 24, 3);   // square
    test_crop_vs_ref(50, 30, 30, 3);   // short side already right
    test_crop_vs_ref(301, 199, 57, 1); // luma
    test_crop_vs_ref(7, 5, 1, 3);      // tiny output
    test_crop_vs_ref(1, 1, 9, 1);      // one input pixel
    test_crop_vs_ref(2, 40, 3, 3);     // extreme aspect
    test_crop_vs_ref(97, 64, 32, 3);   // long side 48.5: ties to even, 48
    test_crop_vs_ref(64, 97, 32, 3);
    test_crop_centered(60, 20, 20);
    test_crop_centered(20, 60, 20);
    test_crop_centered(61, 20, 20);
    test_crop_centered(20, 21, 20);

    // Luma of a solid colour: round(0.299*200 + 0.587*100 + 0.114*50) = 124.
    g_solid[0] = 200, g_solid[1] = 100, g_solid[2] = 50;
    Image img = {fill_rgb(10, 6, expect_solid), 10, 6};
    uint8_t out[16], ok = 1;
    CHECK(image_eval_crop(&img, 4, 1, out) == VIT_OK, "solid luma crop");
    for (int i = 0; i < 16; i++) ok &= out[i] == 124;
    CHECK(ok, "solid luma value %d", out[0]);

    CHECK(image_eval_crop(&img, 0, 3, out) == VIT_ERR && has(vit_error(), "size"), "size 0");
    CHECK(image_eval_crop(&img, -4, 3, out) == VIT_ERR, "negative size");
    CHECK(image_eval_crop(&img, 4, 2, out) == VIT_ERR && has(vit_error(), "channels"),
          "channels 2");
    CHECK(image_eval_crop(&img, 4, 4, out) == VIT_ERR, "channels 4");
    Image empty = {NULL, 0, 0};
    CHECK(image_eval_crop(&empty, 4, 3, out) == VIT_ERR, "empty image");
    free(img.pixels);
}

// The evaluation crop against PIL (tools/make_evalcrop_fixture.py): enlargements only, where
// PIL's BILINEAR is the same half-pixel-center bilinear. Tolerance 1 level: PIL rounds to 8
// bits between its horizontal and vertical passes.
static void test_eval_crop_pil(void) {
    FILE *f = fopen("tests/fixtures/evalcrop_pil.bin", "rb");
    CHECK(f != NULL, "fixture tests/fixtures/evalcrop_pil.bin");
    if (!f) return;
    char magic[4];
    uint32_t ncases = 0;
    int ok = fread(magic, 4, 1, f) == 1 && !memcmp(magic, "EVC1", 4) && fread(&ncases, 4, 1, f) == 1;
    for (uint32_t k = 0; ok && k < ncases; k++) {
        uint32_t dims[3];
        ok = fread(dims, 4, 3, f) == 3 && dims[0] <= 64 && dims[1] <= 64 && dims[2] <= 64;
        if (!ok) break;
        size_t src_n = (size_t)dims[0] * dims[1] * 3, dst_n = (size_t)dims[2] * dims[2] * 3;
        uint8_t *src = malloc(src_n), *want = malloc(dst_n), *got = malloc(dst_n);
        ok = fread(src, 1, src_n, f) == src_n && fread(want, 1, dst_n, f) == dst_n;
        Image img = {src, (int)dims[0], (int)dims[1]};
        if (ok && image_eval_crop(&img, (int)dims[2], 3, got) == VIT_OK) {
            int md = 0;
            for (size_t i = 0; i < dst_n; i++) md = abs(got[i] - want[i]) > md ? abs(got[i] - want[i]) : md;
            CHECK(md <= 1, "eval crop %ux%u -> %u vs PIL: max diff %d", dims[0], dims[1], dims[2], md);
        } else {
            CHECK(0, "eval crop case %u", k);
        }
        free(src), free(want), free(got);
    }
    CHECK(ok, "fixture tests/fixtures/evalcrop_pil.bin is well formed");
    fclose(f);
}

// max |a - b| over n bytes.
static int max_abs_diff(const uint8_t *a, const uint8_t *b, size_t n) {
    int md = 0;
    for (size_t i = 0; i < n; i++) md = abs(a[i] - b[i]) > md ? abs(a[i] - b[i]) : md;
    return md;
}

// The whole evaluation path (full-size decode, resize, central crop) against the recipe's
// TensorFlow pipeline on the images of tools/make_evalcrop_tf_fixture.py: within 1 level (TF
// keeps floats where we round to 8 bits once). The DCT-scaled decode, by contrast, must move
// some pixel further on the images it would scale, which shows what the fixture guards.
static void test_eval_crop_tf(void) {
    const char *dir = "tests/fixtures/evalcrop_tf";
    char path[512], in_name[128], want_name[128];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "fixture %s", path);
    if (!f) return;
    int size, cases = 0, fast_moved = 0;
    while (fscanf(f, "%127s %127s %d", in_name, want_name, &size) == 3 && size > 0 && size <= 256) {
        Image src = {0}, want = {0}, small = {0};
        size_t n = (size_t)size * size * 3;
        uint8_t *got = malloc(n), *fast = malloc(n);
        snprintf(path, sizeof path, "%s/%s", dir, in_name);
        int rc = image_decode_file_tf(&src, path);
        snprintf(path, sizeof path, "%s/%s", dir, want_name);
        if (rc == VIT_OK) rc = image_decode_file(&want, path, 0);
        CHECK(rc == VIT_OK && want.width == size && want.height == size, "%s: %s", in_name, vit_error());
        if (rc == VIT_OK && image_eval_crop(&src, size, 3, got) == VIT_OK) {
            int md = max_abs_diff(got, want.pixels, n);
            CHECK(md <= 1, "%s -> %d vs TensorFlow: max diff %d levels", in_name, size, md);
        }
        snprintf(path, sizeof path, "%s/%s", dir, in_name);
        if (rc == VIT_OK && image_decode_file(&small, path, size) == VIT_OK && small.width < src.width &&
            image_eval_crop(&small, size, 3, fast) == VIT_OK)
            fast_moved += max_abs_diff(fast, want.pixels, n) > 1;
        image_free(&src), image_free(&want), image_free(&small);
        free(got), free(fast);
        cases++;
    }
    fclose(f);
    CHECK(cases == 7, "%d TensorFlow cases read (7 expected)", cases);
    CHECK(fast_moved >= 3, "DCT-scaled decode differs from TensorFlow on %d cases (3 or more expected)", fast_moved);
}

// image_peek_size reads the sides a full decode gives from the headers alone (baseline,
// progressive and grayscale JPEGs, PNG); other bytes and cut headers are refused.
static void test_peek_size(void) {
    const char *files[] = {"large_300x200.jpg", "progressive_290x213.jpg", "gray_120x90.jpg", "small_23x31.png"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/fixtures/evalcrop_tf/%s", files[i]);
        FILE *f = fopen(path, "rb");
        uint8_t buf[1 << 16];
        size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f) fclose(f);
        Image img = {0};
        int w = 0, h = 0;
        int ok = n > 0 && image_decode(&img, buf, n, path, 0) == VIT_OK && image_peek_size(buf, n, &w, &h) == VIT_OK;
        CHECK(ok && w == img.width && h == img.height, "peek %s: %dx%d, decoded %dx%d", files[i], w, h, img.width,
              img.height);
        CHECK(image_peek_size(buf, 20, &w, &h) != VIT_OK, "peek %s cut to 20 bytes is refused", files[i]);
        image_free(&img);
    }
    int w, h;
    CHECK(image_peek_size((const uint8_t *)"hello, world, not an image", 26, &w, &h) != VIT_OK, "peek text refused");
}

// image_write_png round-trips through the decoder, RGB and gray; a bad path is an error.
static void test_write_png(void) {
    char dir[] = "/tmp/vitc_test_image_XXXXXX", path[128];
    CHECK(mkdtemp(dir) != NULL, "temp folder");
    uint8_t *rgb = fill_rgb(13, 7, expect_grad), gray[21];
    for (int i = 0; i < 21; i++) gray[i] = (uint8_t)(i * 12);
    snprintf(path, sizeof path, "%s/rgb.png", dir);
    Image back = {0};
    CHECK(image_write_png(path, rgb, 13, 7, 3) == VIT_OK && image_decode_file(&back, path, 0) == VIT_OK &&
              back.width == 13 && back.height == 7 && !memcmp(back.pixels, rgb, 13 * 7 * 3),
          "RGB PNG round trip: %s", vit_error());
    image_free(&back);
    snprintf(path, sizeof path, "%s/gray.png", dir);
    int same = image_write_png(path, gray, 3, 7, 1) == VIT_OK && image_decode_file(&back, path, 0) == VIT_OK &&
               back.width == 3 && back.height == 7;
    for (int i = 0; same && i < 21; i++) same &= back.pixels[3 * i] == gray[i] && back.pixels[3 * i + 2] == gray[i];
    CHECK(same, "gray PNG round trip");
    image_free(&back);
    snprintf(path, sizeof path, "%s/missing/x.png", dir);
    CHECK(image_write_png(path, gray, 3, 7, 1) == VIT_ERR && has(vit_error(), path), "bad path: %s", vit_error());
    CHECK(image_write_png(path, gray, 3, 7, 2) == VIT_ERR, "2 channels refused");
    free(rgb);
    testdir_remove(dir);
}

int main(void) {
    test_jpeg_rgb();
    test_jpeg_gray();
    test_jpeg_cmyk();
    test_jpeg_scaling();
    test_png_rgb();
    test_png_gray();
    test_png_palette();
    test_errors();
    test_file();
    test_crop();
    test_eval_crop_pil();
    test_eval_crop_tf();
    test_write_png();
    test_peek_size();
    return check_report("image");
}
