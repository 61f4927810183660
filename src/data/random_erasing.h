// timm's RandomErasing (timm/data/random_erasing.py) on 8-bit images, for --reprob,
// --remode and --recount: with probability p, 1..count boxes (count uniform), each tried up to
// 10 times: area uniform in [0.02, 1/3] of the image divided by the count, aspect log-uniform
// in [0.3, 1/0.3], h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), kept when
// w < width and h < height, at a uniform position.
//
// timm fills in the normalised float domain: const 0, rand one N(0, 1) value per channel and
// box, pixel N(0, 1) per element. vit's bytes become x / 127.5 - 1 in the model, which is
// timm's normalisation for mean = std = 0.5, so a normalised value z is the byte
// 127.5 (z + 1): rounded half up and clamped to [0, 255]. Hence const writes 128 (z = +1/255),
// and noise beyond |z| > 1 is clamped to 0 or 255 (timm keeps it: about 32% of N(0, 1) draws).
// The noise bytes are drawn from that byte distribution directly (inverse CDF, 16-bit draws).
#pragma once
#include <stdint.h>

typedef enum { ERASE_PIXEL, ERASE_CONST, ERASE_RAND } EraseMode;

typedef struct {
    float prob;            // 0: off
    EraseMode mode;        // pixel (timm train.py's default)
    int max_count;         // boxes per image uniform in [1, max_count]
    double area_min, area_max;      // 0.02, 1/3 of the image
    double log_aspect_min, log_aspect_max;  // log(0.3), log(1/0.3)
    int attempts;          // 10 per box
} EraseConfig;

typedef struct { int x, y, w, h; } EraseBox;

#define ERASE_MAX_COUNT 64

void erase_defaults(EraseConfig *e);
// "pixel" | "const" | "rand"; the error names `flag`.
int erase_parse_mode(const char *s, EraseMode *mode, const char *flag);

// The boxes chosen for this sample (at most max_count; fewer when attempts fail or the gate
// says no). Returns how many. Exposed for the statistics tests.
int erase_boxes(const EraseConfig *e, int width, int height, uint64_t seed, uint32_t epoch, uint64_t index,
                EraseBox *boxes);

// Erases in place on a width x height image of `channels` interleaved bytes per pixel.
void random_erase(const EraseConfig *e, uint8_t *px, int width, int height, int channels, uint64_t seed,
                  uint32_t epoch, uint64_t index);

// A normalised value z as vit's byte: 127.5 (z + 1), rounded half up, clamped to [0, 255].
uint8_t erase_byte(double z);
