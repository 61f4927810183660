// The data pipeline: worker threads turn sample indices into pixels (read, decode, augment)
// and fill a bounded ring of batch slots ahead of the training loop, which only pops ready
// batches. Each sample's randomness comes from (seed, epoch, index), so batches do not
// depend on the number of workers or their timing.
#pragma once
#include <stdint.h>
#include "dataset.h"

typedef struct Loader Loader;

// slots: batches prepared ahead (memory: slots x batch x image bytes). workers 0 = the cores.
Loader *loader_create(const Dataset *d, int batch, int workers, int slots);

// Where the batch ring's images and labels live: a GPU copies from page-locked memory
// without staging it and without blocking the host. alloc returns NULL when out of memory.
typedef struct {
    void *(*alloc)(void *ctx, size_t bytes);
    void (*release)(void *ctx, void *p);
    void *ctx;
} LoaderMemory;
// loader_create with the batch ring in `mem` (NULL: malloc).
Loader *loader_create_in(const Dataset *d, int batch, int workers, int slots, const LoaderMemory *mem);
// Starts producing batches of the given sample indices (n of them; the last batch may be
// short). Any batches of a previous sequence not yet taken are discarded.
int loader_begin(Loader *l, const int *indices, long n, uint32_t epoch);
// The next batch in order; blocks until it is ready. The pointers stay valid until the
// next loader_next/loader_begin. VIT_ERR when a sample failed (and --skip_corrupt is off),
// or when the sequence is exhausted.
int loader_next(Loader *l, const uint8_t **images, const int **labels, int *n);
double loader_stall_seconds(const Loader *l);  // time loader_next waited, since loader_begin
long loader_skipped(const Loader *l);          // samples substituted because they were unreadable
const char *loader_last_skip(const Loader *l); // why the newest one was ("" if none)
size_t loader_memory_bytes(const Loader *l);
int loader_workers(const Loader *l);
void loader_destroy(Loader *l);
