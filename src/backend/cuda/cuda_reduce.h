// Warp and block reductions shared by the CUDA kernels (header-only: each .cu is compiled
// on its own, without relocatable device code).
#pragma once
#include <cuda_runtime.h>

static const unsigned FULL_MASK = 0xffffffffu;

static __device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    return x;
}

static __device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    return x;
}

static __device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o));
    return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `sh` holds 32 doubles. The order is fixed, so results repeat exactly.
static __device__ inline double block_sum_d(double x, double *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_sum_d(x);
    __syncthreads();  // sh may still be read from a previous call
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    x = lane < warps ? sh[lane] : 0.0;
    return warp_sum_d(x);
}

static __device__ inline float block_max(float x, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    x = lane < warps ? sh[lane] : -INFINITY;
    return warp_max(x);
}
