// The recipe's training augmentation on decoded images: TF's sample_distorted_bounding_box
// over the whole image (min object covered 0.6, aspect 0.75-1.33, area 0.6-1.0, 100 attempts,
// else the whole image), bilinear resize to size x size ignoring aspect, random left-right
// flip, brightness +-32/255, saturation 0.5-1.5, clip to [0, 1], optional rotation. Every
// random choice derives from (seed, epoch, index), so results do not depend on threads.
#pragma once
#include <stdint.h>
#include "image.h"
#include "randaugment.h"
#include "random_erasing.h"

typedef struct {
    float min_object_covered;  // 0.6
    float aspect_min, aspect_max;  // 0.75, 1.33
    float area_min, area_max;  // 0.6, 1.0
    int attempts;              // 100
    float brightness;          // 32/255: delta uniform in [-b, b]
    float saturation_lo, saturation_hi;  // 0.5, 1.5
    float rotate_deg;          // 0: none; else angle uniform in [-r, r]
    int flip;                  // 1: random left-right flip
    // timm's augmentations on top of the recipe's (off by default): RandAugment on the
    // finished RGB crop, then random erasing on the output bytes.
    RandAugConfig ra;          // --aa
    EraseConfig erase;         // --reprob, --remode, --recount
} AugmentConfig;

void augment_defaults(AugmentConfig *a);

// Sets RandAugment (`aa`, timm's policy string, "" = off) and random erasing (probability,
// mode pixel | const | rand, maximum count) from the flags; errors are one line naming the flag.
int augment_set_timm(AugmentConfig *a, const char *aa, float reprob, const char *remode, int recount);

// RandAugment (RGB as PIL's "RGB", 1 channel as PIL's "L") then random erasing, in place on a
// size x size image: the training path of images that get no crop (IDX). No-op when both are off.
int augment_extra(uint8_t *px, int size, int channels, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                  uint64_t index);

// The crop window chosen for this sample (x, y, w, h in pixels of img): exposed for tests.
void augment_crop_window(int width, int height, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                         uint64_t index, int *x, int *y, int *w, int *h);

// Writes size * size * channels bytes (channels 3: RGB; 1: luma) of the augmented image. With
// RandAugment on, it runs on the RGB bytes of the crop (after flip and colour), before luma;
// random erasing runs last, on the output bytes.
int augment_train(const Image *img, int size, int channels, const AugmentConfig *a, uint64_t seed, uint32_t epoch,
                  uint64_t index, uint8_t *out);

// Bilinear resize (half-pixel centers, edges clamped to the window, no antialiasing: TF's
// resize and PIL's BILINEAR when upscaling) of the window (x0, y0, cw, ch) of an RGB image
// sw x sh to dw x dh RGB bytes at dst. The window must lie inside the image.
int augment_resize_bilinear(const uint8_t *src, int sw, int sh, int x0, int y0, int cw, int ch,
                            uint8_t *dst, int dw, int dh);

// The photometric steps on n RGB pixels in [0, 1] float, in place: add `delta` (brightness),
// scale HSV saturation by `saturation` (TF's adjust_saturation), clip to [0, 1].
void augment_color(float *rgb, size_t n, float delta, float saturation);
