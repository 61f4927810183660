// Counter-based random numbers (Philox4x32-10): the value for (key, counter) is a pure
// function, so dropout masks, initialisation and shuffles do not depend on thread
// count or order, and a GPU kernel can reproduce the CPU's stream exactly.
#pragma once
#include <math.h>
#include <stdint.h>

// Under nvcc these helpers are compiled for the device too (the CUDA dropout kernel draws
// the same masks); for the C compiler VIT_HD is empty and nothing changes.
#ifdef __CUDACC__
#define VIT_HD __host__ __device__
#else
#define VIT_HD
#endif

typedef struct { uint32_t v[4]; } Philox4;

VIT_HD static inline uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

// key: 64-bit seed; counter: four 32-bit words chosen by the caller.
VIT_HD static inline Philox4 philox4x32(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = c3;
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = philox_mulhilo(0xD2511F53u, x0, &hi0);
        uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, x2, &hi1);
        x0 = hi1 ^ x1 ^ k0;
        x1 = lo1;
        x2 = hi0 ^ x3 ^ k1;
        x3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Philox4 out = {{x0, x1, x2, x3}};
    return out;
}

// Uniform in [0, 1) with 24 bits of resolution.
VIT_HD static inline float rng_u01(uint32_t bits) { return (float)(bits >> 8) * (1.0f / 16777216.0f); }

// Uniform in (0, 1] in double precision (for logs in Box-Muller).
VIT_HD static inline double rng_u01_open(uint32_t bits) { return ((double)bits + 1.0) / 4294967296.0; }

// Standard normal number `index` of stream `stream` under `seed` (Box-Muller on one draw).
VIT_HD static inline double rng_normal(uint64_t seed, uint32_t stream, uint64_t index) {
    Philox4 r = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), stream, 0x6e6f726du);
    double u1 = rng_u01_open(r.v[0]), u2 = rng_u01_open(r.v[1]);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// Uniform in [0, 1) number `index` of stream `stream` under `seed`.
VIT_HD static inline double rng_uniform(uint64_t seed, uint32_t stream, uint64_t index) {
    Philox4 r = philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), stream, 0x756e6966u);
    return (double)r.v[0] / 4294967296.0;
}

// Dropout keep decision for element `i` of dropout site `site` at optimizer step
// `step` (micro-step counter): four elements share one Philox call.
VIT_HD static inline int rng_keep(uint64_t seed, uint32_t step, uint32_t site, uint64_t i, float keep_prob) {
    Philox4 r = philox4x32(seed, (uint32_t)(i >> 2), (uint32_t)(i >> 34), site, step);
    return rng_u01(r.v[i & 3]) < keep_prob;
}
