// The end of an epoch: the loader's report, the epoch's training figures, validation,
// TensorBoard epoch scalars, the replica check and the epoch's checkpoint.
#include <math.h>
#include "run.h"
#include "util/clock.h"
#include "util/status.h"

void run_log_failed(Run *run) {
    TrainSetup *s = run->s;
    fprintf(s->out, "warning: TensorBoard logging stopped: %s\n", vit_error());
    events_close(s->events);
    events_close(s->eval_events);
    s->events = s->eval_events = NULL;
}

int run_check_replicas(Run *run) {
    Backend *be = run->be;
    double v[2];
    v[0] = be->sum_squares(be, run->m->params, run->m->table.total);
    v[1] = -v[0];
    if (dist_allreduce_max_double(v, 2)) return VIT_ERR;
    if (v[0] != -v[1])
        return vit_fail("epoch %d, update %ld: the ranks' parameters differ (sum of squares %.17g vs %.17g)",
                        run->epoch + 1, run->update, v[0], -v[1]);
    return VIT_OK;
}

static void print_validation(Run *run, const char *what, const EvalResult *v) {
    if (!run->out) return;
    fprintf(run->out, "epoch %d/%d  %s: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%ld images, %.0f img/s)\n",
            run->epoch + 1, run->s->epochs, what, v->loss, 100 * v->top1, 100 * v->top5, v->images, v->images_per_sec);
    fflush(run->out);
}

// Validation on this rank's share of each batch; its time is not training time. With
// --model_ema the average is validated too, by pointing the model at it for the pass (the
// forward pass reads m->params only; every rank holds the whole average).
static int validate(Run *run) {
    TrainSetup *s = run->s;
    TrainResult *r = run->r;
    ViT *m = run->m;
    double t0 = clock_seconds();
    prof_begin(s->prof, "validation", "phase");
    int rc = evaluate(m, s->val, run->Bl, s->validation_steps, s->workers, &r->val);
    if (rc == VIT_OK && run->ema) {
        float *live = m->params;
        m->params = run->ema;
        rc = evaluate(m, s->val, run->Bl, s->validation_steps, s->workers, &r->val_ema);
        m->params = live;
    }
    prof_end(s->prof);
    if (rc != VIT_OK) return rc;
    run->t_after_first += clock_seconds() - t0;
    print_validation(run, "validation", &r->val);
    if (run->ema) print_validation(run, "validation (EMA)", &r->val_ema);
    return VIT_OK;
}

// Epoch scalars for TensorBoard; a failed write stops logging, not the run.
static void epoch_scalars(Run *run) {
    TrainSetup *s = run->s;
    const TrainResult *r = run->r;
    int e = run->epoch + 1;
    if (s->events && (events_scalar(s->events, "epoch_loss", e, r->train_loss) ||
                      events_scalar(s->events, "epoch_accuracy", e, r->train_top1) || events_flush(s->events)))
        run_log_failed(run);
    if (s->eval_events && r->val.images &&
        (events_scalar(s->eval_events, "epoch_loss", e, r->val.loss) ||
         events_scalar(s->eval_events, "epoch_accuracy", e, r->val.top1) ||
         events_scalar(s->eval_events, "epoch_top5_accuracy", e, r->val.top5) || events_flush(s->eval_events)))
        run_log_failed(run);
    if (s->eval_events && r->val_ema.images &&
        (events_scalar(s->eval_events, "epoch_ema_loss", e, r->val_ema.loss) ||
         events_scalar(s->eval_events, "epoch_ema_accuracy", e, r->val_ema.top1) ||
         events_scalar(s->eval_events, "epoch_ema_top5_accuracy", e, r->val_ema.top5) || events_flush(s->eval_events)))
        run_log_failed(run);
}

int run_epoch_end(Run *run) {
    TrainSetup *s = run->s;
    TrainResult *r = run->r;
    Loader *ld = run->ld;
    if (run->out && (loader_workers(ld) || loader_skipped(ld))) {  // in-memory data never waits
        fprintf(run->out, "epoch %d/%d  data: waited %.1f s for the loader; %ld unreadable samples skipped",
                run->epoch + 1, s->epochs, loader_stall_seconds(ld), loader_skipped(ld));
        fprintf(run->out, loader_skipped(ld) ? " (last: %s)\n" : "%s\n", loader_last_skip(ld));
    }
    if (!isfinite(run->loss_sum)) return vit_fail("epoch %d: training loss is not finite", run->epoch + 1);
    r->train_loss = run->seen ? run->loss_sum / run->seen : 0;
    r->train_top1 = run->seen ? (double)run->hits / run->seen : 0;
    if (s->val && s->validation_steps != 0 && validate(run)) return VIT_ERR;
    epoch_scalars(run);
    if (run->ranks > 1 && run_check_replicas(run)) return VIT_ERR;
    if (!s->save_dir) return VIT_OK;
    char tag[32];
    snprintf(tag, sizeof tag, "%03d", run->epoch + 1);
    return run_save(run, run->epoch + 1, 0, tag, 1);
}
