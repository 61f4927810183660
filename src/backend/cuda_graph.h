// CUDA graphs of a training step (VIT_CUDA_GRAPH=1, docs/gpu.md; never run on a GPU yet):
// the ops a step issues are recorded once from the backend's stream and replayed with one
// launch, so the host pays one launch per step instead of one per kernel. Plain C, as
// cuda_backend.h: only in builds with -DVIT_CUDA.
//
// What can be captured: ops that hold no host wait (no download, synchronize, sum_squares,
// upload from pageable memory, upload_async/wait_uploads, NCCL, profiling wrappers), after one
// eager run of the same sequence (so scratch buffers, cuBLASLt plans and the optimizer's chunk
// table exist: capture allocates nothing). The device pointers and shapes are baked in: a step
// with another batch shape runs eagerly. Values that change per step travel through device
// memory the host writes before each launch (scalars_write: the learning rate, the update
// count's bias corrections). A scratch buffer that grows later (a bigger eager op) would leave
// the graph pointing at released memory: recapture after anything that may grow one.
#pragma once
#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CudaGraph CudaGraph;

// Whether VIT_CUDA_GRAPH=1 asks for graphs (0 when unset or "0"; other values: 0 and a note
// on stderr, once).
int backend_cuda_graph_requested(void);
// A graph for the ops of `be`, empty until captured. NULL (with vit_fail) when `be` is not a
// backend made by backend_cuda_create (a profiling wrapper is not: profiling runs eagerly).
CudaGraph *backend_cuda_graph_create(Backend *be);
// Everything `be` issues between begin and end is recorded, not run. end instantiates it
// (replacing an earlier capture); VIT_ERR with a one-line message when the capture broke (an
// op waited for the host): the ops issued during the capture did not run, the graph stays
// empty, and the caller goes on eagerly.
int backend_cuda_graph_begin(CudaGraph *g);
int backend_cuda_graph_end(CudaGraph *g);
// Whether a capture is instantiated.
int backend_cuda_graph_ready(const CudaGraph *g);
// Runs the captured ops once, on the backend's stream after what was issued before (async).
int backend_cuda_graph_launch(CudaGraph *g);
void backend_cuda_graph_destroy(CudaGraph *g);

#ifdef __cplusplus
}
#endif
