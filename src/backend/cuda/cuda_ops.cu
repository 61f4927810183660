// Everything of the CUDA backend that is not a matrix product or attention. Each kernel
// mirrors its loop in src/backend/cpu/cpu_ops.c: the same formulas, sums in double where
// the CPU sums in double, and __fmul_rn/__fadd_rn where the CPU's plain float expression
// would otherwise be contracted into an fma here and round differently.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>
#include "cuda_bf16_acts.h"
#include "cuda_common.h"
#include "cuda_reduce.h"
#include "util/rng.h"

// Fixed row chunks of column reductions: partial sums per chunk, then added in order, so
// the result does not depend on scheduling (as the CPU's CPU_REDUCE_CHUNKS).
enum { CHUNKS = 64, COLS = 32, ROWS_PER = 8 };

static int chunks_for(int rows) { return rows < CHUNKS ? (rows > 0 ? rows : 1) : CHUNKS; }

#define LAUNCH_CHECK(s, op) cuda_check_launch(s, op)
#define SKIP_IF_FAILED(s) \
    do {                  \
        if ((s)->failed) return; \
    } while (0)

// ---- column sums (bias gradient) -------------------------------------------------------
// A block of 32 columns x 8 row lanes sums chunk blockIdx.y's rows [chunk_row(c), chunk_row(c+1)).
static __device__ __forceinline__ int chunk_row(int rows, int chunks, int c) {
    return (int)((long long)rows * c / chunks);
}

// Adds up the 8 row lanes' sums of column j and stores part[c][j] (every thread calls it).
static __device__ __forceinline__ void store_column_partial(double *part, double acc, int j, int cols, int c) {
    __shared__ double sh[ROWS_PER][COLS];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        double s = 0;
        for (int y = 0; y < ROWS_PER; y++) s += sh[y][threadIdx.x];
        part[(size_t)c * cols + j] = s;
    }
}

// part[c][j] = sum of x[i][j] over chunk c's rows.
__global__ void colsum_partial_kernel(double *part, const float *x, int rows, int cols, int chunks) {
    int j = blockIdx.x * COLS + threadIdx.x, c = blockIdx.y;
    double acc = 0;
    if (j < cols)
        for (int i = chunk_row(rows, chunks, c) + threadIdx.y; i < chunk_row(rows, chunks, c + 1); i += ROWS_PER)
            acc += x[(size_t)i * cols + j];
    store_column_partial(part, acc, j, cols, c);
}

// dst[j] += sum over chunks of part[c][j] (columns `cols`, partials `stride` apart per chunk).
__global__ void colsum_finish_kernel(float *dst, const double *part, int cols, int chunks, int stride) {
    CUDA_FOR(j, cols) {
        double s = 0;
        for (int c = 0; c < chunks; c++) s += part[(size_t)c * stride + j];
        dst[j] += (float)s;
    }
}

static double *reduce_buffer(CudaState *s, size_t doubles, const char *op) {
    return (double *)cuda_scratch(s, &s->reduce, &s->reduce_bytes, doubles * sizeof(double), op);
}

static void bias_backward(Backend *be, float *dbias, const float *dout, int M, int N) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (M <= 0 || N <= 0) return;
    int chunks = chunks_for(M);
    double *part = reduce_buffer(s, (size_t)chunks * N, "bias_backward");
    if (!part) return;
    colsum_partial_kernel<<<dim3((N + COLS - 1) / COLS, chunks), dim3(COLS, ROWS_PER), 0, s->stream>>>(part, dout, M, N,
                                                                                                       chunks);
    colsum_finish_kernel<<<cuda_blocks(s, N, 256), 256, 0, s->stream>>>(dbias, part, N, chunks, N);
    LAUNCH_CHECK(s, "bias_backward");
}

// ---- layernorm -------------------------------------------------------------------------
// Stores of a kernel's output: fp32 as computed, or rounded to bf16 (nearest even) where the
// output is a product's operand (the *_bf16 ops); one kernel serves both.
static __device__ __forceinline__ void put(float *p, float v) { *p = v; }
static __device__ __forceinline__ void put(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

// One warp per row; statistics in double as on the CPU.
template <typename O>
__global__ void layernorm_forward_kernel(O *out, float *mean, float *rstd, const float *inp, const float *scale,
                                         const float *bias, int rows, int C, float eps) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float *x = inp + (size_t)row * C;
    O *y = out + (size_t)row * C;
    double m = 0;
    for (int j = lane; j < C; j += 32) m += x[j];
    m = warp_sum_d(m) / C;
    double v = 0;
    for (int j = lane; j < C; j += 32) v += (x[j] - m) * (x[j] - m);
    v = warp_sum_d(v) / C;
    float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
    for (int j = lane; j < C; j += 32) put(&y[j], __fadd_rn(__fmul_rn(__fmul_rn(x[j] - mf, s), scale[j]), bias[j]));
    if (lane == 0) {
        mean[row] = mf;
        rstd[row] = s;
    }
}

static void layernorm_forward(Backend *be, float *out, float *mean, float *rstd, const float *inp, const float *scale,
                              const float *bias, int rows, int C, float eps) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0) return;
    layernorm_forward_kernel<<<(rows + 7) / 8, 256, 0, s->stream>>>(out, mean, rstd, inp, scale, bias, rows, C, eps);
    LAUNCH_CHECK(s, "layernorm_forward");
}

// dx += r * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * scale; one warp per row.
__global__ void layernorm_dx_kernel(float *dinp, const float *dout, const float *inp, const float *scale,
                                    const float *mean, const float *rstd, int rows, int C) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float *x = inp + (size_t)row * C, *dy = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    float m = mean[row], r = rstd[row];
    double sg = 0, sgx = 0;
    for (int j = lane; j < C; j += 32) {
        float xhat = __fmul_rn(x[j] - m, r), g = __fmul_rn(dy[j], scale[j]);
        sg += g;
        sgx += __fmul_rn(g, xhat);
    }
    float mg = (float)(warp_sum_d(sg) / C), mgx = (float)(warp_sum_d(sgx) / C);
    for (int j = lane; j < C; j += 32) {
        float xhat = __fmul_rn(x[j] - m, r);
        float t = __fsub_rn(__fsub_rn(__fmul_rn(dy[j], scale[j]), mg), __fmul_rn(xhat, mgx));  // CPU's order
        dx[j] = __fadd_rn(dx[j], __fmul_rn(r, t));
    }
}

// Per chunk of rows: part[c][0..C) = sum dy * xhat (dscale), part[c][C..2C) = sum dy (dbias).
__global__ void layernorm_dparams_kernel(double *part, const float *dout, const float *inp, const float *mean,
                                         const float *rstd, int rows, int C, int chunks) {
    __shared__ double sh_s[ROWS_PER][COLS], sh_b[ROWS_PER][COLS];
    int j = blockIdx.x * COLS + threadIdx.x, c = blockIdx.y;
    int r0 = chunk_row(rows, chunks, c), r1 = chunk_row(rows, chunks, c + 1);
    double as = 0, ab = 0;
    if (j < C)
        for (int i = r0 + threadIdx.y; i < r1; i += ROWS_PER) {
            float dy = dout[(size_t)i * C + j], xhat = __fmul_rn(inp[(size_t)i * C + j] - mean[i], rstd[i]);
            as += __fmul_rn(dy, xhat);
            ab += dy;
        }
    sh_s[threadIdx.y][threadIdx.x] = as;
    sh_b[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < C) {
        double ss = 0, sb = 0;
        for (int y = 0; y < ROWS_PER; y++) ss += sh_s[y][threadIdx.x], sb += sh_b[y][threadIdx.x];
        part[(size_t)c * 2 * C + j] = ss;
        part[(size_t)c * 2 * C + C + j] = sb;
    }
}

static void layernorm_backward(Backend *be, float *dinp, float *dscale, float *dbias, const float *dout,
                               const float *inp, const float *scale, const float *mean, const float *rstd, int rows,
                               int C) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0) return;
    int chunks = chunks_for(rows);
    double *part = reduce_buffer(s, (size_t)chunks * 2 * C, "layernorm_backward");
    if (!part) return;
    layernorm_dx_kernel<<<(rows + 7) / 8, 256, 0, s->stream>>>(dinp, dout, inp, scale, mean, rstd, rows, C);
    layernorm_dparams_kernel<<<dim3((C + COLS - 1) / COLS, chunks), dim3(COLS, ROWS_PER), 0, s->stream>>>(
        part, dout, inp, mean, rstd, rows, C, chunks);
    colsum_finish_kernel<<<cuda_blocks(s, C, 256), 256, 0, s->stream>>>(dscale, part, C, chunks, 2 * C);
    colsum_finish_kernel<<<cuda_blocks(s, C, 256), 256, 0, s->stream>>>(dbias, part + C, C, chunks, 2 * C);
    LAUNCH_CHECK(s, "layernorm_backward");
}

// ---- pointwise -------------------------------------------------------------------------
#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

// GELU and its derivative, shared by the plain and the fused kernels.
static __device__ __forceinline__ float gelu_value(float x, int tanh_approx) {
    if (tanh_approx) return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * INV_SQRT_2));
}

static __device__ __forceinline__ float gelu_grad(float x, int tanh_approx) {
    if (tanh_approx) {
        float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x), t = tanhf(u);
        float du = SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    float cdf = 0.5f * (1.0f + erff(x * INV_SQRT_2)), pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

__global__ void gelu_forward_kernel(float *out, const float *inp, size_t n, int tanh_approx) {
    CUDA_FOR(i, n) out[i] = gelu_value(inp[i], tanh_approx);
}

__global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx) {
    CUDA_FOR(i, n) dinp[i] = __fmul_rn(dout[i], gelu_grad(inp[i], tanh_approx));
}

static void gelu_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    gelu_forward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(out, inp, n, tanh_approx);
    LAUNCH_CHECK(s, "gelu_forward");
}

static void gelu_backward(Backend *be, float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    gelu_backward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(dinp, inp, dout, n, tanh_approx);
    LAUNCH_CHECK(s, "gelu_backward");
}

__global__ void tanh_forward_kernel(float *out, const float *inp, size_t n) { CUDA_FOR(i, n) out[i] = tanhf(inp[i]); }

__global__ void tanh_backward_kernel(float *dinp, const float *out, const float *dout, size_t n) {
    CUDA_FOR(i, n) dinp[i] = __fmul_rn(dout[i], 1.0f - __fmul_rn(out[i], out[i]));
}

static void tanh_forward(Backend *be, float *out, const float *inp, size_t n) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    tanh_forward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(out, inp, n);
    LAUNCH_CHECK(s, "tanh_forward");
}

static void tanh_backward(Backend *be, float *dinp, const float *out, const float *dout, size_t n) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    tanh_backward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(dinp, out, dout, n);
    LAUNCH_CHECK(s, "tanh_backward");
}

// One Philox call per group of four elements, as rng_keep and the CPU loop: the masks are
// identical on both devices.
__global__ void dropout_kernel(float *out, const float *inp, size_t n, float keep, float inv, uint64_t seed,
                               uint32_t step, uint32_t site) {
    size_t groups = (n + 3) / 4;
    CUDA_FOR(g, groups) {
        Philox4 r = philox4x32(seed, (uint32_t)g, (uint32_t)(g >> 32), site, step);
        for (int k = 0; k < 4; k++) {
            size_t i = 4 * g + k;
            if (i < n) out[i] = rng_u01(r.v[k]) < keep ? __fmul_rn(inp[i], inv) : 0.0f;
        }
    }
}

static void dropout_apply(Backend *be, float *out, const float *inp, size_t n, float rate, uint64_t seed,
                          uint32_t step, uint32_t site, const char *op) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    float keep = 1.0f - rate, inv = 1.0f / keep;  // computed on the host exactly as the CPU does
    dropout_kernel<<<cuda_blocks(s, (n + 3) / 4, 256), 256, 0, s->stream>>>(out, inp, n, keep, inv, seed, step, site);
    LAUNCH_CHECK(s, op);
}

static void dropout_forward(Backend *be, float *out, const float *inp, size_t n, float rate, uint64_t seed,
                            uint32_t step, uint32_t site) {
    dropout_apply(be, out, inp, n, rate, seed, step, site, "dropout_forward");
}

static void dropout_backward(Backend *be, float *dinp, const float *dout, size_t n, float rate, uint64_t seed,
                             uint32_t step, uint32_t site) {
    dropout_apply(be, dinp, dout, n, rate, seed, step, site, "dropout_backward");
}

// ---- fused ops -------------------------------------------------------------------------
// The fused kernels of backend.h, each equal to its composition of the kernels above: the
// mask of element i is rng_keep(seed, step, site, i), as dropout_kernel draws it.
static __device__ __forceinline__ float dropped(float y, size_t i, float keep, float inv, uint64_t seed,
                                                uint32_t step, uint32_t site) {
    return rng_keep(seed, step, site, i, keep) ? __fmul_rn(y, inv) : 0.0f;
}

// sum = x + dropout(y), then LayerNorm of the row when out is set; one warp per row, the
// statistics in double as layernorm_forward_kernel (each lane re-reads only what it wrote).
template <typename O>
__global__ void residual_layernorm_kernel(float *sum, O *out, float *mean, float *rstd, const float *x,
                                          const float *y, const float *scale, const float *bias, int rows, int C,
                                          float eps, float rate, float keep, float inv, uint64_t seed, uint32_t step,
                                          uint32_t site) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    size_t base = (size_t)row * C;
    double m = 0;
    for (int j = lane; j < C; j += 32) {
        size_t i = base + j;
        float yv = rate > 0 ? dropped(y[i], i, keep, inv, seed, step, site) : y[i];
        float sv = __fadd_rn(x[i], yv);
        sum[i] = sv;
        m += sv;
    }
    if (!out) return;
    const float *sr = sum + base;
    m = warp_sum_d(m) / C;
    double v = 0;
    for (int j = lane; j < C; j += 32) v += (sr[j] - m) * (sr[j] - m);
    v = warp_sum_d(v) / C;
    float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
    O *o = out + base;
    for (int j = lane; j < C; j += 32) put(&o[j], __fadd_rn(__fmul_rn(__fmul_rn(sr[j] - mf, s), scale[j]), bias[j]));
    if (lane == 0) {
        mean[row] = mf;
        rstd[row] = s;
    }
}

static void residual_layernorm_forward(Backend *be, float *sum, float *out, float *mean, float *rstd, const float *x,
                                       const float *y, const float *scale, const float *bias, int rows, int C,
                                       float eps, float rate, uint64_t seed, uint32_t step, uint32_t site) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0) return;
    float keep = 1.0f - rate, inv = 1.0f / keep;  // on the host, as the CPU computes them
    residual_layernorm_kernel<<<(rows + 7) / 8, 256, 0, s->stream>>>(sum, out, mean, rstd, x, y, scale, bias, rows, C,
                                                                     eps, rate, keep, inv, seed, step, site);
    LAUNCH_CHECK(s, "residual_layernorm_forward");
}

template <typename O>
__global__ void gelu_dropout_forward_kernel(O *out, const float *inp, size_t n, int tanh_approx, float keep,
                                            float inv, uint64_t seed, uint32_t step, uint32_t site) {
    CUDA_FOR(i, n) put(&out[i], dropped(gelu_value(inp[i], tanh_approx), i, keep, inv, seed, step, site));
}

static void gelu_dropout_forward(Backend *be, float *out, const float *inp, size_t n, int tanh_approx, float rate,
                                 uint64_t seed, uint32_t step, uint32_t site) {
    if (rate <= 0) {
        gelu_forward(be, out, inp, n, tanh_approx);
        return;
    }
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    float keep = 1.0f - rate, inv = 1.0f / keep;
    gelu_dropout_forward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(out, inp, n, tanh_approx, keep, inv,
                                                                               seed, step, site);
    LAUNCH_CHECK(s, "gelu_dropout_forward");
}

// dinp = gelu'(x) * dropout(dout), with the per-chunk column sums of colsum_partial_kernel
// taken on the way (same blocks, same order: dbias equals bias_backward's).
__global__ void gelu_dropout_backward_kernel(double *part, float *dinp, const float *inp, const float *dout, int rows,
                                             int cols, int chunks, int tanh_approx, float rate, float keep, float inv,
                                             uint64_t seed, uint32_t step, uint32_t site) {
    int j = blockIdx.x * COLS + threadIdx.x, c = blockIdx.y;
    double acc = 0;
    if (j < cols)
        for (int r = chunk_row(rows, chunks, c) + threadIdx.y; r < chunk_row(rows, chunks, c + 1); r += ROWS_PER) {
            size_t i = (size_t)r * cols + j;
            float d = rate > 0 ? dropped(dout[i], i, keep, inv, seed, step, site) : dout[i];
            d = __fmul_rn(d, gelu_grad(inp[i], tanh_approx));
            dinp[i] = d;
            acc += d;
        }
    store_column_partial(part, acc, j, cols, c);
}

static void gelu_dropout_backward(Backend *be, float *dinp, float *dbias, const float *inp, const float *dout, int rows,
                                  int cols, int tanh_approx, float rate, uint64_t seed, uint32_t step, uint32_t site) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0 || cols <= 0) return;
    int chunks = chunks_for(rows);
    double *part = reduce_buffer(s, (size_t)chunks * cols, "gelu_dropout_backward");
    if (!part) return;
    float keep = 1.0f - rate, inv = 1.0f / keep;
    gelu_dropout_backward_kernel<<<dim3((cols + COLS - 1) / COLS, chunks), dim3(COLS, ROWS_PER), 0, s->stream>>>(
        part, dinp, inp, dout, rows, cols, chunks, tanh_approx, rate, keep, inv, seed, step, site);
    colsum_finish_kernel<<<cuda_blocks(s, cols, 256), 256, 0, s->stream>>>(dbias, part, cols, chunks, cols);
    LAUNCH_CHECK(s, "gelu_dropout_backward");
}

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    CUDA_FOR(i, n) out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float *x, size_t n, float sc) { CUDA_FOR(i, n) x[i] *= sc; }

static void add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    add_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(out, a, b, n);
    LAUNCH_CHECK(s, "add");
}

static void scale(Backend *be, float *x, size_t n, float sc) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    scale_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(x, n, sc);
    LAUNCH_CHECK(s, "scale");
}

// ---- sum of squares --------------------------------------------------------------------
enum { SS_BLOCKS = 1024, SS_THREADS = 256 };

__global__ void sum_squares_partial_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[32];
    double acc = 0;
    CUDA_FOR(i, n) acc += (double)x[i] * x[i];
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double *out, const double *part, int n) {
    __shared__ double sh[32];
    double acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += part[i];
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) *out = acc;
}

static double sum_squares(Backend *be, const float *x, size_t n) {
    CudaState *s = cuda_state(be);
    if (s->failed) return NAN;
    if (!n) return 0.0;
    double *part = reduce_buffer(s, SS_BLOCKS + 1, "sum_squares");
    if (!part) return NAN;
    // A fixed grid: the same partition, hence the same rounding, on every call.
    sum_squares_partial_kernel<<<SS_BLOCKS, SS_THREADS, 0, s->stream>>>(part, x, n);
    sum_partials_kernel<<<1, SS_THREADS, 0, s->stream>>>(part + SS_BLOCKS, part, SS_BLOCKS);
    if (LAUNCH_CHECK(s, "sum_squares")) return NAN;
    double r = NAN;
    if (cuda_check(s, cudaMemcpyAsync(&r, part + SS_BLOCKS, sizeof r, cudaMemcpyDeviceToHost, s->stream), "sum_squares") ||
        cuda_check(s, cudaStreamSynchronize(s->stream), "sum_squares"))
        return NAN;
    return r;
}

// ---- image and token plumbing ----------------------------------------------------------
__global__ void patchify_kernel(float *patches, const uint8_t *images, int B, int S, int C, int P, float k) {
    int G = S / P, len = P * P * C;
    size_t n = (size_t)B * G * G * len;
    CUDA_FOR(idx, n) {
        int e = (int)(idx % len);
        size_t bg = idx / len;
        int g = (int)(bg % ((size_t)G * G)), b = (int)(bg / ((size_t)G * G));
        int gy = g / G, gx = g % G, py = e / (P * C), rest = e % (P * C);
        uint8_t v = images[(((size_t)b * S + gy * P + py) * S + gx * P) * C + rest];
        patches[idx] = __fsub_rn(__fmul_rn((float)v, k), 1.0f);
    }
}

static void patchify(Backend *be, float *patches, const uint8_t *images, int B, int S, int C, int P) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    int G = S / P;
    size_t n = (size_t)B * G * G * P * P * C;
    if (!n) return;
    patchify_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(patches, images, B, S, C, P, 2.0f / 255.0f);
    LAUNCH_CHECK(s, "patchify");
}

__global__ void tokens_forward_kernel(float *x, const float *emb, const float *cls, const float *pos, int B, int T,
                                      int D) {
    size_t n = (size_t)B * T * D;
    CUDA_FOR(idx, n) {
        int j = (int)(idx % D);
        size_t bt = idx / D;
        int t = (int)(bt % T), b = (int)(bt / T);
        float src = t == 0 ? cls[j] : emb[((size_t)b * (T - 1) + t - 1) * D + j];
        x[idx] = src + pos[(size_t)t * D + j];
    }
}

static void tokens_forward(Backend *be, float *x, const float *emb, const float *cls, const float *pos, int B, int T,
                           int D) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    size_t n = (size_t)B * T * D;
    if (!n) return;
    tokens_forward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>(x, emb, cls, pos, B, T, D);
    LAUNCH_CHECK(s, "tokens_forward");
}

__global__ void tokens_demb_kernel(float *demb, const float *dx, int B, int T, int D) {
    size_t n = (size_t)B * (T - 1) * D;
    CUDA_FOR(idx, n) {
        int j = (int)(idx % D);
        size_t bt = idx / D;
        int t = (int)(bt % (T - 1)) + 1, b = (int)(bt / (T - 1));
        demb[idx] = dx[((size_t)b * T + t) * D + j];
    }
}

// dpos[t] += sum_b dx[b, t] in a fixed order over b; dcls gets the t = 0 row.
__global__ void tokens_dpos_kernel(float *dcls, float *dpos, const float *dx, int B, int T, int D) {
    size_t n = (size_t)T * D;
    CUDA_FOR(idx, n) {
        int j = (int)(idx % D), t = (int)(idx / D);
        double sum = 0;
        for (int b = 0; b < B; b++) sum += dx[((size_t)b * T + t) * D + j];
        dpos[idx] += (float)sum;
        if (t == 0) dcls[j] += (float)sum;
    }
}

static void tokens_backward(Backend *be, float *demb, float *dcls, float *dpos, const float *dx, int B, int T, int D) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if ((size_t)B * T * D == 0) return;
    if (T > 1)
        tokens_demb_kernel<<<cuda_blocks(s, (size_t)B * (T - 1) * D, 256), 256, 0, s->stream>>>(demb, dx, B, T, D);
    tokens_dpos_kernel<<<cuda_blocks(s, (size_t)T * D, 256), 256, 0, s->stream>>>(dcls, dpos, dx, B, T, D);
    LAUNCH_CHECK(s, "tokens_backward");
}

__global__ void gather_cls_kernel(float *out, const float *x, int B, int T, int D) {
    size_t n = (size_t)B * D;
    CUDA_FOR(idx, n) out[idx] = x[(idx / D) * T * D + idx % D];
}

__global__ void scatter_cls_kernel(float *dx, const float *dcls, int B, int T, int D) {
    size_t n = (size_t)B * T * D;
    CUDA_FOR(idx, n) {
        size_t b = idx / ((size_t)T * D), r = idx % ((size_t)T * D);
        dx[idx] = r < (size_t)D ? dcls[b * D + r] : 0.0f;
    }
}

static void gather_cls(Backend *be, float *out, const float *x, int B, int T, int D) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if ((size_t)B * D == 0) return;
    gather_cls_kernel<<<cuda_blocks(s, (size_t)B * D, 256), 256, 0, s->stream>>>(out, x, B, T, D);
    LAUNCH_CHECK(s, "gather_cls");
}

static void scatter_cls(Backend *be, float *dx, const float *dcls, int B, int T, int D) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if ((size_t)B * T * D == 0) return;
    scatter_cls_kernel<<<cuda_blocks(s, (size_t)B * T * D, 256), 256, 0, s->stream>>>(dx, dcls, B, T, D);
    LAUNCH_CHECK(s, "scatter_cls");
}

// ---- softmax cross-entropy -------------------------------------------------------------
// One block per sample; double precision as the CPU loop.
__global__ void xent_forward_kernel(float *probs, float *losses, const float *logits, const int *labels, int K,
                                    float smoothing) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int b = blockIdx.x, label = labels[b];
    const float *z = logits + (size_t)b * K;
    float *p = probs + (size_t)b * K;
    float mxf = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mxf = fmaxf(mxf, z[k]);
    double mx = block_max(mxf, shf);
    double sum = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += exp(z[k] - mx);
    double lse = mx + log(block_sum_d(sum, shd));
    double loss = 0;
    float uniform = smoothing / K;  // float, as the CPU's `smoothing / K`
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        double logp = z[k] - lse;
        p[k] = (float)exp(logp);
        double target = uniform + (k == label ? 1.0 - smoothing : 0.0);
        loss -= target * logp;
    }
    loss = block_sum_d(loss, shd);
    if (threadIdx.x == 0) losses[b] = (float)loss;
}

__global__ void xent_backward_kernel(float *dlogits, const float *probs, const int *labels, int B, int K,
                                     float smoothing, float sc) {
    size_t n = (size_t)B * K;
    float uniform = smoothing / K, hit = 1.0f - smoothing;
    CUDA_FOR(idx, n) {
        int k = (int)(idx % K), b = (int)(idx / K);
        float target = uniform + (k == labels[b] ? hit : 0.0f);
        dlogits[idx] = sc * (probs[idx] - target);
    }
}

static void xent_forward(Backend *be, float *probs, float *losses, const float *logits, const int *labels, int B,
                         int K, float smoothing) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (B <= 0 || K <= 0) return;
    xent_forward_kernel<<<B, 256, 0, s->stream>>>(probs, losses, logits, labels, K, smoothing);
    LAUNCH_CHECK(s, "xent_forward");
}

static void xent_backward(Backend *be, float *dlogits, const float *probs, const int *labels, int B, int K,
                          float smoothing, float sc) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (B <= 0 || K <= 0) return;
    xent_backward_kernel<<<cuda_blocks(s, (size_t)B * K, 256), 256, 0, s->stream>>>(dlogits, probs, labels, B, K,
                                                                                   smoothing, sc);
    LAUNCH_CHECK(s, "xent_backward");
}

// ---- bf16 activations (VIT_CUDA_BF16_ACTS=1; backend.h) -------------------------------------
// The same kernels as the fp32 ops with bf16 stores, so each output is the fp32 op's rounded.

static void layernorm_forward_bf16(Backend *be, uint16_t *out, float *mean, float *rstd, const float *inp,
                                   const float *scale, const float *bias, int rows, int C, float eps) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0) return;
    layernorm_forward_kernel<<<(rows + 7) / 8, 256, 0, s->stream>>>((__nv_bfloat16 *)out, mean, rstd, inp, scale, bias,
                                                                    rows, C, eps);
    LAUNCH_CHECK(s, "layernorm_forward_bf16");
}

static void residual_layernorm_forward_bf16(Backend *be, float *sum, uint16_t *out, float *mean, float *rstd,
                                            const float *x, const float *y, const float *scale, const float *bias,
                                            int rows, int C, float eps, float rate, uint64_t seed, uint32_t step,
                                            uint32_t site) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (rows <= 0) return;
    float keep = 1.0f - rate, inv = 1.0f / keep;
    residual_layernorm_kernel<<<(rows + 7) / 8, 256, 0, s->stream>>>(sum, (__nv_bfloat16 *)out, mean, rstd, x, y, scale,
                                                                     bias, rows, C, eps, rate, keep, inv, seed, step,
                                                                     site);
    LAUNCH_CHECK(s, "residual_layernorm_forward_bf16");
}

// Rate 0 keeps every element (rng_keep's u < 1) and scales by exactly 1: GELU alone.
static void gelu_dropout_forward_bf16(Backend *be, uint16_t *out, const float *inp, size_t n, int tanh_approx,
                                      float rate, uint64_t seed, uint32_t step, uint32_t site) {
    CudaState *s = cuda_state(be);
    SKIP_IF_FAILED(s);
    if (!n) return;
    float keep = rate > 0 ? 1.0f - rate : 1.0f, inv = 1.0f / keep;
    gelu_dropout_forward_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)out, inp, n,
                                                                               tanh_approx, keep, inv, seed, step,
                                                                               site);
    LAUNCH_CHECK(s, "gelu_dropout_forward_bf16");
}

__global__ void round_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    CUDA_FOR(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

// The attention kernels write fp32 (what their backward pass reads); the bf16 copy is one
// more pass over out here. Writing both from the kernels' epilogues is what remains.
static int attention_forward_bf16(Backend *be, float *out, uint16_t *out_bf16, float *state, float *scratch,
                                  const float *q, const float *k, const float *v, int B, int T, int H, int hd) {
    CudaState *s = cuda_state(be);
    if (be->attention_forward(be, out, state, scratch, q, k, v, B, T, H, hd)) return VIT_ERR;
    size_t n = (size_t)B * T * H * hd;
    if (!n) return VIT_OK;
    round_bf16_kernel<<<cuda_blocks(s, n, 256), 256, 0, s->stream>>>((__nv_bfloat16 *)out_bf16, out, n);
    return cuda_check_launch(s, "attention_forward_bf16");
}

int cuda_install_bf16_acts(Backend *be) {
    CudaState *s = cuda_state(be);
    const char *sw = getenv("VIT_CUDA_BF16_ACTS");
    if (sw && *sw && strcmp(sw, "0") && strcmp(sw, "1")) return vit_fail("VIT_CUDA_BF16_ACTS=%s: expected 0 or 1", sw);
    if (!sw || strcmp(sw, "1") || s->precision != CUDA_BF16) return VIT_OK;  // fp32 and tf32 products: no bf16
    be->gemm_bf16 = cuda_gemm_bf16;
    be->layernorm_forward_bf16 = layernorm_forward_bf16;
    be->residual_layernorm_forward_bf16 = residual_layernorm_forward_bf16;
    be->gelu_dropout_forward_bf16 = gelu_dropout_forward_bf16;
    be->attention_forward_bf16 = attention_forward_bf16;
    size_t used = strlen(s->details);
    snprintf(s->details + used, sizeof s->details - used, ", bf16 activations");
    return VIT_OK;
}

void cuda_install_ops(Backend *be) {
    be->bias_backward = bias_backward;
    be->layernorm_forward = layernorm_forward;
    be->layernorm_backward = layernorm_backward;
    be->gelu_forward = gelu_forward;
    be->gelu_backward = gelu_backward;
    be->tanh_forward = tanh_forward;
    be->tanh_backward = tanh_backward;
    be->dropout_forward = dropout_forward;
    be->dropout_backward = dropout_backward;
    be->add = add;
    be->residual_layernorm_forward = residual_layernorm_forward;
    be->gelu_dropout_forward = gelu_dropout_forward;
    be->gelu_dropout_backward = gelu_dropout_backward;
    be->scale = scale;
    be->sum_squares = sum_squares;
    be->patchify = patchify;
    be->tokens_forward = tokens_forward;
    be->tokens_backward = tokens_backward;
    be->gather_cls = gather_cls;
    be->scatter_cls = scatter_cls;
    be->xent_forward = xent_forward;
    be->xent_backward = xent_backward;
}
