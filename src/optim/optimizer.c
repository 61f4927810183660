#include "optimizer.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/status.h"

int optim_config_default(OptimConfig *o, const char *name) {
    memset(o, 0, sizeof *o);
    o->clip_norm = 1.0f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    if (!strcasecmp(name, "sgd")) {
        o->kind = OPT_SGD;
        o->momentum = 0.9f;
    } else if (!strcasecmp(name, "adam")) {
        o->kind = OPT_ADAM;
        o->epsilon = 1e-2f;  // the recipe's Keras setting
    } else if (!strcasecmp(name, "adamw")) {
        o->kind = OPT_ADAMW;
        o->epsilon = 1e-8f;
        o->weight_decay = 0.01f;
    } else if (!strcasecmp(name, "rmsprop")) {
        o->kind = OPT_RMSPROP;
        o->rho = 0.9f;
        o->epsilon = 1e-2f;
    } else {
        return vit_fail("--optimizer %s: expected sgd, adam, adamw or rmsprop", name);
    }
    return VIT_OK;
}

const char *optim_name(OptimizerKind k) {
    static const char *names[] = {"sgd", "adam", "adamw", "rmsprop"};
    return names[k];
}

int optim_uses_m(OptimizerKind k) { return k != OPT_RMSPROP; }
int optim_uses_v(OptimizerKind k) { return k != OPT_SGD; }

int optim_step(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
               const OptimConfig *o, float lr, int t, double *norm) {
    return optim_step_range(be, table, params, grads, m, v, 0, table->total, o, lr, t, norm);
}

int optim_step_range(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, double *norm) {
    double n = sqrt(be->sum_squares(be, grads, table->total));
    *norm = n;
    if (!isfinite(n)) return vit_fail("gradient norm is %g", n);
    OptimStep s = {o->kind, lr, o->momentum, o->beta1, o->beta2, o->rho, o->epsilon, 0.0f, t, 1.0f};
    if (o->clip_norm > 0 && n > o->clip_norm) s.grad_scale = (float)(o->clip_norm / n);
    // Walk the table, merging neighbouring tensors that share the decay setting into one
    // range, cut to [lo, hi): a run split between shards keeps its decay setting on both sides.
    // With optimizer_update_segments all ranges go to the backend in one call (one launch on
    // a GPU instead of one per run); without it, one optimizer_update per range.
    OptimSegment *segs = NULL;
    if (be->optimizer_update_segments && table->count > 0) {
        segs = malloc((size_t)table->count * sizeof *segs);  // runs <= tensors
        if (!segs) return vit_fail("out of memory for %d optimizer segments", table->count);
    }
    int i = 0, nsegs = 0;
    while (i < table->count) {
        int decay = table->entries[i].decay, j = i;
        size_t start = table->entries[i].offset, len = 0;
        while (j < table->count && table->entries[j].decay == decay) len += table->entries[j++].size;
        size_t a = start > lo ? start : lo, b = start + len < hi ? start + len : hi;
        if (a < b && segs) {
            segs[nsegs++] = (OptimSegment){a, a - lo, b - a, decay != 0};
        } else if (a < b) {
            s.weight_decay = decay ? o->weight_decay : 0.0f;
            be->optimizer_update(be, params + a, grads + a, m ? m + (a - lo) : NULL, v ? v + (a - lo) : NULL, b - a,
                                 &s);
        }
        i = j;
    }
    if (segs) {
        s.weight_decay = o->weight_decay;  // the backend zeroes it for segments without decay
        if (nsegs) be->optimizer_update_segments(be, params, grads, m, v, segs, nsegs, &s);
        free(segs);
    }
    return VIT_OK;
}
