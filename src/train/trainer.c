// The training loop: set-up, then epochs of micro-steps (step.c), each accumulation window
// closed by an update (update.c), checkpoints (run_checkpoint.c) and each epoch closed by
// epoch_end.c; then the final checkpoint and the figures.
#include "trainer.h"
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "io/progress.h"
#include "run.h"
#include "util/clock.h"
#include "util/status.h"
#include "util/stop_signal.h"

static void *host_alloc(void *be, size_t bytes) { return ((Backend *)be)->alloc_host(be, bytes); }
static void host_release(void *be, void *p) { ((Backend *)be)->release_host(be, p); }

// Test hooks (environment, never set in normal use): VIT_TEST_SIGNAL_AT_STEP=k raises
// SIGTERM after micro-step k of the run, VIT_TEST_NAN_AT_UPDATE=k poisons the gradients of
// the k-th accumulation window, so the suite can exercise the stop and non-finite paths deterministically.
static long test_hook(const char *name) {
    const char *v = getenv(name);
    return v && *v ? atol(v) : -1;
}

// The run's shape from the setup and the data: every rank must see the same data, and an
// epoch is a whole number of updates (a trailing partial accumulation would be wasted work).
static int plan(Run *run) {
    TrainSetup *s = run->s;
    const Dataset *d = s->train;
    if (run->Bl * run->ranks != run->B)
        return vit_fail("--batch_size %d is not divisible by the %d ranks", run->B, run->ranks);
    double counts[2] = {d->count, -(double)d->count};
    if (dist_allreduce_max_double(counts, 2)) return VIT_ERR;
    if (counts[0] != -counts[1])
        return vit_fail("rank %d sees %d training images, another rank %.0f: every rank needs the same data",
                        run->rank, d->count, counts[0] == d->count ? -counts[1] : counts[0]);
    long steps = s->steps_per_epoch ? s->steps_per_epoch : d->count / run->B;
    if (steps < run->A)
        return vit_fail("--steps_per_epoch %ld is smaller than --grad_accum_steps %d (the data holds %d images, "
                        "%d per batch)", steps, run->A, d->count, run->B);
    s->sched.epochs = s->epochs;
    s->sched.updates_per_epoch = steps / run->A;
    run->steps = s->sched.updates_per_epoch * run->A;
    return VIT_OK;
}

static void report_distributed(Run *run) {
    TrainSetup *s = run->s;
    if (!run->out || !run->sync) return;
    fprintf(run->out, "distributed: %d ranks x batch %d; gradients summed (%s) in %zu buckets of up to 16 MiB; "
                      "optimizer state %.2f MiB per rank", run->ranks, run->Bl,
            s->grad_transport ? s->grad_transport->name : "MPI", gradsync_buckets(run->sync),
            run->r->optimizer_state_bytes / 1048576.0);
    if (run->slots.sharded)
        fprintf(run->out, " (--zero 1: 1/%d of %.2f MiB)", run->ranks,
                (double)run->m->table.total * sizeof(float) * (optim_uses_m(s->opt.kind) + optim_uses_v(s->opt.kind)) /
                    1048576.0);
    fprintf(run->out, "\n");
}

// Where the run begins: a full resume point, an epoch (weights-only resume: the schedule
// continues from there), or the start.
static int starting_point(Run *run) {
    TrainSetup *s = run->s;
    TrainState start = {0};
    if (s->resume) start = *s->resume;
    if (!s->resume && s->start_epoch > 0) {
        start.epoch = s->start_epoch;
        start.update = (long)s->start_epoch * s->sched.updates_per_epoch;
        start.micro = (uint32_t)(s->start_epoch * run->steps);
    }
    if (start.step_in_epoch % run->A || start.step_in_epoch > run->steps)
        return vit_fail("resume position: step %ld of epoch %d does not fit %ld micro-steps per epoch with "
                        "--grad_accum_steps %d (were --batch_size/--steps_per_epoch changed?)",
                        start.step_in_epoch, start.epoch + 1, run->steps, run->A);
    run->start = start;
    run->update = run->first_update = run->win_update = start.update;
    run->micro = start.micro;
    return VIT_OK;
}

// The weights' moving average on the device: the resumed one, or (as timm's ModelEmaV3, a
// copy of the model when it is made) the weights the run starts from.
static int ema_open(Run *run) {
    TrainSetup *s = run->s;
    Backend *be = run->be;
    size_t bytes = run->m->table.total * sizeof(float);
    if (!s->ema.on) return VIT_OK;
    if (!(run->ema = be->alloc(be, bytes))) return VIT_ERR;
    if (s->resume_ema) {
        be->upload(be, run->ema, s->resume_ema, bytes);
        return VIT_OK;
    }
    float *host = malloc(bytes);
    if (!host) return vit_fail("out of memory for the moving average of the weights (%.1f MiB)", bytes / 1048576.0);
    be->download(be, host, run->m->params, bytes);
    be->upload(be, run->ema, host, bytes);
    free(host);
    return VIT_OK;
}

// Memory, loader, optimizer slots and gradient sums for the run.
static int run_open(Run *run) {
    TrainSetup *s = run->s;
    Backend *be = run->be;
    size_t n = run->m->table.total;
    if (plan(run)) return VIT_ERR;
    run->order = malloc((size_t)s->train->count * sizeof(int));
    run->seq = malloc((size_t)run->steps * run->Bl * sizeof(int));
    LoaderMemory pinned = {host_alloc, host_release, be};  // the GPU copies batches straight from it
    run->ld = loader_create_in(s->train, run->Bl, s->workers, s->prefetch, &pinned);
    if (!run->ld) return VIT_ERR;
    if (run->out && loader_workers(run->ld))
        fprintf(run->out, "data: %d loader threads, %.1f MiB of prefetched batches\n", loader_workers(run->ld),
                loader_memory_bytes(run->ld) / 1048576.0);
    if (zero_slots_create(&run->slots, be, n, s->opt.kind, s->zero, s->grad_transport)) return VIT_ERR;
    run->slots_ready = 1;
    // 4M floats (16 MiB) per bucket: a few dozen all-reduces for ViT-B, each large enough
    // to run at link bandwidth, the first starting after the head and the last block.
    int want_sync = run->ranks > 1 || s->grad_transport;
    if (want_sync) run->sync = gradsync_create_with(run->m->grads, n, (size_t)4 << 20, s->grad_transport);
    if (!run->order || !run->seq || (want_sync && !run->sync)) return vit_fail("out of memory for the training state");
    run->r->optimizer_state_bytes = (double)zero_slots_bytes(&run->slots);
    report_distributed(run);
    if (s->resume && zero_slots_restore(&run->slots, be, s->resume_m, s->resume_v)) return VIT_ERR;
    if (ema_open(run)) return VIT_ERR;
    return starting_point(run);
}

static void run_close(Run *run) {
    run->m->grad_ready = NULL;
    gradsync_destroy(run->sync);
    loader_destroy(run->ld);
    free(run->order), free(run->seq);
    if (run->slots_ready) zero_slots_destroy(&run->slots, run->be);
    if (run->ema) run->be->release(run->be, run->ema);
    run_graph_destroy(run);
    if (run->scalars) run->be->release(run->be, run->scalars);
    free(run->save.params), free(run->save.m), free(run->save.v), free(run->save.ema), free(run->save.written);
}

// The epoch's global order, continued into the next permutation when steps * B exceeds the
// data (synthetic data, explicit --steps_per_epoch); this rank takes positions [rank * Bl,
// (rank + 1) * Bl) of every global batch, and a resumed epoch skips what was done.
static int begin_epoch(Run *run, long first_step) {
    const Dataset *d = run->s->train;
    uint64_t seed = run->s->seed;
    long n_seq = 0, pos = first_step * run->B;
    if (pos % d->count) dataset_epoch_order(run->order, d->count, seed, run->epoch, (int)(pos / d->count));
    for (; pos < run->steps * run->B; pos++) {
        if (pos % d->count == 0) dataset_epoch_order(run->order, d->count, seed, run->epoch, (int)(pos / d->count));
        if ((pos % run->B) / run->Bl == run->rank) run->seq[n_seq++] = run->order[pos % d->count];
    }
    int resuming = run->epoch == run->start.epoch;
    run->loss_sum = resuming ? run->start.loss_sum : 0;
    run->hits = resuming ? run->start.hits : 0;
    run->top5 = resuming ? run->start.top5 : 0;
    run->seen = resuming ? run->start.seen : 0;
    run->lr = 0;
    return loader_begin(run->ld, run->seq, n_seq, (uint32_t)run->epoch);
}

// The step's figures into the epoch's and the summary window's sums; a non-finite loss
// stops the run unless --skip_nonfinite.
static int account(Run *run, const Agreement *ag) {
    int nonfinite = ag->nonfinite > 0;
    run->window_bad |= nonfinite;
    if (!nonfinite) run->loss_sum += ag->loss, run->win_loss += ag->loss;
    run->win_hits += ag->hits, run->win_seen += run->B, run->win_images += run->B;
    run->hits += (long)ag->hits;
    run->top5 += (long)ag->top5;
    run->seen += run->B;
    if (nonfinite && !run->s->skip_nonfinite)
        return vit_fail("epoch %d, micro-step %ld (update %ld): the training loss is not finite; stopping "
                        "(the last checkpoint is kept; --skip_nonfinite skips such updates)",
                        run->epoch + 1, run->step + 1, run->update + 1);
    return VIT_OK;
}

// One micro-step and, at the end of its window, the update and any checkpoint due.
// *stopped: a stop signal arrived (after its checkpoint was written).
static int train_step(Run *run, const int **labels, int *pending, int *stopped) {
    ViT *m = run->m;
    if (run->step % run->A == 0) {
        run->be->zero(run->be, m->grads, m->table.total * sizeof(float));
        run->window_bad = 0;
    }
    Agreement ag;
    int rc = run_micro_step(run, labels, pending, &ag);
    if (rc) return rc;
    run->micro++;
    if ((rc = account(run, &ag)) || run->step % run->A != run->A - 1) return rc;
    int updated;
    if ((rc = run_update(run, &updated))) return rc;
    int stop = ag.stop > 0;
    if ((rc = run_checkpoint_in_epoch(run, stop, updated))) return rc;
    *stopped = stop;
    return VIT_OK;
}

// The micro-steps of one epoch, each inside its profile span; returns with the epoch done,
// stopped by a signal (r->stopped_by_signal), or failed.
static int run_epoch(Run *run) {
    TrainSetup *s = run->s;
    long first_step = run->epoch == run->start.epoch ? run->start.step_in_epoch : 0;
    Progress prog;
    progress_begin(&prog, run->out, run->epoch, s->epochs, run->steps, (long)(s->epochs - run->epoch - 1) * run->steps);
    int rc = begin_epoch(run, first_step);
    const int *labels = NULL;  // the staged batch's host labels
    int pending = rc == VIT_OK && first_step < run->steps ? run_fetch(run, &labels) : VIT_OK;
    for (run->step = first_step; rc == VIT_OK && run->step < run->steps; run->step++) {
        if ((rc = pending)) break;
        long run_step = (long)(run->micro - run->start.micro) + 1;  // 1-based micro-step of this process
        if (s->prof && run_step == s->prof_first) profiler_set_active(s->prof, 1);
        char step_name[32];
        snprintf(step_name, sizeof step_name, "step %ld", run_step);
        int stopped = 0;
        prof_begin(s->prof, step_name, "step");
        rc = train_step(run, &labels, &pending, &stopped);
        prof_end(s->prof);
        if (rc || stopped) {
            run->r->stopped_by_signal = stopped;
            break;
        }
        if (s->prof && run_step == s->prof_last) profiler_set_active(s->prof, 0);
        double el = clock_seconds() - run->t_after_first;
        progress_update(&prog, run->step + 1, run->loss_sum / run->seen, (double)run->hits / run->seen, run->lr,
                        run->update > 1 && el > 0 ? run->images_after_first / el : 0);
        if (run->step + 1 == run->signal_at) raise(SIGTERM);
    }
    progress_end(&prog);
    run->r->data_wait += loader_stall_seconds(run->ld);
    return rc;
}

// After the last epoch (or a stop): how to continue, the final checkpoint, the figures.
static int run_finish(Run *run) {
    TrainSetup *s = run->s;
    TrainResult *r = run->r;
    int rc = VIT_OK;
    if (r->stopped_by_signal && run->out) {
        if (*r->last_checkpoint)
            fprintf(run->out, "stopped by signal after update %ld; to continue:\n  %s --resume_from_checkpoint_path %s\n",
                    run->update, s->resume_command ? s->resume_command : "vit train ...", r->last_checkpoint);
        else
            fprintf(run->out, "stopped by signal after update %ld (no --save_dir: nothing to resume from)\n", run->update);
    }
    if (s->save_dir && !r->stopped_by_signal) rc = run_save(run, s->epochs, 0, "final", 0);
    r->updates = run->update;
    r->seconds = clock_seconds() - run->t_start;
    r->allreduce_wait = run->sync ? gradsync_wait_seconds(run->sync) : 0;
    double el = clock_seconds() - run->t_after_first;
    r->images_per_sec = run->images_after_first > 0 && el > 0 ? run->images_after_first / el : 0;
    return rc;
}

int train_run(TrainSetup *s, TrainResult *r) {
    memset(r, 0, sizeof *r);
    Run run = {.s = s, .r = r, .m = s->model, .be = s->model->be, .B = s->batch, .A = s->accum,
               .ranks = dist_size(), .rank = dist_rank()};
    run.Bl = run.B / run.ranks;  // this rank's share of each global batch
    run.out = run.rank == 0 ? s->out : NULL;
    run.signal_at = test_hook("VIT_TEST_SIGNAL_AT_STEP");
    run.nan_at = test_hook("VIT_TEST_NAN_AT_UPDATE");
    // Each rank draws its own dropout masks (the same seed would repeat one rank's masks on all).
    run.drop_seed = s->seed + (uint64_t)run.rank * 0x9E3779B97F4A7C15ull;
    int rc = run_open(&run);
    if (rc == VIT_OK) {
        run.t_start = run.win_t = clock_seconds();
        stop_signal_install();
        for (run.epoch = run.start.epoch; rc == VIT_OK && run.epoch < s->epochs; run.epoch++) {
            rc = run_epoch(&run);
            if (rc || r->stopped_by_signal) break;
            rc = run_epoch_end(&run);
        }
        if (rc == VIT_OK) rc = run_finish(&run);
        stop_signal_restore();
    }
    if (rc) r->updates = run.update;  // how far a failed run got (the caller keeps its files if it trained)
    run_close(&run);
    return rc;
}
