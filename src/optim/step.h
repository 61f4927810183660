// What one optimizer update is, as the backends apply it: the kind, the step's constants,
// and the parameter ranges it covers. Plain data, so the backends (below the model in the
// layering) can take it without knowing the parameter table.
#pragma once
#include <stddef.h>

typedef enum { OPT_SGD, OPT_ADAM, OPT_ADAMW, OPT_RMSPROP } OptimizerKind;

// One optimizer update over a contiguous range of parameters.
typedef struct {
    OptimizerKind kind;
    float lr;
    float momentum;      // sgd
    float beta1, beta2;  // adam, adamw
    float rho;           // rmsprop
    float epsilon;
    float weight_decay;  // decoupled: p -= lr * wd * p (0 for ranges without decay)
    int t;               // 1-based update count (adam bias correction)
    float grad_scale;    // gradients are multiplied by this first (global-norm clipping)
} OptimStep;

// One parameter range of a multi-tensor optimizer update (offsets in floats). lr_scale
// multiplies the step's learning rate for this range (layer-wise decay, --layer_decay; 1 =
// the step's rate), and with it the decoupled weight decay, as timm's per-group "lr_scale"
// does: the range is updated exactly as by an OptimStep whose lr is fp32(lr * lr_scale).
typedef struct {
    size_t param, slot, n;
    int decay;
    float lr_scale;
} OptimSegment;
