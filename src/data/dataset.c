#include "dataset.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "example.h"
#include "image.h"
#include "tfrecord.h"
#include "util/rng.h"
#include "util/status.h"

int dataset_open_idx(Dataset *train, Dataset *val, const char *dir) {
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    if (idx_load_split(&train->idx, dir, "train")) return VIT_ERR;
    if (idx_load_split(&val->idx, dir, "t10k")) {
        idx_free(&train->idx);
        return VIT_ERR;
    }
    if (train->idx.rows != train->idx.cols || val->idx.rows != train->idx.rows || val->idx.cols != train->idx.cols) {
        int r = train->idx.rows, c = train->idx.cols, vr = val->idx.rows, vc = val->idx.cols;
        idx_free(&train->idx);
        idx_free(&val->idx);
        return vit_fail("%s: train images are %dx%d and t10k images %dx%d; square images of one size are needed", dir,
                        r, c, vr, vc);
    }
    Dataset *sets[2] = {train, val};
    const char *names[2] = {"train", "t10k"};
    int classes = 0;
    for (int s = 0; s < 2; s++) {
        Dataset *d = sets[s];
        d->name = names[s];
        d->kind = DATA_IDX;
        d->count = d->idx.count;
        d->size = d->idx.rows;
        d->channels = 1;
        for (int i = 0; i < d->count; i++)
            if (d->idx.labels[i] + 1 > classes) classes = d->idx.labels[i] + 1;
    }
    train->classes = val->classes = classes;
    return VIT_OK;
}

void dataset_synthetic(Dataset *d, const char *name, int count, int size, int channels, int classes, uint64_t seed) {
    memset(d, 0, sizeof *d);
    d->name = name;
    d->count = count;
    d->size = size;
    d->channels = channels;
    d->classes = classes;
    d->synthetic = 1;
    d->kind = DATA_SYNTHETIC;
    d->seed = seed;
}

void dataset_set_output(Dataset *d, int size, int channels, int train, const AugmentConfig *aug) {
    if (d->kind == DATA_TFRECORD || d->kind == DATA_FOLDER) {
        d->size = size;
        d->channels = channels;
    }
    d->train = train;
    if (aug) d->aug = *aug;
}

// Reads a whole file into the scratch buffer.
static int read_file(const char *path, SampleScratch *s, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return vit_fail("%s: %s", path, strerror(errno));
    size_t n = 0;
    for (;;) {
        if (n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 1 << 20;
            uint8_t *b = realloc(s->buf, cap);
            if (!b) {
                fclose(f);
                return vit_fail("%s: out of memory reading it", path);
            }
            s->buf = b, s->cap = cap;
        }
        size_t got = fread(s->buf + n, 1, s->cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) return vit_fail("%s: read error", path);
    *len = n;
    return VIT_OK;
}

// Decodes, then augments (training) or center-crops (evaluation).
static int pixels_from_encoded(const Dataset *d, const uint8_t *data, size_t len, const char *where, int index,
                               uint32_t epoch, uint8_t *out) {
    Image img = {0};
    // Training decodes a JPEG much larger than needed at a reduced DCT scale: its crops keep
    // at least ~2/3 of each side, so keeping twice the output size loses no resolution.
    // Evaluation decodes as the recipe's tf.io.decode_jpeg, full size: DCT scaling is a box
    // filter ahead of the bilinear resize and moves the probabilities; fast_decode opts in.
    int decoded = d->train         ? image_decode(&img, data, len, where, 2 * d->size)
                  : d->fast_decode ? image_decode(&img, data, len, where, d->size)
                                   : image_decode_tf(&img, data, len, where);
    // A run that stops here can go on past such files: say how (the loader substitutes them).
    if (decoded != VIT_OK) {
        if (d->skip_corrupt) return VIT_ERR;
        char why[1200];
        snprintf(why, sizeof why, "%s", vit_error());
        return vit_fail("%s (--skip_corrupt skips unreadable images)", why);
    }
    int rc = d->train ? augment_train(&img, d->size, d->channels, &d->aug, d->seed, epoch, (uint64_t)index, out)
                      : image_eval_crop(&img, d->size, d->channels, out);
    image_free(&img);
    return rc;
}

static int load_one(const Dataset *d, int k, uint32_t epoch, uint8_t *out, int *label, SampleScratch *s) {
    size_t bytes = (size_t)d->size * d->size * d->channels;
    switch (d->kind) {
    case DATA_IDX:
        memcpy(out, d->idx.images + (size_t)k * bytes, bytes);
        *label = d->idx.labels[k];
        // IDX images get none of the recipe's steps; --aa and --reprob apply when given.
        return d->train ? augment_extra(out, d->size, d->channels, &d->aug, d->seed, epoch, (uint64_t)k) : VIT_OK;
    case DATA_SYNTHETIC:
        // 16 bytes per Philox call, keyed by the sample index.
        for (size_t j = 0; j < bytes; j += 16) {
            Philox4 r = philox4x32(d->seed, (uint32_t)k, (uint32_t)(j >> 4), (uint32_t)(j >> 36), 0x696d6167u);
            uint8_t block[16];
            memcpy(block, r.v, 16);
            memcpy(out + j, block, bytes - j < 16 ? bytes - j : 16);
        }
        *label = (int)(philox4x32(d->seed, (uint32_t)k, 0, 0, 0x6c61626cu).v[0] % (uint32_t)d->classes);
        return VIT_OK;
    case DATA_TFRECORD: {
        const RecordRef *ref = &d->records[k];
        const char *path = d->files[ref->file];
        size_t len = 0;
        if (tfr_read_at(d->fds[ref->file], path, ref->offset, &s->buf, &s->cap, &len)) return VIT_ERR;
        char where[1200];
        snprintf(where, sizeof where, "%s: record at byte %llu", path, (unsigned long long)ref->offset);
        ExampleImage ex;
        if (example_parse_image(s->buf, len, &ex, where)) return VIT_ERR;
        if (ex.label < 1 || ex.label > d->classes)
            return vit_fail("%s: label %lld outside 1..%d", where, (long long)ex.label, d->classes);
        *label = (int)ex.label - 1;  // the shards count classes from 1
        return pixels_from_encoded(d, ex.encoded, ex.encoded_len, where, k, epoch, out);
    }
    case DATA_FOLDER: {
        size_t len = 0;
        if (read_file(d->paths[k], s, &len)) return VIT_ERR;
        *label = d->labels[k];
        return pixels_from_encoded(d, s->buf, len, d->paths[k], k, epoch, out);
    }
    }
    return vit_fail("unknown data kind");
}

int dataset_load(const Dataset *d, int index, uint32_t epoch, uint8_t *out, int *label, SampleScratch *s) {
    return load_one(d, index, epoch, out, label, s);
}

void dataset_free(Dataset *d) {
    idx_free(&d->idx);
    for (int i = 0; i < d->n_files; i++) {
        if (d->fds && d->fds[i] >= 0) close(d->fds[i]);
        free(d->files[i]);
    }
    free(d->files);
    free(d->fds);
    free(d->records);
    if (d->paths)
        for (int i = 0; i < d->count; i++) free(d->paths[i]);
    free(d->paths);
    free(d->labels);
    for (int i = 0; i < d->n_class_names; i++) free(d->class_names[i]);
    free(d->class_names);
    memset(d, 0, sizeof *d);
}

int dataset_read_class_names(Dataset *train, Dataset *val, const char *dir) {
    char path[4096 + 16];
    snprintf(path, sizeof path, "%s/classes.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return VIT_OK;
    char **names = NULL, line[1024];
    int n = 0, rc = VIT_OK;
    while (rc == VIT_OK && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;  // a trailing blank line
        char **g = realloc(names, (size_t)(n + 1) * sizeof *g);
        if (!g || !(g[n] = strdup(line))) rc = vit_fail("out of memory reading %s", path);
        if (g) names = g;
        if (rc == VIT_OK) n++;
    }
    fclose(f);
    if (rc == VIT_OK && n == 0) rc = vit_fail("%s: no class names in it (one per line, in label order)", path);
    Dataset *sets[2] = {train, val};
    for (int s = 0; s < 2 && rc == VIT_OK; s++) {
        if (!sets[s]) continue;
        if (!(sets[s]->class_names = calloc((size_t)n, sizeof *names))) rc = vit_fail("out of memory");
        for (int i = 0; rc == VIT_OK && i < n; i++)
            if (!(sets[s]->class_names[i] = strdup(names[i]))) rc = vit_fail("out of memory");
        sets[s]->n_class_names = n;
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int dataset_typical_size(const Dataset *d, int samples, int *width, int *height) {
    if ((d->kind != DATA_FOLDER && d->kind != DATA_TFRECORD) || d->count < 1 || samples < 1) return VIT_ERR;
    if (samples > 64) samples = 64;
    if (samples > d->count) samples = d->count;
    int w[64], h[64], got = 0;
    SampleScratch s = {0};
    for (int i = 0; i < samples; i++) {
        int k = (int)((long)i * d->count / samples);  // spread over the classes (folders are by class)
        const uint8_t *data = NULL;
        size_t len = 0;
        if (d->kind == DATA_FOLDER) {
            if (read_file(d->paths[k], &s, &len)) continue;
            data = s.buf;
        } else {
            const RecordRef *ref = &d->records[k];
            ExampleImage ex;
            if (tfr_read_at(d->fds[ref->file], d->files[ref->file], ref->offset, &s.buf, &s.cap, &len) ||
                example_parse_image(s.buf, len, &ex, d->files[ref->file]))
                continue;
            data = ex.encoded, len = ex.encoded_len;
        }
        if (image_peek_size(data, len, &w[got], &h[got]) == VIT_OK) got++;
    }
    free(s.buf);
    if (!got) return VIT_ERR;
    qsort(w, (size_t)got, sizeof *w, cmp_int);
    qsort(h, (size_t)got, sizeof *h, cmp_int);
    *width = w[got / 2], *height = h[got / 2];
    return VIT_OK;
}

void dataset_epoch_order(int *perm, int n, uint64_t seed, int epoch, int pass) {
    for (int i = 0; i < n; i++) perm[i] = i;
    // Fisher-Yates with counter-based draws: draw i depends only on (seed, epoch, pass, i).
    for (int i = n - 1; i > 0; i--) {
        Philox4 r = philox4x32(seed, (uint32_t)i, (uint32_t)epoch, 0x73687566u, (uint32_t)pass);
        uint64_t x = ((uint64_t)r.v[0] << 32) | r.v[1];
        int j = (int)(x % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
