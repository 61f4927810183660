// numpy .npz archives (zip of .npy arrays), the format of the official ViT weights.
// Reading supports stored and deflated members and zip64 (libzip); .npy header versions 1-3;
// little-endian float32 in C order (anything else is refused with a message naming the key).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;          // member name without the ".npy" suffix
    int ndim;
    int64_t shape[8];
    size_t count;        // number of floats
    float *data;
} NpzArray;

typedef struct {
    NpzArray *arrays;
    int count;
} NpzFile;

// Reads every array of the archive. VIT_ERR with "<path>: <key>: what is wrong" otherwise.
int npz_read(NpzFile *f, const char *path);
const NpzArray *npz_find(const NpzFile *f, const char *name);
void npz_free(NpzFile *f);

// Writes float32 arrays as an .npz (stored members, .npy version 1.0 headers, zip64 when
// needed) atomically: temp file in the same folder, fsync, rename, fsync of the folder. An
// existing file at `path` is untouched on failure.
typedef struct {
    const char *name;    // without ".npy"
    int ndim;
    const int64_t *shape;
    const float *data;
} NpzEntry;
int npz_write(const char *path, const NpzEntry *entries, int count);
