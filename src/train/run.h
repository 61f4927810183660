// What one train_run holds while it runs, shared by the pieces of the loop (private to
// src/train): trainer.c (set-up and the epoch loop), step.c (one micro-step), update.c (the
// update at the end of an accumulation window), run_checkpoint.c (checkpoints: the one place
// a TrainState is built), epoch_end.c (validation, summaries, the epoch's checkpoint).
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "data/loader.h"
#include "dist/dist.h"
#include "train/trainer.h"
#include "train/zero.h"

// One micro-step's figures, summed over the ranks in one all-reduce: every rank then agrees
// on the metrics and on whether to stop.
typedef struct {
    double loss;       // sum of the per-image losses
    double hits, top5; // top-1 and top-5 hits
    double nonfinite;  // ranks whose loss is not finite
    double stop;       // ranks that received a stop signal
} Agreement;

// Host copies for checkpoints, allocated at the first save.
typedef struct {
    float *params, *m, *v, *ema;
    char (*written)[1100];  // paths of epoch/step checkpoints, oldest first (for --keep_checkpoints)
    int n_written;
} SaveState;

typedef struct {
    TrainSetup *s;
    TrainResult *r;
    ViT *m;
    Backend *be;
    FILE *out;                 // rank 0's report stream, NULL on the other ranks
    int B, A, Bl, rank, ranks; // global batch, accumulation, this rank's share of a batch
    long steps;                // micro-steps per epoch (a whole number of updates)
    Loader *ld;
    int *order, *seq;          // the epoch's global order; this rank's part of it
    ZeroSlots slots;
    int slots_ready;
    float *ema;                // the weights' moving average (device, every rank whole; NULL: off)
    double *scalars;           // device: the update's scalars (STEP_SCALARS), then the micro-step's
                               // metric sums (METRICS); run_alloc_scalars
    struct StepGraph *graph;   // step.c: CUDA graphs of the passes (VIT_CUDA_GRAPH=1); NULL: not decided
    GradSync *sync;            // NULL: one rank, no transport
    SaveState save;
    TrainState start;          // where the run began (a resume point, or zeros)
    uint64_t drop_seed;        // this rank's dropout key
    long signal_at, nan_at;    // test hooks (VIT_TEST_SIGNAL_AT_STEP, VIT_TEST_NAN_AT_UPDATE)

    // Where the run stands.
    int epoch;
    long step;                 // micro-step within the epoch (0-based)
    long update, first_update; // optimizer updates done; at the start
    uint32_t micro;            // micro-steps done in the whole run (keys dropout)
    double lr;
    int window_bad;            // a non-finite loss in the accumulation window
    // The epoch's running sums.
    double loss_sum;
    long hits, top5, seen;
    // The TensorBoard summary window: metrics since the last summary.
    double win_loss, win_hits, win_seen, win_images, win_t;
    long win_update;
    // Throughput: images after the first update, timed from its end.
    double t_start, t_after_first;
    long images_after_first;
} Run;

// step.c: the next batch staged on the model's device (*labels: its host labels, valid
// until the next fetch); one micro-step, forward through the gradient sums.
int run_fetch(Run *run, const int **labels);
int run_micro_step(Run *run, const int **labels, int *pending, Agreement *ag);
void run_graph_destroy(Run *run);
// update.c: the update closing an accumulation window; *ok = 0 when it was skipped.
int run_update(Run *run, int *ok);
// update.c: run->scalars, allocated at the first micro-step (freed by trainer.c with the run).
int run_alloc_scalars(Run *run);
// run_checkpoint.c
TrainState run_state(const Run *run, int epoch, long step_in_epoch);
int run_save(Run *run, int epoch, long step_in_epoch, const char *tag, int counted);
int run_checkpoint_in_epoch(Run *run, int stop, int updated);
// epoch_end.c: reports, validation, summaries, the replica check and the epoch's checkpoint.
int run_epoch_end(Run *run);
void run_log_failed(Run *run);
// Replicas must hold the same parameters; a sum over them, compared across ranks every
// REPLICA_CHECK_EVERY updates and at each epoch end, catches a rank that drifted (a
// non-deterministic reduction, a bad host, a shard that missed the all-gather). It costs one
// pass over the parameters and an all-reduce of two doubles.
#define REPLICA_CHECK_EVERY 100
int run_check_replicas(Run *run);
