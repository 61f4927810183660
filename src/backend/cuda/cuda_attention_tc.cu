// Tensor-core attention for the bf16 backend (CUDA_BF16) and head sizes 32, 64 and 128: the
// same op as the fp32 kernels of cuda_attention.cu (scale 1/sqrt(hd), state = per-(b, h, row)
// log-sum-exp, scratch = D_i = sum_j P_ij dP_ij), with every matrix product on tensor cores
// through WMMA (bf16 16x16x16 fragments, fp32 accumulators; sm_80 and sm_90 alike).
//
// q, k, v, dout stay fp32 (B, T, H*hd) in device memory; tiles are rounded to bf16 as they are
// copied into shared memory, exactly as the bf16 gemms round their operands. Softmax, the
// log-sum-exp, D and every accumulation stay fp32; probabilities P and dS are rounded to bf16
// only as operands of the next product. Scores never leave shared memory.
//
// Work split: a block of 4 warps owns 64 rows (16 per warp: one WMMA row of tiles) and walks
// over the other side in tiles of 64 columns. The WMMA fragment layout is opaque, so this
// code never looks inside a fragment: products are stored to the warp's own shared-memory
// scratch with store_matrix_sync, and row-wise work (softmax, masking) is done there by
// lanes: lane pair (2r, 2r+1) owns row r, each lane every other column. A running output
// that needs rescaling (the forward O) lives in shared memory too and goes through
// load_matrix_sync / mma_sync / store_matrix_sync for each tile.
// Padding: rows and keys past T are zero-filled on load; padded keys get probability 0
// (scores masked to -inf), padded queries get probability 0 in the dk/dv kernel; 16-wide
// column groups wholly past T are skipped, and warps whose 16 rows all lie past T idle.
//
// Kernels: forward (online softmax); backward: D_i = dO_i . O_i from the forward's output in
// fp32 (one warp per row), then two kernels and no atomics (dq, then dk/dv), so results
// repeat bit for bit.
#include <math.h>
#include <stdint.h>
#include <cuda_bf16.h>
#include <mma.h>
#include "cuda_common.h"
#include "cuda_reduce.h"

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

enum { TC_WARPS = 4, TC_THREADS = TC_WARPS * 32, TC_ROWS = TC_WARPS * 16, TC_COLS = 64 };

// Shared-memory row strides. WMMA wants ldm a multiple of 8 (16-bit) or 4 (fp32) elements and
// 32-byte aligned fragment pointers; the extra 8/4 elements shift successive rows across banks.
template <int HD> struct TcGeo {
    static const int LDB = HD + 8;       // bf16 tiles of q, k, v, dout (rows of HD)
    static const int LDS = TC_COLS + 4;  // fp32 score-like tiles (16 x 64 per warp)
    static const int LDP = TC_COLS + 8;  // bf16 probability-like tiles (16 x 64 per warp)
    static const int LDO = HD + 4;       // fp32 output tiles (16 x HD per warp)
};

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;    // B[k][n] at p[k*ld + n]
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;   // B[k][n] at p[n*ld + k]
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Copies rows r0 .. r0+rows-1 of a (T, ld) fp32 matrix (HD columns) into bf16 shared memory
// with row stride LDB, zero-filling rows past T. src is 16-byte aligned and ld a multiple of
// 4 (checked by the host), so each thread moves float4s: consecutive threads, consecutive
// 16 bytes of a row (coalesced).
template <int HD>
static __device__ void tc_load(bf16 *dst, const float *src, size_t ld, int r0, int rows, int T) {
    const int V = HD / 4;
    for (int i = threadIdx.x; i < rows * V; i += TC_THREADS) {
        int r = i / V, c = (i % V) * 4, t = r0 + r;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t < T) x = *(const float4 *)(src + (size_t)t * ld + c);
        bf16 *d = dst + r * TcGeo<HD>::LDB + c;
        d[0] = __float2bfloat16_rn(x.x), d[1] = __float2bfloat16_rn(x.y);
        d[2] = __float2bfloat16_rn(x.z), d[3] = __float2bfloat16_rn(x.w);
    }
}

// Column of row r that lane half `half` handles at step c (0 <= c < n/2) of a row of n:
// every other column, rotated by the row, so the 32 lanes hit 32 different banks.
static __device__ __forceinline__ int tc_col(int c, int r, int half, int n) { return 2 * ((c + r) & (n / 2 - 1)) + half; }

// Writes 16 rows x HD of a warp's fp32 tile (row stride LDO) to rows t0.. of dst (row stride
// ld), times mul[row] (lane 2*row holds it); rows past T are skipped. Whole warp per row:
// coalesced stores, conflict-free reads.
template <int HD>
static __device__ void tc_store_rows(float *dst, size_t ld, const float *tile, int t0, int T, float mul) {
    const int lane = threadIdx.x & 31;
    for (int rr = 0; rr < 16; rr++) {
        float f = __shfl_sync(FULL_MASK, mul, 2 * rr);
        if (t0 + rr >= T) continue;  // uniform over the warp
        for (int d = lane; d < HD; d += 32) dst[(size_t)(t0 + rr) * ld + d] = tile[rr * TcGeo<HD>::LDO + d] * f;
    }
}

// ---- forward ------------------------------------------------------------------------------
// Shared memory: Qs (64 x LDB), Ks, Vs (64 x LDB) bf16; per warp S (16 x LDS) and O (16 x LDO)
// fp32, P (16 x LDP) bf16. Every region's size is a multiple of 32 bytes.
template <int HD>
static size_t tc_fwd_smem(void) {
    typedef TcGeo<HD> G;
    return (size_t)(TC_ROWS + 2 * TC_COLS) * G::LDB * 2 + (size_t)TC_WARPS * 16 * (G::LDS + G::LDO) * 4 +
           (size_t)TC_WARPS * 16 * G::LDP * 2;
}

template <int HD>
__global__ void __launch_bounds__(TC_THREADS) tc_forward_kernel(float *out, float *lse, const float *q, const float *k,
                                                                const float *v, int T, int H, float scale) {
    typedef TcGeo<HD> G;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = (bf16 *)tc_smem, *Ks = Qs + TC_ROWS * G::LDB, *Vs = Ks + TC_COLS * G::LDB;
    float *Ss = (float *)(Vs + TC_COLS * G::LDB), *Os = Ss + TC_WARPS * 16 * G::LDS;
    bf16 *Ps = (bf16 *)(Os + TC_WARPS * 16 * G::LDO);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 1, half = lane & 1;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * TC_ROWS, w0 = q0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;
    float *Sw = Ss + warp * 16 * G::LDS, *Ow = Os + warp * 16 * G::LDO;
    bf16 *Pw = Ps + warp * 16 * G::LDP;
    const bool active = w0 < T;  // warp-uniform: a warp wholly past T only helps load tiles

    tc_load<HD>(Qs, q + base, ld, q0, TC_ROWS, T);
    for (int i = lane; i < 16 * HD; i += 32) Ow[(i / HD) * G::LDO + i % HD] = 0.0f;
    __syncthreads();
    FragA qf[HD / 16];
    if (active)
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) wmma::load_matrix_sync(qf[kk], Qs + warp * 16 * G::LDB + kk * 16, G::LDB);

    float m = -INFINITY, l = 0.0f;  // running max and sum of row r (both lanes of the pair)
    for (int t0 = 0; t0 < T; t0 += TC_COLS) {
        __syncthreads();  // every warp is done with the previous K and V tiles
        tc_load<HD>(Ks, k + base, ld, t0, TC_COLS, T);
        tc_load<HD>(Vs, v + base, ld, t0, TC_COLS, T);
        __syncthreads();
        if (!active) continue;
        const int nk = min(TC_COLS, T - t0), ng = (nk + 15) / 16;  // real keys, 16-key groups holding any
        // S = Q K^T for the groups with real keys (the rest are never read).
        for (int n = 0; n < ng; n++) {
            FragC s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                FragBt kf;
                wmma::load_matrix_sync(kf, Ks + n * 16 * G::LDB + kk * 16, G::LDB);
                wmma::mma_sync(s, qf[kk], kf, s);
            }
            wmma::store_matrix_sync(Sw + n * 16, s, G::LDS, wmma::mem_row_major);
        }
        __syncwarp();
        // Online softmax of row r: P = exp(S*scale - m_new), O and l rescaled by exp(m_old - m_new).
        float *srow = Sw + r * G::LDS;
        bf16 *prow = Pw + r * G::LDP;
        float mx = -INFINITY;
        for (int c = 0; c < TC_COLS / 2; c++) {
            int j = tc_col(c, r, half, TC_COLS);
            if (j < nk) mx = fmaxf(mx, srow[j] * scale);
        }
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        const float mnew = fmaxf(m, mx);  // finite: key t0 is real
        const float corr = __expf(m - mnew);  // 0 on the first tile (m = -inf)
        float sum = 0.0f;
        for (int c = 0; c < TC_COLS / 2; c++) {
            int j = tc_col(c, r, half, TC_COLS);
            float p = j < nk ? __expf(srow[j] * scale - mnew) : 0.0f;
            prow[j] = __float2bfloat16_rn(p);
            sum += p;
        }
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        l = l * corr + sum;
        m = mnew;
        float *orow = Ow + r * G::LDO;
        for (int c = 0; c < HD / 2; c++) orow[tc_col(c, r, half, HD)] *= corr;
        __syncwarp();  // P and the rescaled O are complete before the warp's fragments read them
        // O += P V over the same key groups.
#pragma unroll
        for (int n = 0; n < HD / 16; n++) {
            FragC o;
            wmma::load_matrix_sync(o, Ow + n * 16, G::LDO, wmma::mem_row_major);
            for (int kk = 0; kk < ng; kk++) {
                FragA pf;
                FragB vf;
                wmma::load_matrix_sync(pf, Pw + kk * 16, G::LDP);
                wmma::load_matrix_sync(vf, Vs + kk * 16 * G::LDB + n * 16, G::LDB);
                wmma::mma_sync(o, pf, vf, o);
            }
            wmma::store_matrix_sync(Ow + n * 16, o, G::LDO, wmma::mem_row_major);
        }
        __syncwarp();  // O is stored before lanes rescale it on the next tile
    }
    if (!active) return;  // no barrier follows
    __syncwarp();
    tc_store_rows<HD>(out + base, ld, Ow, w0, T, 1.0f / l);
    if (half == 0 && w0 + r < T) lse[(size_t)bh * T + w0 + r] = m + logf(l);
}

// ---- backward: D ------------------------------------------------------------------------
// D_i = sum_j P_ij dP_ij = dO_i . O_i: one dot product per (b, h, row) instead of a pass that
// recomputes S and dP for every key tile. One warp per row, lanes over the head dimension.
__global__ void tc_d_kernel(float *Dvec, const float *dout, const float *out, int B, int T, int H, int hd) {
    const size_t rows = (size_t)B * H * T;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const size_t bh = row / T, t = row % T, b = bh / H, h = bh % H;
    const size_t at = (b * T + t) * (size_t)H * hd + h * hd;
    float acc = 0.0f;
    for (int d = lane; d < hd; d += 32) acc += dout[at + d] * out[at + d];
    acc = warp_sum(acc);
    if (lane == 0) Dvec[row] = acc;
}

// ---- backward: dq -------------------------------------------------------------------------
// dQ_i = scale * sum_j P_ij (dP_ij - D_i) K_j with P_ij = exp(scale q_i.k_j - L_i) and
// dP_ij = dO_i . V_j, accumulated in fragments (no rescaling needed: L is final).
// Shared memory: Qs, dOs (64 x LDB), Ks, Vs (64 x LDB) bf16; per warp S and dP (16 x LDS each,
// contiguous: the output tile 16 x LDO reuses them at the end) fp32 and dS (16 x LDP) bf16.
template <int HD>
static size_t tc_dq_smem(void) {
    typedef TcGeo<HD> G;
    return (size_t)(2 * TC_ROWS + 2 * TC_COLS) * G::LDB * 2 + (size_t)TC_WARPS * 32 * G::LDS * 4 +
           (size_t)TC_WARPS * 16 * G::LDP * 2;
}

// S = A1 B1^T and dP = A2 B2^T for one warp's 16 rows against the first ng 16-column groups of
// a 64-column tile; A1/A2 are the warp's rows (row stride LDB), B1/B2 the tile's rows.
template <int HD>
static __device__ void tc_two_scores(float *Sw, float *dPw, const bf16 *A1, const bf16 *B1, const bf16 *A2,
                                     const bf16 *B2, int ng) {
    typedef TcGeo<HD> G;
    for (int n = 0; n < ng; n++) {
        FragC s, dp;
        wmma::fill_fragment(s, 0.0f);
        wmma::fill_fragment(dp, 0.0f);
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            FragA a;
            FragBt bt;
            wmma::load_matrix_sync(a, A1 + kk * 16, G::LDB);
            wmma::load_matrix_sync(bt, B1 + n * 16 * G::LDB + kk * 16, G::LDB);
            wmma::mma_sync(s, a, bt, s);
            wmma::load_matrix_sync(a, A2 + kk * 16, G::LDB);
            wmma::load_matrix_sync(bt, B2 + n * 16 * G::LDB + kk * 16, G::LDB);
            wmma::mma_sync(dp, a, bt, dp);
        }
        wmma::store_matrix_sync(Sw + n * 16, s, G::LDS, wmma::mem_row_major);
        wmma::store_matrix_sync(dPw + n * 16, dp, G::LDS, wmma::mem_row_major);
    }
}

template <int HD>
__global__ void __launch_bounds__(TC_THREADS) tc_dq_kernel(float *dq, const float *Dvec, const float *dout, const float *lse,
                                                           const float *q, const float *k, const float *v, int T, int H,
                                                           float scale) {
    typedef TcGeo<HD> G;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = (bf16 *)tc_smem, *dOs = Qs + TC_ROWS * G::LDB, *Ks = dOs + TC_ROWS * G::LDB, *Vs = Ks + TC_COLS * G::LDB;
    float *Ss = (float *)(Vs + TC_COLS * G::LDB);
    bf16 *dSs = (bf16 *)(Ss + TC_WARPS * 32 * G::LDS);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 1, half = lane & 1;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * TC_ROWS, w0 = q0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;
    float *Sw = Ss + warp * 32 * G::LDS, *dPw = Sw + 16 * G::LDS;
    bf16 *dSw = dSs + warp * 16 * G::LDP;
    const bool active = w0 < T;

    tc_load<HD>(Qs, q + base, ld, q0, TC_ROWS, T);
    tc_load<HD>(dOs, dout + base, ld, q0, TC_ROWS, T);
    const float L = w0 + r < T ? lse[(size_t)bh * T + w0 + r] : 0.0f;
    const float D = w0 + r < T ? Dvec[(size_t)bh * T + w0 + r] : 0.0f;
    FragC acc[HD / 16];
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
    for (int t0 = 0; t0 < T; t0 += TC_COLS) {
        __syncthreads();  // previous K, V tiles consumed (and Qs, dOs complete)
        tc_load<HD>(Ks, k + base, ld, t0, TC_COLS, T);
        tc_load<HD>(Vs, v + base, ld, t0, TC_COLS, T);
        __syncthreads();
        if (!active) continue;
        const int nk = min(TC_COLS, T - t0), ng = (nk + 15) / 16;
        tc_two_scores<HD>(Sw, dPw, Qs + warp * 16 * G::LDB, Ks, dOs + warp * 16 * G::LDB, Vs, ng);
        __syncwarp();
        const float *srow = Sw + r * G::LDS, *dprow = dPw + r * G::LDS;
        bf16 *dsrow = dSw + r * G::LDP;
        for (int c = 0; c < TC_COLS / 2; c++) {
            int j = tc_col(c, r, half, TC_COLS);
            float ds = j < nk ? __expf(srow[j] * scale - L) * (dprow[j] - D) : 0.0f;
            dsrow[j] = __float2bfloat16_rn(ds);
        }
        __syncwarp();  // dS complete before the fragments read it
#pragma unroll
        for (int n = 0; n < HD / 16; n++)
            for (int kk = 0; kk < ng; kk++) {
                FragA a;
                FragB kf;
                wmma::load_matrix_sync(a, dSw + kk * 16, G::LDP);
                wmma::load_matrix_sync(kf, Ks + kk * 16 * G::LDB + n * 16, G::LDB);
                wmma::mma_sync(acc[n], a, kf, acc[n]);
            }
    }
    if (!active) return;
    __syncwarp();  // S and dP are no longer read: their space takes the output tile
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(Sw + n * 16, acc[n], G::LDO, wmma::mem_row_major);
    __syncwarp();
    tc_store_rows<HD>(dq + base, ld, Sw, w0, T, scale);
}

// ---- backward: dk, dv ---------------------------------------------------------------------
// dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i P_ij (dP_ij - D_i) Q_i: the block owns 64 keys
// (16 per warp) and walks over the queries in tiles of 64; a warp's products are transposed
// ones, S^T = K Q^T and dP^T = V dO^T, so row r of its tiles is key r and columns are queries.
// Shared memory: Ks, Vs (64 x LDB), Qs, dOs (64 x LDB) bf16; per warp S^T and dP^T (16 x LDS,
// contiguous, reused for the outputs) fp32, P^T and dS^T (16 x LDP) bf16; L and D of the tile.
template <int HD>
static size_t tc_dkdv_smem(void) {
    typedef TcGeo<HD> G;
    return (size_t)(2 * TC_ROWS + 2 * TC_COLS) * G::LDB * 2 + (size_t)TC_WARPS * 32 * G::LDS * 4 +
           (size_t)TC_WARPS * 32 * G::LDP * 2 + 2 * TC_COLS * 4;
}

template <int HD>
__global__ void __launch_bounds__(TC_THREADS) tc_dkdv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                                                             const float *Dvec, const float *q, const float *k,
                                                             const float *v, int T, int H, float scale) {
    typedef TcGeo<HD> G;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Ks = (bf16 *)tc_smem, *Vs = Ks + TC_ROWS * G::LDB, *Qs = Vs + TC_ROWS * G::LDB, *dOs = Qs + TC_COLS * G::LDB;
    float *Ss = (float *)(dOs + TC_COLS * G::LDB);
    bf16 *Ps = (bf16 *)(Ss + TC_WARPS * 32 * G::LDS);
    float *Ls = (float *)(Ps + TC_WARPS * 32 * G::LDP), *Ds = Ls + TC_COLS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 1, half = lane & 1;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, k0 = blockIdx.y * TC_ROWS, w0 = k0 + warp * 16;
    const size_t ld = (size_t)H * HD, base = (size_t)b * T * ld + (size_t)h * HD;
    float *Sw = Ss + warp * 32 * G::LDS, *dPw = Sw + 16 * G::LDS;
    bf16 *Pw = Ps + warp * 32 * G::LDP, *dSw = Pw + 16 * G::LDP;
    const bool active = w0 < T;

    tc_load<HD>(Ks, k + base, ld, k0, TC_ROWS, T);
    tc_load<HD>(Vs, v + base, ld, k0, TC_ROWS, T);
    FragC gk[HD / 16], gv[HD / 16];
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::fill_fragment(gk[n], 0.0f), wmma::fill_fragment(gv[n], 0.0f);
    for (int i0 = 0; i0 < T; i0 += TC_COLS) {
        __syncthreads();  // previous Q, dO, L, D consumed (and Ks, Vs complete)
        tc_load<HD>(Qs, q + base, ld, i0, TC_COLS, T);
        tc_load<HD>(dOs, dout + base, ld, i0, TC_COLS, T);
        for (int i = threadIdx.x; i < TC_COLS; i += TC_THREADS) {
            int t = i0 + i;
            Ls[i] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
            Ds[i] = t < T ? Dvec[(size_t)bh * T + t] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int nq = min(TC_COLS, T - i0), ng = (nq + 15) / 16;
        tc_two_scores<HD>(Sw, dPw, Ks + warp * 16 * G::LDB, Qs, Vs + warp * 16 * G::LDB, dOs, ng);
        __syncwarp();
        const float *srow = Sw + r * G::LDS, *dprow = dPw + r * G::LDS;
        bf16 *prow = Pw + r * G::LDP, *dsrow = dSw + r * G::LDP;
        for (int c = 0; c < TC_COLS / 2; c++) {
            int j = tc_col(c, r, half, TC_COLS);
            float p = 0.0f, ds = 0.0f;
            if (j < nq) {  // padded queries contribute nothing
                p = __expf(srow[j] * scale - Ls[j]);
                ds = p * (dprow[j] - Ds[j]);
            }
            prow[j] = __float2bfloat16_rn(p);
            dsrow[j] = __float2bfloat16_rn(ds);
        }
        __syncwarp();  // P^T, dS^T complete before the fragments read them
#pragma unroll
        for (int n = 0; n < HD / 16; n++)
            for (int kk = 0; kk < ng; kk++) {
                FragA a;
                FragB bq;
                wmma::load_matrix_sync(a, Pw + kk * 16, G::LDP);
                wmma::load_matrix_sync(bq, dOs + kk * 16 * G::LDB + n * 16, G::LDB);
                wmma::mma_sync(gv[n], a, bq, gv[n]);
                wmma::load_matrix_sync(a, dSw + kk * 16, G::LDP);
                wmma::load_matrix_sync(bq, Qs + kk * 16 * G::LDB + n * 16, G::LDB);
                wmma::mma_sync(gk[n], a, bq, gk[n]);
            }
    }
    if (!active) return;
    __syncwarp();  // S^T and dP^T are no longer read: their space takes the output tiles
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(Sw + n * 16, gv[n], G::LDO, wmma::mem_row_major);
    __syncwarp();
    tc_store_rows<HD>(dv + base, ld, Sw, w0, T, 1.0f);
    __syncwarp();  // dV written out before dK takes the space
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(Sw + n * 16, gk[n], G::LDO, wmma::mem_row_major);
    __syncwarp();
    tc_store_rows<HD>(dk + base, ld, Sw, w0, T, scale);
}

// ---- host side ----------------------------------------------------------------------------
int cuda_attention_d(CudaState *s, float *Dvec, const float *dout, const float *out, int B, int T, int H, int hd) {
    size_t rows = (size_t)B * H * T;
    if (!rows) return VIT_OK;
    tc_d_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, s->stream>>>(Dvec, dout, out, B, T, H, hd);
    return cuda_check_launch(s, "attention_backward (D)");
}

int cuda_attention_tc_usable(const CudaState *s, int hd, const void *const *ptrs, int n) {
    if (s->precision != CUDA_BF16 || (hd != 32 && hd != 64 && hd != 128)) return 0;
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] & 15) return 0;  // float4 loads need 16-byte rows
    return 1;
}

template <int HD>
static int tc_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                      int H) {
    size_t smem = tc_fwd_smem<HD>();
    if (cuda_allow_smem(s, tc_forward_kernel<HD>, smem, "attention_forward")) return VIT_ERR;
    dim3 grid(B * H, (T + TC_ROWS - 1) / TC_ROWS);
    tc_forward_kernel<HD><<<grid, TC_THREADS, smem, s->stream>>>(out, lse, q, k, v, T, H, 1.0f / sqrtf((float)HD));
    return cuda_check_launch(s, "attention_forward");
}

template <int HD>
static int tc_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                       const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B, int T,
                       int H) {
    size_t s1 = tc_dq_smem<HD>(), s2 = tc_dkdv_smem<HD>();
    if (cuda_allow_smem(s, tc_dq_kernel<HD>, s1, "attention_backward") ||
        cuda_allow_smem(s, tc_dkdv_kernel<HD>, s2, "attention_backward"))
        return VIT_ERR;
    dim3 grid(B * H, (T + TC_ROWS - 1) / TC_ROWS);
    float scale = 1.0f / sqrtf((float)HD);
    if (cuda_attention_d(s, Dvec, dout, out, B, T, H, HD)) return VIT_ERR;
    tc_dq_kernel<HD><<<grid, TC_THREADS, s1, s->stream>>>(dq, Dvec, dout, lse, q, k, v, T, H, scale);
    tc_dkdv_kernel<HD><<<grid, TC_THREADS, s2, s->stream>>>(dk, dv, dout, lse, Dvec, q, k, v, T, H, scale);
    return cuda_check_launch(s, "attention_backward");
}

int cuda_attention_tc_forward(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int hd) {
    switch (hd) {
    case 32: return tc_forward<32>(s, out, lse, q, k, v, B, T, H);
    case 64: return tc_forward<64>(s, out, lse, q, k, v, B, T, H);
    default: return tc_forward<128>(s, out, lse, q, k, v, B, T, H);
    }
}

int cuda_attention_tc_backward(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *lse, float *Dvec, const float *q, const float *k, const float *v, int B,
                               int T, int H, int hd) {
    switch (hd) {
    case 32: return tc_backward<32>(s, dq, dk, dv, dout, out, lse, Dvec, q, k, v, B, T, H);
    case 64: return tc_backward<64>(s, dq, dk, dv, dout, out, lse, Dvec, q, k, v, B, T, H);
    default: return tc_backward<128>(s, dq, dk, dv, dout, out, lse, Dvec, q, k, v, B, T, H);
    }
}
