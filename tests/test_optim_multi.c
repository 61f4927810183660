// The fused multi-tensor optimizer update: optimizer_update_segments equals one
// optimizer_update per segment (weight decay 0 where a segment has none) bit for bit, for
// every optimizer over three steps with a clipping scale, with segments of odd sizes (one
// float, one more than a chunk, an empty one), slots laid out apart from the parameters and
// in another order, and every float outside the segments left untouched; for 1, 2 and 3
// threads (the split between threads must not show). Then optim_step_range through the
// segments equals the per-run fallback (a table without the op) bit for bit. All of it under
// each instruction set the CPU has (cpu_isa_force), each giving the generic loop's bits.
// Segments carry layer-wise learning-rate scales (--layer_decay): each must equal an
// optimizer_update at lr * scale, and optim_step_range with a layer decay must give every
// tensor its layer's scale (checked against scales written out here by hand).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "check.h"
#include "train/update.h"

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / 16777216.0) * 2.0f - 1.0f;
}

enum { NS = 9, STEPS = 3, GAP = 5 };
static const size_t seg_sizes[NS] = {1, 3, 1000, 65537, 0, 2, 4097, 17, 65536 * 2 + 7};
static const int seg_decay[NS] = {1, 0, 1, 0, 1, 0, 1, 1, 0};
static const float seg_scale[NS] = {1.0f, 0.75f, 0.5f, 1.0f, 0.3f, 1.0f, 0.421875f, 0.1f, 1.0f};

// Segments with GAP untouched floats before each in params; their slots in reverse order,
// GAP + 3 floats apart, starting 11 floats in. Returns the buffer sizes.
static void layout(OptimSegment *segs, size_t *np, size_t *ns) {
    size_t p = 0, s = 11;
    for (int i = 0; i < NS; i++) {
        p += GAP;
        segs[i] = (OptimSegment){p, 0, seg_sizes[i], seg_decay[i], seg_scale[i]};
        p += seg_sizes[i];
    }
    for (int i = NS - 1; i >= 0; i--) {
        segs[i].slot = s;
        s += seg_sizes[i] + GAP + 3;
    }
    *np = p + GAP;
    *ns = s;
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

// The floats of x outside [off, off + n) of every segment (offsets `param` or `slot`) equal x0's.
static int outside_untouched(const float *x, const float *x0, size_t len, const OptimSegment *segs, int slot) {
    char *in = calloc(len, 1);
    for (int i = 0; i < NS; i++) memset(in + (slot ? segs[i].slot : segs[i].param), 1, segs[i].n);
    int ok = 1;
    for (size_t k = 0; k < len && ok; k++) ok = in[k] || !memcmp(&x[k], &x0[k], sizeof(float));
    free(in);
    return ok;
}

// Runs STEPS updates both ways from the same state; returns the final params of the fused
// path (the caller compares them across thread counts).
static float *segments_vs_ranges(Backend *be, const char *kind, int threads) {
    OptimSegment segs[NS];
    size_t np, ns;
    layout(segs, &np, &ns);
    OptimConfig o;
    optim_config_default(&o, kind);
    int uses_m = optim_uses_m(o.kind), uses_v = optim_uses_v(o.kind);
    float *p0 = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
    float *m0 = malloc(ns * sizeof(float)), *v0 = malloc(ns * sizeof(float));
    uint64_t seed = 11;
    for (size_t i = 0; i < np; i++) p0[i] = frand(&seed);
    for (size_t i = 0; i < ns; i++) {
        m0[i] = 0.1f * frand(&seed);
        v0[i] = 0.01f * frand(&seed) * frand(&seed);
        v0[i] = v0[i] < 0 ? -v0[i] : v0[i];  // second moments are non-negative
    }
    float *pa = malloc(np * sizeof(float)), *pb = malloc(np * sizeof(float));
    float *ma = malloc(ns * sizeof(float)), *mb = malloc(ns * sizeof(float));
    float *va = malloc(ns * sizeof(float)), *vb = malloc(ns * sizeof(float));
    memcpy(pa, p0, np * sizeof(float)), memcpy(pb, p0, np * sizeof(float));
    memcpy(ma, m0, ns * sizeof(float)), memcpy(mb, m0, ns * sizeof(float));
    memcpy(va, v0, ns * sizeof(float)), memcpy(vb, v0, ns * sizeof(float));
    int ok = 1;
    for (int t = 1; t <= STEPS; t++) {
        for (size_t i = 0; i < np; i++) g[i] = frand(&seed);
        OptimStep s = {o.kind, 0.01f * t, o.momentum, o.beta1, o.beta2, o.rho, o.epsilon, 0.1f, t, 0.5f + 0.1f * t};
        be->optimizer_update_segments(be, pa, g, uses_m ? ma : NULL, uses_v ? va : NULL, segs, NS, &s);
        for (int i = 0; i < NS; i++) {
            OptimStep si = s;
            if (!segs[i].decay) si.weight_decay = 0.0f;
            si.lr = s.lr * segs[i].lr_scale;
            size_t q = segs[i].param, r = segs[i].slot;
            be->optimizer_update(be, pb + q, g + q, uses_m ? mb + r : NULL, uses_v ? vb + r : NULL, segs[i].n, &si);
        }
        ok &= same(pa, pb, np) && same(ma, mb, ns) && same(va, vb, ns);
    }
    CHECK(ok, "%s, %d threads: segments bit-identical to per-segment updates at every step (params rel diff %g)",
          kind, threads, check_rel_diff(pa, pb, np));
    CHECK(outside_untouched(pa, p0, np, segs, 0) && outside_untouched(ma, m0, ns, segs, 1) &&
              outside_untouched(va, v0, ns, segs, 1),
          "%s, %d threads: floats outside the segments untouched", kind, threads);
    CHECK((uses_m || same(ma, m0, ns)) && (uses_v || same(va, v0, ns)), "%s, %d threads: unused slot untouched", kind,
          threads);
    int moved = 1;  // every non-empty segment was updated (the comparison alone passes if neither path ran)
    for (int i = 0; i < NS; i++) {
        size_t q = segs[i].param;
        if (segs[i].n) moved &= !same(pa + q, p0 + q, segs[i].n);
    }
    CHECK(moved, "%s, %d threads: every segment's parameters changed", kind, threads);
    free(p0), free(g), free(m0), free(v0), free(pb), free(ma), free(mb), free(va), free(vb);
    return pa;
}

// optim_step_range with the op and with the per-run fallback (the same table, op removed),
// and, with a layer decay, against one optimizer_update per tensor at the rate scaled by hand.
static void step_range_paths(Backend *be, const char *kind, double layer_decay) {
    enum { NE = 8 };
    static const size_t sizes[NE] = {37, 100, 5, 64, 3, 70000, 11, 1};
    static const int decays[NE] = {0, 1, 1, 0, 0, 1, 0, 1};
    // Two blocks: layers 0 (stem) .. 3 (head); the final norm shares the last block's layer 2.
    static const char *names[NE] = {"cls", "embedding/kernel", "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel",
                                    "Transformer/encoderblock_0/LayerNorm_2/bias",
                                    "Transformer/encoderblock_1/LayerNorm_0/scale",
                                    "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel",
                                    "Transformer/encoder_norm/scale", "head/kernel"};
    static const int layer[NE] = {0, 0, 1, 1, 2, 2, 2, 3};
    ParamEntry e[NE];
    ParamTable tab = {e, NE, 0};
    memset(e, 0, sizeof e);
    for (int i = 0; i < NE; i++) {
        snprintf(e[i].name, sizeof e[i].name, "%s", names[i]);
        e[i].offset = tab.total;
        e[i].size = sizes[i];
        e[i].decay = decays[i];
        tab.total += sizes[i];
    }
    Backend plain = *be;  // same implementation, without the fused op
    plain.optimizer_update_segments = NULL;
    OptimConfig o;
    optim_config_default(&o, kind);
    o.weight_decay = 0.05f;
    o.clip_norm = 0.5f;  // below the norm: the clipping scale is used
    o.layer_decay = layer_decay;
    size_t n = tab.total, lo = 40, hi = n - 6;  // cuts inside runs
    int uses_m = optim_uses_m(o.kind), uses_v = optim_uses_v(o.kind), ok = 1;
    float *p[3], *m[3], *v[3], *g = malloc(n * sizeof(float));
    uint64_t seed = 5;
    for (int k = 0; k < 3; k++) {
        p[k] = malloc(n * sizeof(float));
        m[k] = calloc(hi - lo, sizeof(float));
        v[k] = calloc(hi - lo, sizeof(float));
    }
    for (size_t i = 0; i < n; i++) p[0][i] = p[1][i] = p[2][i] = frand(&seed);
    for (int t = 1; t <= STEPS; t++) {
        for (size_t i = 0; i < n; i++) g[i] = frand(&seed);
        double norm[2];
        Backend *bes[2] = {be, &plain};
        for (int k = 0; k < 2; k++)
            ok &= optim_step_range(bes[k], &tab, p[k], g, uses_m ? m[k] : NULL, uses_v ? v[k] : NULL, lo, hi, &o,
                                   0.01f, t, &norm[k]) == 0;
        ok &= norm[0] == norm[1];
        // By hand: each tensor's part in [lo, hi), at 0.01 * decay^(3 - layer), clipped as above.
        OptimStep s = {o.kind, 0.01f, o.momentum, o.beta1, o.beta2, o.rho, o.epsilon, 0.0f, t,
                       (float)(o.clip_norm / norm[0])};
        for (int i = 0; i < NE; i++) {
            size_t a = e[i].offset > lo ? e[i].offset : lo, b = e[i].offset + e[i].size < hi ? e[i].offset + e[i].size : hi;
            if (a >= b) continue;
            OptimStep si = s;
            si.weight_decay = e[i].decay ? o.weight_decay : 0.0f;
            si.lr = 0.01f * (layer_decay > 0 ? (float)pow(layer_decay, 3 - layer[i]) : 1.0f);
            be->optimizer_update(be, p[2] + a, g + a, uses_m ? m[2] + (a - lo) : NULL, uses_v ? v[2] + (a - lo) : NULL,
                                 b - a, &si);
        }
    }
    CHECK(ok, "%s, layer decay %g: optim_step_range ran both ways", kind, layer_decay);
    CHECK(same(p[0], p[1], n) && same(m[0], m[1], hi - lo) && same(v[0], v[1], hi - lo),
          "%s, layer decay %g: optim_step_range through segments bit-identical to the per-run fallback", kind,
          layer_decay);
    CHECK(same(p[0], p[2], n) && same(m[0], m[2], hi - lo) && same(v[0], v[2], hi - lo),
          "%s, layer decay %g: optim_step_range bit-identical to per-tensor updates at the layers' scaled rates "
          "(rel diff %g)", kind, layer_decay, check_rel_diff(p[0], p[2], n));
    for (int k = 0; k < 3; k++) free(p[k]), free(m[k]), free(v[k]);
    free(g);
}

int main(void) {
    const char *kinds[] = {"sgd", "adam", "adamw", "rmsprop"};
    float *first[4] = {0};  // generic, 1 thread
    size_t np, ns;
    OptimSegment segs[NS];
    layout(segs, &np, &ns);
    for (int isa = CPU_ISA_GENERIC; isa <= CPU_ISA_AVX512; isa++) {
        if ((int)cpu_isa_force(isa) != isa) continue;
        const char *name = cpu_isa_name((CpuIsa)isa);
        for (int threads = 1; threads <= 3; threads++) {
            Backend *be = backend_cpu_create(threads);
            if (!be) return 1;
            for (int k = 0; k < 4; k++) {
                float *pa = segments_vs_ranges(be, kinds[k], threads);
                if (!first[k]) {
                    first[k] = pa;
                } else {
                    CHECK(same(pa, first[k], np), "%s under %s: %d threads give generic 1 thread's parameters",
                          kinds[k], name, threads);
                    free(pa);
                }
                if (threads == 2) {
                    step_range_paths(be, kinds[k], 0.0);
                    step_range_paths(be, kinds[k], 0.75);
                    step_range_paths(be, kinds[k], 0.65);  // not a binary fraction: scales rounded to fp32
                }
            }
            be->destroy(be);
        }
    }
    cpu_isa_force(CPU_ISA_AVX512 + 1);
    for (int k = 0; k < 4; k++) free(first[k]);
    return check_report("test_optim_multi");
}
