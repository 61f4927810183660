// Multi-GPU gradient sums over NCCL: one process per GPU under mpirun, one communicator per
// run. Rank 0's NCCL unique id reaches the other ranks over MPI (dist_bcast); without MPI
// (one process) the communicator has a single rank, which sums as the identity. Buckets are
// all-reduced in place on a communication stream of their own that first waits for the
// compute stream's work so far, so the sums overlap the rest of the backward pass; finish
// makes the compute stream wait for the sums before the optimizer update reads them.
// Built with -DVIT_NCCL (make finds nccl.h); otherwise nccl_sync_create fails saying so.
#pragma once
#include "backend/backend.h"
#include "dist/dist.h"

typedef struct NcclSync NcclSync;

// Collective over the MPI ranks: every rank calls it at the same point. `cuda` is the CUDA
// backend itself (not a profiling wrapper). NULL with a one-line vit_fail naming the call.
NcclSync *nccl_sync_create(Backend *cuda);
// Waits for the sums in flight, then frees the communicator and the stream.
void nccl_sync_destroy(NcclSync *s);
// The transport for gradsync_create_with; its wait_seconds is the time the compute stream
// stood waiting for the sums after each backward pass (measured with CUDA events).
GradTransport nccl_sync_transport(NcclSync *s);
