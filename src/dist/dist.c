#include "dist.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/clock.h"
#include "util/status.h"
#ifdef VIT_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_active = 0;

int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }
int dist_active(void) { return g_active; }

int dist_launcher_size(void) {
    // Open MPI, MPICH/Hydra and Slurm announce the job size to each process.
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

int dist_shard_layout(size_t total, int *counts, int *displs) {
    if (total > 2147483647u) return vit_fail("%zu parameters exceed MPI's int count: cannot shard them", total);
    // Boundaries rounded down to 16 floats; the last piece ends at the buffer's end.
    size_t lo = 0;
    for (int r = 0; r < g_size; r++) {
        size_t hi = r + 1 == g_size ? total : total / (size_t)g_size * (size_t)(r + 1) / 16 * 16;
        displs[r] = (int)lo;
        counts[r] = (int)(hi - lo);
        lo = hi;
    }
    return VIT_OK;
}

#ifdef VIT_MPI
int dist_init(int want) {
    if (!want) return VIT_OK;
    int provided;
    // Only the main thread calls MPI; loader and compute threads never do.
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return vit_fail("--distributed: MPI_Init failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_active = 1;
    return VIT_OK;
}

void dist_finalize(void) {
    if (g_active) MPI_Finalize();
    g_active = 0;
}

void dist_abort(int code) {
    if (!g_active) return;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
}

static int check(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return VIT_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return vit_fail("rank %d: %s failed: %s", g_rank, what, msg);
}

int dist_bcast(void *buf, size_t bytes, int root) {
    if (!g_active) return VIT_OK;
    // MPI counts are int: large buffers go in 1 GiB pieces.
    for (size_t off = 0; off < bytes; off += (size_t)1 << 30) {
        size_t n = bytes - off < ((size_t)1 << 30) ? bytes - off : (size_t)1 << 30;
        if (check(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast")) return VIT_ERR;
    }
    return VIT_OK;
}

static int allreduce_double(double *v, size_t n, MPI_Op op) {
    if (!g_active) return VIT_OK;
    return check(MPI_Allreduce(MPI_IN_PLACE, v, (int)n, MPI_DOUBLE, op, MPI_COMM_WORLD), "MPI_Allreduce");
}
int dist_allreduce_sum_double(double *v, size_t n) { return allreduce_double(v, n, MPI_SUM); }
int dist_allreduce_max_double(double *v, size_t n) { return allreduce_double(v, n, MPI_MAX); }
int dist_allreduce_min_double(double *v, size_t n) { return allreduce_double(v, n, MPI_MIN); }

int dist_allgatherv_float(float *buf, const int *counts, const int *displs) {
    if (!g_active) return VIT_OK;
    return check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, MPI_COMM_WORLD),
                 "parameter all-gather (MPI_Allgatherv)");
}

int dist_gatherv_float(const float *mine, float *all, const int *counts, const int *displs, int root) {
    if (!g_active) return VIT_OK;
    int rc = g_rank == root
                 ? MPI_Gatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all, counts, displs, MPI_FLOAT, root, MPI_COMM_WORLD)
                 : MPI_Gatherv(mine, counts[g_rank], MPI_FLOAT, NULL, NULL, NULL, MPI_FLOAT, root, MPI_COMM_WORLD);
    return check(rc, "optimizer state gather (MPI_Gatherv)");
}

int dist_scatterv_float(const float *all, float *mine, const int *counts, const int *displs, int root) {
    if (!g_active) return VIT_OK;
    int rc = g_rank == root
                 ? MPI_Scatterv(all, counts, displs, MPI_FLOAT, MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, root, MPI_COMM_WORLD)
                 : MPI_Scatterv(NULL, NULL, NULL, MPI_FLOAT, mine, counts[g_rank], MPI_FLOAT, root, MPI_COMM_WORLD);
    return check(rc, "optimizer state scatter (MPI_Scatterv)");
}

#else  // built without MPI: one rank

int dist_init(int want) {
    if (want)
        return vit_fail("--distributed: this vit was built without MPI (install libopenmpi-dev and openmpi-bin, "
                        "then rebuild with make)");
    return VIT_OK;
}
void dist_finalize(void) {}
void dist_abort(int code) { (void)code; }
int dist_bcast(void *buf, size_t bytes, int root) { return VIT_OK; }
int dist_allreduce_sum_double(double *v, size_t n) { return VIT_OK; }
int dist_allreduce_max_double(double *v, size_t n) { return VIT_OK; }
int dist_allreduce_min_double(double *v, size_t n) { return VIT_OK; }
int dist_allgatherv_float(float *buf, const int *counts, const int *displs) { return VIT_OK; }
int dist_gatherv_float(const float *mine, float *all, const int *counts, const int *displs, int root) { return VIT_OK; }
int dist_scatterv_float(const float *all, float *mine, const int *counts, const int *displs, int root) { return VIT_OK; }

#endif

// ---- gradient buckets ------------------------------------------------------------------------
// The bucketing is the same for every transport; MPI (host memory) is built in, another
// transport (NCCL on device memory) comes in through GradTransport.

struct GradSync {
    float *grads;
    size_t total, bucket;
    size_t nb;
    size_t next;         // buckets are started from the top: next to start is nb-1-next
    size_t ready_from;   // [ready_from, total) is final
    int active;          // something to sum: a transport, or MPI with several ranks
    GradTransport t;     // t.start NULL: MPI
#ifdef VIT_MPI
    MPI_Request *req;
#endif
    double wait;
};

GradSync *gradsync_create(float *grads, size_t total, size_t bucket_floats) {
    return gradsync_create_with(grads, total, bucket_floats, NULL);
}

GradSync *gradsync_create_with(float *grads, size_t total, size_t bucket_floats, const GradTransport *t) {
    GradSync *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->grads = grads;
    g->total = total;
    g->bucket = bucket_floats ? bucket_floats : total;
    g->nb = g->bucket ? (total + g->bucket - 1) / g->bucket : 0;
    if (t) g->t = *t;
    g->active = g->t.start ? 1 : g_active && g_size > 1;
#ifdef VIT_MPI
    if (!g->t.start) {
        g->req = malloc((g->nb ? g->nb : 1) * sizeof *g->req);
        if (!g->req) {
            free(g);
            return NULL;
        }
        for (size_t i = 0; i < g->nb; i++) g->req[i] = MPI_REQUEST_NULL;
    }
#endif
    gradsync_begin(g);
    return g;
}

void gradsync_destroy(GradSync *g) {
    if (!g) return;
#ifdef VIT_MPI
    if (g->req && g_active) MPI_Waitall((int)g->nb, g->req, MPI_STATUSES_IGNORE);
    free(g->req);
#endif
    free(g);
}

void gradsync_begin(GradSync *g) {
    g->next = 0;
    g->ready_from = g->total;
}

size_t gradsync_buckets(const GradSync *g) { return g->nb; }

double gradsync_wait_seconds(const GradSync *g) {
    return g->t.start && g->t.wait_seconds ? g->t.wait_seconds(g->t.ctx) : g->wait;
}

static void start_ready_buckets(GradSync *g) {
    while (g->next < g->nb) {
        size_t b = g->nb - 1 - g->next, lo = b * g->bucket;
        if (lo < g->ready_from) break;
        size_t n = (b + 1 == g->nb ? g->total : lo + g->bucket) - lo;
        if (g->t.start) g->t.start(g->t.ctx, g->grads + lo, n);
#ifdef VIT_MPI
        else MPI_Iallreduce(MPI_IN_PLACE, g->grads + lo, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &g->req[b]);
#endif
        g->next++;
    }
}

void gradsync_ready(GradSync *g, size_t offset, size_t count) {
    if (!g->active) return;
    // Ranges arrive top-down; a range that does not join the final region changes nothing.
    if (offset + count >= g->ready_from && offset < g->ready_from) g->ready_from = offset;
    start_ready_buckets(g);
#ifdef VIT_MPI
    // Open MPI progresses non-blocking collectives inside MPI calls: poke it here.
    int flag;
    if (!g->t.start) MPI_Testall((int)g->nb, g->req, &flag, MPI_STATUSES_IGNORE);
#endif
}

int gradsync_finish(GradSync *g) {
    if (!g->active) return VIT_OK;
    g->ready_from = 0;
    start_ready_buckets(g);
    if (g->t.start) return g->t.finish(g->t.ctx);
#ifdef VIT_MPI
    double t0 = clock_seconds();
    int rc = MPI_Waitall((int)g->nb, g->req, MPI_STATUSES_IGNORE);
    g->wait += clock_seconds() - t0;
    return check(rc, "gradient all-reduce (MPI_Iallreduce)");
#else
    return VIT_OK;
#endif
}
