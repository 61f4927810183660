#include "trainer.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
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

int evaluate(ViT *m, const Dataset *d, int batch, long steps, EvalResult *r) {
    memset(r, 0, sizeof *r);
    long total = d->count;
    if (steps >= 0 && steps * batch < total) total = steps * batch;
    size_t img_bytes = (size_t)d->size * d->size * d->channels;
    uint8_t *images = malloc((size_t)batch * img_bytes);
    int *labels = malloc((size_t)batch * sizeof(int)), *idx = malloc((size_t)batch * sizeof(int));
    if (!images || !labels || !idx) {
        free(images), free(labels), free(idx);
        return vit_fail("out of memory for the evaluation batch");
    }
    double t0 = progress_now(), loss = 0;
    long top1 = 0, top5 = 0;
    int rc = VIT_OK;
    for (long start = 0; start < total && rc == VIT_OK; start += batch) {
        int n = (int)(total - start < batch ? total - start : batch);
        for (int i = 0; i < n; i++) idx[i] = (int)(start + i);
        dataset_fill_batch(d, idx, n, images, labels);
        rc = vit_forward(m, images, labels, n, 0, 0.0f, 0, 0);
        for (int i = 0; i < n && rc == VIT_OK; i++) loss += m->host_losses[i];
        count_hits(m->host_logits, labels, n, m->cfg.classes, &top1, &top5);
    }
    double dt = progress_now() - t0;
    r->images = total;
    r->loss = total ? loss / total : 0;
    r->top1 = total ? (double)top1 / total : 0;
    r->top5 = total ? (double)top5 / total : 0;
    r->images_per_sec = dt > 0 ? total / dt : 0;
    free(images), free(labels), free(idx);
    return rc;
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

    size_t img_bytes = (size_t)d->size * d->size * d->channels, n = m->table.total;
    uint8_t *images = malloc((size_t)B * img_bytes);
    int *labels = malloc((size_t)B * sizeof(int)), *idx = malloc((size_t)B * sizeof(int));
    int *order = malloc((size_t)d->count * sizeof(int));
    float *mom1 = optim_uses_m(s->opt.kind) ? be->alloc(be, n * sizeof(float)) : NULL;
    float *mom2 = optim_uses_v(s->opt.kind) ? be->alloc(be, n * sizeof(float)) : NULL;
    int rc = VIT_OK;
    if (!images || !labels || !idx || !order || (optim_uses_m(s->opt.kind) && !mom1) ||
        (optim_uses_v(s->opt.kind) && !mom2)) {
        rc = vit_fail("out of memory for the training state");
        goto done;
    }
    if (mom1) be->zero(be, mom1, n * sizeof(float));
    if (mom2) be->zero(be, mom2, n * sizeof(float));

    double t_start = progress_now(), t_after_first = 0;
    long images_after_first = 0, update = 0;
    uint32_t micro = 0;
    for (int epoch = 0; epoch < s->epochs && rc == VIT_OK; epoch++) {
        Progress prog;
        progress_begin(&prog, s->out, epoch, s->epochs, steps);
        double loss_sum = 0;
        long hits = 0, top5 = 0, seen = 0, pos = 0;
        double lr = 0;
        for (long step = 0; step < steps; step++) {
            // The epoch's order, continued into the next permutation when steps * B
            // exceeds the data (synthetic data, explicit --steps_per_epoch).
            for (int i = 0; i < B; i++, pos++) {
                if (pos % d->count == 0) dataset_epoch_order(order, d->count, s->seed, epoch, (int)(pos / d->count));
                idx[i] = order[pos % d->count];
            }
            dataset_fill_batch(d, idx, B, images, labels);
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
                if (update == 1) t_after_first = progress_now();
                else images_after_first += (long)B * A;
            }
            double el = progress_now() - t_after_first;
            progress_update(&prog, step + 1, loss_sum / seen, (double)hits / seen, lr,
                            update > 1 && el > 0 ? images_after_first / el : 0);
        }
        progress_end(&prog);
        if (rc != VIT_OK) break;
        if (!isfinite(loss_sum)) {
            rc = vit_fail("epoch %d: training loss is not finite", epoch + 1);
            break;
        }
        r->train_loss = loss_sum / seen;
        r->train_top1 = (double)hits / seen;
        if (s->val && s->validation_steps != 0) {
            double t0 = progress_now();
            rc = evaluate(m, s->val, B, s->validation_steps, &r->val);
            if (rc != VIT_OK) break;
            t_after_first += progress_now() - t0;  // validation time is not training time
            fprintf(s->out, "epoch %d/%d  validation: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%ld images, %.0f img/s)\n",
                    epoch + 1, s->epochs, r->val.loss, 100 * r->val.top1, 100 * r->val.top5, r->val.images,
                    r->val.images_per_sec);
            fflush(s->out);
        }
    }
    r->updates = update;
    r->seconds = progress_now() - t_start;
    {
        double el = progress_now() - t_after_first;
        r->images_per_sec = images_after_first > 0 && el > 0 ? images_after_first / el : 0;
    }
done:
    free(images), free(labels), free(idx), free(order);
    be->release(be, mom1);
    be->release(be, mom2);
    return rc;
}
