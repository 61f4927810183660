#include "update.h"
#include <math.h>
#include <stdlib.h>
#include "run.h"
#include "util/clock.h"
#include "util/status.h"

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
        if (run->ranks > 1 && run->update % REPLICA_CHECK_EVERY == 0 && run_check_replicas(run)) return VIT_ERR;
    }
    if (run->update == run->first_update + 1 && *ok)
        run->t_after_first = clock_seconds();
    else
        run->images_after_first += (long)run->B * run->A;
    if (*ok && s->events && s->summary_every > 0 && run->update % s->summary_every == 0) summary(run);
    return VIT_OK;
}
