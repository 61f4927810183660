#include "trainer.h"
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "data/loader.h"
#include "dist/dist.h"
#include "dist/zero.h"
#include "io/progress.h"
#include "util/status.h"
#include "util/stop_signal.h"

// Top-1 and top-5 hits of one batch from host logits.
static void count_hits(const float *logits, const int *labels, int B, int K, long *top1, long *top5) {
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        int y = labels[b];
        float mine = z[y];
        // Rank of the true class as argmax orders it: higher scores first, ties by index
        // (so equal logits, e.g. a zero-initialised head, do not count as a hit).
        int above = 0;
        for (int k = 0; k < K; k++) above += z[k] > mine || (z[k] == mine && k < y);
        *top1 += above == 0;
        *top5 += above < 5;
    }
}

int evaluate(ViT *m, const Dataset *d, int batch, long steps, int workers, EvalResult *r) {
    memset(r, 0, sizeof *r);
    int ranks = dist_size(), rank = dist_rank();
    long total = d->count;
    if (steps >= 0 && steps * batch * ranks < total) total = steps * batch * ranks;
    long lo = total * rank / ranks, hi = total * (rank + 1) / ranks, mine = hi - lo;
    int *order = malloc((size_t)(mine > 0 ? mine : 1) * sizeof(int));
    Loader *ld = order ? loader_create(d, batch, workers, 4) : NULL;
    if (!order || !ld) {
        free(order);
        return order ? VIT_ERR : vit_fail("out of memory for the evaluation order");
    }
    for (long i = 0; i < mine; i++) order[i] = (int)(lo + i);
    double t0 = progress_now(), loss = 0;
    long top1 = 0, top5 = 0;
    int rc = loader_begin(ld, order, mine, 0);
    for (long start = 0; start < mine && rc == VIT_OK; start += batch) {
        const uint8_t *images;
        const int *labels;
        int n;
        rc = loader_next(ld, &images, &labels, &n);
        if (rc == VIT_OK) rc = vit_forward(m, images, labels, n, 0, 0.0f, 0, 0);
        if (rc != VIT_OK) break;
        for (int i = 0; i < n; i++) loss += m->host_losses[i];
        count_hits(m->host_logits, labels, n, m->cfg.classes, &top1, &top5);
    }
    double sums[5] = {loss, (double)top1, (double)top5, (double)mine, (double)loader_skipped(ld)};
    if (rc == VIT_OK) rc = dist_allreduce_sum_double(sums, 5);
    double dt = progress_now() - t0;
    r->images = (long)sums[3];
    r->loss = r->images ? sums[0] / r->images : 0;
    r->top1 = r->images ? sums[1] / r->images : 0;
    r->top5 = r->images ? sums[2] / r->images : 0;
    r->images_per_sec = dt > 0 ? r->images / dt : 0;
    r->skipped = (long)sums[4];
    loader_destroy(ld);
    free(order);
    return rc;
}

// Host copies for checkpoints, allocated at the first save.
typedef struct {
    float *params, *m, *v;
    char (*written)[1100];  // paths of epoch/step checkpoints, oldest first (for --keep_checkpoints)
    int n_written;
} SaveState;

// Every rank calls it at the same points: sharded optimizer slots are gathered to rank 0,
// which writes the same full checkpoint an unsharded run does.
static int save_checkpoint(TrainSetup *s, TrainResult *r, SaveState *ss, const char *tag, int counted,
                           const TrainState *st, const ZeroSlots *slots) {
    ViT *m = s->model;
    Backend *be = m->be;
    size_t n = m->table.total;
    int root = dist_rank() == 0;
    if (!root && !slots->sharded) return VIT_OK;  // replicas hold the same state; one writer
    if (root && !ss->params) {
        ss->params = malloc(n * sizeof(float));
        ss->m = slots->m ? malloc(n * sizeof(float)) : NULL;
        ss->v = slots->v ? malloc(n * sizeof(float)) : NULL;
        ss->written = calloc((size_t)(s->keep > 0 ? s->keep + 1 : 1), sizeof *ss->written);
        if (!ss->params || (slots->m && !ss->m) || (slots->v && !ss->v) || !ss->written)
            return vit_fail("out of memory for a checkpoint copy (%.1f MiB)", 3.0 * n * 4 / 1048576);
    }
    if (zero_slots_gather(slots, be, ss->m, ss->v)) return VIT_ERR;
    if (!root) return VIT_OK;
    be->download(be, ss->params, m->params, n * sizeof(float));
    char path[1100];
    snprintf(path, sizeof path, "%s/%s-ckpt-%s.safetensors", s->save_dir, m->cfg.name, tag);
    if (checkpoint_save(path, &m->cfg, &m->table, ss->params, ss->m, ss->v, s->opt.kind, st, s->meta, s->n_meta))
        return VIT_ERR;
    snprintf(r->last_checkpoint, sizeof r->last_checkpoint, "%s", path);
    if (counted && s->keep > 0) {
        // Only this run's checkpoints are removed, oldest first, after the new one is safe.
        snprintf(ss->written[ss->n_written++], sizeof ss->written[0], "%s", path);
        if (ss->n_written > s->keep) {
            unlink(ss->written[0]);
            memmove(ss->written, ss->written + 1, (size_t)s->keep * sizeof ss->written[0]);
            ss->n_written--;
        }
    }
    return VIT_OK;
}

static void log_failed(TrainSetup *s) {
    fprintf(s->out, "warning: TensorBoard logging stopped: %s\n", vit_error());
    events_close(s->events);
    events_close(s->eval_events);
    s->events = s->eval_events = NULL;
}

// Replicas must hold the same parameters; a sum over them, compared across ranks every
// REPLICA_CHECK_EVERY updates and at each epoch end, catches a rank that drifted (a
// non-deterministic reduction, a bad host, a shard that missed the all-gather). It costs one
// pass over the parameters and an all-reduce of two doubles.
#define REPLICA_CHECK_EVERY 100
static int check_replicas(ViT *m, int epoch, long update) {
    Backend *be = m->be;
    double v[2];
    v[0] = be->sum_squares(be, m->params, m->table.total);
    v[1] = -v[0];
    if (dist_allreduce_max_double(v, 2)) return VIT_ERR;
    if (v[0] != -v[1])
        return vit_fail("epoch %d, update %ld: the ranks' parameters differ (sum of squares %.17g vs %.17g)", epoch + 1,
                        update, v[0], -v[1]);
    return VIT_OK;
}

// This micro-step's metrics (loss sum, top-1 and top-5 hits) and the flags every rank must
// agree on (a non-finite loss, a stop signal), to be summed over the ranks.
static double *agree_init(double *v, const ViT *m, const int *labels, int B) {
    double loss = 0;
    long hits = 0, top5 = 0;
    for (int i = 0; i < B; i++) loss += m->host_losses[i];
    count_hits(m->host_logits, labels, B, m->cfg.classes, &hits, &top5);
    v[0] = loss, v[1] = (double)hits, v[2] = (double)top5, v[3] = !isfinite(loss), v[4] = stop_signal_requested() != 0;
    return v;
}

static void *host_alloc(void *be, size_t bytes) { return ((Backend *)be)->alloc_host(be, bytes); }
static void host_release(void *be, void *p) { ((Backend *)be)->release_host(be, p); }

// The next training batch from the loader, staged on the model's device; *labels is its
// host labels (valid until the next fetch).
static int fetch_batch(TrainSetup *s, Loader *ld, ViT *m, int B, const int **labels) {
    const uint8_t *images;
    int got;
    prof_begin(s->prof, "data wait", "data");
    int rc = loader_next(ld, &images, labels, &got);
    prof_end(s->prof);
    return rc ? rc : vit_stage(m, images, *labels, B);
}

// TensorBoard scalars of one summary window. A failed write is reported once and logging
// stops; the run itself goes on (a full log disk must not cost the training).
static void summary(TrainSetup *s, long step, double loss, double acc, double lr, double examples_per_sec,
                    double steps_per_sec) {
    if (events_scalar(s->events, "loss", step, loss) || events_scalar(s->events, "accuracy", step, acc) ||
        events_scalar(s->events, "learning_rate", step, lr) ||
        events_scalar(s->events, "examples/sec", step, examples_per_sec) ||
        events_scalar(s->events, "global_step/sec", step, steps_per_sec) || events_flush(s->events))
        log_failed(s);
}

static void on_grad_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

// Test hooks (environment, never set in normal use): VIT_TEST_SIGNAL_AT_STEP=k raises
// SIGTERM after micro-step k of the run, VIT_TEST_NAN_AT_UPDATE=k poisons the gradients of
// the k-th accumulation window, so the suite can exercise the stop and non-finite paths deterministically.
static long test_hook(const char *name) {
    const char *v = getenv(name);
    return v && *v ? atol(v) : -1;
}

int train_run(TrainSetup *s, TrainResult *r) {
    memset(r, 0, sizeof *r);
    ViT *m = s->model;
    Backend *be = m->be;
    const Dataset *d = s->train;
    int B = s->batch, A = s->accum, ranks = dist_size(), rank = dist_rank();
    int Bl = B / ranks;  // this rank's share of each global batch
    FILE *out = rank == 0 ? s->out : NULL;
    if (Bl * ranks != B) return vit_fail("--batch_size %d is not divisible by the %d ranks", B, ranks);
    double counts[2] = {d->count, -(double)d->count};
    if (dist_allreduce_max_double(counts, 2)) return VIT_ERR;
    if (counts[0] != -counts[1])
        return vit_fail("rank %d sees %d training images, another rank %.0f: every rank needs the same data", rank,
                        d->count, counts[0] == d->count ? -counts[1] : counts[0]);
    long steps = s->steps_per_epoch ? s->steps_per_epoch : d->count / B;
    if (steps < A)
        return vit_fail("--steps_per_epoch %ld is smaller than --grad_accum_steps %d (the data holds %d images, "
                        "%d per batch)", steps, A, d->count, B);
    long updates_per_epoch = steps / A;
    steps = updates_per_epoch * A;  // a trailing partial accumulation would be wasted work
    s->sched.epochs = s->epochs;
    s->sched.updates_per_epoch = updates_per_epoch;

    size_t n = m->table.total;
    int *order = malloc((size_t)d->count * sizeof(int)), *seq = malloc((size_t)steps * Bl * sizeof(int));
    LoaderMemory pinned = {host_alloc, host_release, be};  // the GPU copies batches straight from it
    Loader *ld = loader_create_in(d, Bl, s->workers, s->prefetch, &pinned);
    ZeroSlots slots;
    int slots_rc = zero_slots_create(&slots, be, n, s->opt.kind, s->zero, s->grad_transport);
    // 4M floats (16 MiB) per bucket: a few dozen all-reduces for ViT-B, each large enough
    // to run at link bandwidth, the first starting after the head and the last block.
    int want_sync = ranks > 1 || s->grad_transport;
    GradSync *sync = want_sync ? gradsync_create_with(m->grads, n, (size_t)4 << 20, s->grad_transport) : NULL;
    long signal_at = test_hook("VIT_TEST_SIGNAL_AT_STEP"), nan_at = test_hook("VIT_TEST_NAN_AT_UPDATE");
    int rc = VIT_OK;
    if (!ld) {
        rc = VIT_ERR;
        goto done;
    }
    if (out && loader_workers(ld))
        fprintf(out, "data: %d loader threads, %.1f MiB of prefetched batches\n", loader_workers(ld),
                loader_memory_bytes(ld) / 1048576.0);
    if (slots_rc) {
        rc = VIT_ERR;
        goto done;
    }
    if (!order || !seq || (want_sync && !sync)) {
        rc = vit_fail("out of memory for the training state");
        goto done;
    }
    r->optimizer_state_bytes = (double)zero_slots_bytes(&slots);
    if (sync) {
        m->grad_ready = on_grad_ready;
        m->grad_ready_ctx = sync;
        if (out) {
            fprintf(out, "distributed: %d ranks x batch %d; gradients summed (%s) in %zu buckets of up to 16 MiB; "
                         "optimizer state %.2f MiB per rank", ranks, Bl,
                    s->grad_transport ? s->grad_transport->name : "MPI", gradsync_buckets(sync),
                    r->optimizer_state_bytes / 1048576.0);
            if (slots.sharded)
                fprintf(out, " (--zero 1: 1/%d of %.2f MiB)", ranks,
                        (double)n * sizeof(float) * (optim_uses_m(s->opt.kind) + optim_uses_v(s->opt.kind)) / 1048576.0);
            fprintf(out, "\n");
        }
    }
    if (s->resume && (rc = zero_slots_restore(&slots, be, s->resume_m, s->resume_v))) goto done;

    TrainState start = {0};
    if (s->resume) start = *s->resume;
    if (!s->resume && s->start_epoch > 0) {  // weight-only resume: the schedule continues from that epoch
        start.epoch = s->start_epoch;
        start.update = (long)s->start_epoch * updates_per_epoch;
        start.micro = (uint32_t)(s->start_epoch * steps);
    }
    if (start.step_in_epoch % A || start.step_in_epoch > steps) {
        rc = vit_fail("resume position: step %ld of epoch %d does not fit %ld micro-steps per epoch with "
                        "--grad_accum_steps %d (were --batch_size/--steps_per_epoch changed?)",
                        start.step_in_epoch, start.epoch + 1, steps, A);
        goto done;
    }
    // Each rank draws its own dropout masks (the same seed would repeat one rank's masks on all).
    uint64_t drop_seed = s->seed + (uint64_t)rank * 0x9E3779B97F4A7C15ull;
    SaveState ss = {0};
    double t_start = progress_now(), t_after_first = 0;
    long images_after_first = 0, update = start.update, first_update = start.update;
    uint32_t micro = start.micro;
    int window_bad = 0;  // a non-finite loss in the accumulation window
    // The TensorBoard summary window: metrics since the last summary.
    double win_loss = 0, win_hits = 0, win_seen = 0, win_images = 0, win_t = progress_now();
    long win_update = update;
    double agree[5];
    stop_signal_install();
    for (int epoch = start.epoch; epoch < s->epochs && rc == VIT_OK; epoch++) {
        Progress prog;
        progress_begin(&prog, out, epoch, s->epochs, steps);
        int resuming = epoch == start.epoch;
        double loss_sum = resuming ? start.loss_sum : 0;
        long hits = resuming ? start.hits : 0, top5 = resuming ? start.top5 : 0, seen = resuming ? start.seen : 0;
        long first_step = resuming ? start.step_in_epoch : 0;
        double lr = 0;
        // The epoch's global order, continued into the next permutation when steps * B exceeds
        // the data (synthetic data, explicit --steps_per_epoch); this rank takes positions
        // [rank * Bl, (rank + 1) * Bl) of every global batch, and a resumed epoch skips what was done.
        long n_seq = 0, pos = first_step * B;
        if (pos % d->count) dataset_epoch_order(order, d->count, s->seed, epoch, (int)(pos / d->count));
        for (; pos < steps * B; pos++) {
            if (pos % d->count == 0) dataset_epoch_order(order, d->count, s->seed, epoch, (int)(pos / d->count));
            if ((pos % B) / Bl == rank) seq[n_seq++] = order[pos % d->count];
        }
        if ((rc = loader_begin(ld, seq, n_seq, (uint32_t)epoch))) break;
        // The loader runs a batch ahead of the model: batch step + 1 is fetched and staged
        // (copied to the device, asynchronously on a GPU) right after step's forward pass,
        // so that its copy overlaps step's backward pass. A failure to fetch it ends the run
        // where fetching it used to, at the start of step + 1.
        const int *labels = NULL;
        int pending = first_step < steps ? fetch_batch(s, ld, m, Bl, &labels) : VIT_OK;
        for (long step = first_step; step < steps; step++) {
            if ((rc = pending)) break;
            long run_step = (long)(micro - start.micro) + 1;  // 1-based micro-step of this process
            if (s->prof && run_step == s->prof_first) profiler_set_active(s->prof, 1);
            char step_name[32];
            snprintf(step_name, sizeof step_name, "step %ld", run_step);
            prof_begin(s->prof, step_name, "step");
            int last_micro = step % A == A - 1;
            if (step % A == 0) {
                be->zero(be, m->grads, n * sizeof(float));
                window_bad = 0;
            }
            if (sync) gradsync_begin(sync);
            m->grad_ready = sync && last_micro ? on_grad_ready : NULL;  // accumulate locally until the last
            prof_begin(s->prof, "forward", "phase");
            rc = vit_forward(m, NULL, NULL, Bl, 1, s->smoothing, drop_seed, micro);
            prof_end(s->prof);
            if (rc == VIT_OK) {
                agree_init(agree, m, labels, Bl);  // before the next fetch reuses `labels`
                if (step + 1 < steps) pending = fetch_batch(s, ld, m, Bl, &labels);
            }
            prof_begin(s->prof, "backward", "phase");
            if (rc == VIT_OK) rc = vit_backward(m, Bl, s->smoothing, 1.0f / ((float)B * A), drop_seed, micro);
            prof_end(s->prof);
            prof_begin(s->prof, "allreduce", "comm");
            if (rc == VIT_OK && sync && last_micro) rc = gradsync_finish(sync);
            if (rc == VIT_OK) rc = dist_allreduce_sum_double(agree, 5);
            prof_end(s->prof);
            if (rc != VIT_OK) {
                prof_end(s->prof);
                break;
            }
            micro++;
            int nonfinite = agree[3] > 0;
            window_bad |= nonfinite;
            if (!nonfinite) loss_sum += agree[0], win_loss += agree[0];
            win_hits += agree[1], win_seen += B, win_images += B;
            hits += (long)agree[1];
            top5 += (long)agree[2];
            seen += B;
            if (nonfinite && !s->skip_nonfinite) {
                prof_end(s->prof);
                rc = vit_fail("epoch %d, micro-step %ld (update %ld): the training loss is not finite; stopping "
                              "(the last checkpoint is kept; --skip_nonfinite skips such updates)",
                              epoch + 1, step + 1, update + 1);
                break;
            }
            if (last_micro) {
                lr = schedule_lr(&s->sched, epoch, update);
                if ((long)(micro / A) == nan_at) {  // test hook: poison the gradients of one update
                    float bad = NAN;
                    be->upload(be, m->grads, &bad, sizeof bad);
                }
                double norm = NAN;
                prof_begin(s->prof, "update", "phase");
                int ok = !window_bad && zero_slots_step(&slots, be, &m->table, m->params, m->grads, &s->opt,
                                                        (float)lr, (int)update + 1, &norm) == VIT_OK;
                prof_end(s->prof);
                if (ok && slots.sharded) {  // every rank updated its shard: share them (the norm agrees, so all do)
                    prof_begin(s->prof, "allgather", "comm");
                    rc = zero_slots_allgather(&slots, m->params);
                    prof_end(s->prof);
                    if (rc) {
                        prof_end(s->prof);
                        break;
                    }
                }
                if (!ok && !s->skip_nonfinite) {
                    prof_end(s->prof);
                    rc = vit_fail("epoch %d, update %ld: gradient norm is %g (loss %g); stopping (the last checkpoint "
                                  "is kept; --skip_nonfinite skips such updates)",
                                  epoch + 1, update + 1, norm, loss_sum / seen);
                    break;
                }
                if (!ok) {
                    r->skipped_updates++;
                    if (out) fprintf(out, "\nepoch %d, update %ld: non-finite loss or gradient norm (%g): update "
                                          "skipped (%ld so far)\n", epoch + 1, update + 1, norm, r->skipped_updates);
                } else {
                    update++;
                    if (ranks > 1 && update % REPLICA_CHECK_EVERY == 0 && (rc = check_replicas(m, epoch, update))) {
                        prof_end(s->prof);
                        break;
                    }
                }
                if (update == first_update + 1 && ok) t_after_first = progress_now();
                else images_after_first += (long)B * A;
                if (ok && s->events && s->summary_every > 0 && update % s->summary_every == 0) {
                    double now = progress_now();
                    summary(s, update, win_loss / win_seen, win_hits / win_seen, lr, win_images / (now - win_t),
                            (update - win_update) / (now - win_t));
                    win_t = now, win_update = update, win_loss = win_hits = win_seen = win_images = 0;
                }
                int stop = agree[4] > 0;
                if (s->save_dir && stop && step + 1 == steps) {  // the epoch is done: resume at the next one
                    TrainState st = {update, epoch + 1, 0, micro, s->seed, 0, 0, 0, 0};
                    char tag[32];
                    snprintf(tag, sizeof tag, "%03d", epoch + 1);
                    prof_begin(s->prof, "checkpoint", "io");
                    rc = save_checkpoint(s, r, &ss, tag, 1, &st, &slots);
                    prof_end(s->prof);
                    if (rc) {
                        prof_end(s->prof);
                        break;
                    }
                } else if (s->save_dir && step + 1 < steps &&
                           (stop || (s->checkpoint_every > 0 && ok && update % s->checkpoint_every == 0))) {
                    TrainState st = {update, epoch, step + 1, micro, s->seed, loss_sum, hits, top5, seen};
                    char tag[32];
                    snprintf(tag, sizeof tag, "step-%07ld", update);
                    prof_begin(s->prof, "checkpoint", "io");
                    rc = save_checkpoint(s, r, &ss, tag, !stop, &st, &slots);
                    prof_end(s->prof);
                    if (rc) {
                        prof_end(s->prof);
                        break;
                    }
                }
                if (stop) {
                    prof_end(s->prof);
                    r->stopped_by_signal = 1;
                    step++;
                    break;
                }
            }
            prof_end(s->prof);  // the step
            if (s->prof && run_step == s->prof_last) profiler_set_active(s->prof, 0);
            double el = progress_now() - t_after_first;
            progress_update(&prog, step + 1, loss_sum / seen, (double)hits / seen, lr,
                            update > 1 && el > 0 ? images_after_first / el : 0);
            if (step + 1 == signal_at) raise(SIGTERM);
        }
        progress_end(&prog);
        r->data_wait += loader_stall_seconds(ld);
        if (rc != VIT_OK || r->stopped_by_signal) break;
        if (out && (loader_workers(ld) || loader_skipped(ld)))  // in-memory data never waits
        {
            fprintf(out, "epoch %d/%d  data: waited %.1f s for the loader; %ld unreadable samples skipped", epoch + 1,
                    s->epochs, loader_stall_seconds(ld), loader_skipped(ld));
            fprintf(out, loader_skipped(ld) ? " (last: %s)\n" : "%s\n", loader_last_skip(ld));
        }
        if (!isfinite(loss_sum)) {
            rc = vit_fail("epoch %d: training loss is not finite", epoch + 1);
            break;
        }
        r->train_loss = seen ? loss_sum / seen : 0;
        r->train_top1 = seen ? (double)hits / seen : 0;
        if (s->val && s->validation_steps != 0) {
            double t0 = progress_now();
            prof_begin(s->prof, "validation", "phase");
            rc = evaluate(m, s->val, Bl, s->validation_steps, s->workers, &r->val);
            prof_end(s->prof);
            if (rc != VIT_OK) break;
            t_after_first += progress_now() - t0;  // validation time is not training time
            if (out) {
                fprintf(out, "epoch %d/%d  validation: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%ld images, %.0f img/s)\n",
                        epoch + 1, s->epochs, r->val.loss, 100 * r->val.top1, 100 * r->val.top5, r->val.images,
                        r->val.images_per_sec);
                fflush(out);
            }
        }
        if (s->events && (events_scalar(s->events, "epoch_loss", epoch + 1, r->train_loss) ||
                          events_scalar(s->events, "epoch_accuracy", epoch + 1, r->train_top1) ||
                          events_flush(s->events)))
            log_failed(s);
        if (s->eval_events && r->val.images &&
            (events_scalar(s->eval_events, "epoch_loss", epoch + 1, r->val.loss) ||
             events_scalar(s->eval_events, "epoch_accuracy", epoch + 1, r->val.top1) ||
             events_scalar(s->eval_events, "epoch_top5_accuracy", epoch + 1, r->val.top5) ||
             events_flush(s->eval_events)))
            log_failed(s);
        if (ranks > 1 && (rc = check_replicas(m, epoch, update))) break;
        if (s->save_dir) {
            TrainState st = {update, epoch + 1, 0, micro, s->seed, 0, 0, 0, 0};
            char tag[32];
            snprintf(tag, sizeof tag, "%03d", epoch + 1);
            rc = save_checkpoint(s, r, &ss, tag, 1, &st, &slots);
        }
    }
    if (rc == VIT_OK && r->stopped_by_signal && out) {
        if (*r->last_checkpoint)
            fprintf(out, "stopped by signal after update %ld; to continue:\n  %s --resume_from_checkpoint_path %s\n",
                    update, s->resume_command ? s->resume_command : "vit train ...", r->last_checkpoint);
        else
            fprintf(out, "stopped by signal after update %ld (no --save_dir: nothing to resume from)\n", update);
    }
    if (rc == VIT_OK && s->save_dir && !r->stopped_by_signal) {
        TrainState st = {update, s->epochs, 0, micro, s->seed, 0, 0, 0, 0};
        rc = save_checkpoint(s, r, &ss, "final", 0, &st, &slots);
    }
    stop_signal_restore();
    free(ss.params), free(ss.m), free(ss.v), free(ss.written);
    r->updates = update;
    r->seconds = progress_now() - t_start;
    r->allreduce_wait = sync ? gradsync_wait_seconds(sync) : 0;
    {
        double el = progress_now() - t_after_first;
        r->images_per_sec = images_after_first > 0 && el > 0 ? images_after_first / el : 0;
    }
done:
    m->grad_ready = NULL;
    gradsync_destroy(sync);
    loader_destroy(ld);
    free(order), free(seq);
    zero_slots_destroy(&slots, be);
    return rc;
}
