// One micro-step of training: forward, the next batch fetched while the device still works,
// backward (gradients accumulate), the gradient sums across ranks at the window's end, and
// the step's figures agreed over the ranks. Each profile span opens and closes here.
#include <math.h>
#include "run.h"
#include "train/evaluate.h"
#include "util/status.h"
#include "util/stop_signal.h"

int run_fetch(Run *run, const int **labels) {
    const uint8_t *images;
    int got;
    prof_begin(run->s->prof, "data wait", "data");
    int rc = loader_next(run->ld, &images, labels, &got);
    prof_end(run->s->prof);
    return rc ? rc : vit_stage(run->m, images, *labels, run->Bl);
}

static void on_grad_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

// This rank's figures for the micro-step just run (before they are summed over the ranks).
static Agreement agreement(const ViT *m, const int *labels, int B) {
    double loss = 0;
    long hits = 0, top5 = 0;
    for (int i = 0; i < B; i++) loss += m->host_losses[i];
    count_hits(m->host_logits, labels, B, m->cfg.classes, &hits, &top5);
    return (Agreement){loss, (double)hits, (double)top5, !isfinite(loss), stop_signal_requested() != 0};
}

// The loader runs a batch ahead of the model: batch step + 1 is fetched and staged (copied
// to the device, asynchronously on a GPU) right after this step's forward pass, so that its
// copy overlaps the backward pass. A failed fetch is kept in *pending and ends the run at the
// start of the next step, where fetching it used to.
int run_micro_step(Run *run, const int **labels, int *pending, Agreement *ag) {
    TrainSetup *s = run->s;
    ViT *m = run->m;
    int last_micro = run->step % run->A == run->A - 1;
    if (run->sync) gradsync_begin(run->sync);
    m->grad_ready = run->sync && last_micro ? on_grad_ready : NULL;  // accumulate locally until the last
    m->grad_ready_ctx = run->sync;
    prof_begin(s->prof, "forward", "phase");
    int rc = vit_forward(m, NULL, NULL, run->Bl, 1, s->smoothing, run->drop_seed, run->micro);
    prof_end(s->prof);
    if (rc == VIT_OK) {
        *ag = agreement(m, *labels, run->Bl);  // before the next fetch reuses `labels`
        if (run->step + 1 < run->steps) *pending = run_fetch(run, labels);
    }
    prof_begin(s->prof, "backward", "phase");
    if (rc == VIT_OK)
        rc = vit_backward(m, run->Bl, s->smoothing, 1.0f / ((float)run->B * run->A), run->drop_seed, run->micro);
    prof_end(s->prof);
    prof_begin(s->prof, "allreduce", "comm");
    if (rc == VIT_OK && run->sync && last_micro) rc = gradsync_finish(run->sync);
    if (rc == VIT_OK) {
        double v[5] = {ag->loss, ag->hits, ag->top5, ag->nonfinite, ag->stop};
        rc = dist_allreduce_sum_double(v, 5);
        *ag = (Agreement){v[0], v[1], v[2], v[3], v[4]};
    }
    prof_end(s->prof);
    return rc;
}
