// One full optimizer update over the parameter table: global-norm clipping of the (already
// averaged) gradient, then the backend's update over the tensor ranges with and without
// weight decay.
#pragma once
#include "backend/backend.h"
#include "model/params.h"
#include "optim/optimizer.h"

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
