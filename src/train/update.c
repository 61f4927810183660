#include "update.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "run.h"
#include "util/clock.h"
#include "util/status.h"

int optim_step(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
               const OptimConfig *o, float lr, int t, double *norm) {
    return optim_step_range(be, table, params, grads, m, v, 0, table->total, o, lr, t, norm);
}

// A block index from "Transformer/encoderblock_<i>/...", or -1.
static int block_index(const char *name) {
    static const char prefix[] = "Transformer/encoderblock_";
    if (strncmp(name, prefix, sizeof prefix - 1)) return -1;
    const char *d = name + sizeof prefix - 1;
    int i = 0;
    if (*d < '0' || *d > '9') return -1;
    for (; *d >= '0' && *d <= '9' && i < 1000000; d++) i = i * 10 + (*d - '0');
    return *d == '/' ? i : -1;
}

int layer_decay_blocks(const ParamTable *t) {
    int layers = 0;
    for (int i = 0; i < t->count; i++) {
        int b = block_index(t->entries[i].name);
        if (b + 1 > layers) layers = b + 1;
    }
    return layers;
}

// timm's group_matcher for ViT puts cls_token, pos_embed and patch_embed in the stem (0),
// blocks.i in i + 1, and "norm" with MATCH_PREV_GROUP into the last block's group (layers);
// what it does not match (head, and pre_logits here) gets the top id, layers + 1.
int layer_decay_id(const char *name, int layers) {
    if (!strncmp(name, "embedding/", 10) || !strcmp(name, "cls") || !strncmp(name, "Transformer/posembed_input/", 27))
        return 0;
    int b = block_index(name);
    if (b >= 0) return b + 1;
    if (!strncmp(name, "Transformer/encoder_norm/", 25)) return layers;
    return layers + 1;
}

double layer_decay_scale(double decay, int id, int layers) { return pow(decay, (double)(layers + 1 - id)); }

// The learning-rate scale of each table entry (1 everywhere without --layer_decay).
static void entry_scales(const ParamTable *t, double layer_decay, float *scale) {
    int layers = layer_decay > 0 ? layer_decay_blocks(t) : 0;
    for (int i = 0; i < t->count; i++)
        scale[i] = layer_decay > 0 ? (float)layer_decay_scale(layer_decay, layer_decay_id(t->entries[i].name, layers),
                                                              layers)
                                   : 1.0f;
}

// The table's runs as optimizer segments cut to [lo, hi): neighbouring tensors that share the
// decay setting and the learning-rate scale merge into one run, and a run split between shards
// keeps both on each side. Returns the count, or -1 (with vit_fail) when out of memory.
static int build_segments(const ParamTable *table, size_t lo, size_t hi, double layer_decay, OptimSegment **out) {
    OptimSegment *segs = malloc((size_t)(table->count ? table->count : 1) * sizeof *segs);  // runs <= tensors
    float *scale = malloc((size_t)(table->count ? table->count : 1) * sizeof *scale);
    if (!segs || !scale) {
        free(segs), free(scale);
        return vit_fail("out of memory for %d optimizer segments", table->count), -1;
    }
    entry_scales(table, layer_decay, scale);
    int i = 0, nsegs = 0;
    while (i < table->count) {
        int decay = table->entries[i].decay, j = i;
        float sc = scale[i];
        size_t start = table->entries[i].offset, len = 0;
        while (j < table->count && table->entries[j].decay == decay && scale[j] == sc) len += table->entries[j++].size;
        size_t a = start > lo ? start : lo, b = start + len < hi ? start + len : hi;
        if (a < b) segs[nsegs++] = (OptimSegment){a, a - lo, b - a, decay != 0, sc};
        i = j;
    }
    free(scale);
    *out = segs;
    return nsegs;
}

static OptimStep step_of(const OptimConfig *o, float lr, int t) {
    return (OptimStep){o->kind, lr, o->momentum, o->beta1, o->beta2, o->rho, o->epsilon, o->weight_decay, t, 1.0f};
}

int optim_step_issue(Backend *be, double *sc, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, int skip) {
    OptimSegment *segs;
    int nsegs = build_segments(table, lo, hi, o->layer_decay, &segs);
    if (nsegs < 0) return VIT_ERR;
    // What the host knows before the step: the skip decision so far, the rate, and adam's bias
    // corrections (in double from t, as the host-scalar op computes them).
    const double known[4] = {skip ? 1.0 : 0.0, lr, 1.0 - pow(o->beta1, t), sqrt(1.0 - pow(o->beta2, t))};
    be->scalars_write(be, sc + STEP_SKIP, known, 4);
    be->grad_norm_clip(be, sc, grads, table->total, o->clip_norm);
    // weight_decay as given: the backend zeroes it for segments without decay.
    const OptimStep s = step_of(o, lr, t);
    if (nsegs) be->optimizer_update_scalars(be, params, grads, m, v, segs, nsegs, &s, sc);
    free(segs);
    return VIT_OK;
}

int optim_step_result(Backend *be, const double *sc, double *norm) {
    double h[STEP_SCALARS];
    be->download(be, h, sc, sizeof h);  // the step's one wait (NaN bytes after a device failure)
    *norm = h[STEP_NORM];
    if (!isfinite(h[STEP_NORM])) return vit_fail("gradient norm is %g", h[STEP_NORM]);
    return h[STEP_SKIP] != 0 ? vit_fail("update skipped") : VIT_OK;
}

// The host-scalar path, for a backend without the multi-segment op: the norm comes to the
// host, which decides clipping and finiteness, then one optimizer_update per run at its
// scaled rate (what the segments op would compute).
static int step_on_host(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
                        size_t lo, size_t hi, const OptimConfig *o, float lr, int t, double *norm) {
    double n = sqrt(be->sum_squares(be, grads, table->total));
    *norm = n;
    if (!isfinite(n)) return vit_fail("gradient norm is %g", n);
    OptimStep s = step_of(o, lr, t);
    if (o->clip_norm > 0 && n > o->clip_norm) s.grad_scale = (float)(o->clip_norm / n);
    OptimSegment *segs;
    int nsegs = build_segments(table, lo, hi, o->layer_decay, &segs);
    if (nsegs < 0) return VIT_ERR;
    for (int i = 0; i < nsegs; i++) {
        const OptimSegment *g = &segs[i];
        s.weight_decay = g->decay ? o->weight_decay : 0.0f;
        s.lr = lr * g->lr_scale;
        be->optimizer_update(be, params + g->param, grads + g->param, m ? m + g->slot : NULL, v ? v + g->slot : NULL,
                             g->n, &s);
    }
    free(segs);
    return VIT_OK;
}

int optim_step_range(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, double *norm) {
    *norm = NAN;
    if (!be->optimizer_update_segments)
        return step_on_host(be, table, params, grads, m, v, lo, hi, o, lr, t, norm);
    // Device-side scalars (one small buffer for this call; the trainer keeps one per run).
    double *sc = be->alloc(be, STEP_SCALARS * sizeof(double));
    if (!sc) return VIT_ERR;
    int rc = optim_step_issue(be, sc, table, params, grads, m, v, lo, hi, o, lr, t, 0);
    if (rc == VIT_OK) rc = optim_step_result(be, sc, norm);
    be->release(be, sc);
    return rc;
}

void ema_apply(Backend *be, float *ema, const float *params, size_t n, const EmaConfig *e, long step) {
    double decay = ema_decay_at(e, step);
    be->ema_update(be, ema, params, n, (float)(1.0 - decay));  // timm: lerp weight 1 - decay
}

// TensorBoard scalars of one summary window. A failed write is reported once and logging
// stops; the run itself goes on (a full log disk must not cost the training).
static void summary(Run *run) {
    EventWriter *ev = run->s->events;
    long step = run->update;
    double now = clock_seconds(), dt = now - run->win_t;
    if (events_scalar(ev, "loss", step, run->win_loss / run->win_seen) ||
        events_scalar(ev, "accuracy", step, run->win_hits / run->win_seen) ||
        events_scalar(ev, "learning_rate", step, run->lr) ||
        events_scalar(ev, "examples/sec", step, run->win_images / dt) ||
        events_scalar(ev, "global_step/sec", step, (run->update - run->win_update) / dt) || events_flush(ev))
        run_log_failed(run);
    run->win_t = now, run->win_update = run->update;
    run->win_loss = run->win_hits = run->win_seen = run->win_images = 0;
}

int run_alloc_scalars(Run *run) {
    run->scalars = run->be->alloc(run->be, (STEP_SCALARS + METRICS) * sizeof(double));
    return run->scalars ? VIT_OK : VIT_ERR;
}

// Clip and update (this rank's shard under --zero 1, then the all-gather), unless the window
// saw a non-finite loss or the gradient norm is not finite: then the update is skipped
// (--skip_nonfinite) or the run stops.
int run_update(Run *run, int *ok) {
    TrainSetup *s = run->s;
    ViT *m = run->m;
    Backend *be = run->be;
    run->lr = schedule_lr(&s->sched, run->epoch, run->update);
    if ((long)(run->micro / run->A) == run->nan_at) {  // test hook: poison the gradients of one update
        float bad = NAN;
        be->upload(be, m->grads, &bad, sizeof bad);
    }
    double norm = NAN;
    // The step's scalars stay on the device (one buffer per run); the host reads them once,
    // after the update is issued.
    if (!run->scalars && run_alloc_scalars(run)) return VIT_ERR;
    prof_begin(s->prof, "update", "phase");
    if (run->window_bad)
        *ok = 0;
    else if (be->optimizer_update_segments)
        *ok = optim_step_issue(be, run->scalars, &m->table, m->params, m->grads, run->slots.m, run->slots.v,
                               run->slots.lo, run->slots.hi, &s->opt, (float)run->lr, (int)run->update + 1,
                               0) == VIT_OK &&
              optim_step_result(be, run->scalars, &norm) == VIT_OK;
    else
        *ok = zero_slots_step(&run->slots, be, &m->table, m->params, m->grads, &s->opt, (float)run->lr,
                              (int)run->update + 1, &norm) == VIT_OK;
    prof_end(s->prof);
    if (*ok && run->slots.sharded) {  // every rank updated its shard: share them (the norm agrees, so all do)
        prof_begin(s->prof, "allgather", "comm");
        int rc = zero_slots_allgather(&run->slots, m->params);
        prof_end(s->prof);
        if (rc) return rc;
    }
    if (!*ok && !s->skip_nonfinite)
        return vit_fail("epoch %d, update %ld: gradient norm is %g (loss %g); stopping (the last checkpoint is kept; "
                        "--skip_nonfinite skips such updates)",
                        run->epoch + 1, run->update + 1, norm, run->loss_sum / run->seen);
    if (!*ok) {
        run->r->skipped_updates++;
        if (run->out)
            fprintf(run->out, "\nepoch %d, update %ld: non-finite loss or gradient norm (%g): update skipped (%ld so far)\n",
                    run->epoch + 1, run->update + 1, norm, run->r->skipped_updates);
    } else {
        run->update++;
        // After the update (and its all-gather): every rank averages the same whole weights.
        if (run->ema) ema_apply(be, run->ema, m->params, m->table.total, &s->ema, run->update);
        if (run->ranks > 1 && run->update % REPLICA_CHECK_EVERY == 0 && run_check_replicas(run)) return VIT_ERR;
    }
    if (run->update == run->first_update + 1 && *ok)
        run->t_after_first = clock_seconds();
    else
        run->images_after_first += (long)run->B * run->A;
    if (*ok && s->events && s->summary_every > 0 && run->update % s->summary_every == 0) summary(run);
    return VIT_OK;
}
