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

int optim_step_range(Backend *be, const ParamTable *table, float *params, float *grads, float *m, float *v,
                     size_t lo, size_t hi, const OptimConfig *o, float lr, int t, double *norm) {
    double n = sqrt(be->sum_squares(be, grads, table->total));
    *norm = n;
    if (!isfinite(n)) return vit_fail("gradient norm is %g", n);
    OptimStep s = {o->kind, lr, o->momentum, o->beta1, o->beta2, o->rho, o->epsilon, 0.0f, t, 1.0f};
    if (o->clip_norm > 0 && n > o->clip_norm) s.grad_scale = (float)(o->clip_norm / n);
    // Walk the table, merging neighbouring tensors that share the decay setting and the
    // learning-rate scale into one range, cut to [lo, hi): a run split between shards keeps
    // both on each side. With optimizer_update_segments all ranges go to the backend in one
    // call (one launch on a GPU instead of one per run); without it, one optimizer_update per
    // range, at the scaled rate the segments op would use.
    OptimSegment *segs = malloc((size_t)(table->count ? table->count : 1) * sizeof *segs);  // runs <= tensors
    float *scale = malloc((size_t)(table->count ? table->count : 1) * sizeof *scale);
    if (!segs || !scale) {
        free(segs), free(scale);
        return vit_fail("out of memory for %d optimizer segments", table->count);
    }
    entry_scales(table, o->layer_decay, scale);
    int i = 0, nsegs = 0, fused = be->optimizer_update_segments != NULL;
    while (i < table->count) {
        int decay = table->entries[i].decay, j = i;
        float sc = scale[i];
        size_t start = table->entries[i].offset, len = 0;
        while (j < table->count && table->entries[j].decay == decay && scale[j] == sc) len += table->entries[j++].size;
        size_t a = start > lo ? start : lo, b = start + len < hi ? start + len : hi;
        if (a < b && fused) {
            segs[nsegs++] = (OptimSegment){a, a - lo, b - a, decay != 0, sc};
        } else if (a < b) {
            s.weight_decay = decay ? o->weight_decay : 0.0f;
            s.lr = lr * sc;
            be->optimizer_update(be, params + a, grads + a, m ? m + (a - lo) : NULL, v ? v + (a - lo) : NULL, b - a,
                                 &s);
        }
        i = j;
    }
    if (fused && nsegs) {
        s.weight_decay = o->weight_decay;  // the backend zeroes it for segments without decay
        be->optimizer_update_segments(be, params, grads, m, v, segs, nsegs, &s);
    }
    free(segs), free(scale);
    return VIT_OK;
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
    prof_begin(s->prof, "update", "phase");
    *ok = !run->window_bad && zero_slots_step(&run->slots, be, &m->table, m->params, m->grads, &s->opt,
                                               (float)run->lr, (int)run->update + 1, &norm) == VIT_OK;
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
