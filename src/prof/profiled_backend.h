// A backend that profiles another: every op of the returned table calls the same op of
// `inner` and, while the profiler is active, records a span named after the op ("gemm",
// "layernorm_forward", ...) with its shapes, modelled flops and bytes (see
// profiled_backend.c). The model stores its Backend at vit_create, so wrap first and pass
// the wrapper to vit_create; ops the inner table lacks stay NULL in the wrapper.
#pragma once
#include "backend/backend.h"
#include "prof/profile.h"

// sync nonzero: inner->synchronize runs before each op's end time is taken, so that spans of
// an asynchronous device (CUDA) measure the work and not its launch. It costs a device round
// trip per op, so leave it off on the CPU, whose ops return when done.
// alloc, release, synchronize and the attention size queries are forwarded unrecorded;
// upload, download and zero are recorded like ops. The wrapper keeps inner's name.
// Destroying the wrapper frees only the wrapper: the caller still owns and destroys inner
// (after the wrapper's last use) and the profiler. NULL (with vit_fail) on bad arguments or
// out of memory.
Backend *backend_profiled(Backend *inner, Profiler *p, int sync);
