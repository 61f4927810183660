// ZeRO stage 1's optimizer arithmetic: updating a buffer shard by shard with optim_step_range
// (each shard with slots of its own size) gives bit for bit what one optim_step over the
// whole buffer gives, for every optimizer, with shard boundaries cutting through ranges with
// and without weight decay, unaligned, and with an empty shard. (The MPI side, the same run
// with --zero 0 and 1 on 2 ranks, is in tests/cli_dist.sh.) The same with layer-wise
// learning-rate decay (--layer_decay), whose per-layer rates must survive every cut too.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "check.h"
#include "train/update.h"

enum { NE = 7, STEPS = 3 };
static const size_t sizes[NE] = {37, 100, 5, 64, 3, 200, 11};
static const int decays[NE] = {0, 1, 0, 1, 0, 1, 0};
// One block: layers 0 (stem), 1 (the block, and the final norm with it), 2 (the head).
static const char *names[NE] = {"cls", "embedding/kernel", "Transformer/encoderblock_0/LayerNorm_0/bias",
                                "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", "Transformer/encoder_norm/bias",
                                "head/kernel", "head/bias"};

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / 16777216.0) * 2.0f - 1.0f;
}

// Runs STEPS updates over the whole buffer, then the same split at cuts[0..ncuts-1] (0 and
// total included), and compares parameters and slots bit for bit.
static void compare(Backend *be, const ParamTable *t, const char *kind, double layer_decay, const size_t *cuts,
                    int ncuts) {
    size_t n = t->total, bytes = n * sizeof(float);
    OptimConfig o;
    optim_config_default(&o, kind);
    o.layer_decay = layer_decay;
    o.weight_decay = 0.1f;   // every kind: decay must stay on kernels only, on both sides of a cut
    o.clip_norm = 0.5f;      // below the norm: the global clipping scale is used
    float *p0 = malloc(bytes), *p1 = malloc(bytes), *g = malloc(bytes);
    float *m0 = calloc(n, sizeof(float)), *v0 = calloc(n, sizeof(float));
    float *m1 = calloc(n, sizeof(float)), *v1 = calloc(n, sizeof(float));  // the shards' slots, side by side
    uint64_t seed = 7;
    for (size_t i = 0; i < n; i++) p0[i] = p1[i] = frand(&seed);
    int uses_m = optim_uses_m(o.kind), uses_v = optim_uses_v(o.kind), ok = 1;
    for (int step = 1; step <= STEPS; step++) {
        for (size_t i = 0; i < n; i++) g[i] = frand(&seed);
        double norm0, norm1;
        ok &= optim_step(be, t, p0, g, uses_m ? m0 : NULL, uses_v ? v0 : NULL, &o, 0.01f, step, &norm0) == 0;
        for (int k = 0; k + 1 < ncuts; k++) {
            size_t lo = cuts[k], hi = cuts[k + 1];
            // Each shard's slots are their own array starting at its first float, as on a rank.
            float *ms = malloc((hi - lo + 1) * sizeof(float)), *vs = malloc((hi - lo + 1) * sizeof(float));
            memcpy(ms, m1 + lo, (hi - lo) * sizeof(float));
            memcpy(vs, v1 + lo, (hi - lo) * sizeof(float));
            ok &= optim_step_range(be, t, p1, g, uses_m ? ms : NULL, uses_v ? vs : NULL, lo, hi, &o, 0.01f, step,
                                   &norm1) == 0;
            ok &= norm1 == norm0;
            memcpy(m1 + lo, ms, (hi - lo) * sizeof(float));
            memcpy(v1 + lo, vs, (hi - lo) * sizeof(float));
            free(ms);
            free(vs);
        }
    }
    CHECK(ok, "%s, layer decay %g, %d shards: the steps ran with the same global norm", kind, layer_decay, ncuts - 1);
    CHECK(!memcmp(p0, p1, bytes), "%s, layer decay %g, %d shards: parameters bit-identical (rel diff %g)", kind,
          layer_decay, ncuts - 1, check_rel_diff(p1, p0, n));
    CHECK(!memcmp(m0, m1, bytes) && !memcmp(v0, v1, bytes), "%s, layer decay %g, %d shards: slots bit-identical",
          kind, layer_decay, ncuts - 1);
    free(p0), free(p1), free(g), free(m0), free(v0), free(m1), free(v1);
}

int main(void) {
    ParamEntry e[NE];
    ParamTable t = {e, NE, 0};
    memset(e, 0, sizeof e);
    for (int i = 0; i < NE; i++) {
        snprintf(e[i].name, sizeof e[i].name, "%s", names[i]);
        e[i].ndim = 1;
        e[i].shape[0] = (int)sizes[i];
        e[i].offset = t.total;
        e[i].size = sizes[i];
        e[i].decay = decays[i];
        t.total += sizes[i];
    }
    Backend *be = backend_cpu_create(2);
    if (!be) return 1;
    // Runs: [0,37) no decay, [37,137) decay, [137,142) none, [142,206) decay, [206,209) none,
    // [209,409) decay, [409,420) none.
    const size_t one[] = {0, 420};
    const size_t in_plain[] = {0, 20, 139, 208, 415, 420};   // cuts inside every kind of run without decay
    const size_t in_decay[] = {0, 64, 176, 300, 420};         // cuts inside ranges with decay
    const size_t on_edges[] = {0, 37, 137, 137, 209, 420};    // cuts on run edges, one shard empty
    const char *kinds[] = {"sgd", "adam", "adamw", "rmsprop"};
    const double layer_decays[] = {0, 0.65};
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 2; l++) {
            compare(be, &t, kinds[k], layer_decays[l], one, 2);
            compare(be, &t, kinds[k], layer_decays[l], in_plain, 6);
            compare(be, &t, kinds[k], layer_decays[l], in_decay, 5);
            compare(be, &t, kinds[k], layer_decays[l], on_edges, 6);
        }
    be->destroy(be);
    return check_report("test_optim_shard");
}
