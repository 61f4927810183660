// The training loop: epochs of micro-steps, gradient accumulation, clipping, the learning
// rate schedule, validation after each epoch, progress and the final summary.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "data/dataset.h"
#include "io/checkpoint.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "vit.h"

typedef struct {
    ViT *model;                  // planned for `batch` with training = 1
    const Dataset *train, *val;  // val may be NULL
    OptimConfig opt;
    Schedule sched;              // epochs and updates_per_epoch are set by train_run
    int batch, accum, epochs;
    long steps_per_epoch;        // micro-steps; 0 = train->count / batch
    long validation_steps;       // batches; -1 = the whole set, 0 = none
    int workers;                 // data loader threads (0 = the cores)
    int prefetch;                // batches prepared ahead
    float smoothing;
    uint64_t seed;
    FILE *out;                   // progress and reports

    const TrainState *resume;    // continue from here (NULL: from the start)
    const float *resume_m, *resume_v;  // host optimizer slots to restore (NULL: zeros)
    int start_epoch;             // without `resume`: first epoch (--resume_from_epoch, weights only)

    const char *save_dir;        // NULL: no checkpoints
    long checkpoint_every;       // also every N updates (0: epoch ends only)
    int keep;                    // keep the newest K epoch/step checkpoints (0: all)
    const MetaPair *meta;        // recorded in every checkpoint (the run's flags)
    int n_meta;
} TrainSetup;

typedef struct {
    double loss, top1, top5;
    long images;
    double images_per_sec;
    long skipped;                   // unreadable samples substituted (--skip_corrupt)
} EvalResult;

typedef struct {
    double train_loss, train_top1;  // mean over the last epoch
    EvalResult val;                 // last validation (images = 0 when none ran)
    double images_per_sec;          // training throughput after the first update
    long updates;
    double seconds;
    char last_checkpoint[1100];     // path of the newest checkpoint written ("" if none)
} TrainResult;

int train_run(TrainSetup *s, TrainResult *r);
// Evaluates `steps` batches (-1 = all) of d in order, without dropout.
int evaluate(ViT *m, const Dataset *d, int batch, long steps, int workers, EvalResult *r);
