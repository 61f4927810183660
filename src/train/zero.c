#include "zero.h"
#include <stdlib.h>
#include <string.h>
#include "dist/dist.h"
#include "util/status.h"

// The slots live in backend memory (device memory on a GPU): checkpoint gathers and resume
// scatters go through host copies, so MPI only ever sees host memory. The per-step
// parameter all-gather runs where the parameters are: over MPI on the CPU backend, through
// the transport (NCCL, on the GPU) on a device.

int zero_slots_create(ZeroSlots *z, Backend *be, size_t total, OptimizerKind kind, int stage, const GradTransport *t) {
    memset(z, 0, sizeof *z);
    z->t = t;
    z->hi = total;
    z->sharded = stage >= 1 && dist_size() > 1;
    if (z->sharded) {
        int ranks = dist_size(), rank = dist_rank();
        z->counts = malloc((size_t)ranks * sizeof *z->counts);
        z->displs = malloc((size_t)ranks * sizeof *z->displs);
        if (!z->counts || !z->displs) return vit_fail("out of memory for the optimizer shard table");
        if (dist_shard_layout(total, z->counts, z->displs)) return VIT_ERR;
        z->lo = (size_t)z->displs[rank];
        z->hi = z->lo + (size_t)z->counts[rank];
    }
    size_t n = z->hi - z->lo, bytes = (n ? n : 1) * sizeof(float);  // a tiny model may leave a rank nothing
    if (optim_uses_m(kind) && !(z->m = be->alloc(be, bytes))) return VIT_ERR;
    if (optim_uses_v(kind) && !(z->v = be->alloc(be, bytes))) return VIT_ERR;
    if (z->m) be->zero(be, z->m, bytes);
    if (z->v) be->zero(be, z->v, bytes);
    return VIT_OK;
}

void zero_slots_destroy(ZeroSlots *z, Backend *be) {
    if (z->m) be->release(be, z->m);
    if (z->v) be->release(be, z->v);
    free(z->counts);
    free(z->displs);
    memset(z, 0, sizeof *z);
}

size_t zero_slots_bytes(const ZeroSlots *z) {
    return (z->hi - z->lo) * sizeof(float) * (size_t)((z->m != NULL) + (z->v != NULL));
}

// A host buffer for this rank's part, or NULL with vit_fail.
static float *host_part(const ZeroSlots *z) {
    float *h = malloc((z->hi - z->lo ? z->hi - z->lo : 1) * sizeof(float));
    if (!h) vit_fail("out of memory staging %zu optimizer slots", z->hi - z->lo);
    return h;
}

static int restore_one(const ZeroSlots *z, Backend *be, float *mine, const float *all) {
    if (!mine) return VIT_OK;
    size_t bytes = (z->hi - z->lo) * sizeof(float);
    if (!z->sharded) {
        if (all) be->upload(be, mine, all, bytes);
        return VIT_OK;
    }
    if (dist_rank() == 0) {  // rank 0 keeps its part of `all` (the scatter leaves it in place)
        be->upload(be, mine, all + z->lo, bytes);
        return dist_scatterv_float(all, NULL, z->counts, z->displs, 0);
    }
    float *h = host_part(z);  // out of memory: the error ends the job (MPI_Abort), the peers with it
    if (!h) return VIT_ERR;
    int rc = dist_scatterv_float(NULL, h, z->counts, z->displs, 0);
    if (rc == VIT_OK) be->upload(be, mine, h, bytes);
    free(h);
    return rc;
}

int zero_slots_restore(ZeroSlots *z, Backend *be, const float *m, const float *v) {
    if (z->sharded && dist_rank() == 0 && ((z->m && !m) || (z->v && !v)))
        return vit_fail("resuming sharded optimizer slots: rank 0 has no full copy to scatter");
    if (restore_one(z, be, z->m, m) || restore_one(z, be, z->v, v)) return VIT_ERR;
    return VIT_OK;
}

int zero_slots_step(ZeroSlots *z, Backend *be, const ParamTable *t, float *params, float *grads,
                    const OptimConfig *o, float lr, int step, double *norm) {
    return optim_step_range(be, t, params, grads, z->m, z->v, z->lo, z->hi, o, lr, step, norm);
}

int zero_slots_allgather(const ZeroSlots *z, float *params) {
    if (!z->sharded) return VIT_OK;
    if (z->t && z->t->allgather) return z->t->allgather(z->t->ctx, params, z->counts, z->displs);
    return dist_allgatherv_float(params, z->counts, z->displs);
}

static int gather_one(const ZeroSlots *z, Backend *be, const float *mine, float *all) {
    if (!mine) return VIT_OK;
    size_t bytes = (z->hi - z->lo) * sizeof(float);
    if (dist_rank() == 0) {  // rank 0's part goes straight into `all`, where the gather keeps it
        be->download(be, all + z->lo, mine, bytes);
        return z->sharded ? dist_gatherv_float(NULL, all, z->counts, z->displs, 0) : VIT_OK;
    }
    if (!z->sharded) return VIT_OK;
    float *h = host_part(z);
    if (!h) return VIT_ERR;
    be->download(be, h, mine, bytes);
    int rc = dist_gatherv_float(h, NULL, z->counts, z->displs, 0);
    free(h);
    return rc;
}

int zero_slots_gather(const ZeroSlots *z, Backend *be, float *m, float *v) {
    if (gather_one(z, be, z->m, m) || gather_one(z, be, z->v, v)) return VIT_ERR;
    return VIT_OK;
}
