// AVX-512 kernels of the CPU backend's elementwise and row ops (cpu_ops.c). Built with
// target attributes, not compile flags: call them only where cpu_isa() is CPU_ISA_AVX512
// (cpu_avx512_to_bf16_native also needs cpu_has_avx512_bf16()). cpu_ops.c keeps the OpenMP
// loops and the fixed row chunks; these run one span, row or chunk on the calling thread.
//
// Same bits as the portable loops: dropout masks (the same Philox draws), GELU with exact
// erf (the same operations in the same order, no FMA), the bf16 conversions, the sums and
// column partials except those noted. Not the same bits: the per-row double sums of
// LayerNorm (mean, variance; backward's two row means) are added in 8-lane partials, and
// GELU's tanh form is x * sigmoid(2u) with cpu_expf instead of libm's tanhf.
#pragma once
#include <stddef.h>
#include <stdint.h>

// out[k] = in[k] / keep or +0 for elements i0 + k, k < len, by the Philox mask of rng_keep.
void cpu_avx512_dropout(float *out, const float *in, size_t i0, size_t len, float keep, float inv, uint64_t seed,
                        uint32_t step, uint32_t site);
void cpu_avx512_gelu_forward(float *out, const float *in, size_t n, int tanh_approx);
// dinp = dout * GELU'(inp); dinp may alias dout.
void cpu_avx512_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int tanh_approx);
// Elements i0 .. i0 + len: dropout(GELU(in)) (rate > 0).
void cpu_avx512_gelu_dropout_forward(float *out, const float *in, size_t i0, size_t len, int tanh_approx, float keep,
                                     float inv, uint64_t seed, uint32_t step, uint32_t site);
// Rows r0 .. r1 of gelu_dropout_backward: dinp (may alias dout) and the column sums added to
// part[0 .. cols) in row order. rate 0: no dropout.
void cpu_avx512_gelu_dropout_backward_rows(float *dinp, double *part, const float *inp, const float *dout, int r0,
                                           int r1, int cols, int tanh_approx, float rate, uint64_t seed,
                                           uint32_t step, uint32_t site);
// part[j] += x[i][j] for rows r0 .. r1, in row order.
void cpu_avx512_column_sums_rows(double *part, const float *x, int r0, int r1, int cols);
void cpu_avx512_layernorm_row(float *y, float *mean, float *rstd, const float *x, const float *scale,
                              const float *bias, int C, float eps);
// Rows r0 .. r1 of layernorm_backward: dinp += and the dscale, dbias partials ps, pb +=.
void cpu_avx512_layernorm_backward_rows(float *dinp, double *ps, double *pb, const float *dout, const float *inp,
                                        const float *scale, const float *mean, const float *rstd, int r0, int r1,
                                        int C);
// sum = x + dropout(y) over one row of C elements starting at element `at` (rate 0: x + y).
void cpu_avx512_residual_row(float *sum, const float *x, const float *y, size_t at, int C, float rate,
                             uint64_t seed, uint32_t step, uint32_t site);
void cpu_avx512_to_bf16(uint16_t *dst, const float *src, size_t n);
// The same with vcvtneps2bf16 (AVX512-BF16), denormal inputs fixed up to round as above.
void cpu_avx512_to_bf16_native(uint16_t *dst, const float *src, size_t n);
void cpu_avx512_from_bf16(float *dst, const uint16_t *src, size_t n);
