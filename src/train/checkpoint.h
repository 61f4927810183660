// Full-state checkpoints: one safetensors file holding the parameters under their official
// names, the optimizer slots under "optimizer/m/<name>" and "optimizer/v/<name>", and in the
// metadata the model config, the training position (update, epoch, step, dropout counter,
// seed, the epoch's running metrics) and the run's flags. Written atomically.
#pragma once
#include <stdint.h>
#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"

// Where a run stands; enough to continue it exactly.
typedef struct {
    long update;          // optimizer updates done
    int epoch;            // 0-based epoch in progress
    long step_in_epoch;   // micro-steps of that epoch done (a multiple of the accumulation)
    uint32_t micro;       // micro-steps done in the whole run (keys dropout)
    uint64_t seed;
    double loss_sum;      // running sums of the epoch in progress
    long hits, top5, seen;
} TrainState;

typedef struct {
    const char *key, *value;
} MetaPair;

// Host copies of params and slots (m or v may be NULL when the optimizer has none).
int checkpoint_save(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                    const float *m, const float *v, OptimizerKind opt, const TrainState *s, const MetaPair *extra,
                    int n_extra);

typedef struct {
    StFile st;
    ViTConfig cfg;
    int has_optimizer;
    OptimizerKind opt;
    TrainState state;
} Checkpoint;

// The file's metadata marks it as a vitc checkpoint.
int checkpoint_is_vitc(const StFile *st);
// Reads and checks the file; fills the model config and training state from its metadata.
int checkpoint_open(Checkpoint *ck, const char *path);
// Copies the parameters (and, when m/v are given, the optimizer slots) named by the table;
// a missing tensor or shape mismatch is an error naming the file and tensor.
int checkpoint_copy(const Checkpoint *ck, const char *path, const ParamTable *t, float *params, float *m, float *v);
void checkpoint_close(Checkpoint *ck);
