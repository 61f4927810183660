#include "evaluate.h"
#include <stdlib.h>
#include <string.h>
#include "data/loader.h"
#include "dist/dist.h"
#include "util/clock.h"
#include "util/status.h"

void count_hits(const float *logits, const int *labels, int B, int K, long *top1, long *top5) {
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
    double t0 = clock_seconds(), loss = 0;
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
    double dt = clock_seconds() - t0;
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
