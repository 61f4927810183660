// Data parallelism over MPI ranks: one process per CPU socket/node (or per GPU), the
// model replicated, the global batch split across ranks and gradients summed with
// all-reduce. Without MPI (built without libopenmpi-dev, or not started by mpirun)
// every call is the one-rank identity, so the trainer has a single code path.
#pragma once
#include <stddef.h>

// Starts MPI when `want` (--distributed). Errors when MPI is missing from the build.
int dist_init(int want);
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);
int dist_active(void);           // MPI is running with more than one rank
// The world size mpirun announced in the environment (1 when not under a launcher).
int dist_launcher_size(void);
// Ends every rank of the job with `code` (MPI_Abort); returns only without MPI.
void dist_abort(int code);

int dist_bcast(void *buf, size_t bytes, int root);
int dist_allreduce_sum_double(double *v, size_t n);   // in place
int dist_allreduce_max_double(double *v, size_t n);   // in place
int dist_allreduce_min_double(double *v, size_t n);   // in place

// A buffer of `total` floats cut into one contiguous piece per rank (ZeRO sharding): rank r
// owns [displs[r], displs[r] + counts[r]). The pieces are near-equal and start on a multiple
// of 16 floats (64-byte lines). counts and displs hold dist_size() entries. Errors when a
// count would not fit MPI's int.
int dist_shard_layout(size_t total, int *counts, int *displs);
// Collectives over those pieces, on host memory (the CPU backend's buffers).
int dist_allgatherv_float(float *buf, const int *counts, const int *displs);  // in place: every rank gets all
// Root receives every piece into all (its own must already be there); others send `mine`.
int dist_gatherv_float(const float *mine, float *all, const int *counts, const int *displs, int root);
// Root sends piece r of all to rank r's `mine` (its own stays in place); all is read at root only.
int dist_scatterv_float(const float *all, float *mine, const int *counts, const int *displs, int root);

// Summing gradients in buckets as the backward pass finishes them. The parameter buffer
// is cut into contiguous buckets; the backward pass reports finished ranges from the top
// of the buffer down (head first, embedding last), and every bucket that is then wholly
// final starts its non-blocking all-reduce at once, so communication overlaps the rest
// of the backward pass. All ranks report the same ranges in the same order.
typedef struct GradSync GradSync;
// MPI_Iallreduce on host memory (the CPU backend); a no-op with one rank.
GradSync *gradsync_create(float *grads, size_t total, size_t bucket_floats);

// Another way to sum a bucket across the ranks (NCCL on device memory: src/dist/nccl_sync.h).
// start is called once per bucket, top bucket first, as soon as the bucket is final; finish
// once after the last start, and must order the sums before whatever the caller does next
// with the gradients. A transport is used even with one rank (it exercises the same path).
typedef struct {
    const char *name;                                    // for reports: "NCCL"
    void *ctx;
    void (*start)(void *ctx, float *buf, size_t count);  // begin summing buf[0, count) in place; errors wait for finish
    int (*finish)(void *ctx);                            // VIT_ERR (with vit_fail) when any start or the sums failed
    double (*wait_seconds)(void *ctx);                   // time the run waited on the sums, total (may be NULL)
    // --zero 1: every rank's updated part of the parameters buf[displs[r], +counts[r]) to
    // every rank, in place, ordered after the update and before the next step's ops. NULL:
    // MPI_Allgatherv on host memory (the CPU backend).
    int (*allgather)(void *ctx, float *buf, const int *counts, const int *displs);
} GradTransport;
GradSync *gradsync_create_with(float *grads, size_t total, size_t bucket_floats, const GradTransport *t);
void gradsync_destroy(GradSync *g);
void gradsync_begin(GradSync *g);                             // a new accumulation window
void gradsync_ready(GradSync *g, size_t offset, size_t count); // grads[offset, offset+count) are final
int gradsync_finish(GradSync *g);                              // MPI: waits for every bucket; a transport orders them
double gradsync_wait_seconds(const GradSync *g);               // time waited on the sums (MPI: blocked in finish), total
size_t gradsync_buckets(const GradSync *g);
