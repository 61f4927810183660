// Optimizer configuration, defaults of the recipe, and one full update: global-norm
// clipping of the (already averaged) gradient, then the update, tensor ranges with and
// without weight decay taken from the parameter table.
#pragma once
#include "backend/backend.h"
#include "model/params.h"

typedef struct {
    OptimizerKind kind;
    float momentum, beta1, beta2, rho, epsilon, weight_decay;
    float clip_norm;  // 0 = off
} OptimConfig;

// "sgd" | "adam" | "adamw" | "rmsprop"; fills the recipe's hyperparameters for that kind.
int optim_config_default(OptimConfig *o, const char *name);
const char *optim_name(OptimizerKind k);
// Whether the optimizer needs the first (m) / second (v) moment slot.
int optim_uses_m(OptimizerKind k);
int optim_uses_v(OptimizerKind k);

// Clips and applies one update with learning rate lr; t is the 1-based update count.
// Returns the gradient's global norm before clipping in *norm (NaN/Inf are returned as
// they are; the caller decides). Returns VIT_ERR when the norm is not finite, without
// touching the parameters.
int optim_step(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
               const OptimConfig *o, float lr, int t, double *norm);
// The same update for the parameters [lo, hi) only, whose slots m and v hold hi - lo floats
// (a rank's shard under ZeRO stage 1). The norm is still that of the whole gradient, and each
// element gets the very operations optim_step gives it, so the shards together update
// bit-identically to one optim_step.
int optim_step_range(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, double *norm);
