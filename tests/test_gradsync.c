// The gradient buckets (src/dist/dist.h) with a recording transport in place of NCCL, on the
// CPU backend, so the bucketing that the GPU path relies on is checked on every machine:
// buckets start top first, each exactly once, only when the backward pass has reported all of
// it final (the CPU computes synchronously, so a bucket's contents at its start must equal the
// final gradients), they tile the buffer, and a new window starts them all again. Also the
// MPI-less identity without a transport, and nccl_sync_create's refusals without a GPU.
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "dist/dist.h"
#include "dist/nccl_sync.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/rng.h"
#include "util/status.h"

// What the transport saw: each start's range (relative to the buffer) and a copy of the
// bucket's contents at that moment.
typedef struct {
    const float *base;
    size_t lo[4096], n[4096];
    float *snap[4096];
    int starts, finishes;
} Recorder;

static void rec_start(void *ctx, float *buf, size_t count) {
    Recorder *r = ctx;
    if (r->starts < 4096) {
        r->lo[r->starts] = (size_t)(buf - r->base), r->n[r->starts] = count;
        r->snap[r->starts] = malloc(count * sizeof(float));
        memcpy(r->snap[r->starts], buf, count * sizeof(float));
    }
    r->starts++;
}
static int rec_finish(void *ctx) {
    ((Recorder *)ctx)->finishes++;
    return VIT_OK;
}
static double rec_wait(void *ctx) { return 0.25; }

static void rec_clear(Recorder *r) {
    for (int i = 0; i < r->starts && i < 4096; i++) free(r->snap[i]);
    r->starts = r->finishes = 0;
}

// The starts tile [0, total) top first in buckets of `bucket` (cut from 0: the top one may be shorter).
static int tiled_top_first(const Recorder *r, size_t total, size_t bucket) {
    size_t nb = (total + bucket - 1) / bucket;
    if ((size_t)r->starts != nb) return 0;
    for (size_t i = 0; i < nb; i++) {
        size_t b = nb - 1 - i, lo = b * bucket, n = (b + 1 == nb ? total : lo + bucket) - lo;
        if (r->lo[i] != lo || r->n[i] != n) return 0;
    }
    return 1;
}

static void test_hand_ranges(void) {
    float g[10] = {0};
    Recorder r = {.base = g};
    GradTransport t = {"test", &r, rec_start, rec_finish, rec_wait, NULL};
    GradSync *s = gradsync_create_with(g, 10, 4, &t);  // buckets [0,4) [4,8) [8,10)
    CHECK(s && gradsync_buckets(s) == 3, "10 floats in buckets of 4: %zu buckets", s ? gradsync_buckets(s) : 0);
    gradsync_ready(s, 8, 2);
    CHECK(r.starts == 1 && r.lo[0] == 8 && r.n[0] == 2, "top bucket starts once final (%d starts)", r.starts);
    gradsync_ready(s, 5, 3);
    CHECK(r.starts == 1, "a partly final bucket waits (%d starts)", r.starts);
    gradsync_ready(s, 0, 2);  // does not join the final region [5, 10): nothing changes
    CHECK(r.starts == 1, "a range below a gap starts nothing (%d starts)", r.starts);
    gradsync_ready(s, 2, 3);  // [2, 10) final: bucket [4, 8) now whole
    CHECK(r.starts == 2 && r.lo[1] == 4 && r.n[1] == 4, "middle bucket starts when whole (%d starts)", r.starts);
    CHECK(gradsync_finish(s) == VIT_OK && r.starts == 3 && r.lo[2] == 0 && r.n[2] == 4 && r.finishes == 1,
          "finish starts the rest and finishes once (%d starts, %d finishes)", r.starts, r.finishes);
    CHECK(gradsync_wait_seconds(s) == 0.25, "wait seconds come from the transport");
    rec_clear(&r);
    gradsync_begin(s);
    gradsync_ready(s, 0, 10);
    CHECK(r.starts == 3 && tiled_top_first(&r, 10, 4), "a new window starts every bucket again, top first");
    gradsync_destroy(s);
    rec_clear(&r);

    // A transport is used even with one process; without one (and without MPI ranks) nothing is summed.
    GradSync *none = gradsync_create(g, 10, 4);
    gradsync_ready(none, 0, 10);
    CHECK(none && gradsync_finish(none) == VIT_OK && gradsync_wait_seconds(none) == 0, "one rank without a transport");
    gradsync_destroy(none);
}

static void on_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

// A real backward pass drives the buckets through vit's grad_ready hook.
static void test_backward(Backend *be) {
    ViTConfig c = {.hidden = 32, .mlp = 64, .heads = 2, .layers = 3, .patch = 4, .image = 16, .channels = 3,
                   .classes = 10, .representation = 0, .dropout = 0.0f, .gelu_tanh = 0};
    strcpy(c.name, "gradsync");
    const int B = 4;
    ViT m;
    if (vit_create(&m, &c, be, B, 1)) {
        CHECK(0, "model builds: %s", vit_error());
        return;
    }
    vit_init_params(&m, 5);
    randomize_head(&m, 5);
    size_t n = m.table.total, bucket = 997;  // odd: bucket edges cut through tensors
    uint8_t *img = malloc((size_t)B * c.image * c.image * c.channels);
    int lab[4];
    synth_batch(img, lab, B, &c, 1);
    Recorder r = {.base = m.grads};
    GradTransport t = {"test", &r, rec_start, rec_finish, NULL, NULL};
    GradSync *s = gradsync_create_with(m.grads, n, bucket, &t);
    for (int window = 0; window < 2; window++) {
        be->zero(be, m.grads, n * sizeof(float));
        gradsync_begin(s);
        m.grad_ready = on_ready;
        m.grad_ready_ctx = s;
        int rc = vit_forward(&m, img, lab, B, 1, 0.1f, 7, (uint32_t)window);
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 7, (uint32_t)window);
        int before_finish = r.starts;
        if (rc == VIT_OK) rc = gradsync_finish(s);
        CHECK(rc == VIT_OK, "window %d: forward, backward and finish: %s", window, rc ? vit_error() : "");
        CHECK(tiled_top_first(&r, n, bucket), "window %d: %d starts tile the %zu gradients top first in buckets of %zu",
              window, r.starts, n, bucket);
        // The embedding's gradients are the last to be final: only the bottom bucket may wait for finish.
        CHECK(before_finish == r.starts, "window %d: every bucket started inside the backward pass (%d of %d)", window,
              before_finish, r.starts);
        int early = 0;
        for (int i = 0; i < r.starts && i < 4096; i++)
            early += memcmp(r.snap[i], m.grads + r.lo[i], r.n[i] * sizeof(float)) != 0;
        CHECK(early == 0, "window %d: %d buckets started before their gradients were final", window, early);
        CHECK(r.finishes == 1, "window %d: finish called once (%d)", window, r.finishes);
        rec_clear(&r);
    }
    m.grad_ready = NULL;
    gradsync_destroy(s);
    free(img);
    vit_destroy(&m);
}

// Without a GPU both refusals come before any device is touched.
static void test_nccl_refusals(Backend *cpu) {
    NcclSync *s = nccl_sync_create(cpu);
#ifdef VIT_NCCL
    const char *want = "need the CUDA backend";
#else
    const char *want = "built without NCCL";
#endif
    CHECK(s == NULL && strstr(vit_error(), want), "nccl_sync_create on the CPU backend: '%s'", s ? "" : vit_error());
    nccl_sync_destroy(s);
}

int main(void) {
    Backend *cpu = backend_cpu_create(0);
    test_hand_ranges();
    test_backward(cpu);
    test_nccl_refusals(cpu);
    cpu->destroy(cpu);
    return check_report("test_gradsync");
}
