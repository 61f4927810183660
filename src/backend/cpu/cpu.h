// Internal declarations shared by the CPU backend's files.
#pragma once
#include <stddef.h>
#include "backend/backend.h"

typedef struct GemmCache GemmCache;

typedef struct {
    int threads;
    GemmCache *gemm;
    double *partials;        // per-chunk partial sums for deterministic reductions
    size_t partials_floats;  // capacity in doubles
    int bf16;                // matrix products on bf16-rounded operands (backend_cpu_set_bf16)
} CpuState;

// Reductions split rows into this many fixed chunks and add the chunk sums in order, so
// results are the same for any thread count.
enum { CPU_REDUCE_CHUNKS = 64 };

GemmCache *cpu_gemm_cache_create(void);
void cpu_gemm_cache_destroy(GemmCache *c);
int cpu_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
             int transB, float *C, const float *bias, float alpha, int accumulate);
int cpu_gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C, const float *bias,
                       int tanh_approx);

// Scratch of n doubles for reductions; grows once, never shrinks (no allocation per step
// after the first).
double *cpu_partials(Backend *be, size_t n);

void cpu_install_ops(Backend *be);
void cpu_install_attention(Backend *be);
// Attention products through dnnl_sgemm instead of the AVX2/FMA kernel (for tests; CPUs
// without AVX2/FMA always take it). Process-wide; 0 restores the default.
void cpu_attention_use_sgemm(int on);
void cpu_install_optimizer(Backend *be);
