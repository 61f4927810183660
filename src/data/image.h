// Image decoding (JPEG through libjpeg-turbo, PNG through libpng) to 8-bit RGB, the
// evaluation preprocessing of the recipe (resize so the short side equals the size, aspect
// kept, as tf.image.resize "bilinear" does, then a central crop), and PNG writing.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *pixels;  // height * width * 3, row-major RGB
    int width, height;
} Image;

// Decodes JPEG or PNG (chosen by the leading bytes). Grayscale, palette, 16-bit, alpha and
// CMYK inputs all become 8-bit RGB. When min_side > 0, a JPEG may be decoded at a reduced DCT
// scale as long as both sides stay >= min_side (much faster for large photos). `name` (a path
// or record id) is used in messages. Corrupt or truncated data: VIT_ERR naming `name`.
int image_decode(Image *img, const uint8_t *data, size_t size, const char *name, int min_side);
int image_decode_file(Image *img, const char *path, int min_side);
// The recipe's evaluation decode: what tf.io.decode_jpeg(channels=3) returns with its defaults,
// i.e. full size through libjpeg's fast integer IDCT (JDCT_IFAST) with fancy upsampling. PNGs
// and errors as image_decode.
int image_decode_tf(Image *img, const uint8_t *data, size_t size, const char *name);
int image_decode_file_tf(Image *img, const char *path);
void image_free(Image *img);

// Evaluation crop, as the recipe's TensorFlow pipeline: scale = size / width when the image is
// taller than wide, else size / height (float32); new sides rint(side * scale), ties to even;
// tf.image.resize bilinear (half-pixel centers, clamped edges, no antialiasing); central crop
// size x size at ((H - size) / 2, (W - size) / 2). Written to out (size * size * channels
// bytes, rounded to 8 bits). channels 3 copies RGB, channels 1 writes luma
// (0.299 R + 0.587 G + 0.114 B). For the recipe's result, decode with image_decode_tf.
int image_eval_crop(const Image *img, int size, int channels, uint8_t *out);

// Writes width x height pixels (channels 1: gray, 3: RGB, row-major) as an 8-bit PNG.
// Errors name the path.
int image_write_png(const char *path, const uint8_t *pixels, int width, int height, int channels);

// Width and height from a JPEG's frame header or a PNG's IHDR, without decoding; VIT_ERR
// (no message) when the bytes are neither or the header is cut short.
int image_peek_size(const uint8_t *data, size_t size, int *width, int *height);
