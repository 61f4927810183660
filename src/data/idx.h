// IDX files (MNIST / Fashion-MNIST), plain or gzip-compressed.
#pragma once
#include <stdint.h>

typedef struct {
    uint8_t *images;  // count * rows * cols bytes, row-major, one channel
    uint8_t *labels;  // count bytes
    int count, rows, cols;
} IdxSplit;

// Loads <dir>/<prefix>-images-idx3-ubyte[.gz] and <dir>/<prefix>-labels-idx1-ubyte[.gz]
// (prefix "train" or "t10k"). Checks magic numbers, dimensions, that the file holds exactly
// the data its header announces, and that image and label counts agree. On failure returns
// VIT_ERR with a one-line message naming the file and what is wrong, and leaves s empty.
int idx_load_split(IdxSplit *s, const char *dir, const char *prefix);
// 1 when <dir> holds train-images-idx3-ubyte or train-images-idx3-ubyte.gz.
int idx_dir_looks_like_idx(const char *dir);
void idx_free(IdxSplit *s);
