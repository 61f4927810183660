// bf16 storage of saved activations (vit_create_ex(..., VIT_STORE_BF16), what -d bf16 trains
// with) on the CPU backend in bf16 mode:
//  - to_bf16/from_bf16 round to nearest even, keep NaN and infinities, are idempotent;
//  - the forward pass is bit-identical to fp32 storage (packing happens after use);
//  - gradients computed before the first GELU derivative (head, final LayerNorm, the last
//    block's second MLP layer) are bit-identical: the packed tensors there are product
//    operands, which bf16 products round to bf16 anyway, so the storage loses nothing;
//  - the remaining gradients differ only through GELU's derivative at a bf16-rounded input
//    (PyTorch's autocast stores that input in bf16 too), within bf16 resolution;
//  - the planned memory shrinks by exactly the eight tensors per block, halved.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/rng.h"
#include "util/status.h"

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void test_conversions(Backend *be) {
    // value, expected bf16 bits
    struct { uint32_t in; uint16_t out; } cases[] = {
        {0x3f800000u, 0x3f80},  // 1
        {0x3f808000u, 0x3f80},  // 1 + 2^-8: a tie, to the even neighbour below
        {0x3f818000u, 0x3f82},  // 1 + 3*2^-8: a tie, to the even neighbour above
        {0x3f808001u, 0x3f81},  // just above the tie
        {0x3f807fffu, 0x3f80},  // just below the tie
        {0xbf808001u, 0xbf81},  // negative, rounded in magnitude
        {0x80000000u, 0x8000},  // -0
        {0x00000001u, 0x0000},  // smallest denormal rounds to 0
        {0x7f800000u, 0x7f80},  // +inf
        {0xff800000u, 0xff80},  // -inf
        {0x7f7fffffu, 0x7f80},  // largest float rounds up to inf (nearest even)
        {0x7f800001u, 0x7fc0},  // signalling NaN stays a NaN (quiet), not inf
        {0xffc12345u, 0xffc1},  // quiet NaN keeps sign and top payload
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    float in[16];
    uint16_t out[16];
    for (int i = 0; i < n; i++) in[i] = bits_to_float(cases[i].in);
    be->to_bf16(be, out, in, (size_t)n);
    for (int i = 0; i < n; i++)
        CHECK(out[i] == cases[i].out, "to_bf16(0x%08x) = 0x%04x, expected 0x%04x", cases[i].in, out[i], cases[i].out);
    float back[16];
    be->from_bf16(be, back, out, (size_t)n);
    for (int i = 0; i < n; i++)
        CHECK(float_bits(back[i]) == (uint32_t)out[i] << 16, "from_bf16(0x%04x) widens exactly", out[i]);

    // Large random arrays (the threaded path): error within half a bf16 ulp, idempotent.
    size_t big = 300000;
    float *x = malloc(big * sizeof *x), *y = malloc(big * sizeof *y), *z = malloc(big * sizeof *z);
    uint16_t *h = malloc(big * sizeof *h), *h2 = malloc(big * sizeof *h2);
    for (size_t i = 0; i < big; i++) x[i] = (float)((rng_uniform(1, 2, i) - 0.5) * pow(2.0, (double)(i % 40) - 20));
    be->to_bf16(be, h, x, big);
    be->from_bf16(be, y, h, big);
    be->to_bf16(be, h2, y, big);
    be->from_bf16(be, z, h2, big);
    size_t bad = 0, moved = 0;
    for (size_t i = 0; i < big; i++) {
        bad += fabs((double)y[i] - x[i]) > fabs((double)x[i]) * (1.0 / 256) + 1e-38;
        moved += float_bits(z[i]) != float_bits(y[i]);
    }
    CHECK(bad == 0, "to_bf16: %zu of %zu values off by more than half a bf16 ulp", bad, big);
    CHECK(moved == 0, "bf16 rounding is idempotent (%zu values moved)", moved);
    free(x), free(y), free(z), free(h), free(h2);
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_model(Backend *be) {
    ViTConfig c = small_config("store_bf16");
    const int B = 4, A = 2;
    const float smoothing = 0.1f;
    const uint64_t seed = 7;
    ViT off, on;
    CHECK(vit_create_ex(&off, &c, be, B, 1, 0) == 0, "model builds: %s", vit_error());
    CHECK(vit_create_ex(&on, &c, be, B, 1, VIT_STORE_BF16) == 0, "bf16-storing model builds: %s", vit_error());
    CHECK(on.store_bf16 == 1 && off.store_bf16 == 0, "store_bf16 flag stored");
    vit_init_params(&off, 5);
    vit_init_params(&on, 5);
    randomize_head(&off, 5);
    randomize_head(&on, 5);
    size_t n = off.table.total;
    be->zero(be, off.grads, n * sizeof(float));
    be->zero(be, on.grads, n * sizeof(float));
    uint8_t images[4 * 16 * 16 * 3];
    int labels[4];
    backend_cpu_set_bf16(be, 1);
    for (int s = 0; s < A; s++) {
        synth_batch(images, labels, B, &c, (uint32_t)s);
        CHECK(vit_forward(&off, images, labels, B, 1, smoothing, seed, (uint32_t)s) == 0, "forward (fp32 storage)");
        CHECK(vit_forward(&on, images, labels, B, 1, smoothing, seed, (uint32_t)s) == 0, "forward (bf16 storage)");
        CHECK(!memcmp(off.host_logits, on.host_logits, (size_t)B * c.classes * sizeof(float)) &&
                  !memcmp(off.host_losses, on.host_losses, (size_t)B * sizeof(float)),
              "micro-step %d: logits and losses bit-identical", s);
        CHECK(vit_backward(&off, B, smoothing, 1.0f / (B * A), seed, (uint32_t)s) == 0, "backward (fp32 storage)");
        CHECK(vit_backward(&on, B, smoothing, 1.0f / (B * A), seed, (uint32_t)s) == 0, "backward (bf16 storage)");
    }
    backend_cpu_set_bf16(be, 0);
    const BlockOffsets *last = &off.off.blocks[c.layers - 1];
    size_t exact[][2] = {{off.off.head_kernel, (size_t)c.hidden * c.classes},
                         {off.off.head_bias, (size_t)c.classes},
                         {off.off.norm_scale, (size_t)c.hidden},
                         {off.off.norm_bias, (size_t)c.hidden},
                         {last->fc2_kernel, (size_t)c.mlp * c.hidden},
                         {last->fc2_bias, (size_t)c.hidden}};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        CHECK(!memcmp(off.grads + exact[i][0], on.grads + exact[i][0], exact[i][1] * sizeof(float)),
              "gradient #%zu before the first GELU derivative bit-identical", i);
    double worst = 0;
    int differ = 0;
    for (int i = 0; i < off.table.count; i++) {
        const ParamEntry *e = &off.table.entries[i];
        if (strstr(e->name, "key/bias")) continue;  // zero in exact arithmetic: pure noise
        double r = rel_diff(on.grads + e->offset, off.grads + e->offset, e->size);
        worst = fmax(worst, r);
        differ += r > 0;
        CHECK(isfinite(r) && r <= 2e-2, "%s: gradient relative difference %.3g > 2e-2", e->name, r);
    }
    // GELU's derivative at rounded inputs must show in the earlier blocks (else nothing was tested).
    CHECK(differ > 0, "bf16-stored MLP pre-activations changed no gradient");
    printf("store_bf16: forward bit-identical, head gradients bit-identical, worst other gradient %.2g (relative)\n",
           worst);
    vit_destroy(&off);
    vit_destroy(&on);
}

// Plans without allocating (vit_create never touches the memory it plans).
static void *token_alloc(Backend *be, size_t bytes) { return malloc(1); }
static void token_release(Backend *be, void *p) { free(p); }

static void test_memory(Backend *cpu) {
    Backend planner = *cpu;
    planner.alloc = token_alloc;
    planner.release = token_release;
    ViTConfig c;
    config_from_preset(&c, "ViT-B_16");
    c.image = 224;
    const int B = 8;
    ViT off, on, rec;
    int ok = vit_create_ex(&off, &c, &planner, B, 1, 0) == 0 && vit_create_ex(&on, &c, &planner, B, 1, VIT_STORE_BF16) == 0 &&
             vit_create_ex(&rec, &c, &planner, B, 1, VIT_STORE_BF16 | VIT_RECOMPUTE) == 0;
    CHECK(ok, "ViT-B/16 plans: %s", vit_error());
    if (!ok) return;
    // Each block but the first drops eight fp32 tensors; every block gains their bf16 copy.
    size_t N = (size_t)B * config_tokens(&c), per = 6 * N * c.hidden + 2 * N * c.mlp;
    size_t expect = off.activation_bytes - (size_t)(c.layers - 1) * per * 4 + (size_t)c.layers * per * 2;
    CHECK(on.activation_bytes == expect, "bf16 storage plans %zu bytes, expected %zu", on.activation_bytes, expect);
    CHECK(rec.recompute == 1 && rec.store_bf16 == 0, "recompute takes precedence over bf16 storage");
    printf("store_bf16: ViT-B/16 224 batch %d: activations %.0f MiB -> %.0f MiB (%.0f%% less)\n", B,
           off.activation_bytes / 1048576.0, on.activation_bytes / 1048576.0,
           100.0 * (1.0 - (double)on.activation_bytes / off.activation_bytes));
    vit_destroy(&off);
    vit_destroy(&on);
    vit_destroy(&rec);
}

int main(void) {
    Backend *be = backend_cpu_create(0);
    CHECK(be != NULL, "cpu backend");
    if (!be) return check_report("store_bf16");
    test_conversions(be);
    test_model(be);
    test_memory(be);
    be->destroy(be);
    return check_report("store_bf16");
}
