#include "trainer.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "data/loader.h"
#include "io/progress.h"
#include "util/status.h"

// Top-1 and top-5 hits of one batch from host logits.
static void count_hits(const float *logits, const int *labels, int B, int K, long *top1, long *top5) {
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        float mine = z[labels[b]];
        int above = 0;  // classes scored strictly higher than the true one
        for (int k = 0; k < K; k++) above += z[k] > mine;
        *top1 += above == 0;
        *top5 += above < 5;
    }
}

int evaluate(ViT *m, const Dataset *d, int batch, long steps, int workers, EvalResult *r) {
    memset(r, 0, sizeof *r);
    long total = d->count;
    if (steps >= 0 && steps * batch < total) total = steps * batch;
    int *order = malloc((size_t)(total > 0 ? total : 1) * sizeof(int));
    Loader *ld = order ? loader_create(d, batch, workers, 4) : NULL;
    if (!order || !ld) {
        free(order);
        return order ? VIT_ERR : vit_fail("out of memory for the evaluation order");
    }
    for (long i = 0; i < total; i++) order[i] = (int)i;
    double t0 = progress_now(), loss = 0;
    long top1 = 0, top5 = 0;
    int rc = loader_begin(ld, order, total, 0);
    for (long start = 0; start < total && rc == VIT_OK; start += batch) {
        const uint8_t *images;
        const int *labels;
        int n;
        rc = loader_next(ld, &images, &labels, &n);
        if (rc == VIT_OK) rc = vit_forward(m, images, labels, n, 0, 0.0f, 0, 0);
        if (rc != VIT_OK) break;
        for (int i = 0; i < n; i++) loss += m->host_losses[i];
        count_hits(m->host_logits, labels, n, m->cfg.classes, &top1, &top5);
    }
    double dt = progress_now() - t0;
    r->images = total;
    r->loss = total ? loss / total : 0;
    r->top1 = total ? (double)top1 / total : 0;
    r->top5 = total ? (double)top5 / total : 0;
    r->images_per_sec = dt > 0 ? total / dt : 0;
    r->skipped = loader_skipped(ld);
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

static int save_checkpoint(TrainSetup *s, TrainResult *r, SaveState *ss, const char *tag, int counted,
                           const TrainState *st, const float *mom1, const float *mom2) {
    ViT *m = s->model;
    Backend *be = m->be;
    size_t n = m->table.total;
    if (!ss->params) {
        ss->params = malloc(n * sizeof(float));
        ss->m = mom1 ? malloc(n * sizeof(float)) : NULL;
        ss->v = mom2 ? malloc(n * sizeof(float)) : NULL;
        ss->written = calloc((size_t)(s->keep > 0 ? s->keep + 1 : 1), sizeof *ss->written);
        if (!ss->params || (mom1 && !ss->m) || (mom2 && !ss->v) || !ss->written)
            return vit_fail("out of memory for a checkpoint copy (%.1f MiB)", 3.0 * n * 4 / 1048576);
    }
    be->download(be, ss->params, m->params, n * sizeof(float));
    if (mom1) be->download(be, ss->m, mom1, n * sizeof(float));
    if (mom2) be->download(be, ss->v, mom2, n * sizeof(float));
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

int train_run(TrainSetup *s, TrainResult *r) {
    memset(r, 0, sizeof *r);
    ViT *m = s->model;
    Backend *be = m->be;
    const Dataset *d = s->train;
    int B = s->batch, A = s->accum;
    long steps = s->steps_per_epoch ? s->steps_per_epoch : d->count / B;
    if (steps < A)
        return vit_fail("--steps_per_epoch %ld is smaller than --grad_accum_steps %d (the data holds %d images, "
                        "%d per batch)", steps, A, d->count, B);
    long updates_per_epoch = steps / A;
    steps = updates_per_epoch * A;  // a trailing partial accumulation would be wasted work
    s->sched.epochs = s->epochs;
    s->sched.updates_per_epoch = updates_per_epoch;

    size_t n = m->table.total;
    int *order = malloc((size_t)d->count * sizeof(int)), *seq = malloc((size_t)steps * B * sizeof(int));
    Loader *ld = loader_create(d, B, s->workers, s->prefetch);
    float *mom1 = optim_uses_m(s->opt.kind) ? be->alloc(be, n * sizeof(float)) : NULL;
    float *mom2 = optim_uses_v(s->opt.kind) ? be->alloc(be, n * sizeof(float)) : NULL;
    int rc = VIT_OK;
    if (!ld) {
        rc = VIT_ERR;
        goto done;
    }
    if (loader_workers(ld))
        fprintf(s->out, "data: %d loader threads, %.1f MiB of prefetched batches\n", loader_workers(ld),
                loader_memory_bytes(ld) / 1048576.0);
    if (!order || !seq || (optim_uses_m(s->opt.kind) && !mom1) ||
        (optim_uses_v(s->opt.kind) && !mom2)) {
        rc = vit_fail("out of memory for the training state");
        goto done;
    }
    if (mom1) be->zero(be, mom1, n * sizeof(float));
    if (mom2) be->zero(be, mom2, n * sizeof(float));
    if (mom1 && s->resume_m) be->upload(be, mom1, s->resume_m, n * sizeof(float));
    if (mom2 && s->resume_v) be->upload(be, mom2, s->resume_v, n * sizeof(float));

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
    SaveState ss = {0};
    double t_start = progress_now(), t_after_first = 0;
    long images_after_first = 0, update = start.update, first_update = start.update;
    uint32_t micro = start.micro;
    for (int epoch = start.epoch; epoch < s->epochs && rc == VIT_OK; epoch++) {
        Progress prog;
        progress_begin(&prog, s->out, epoch, s->epochs, steps);
        int resuming = epoch == start.epoch;
        double loss_sum = resuming ? start.loss_sum : 0;
        long hits = resuming ? start.hits : 0, top5 = resuming ? start.top5 : 0, seen = resuming ? start.seen : 0;
        long first_step = resuming ? start.step_in_epoch : 0, pos = first_step * B;
        double lr = 0;
        // The epoch's order, continued into the next permutation when steps * B exceeds the
        // data (synthetic data, explicit --steps_per_epoch); a resumed epoch skips what was done.
        long n_seq = 0;
        if (pos % d->count) dataset_epoch_order(order, d->count, s->seed, epoch, (int)(pos / d->count));
        for (; pos < steps * B; pos++) {
            if (pos % d->count == 0) dataset_epoch_order(order, d->count, s->seed, epoch, (int)(pos / d->count));
            seq[n_seq++] = order[pos % d->count];
        }
        if ((rc = loader_begin(ld, seq, n_seq, (uint32_t)epoch))) break;
        for (long step = first_step; step < steps; step++) {
            const uint8_t *images;
            const int *labels;
            int got;
            if ((rc = loader_next(ld, &images, &labels, &got))) break;
            if (step % A == 0) be->zero(be, m->grads, n * sizeof(float));
            rc = vit_forward(m, images, labels, B, 1, s->smoothing, s->seed, micro);
            if (rc == VIT_OK) rc = vit_backward(m, B, s->smoothing, 1.0f / ((float)B * A), s->seed, micro);
            if (rc != VIT_OK) break;
            micro++;
            for (int i = 0; i < B; i++) loss_sum += m->host_losses[i];
            count_hits(m->host_logits, labels, B, m->cfg.classes, &hits, &top5);
            seen += B;
            if (step % A == A - 1) {
                lr = schedule_lr(&s->sched, epoch, update);
                double norm;
                if (optim_step(be, &m->table, m->params, m->grads, mom1, mom2, &s->opt, (float)lr, (int)update + 1,
                               &norm)) {
                    rc = vit_fail("epoch %d, update %ld: gradient norm is %g (loss %g); stopping", epoch + 1,
                                  update + 1, norm, loss_sum / seen);
                    break;
                }
                update++;
                if (update == first_update + 1) t_after_first = progress_now();
                else images_after_first += (long)B * A;
                if (s->save_dir && s->checkpoint_every > 0 && update % s->checkpoint_every == 0 && step + 1 < steps) {
                    TrainState st = {update, epoch, step + 1, micro, s->seed, loss_sum, hits, top5, seen};
                    char tag[32];
                    snprintf(tag, sizeof tag, "step-%07ld", update);
                    if ((rc = save_checkpoint(s, r, &ss, tag, 1, &st, mom1, mom2))) break;
                }
            }
            double el = progress_now() - t_after_first;
            progress_update(&prog, step + 1, loss_sum / seen, (double)hits / seen, lr,
                            update > 1 && el > 0 ? images_after_first / el : 0);
        }
        progress_end(&prog);
        if (rc != VIT_OK) break;
        if (loader_workers(ld) || loader_skipped(ld))  // in-memory data never waits
        {
            fprintf(s->out, "epoch %d/%d  data: waited %.1f s for the loader; %ld unreadable samples skipped", epoch + 1,
                    s->epochs, loader_stall_seconds(ld), loader_skipped(ld));
            fprintf(s->out, loader_skipped(ld) ? " (last: %s)\n" : "%s\n", loader_last_skip(ld));
        }
        if (!isfinite(loss_sum)) {
            rc = vit_fail("epoch %d: training loss is not finite", epoch + 1);
            break;
        }
        r->train_loss = loss_sum / seen;
        r->train_top1 = (double)hits / seen;
        if (s->val && s->validation_steps != 0) {
            double t0 = progress_now();
            rc = evaluate(m, s->val, B, s->validation_steps, s->workers, &r->val);
            if (rc != VIT_OK) break;
            t_after_first += progress_now() - t0;  // validation time is not training time
            fprintf(s->out, "epoch %d/%d  validation: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%ld images, %.0f img/s)\n",
                    epoch + 1, s->epochs, r->val.loss, 100 * r->val.top1, 100 * r->val.top5, r->val.images,
                    r->val.images_per_sec);
            fflush(s->out);
        }
        if (s->save_dir) {
            TrainState st = {update, epoch + 1, 0, micro, s->seed, 0, 0, 0, 0};
            char tag[32];
            snprintf(tag, sizeof tag, "%03d", epoch + 1);
            rc = save_checkpoint(s, r, &ss, tag, 1, &st, mom1, mom2);
        }
    }
    if (rc == VIT_OK && s->save_dir) {
        TrainState st = {update, s->epochs, 0, micro, s->seed, 0, 0, 0, 0};
        rc = save_checkpoint(s, r, &ss, "final", 0, &st, mom1, mom2);
    }
    free(ss.params), free(ss.m), free(ss.v), free(ss.written);
    r->updates = update;
    r->seconds = progress_now() - t_start;
    {
        double el = progress_now() - t_after_first;
        r->images_per_sec = images_after_first > 0 && el > 0 ? images_after_first / el : 0;
    }
done:
    loader_destroy(ld);
    free(order), free(seq);
    be->release(be, mom1);
    be->release(be, mom2);
    return rc;
}
