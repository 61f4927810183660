// Data-pipeline throughput of vit: read + JPEG decode + the recipe's training augmentation
// (distorted-bbox crop, bilinear resize to SIZE, flip, brightness, saturation, clip) + batching,
// through the real Loader (worker threads, ring of batch slots), with nothing training.
// The consumer also turns each uint8 batch into floats in [-1, 1] (what the model's input
// step does), so the work matches the Python loaders, whose batches are normalised floats.
//
// usage: loader_speed DIR [--workers 1,2] [--batch 64] [--batches 40] [--warmup 3]
//                         [--size 224] [--slots 4] [--seed 1] [--no_float]
//                         [--aa POLICY] [--reprob P]   (timm's RandAugment / random erasing on top)
// DIR holds train/<class>/*.jpg and val/<class>/*.jpg (tools/make_bench_jpegs.py makes them).
// For each worker count: one JSON line with img/s in total and per worker. Timing starts
// after --warmup batches have been taken and covers the next --batches batches. Run it under
// `taskset` to give it exactly as many cores as workers (bench/loader_speed.sh does).
// Build: make build/bench/loader_speed
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "util/clock.h"
#include "util/status.h"

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int usage(void) {
    fprintf(stderr, "usage: loader_speed DIR [--workers 1,2] [--batch 64] [--batches 40] [--warmup 3] [--size 224] "
                    "[--slots 4] [--seed 1] [--no_float] [--tfrecord [--sequential]] [--aa POLICY] [--reprob P]\n"
                    "  --tfrecord: DIR holds train/train-* shards (vit prep); --sequential: file order\n");
    return 2;
}

// One measurement; prints its JSON line. Returns 0 on success.
static int run(const Dataset *d, int workers, int batch, int batches, int warmup, int slots, int to_float,
               int sequential, float *fbuf) {
    long n = (long)(warmup + batches) * batch;
    int *perm = malloc((size_t)d->count * sizeof *perm), *seq = malloc((size_t)n * sizeof *seq);
    if (!perm || !seq) {
        fprintf(stderr, "loader_speed: out of memory\n");
        return 1;
    }
    // As many epochs' permutations as the sequence needs, back to back (the work per sample
    // does not depend on which epoch it belongs to).
    // --sequential: records in file order, what a streaming reader sees (for comparison
    // with the global permutation through the offset index).
    for (long i = 0; i < n; i++) {
        if (!sequential && i % d->count == 0) dataset_epoch_order(perm, d->count, d->seed, (int)(i / d->count), 0);
        seq[i] = sequential ? (int)(i % d->count) : perm[i % d->count];
    }
    Loader *l = loader_create(d, batch, workers, slots);
    if (!l || loader_begin(l, seq, n, 0)) {
        fprintf(stderr, "loader_speed: %s\n", vit_error());
        return 1;
    }
    const size_t sample = (size_t)d->size * d->size * d->channels;
    double t0 = 0, c0 = 0, stall0 = 0;
    long images = 0;
    double checksum = 0;
    for (int b = 0; b < warmup + batches; b++) {
        if (b == warmup) t0 = clock_seconds(), c0 = cpu_now(), stall0 = loader_stall_seconds(l);
        const uint8_t *img;
        const int *lab;
        int len;
        if (loader_next(l, &img, &lab, &len)) {
            fprintf(stderr, "loader_speed: %s\n", vit_error());
            loader_destroy(l);
            return 1;
        }
        if (to_float) {
            size_t m = (size_t)len * sample;
            for (size_t i = 0; i < m; i++) fbuf[i] = (float)img[i] * (2.0f / 255.0f) - 1.0f;
            checksum += fbuf[(size_t)b % m];
        } else {
            checksum += img[(size_t)b % ((size_t)len * sample)];
        }
        if (b >= warmup) images += len;
    }
    double secs = clock_seconds() - t0, cpu = cpu_now() - c0, stall = loader_stall_seconds(l) - stall0;
    int w = loader_workers(l);
    printf("{\"impl\": \"vit\", \"workers\": %d, \"batch\": %d, \"batches\": %d, \"size\": %d, \"images\": %ld, "
           "\"seconds\": %.3f, \"images_per_sec\": %.1f, \"images_per_sec_per_core\": %.1f, \"cpu_seconds\": %.3f, "
           "\"consumer_wait_seconds\": %.3f, \"float_output\": %s, \"source\": \"%s\", \"order\": \"%s\", "
           "\"checksum\": %.3f}\n",
           w, batch, batches, d->size, images, secs, images / secs, images / secs / w, cpu, stall,
           to_float ? "true" : "false", d->kind == DATA_TFRECORD ? "tfrecord" : "folder",
           sequential ? "sequential" : "global-shuffle", checksum);
    fflush(stdout);
    loader_destroy(l);
    free(perm);
    free(seq);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') return usage();
    const char *dir = argv[1], *workers_list = "1,2";
    int batch = 64, batches = 40, warmup = 3, size = 224, slots = 4, to_float = 1, tfrecord = 0, sequential = 0;
    long seed = 1;
    const char *aa = "";
    float reprob = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no_float") || !strcmp(a, "--tfrecord") || !strcmp(a, "--sequential")) {
            to_float &= strcmp(a, "--no_float") != 0;
            tfrecord |= !strcmp(a, "--tfrecord");
            sequential |= !strcmp(a, "--sequential");
            continue;
        }
        if (!v) return usage();
        if (!strcmp(a, "--workers")) workers_list = v;
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--batches")) batches = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--size")) size = atoi(v);
        else if (!strcmp(a, "--slots")) slots = atoi(v);
        else if (!strcmp(a, "--seed")) seed = atol(v);
        else if (!strcmp(a, "--aa")) aa = v;
        else if (!strcmp(a, "--reprob")) reprob = (float)atof(v);
        else return usage();
        i++;
    }
    if (batch < 1 || batches < 1 || warmup < 0 || size < 1) return usage();

    Dataset train, val;
    memset(&val, 0, sizeof val);
    int open_rc = tfrecord ? dataset_open_tfrecord(&train, "train", dir, "train/train", NULL)
                           : dataset_open_folder(&train, &val, dir);
    if (tfrecord) train.classes = 1 << 20;  // labels are only range-checked here
    if (open_rc) {
        fprintf(stderr, "loader_speed: %s\n", vit_error());
        return 1;
    }
    train.seed = (uint64_t)seed;
    AugmentConfig aug;
    augment_defaults(&aug);
    if (augment_set_timm(&aug, aa, reprob, "pixel", 1)) {
        fprintf(stderr, "loader_speed: %s\n", vit_error());
        return 2;
    }
    dataset_set_output(&train, size, 3, 1, &aug);
    fprintf(stderr, "loader_speed: %s: %d training images, %d classes, output %dx%dx3, batch %d\n", dir, train.count,
            train.classes, size, size, batch);

    float *fbuf = to_float ? malloc((size_t)batch * size * size * 3 * sizeof(float)) : NULL;
    if (to_float && !fbuf) {
        fprintf(stderr, "loader_speed: out of memory\n");
        return 1;
    }
    int rc = 0;
    char *list = strdup(workers_list), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        int w = atoi(t);
        if (w < 1) return usage();
        rc = run(&train, w, batch, batches, warmup, slots, to_float, sequential, fbuf);
    }
    free(list);
    free(fbuf);
    dataset_free(&train);
    dataset_free(&val);
    return rc;
}
