// Vectorisable exp and erf for the CPU backend's elementwise loops. libm's expf/erff are
// scalar calls and dominated the GELU, softmax and loss loops; these inline forms let the
// compiler emit SIMD code. Accuracy: exp within 2 ulp over the fp32 range; erf within
// 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), below fp32 resolution of 1 + erf.
#pragma once
#include <stdint.h>
#include <string.h>

static inline float cpu_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_rintf(x * 1.44269504f);
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;  // ln 2 split in two for exact reduction
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666381f + r * (0.00833336264f +
                                                                                         r * 0.00138925656f)))));
    union { uint32_t u; float f; } s = {(uint32_t)((int32_t)n + 127) << 23};
    return p * s.f;
}

static inline float cpu_erff(float x) {
    float a = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float y = 1.0f - poly * cpu_expf(-a * a);
    return x < 0 ? -y : y;
}

// x rounded to the nearest bf16 (ties to even), kept in fp32 storage; NaN stays NaN (quiet),
// infinities stay infinite. Branch-free so that loops over it vectorise (cpu_gemm, attention).
static inline float cpu_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    uint32_t nan = (u | 0x400000u) & 0xffff0000u;
    u = (u & 0x7fffffffu) > 0x7f800000u ? nan : nearest;
    memcpy(&x, &u, sizeof x);
    return x;
}
