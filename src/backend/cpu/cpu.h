// Internal declarations shared by the CPU backend's files.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "backend/backend.h"

typedef struct GemmCache GemmCache;

typedef struct {
    int threads;
    GemmCache *gemm;
    double *partials;        // per-chunk partial sums for deterministic reductions
    size_t partials_floats;  // capacity in doubles
    int bf16;                // matrix products on bf16-rounded operands (backend_cpu_set_bf16)
    char failure[256];       // first failure of a void op, latched (backend.h's error model)
    char details[192];       // Backend.details
} CpuState;

// Reductions split rows into this many fixed chunks and add the chunk sums in order, so
// results are the same for any thread count.
enum { CPU_REDUCE_CHUNKS = 64 };

GemmCache *cpu_gemm_cache_create(void);
void cpu_gemm_cache_destroy(GemmCache *c);
int cpu_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
             int transB, float *C, const float *bias, float alpha, int accumulate);
// The matrix library, version, kernel and bf16 mode, e.g. "oneDNN 3.2.0 (brg:avx512_core, native bf16)".
const char *cpu_gemm_library(GemmCache *c);
// C = op(A) op(B) on bf16 operands (bit patterns), fp32 result, through oneDNN's native bf16
// kernel; VIT_ERR where it has none for this CPU (for measuring the bf16 ceiling).
int cpu_gemm_bf16(Backend *be, int M, int N, int K, const uint16_t *A, int transA, const uint16_t *B, int transB,
                  float *C);
int cpu_gemm_bias_gelu(Backend *be, int M, int N, int K, const float *A, const float *B, float *C, const float *bias,
                       int tanh_approx);

// Scratch of n doubles for reductions; grows once, never shrinks (no allocation per step
// after the first). NULL when it cannot grow: the failure is latched (cpu_failed).
double *cpu_partials(Backend *be, size_t n);
// VIT_ERR re-raising the first latched failure of a void op, else VIT_OK. Every int-returning
// op calls it first.
int cpu_failed(Backend *be);
// n NaNs: what a void op that could not run leaves in its outputs.
void cpu_fill_nan(float *x, size_t n);

void cpu_install_ops(Backend *be);
// drop_path, mix_images, xent_mix_forward/backward (cpu_regularize.c).
void cpu_install_regularize(Backend *be);
void cpu_install_attention(Backend *be);
// Attention products through dnnl_sgemm instead of the AVX2/FMA kernel (for tests; CPUs
// without AVX2/FMA always take it). Process-wide; 0 restores the default.
void cpu_attention_use_sgemm(int on);
void cpu_install_optimizer(Backend *be);
