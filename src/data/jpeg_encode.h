// JPEG encoding for `vit prep` (PNG, grayscale and CMYK inputs become RGB JPEG), and the
// check of whether an existing JPEG can be kept as it is.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "image.h"

// Output bytes; buf is kept and grown between images. Free buf when done.
typedef struct {
    uint8_t *buf;
    size_t cap, len;
} JpegBuffer;

// Whether a JPEG holds 3-component YCbCr or RGB, which decoders return as RGB unchanged.
int jpeg_is_rgb(const uint8_t *data, size_t len);
// Encodes RGB pixels at `quality` into out. `name` is for messages.
int jpeg_encode_rgb(const Image *img, int quality, const char *name, JpegBuffer *out);
