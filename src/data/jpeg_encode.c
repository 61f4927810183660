#include "jpeg_encode.h"
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include <jerror.h>
#include <jpeglib.h>

#include "util/status.h"

typedef struct {
    struct jpeg_error_mgr pub;  // first, so libjpeg's pointer converts to ours
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} JpegError;

static void jpeg_on_error(j_common_ptr c) {
    JpegError *e = (JpegError *)c->err;
    e->pub.format_message(c, e->message);
    longjmp(e->jump, 1);
}

static void jpeg_no_message(j_common_ptr c, int level) { (void)c, (void)level; }

// Whether a JPEG holds 3-component YCbCr or RGB, which every decoder returns as RGB as is;
// grayscale, CMYK and YCCK files are re-encoded (as the recipe's script does for CMYK).
int jpeg_is_rgb(const uint8_t *data, size_t len) {
    struct jpeg_decompress_struct d;
    JpegError e;
    d.err = jpeg_std_error(&e.pub);
    e.pub.error_exit = jpeg_on_error;
    e.pub.emit_message = jpeg_no_message;
    if (setjmp(e.jump)) {
        jpeg_destroy_decompress(&d);
        return 0;  // re-encoding from the decoded pixels is always safe
    }
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, data, (unsigned long)len);
    jpeg_read_header(&d, TRUE);
    int rgb = d.num_components == 3 && (d.jpeg_color_space == JCS_YCbCr || d.jpeg_color_space == JCS_RGB);
    jpeg_destroy_decompress(&d);
    return rgb;
}

// Growable output buffer owned by us rather than jpeg_mem_dest's: on an error in the middle
// of compression, jpeg_mem_dest's grown buffer is neither freed nor returned.
typedef struct {
    struct jpeg_destination_mgr pub;  // first, as libjpeg expects
    JpegBuffer *b;
} MemDest;

static void dest_init(j_compress_ptr c) {
    MemDest *d = (MemDest *)c->dest;
    d->pub.next_output_byte = d->b->buf;
    d->pub.free_in_buffer = d->b->cap;
}

static boolean dest_grow(j_compress_ptr c) {  // called with the buffer full
    JpegBuffer *b = ((MemDest *)c->dest)->b;
    uint8_t *g = b->cap <= SIZE_MAX / 2 ? realloc(b->buf, b->cap * 2) : NULL;
    if (!g) ERREXIT(c, JERR_OUT_OF_MEMORY);
    b->buf = g;
    c->dest->next_output_byte = g + b->cap;
    c->dest->free_in_buffer = b->cap;
    b->cap *= 2;
    return TRUE;
}

static void dest_term(j_compress_ptr c) {
    JpegBuffer *b = ((MemDest *)c->dest)->b;
    b->len = b->cap - c->dest->free_in_buffer;
}

int jpeg_encode_rgb(const Image *img, int quality, const char *name, JpegBuffer *out) {
    struct jpeg_compress_struct c;
    JpegError e;
    if (!out->buf) {
        out->cap = 1 << 16;
        if (!(out->buf = malloc(out->cap))) return vit_fail("%s: out of memory re-encoding", name);
    }
    MemDest dest = {.b = out};
    dest.pub.init_destination = dest_init;
    dest.pub.empty_output_buffer = dest_grow;
    dest.pub.term_destination = dest_term;
    out->len = 0;
    c.err = jpeg_std_error(&e.pub);
    e.pub.error_exit = jpeg_on_error;
    e.pub.emit_message = jpeg_no_message;
    if (setjmp(e.jump)) {
        jpeg_destroy_compress(&c);
        return vit_fail("%s: re-encoding as JPEG failed: %s", name, e.message);
    }
    jpeg_create_compress(&c);
    c.dest = &dest.pub;
    c.image_width = (JDIMENSION)img->width;
    c.image_height = (JDIMENSION)img->height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = img->pixels + (size_t)c.next_scanline * (size_t)img->width * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return VIT_OK;
}

