// Image decoding (JPEG through libjpeg-turbo, PNG through libpng) to 8-bit RGB, and the
// evaluation preprocessing of the recipe: resize so the short side equals the size (aspect
// kept, bilinear), then a center crop.
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
void image_free(Image *img);

// Evaluation crop: bilinear resize so the short side is `size` (aspect kept), center crop
// size x size, written to out (size * size * channels bytes). channels 3 copies RGB, channels 1
// writes luma (0.299 R + 0.587 G + 0.114 B).
int image_eval_crop(const Image *img, int size, int channels, uint8_t *out);
