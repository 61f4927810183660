// timm's RandAugment (timm/data/auto_augment.py, timm 1.0.31) on 8-bit images, for `--aa`.
//
// The policy string is timm's: "rand" followed by "-"-separated sections m<int> (magnitude,
// default 10), n<int> (ops per image, 2), p<float> (probability of each op, 0.5),
// mstd<float> (std of the magnitude noise; > 100 = uniform in [0, m]), mmax<int> (upper
// clamp of the noisy magnitude, default 10), inc<int> (1: the increasing-severity op set),
// t<name> (transform set: "weights" = timm's _RAND_WEIGHTED_0, drawn without replacement).
//
// The ops compute what PIL computes in timm's op functions (ImageOps, ImageEnhance's blends,
// the 3x3 SMOOTH filter, Image.transform AFFINE with the fill colour), on RGB (PIL mode "RGB")
// or on one gray channel (PIL mode "L"). Every random choice is a Philox draw keyed by
// (seed, epoch, index, op slot), so an image's result does not depend on threads or order.
#pragma once
#include <stdint.h>

typedef enum {
    RA_AUTOCONTRAST, RA_EQUALIZE, RA_INVERT, RA_ROTATE,
    RA_POSTERIZE, RA_POSTERIZE_INC, RA_SOLARIZE, RA_SOLARIZE_INC, RA_SOLARIZE_ADD,
    RA_COLOR, RA_COLOR_INC, RA_CONTRAST, RA_CONTRAST_INC, RA_BRIGHTNESS, RA_BRIGHTNESS_INC,
    RA_SHARPNESS, RA_SHARPNESS_INC, RA_SHEAR_X, RA_SHEAR_Y, RA_TRANSLATE_X_REL, RA_TRANSLATE_Y_REL,
    RA_OP_COUNT
} RandAugOp;

// Resampling of the geometric ops, as PIL's filters.
enum { RA_BILINEAR = 2, RA_BICUBIC = 3, RA_RESAMPLE_RANDOM = -1 };

#define RA_MAX_CHOICES 16
#define RA_MAX_NUM_OPS 64

typedef struct {
    int enabled;          // 0: --aa ""
    int magnitude;        // m
    int num_ops;          // n
    float prob;           // p
    double mstd;          // 0: fixed magnitude; INFINITY: uniform in [0, m]
    int mmax;             // 0: timm's default upper bound 10
    int increasing;       // inc
    int weighted;         // t weights: weighted choice without replacement
    int n_choices;
    RandAugOp choices[RA_MAX_CHOICES];
    double weights[RA_MAX_CHOICES];  // weighted only: timm's relative weights
    double translate_pct;            // 0.45 of the side at magnitude 10
    uint8_t fill[3];                 // colour of uncovered pixels (timm's img_mean)
    int resample;                    // RA_RESAMPLE_RANDOM (timm's train.py default), RA_BILINEAR, RA_BICUBIC
} RandAugConfig;

// The state of `--aa ""`: disabled, with timm's defaults for the rest.
void randaug_defaults(RandAugConfig *c);
// Parses a policy ("" = off). Errors name `flag` and say what is wrong, in one line.
int randaug_parse(RandAugConfig *c, const char *spec, const char *flag);
const char *randaug_op_name(RandAugOp op);

// timm's level-to-argument function of `op` at magnitude `m` (already noisy and clamped),
// with the sign flip applied when `negate` (for the ops that flip). The argument of the
// geometric ops is degrees, shear factor or translation fraction of the side.
double randaug_op_arg(RandAugOp op, double m, int negate, double translate_pct);

// Applies `op` with argument `arg` in place on a w x h image of `channels` (1 or 3) bytes per
// pixel. `resample` is RA_BILINEAR or RA_BICUBIC; `scratch` holds 2 (w * h * channels + 16) bytes.
void randaug_apply_op(RandAugOp op, double arg, int resample, const uint8_t fill[3], uint8_t *px, int w, int h,
                      int channels, uint8_t *scratch);

// The random decisions for op slot k of one image: exposed for the statistics tests.
typedef struct {
    RandAugOp op;
    int applied;       // the probability gate passed
    double magnitude;  // after noise and clamping
    int negate;
    int resample;      // RA_BILINEAR or RA_BICUBIC
} RandAugDraw;
// Fills out[0 .. c->num_ops - 1].
void randaug_draws(const RandAugConfig *c, uint64_t seed, uint32_t epoch, uint64_t index, RandAugDraw *out);

// The whole RandAugment of one image, in place. VIT_ERR only when out of memory.
int randaug_apply(const RandAugConfig *c, uint8_t *px, int w, int h, int channels, uint64_t seed, uint32_t epoch,
                  uint64_t index);
