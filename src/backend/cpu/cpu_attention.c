// Multi-head attention on the CPU, fused per (batch, head) pair: one OpenMP loop over the
// B*H pairs. Each thread reads its pair's q, k, v (and dout) straight from the (B, T, H*hd)
// layouts into small per-thread packed copies, goes through the pair's score rows in panels
// that stay in L2 (scores, softmax and the product with V one panel at a time) and writes out,
// dq, dk, dv straight into (B, T, H*hd). The earlier design (split heads, whole-tensor batched
// matmuls, merge heads) wrote the (B*H, T, T) scores to memory and read them back twice per
// pass. The saved state is still the softmax probabilities P (B*H*T*T floats).
//
// The products run on register-tile kernels chosen at run time from cpu_isa(): AVX-512
// (12 x 32 outputs in 24 zmm accumulators), AVX2/FMA (6 x 16 outputs in 12 ymm accumulators),
// else oneDNN's dnnl_sgemm (single-threaded inside the loop; also cpu_attention_use_sgemm).
// Each kernel set has its own packing of B, softmax and streaming copy; the sets may differ
// in the last bits. Each pair's results depend only on its inputs and the kernel set, so they
// are the same for any thread count.
//
// bf16 mode (backend_cpu_set_bf16) keeps cpu_gemm's numerics: every product's operands are
// rounded to bf16 (into per-thread scratch) and multiplied in fp32; the softmax, its backward
// and the saved probabilities stay fp32.
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "cpu.h"
#include "cpu_isa.h"
#include "cpu_math.h"
#include "util/status.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ATT_X86 1
// Compiled for AVX2/FMA and AVX-512 whatever the build's -march, chosen at run time (kernels_now).
#define ATT_AVX2 __attribute__((target("avx2,fma")))
#define ATT_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))
// The same feature set as cpu_isa()'s CPU_ISA_AVX512.
#define ATT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define ATT_AVX512_INLINE \
    static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#endif

// The kernel set of one call: read from cpu_isa() at every call (so that tests can switch it
// with cpu_isa_force) and passed down, never from the build's -march.
typedef enum { KERNELS_SGEMM, KERNELS_AVX2, KERNELS_AVX512 } Kernels;

static int force_sgemm;  // cpu_attention_use_sgemm

void cpu_attention_use_sgemm(int on) { force_sgemm = on; }

static Kernels kernels_now(void) {
#ifdef ATT_X86
    if (!force_sgemm) {
        CpuIsa isa = cpu_isa();
        if (isa >= CPU_ISA_AVX512) return KERNELS_AVX512;
        if (isa == CPU_ISA_AVX2) return KERNELS_AVX2;
    }
#endif
    return KERNELS_SGEMM;
}

// ---- products ---------------------------------------------------------------------------------
// C (M x N, ldc) = alpha * A B (+ C when accumulate), A(i, k) = A[i * rsA + k * csA] (so either
// layout of A), B packed by pack_b. All products of this file are of this form.
//
// B is packed into panels of NP columns (NP512 for the AVX-512 kernel), K x NP contiguous
// each, zero beyond N: the kernel streams a panel from consecutive cache lines. Read in place
// from the (B, T, H*hd) layout, the rows of a panel (3 KiB apart for ViT-B, 4 KiB for ViT-L)
// would fall into 4 or 1 of L1's 64 sets and evict each other. KC rows of a panel (16 KiB)
// stay in L1 while a product goes through the row tiles.
enum { NP = 16, KC = 256, NP512 = 32, KC512 = 128 };

static int up(int n, int m) { return (n + m - 1) / m * m; }

// A packed B: column panel j / np starts at p + (j / np) * ps, its row k at + k * np.
typedef struct {
    const float *p;
    ptrdiff_t ps;
    int np;
} Packed;

// Rows k0.. of a packed B (the B of a product over part of K).
static Packed rows_from(Packed b, int k0) { return (Packed){b.p + (ptrdiff_t)k0 * b.np, b.ps, b.np}; }

// The rows of one head are H*hd floats apart in memory: a page or most of one, where the
// hardware prefetchers do not follow. Loops that read them from memory ask for a row this
// many rows ahead, so that several are in flight at once.
enum { PREFETCH_ROWS = 8 };

static inline void prefetch_row(const float *row, int n) {
    for (int j = 0; j < n; j += 16) __builtin_prefetch(row + j, 0, 2);
}

// The next pair's input rows (up to 4 tensors of T rows, `cols` floats each, ld floats apart),
// requested a few rows after each tile of this pair's products, so that they arrive in L2
// while this pair computes instead of stalling its packing.
typedef struct {
    const float *base[4];
    ptrdiff_t ld;
    int tensors, T, cols, per_step, done;
} Ahead;

static inline void ahead_step(Ahead *a, int steps) {
    if (!a) return;
    int end = a->done + steps * a->per_step, total = a->tensors * a->T;
    for (end = end < total ? end : total; a->done < end; a->done++)
        prefetch_row(a->base[a->done / a->T] + (ptrdiff_t)(a->done % a->T) * a->ld, a->cols);
}

#ifdef ATT_X86
// Mask of the lanes i < n.
ATT_AVX2_INLINE __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// r[c] = column c of the 8 x 8 block whose rows are r[0..7].
ATT_AVX2_INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

// Panel p (K x NP) of B(k, n) = src[n * ld + k] for the w <= NP columns n of src's rows,
// in 8 x 8 blocks; columns w.. of the panel are zero. src has `rows` rows from here on (for
// reading ahead into the next block).
ATT_AVX2 static void pack_trans_panel_avx2(float *p, const float *src, ptrdiff_t ld, int K, int w, int rows) {
    for (int n0 = 0; n0 < NP; n0 += 8) {
        for (int i = n0 + 8; i < n0 + 16 && i < rows; i++) prefetch_row(src + (ptrdiff_t)i * ld, K);
        for (int k0 = 0; k0 < K; k0 += 8) {
            int kk = K - k0 < 8 ? K - k0 : 8;
            __m256i mask = lanes_below(kk);
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                const float *s = src + (ptrdiff_t)(n0 + i) * ld + k0;
                r[i] = n0 + i >= w ? _mm256_setzero_ps() : kk == 8 ? _mm256_loadu_ps(s) : _mm256_maskload_ps(s, mask);
            }
            transpose8(r);
            for (int c = 0; c < kk; c++) _mm256_storeu_ps(p + (ptrdiff_t)(k0 + c) * NP + n0, r[c]);
        }
    }
}

// Mask of the lanes i < n, 0 <= n <= 16.
static inline __mmask16 lanes16_below(int n) { return (__mmask16)((1u << n) - 1); }

// r[c] = column c of the 16 x 16 block whose rows are r[0..15]: pairs of rows interleaved,
// then groups of 4 within 128-bit lanes (as transpose8), then the 128-bit lanes gathered
// across the four groups of 4 rows.
ATT_AVX512_INLINE void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    // u[4 * g + c], 128-bit lane L: column 4 L + c of rows 4 g .. 4 g + 3.
    for (int c = 0; c < 4; c++) {
        __m512 even01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), odd01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 even23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
               odd23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(even01, even23, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(even01, even23, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(odd01, odd23, 0xdd);
    }
}

// pack_trans_panel_avx2 for the AVX-512 kernel's panels of NP512 columns, in 16 x 16 blocks.
ATT_AVX512 static void pack_trans_panel_avx512(float *p, const float *src, ptrdiff_t ld, int K, int w, int rows) {
    for (int n0 = 0; n0 < NP512; n0 += 16) {
        if (n0 >= w) {  // all zero
            for (int k = 0; k < K; k++) _mm512_storeu_ps(p + (ptrdiff_t)k * NP512 + n0, _mm512_setzero_ps());
            continue;
        }
        for (int i = n0 + 16; i < n0 + 32 && i < rows; i++) prefetch_row(src + (ptrdiff_t)i * ld, K);
        for (int k0 = 0; k0 < K; k0 += 16) {
            int kk = K - k0 < 16 ? K - k0 : 16;
            __mmask16 mask = lanes16_below(kk);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const float *s = src + (ptrdiff_t)(n0 + i) * ld + k0;
                r[i] = n0 + i >= w ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, s);
            }
            transpose16(r);
            for (int c = 0; c < kk; c++) _mm512_storeu_ps(p + (ptrdiff_t)(k0 + c) * NP512 + n0, r[c]);
        }
    }
}

// B(k, n) = src[k * ld + n] into panels of NP512 columns, zero beyond N.
ATT_AVX512 static void pack_rows_avx512(float *dst, const float *src, ptrdiff_t ld, int K, int N) {
    for (int k = 0; k < K; k++) {
        const float *s = src + (ptrdiff_t)k * ld;
        if (k + PREFETCH_ROWS < K) prefetch_row(s + PREFETCH_ROWS * ld, N);
        for (int j0 = 0; j0 < N; j0 += NP512) {
            float *p = dst + (ptrdiff_t)j0 * K + (ptrdiff_t)k * NP512;
            for (int h = 0; h < NP512; h += 16) {
                int n = N - j0 - h;
                __mmask16 mask = lanes16_below(n >= 16 ? 16 : n > 0 ? n : 0);
                _mm512_storeu_ps(p + h, _mm512_maskz_loadu_ps(mask, s + j0 + h));
            }
        }
    }
}
#endif

// Packs B (K x N) in the format of `kern`'s products: B(k, n) = src[k * ld + n], or
// src[n * ld + k] when `trans`; rounded to bf16 when `bf16`. Source rows are read whole, in
// order (they come from memory, not cache).
static Packed pack_b(Kernels kern, float *dst, const float *src, ptrdiff_t ld, int K, int N, int trans, int bf16) {
    int np = kern == KERNELS_AVX512 ? NP512 : NP, panels = (N + np - 1) / np;
    int use_avx2 = kern == KERNELS_AVX2;
    if (kern == KERNELS_AVX512) {
#ifdef ATT_X86
        if (trans) {
            for (int j0 = 0; j0 < N; j0 += NP512)
                pack_trans_panel_avx512(dst + (ptrdiff_t)j0 * K, src + (ptrdiff_t)j0 * ld, ld, K,
                                        N - j0 < NP512 ? N - j0 : NP512, N - j0);
        } else {
            pack_rows_avx512(dst, src, ld, K, N);
        }
#endif
    } else if (trans) {
        for (int j0 = 0; j0 < N; j0 += NP) {
            float *p = dst + (ptrdiff_t)j0 * K;
            const float *s = src + (ptrdiff_t)j0 * ld;
            int w = N - j0 < NP ? N - j0 : NP;
#ifdef ATT_X86
            if (use_avx2) {
                pack_trans_panel_avx2(p, s, ld, K, w, N - j0);
                continue;
            }
#endif
            for (int k = 0; k < K; k++)
                for (int jj = 0; jj < NP; jj++) p[k * NP + jj] = jj < w ? s[(ptrdiff_t)jj * ld + k] : 0.0f;
        }
    } else {
        for (int k = 0; k < K; k++) {
            const float *s = src + (ptrdiff_t)k * ld;
            if (k + PREFETCH_ROWS < K) prefetch_row(s + PREFETCH_ROWS * ld, N);
            for (int j0 = 0; j0 < N; j0 += NP) {
                float *p = dst + (ptrdiff_t)j0 * K + (ptrdiff_t)k * NP;
                if (N - j0 >= NP) {
                    for (int jj = 0; jj < NP; jj++) p[jj] = s[j0 + jj];
                } else {
                    for (int jj = 0; jj < NP; jj++) p[jj] = j0 + jj < N ? s[j0 + jj] : 0.0f;
                }
            }
        }
    }
    if (bf16) {
        size_t n = (size_t)panels * K * np;
#pragma omp simd
        for (size_t i = 0; i < n; i++) dst[i] = cpu_bf16_round(dst[i]);
    }
    return (Packed){dst, (ptrdiff_t)K * np, np};
}

#ifdef ATT_X86
// One mr x (8 * nv) tile of C over K; the last 8-float vector of each row is stored under
// `mask` when `masked` (the N edge; the packed B is zero there). mr, nv, masked are constants
// at every call, so each case compiles to straight-line code with the accumulators in registers.
ATT_AVX2_INLINE void tile(const int mr, const int nv, const int masked, int K, const float *A, ptrdiff_t rsA,
                          ptrdiff_t csA, const float *B, float *C, ptrdiff_t ldc, __m256i mask, __m256 alpha,
                          int accumulate) {
    __m256 c0[6], c1[6];
    for (int r = 0; r < 6; r++) c0[r] = c1[r] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++, A += csA, B += NP) {
        __m256 b0 = _mm256_loadu_ps(B), b1 = nv == 2 ? _mm256_loadu_ps(B + 8) : b0;
        for (int r = 0; r < mr; r++) {
            __m256 a = _mm256_broadcast_ss(A + r * rsA);
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            if (nv == 2) c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *c = C + r * ldc;
        __m256 x0 = _mm256_mul_ps(alpha, c0[r]), x1 = _mm256_mul_ps(alpha, c1[r]);
        if (nv == 2) {
            if (accumulate) x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));
            _mm256_storeu_ps(c, x0);
            c += 8, x0 = x1;
        }
        if (masked) {
            if (accumulate) x0 = _mm256_add_ps(x0, _mm256_maskload_ps(c, mask));
            _mm256_maskstore_ps(c, mask, x0);
        } else {
            if (accumulate) x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));
            _mm256_storeu_ps(c, x0);
        }
    }
}

#define TILE_ROWS(NV, MASKED)                                                                     \
    switch (mr) {                                                                                 \
    case 6: tile(6, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                 \
    case 5: tile(5, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                 \
    case 4: tile(4, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                 \
    case 3: tile(3, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                 \
    case 2: tile(2, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                 \
    default: tile(1, NV, MASKED, kc, a, rsA, csA, b, c, ldc, mask, va, acc); break;                \
    }

// Per panel of B, blocks of KC rows (16 KiB, kept in L1), and in each the row tiles of 6.
ATT_AVX2 static void mm_avx2(int M, int N, int K, const float *A, ptrdiff_t rsA, ptrdiff_t csA, Packed B, float *C,
                             ptrdiff_t ldc, float alpha, int accumulate, Ahead *ahead) {
    __m256 va = _mm256_set1_ps(alpha);
    for (int j = 0; j < N; j += NP) {
        int w = N - j < NP ? N - j : NP, nv = w > 8 ? 2 : 1, masked = w % 8 != 0;
        __m256i mask = lanes_below(w - 8 * (nv - 1));
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC, acc = accumulate || k0 > 0;
            const float *b = B.p + (j / NP) * B.ps + (ptrdiff_t)k0 * NP;
            for (int i = 0; i < M; i += 6) {
                int mr = M - i < 6 ? M - i : 6;
                const float *a = A + i * rsA + k0 * csA;
                float *c = C + (ptrdiff_t)i * ldc + j;
                if (nv == 2 && !masked) {
                    TILE_ROWS(2, 0)
                } else if (nv == 2) {
                    TILE_ROWS(2, 1)
                } else if (!masked) {
                    TILE_ROWS(1, 0)
                } else {
                    TILE_ROWS(1, 1)
                }
                ahead_step(ahead, 1);
            }
        }
    }
}
#undef TILE_ROWS

// The AVX-512 tile: up to MR512 rows x NP512 columns in 2 * MR512 zmm accumulators, of the
// 32 registers, with B's two vectors and the broadcast of A beside them.
enum { MR512 = 12 };

// One mr x (16 * nv) tile of C over K, as tile(); the last vector of each row is stored
// under `last` when `masked`. alpha * AB + C in one FMA when accumulating.
ATT_AVX512_INLINE void tile512(const int mr, const int nv, const int masked, int K, const float *A, ptrdiff_t rsA,
                               ptrdiff_t csA, const float *B, float *C, ptrdiff_t ldc, __mmask16 last, __m512 alpha,
                               int accumulate) {
    __m512 c0[MR512], c1[MR512];
    for (int r = 0; r < MR512; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++, A += csA, B += NP512) {
        __m512 b0 = _mm512_loadu_ps(B), b1 = nv == 2 ? _mm512_loadu_ps(B + 16) : b0;
        for (int r = 0; r < mr; r++) {
            __m512 a = _mm512_set1_ps(A[r * rsA]);
            c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
            if (nv == 2) c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *c = C + r * ldc;
        __m512 x0 = c0[r];
        if (nv == 2) {
            _mm512_storeu_ps(c, accumulate ? _mm512_fmadd_ps(alpha, x0, _mm512_loadu_ps(c)) : _mm512_mul_ps(alpha, x0));
            c += 16, x0 = c1[r];
        }
        if (masked) {
            x0 = accumulate ? _mm512_fmadd_ps(alpha, x0, _mm512_maskz_loadu_ps(last, c)) : _mm512_mul_ps(alpha, x0);
            _mm512_mask_storeu_ps(c, last, x0);
        } else {
            _mm512_storeu_ps(c, accumulate ? _mm512_fmadd_ps(alpha, x0, _mm512_loadu_ps(c)) : _mm512_mul_ps(alpha, x0));
        }
    }
}

#define TILE512(MR, NV, MASKED) \
    case MR: tile512(MR, NV, MASKED, kc, a, rsA, csA, b, c, ldc, last, va, acc); break;
#define TILE512_ROWS(NV, MASKED)                                                                           \
    switch (mr) {                                                                                          \
        TILE512(12, NV, MASKED) TILE512(11, NV, MASKED) TILE512(10, NV, MASKED) TILE512(9, NV, MASKED)     \
        TILE512(8, NV, MASKED) TILE512(7, NV, MASKED) TILE512(6, NV, MASKED) TILE512(5, NV, MASKED)        \
        TILE512(4, NV, MASKED) TILE512(3, NV, MASKED) TILE512(2, NV, MASKED) default:                      \
        tile512(1, NV, MASKED, kc, a, rsA, csA, b, c, ldc, last, va, acc);                                 \
        break;                                                                                             \
    }

// mm_avx2's loops for the AVX-512 tile: per panel of B, blocks of KC512 rows, row tiles of MR512.
ATT_AVX512 static void mm_avx512(int M, int N, int K, const float *A, ptrdiff_t rsA, ptrdiff_t csA, Packed B,
                                 float *C, ptrdiff_t ldc, float alpha, int accumulate, Ahead *ahead) {
    __m512 va = _mm512_set1_ps(alpha);
    for (int j = 0; j < N; j += NP512) {
        int w = N - j < NP512 ? N - j : NP512, nv = w > 16 ? 2 : 1, masked = w % 16 != 0;
        __mmask16 last = lanes16_below(w - 16 * (nv - 1));
        for (int k0 = 0; k0 < K; k0 += KC512) {
            int kc = K - k0 < KC512 ? K - k0 : KC512, acc = accumulate || k0 > 0;
            const float *b = B.p + (j / NP512) * B.ps + (ptrdiff_t)k0 * NP512;
            for (int i = 0; i < M; i += MR512) {
                int mr = M - i < MR512 ? M - i : MR512;
                const float *a = A + i * rsA + k0 * csA;
                float *c = C + (ptrdiff_t)i * ldc + j;
                if (nv == 2 && !masked) {
                    TILE512_ROWS(2, 0)
                } else if (nv == 2) {
                    TILE512_ROWS(2, 1)
                } else if (!masked) {
                    TILE512_ROWS(1, 0)
                } else {
                    TILE512_ROWS(1, 1)
                }
                ahead_step(ahead, 2 * nv);  // as many steps as the 6 x 16 tiles it covers
            }
        }
    }
}
#undef TILE512_ROWS
#undef TILE512
#endif

// One dnnl_sgemm per panel; dnnl_sgemm runs single-threaded inside an OpenMP parallel region.
static void mm_sgemm(int M, int N, int K, const float *A, ptrdiff_t rsA, ptrdiff_t csA, Packed B, float *C,
                     ptrdiff_t ldc, float alpha, int accumulate, Ahead *ahead) {
    int ta = rsA == 1 && csA != 1;
    for (int j = 0; j < N; j += NP) {
        dnnl_sgemm(ta ? 'T' : 'N', 'N', M, N - j < NP ? N - j : NP, K, alpha, A, ta ? csA : rsA, B.p + (j / NP) * B.ps,
                   NP, accumulate ? 1.0f : 0.0f, C + j, ldc);
        ahead_step(ahead, (M + 5) / 6 * ((K + KC - 1) / KC));  // as many steps as mm_avx2's tiles
    }
}

// B packed by pack_b for the same `kern`.
static void mm(Kernels kern, int M, int N, int K, const float *A, ptrdiff_t rsA, ptrdiff_t csA, Packed B, float *C,
               ptrdiff_t ldc, float alpha, int accumulate, Ahead *ahead) {
#ifdef ATT_X86
    if (kern == KERNELS_AVX512) {
        mm_avx512(M, N, K, A, rsA, csA, B, C, ldc, alpha, accumulate, ahead);
        return;
    }
    if (kern == KERNELS_AVX2) {
        mm_avx2(M, N, K, A, rsA, csA, B, C, ldc, alpha, accumulate, ahead);
        return;
    }
#endif
    mm_sgemm(M, N, K, A, rsA, csA, B, C, ldc, alpha, accumulate, ahead);
}

// ---- per-pair helpers -------------------------------------------------------------------------

static void softmax_rows_c(float *s, int rows, int T) {
    for (int i = 0; i < rows; i++, s += T) {
        float mx = s[0], sum = 0;
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < T; j++) mx = s[j] > mx ? s[j] : mx;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < T; j++) {
            s[j] = cpu_expf(s[j] - mx);
            sum += s[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < T; j++) s[j] *= inv;
    }
}

#ifdef ATT_X86
// cpu_expf's reduction and polynomial on 8 lanes, with FMAs and the polynomial in Estrin's
// form: the compiler's vectorisation of cpu_expf (clamps as blends, a chain of 12 dependent
// operations) ran at half this speed, bound by latency. Within 2 ulp of cpu_expf over
// [-90, 89] (3 ulp of exp). NaN stays NaN.
ATT_AVX2_INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));  // NaN: x
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
    __m256 a = _mm256_add_ps(r, _mm256_set1_ps(1.0f));                                          // 1 + r
    __m256 b = _mm256_fmadd_ps(r, _mm256_set1_ps(0.166666672f), _mm256_set1_ps(0.5f));         // c2 + c3 r
    __m256 c = _mm256_fmadd_ps(r, _mm256_set1_ps(0.00833336264f), _mm256_set1_ps(0.0416666381f));  // c4 + c5 r
    c = _mm256_fmadd_ps(r2, _mm256_set1_ps(0.00138925656f), c);                                 // + c6 r^2
    __m256 p = _mm256_fmadd_ps(r4, c, _mm256_fmadd_ps(r2, b, a));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

ATT_AVX2_INLINE float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

ATT_AVX2_INLINE float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

// Row softmax; the last T % 8 columns go through masked loads and stores.
ATT_AVX2 static void softmax_rows_avx2(float *s, int rows, int T) {
    int tv = T / 8 * 8;
    __m256i tail = lanes_below(T - tv);
    __m256 ninf = _mm256_set1_ps(-INFINITY), tailf = _mm256_castsi256_ps(tail);
    for (int i = 0; i < rows; i++, s += T) {
        __m256 vmax = ninf, vsum = _mm256_setzero_ps();
        for (int j = 0; j < tv; j += 8) vmax = _mm256_max_ps(_mm256_loadu_ps(s + j), vmax);
        if (tv < T)
            vmax = _mm256_max_ps(_mm256_blendv_ps(ninf, _mm256_maskload_ps(s + tv, tail), tailf), vmax);
        __m256 mx = _mm256_set1_ps(hmax8(vmax));
        for (int j = 0; j < tv; j += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mx));
            _mm256_storeu_ps(s + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        if (tv < T) {
            __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(s + tv, tail), mx)), tailf);
            _mm256_maskstore_ps(s + tv, tail, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        __m256 inv = _mm256_set1_ps(1.0f / hsum8(vsum));
        for (int j = 0; j < tv; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
        if (tv < T) _mm256_maskstore_ps(s + tv, tail, _mm256_mul_ps(_mm256_maskload_ps(s + tv, tail), inv));
    }
}

// exp8 on 16 lanes; 2^n applied with vscalefps (exact, as exp8's product with the exponent).
ATT_AVX512_INLINE __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));  // NaN: x
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 r2 = _mm512_mul_ps(r, r), r4 = _mm512_mul_ps(r2, r2);
    __m512 a = _mm512_add_ps(r, _mm512_set1_ps(1.0f));
    __m512 b = _mm512_fmadd_ps(r, _mm512_set1_ps(0.166666672f), _mm512_set1_ps(0.5f));
    __m512 c = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00833336264f), _mm512_set1_ps(0.0416666381f));
    c = _mm512_fmadd_ps(r2, _mm512_set1_ps(0.00138925656f), c);
    __m512 p = _mm512_fmadd_ps(r4, c, _mm512_fmadd_ps(r2, b, a));
    return _mm512_scalef_ps(p, n);
}

// Row softmax; the last T % 16 columns through masked loads and stores.
ATT_AVX512 static void softmax_rows_avx512(float *s, int rows, int T) {
    int tv = T / 16 * 16;
    __mmask16 tail = lanes16_below(T - tv);
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < rows; i++, s += T) {
        __m512 vmax = _mm512_mask_loadu_ps(ninf, tail, s + tv), vsum = _mm512_setzero_ps();
        for (int j = 0; j < tv; j += 16) vmax = _mm512_max_ps(_mm512_loadu_ps(s + j), vmax);
        __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        for (int j = 0; j < tv; j += 16) {
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), mx));
            _mm512_storeu_ps(s + j, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        __m512 e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + tv), mx)));
        _mm512_mask_storeu_ps(s + tv, tail, e);
        vsum = _mm512_add_ps(vsum, e);
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
        for (int j = 0; j < tv; j += 16) _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
        _mm512_mask_storeu_ps(s + tv, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, s + tv), inv));
    }
}

// cpu_bf16_round on 16 lanes.
ATT_AVX512_INLINE __m512 bf16_round16(__m512 x) {
    __m512i u = _mm512_castps_si512(x), hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i nearest = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), hi);
    __m512i nan = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x400000)), hi);
    __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                               _mm512_set1_epi32(0x7f800000));
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(nearest, is_nan, nan));
}

// softmax_back_rows_c on 16 lanes, the row sum in one FMA chain per row.
ATT_AVX512 static void softmax_back_rows_avx512(float *ds, float *pr, const float *p, int rows, int T, int bf16) {
    int tv = T / 16 * 16;
    __mmask16 tail = lanes16_below(T - tv);
    for (int i = 0; i < rows; i++, ds += T, p += T, pr += T) {
        __m512 vdot = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, p + tv), _mm512_maskz_loadu_ps(tail, ds + tv));
        for (int j = 0; j < tv; j += 16) vdot = _mm512_fmadd_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(ds + j), vdot);
        __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(vdot));
        for (int j = 0; j < T; j += 16) {
            __mmask16 m = j < tv ? 0xffff : tail;
            __m512 pj = _mm512_maskz_loadu_ps(m, p + j);
            __m512 d = _mm512_mul_ps(pj, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, ds + j), dot));
            if (bf16) {
                d = bf16_round16(d);
                _mm512_mask_storeu_ps(pr + j, m, bf16_round16(pj));
            }
            _mm512_mask_storeu_ps(ds + j, m, d);
        }
    }
}
#endif

#ifdef ATT_X86
ATT_AVX2 static void stream_avx2(float *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
}

ATT_AVX512 static void stream_avx512(float *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
}
#endif

// dst = src (n floats) for data not read again soon: non-temporal stores where available,
// which skip reading the destination lines into the cache first. stream_fence() makes them
// visible to other threads.
static void stream(Kernels kern, float *dst, const float *src, size_t n) {
#ifdef ATT_X86
    if (kern == KERNELS_AVX512) {
        stream_avx512(dst, src, n);
        return;
    }
    if (kern == KERNELS_AVX2) {
        stream_avx2(dst, src, n);
        return;
    }
#endif
    memcpy(dst, src, n * sizeof(float));
}

static void stream_fence(void) {
#ifdef ATT_X86
    _mm_sfence();
#endif
}

static void softmax_rows(Kernels kern, float *s, int rows, int T) {
#ifdef ATT_X86
    if (kern == KERNELS_AVX512) {
        softmax_rows_avx512(s, rows, T);
        return;
    }
    if (kern == KERNELS_AVX2) {
        softmax_rows_avx2(s, rows, T);
        return;
    }
#endif
    softmax_rows_c(s, rows, T);
}

// The softmax backward over a panel: dS = P * (dP - rowsum(P * dP)) in place of dP (rows of
// T, P's rows T apart); in bf16 mode dS rounded and P's rounded copy into pr.
static void softmax_back_rows_c(float *ds, float *pr, const float *p, int rows, int T, int bf16) {
    for (int i = 0; i < rows; i++) {
        const float *pi = p + (ptrdiff_t)i * T;
        float *d = ds + (ptrdiff_t)i * T, dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < T; j++) dot += pi[j] * d[j];
        if (bf16) {
            float *pri = pr + (ptrdiff_t)i * T;
#pragma omp simd
            for (int j = 0; j < T; j++) {
                d[j] = cpu_bf16_round(pi[j] * (d[j] - dot));
                pri[j] = cpu_bf16_round(pi[j]);
            }
        } else {
#pragma omp simd
            for (int j = 0; j < T; j++) d[j] = pi[j] * (d[j] - dot);
        }
    }
}

static void softmax_back_rows(Kernels kern, float *ds, float *pr, const float *p, int rows, int T, int bf16) {
#ifdef ATT_X86
    if (kern == KERNELS_AVX512) {
        softmax_back_rows_avx512(ds, pr, p, rows, T, bf16);
        return;
    }
#endif
    softmax_back_rows_c(ds, pr, p, rows, T, bf16);
}

// ---- scratch ----------------------------------------------------------------------------------
// Both passes go through a pair's score rows in panels, so that a panel of P and of dS (and
// its rounded copy in bf16 mode) stay in L2 together (at T = 577 the whole 577 x 577 matrix
// is 1.3 MiB, beyond L2): about PANEL_FLOATS floats per panel, a multiple of the kernel's
// tile height in rows (6 for AVX2 and dnnl_sgemm, whose steps of Ahead count 6-row tiles).
enum { PANEL_FLOATS = 32768 };

static int panel_rows(int T, int tile_rows) {
    if (T < 1) return 1;
    int panels = (int)(((size_t)T * T + PANEL_FLOATS - 1) / PANEL_FLOATS);
    int r = up((T + panels - 1) / panels, tile_rows);
    return r < T ? r : T;
}

static int panel_rows_of(Kernels kern, int T) {
#ifdef ATT_X86
    if (kern == KERNELS_AVX512) return panel_rows(T, MR512);
#endif
    return panel_rows(T, 6);
}

// Per thread, each part a multiple of 16 floats (64 bytes):
//   b[0..3]  packed B operands: K^T, V (forward); V^T, dO, K, Q (backward)
//   sq       panel x T: S, then P (forward); dP, then dS (backward)
//   pr       panel x T: bf16-rounded P (backward)
//   ar       T x hd: Q (forward) or dO (backward), the A of the first product, contiguous and
//            bf16-rounded in bf16 mode
//   gk, gv   T x hd: dK and dV while they accumulate over the panels (in place in dk and dv,
//            rows H*hd floats apart, a tile's rows would share a handful of cache sets)
// Sized for every kernel set (the widest panels, the tallest row panels), so that the caller's
// scratch fits whichever set a call picks.
typedef struct {
    float *b[4], *sq, *pr, *ar, *gk, *gv;
    Kernels kern;
} Work;

static size_t packed_floats(int T, int hd) {
    size_t a = (size_t)hd * up(T, NP512), b = (size_t)T * up(hd, NP512);
    return a > b ? a : b;
}

static size_t panel_floats(int T) {
    int r6 = panel_rows(T, 6), r12 = panel_rows(T, 12);
    return (size_t)up((r6 > r12 ? r6 : r12) * T, 16);
}

static size_t per_thread_floats(int T, int hd) {
    return 4 * packed_floats(T, hd) + 2 * panel_floats(T) + 3 * (size_t)up(T * hd, 16);
}

static Work work_of(float *scratch, int thread, int T, int hd, Kernels kern) {
    float *p = scratch + (size_t)thread * per_thread_floats(T, hd);
    Work w;
    w.kern = kern;
    for (int i = 0; i < 4; i++) w.b[i] = p, p += packed_floats(T, hd);
    w.sq = p, p += panel_floats(T);
    w.pr = p, p += panel_floats(T);
    w.ar = p, p += up(T * hd, 16);
    w.gk = p, p += up(T * hd, 16);
    w.gv = p;
    return w;
}

static size_t state_floats(Backend *be, int B, int T, int H, int hd) { return (size_t)B * H * T * T; }

static size_t scratch_floats(Backend *be, int B, int T, int H, int hd) {
    return (size_t)((CpuState *)be->impl)->threads * per_thread_floats(T, hd);
}

// dst (rows x cols, ld cols) = src (ld lds), rounded to bf16 when `bf16`.
static void copy_rows(float *dst, const float *src, int rows, int cols, ptrdiff_t lds, int bf16) {
    for (int i = 0; i < rows; i++) {
        const float *s = src + i * lds;
        float *d = dst + (ptrdiff_t)i * cols;
        if (i + PREFETCH_ROWS < rows) prefetch_row(s + PREFETCH_ROWS * lds, cols);
        if (bf16) {
#pragma omp simd
            for (int j = 0; j < cols; j++) d[j] = cpu_bf16_round(s[j]);
        } else {
            memcpy(d, s, cols * sizeof(float));
        }
    }
}

// ---- the loop over pairs ----------------------------------------------------------------------
// Chunks of consecutive pairs: a thread then knows its next pair (bh + 1, unless bh ends its
// chunk) and fetches its inputs ahead (Ahead); dynamic, so that a thread that loses its core to
// another process does not hold up the rest; 4 chunks a thread for the balance at the end.
static int chunk_of(int pairs, int threads) {
    int c = pairs / (4 * threads);
    return c > 1 ? c : 1;
}

static ptrdiff_t pair_offset(int bh, int T, int H, int hd) {
    return (ptrdiff_t)(bh / H) * T * H * hd + (ptrdiff_t)(bh % H) * hd;
}

// Rows per step so that `rows` rows are requested within the first half of the first
// product's tiles (ceil(T / 6) * ceil(T / 16) of them: Q K^T forward, dO V^T backward).
static int ahead_per_step(int rows, int T) {
    int tiles = (T + 5) / 6 * ((T + 15) / 16);
    if (tiles < 1) return 1;
    return (2 * rows + tiles - 1) / tiles;
}

// ---- forward ----------------------------------------------------------------------------------
// Per panel of rows: S = alpha Q K^T into scratch, softmax in place, a copy to the saved
// probabilities, O = P V straight into out.

static void forward_pair(const Work *w, float *out, float *P, const float *q, const float *k, const float *v, int T,
                         int hd, ptrdiff_t D, int bf16, Ahead *ahead) {
    float alpha = 1.0f / sqrtf((float)hd);
    Kernels kern = w->kern;
    int R = panel_rows_of(kern, T);
    copy_rows(w->ar, q, T, hd, D, bf16);
    Packed kt = pack_b(kern, w->b[0], k, D, hd, T, 1, bf16);  // K^T: hd x T
    Packed vp = pack_b(kern, w->b[1], v, D, T, hd, 0, bf16);  // V: T x hd
    float *s = w->sq;
    for (int i0 = 0; i0 < T; i0 += R) {
        int m = T - i0 < R ? T - i0 : R;
        mm(kern, m, T, hd, w->ar + i0 * hd, hd, 1, kt, s, T, alpha, 0, ahead);
        softmax_rows(kern, s, m, T);
        stream(kern, P + (ptrdiff_t)i0 * T, s, (size_t)m * T);
        if (bf16) copy_rows(s, s, m, T, T, 1);  // P rounded in place for P V
        mm(kern, m, hd, T, s, T, 1, vp, out + i0 * D, D, 1.0f, 0, ahead);
    }
    stream_fence();
}

static int attention_forward(Backend *be, float *out, float *probs, float *scratch, const float *q, const float *k,
                             const float *v, int B, int T, int H, int hd) {
    if (cpu_failed(be)) return VIT_ERR;
    CpuState *cs = be->impl;
    int pairs = B * H, bf16 = cs->bf16, chunk = chunk_of(pairs, cs->threads);
    Kernels kern = kernels_now();
    ptrdiff_t D = (ptrdiff_t)H * hd;
#pragma omp parallel for schedule(dynamic, chunk) num_threads(cs->threads)
    for (int bh = 0; bh < pairs; bh++) {
        ptrdiff_t off = pair_offset(bh, T, H, hd), next = pair_offset(bh + 1, T, H, hd);
        Work w = work_of(scratch, omp_get_thread_num(), T, hd, kern);
        int ahead = bh + 1 < pairs && (bh + 1) % chunk;
        Ahead a = {{ahead ? q + next : q, ahead ? k + next : k, ahead ? v + next : v}, D, 3, T, hd,
                   ahead_per_step(3 * T, T), 0};
        forward_pair(&w, out + off, probs + (size_t)bh * T * T, q + off, k + off, v + off, T, hd, D, bf16,
                     ahead ? &a : NULL);
    }
    return VIT_OK;
}

// ---- backward ---------------------------------------------------------------------------------
// Per panel of rows i: dP = dO_i V^T, dS = P_i * (dP - rowsum(P_i * dP)), dQ_i = alpha dS K
// (complete rows), and the panel's share of dK += alpha dS^T Q_i and dV += P_i^T dO_i.

static void backward_pair(const Work *w, float *dq, float *dk, float *dv, const float *dout, const float *P,
                          const float *q, const float *k, const float *v, int T, int hd, ptrdiff_t D, int bf16,
                          Ahead *ahead) {
    float alpha = 1.0f / sqrtf((float)hd);
    Kernels kern = w->kern;
    int R = panel_rows_of(kern, T);
    copy_rows(w->ar, dout, T, hd, D, bf16);
    Packed vt = pack_b(kern, w->b[0], v, D, hd, T, 1, bf16);     // V^T: hd x T
    Packed dop = pack_b(kern, w->b[1], dout, D, T, hd, 0, bf16);  // dO, K, Q: T x hd
    Packed kp = pack_b(kern, w->b[2], k, D, T, hd, 0, bf16);
    Packed qp = pack_b(kern, w->b[3], q, D, T, hd, 0, bf16);
    for (int i0 = 0; i0 < T; i0 += R) {
        int m = T - i0 < R ? T - i0 : R, acc = i0 > 0;
        const float *p = P + (ptrdiff_t)i0 * T;
        float *ds = w->sq;
        mm(kern, m, T, hd, w->ar + i0 * hd, hd, 1, vt, ds, T, 1.0f, 0, ahead);  // dP
        softmax_back_rows(kern, ds, w->pr, p, m, T, bf16);
        if (bf16) p = w->pr;
        mm(kern, m, hd, T, ds, T, 1, kp, dq + i0 * D, D, alpha, 0, ahead);              // dQ_i
        mm(kern, T, hd, m, ds, 1, T, rows_from(qp, i0), w->gk, hd, alpha, acc, ahead);  // dK
        mm(kern, T, hd, m, p, 1, T, rows_from(dop, i0), w->gv, hd, 1.0f, acc, ahead);   // dV
    }
    for (int t = 0; t < T; t++) {
        memcpy(dk + t * D, w->gk + (ptrdiff_t)t * hd, hd * sizeof(float));
        memcpy(dv + t * D, w->gv + (ptrdiff_t)t * hd, hd * sizeof(float));
    }
}

// out is not needed: the saved probabilities give D directly.
static int attention_backward(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                              const float *probs, float *scratch, const float *q, const float *k, const float *v, int B, int T, int H,
                              int hd) {
    if (cpu_failed(be)) return VIT_ERR;
    CpuState *cs = be->impl;
    int pairs = B * H, bf16 = cs->bf16, chunk = chunk_of(pairs, cs->threads);
    Kernels kern = kernels_now();
    ptrdiff_t D = (ptrdiff_t)H * hd;
#pragma omp parallel for schedule(dynamic, chunk) num_threads(cs->threads)
    for (int bh = 0; bh < pairs; bh++) {
        ptrdiff_t off = pair_offset(bh, T, H, hd), next = pair_offset(bh + 1, T, H, hd);
        Work w = work_of(scratch, omp_get_thread_num(), T, hd, kern);
        int ahead = bh + 1 < pairs && (bh + 1) % chunk;
        Ahead a = {{ahead ? dout + next : dout, ahead ? q + next : q, ahead ? k + next : k, ahead ? v + next : v}, D,
                   4, T, hd, ahead_per_step(4 * T, T), 0};
        backward_pair(&w, dq + off, dk + off, dv + off, dout + off, probs + (size_t)bh * T * T, q + off, k + off,
                      v + off, T, hd, D, bf16, ahead ? &a : NULL);
    }
    return VIT_OK;
}

void cpu_install_attention(Backend *be) {
    cpu_attention_use_sgemm(0);
    be->attention_state_floats = state_floats;
    be->attention_scratch_floats = scratch_floats;
    be->attention_forward = attention_forward;
    be->attention_backward = attention_backward;
}
