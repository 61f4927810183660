// Register-resident tensor-core attention for the bf16 backend, head sizes 32 and 64 (ViT's):
// the same op, state (row log-sum-exp) and scratch (D_i = dO_i . O_i) as the WMMA kernels of
// cuda_attention_tc.cu, written with mma.sync.m16n8k16 (bf16 in, fp32 accumulate), whose
// fragment layout PTX documents. That is what the WMMA version cannot do: scores,
// probabilities and the running output stay in registers, the softmax works on them in
// place (a quad of lanes shares a row), and a score tile turns into the next product's A
// operand without a trip through shared memory.
//
// Selected with VIT_CUDA_ATTENTION=mma (read when the backend is created) until a GPU run of
// test_cuda has checked it against the CPU and bench/gpu_check.sh has timed it.
//
// Fragments (lane = 4 g + t): A (16x16) a0 = row g, cols 2t..2t+1; a1 = row g+8; a2, a3 the
// same 8 columns on; B (16x8, "col") b0 = rows 2t..2t+1 of col g, b1 = rows 2t+8..; C (16x8)
// c0, c1 = row g, cols 2t, 2t+1; c2, c3 = row g+8. A B operand whose element (k, n) sits at
// tile[n * ld + k] is read with one 32-bit load per register: K and Q are used as they are
// (row = key or query, columns = head dims), and V, K, Q, dO transposed copies where the
// product runs over keys or queries.
//
// Tiles are fp32 in device memory and rounded to bf16 on their way into shared memory, as in
// the WMMA kernels. Work split as there: 4 warps, 16 rows each, tiles of 64 on the other side.
#include <math.h>
#include <stdint.h>
#include <cuda_bf16.h>
#include "cuda_common.h"
#include "cuda_reduce.h"

typedef __nv_bfloat16 bf16;

enum { MM_WARPS = 4, MM_THREADS = MM_WARPS * 32, MM_ROWS = MM_WARPS * 16, MM_COLS = 64 };

// Row strides (bf16 elements): +8 puts the 8 rows a fragment load touches in distinct banks.
template <int HD> struct MmGeo {
    static const int LD = HD + 8;        // row-major tiles, 64 rows of HD
    static const int LDT = MM_COLS + 8;  // transposed tiles, HD rows of 64
    static const int TILE = MM_ROWS * LD, TILE_T = HD * LDT;
};

static __device__ __forceinline__ uint32_t mm_pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
    return *reinterpret_cast<uint32_t *>(&h);
}

// c += a b for one 16x8x16 step.
static __device__ __forceinline__ void mm_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of rows row0.., columns k0.. of a row-major tile.
template <int LDA>
static __device__ __forceinline__ void mm_load_a(uint32_t a[4], const bf16 *tile, int row0, int k0, int g, int t) {
    const bf16 *p0 = tile + (row0 + g) * LDA + k0 + 2 * t, *p1 = p0 + 8 * LDA;
    a[0] = *reinterpret_cast<const uint32_t *>(p0);
    a[1] = *reinterpret_cast<const uint32_t *>(p1);
    a[2] = *reinterpret_cast<const uint32_t *>(p0 + 8);
    a[3] = *reinterpret_cast<const uint32_t *>(p1 + 8);
}

// B fragment (k0.., n0..) of a tile holding element (k, n) at tile[n * LDB + k].
template <int LDB>
static __device__ __forceinline__ void mm_load_b(uint32_t &b0, uint32_t &b1, const bf16 *tile, int n0, int k0, int g,
                                                 int t) {
    const bf16 *p = tile + (n0 + g) * LDB + k0 + 2 * t;
    b0 = *reinterpret_cast<const uint32_t *>(p);
    b1 = *reinterpret_cast<const uint32_t *>(p + 8);
}

// A fragments of 16 rows (row0..) of a row-major HD-wide tile, every k-step of HD.
template <int HD>
static __device__ __forceinline__ void mm_load_rows_a(uint32_t a[HD / 16][4], const bf16 *tile, int row0, int g,
                                                      int t) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) mm_load_a<MmGeo<HD>::LD>(a[kk], tile, row0, kk * 16, g, t);
}

// The A fragment of k-step j (16 columns) made from C fragments nt = 2j, 2j+1 of a 16x64 tile.
static __device__ __forceinline__ void mm_c_to_a(uint32_t a[4], const float c[8][4], int j) {
    a[0] = mm_pack(c[2 * j][0], c[2 * j][1]);
    a[1] = mm_pack(c[2 * j][2], c[2 * j][3]);
    a[2] = mm_pack(c[2 * j + 1][0], c[2 * j + 1][1]);
    a[3] = mm_pack(c[2 * j + 1][2], c[2 * j + 1][3]);
}

// Rows r0.. of a (T, ld) fp32 matrix (HD columns) into a row-major bf16 tile, zeros past T.
template <int HD>
static __device__ void mm_load(bf16 *dst, const float *src, size_t ld, int r0, int T) {
    const int V = HD / 4;
    for (int i = threadIdx.x; i < MM_ROWS * V; i += MM_THREADS) {
        int r = i / V, c = (i % V) * 4, row = r0 + r;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (row < T) x = *reinterpret_cast<const float4 *>(src + (size_t)row * ld + c);
        bf16 *d = dst + r * MmGeo<HD>::LD + c;
        d[0] = __float2bfloat16_rn(x.x), d[1] = __float2bfloat16_rn(x.y);
        d[2] = __float2bfloat16_rn(x.z), d[3] = __float2bfloat16_rn(x.w);
    }
}

// The same rows transposed: dst[c * LDT + r].
template <int HD>
static __device__ void mm_load_t(bf16 *dst, const float *src, size_t ld, int r0, int T) {
    const int V = HD / 4, LDT = MmGeo<HD>::LDT;
    for (int i = threadIdx.x; i < MM_ROWS * V; i += MM_THREADS) {
        int r = i / V, c = (i % V) * 4, row = r0 + r;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (row < T) x = *reinterpret_cast<const float4 *>(src + (size_t)row * ld + c);
        dst[(c + 0) * LDT + r] = __float2bfloat16_rn(x.x);
        dst[(c + 1) * LDT + r] = __float2bfloat16_rn(x.y);
        dst[(c + 2) * LDT + r] = __float2bfloat16_rn(x.z);
        dst[(c + 3) * LDT + r] = __float2bfloat16_rn(x.w);
    }
}

// Writes a warp's 16 x HD accumulator (C fragments acc[HD/8]) times mul to rows w0.. (< T).
template <int HD>
static __device__ __forceinline__ void mm_store_rows(float *dst, size_t ld, const float acc[HD / 8][4], int w0, int T, float mul0,
                                     float mul1, int g, int t) {
    const int r0 = w0 + g, r1 = r0 + 8;
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) {
        const int col = dn * 8 + 2 * t;
        if (r0 < T)
            *reinterpret_cast<float2 *>(dst + (size_t)r0 * ld + col) = make_float2(acc[dn][0] * mul0, acc[dn][1] * mul0);
        if (r1 < T)
            *reinterpret_cast<float2 *>(dst + (size_t)r1 * ld + col) = make_float2(acc[dn][2] * mul1, acc[dn][3] * mul1);
    }
}

// Two 16x64 score tiles of a warp: s = A1 B1 and dp = A2 B2 over HD, the A operands in
// registers (the warp's 16 rows) and the B tiles row-major in shared memory (64 rows of HD).
template <int HD>
static __device__ __forceinline__ void mm_two_scores(float s[8][4], float dp[8][4], const uint32_t a1[HD / 16][4],
                                                     const bf16 *b1, const uint32_t a2[HD / 16][4], const bf16 *b2,
                                                     int g, int t) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t b0, bb;
            mm_load_b<MmGeo<HD>::LD>(b0, bb, b1, nt * 8, kk * 16, g, t);
            mm_mma(s[nt], a1[kk], b0, bb);
            mm_load_b<MmGeo<HD>::LD>(b0, bb, b2, nt * 8, kk * 16, g, t);
            mm_mma(dp[nt], a2[kk], b0, bb);
        }
    }
}

// acc (16 x HD) += C (16 x 64 scores-like tile, its first n columns real) times a transposed
// tile bt (element (k, d) at bt[d * LDT + k]): P V, dS K, P^T dO, dS^T Q. 16-column groups
// wholly past n are skipped (n is the same for the whole block).
template <int HD>
static __device__ __forceinline__ void mm_accumulate(float acc[HD / 8][4], const float c[8][4], const bf16 *bt, int n,
                                                     int g, int t) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (16 * j >= n) break;
        uint32_t a[4];
        mm_c_to_a(a, c, j);
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
            uint32_t b0, b1;
            mm_load_b<MmGeo<HD>::LDT>(b0, b1, bt, dn * 8, j * 16, g, t);
            mm_mma(acc[dn], a, b0, b1);
        }
    }
}

// ---- forward ------------------------------------------------------------------------------
// Shared memory: Q tile, K tile (row-major), V^T tile.
template <int HD>
__global__ void __launch_bounds__(MM_THREADS) mm_forward_kernel(float *out, float *lse, const float *q, const float *k,
                                                                const float *v, int T, int H, float scale) {
    typedef MmGeo<HD> G;
    extern __shared__ __align__(128) unsigned char mm_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mm_smem), *Ks = Qs + G::TILE, *Vt = Ks + G::TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * MM_ROWS, w0 = q0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;

    mm_load<HD>(Qs, q + base, ld, q0, T);
    __syncthreads();
    uint32_t qa[HD / 16][4];
    mm_load_rows_a<HD>(qa, Qs, warp * 16, g, t);
    float o[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    // Rows g and g+8 of the warp: running max (of scale * score) and this lane's share of the sum.
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int t0 = 0; t0 < T; t0 += MM_COLS) {
        __syncthreads();  // every warp is done with the previous K and V tiles
        mm_load<HD>(Ks, k + base, ld, t0, T);
        mm_load_t<HD>(Vt, v + base, ld, t0, T);
        __syncthreads();
        const int nk = min(MM_COLS, T - t0);
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t b0, b1;
                mm_load_b<G::LD>(b0, b1, Ks, nt * 8, kk * 16, g, t);
                mm_mma(s[nt], qa[kk], b0, b1);
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (nt * 8 + 2 * t + e >= nk) s[nt][e] = s[nt][2 + e] = -INFINITY;  // padded keys
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 2));
        // Key t0 is real, so the new maxima are finite; the corrections are 0 on the first tile.
        const float mn0 = fmaxf(m0, mx0 * scale), mn1 = fmaxf(m1, mx1 * scale);
        const float c0 = __expf(m0 - mn0), c1 = __expf(m1 - mn1);
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[nt][e] = __expf(s[nt][e] * scale - mn0);  // exp(-inf) = 0 for padded keys
                s[nt][2 + e] = __expf(s[nt][2 + e] * scale - mn1);
                rs0 += s[nt][e];
                rs1 += s[nt][2 + e];
            }
        l0 = l0 * c0 + rs0;
        l1 = l1 * c1 + rs1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) o[dn][0] *= c0, o[dn][1] *= c0, o[dn][2] *= c1, o[dn][3] *= c1;
        mm_accumulate<HD>(o, s, Vt, nk, g, t);  // O += P V
    }
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    mm_store_rows<HD>(out + base, ld, o, w0, T, 1.0f / l0, 1.0f / l1, g, t);
    if (t == 0) {
        if (w0 + g < T) lse[(size_t)bh * T + w0 + g] = m0 + logf(l0);
        if (w0 + g + 8 < T) lse[(size_t)bh * T + w0 + g + 8] = m1 + logf(l1);
    }
}

// ---- backward: dq -------------------------------------------------------------------------
// dQ_i = scale * sum_j P_ij (dP_ij - D_i) K_j, P_ij = exp(scale q_i.k_j - L_i), dP_ij = dO_i.V_j.
// Shared memory: Q and dO tiles (the warp's rows), K and V tiles, K^T.
template <int HD>
__global__ void __launch_bounds__(MM_THREADS) mm_dq_kernel(float *dq, const float *Dvec, const float *dout,
                                                           const float *lse, const float *q, const float *k,
                                                           const float *v, int T, int H, float scale) {
    typedef MmGeo<HD> G;
    extern __shared__ __align__(128) unsigned char mm_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mm_smem), *dOs = Qs + G::TILE, *Ks = dOs + G::TILE, *Vs = Ks + G::TILE,
         *Kt = Vs + G::TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * MM_ROWS, w0 = q0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;
    const int r0 = w0 + g, r1 = r0 + 8;
    const float L0 = r0 < T ? lse[(size_t)bh * T + r0] : 0.0f, L1 = r1 < T ? lse[(size_t)bh * T + r1] : 0.0f;
    const float D0 = r0 < T ? Dvec[(size_t)bh * T + r0] : 0.0f, D1 = r1 < T ? Dvec[(size_t)bh * T + r1] : 0.0f;

    mm_load<HD>(Qs, q + base, ld, q0, T);
    mm_load<HD>(dOs, dout + base, ld, q0, T);
    __syncthreads();
    uint32_t qa[HD / 16][4], da[HD / 16][4];
    mm_load_rows_a<HD>(qa, Qs, warp * 16, g, t);
    mm_load_rows_a<HD>(da, dOs, warp * 16, g, t);
    float acc[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.0f;

    for (int t0 = 0; t0 < T; t0 += MM_COLS) {
        __syncthreads();
        mm_load<HD>(Ks, k + base, ld, t0, T);
        mm_load<HD>(Vs, v + base, ld, t0, T);
        mm_load_t<HD>(Kt, k + base, ld, t0, T);
        __syncthreads();
        const int nk = min(MM_COLS, T - t0);
        float s[8][4], dp[8][4];
        mm_two_scores<HD>(s, dp, qa, Ks, da, Vs, g, t);
        // dS in place of S.
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool real = nt * 8 + 2 * t + e < nk;
                const float p0 = real ? __expf(s[nt][e] * scale - L0) : 0.0f;
                const float p1 = real ? __expf(s[nt][2 + e] * scale - L1) : 0.0f;
                s[nt][e] = p0 * (dp[nt][e] - D0);
                s[nt][2 + e] = p1 * (dp[nt][2 + e] - D1);
            }
        mm_accumulate<HD>(acc, s, Kt, nk, g, t);  // dQ += dS K
    }
    mm_store_rows<HD>(dq + base, ld, acc, w0, T, scale, scale, g, t);
}

// ---- backward: dk, dv ---------------------------------------------------------------------
// dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i P_ij (dP_ij - D_i) Q_i. The block owns 64 keys
// (16 per warp) and walks over the queries; a warp's scores are transposed (S^T = K Q^T,
// dP^T = V dO^T: rows are keys, columns queries), so they are the A operands of dV and dK as
// they stand. Shared memory: K, V tiles (the block's keys), Q, dO tiles, Q^T, dO^T; L and D.
template <int HD>
__global__ void __launch_bounds__(MM_THREADS) mm_dkdv_kernel(float *dk, float *dv, const float *dout,
                                                             const float *lse, const float *Dvec, const float *q,
                                                             const float *k, const float *v, int T, int H,
                                                             float scale) {
    typedef MmGeo<HD> G;
    extern __shared__ __align__(128) unsigned char mm_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(mm_smem), *Vs = Ks + G::TILE, *Qs = Vs + G::TILE, *dOs = Qs + G::TILE,
         *Qt = dOs + G::TILE, *dOt = Qt + G::TILE_T;
    float *Ls = reinterpret_cast<float *>(dOt + G::TILE_T), *Ds = Ls + MM_COLS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, k0 = blockIdx.y * MM_ROWS, w0 = k0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;

    mm_load<HD>(Ks, k + base, ld, k0, T);
    mm_load<HD>(Vs, v + base, ld, k0, T);
    __syncthreads();
    uint32_t ka[HD / 16][4], va[HD / 16][4];
    mm_load_rows_a<HD>(ka, Ks, warp * 16, g, t);
    mm_load_rows_a<HD>(va, Vs, warp * 16, g, t);
    float gk[HD / 8][4], gv[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) {
        gk[dn][0] = gk[dn][1] = gk[dn][2] = gk[dn][3] = 0.0f;
        gv[dn][0] = gv[dn][1] = gv[dn][2] = gv[dn][3] = 0.0f;
    }

    for (int i0 = 0; i0 < T; i0 += MM_COLS) {
        __syncthreads();  // previous Q, dO, L, D consumed
        mm_load<HD>(Qs, q + base, ld, i0, T);
        mm_load<HD>(dOs, dout + base, ld, i0, T);
        mm_load_t<HD>(Qt, q + base, ld, i0, T);
        mm_load_t<HD>(dOt, dout + base, ld, i0, T);
        for (int i = threadIdx.x; i < MM_COLS; i += MM_THREADS) {
            int row = i0 + i;
            Ls[i] = row < T ? lse[(size_t)bh * T + row] : 0.0f;
            Ds[i] = row < T ? Dvec[(size_t)bh * T + row] : 0.0f;
        }
        __syncthreads();
        const int nq = min(MM_COLS, T - i0);
        float s[8][4], dp[8][4];
        mm_two_scores<HD>(s, dp, ka, Qs, va, dOs, g, t);
        // P^T in s, dS^T in dp; padded queries (columns) contribute nothing.
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = nt * 8 + 2 * t + e;
                const bool real = col < nq;
                const float L = Ls[col], D = Ds[col];
                const float p0 = real ? __expf(s[nt][e] * scale - L) : 0.0f;
                const float p1 = real ? __expf(s[nt][2 + e] * scale - L) : 0.0f;
                dp[nt][e] = p0 * (dp[nt][e] - D);
                dp[nt][2 + e] = p1 * (dp[nt][2 + e] - D);
                s[nt][e] = p0;
                s[nt][2 + e] = p1;
            }
        mm_accumulate<HD>(gv, s, dOt, nq, g, t);  // dV += P^T dO
        mm_accumulate<HD>(gk, dp, Qt, nq, g, t);  // dK += dS^T Q
    }
    mm_store_rows<HD>(dv + base, ld, gv, w0, T, 1.0f, 1.0f, g, t);
    mm_store_rows<HD>(dk + base, ld, gk, w0, T, scale, scale, g, t);
}

// ---- host side ----------------------------------------------------------------------------
template <int HD> static size_t mm_fwd_smem(void) { return (2 * (size_t)MmGeo<HD>::TILE + MmGeo<HD>::TILE_T) * 2; }
template <int HD> static size_t mm_dq_smem(void) { return (4 * (size_t)MmGeo<HD>::TILE + MmGeo<HD>::TILE_T) * 2; }
template <int HD> static size_t mm_dkdv_smem(void) {
    return (4 * (size_t)MmGeo<HD>::TILE + 2 * (size_t)MmGeo<HD>::TILE_T) * 2 + 2 * MM_COLS * sizeof(float);
}

int cuda_attention_mma_usable(const CudaState *s, int hd, const void *const *ptrs, int n) {
    if (!s->attention_mma || s->precision != CUDA_BF16 || (hd != 32 && hd != 64)) return 0;
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] & 15) return 0;  // float4 loads and float2 stores
    return 1;
}

template <int HD>
static int mm_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                      int H) {
    size_t smem = mm_fwd_smem<HD>();
    if (cuda_allow_smem(s, mm_forward_kernel<HD>, smem, "attention_forward")) return VIT_ERR;
    dim3 grid(B * H, (T + MM_ROWS - 1) / MM_ROWS);
    mm_forward_kernel<HD><<<grid, MM_THREADS, smem, s->stream>>>(out, lse, q, k, v, T, H, 1.0f / sqrtf((float)HD));
    return cuda_check_launch(s, "attention_forward");
}

template <int HD>
static int mm_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                       const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B, int T,
                       int H) {
    size_t s1 = mm_dq_smem<HD>(), s2 = mm_dkdv_smem<HD>();
    if (cuda_allow_smem(s, mm_dq_kernel<HD>, s1, "attention_backward") ||
        cuda_allow_smem(s, mm_dkdv_kernel<HD>, s2, "attention_backward") ||
        cuda_attention_d(s, Dvec, dout, out, B, T, H, HD))
        return VIT_ERR;
    dim3 grid(B * H, (T + MM_ROWS - 1) / MM_ROWS);
    float scale = 1.0f / sqrtf((float)HD);
    mm_dq_kernel<HD><<<grid, MM_THREADS, s1, s->stream>>>(dq, Dvec, dout, lse, q, k, v, T, H, scale);
    mm_dkdv_kernel<HD><<<grid, MM_THREADS, s2, s->stream>>>(dk, dv, dout, lse, Dvec, q, k, v, T, H, scale);
    return cuda_check_launch(s, "attention_backward");
}

int cuda_attention_mma_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                               int B, int T, int H, int hd) {
    return hd == 32 ? mm_forward<32>(s, out, lse, q, k, v, B, T, H) : mm_forward<64>(s, out, lse, q, k, v, B, T, H);
}

int cuda_attention_mma_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B,
                                int T, int H, int hd) {
    return hd == 32 ? mm_backward<32>(s, dq, dk, dv, dout, out, lse, Dvec, q, k, v, B, T, H)
                    : mm_backward<64>(s, dq, dk, dv, dout, out, lse, Dvec, q, k, v, B, T, H);
}
