// JPEG and PNG decoding to 8-bit RGB, and the evaluation crop. Both libraries report errors
// by calling a handler that must not return; ours record the message and longjmp back, so
// corrupt input becomes VIT_ERR instead of exit() or a crash. Locals that change between
// setjmp and longjmp are volatile, as C requires for their values to survive the jump.
#include "data/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "util/status.h"

// Output area cap: a 100-byte file can claim 65500 x 65500 pixels; refuse rather than
// attempt a 12 GB allocation. 2^28 pixels (16384^2) is far beyond any training photo.
#define IMAGE_MAX_PIXELS ((size_t)1 << 28)
// libjpeg's own buffers (progressive coefficients) for such a header would be larger still.
#define JPEG_MAX_MEMORY 1000000000L

static const uint8_t JPEG_MAGIC[3] = {0xFF, 0xD8, 0xFF};
static const uint8_t PNG_MAGIC[8] = {0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A};

void image_free(Image *img) {
    if (!img) return;
    free(img->pixels);
    img->pixels = NULL;
    img->width = img->height = 0;
}

static int check_area(const char *name, size_t w, size_t h) {
    if (w == 0 || h == 0) return vit_fail("%s: image has zero size (%zux%zu)", name, w, h);
    if (w > IMAGE_MAX_PIXELS / h)
        return vit_fail("%s: image too large (%zux%zu pixels)", name, w, h);
    return VIT_OK;
}

// ---------------------------------------------------------------- JPEG

typedef struct {
    struct jpeg_error_mgr pub;  // first, so the library's pointer converts to ours
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} JpegError;

static void jpeg_on_error(j_common_ptr cinfo) {
    JpegError *e = (JpegError *)cinfo->err;
    e->pub.format_message(cinfo, e->message);
    longjmp(e->jump, 1);
}

// libjpeg pads a truncated file with gray and only warns; a silently half-gray training
// image is worse than a skipped one, so premature end of data is an error. Other warnings
// (extraneous bytes before a marker, common in real photo sets) leave the image usable.
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;  // trace messages
    JpegError *e = (JpegError *)cinfo->err;
    if (e->pub.msg_code == JWRN_JPEG_EOF) jpeg_on_error(cinfo);
    e->pub.num_warnings++;
}

static void jpeg_quiet(j_common_ptr cinfo) { (void)cinfo; }

// A progressive file can hold thousands of tiny scans that each rewalk the whole image (a
// known denial of service); real encoders write about ten.
#define JPEG_MAX_SCANS 500

static void jpeg_on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        JpegError *e = (JpegError *)cinfo->err;
        snprintf(e->message, sizeof e->message, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(e->jump, 1);
    }
}

static unsigned jpeg_scaled(unsigned side, unsigned denom) { return (side + denom - 1) / denom; }

// CMYK as libjpeg hands it over: Adobe (Photoshop) files store inverted values, i.e.
// 255 - ink, so "ink-free" reads as 255 there and as 0 in plain CMYK.
static void cmyk_to_rgb(uint8_t *rgb, const uint8_t *cmyk, unsigned n, int inverted) {
    for (unsigned i = 0; i < n; i++) {
        unsigned c = cmyk[4 * i], m = cmyk[4 * i + 1], y = cmyk[4 * i + 2], k = cmyk[4 * i + 3];
        if (!inverted) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        rgb[3 * i] = (uint8_t)((c * k + 127) / 255);
        rgb[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
        rgb[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
    }
}

static int decode_jpeg(Image *img, const uint8_t *data, size_t size, const char *name,
                       int min_side, int fast_idct) {
    struct jpeg_decompress_struct cinfo;
    JpegError err;
    struct jpeg_progress_mgr progress = {.progress_monitor = jpeg_on_progress};
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk_row = NULL;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_on_message;
    err.pub.output_message = jpeg_quiet;
    err.message[0] = '\0';
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        free(cmyk_row);
        return vit_fail("%s: bad JPEG: %s", name, err.message);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.mem->max_memory_to_use = JPEG_MAX_MEMORY;
    cinfo.progress = &progress;
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);

    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    // libjpeg converts YCCK to CMYK but neither to RGB; that last step is ours.
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = 1;
    // TensorFlow's decode_jpeg defaults to the fast integer IDCT; its pixels differ from the
    // accurate one's by up to ~8 levels, so the recipe's evaluation needs it.
    if (fast_idct) cinfo.dct_method = JDCT_IFAST;
    if (min_side > 0) {
        // Largest reduction keeping both sides >= min_side: the IDCT does it nearly for free.
        static const unsigned denoms[] = {8, 4, 2};
        for (int i = 0; i < 3; i++) {
            unsigned d = denoms[i];
            if (jpeg_scaled(cinfo.image_width, d) >= (unsigned)min_side &&
                jpeg_scaled(cinfo.image_height, d) >= (unsigned)min_side) {
                cinfo.scale_denom = d;
                break;
            }
        }
    }
    jpeg_calc_output_dimensions(&cinfo);
    unsigned w = cinfo.output_width, h = cinfo.output_height;
    if (check_area(name, w, h)) {
        jpeg_destroy_decompress(&cinfo);
        return VIT_ERR;
    }
    pixels = malloc((size_t)w * h * 3);
    if (cmyk) cmyk_row = malloc((size_t)w * 4);
    if (!pixels || (cmyk && !cmyk_row)) {
        snprintf(err.message, sizeof err.message, "out of memory for %ux%u pixels", w, h);
        longjmp(err.jump, 1);
    }

    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != (cmyk ? 4 : 3)) {
        snprintf(err.message, sizeof err.message, "unexpected %d output components",
                 cinfo.output_components);
        longjmp(err.jump, 1);
    }
    while (cinfo.output_scanline < h) {
        uint8_t *dst = pixels + (size_t)cinfo.output_scanline * w * 3;
        JSAMPROW row = cmyk ? cmyk_row : dst;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            snprintf(err.message, sizeof err.message, "no scanline %u", cinfo.output_scanline);
            longjmp(err.jump, 1);
        }
        if (cmyk) cmyk_to_rgb(dst, cmyk_row, w, cinfo.saw_Adobe_marker);
    }
    // Reads up to EOI, so a file cut inside its final scan or trailer is caught too.
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(cmyk_row);
    img->pixels = pixels;
    img->width = (int)w;
    img->height = (int)h;
    return VIT_OK;
}

// ---------------------------------------------------------------- PNG

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char message[256];
} PngSource;

static void png_on_error(png_structp png, png_const_charp msg) {
    PngSource *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

// Warnings (odd iCCP profiles, bad ancillary CRCs) do not spoil the pixels; the library
// must not print them either.
static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
    PngSource *src = png_get_io_ptr(png);
    if (n > src->size - src->pos) png_error(png, "unexpected end of data (truncated file)");
    memcpy(out, src->data + src->pos, n);
    src->pos += n;
}

static int decode_png(Image *img, const uint8_t *data, size_t size, const char *name) {
    PngSource src = {.data = data, .size = size, .pos = 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error,
                                             png_on_warning);
    if (!png) return vit_fail("%s: out of memory", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return vit_fail("%s: out of memory", name);
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        return vit_fail("%s: bad PNG: %s", name, src.message);
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_set_user_limits(png, 65535, 65535);
    png_read_info(png, info);

    // Every layout to 8-bit RGB: palette and low-bit gray expand, 16 bits round to 8,
    // gray is replicated and alpha dropped (as PIL's convert("RGB") and TF do).
    png_set_expand(png);
#ifdef PNG_READ_SCALE_16_TO_8_SUPPORTED
    png_set_scale_16(png);
#else
    png_set_strip_16(png);
#endif
    png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (check_area(name, w, h)) {
        png_destroy_read_struct(&png, &info, NULL);
        return VIT_ERR;
    }
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * 3)
        png_error(png, "cannot convert to 8-bit RGB");
    pixels = malloc((size_t)w * h * 3);
    rows = malloc(h * sizeof *rows);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + (size_t)y * w * 3;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    img->pixels = pixels;
    img->width = (int)w;
    img->height = (int)h;
    return VIT_OK;
}

// ---------------------------------------------------------------- entry points

static int decode_any(Image *img, const uint8_t *data, size_t size, const char *name, int min_side,
                      int fast_idct) {
    img->pixels = NULL;
    img->width = img->height = 0;
    if (!name) name = "(image)";
    if (size == 0 || !data) return vit_fail("%s: empty, not a JPEG or PNG image", name);
    if (size >= sizeof JPEG_MAGIC && memcmp(data, JPEG_MAGIC, sizeof JPEG_MAGIC) == 0)
        return decode_jpeg(img, data, size, name, min_side, fast_idct);
    if (size >= sizeof PNG_MAGIC && memcmp(data, PNG_MAGIC, sizeof PNG_MAGIC) == 0)
        return decode_png(img, data, size, name);
    return vit_fail("%s: not a JPEG or PNG image", name);
}

int image_decode(Image *img, const uint8_t *data, size_t size, const char *name, int min_side) {
    return decode_any(img, data, size, name, min_side, 0);
}

int image_decode_tf(Image *img, const uint8_t *data, size_t size, const char *name) {
    return decode_any(img, data, size, name, 0, 1);
}

// The whole file into a malloc'd buffer.
static int read_whole_file(const char *path, uint8_t **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return vit_fail("%s: %s", path, strerror(errno));
    // Read in growing chunks rather than trusting a size from stat: works for pipes too.
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return vit_fail("%s: out of memory", path);
    }
    for (;;) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        uint8_t *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            fclose(f);
            return vit_fail("%s: out of memory", path);
        }
        buf = bigger;
        cap *= 2;
    }
    if (ferror(f)) {
        int e = errno;
        free(buf);
        fclose(f);
        return vit_fail("%s: read error: %s", path, strerror(e));
    }
    fclose(f);
    *out = buf;
    *len = n;
    return VIT_OK;
}

static int decode_file(Image *img, const char *path, int min_side, int fast_idct) {
    img->pixels = NULL;
    img->width = img->height = 0;
    uint8_t *buf = NULL;
    size_t n = 0;
    if (read_whole_file(path, &buf, &n)) return VIT_ERR;
    int rc = decode_any(img, buf, n, path, min_side, fast_idct);
    free(buf);
    return rc;
}

int image_decode_file(Image *img, const char *path, int min_side) { return decode_file(img, path, min_side, 0); }

int image_decode_file_tf(Image *img, const char *path) { return decode_file(img, path, 0, 1); }

// Source sampling positions along one axis, as TensorFlow's resize_bilinear with half-pixel
// centers computes them, in float32 so that they agree with it bit for bit: output pixel i of
// `out_len` samples (i + 0.5) * (in_len / out_len) - 0.5, its neighbours floor and ceil of
// that clamped to the image (so both coincide past either edge).
typedef struct {
    int i0, i1;
    float t;
} Tap;

static void make_taps(Tap *taps, int n, long long offset, int in_len, long long out_len) {
    float scale = (float)in_len / (float)out_len;
    for (int i = 0; i < n; i++) {
        float s = ((float)(i + offset) + 0.5f) * scale - 0.5f, f = floorf(s);
        long long lo = (long long)f, hi = (long long)ceilf(s);
        taps[i].i0 = (int)(lo < 0 ? 0 : lo > in_len - 1 ? in_len - 1 : lo);
        taps[i].i1 = (int)(hi < 0 ? 0 : hi > in_len - 1 ? in_len - 1 : hi);
        taps[i].t = s - f;
    }
}

static uint8_t to_u8(float v) {
    v += 0.5f;
    return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v;
}

int image_eval_crop(const Image *img, int size, int channels, uint8_t *out) {
    if (size < 1) return vit_fail("eval crop: size must be >= 1 (got %d)", size);
    if (channels != 1 && channels != 3)
        return vit_fail("eval crop: channels must be 1 or 3 (got %d)", channels);
    if (!img || !img->pixels || img->width < 1 || img->height < 1)
        return vit_fail("eval crop: empty image");
    // The recipe's _smallest_size_at_least, in its float32 arithmetic: rint rounds ties to
    // even (97 x 64 at 32 becomes 48 x 32, not 49 x 32).
    float fw = (float)img->width, fh = (float)img->height;
    float scale = fh > fw ? (float)size / fw : (float)size / fh;
    long long rw = (long long)rintf(fw * scale), rh = (long long)rintf(fh * scale);
    if (rw < size) rw = size;  // float rounding can never take it below; kept as a guard
    if (rh < size) rh = size;
    // Only the crop window of the resized image is ever computed.
    Tap *xs = malloc((size_t)size * sizeof *xs), *ys = malloc((size_t)size * sizeof *ys);
    if (!xs || !ys) {
        free(xs);
        free(ys);
        return vit_fail("eval crop: out of memory");
    }
    make_taps(xs, size, (rw - size) / 2, img->width, rw);
    make_taps(ys, size, (rh - size) / 2, img->height, rh);
    const uint8_t *px = img->pixels;
    size_t stride = (size_t)img->width * 3;
    for (int y = 0; y < size; y++) {
        const uint8_t *r0 = px + (size_t)ys[y].i0 * stride, *r1 = px + (size_t)ys[y].i1 * stride;
        float ty = ys[y].t;
        for (int x = 0; x < size; x++) {
            size_t a = (size_t)xs[x].i0 * 3, b = (size_t)xs[x].i1 * 3;
            float tx = xs[x].t, rgb[3];
            for (int c = 0; c < 3; c++) {
                float top = r0[a + c] + (r0[b + c] - r0[a + c]) * tx;
                float bot = r1[a + c] + (r1[b + c] - r1[a + c]) * tx;
                rgb[c] = top + (bot - top) * ty;
            }
            uint8_t *o = out + ((size_t)y * size + x) * channels;
            if (channels == 3) {
                o[0] = to_u8(rgb[0]), o[1] = to_u8(rgb[1]), o[2] = to_u8(rgb[2]);
            } else {
                o[0] = to_u8(0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2]);
            }
        }
    }
    free(xs);
    free(ys);
    return VIT_OK;
}

// ---------------------------------------------------------------- PNG writing

typedef struct {
    char message[256];
} PngWriteError;

static void png_write_on_error(png_structp png, png_const_charp msg) {
    PngWriteError *e = png_get_error_ptr(png);
    snprintf(e->message, sizeof e->message, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

int image_write_png(const char *path, const uint8_t *pixels, int width, int height, int channels) {
    if (width < 1 || height < 1 || (channels != 1 && channels != 3) || !pixels)
        return vit_fail("%s: cannot write a %dx%d image with %d channels as PNG", path, width, height, channels);
    FILE *volatile f = fopen(path, "wb");
    if (!f) return vit_fail("%s: %s", path, strerror(errno));
    PngWriteError err = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_write_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        fclose(f);
        return vit_fail("%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return vit_fail("%s: cannot write PNG: %s", path, err.message);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, pixels + (size_t)y * width * channels);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    // A full disk shows up at the flush; the file is then incomplete.
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return vit_fail("%s: write error: %s", path, strerror(errno));
    return VIT_OK;
}

int image_peek_size(const uint8_t *data, size_t size, int *width, int *height) {
    if (size >= 24 && !memcmp(data, PNG_MAGIC, 8)) {
        *width = (int)((uint32_t)data[16] << 24 | (uint32_t)data[17] << 16 | (uint32_t)data[18] << 8 | data[19]);
        *height = (int)((uint32_t)data[20] << 24 | (uint32_t)data[21] << 16 | (uint32_t)data[22] << 8 | data[23]);
        return *width > 0 && *height > 0 ? VIT_OK : VIT_ERR;
    }
    if (size < 4 || memcmp(data, JPEG_MAGIC, 3)) return VIT_ERR;
    // Walk the marker segments up to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC).
    size_t i = 2;
    while (i + 4 <= size) {
        if (data[i] != 0xFF) return VIT_ERR;
        uint8_t m = data[i + 1];
        if (m == 0xFF) {  // fill byte
            i++;
            continue;
        }
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD9)) {  // markers without a length
            i += 2;
            continue;
        }
        size_t len = (size_t)data[i + 2] << 8 | data[i + 3];
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (i + 9 > size) return VIT_ERR;
            *height = data[i + 5] << 8 | data[i + 6];
            *width = data[i + 7] << 8 | data[i + 8];
            return *width > 0 && *height > 0 ? VIT_OK : VIT_ERR;
        }
        i += 2 + len;
    }
    return VIT_ERR;
}
