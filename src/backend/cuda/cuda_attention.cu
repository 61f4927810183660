// Fused multi-head attention, flash-attention style, in fp32: the T x T scores live only
// in registers and shared memory, never in device memory. The forward pass keeps one
// number per (b, h, query row), the log-sum-exp of its scaled scores, as the state; the
// backward pass recomputes the probabilities from it.
//
// Layout: q, k, v, out are (B, T, H*hd); head h of token t is the hd floats at
// t*H*hd + h*hd. Work is split over (b, h) and tiles of rows; inside a block:
//  - a warp owns ROWS rows of its tile; its 32 lanes stand for 32 columns of the other
//    side (keys in the forward and dq kernels, queries in the dk/dv kernel), so each lane
//    computes one score per row with a dot product over hd, reading its own shared-memory
//    row (row stride odd: no bank conflicts) against a row every lane reads (a broadcast);
//  - products with a value/key/query tile then run with lanes over the hd dimension
//    (NC = ceil(hd/32) registers per row), the per-column weights passed by warp shuffles.
// Backward: D_i = sum_j P_ij dP_ij (= dO_i . O_i) is computed first, by the dq kernel, and
// kept in the scratch buffer for the dk/dv kernel. Two kernels, no atomics: the results
// repeat bit for bit.
//
// Limits: hd <= 128 (any value up to that, not only powers of two); any T. fp32, SIMT (no
// tensor cores). With bf16 precision and hd 32, 64 or 128 the tensor-core kernels of
// cuda_attention_tc.cu run instead (same state and scratch, so either backward follows
// either forward); VIT_CUDA_ATTENTION picks mma.sync (cuda_attention_mma.cu), cuDNN
// (cuda_attention_cudnn.cu, same state) or these SIMT kernels instead.
#include <math.h>
#include "cuda_common.h"
#include "cuda_reduce.h"

enum { WARPS = 4, THREADS = WARPS * 32, ROWS = 4, TILE_ROWS = WARPS * ROWS, TILE_COLS = 32, MAX_HD = 128 };

static __host__ __device__ int odd_stride(int hd) { return hd | 1; }

// Copies `rows` rows of hd floats (row r at src + (r0 + r) * ld) into shared memory with
// row stride `stride`, zero-filling rows past T (zeros keep 0 * garbage NaN out of sums).
static __device__ void load_tile(float *dst, int stride, const float *src, size_t ld, int r0, int rows, int T, int hd) {
    for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) {
        int r = i / hd, d = i % hd, t = r0 + r;
        dst[r * stride + d] = t < T ? src[(size_t)t * ld + d] : 0.0f;
    }
}

template <int NC>
__global__ void __launch_bounds__(THREADS) attn_forward_kernel(float *out, float *lse, const float *q, const float *k,
                                                               const float *v, int T, int H, int hd, float scale) {
    extern __shared__ float sm[];
    const int ks = odd_stride(hd);
    float *Qs = sm, *Ks = Qs + TILE_ROWS * hd, *Vs = Ks + TILE_COLS * ks;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * TILE_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t ld = (size_t)H * hd, base = (size_t)b * T * ld + (size_t)h * hd;
    load_tile(Qs, hd, q + base, ld, q0, TILE_ROWS, T, hd);
    const float *qr = Qs + warp * ROWS * hd;

    float m[ROWS], l[ROWS], o[ROWS][NC];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) o[r][c] = 0.0f;
    }
    for (int t0 = 0; t0 < T; t0 += TILE_COLS) {
        __syncthreads();  // the previous tiles are consumed (and Qs is complete)
        load_tile(Ks, ks, k + base, ld, t0, TILE_COLS, T, hd);
        load_tile(Vs, ks, v + base, ld, t0, TILE_COLS, T, hd);
        __syncthreads();
        const int nk = min(TILE_COLS, T - t0);
        float sc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) sc[r] = 0.0f;
        const float *kr = Ks + lane * ks;
        for (int d = 0; d < hd; d++) {
            float kd = kr[d];
#pragma unroll
            for (int r = 0; r < ROWS; r++) sc[r] += qr[r * hd + d] * kd;
        }
        float p[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            // Online softmax: rescale what was summed under the old maximum.
            float sv = lane < nk ? sc[r] * scale : -INFINITY;
            float mnew = fmaxf(m[r], warp_max(sv));
            p[r] = lane < nk ? expf(sv - mnew) : 0.0f;
            float corr = expf(m[r] - mnew);  // 0 on the first tile (m = -inf)
            l[r] = l[r] * corr + warp_sum(p[r]);
            m[r] = mnew;
#pragma unroll
            for (int c = 0; c < NC; c++) o[r][c] *= corr;
        }
        for (int j = 0; j < nk; j++) {
            float vj[NC];
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = lane + 32 * c;
                vj[c] = d < hd ? Vs[j * ks + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float pj = __shfl_sync(FULL_MASK, p[r], j);
#pragma unroll
                for (int c = 0; c < NC; c++) o[r][c] += pj * vj[c];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        int t = q0 + warp * ROWS + r;
        if (t >= T) continue;
        float inv = 1.0f / l[r];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < hd) out[base + (size_t)t * ld + d] = o[r][c] * inv;
        }
        if (lane == 0) lse[(size_t)bh * T + t] = m[r] + logf(l[r]);
    }
}

// dQ_i = scale * sum_j P_ij (dP_ij - D_i) K_j with dP_ij = dO_i . V_j. Pass 1 computes D_i
// (stored for the dk/dv kernel), pass 2 the gradient.
template <int NC>
__global__ void __launch_bounds__(THREADS) attn_dq_kernel(float *dq, float *Dvec, const float *dout, const float *lse,
                                                          const float *q, const float *k, const float *v, int T, int H,
                                                          int hd, float scale) {
    extern __shared__ float sm[];
    const int ks = odd_stride(hd);
    float *Qs = sm, *dOs = Qs + TILE_ROWS * hd, *Ks = dOs + TILE_ROWS * hd, *Vs = Ks + TILE_COLS * ks;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, q0 = blockIdx.y * TILE_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t ld = (size_t)H * hd, base = (size_t)b * T * ld + (size_t)h * hd;
    load_tile(Qs, hd, q + base, ld, q0, TILE_ROWS, T, hd);
    load_tile(dOs, hd, dout + base, ld, q0, TILE_ROWS, T, hd);
    const float *qr = Qs + warp * ROWS * hd, *dor = dOs + warp * ROWS * hd;
    float L[ROWS], Dr[ROWS], acc[ROWS][NC];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        int t = q0 + warp * ROWS + r;
        L[r] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
        Dr[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int t0 = 0; t0 < T; t0 += TILE_COLS) {
            __syncthreads();
            load_tile(Ks, ks, k + base, ld, t0, TILE_COLS, T, hd);
            load_tile(Vs, ks, v + base, ld, t0, TILE_COLS, T, hd);
            __syncthreads();
            const int nk = min(TILE_COLS, T - t0);
            float sc[ROWS], dp[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) sc[r] = 0.0f, dp[r] = 0.0f;
            const float *kr = Ks + lane * ks, *vr = Vs + lane * ks;
            for (int d = 0; d < hd; d++) {
                float kd = kr[d], vd = vr[d];
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    sc[r] += qr[r * hd + d] * kd;
                    dp[r] += dor[r * hd + d] * vd;
                }
            }
            float p[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) p[r] = lane < nk ? expf(sc[r] * scale - L[r]) : 0.0f;
            if (pass == 0) {
#pragma unroll
                for (int r = 0; r < ROWS; r++) Dr[r] += p[r] * dp[r];  // per-lane part; summed below
                continue;
            }
            float ds[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) ds[r] = p[r] * (dp[r] - Dr[r]);
            for (int j = 0; j < nk; j++) {
                float kj[NC];
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int d = lane + 32 * c;
                    kj[c] = d < hd ? Ks[j * ks + d] : 0.0f;
                }
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    float dsj = __shfl_sync(FULL_MASK, ds[r], j);
#pragma unroll
                    for (int c = 0; c < NC; c++) acc[r][c] += dsj * kj[c];
                }
            }
        }
        if (pass == 0) {
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                Dr[r] = warp_sum(Dr[r]);
                int t = q0 + warp * ROWS + r;
                if (lane == 0 && t < T) Dvec[(size_t)bh * T + t] = Dr[r];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        int t = q0 + warp * ROWS + r;
        if (t >= T) continue;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < hd) dq[base + (size_t)t * ld + d] = acc[r][c] * scale;
        }
    }
}

// dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i P_ij (dP_ij - D_i) Q_i: the block owns a
// tile of keys (ROWS per warp), lanes stand for 32 queries at a time.
template <int NC>
__global__ void __launch_bounds__(THREADS) attn_dkdv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                                                            const float *Dvec, const float *q, const float *k,
                                                            const float *v, int T, int H, int hd, float scale) {
    extern __shared__ float sm[];
    const int qs = odd_stride(hd);
    float *Ks = sm, *Vs = Ks + TILE_ROWS * hd, *Qs = Vs + TILE_ROWS * hd, *dOs = Qs + TILE_COLS * qs;
    float *Ls = dOs + TILE_COLS * qs, *Ds = Ls + TILE_COLS;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, k0 = blockIdx.y * TILE_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t ld = (size_t)H * hd, base = (size_t)b * T * ld + (size_t)h * hd;
    load_tile(Ks, hd, k + base, ld, k0, TILE_ROWS, T, hd);
    load_tile(Vs, hd, v + base, ld, k0, TILE_ROWS, T, hd);
    const float *kr = Ks + warp * ROWS * hd, *vr = Vs + warp * ROWS * hd;
    float gk[ROWS][NC], gv[ROWS][NC];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) gk[r][c] = 0.0f, gv[r][c] = 0.0f;
    for (int i0 = 0; i0 < T; i0 += TILE_COLS) {
        __syncthreads();
        load_tile(Qs, qs, q + base, ld, i0, TILE_COLS, T, hd);
        load_tile(dOs, qs, dout + base, ld, i0, TILE_COLS, T, hd);
        if (threadIdx.x < TILE_COLS) {
            int t = i0 + threadIdx.x;
            Ls[threadIdx.x] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
            Ds[threadIdx.x] = t < T ? Dvec[(size_t)bh * T + t] : 0.0f;
        }
        __syncthreads();
        const int nq = min(TILE_COLS, T - i0);
        float sc[ROWS], dp[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) sc[r] = 0.0f, dp[r] = 0.0f;
        const float *qrow = Qs + lane * qs, *dorow = dOs + lane * qs;
        for (int d = 0; d < hd; d++) {
            float qd = qrow[d], dod = dorow[d];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                sc[r] += qd * kr[r * hd + d];
                dp[r] += dod * vr[r * hd + d];
            }
        }
        float p[ROWS], ds[ROWS];
        const float Li = Ls[lane], Di = Ds[lane];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            p[r] = lane < nq ? expf(sc[r] * scale - Li) : 0.0f;
            ds[r] = p[r] * (dp[r] - Di);
        }
        for (int i = 0; i < nq; i++) {
            float qv[NC], dov[NC];
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = lane + 32 * c;
                qv[c] = d < hd ? Qs[i * qs + d] : 0.0f;
                dov[c] = d < hd ? dOs[i * qs + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float pi = __shfl_sync(FULL_MASK, p[r], i), dsi = __shfl_sync(FULL_MASK, ds[r], i);
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    gv[r][c] += pi * dov[c];
                    gk[r][c] += dsi * qv[c];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        int t = k0 + warp * ROWS + r;
        if (t >= T) continue;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < hd) {
                dk[base + (size_t)t * ld + d] = gk[r][c] * scale;
                dv[base + (size_t)t * ld + d] = gv[r][c];
            }
        }
    }
}

static size_t state_floats(Backend *be, int B, int T, int H, int hd) { return (size_t)B * H * T; }
static size_t scratch_floats(Backend *be, int B, int T, int H, int hd) { return (size_t)B * H * T; }

// Shared memory of each kernel, in bytes.
static size_t fwd_smem(int hd) { return sizeof(float) * ((size_t)TILE_ROWS * hd + 2 * (size_t)TILE_COLS * odd_stride(hd)); }
static size_t dq_smem(int hd) { return sizeof(float) * (2 * (size_t)TILE_ROWS * hd + 2 * (size_t)TILE_COLS * odd_stride(hd)); }
static size_t dkdv_smem(int hd) {
    return sizeof(float) * (2 * (size_t)TILE_ROWS * hd + 2 * (size_t)TILE_COLS * odd_stride(hd) + 2 * TILE_COLS);
}

// Shape errors are the caller's: reported without marking the backend failed.
static int check_shape(CudaState *s, int B, int T, int H, int hd, const char *op) {
    if (cuda_failed(s)) return VIT_ERR;
    if (B < 1 || T < 1 || H < 1 || hd < 1) return vit_fail("cuda %s: bad shape B %d T %d H %d hd %d", op, B, T, H, hd);
    if (hd > MAX_HD) return vit_fail("cuda %s: head dimension %d: at most %d supported", op, hd, MAX_HD);
    if ((long long)B * H > 2147483647LL || (T + TILE_ROWS - 1) / TILE_ROWS > 65535)
        return vit_fail("cuda %s: shape B %d T %d H %d too large for one launch", op, B, T, H);
    return VIT_OK;
}

template <int NC>
static int forward_nc(CudaState *s, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                      int H, int hd) {
    size_t smem = fwd_smem(hd);
    if (cuda_allow_smem(s, attn_forward_kernel<NC>, smem, "attention_forward")) return VIT_ERR;
    dim3 grid(B * H, (T + TILE_ROWS - 1) / TILE_ROWS);  // (b, h) on x: no 65535 limit
    attn_forward_kernel<NC><<<grid, THREADS, smem, s->stream>>>(out, lse, q, k, v, T, H, hd, 1.0f / sqrtf((float)hd));
    return cuda_check_launch(s, "attention_forward");
}

template <int NC>
static int backward_nc(CudaState *s, float *dq, float *dk, float *dv, const float *dout, const float *lse, float *Dvec,
                       const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    size_t s1 = dq_smem(hd), s2 = dkdv_smem(hd);
    if (cuda_allow_smem(s, attn_dq_kernel<NC>, s1, "attention_backward") ||
        cuda_allow_smem(s, attn_dkdv_kernel<NC>, s2, "attention_backward"))
        return VIT_ERR;
    dim3 grid(B * H, (T + TILE_ROWS - 1) / TILE_ROWS);  // (b, h) on x: no 65535 limit
    float scale = 1.0f / sqrtf((float)hd);
    attn_dq_kernel<NC><<<grid, THREADS, s1, s->stream>>>(dq, Dvec, dout, lse, q, k, v, T, H, hd, scale);
    attn_dkdv_kernel<NC><<<grid, THREADS, s2, s->stream>>>(dk, dv, dout, lse, Dvec, q, k, v, T, H, hd, scale);
    return cuda_check_launch(s, "attention_backward");
}

static int attention_forward(Backend *be, float *out, float *state, float *scratch, const float *q, const float *k,
                             const float *v, int B, int T, int H, int hd) {
    CudaState *s = cuda_state(be);
    if (check_shape(s, B, T, H, hd, "attention_forward")) return VIT_ERR;
    const void *in[] = {q, k, v, out};
    if (cuda_attention_cudnn_usable(s, hd)) {
        s->attention_last = "cudnn";
        return cuda_attention_cudnn_forward(s, out, state, q, k, v, B, T, H, hd);
    }
    int simt = s->attention == CUDA_ATT_SIMT;
    s->attention_last = "mma";
    if (!simt && cuda_attention_mma_usable(s, hd, in, 4))
        return cuda_attention_mma_forward(s, out, state, q, k, v, B, T, H, hd);
    s->attention_last = "wmma";
    if (!simt && cuda_attention_tc_usable(s, hd, in, 3))
        return cuda_attention_tc_forward(s, out, state, q, k, v, B, T, H, hd);
    s->attention_last = "simt";
    switch ((hd + 31) / 32) {
    case 1: return forward_nc<1>(s, out, state, q, k, v, B, T, H, hd);
    case 2: return forward_nc<2>(s, out, state, q, k, v, B, T, H, hd);
    case 3: return forward_nc<3>(s, out, state, q, k, v, B, T, H, hd);
    default: return forward_nc<4>(s, out, state, q, k, v, B, T, H, hd);
    }
}

static int attention_backward(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                              const float *state, float *scratch, const float *q, const float *k, const float *v, int B, int T, int H,
                              int hd) {
    CudaState *s = cuda_state(be);
    if (check_shape(s, B, T, H, hd, "attention_backward")) return VIT_ERR;
    const void *in[] = {q, k, v, dout, out, dq, dk, dv};
    // Every path keeps the same state (the row log-sum-exp), so where cuDNN has no backward
    // engine (Hopper, as reported) the kernels below take over from its forward pass.
    if (cuda_attention_cudnn_usable(s, hd)) {
        int ran = cuda_attention_cudnn_backward(s, dq, dk, dv, dout, out, state, q, k, v, B, T, H, hd);
        s->attention_last = "cudnn";
        if (ran != 0) return ran == 1 ? VIT_OK : VIT_ERR;
    }
    int simt = s->attention == CUDA_ATT_SIMT;
    s->attention_last = "mma";
    if (!simt && cuda_attention_mma_usable(s, hd, in, 8))
        return cuda_attention_mma_backward(s, dq, dk, dv, dout, out, state, scratch, q, k, v, B, T, H, hd);
    s->attention_last = "wmma";
    if (!simt && cuda_attention_tc_usable(s, hd, in, 5))
        return cuda_attention_tc_backward(s, dq, dk, dv, dout, out, state, scratch, q, k, v, B, T, H, hd);
    s->attention_last = "simt";
    switch ((hd + 31) / 32) {
    case 1: return backward_nc<1>(s, dq, dk, dv, dout, state, scratch, q, k, v, B, T, H, hd);
    case 2: return backward_nc<2>(s, dq, dk, dv, dout, state, scratch, q, k, v, B, T, H, hd);
    case 3: return backward_nc<3>(s, dq, dk, dv, dout, state, scratch, q, k, v, B, T, H, hd);
    default: return backward_nc<4>(s, dq, dk, dv, dout, state, scratch, q, k, v, B, T, H, hd);
    }
}

void cuda_install_attention(Backend *be) {
    be->attention_state_floats = state_floats;
    be->attention_scratch_floats = scratch_floats;
    be->attention_forward = attention_forward;
    be->attention_backward = attention_backward;
}
