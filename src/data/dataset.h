// A labelled image set the training loop can index: Fashion-MNIST from IDX files held in
// memory, or synthetic images generated from (seed, index). Images are uint8 (S, S, C).
#pragma once
#include <stdint.h>
#include "idx.h"

typedef struct {
    const char *name;     // for messages ("train", "t10k", "synthetic")
    int count, size, channels, classes;
    int synthetic;
    uint64_t seed;        // synthetic: images and labels are a function of (seed, index)
    IdxSplit idx;         // idx: the decoded files
} Dataset;

// Loads <dir>/train-* and <dir>/t10k-* IDX files. classes = 1 + the largest label seen.
int dataset_open_idx(Dataset *train, Dataset *val, const char *dir);
void dataset_synthetic(Dataset *d, const char *name, int count, int size, int channels, int classes, uint64_t seed);
// Copies samples indices[0..n) into images (n, S, S, C) and labels (n).
void dataset_fill_batch(const Dataset *d, const int *indices, int n, uint8_t *images, int *labels);
void dataset_free(Dataset *d);

// A permutation of 0..n-1 that depends only on (seed, epoch, pass); pass > 0 continues an
// epoch that needs more than one pass over the data.
void dataset_epoch_order(int *perm, int n, uint64_t seed, int epoch, int pass);
