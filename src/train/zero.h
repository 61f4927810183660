// Optimizer slots (Adam m and v, SGD momentum, RMSprop state) of one rank, whole or sharded
// (--zero 1, "ZeRO stage 1"). Stage 0, or a single rank, keeps the slots of the whole
// parameter buffer, as a plain run does. Stage 1 over N ranks keeps only those of the rank's
// contiguous 1/N of the buffer: gradients are still all-reduced whole (so clipping sees the
// global norm), each rank updates its shard of the parameters, and an all-gather then gives
// every rank the whole, bit-identical model. Checkpoints hold the full slots either way:
// rank 0 gathers them to write and scatters them on resume.
#pragma once
#include <stddef.h>
#include "backend/backend.h"
#include "dist/dist.h"
#include "model/params.h"
#include "train/update.h"

typedef struct {
    int sharded;            // stage 1 over more than one rank
    size_t lo, hi;          // this rank's part of the parameter buffer: [lo, hi)
    float *m, *v;           // backend memory of hi - lo floats (NULL: the optimizer has no such slot)
    int *counts, *displs;   // every rank's part (sharded only)
    const GradTransport *t; // gathers the parameters where its allgather is set (NCCL), else MPI
} ZeroSlots;

// Zeroed slots for a buffer of `total` floats; stage 0 or 1. t: the gradient transport of a
// device backend (NCCL), or NULL for MPI on host memory.
int zero_slots_create(ZeroSlots *z, Backend *be, size_t total, OptimizerKind kind, int stage, const GradTransport *t);
void zero_slots_destroy(ZeroSlots *z, Backend *be);
// Bytes of slots this rank holds.
size_t zero_slots_bytes(const ZeroSlots *z);
// Loads full host slots (m or v NULL: none). Sharded: every rank calls, rank 0's are read and
// each rank receives its part; otherwise each rank loads its own full copy.
int zero_slots_restore(ZeroSlots *z, Backend *be, const float *m, const float *v);
// Clips with the global norm and updates this rank's part of the parameters (optim_step_range).
int zero_slots_step(ZeroSlots *z, Backend *be, const ParamTable *t, float *params, float *grads,
                    const OptimConfig *o, float lr, int step, double *norm);
// Sharded: every rank's updated part of params to every rank (in place); otherwise nothing.
int zero_slots_allgather(const ZeroSlots *z, float *params);
// Full host copies of the slots on rank 0 (m, v of the whole buffer there; ignored elsewhere).
// Sharded: a collective every rank calls; otherwise only rank 0 needs to.
int zero_slots_gather(const ZeroSlots *z, Backend *be, float *m, float *v);
