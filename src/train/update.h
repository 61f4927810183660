// One full optimizer update over the parameter table: global-norm clipping of the (already
// averaged) gradient, then the backend's update over the tensor ranges with and without
// weight decay, each at its layer's learning-rate scale (--layer_decay); and the moving
// average of the weights that follows an update (--model_ema).
#pragma once
#include "backend/backend.h"
#include "model/params.h"
#include "optim/ema.h"
#include "optim/optimizer.h"

// Clips and applies one update with learning rate lr; t is the 1-based update count. With
// the backend's multi-segment op the norm, clip scale and skip decision stay on the device
// (optim_step_issue below) and the host reads them once; without it they go through the host.
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

// The same update with its scalars on the device, in two halves so that a step can be issued
// (or captured as a CUDA graph) with no host wait inside. optim_step_issue writes the host's
// figures into sc (STEP_SCALARS doubles from be->alloc: skip, lr, adam's bias corrections for
// update t), then issues grad_norm_clip and optimizer_update_scalars; it waits for nothing.
// optim_step_result is the one read: *norm, and VIT_ERR ("gradient norm is ...") when the norm
// is not finite, in which case the device left parameters and slots untouched. On the CPU
// backend the parameters and slots are bit-identical to the host-scalar path.
int optim_step_issue(Backend *be, double *sc, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, int skip);
int optim_step_result(Backend *be, const double *sc, double *norm);

// Layer-wise learning-rate decay as timm's param_groups_layer_decay groups a ViT (its
// group_matcher): the patch embedding, class token and position embedding are layer 0, block
// i is layer i + 1, the final LayerNorm joins the last block's layer (timm's MATCH_PREV_GROUP),
// and the head (and pre_logits) is layer L + 1, L the number of blocks. A tensor's learning
// rate is scaled by decay^(L + 1 - layer); weight decay keeps its own rule (the entry's flag).
int layer_decay_blocks(const ParamTable *t);            // L: the blocks named in the table
int layer_decay_id(const char *name, int layers);       // the layer of an official name
double layer_decay_scale(double decay, int id, int layers);

// The average after optimizer update number `step` (1-based, counting this one): ema =
// lerp(ema, params, 1 - decay(step)) over n floats on the backend, decay as timm's ModelEmaV3.
void ema_apply(Backend *be, float *ema, const float *params, size_t n, const EmaConfig *e, long step);
