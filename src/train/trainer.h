// The training loop: epochs of micro-steps, gradient accumulation, clipping, the learning
// rate schedule, validation after each epoch, progress and the final summary. Under MPI
// (src/dist) every rank runs it on its share of each global batch; rank 0 alone reports
// and writes checkpoints.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "data/dataset.h"
#include "dist/dist.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "io/events.h"
#include "optim/ema.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "prof/profile.h"
#include "model/vit.h"

typedef struct {
    ViT *model;                  // planned for `batch` / ranks with training = 1
    const Dataset *train, *val;  // val may be NULL
    OptimConfig opt;             // opt.layer_decay: layer-wise learning-rate decay (0 = off)
    EmaConfig ema;               // --model_ema: a moving average of the weights, kept on the device,
                                 // validated beside them and saved in every checkpoint
    int zero;                    // 1: each rank keeps the optimizer slots of its 1/N of the parameters (--zero)
    const GradTransport *grad_transport;  // how gradient buckets are summed (NCCL on GPUs); NULL: MPI
                                          // on host memory. Given, it is used even with one rank.
    Schedule sched;              // epochs and updates_per_epoch are set by train_run
    int batch, accum, epochs;    // batch: global, split evenly across the MPI ranks
    long steps_per_epoch;        // micro-steps; 0 = train->count / batch
    long validation_steps;       // batches; -1 = the whole set, 0 = none
    int workers;                 // data loader threads (0 = the cores)
    int prefetch;                // batches prepared ahead
    float smoothing;
    uint64_t seed;
    FILE *out;                   // progress and reports

    const TrainState *resume;    // continue from here (NULL: from the start)
    const float *resume_m, *resume_v;  // full host optimizer slots to restore (NULL: zeros); with
                                       // sharded slots only rank 0's are read (others may pass NULL)
    const float *resume_ema;     // the average to continue (every rank; NULL: start from the weights)
    int start_epoch;             // without `resume`: first epoch (--resume_from_epoch, weights only)

    const char *save_dir;        // NULL: no checkpoints
    long checkpoint_every;       // also every N updates (0: epoch ends only)
    int keep;                    // keep the newest K epoch/step checkpoints (0: all)
    const MetaPair *meta;        // recorded in every checkpoint (the run's flags)
    int n_meta;

    EventWriter *events;         // TensorBoard training scalars (NULL: none; rank 0 only)
    EventWriter *eval_events;    // TensorBoard validation scalars (NULL: none)
    long summary_every;          // training scalars every N updates (0: per epoch only)
    Profiler *prof;              // spans of micro-steps prof_first..prof_last (1-based); NULL: off
    long prof_first, prof_last;

    int skip_nonfinite;          // skip updates whose loss or gradient norm is not finite (else stop)
    const char *resume_command;  // printed after a stop by signal, followed by the checkpoint path
} TrainSetup;

typedef struct {
    double train_loss, train_top1;  // mean over the last epoch
    EvalResult val;                 // last validation (images = 0 when none ran)
    EvalResult val_ema;             // the same for the weights' moving average (--model_ema)
    double images_per_sec;          // training throughput after the first update
    long updates;
    double seconds;
    char last_checkpoint[1100];     // path of the newest checkpoint written ("" if none)
    int stopped_by_signal;          // the run stopped early on SIGINT/SIGTERM/SIGUSR1 (after a checkpoint)
    long skipped_updates;           // updates skipped for a non-finite loss or gradient (--skip_nonfinite)
    double allreduce_wait;          // seconds blocked waiting for the gradient all-reduce (data parallel)
    double data_wait;               // seconds the training loop waited for the loader (input stall)
    double optimizer_state_bytes;   // optimizer slots held by this rank (1/N of them with --zero 1)
} TrainResult;

int train_run(TrainSetup *s, TrainResult *r);
