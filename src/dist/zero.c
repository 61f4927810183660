#include "zero.h"
#include <stdlib.h>
#include <string.h>
#include "dist.h"
#include "util/status.h"

// MPI reads and writes the slots and parameters in backend memory directly, as the gradient
// all-reduce does: host memory on the CPU backend (--distributed refuses --device cuda).

int zero_slots_create(ZeroSlots *z, Backend *be, size_t total, OptimizerKind kind, int stage) {
    memset(z, 0, sizeof *z);
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

static int restore_one(const ZeroSlots *z, Backend *be, float *mine, const float *all) {
    if (!mine) return VIT_OK;
    size_t bytes = (z->hi - z->lo) * sizeof(float);
    if (!z->sharded) {
        if (all) be->upload(be, mine, all, bytes);
        return VIT_OK;
    }
    if (dist_rank() == 0) be->upload(be, mine, all + z->lo, bytes);
    return dist_scatterv_float(all, mine, z->counts, z->displs, 0);
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
    return z->sharded ? dist_allgatherv_float(params, z->counts, z->displs) : VIT_OK;
}

static int gather_one(const ZeroSlots *z, Backend *be, const float *mine, float *all) {
    if (!mine) return VIT_OK;
    int root = dist_rank() == 0;
    size_t bytes = (z->hi - z->lo) * sizeof(float);
    if (root) be->download(be, all + z->lo, mine, bytes);
    return z->sharded ? dist_gatherv_float(mine, all, z->counts, z->displs, 0) : VIT_OK;
}

int zero_slots_gather(const ZeroSlots *z, Backend *be, float *m, float *v) {
    if (gather_one(z, be, z->m, m) || gather_one(z, be, z->v, v)) return VIT_ERR;
    return VIT_OK;
}
