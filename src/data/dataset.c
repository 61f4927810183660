#include "dataset.h"
#include <string.h>
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
    d->seed = seed;
}

void dataset_fill_batch(const Dataset *d, const int *indices, int n, uint8_t *images, int *labels) {
    size_t bytes = (size_t)d->size * d->size * d->channels;
    for (int i = 0; i < n; i++) {
        int k = indices[i];
        uint8_t *dst = images + (size_t)i * bytes;
        if (!d->synthetic) {
            memcpy(dst, d->idx.images + (size_t)k * bytes, bytes);
            labels[i] = d->idx.labels[k];
            continue;
        }
        // Synthetic: 16 bytes per Philox call, keyed by the sample index.
        for (size_t j = 0; j < bytes; j += 16) {
            Philox4 r = philox4x32(d->seed, (uint32_t)k, (uint32_t)(j >> 4), (uint32_t)(j >> 36), 0x696d6167u);
            uint8_t block[16];
            memcpy(block, r.v, 16);
            memcpy(dst + j, block, bytes - j < 16 ? bytes - j : 16);
        }
        labels[i] = (int)(philox4x32(d->seed, (uint32_t)k, 0, 0, 0x6c61626cu).v[0] % (uint32_t)d->classes);
    }
}

void dataset_free(Dataset *d) {
    idx_free(&d->idx);
    memset(d, 0, sizeof *d);
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
