#include "loader.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/clock.h"
#include "util/status.h"

typedef struct {
    uint8_t *images;
    int *labels;
    long batch_id;   // which batch of the sequence this slot holds (-1 free)
    int done;        // samples finished
} Slot;

struct Loader {
    const Dataset *d;
    LoaderMemory mem;
    int batch, n_slots, n_workers;
    size_t sample_bytes;
    Slot *slots;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    // the current sequence
    int *indices;
    long n, n_batches, next_item, next_batch;  // next sample to hand out, next batch to return
    uint32_t epoch;
    long generation;   // bumped by loader_begin so stale workers drop their results
    int busy;          // samples being processed right now
    int stop;
    char error[1024];
    double stall;
    long skipped;
    char last_skip[512];  // message of the newest skipped sample, for the epoch report
};

static int batch_len(const Loader *l, long b) {
    long start = b * l->batch;
    return (int)(l->n - start < l->batch ? l->n - start : l->batch);
}

// An unreadable sample is replaced by the next readable one (in dataset order) when the
// data allows it, so batches keep their size and the run stays reproducible.
static int load_sample(Loader *l, int index, uint32_t epoch, uint8_t *out, int *label, SampleScratch *s,
                       long *skips, char *err, size_t errn) {
    const Dataset *d = l->d;
    for (int attempt = 0; attempt < 64; attempt++) {
        int k = (int)(((long)index + attempt) % d->count);
        if (dataset_load(d, k, epoch, out, label, s) == VIT_OK) return VIT_OK;
        if (!d->skip_corrupt) {
            snprintf(err, errn, "%s", vit_error());
            return VIT_ERR;
        }
        (*skips)++;
    }
    snprintf(err, errn, "64 consecutive unreadable samples from index %d; last: %s", index, vit_error());
    return VIT_ERR;
}

static void *worker(void *arg) {
    Loader *l = arg;
    SampleScratch scratch = {0};
    char err[1024];
    pthread_mutex_lock(&l->mu);
    for (;;) {
        // Wait for a sample whose batch has a free slot (a bounded ring: memory stays fixed).
        while (!l->stop) {
            if (l->next_item < l->n) {
                long b = l->next_item / l->batch;
                Slot *s = &l->slots[b % l->n_slots];
                if (s->batch_id == b || (s->batch_id < 0 && b < l->next_batch + l->n_slots)) break;
            }
            pthread_cond_wait(&l->work_cv, &l->mu);
        }
        if (l->stop) break;
        long item = l->next_item++, b = item / l->batch, gen = l->generation;
        Slot *s = &l->slots[b % l->n_slots];
        s->batch_id = b;
        int index = l->indices[item];
        uint32_t epoch = l->epoch;
        l->busy++;
        pthread_mutex_unlock(&l->mu);

        long skips = 0;
        int pos = (int)(item - b * l->batch), label = 0;
        int rc = load_sample(l, index, epoch, s->images + (size_t)pos * l->sample_bytes, &label, &scratch, &skips,
                             err, sizeof err);

        pthread_mutex_lock(&l->mu);
        l->busy--;
        if (gen == l->generation) {
            s->labels[pos] = label;
            s->done++;
            l->skipped += skips;
            if (skips) snprintf(l->last_skip, sizeof l->last_skip, "%s", vit_error());
            if (rc != VIT_OK && !l->error[0]) snprintf(l->error, sizeof l->error, "%s", err);
        }
        pthread_cond_broadcast(&l->done_cv);
    }
    pthread_mutex_unlock(&l->mu);
    free(scratch.buf);
    return NULL;
}

static void *heap_alloc(void *ctx, size_t bytes) { return malloc(bytes); }
static void heap_release(void *ctx, void *p) { free(p); }

static void free_slots(Loader *l) {
    if (l->slots)
        for (int i = 0; i < l->n_slots; i++) {
            if (l->slots[i].images) l->mem.release(l->mem.ctx, l->slots[i].images);
            if (l->slots[i].labels) l->mem.release(l->mem.ctx, l->slots[i].labels);
        }
    free(l->slots);
}

Loader *loader_create(const Dataset *d, int batch, int workers, int slots) {
    return loader_create_in(d, batch, workers, slots, NULL);
}

Loader *loader_create_in(const Dataset *d, int batch, int workers, int slots, const LoaderMemory *mem) {
    Loader *l = calloc(1, sizeof *l);
    if (!l) {
        vit_fail("out of memory creating the data loader");
        return NULL;
    }
    l->mem = mem ? *mem : (LoaderMemory){heap_alloc, heap_release, NULL};
    if (workers <= 0) workers = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (workers < 1) workers = 1;
    // In-memory samples cost a copy: threads would only contend with the compute threads
    // (measured 2.5x slower training on 2 cores), so those are produced inline by loader_next.
    if (d->kind == DATA_IDX || d->kind == DATA_SYNTHETIC) workers = 0;
    l->d = d;
    l->batch = batch;
    l->n_slots = slots < 2 ? 2 : slots;
    l->n_workers = workers;
    l->sample_bytes = (size_t)d->size * d->size * d->channels;
    l->slots = calloc((size_t)l->n_slots, sizeof *l->slots);
    l->threads = calloc((size_t)workers, sizeof *l->threads);
    if (!l->slots || !l->threads) goto oom;
    for (int i = 0; i < l->n_slots; i++) {
        l->slots[i].images = l->mem.alloc(l->mem.ctx, (size_t)batch * l->sample_bytes);
        l->slots[i].labels = l->mem.alloc(l->mem.ctx, (size_t)batch * sizeof(int));
        l->slots[i].batch_id = -1;
        if (!l->slots[i].images || !l->slots[i].labels) goto oom;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work_cv, NULL);
    pthread_cond_init(&l->done_cv, NULL);
    for (int i = 0; i < workers; i++)
        if (pthread_create(&l->threads[i], NULL, worker, l)) {
            l->n_workers = i;
            loader_destroy(l);
            vit_fail("cannot start data loader thread %d", i + 1);
            return NULL;
        }
    return l;
oom:
    free_slots(l);
    free(l->threads);
    free(l);
    vit_fail("out of memory for the data loader's batch ring");
    return NULL;
}

int loader_begin(Loader *l, const int *indices, long n, uint32_t epoch) {
    int *copy = malloc((size_t)(n > 0 ? n : 1) * sizeof *copy);
    if (!copy) return vit_fail("out of memory for the epoch's order");
    memcpy(copy, indices, (size_t)n * sizeof *copy);
    pthread_mutex_lock(&l->mu);
    l->generation++;
    while (l->busy) pthread_cond_wait(&l->done_cv, &l->mu);  // let in-flight samples land
    free(l->indices);
    l->indices = copy;
    l->n = n;
    l->n_batches = (n + l->batch - 1) / l->batch;
    l->next_item = 0;
    l->next_batch = 0;
    l->epoch = epoch;
    l->error[0] = 0;
    l->stall = 0;
    l->skipped = 0;
    for (int i = 0; i < l->n_slots; i++) l->slots[i].batch_id = -1, l->slots[i].done = 0;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    return VIT_OK;
}

int loader_next(Loader *l, const uint8_t **images, const int **labels, int *n) {
    pthread_mutex_lock(&l->mu);
    // Hand the previous batch's slot back to the workers.
    if (l->next_batch > 0) {
        Slot *prev = &l->slots[(l->next_batch - 1) % l->n_slots];
        if (prev->batch_id == l->next_batch - 1) prev->batch_id = -1, prev->done = 0;
        pthread_cond_broadcast(&l->work_cv);
    }
    if (l->next_batch >= l->n_batches) {
        pthread_mutex_unlock(&l->mu);
        return vit_fail("data loader: no more batches in this sequence");
    }
    long b = l->next_batch;
    Slot *s = &l->slots[b % l->n_slots];
    int len = batch_len(l, b);
    if (l->n_workers == 0) {  // inline: this thread loads the batch
        char err[1024];
        long skips = 0;
        SampleScratch scratch = {0};
        for (int pos = 0; pos < len; pos++) {
            if (load_sample(l, l->indices[b * l->batch + pos], l->epoch, s->images + (size_t)pos * l->sample_bytes,
                            &s->labels[pos], &scratch, &skips, err, sizeof err)) {
                free(scratch.buf);
                pthread_mutex_unlock(&l->mu);
                return vit_fail("%s", err);
            }
        }
        free(scratch.buf);
        s->batch_id = b;
        s->done = len;
        l->skipped += skips;
        l->next_item += len;
    }
    double t0 = clock_seconds();
    while (!l->error[0] && !(s->batch_id == b && s->done == len)) pthread_cond_wait(&l->done_cv, &l->mu);
    l->stall += clock_seconds() - t0;
    if (l->error[0]) {
        int rc = vit_fail("%s", l->error);
        pthread_mutex_unlock(&l->mu);
        return rc;
    }
    l->next_batch++;
    *images = s->images;
    *labels = s->labels;
    *n = len;
    pthread_mutex_unlock(&l->mu);
    return VIT_OK;
}

double loader_stall_seconds(const Loader *l) { return l->stall; }
long loader_skipped(const Loader *l) { return l->skipped; }
const char *loader_last_skip(const Loader *l) { return l->last_skip; }
size_t loader_memory_bytes(const Loader *l) { return (size_t)l->n_slots * l->batch * l->sample_bytes; }
int loader_workers(const Loader *l) { return l->n_workers; }

void loader_destroy(Loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_workers; i++) pthread_join(l->threads[i], NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->work_cv);
    pthread_cond_destroy(&l->done_cv);
    free_slots(l);
    free(l->threads);
    free(l->indices);
    free(l);
}
