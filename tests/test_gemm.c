// The CPU backend's matrix products in bf16 mode, on both paths: oneDNN's native bf16
// kernels (where the CPU has AVX512-BF16 or AMX) and the fp32 kernels on rounded operands
// (VIT_BF16_NATIVE=0). Each is checked against fp64 products of the bf16-rounded operands for
// every layout the model uses (transposes, batch, bias, alpha, accumulate, GELU epilogue),
// and the native path must be the one taken where the CPU has the instructions.
#include <stdint.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "check.h"
#include "util/rng.h"

static float *randn(size_t n, uint32_t stream, float s) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * rng_normal(7, stream, i));
    return x;
}

static double bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

// Every case on one backend; returns the largest difference from fp64, relative to the sum
// of |a||b| over the contraction (what fp32 summation error scales with).
static double run_cases(Backend *be, const char *path) {
    int cases[][9] = {  // batch, M, N, K, transA, transB, accumulate, bias, gelu
        {1, 197, 96, 64, 0, 0, 0, 1, 0},  {1, 64, 77, 197, 1, 0, 1, 0, 0}, {1, 50, 48, 130, 0, 1, 0, 0, 0},
        {3, 33, 17, 65, 0, 1, 0, 0, 0},   {2, 9, 31, 12, 1, 0, 1, 0, 0},   {1, 40, 100, 70, 0, 0, 0, 1, 1},
        {1, 300, 96, 256, 0, 1, 1, 0, 0}, {1, 5, 7, 3, 0, 0, 1, 1, 0}};
    double worst = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int bt = cases[c][0], M = cases[c][1], N = cases[c][2], K = cases[c][3], ta = cases[c][4], tb = cases[c][5],
            acc = cases[c][6], use_bias = cases[c][7], gelu = cases[c][8];
        float alpha = c == 3 ? 0.125f : 1.0f;
        float *A = randn((size_t)bt * M * K, 1 + c, 1), *B = randn((size_t)bt * K * N, 20 + c, 1),
              *C = randn((size_t)bt * M * N, 40 + c, 1), *bias = randn(N, 60 + c, 1);
        float *C0 = malloc(sizeof(float) * bt * M * N);
        memcpy(C0, C, sizeof(float) * bt * M * N);
        int rc = gelu ? be->gemm_bias_gelu(be, M, N, K, A, B, C, bias, 0)
                      : be->gemm(be, bt, M, N, K, A, ta, B, tb, C, use_bias ? bias : NULL, alpha, acc);
        double md = 0;
        for (int b = 0; b < bt; b++)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0, mag = 0;
                    for (int k = 0; k < K; k++) {
                        double a = bf16(ta ? A[(size_t)b * M * K + k * M + i] : A[(size_t)b * M * K + i * K + k]);
                        double w = bf16(tb ? B[(size_t)b * K * N + j * K + k] : B[(size_t)b * K * N + k * N + j]);
                        s += a * w, mag += fabs(a * w);
                    }
                    s *= alpha, mag *= alpha;
                    if (use_bias) s += bias[j];
                    if (gelu) s = 0.5 * s * (1 + erf(s / sqrt(2.0)));
                    if (acc) s += C0[(size_t)b * M * N + i * N + j];
                    double d = fabs(C[(size_t)b * M * N + i * N + j] - s) / (mag + 1);
                    if (!(d <= md)) md = d;
                }
        CHECK(rc == 0 && md < 1e-5, "%s: bf16 case %zu (%dx%dx%dx%d ta %d tb %d acc %d bias %d gelu %d): rel diff %g",
              path, c, bt, M, N, K, ta, tb, acc, use_bias, gelu, md);
        if (md > worst) worst = md;
        free(A), free(B), free(C), free(C0), free(bias);
    }
    return worst;
}

int main(void) {
    Backend *native = backend_cpu_create(2);
    backend_cpu_set_bf16(native, 1);
    int has_native = strstr(native->details, "native bf16") != NULL;
    if (cpu_has_avx512_bf16())
        CHECK(has_native, "the CPU has AVX512-BF16, so bf16 products run natively (%s)", native->details);
    printf("backend: %s\n", native->details);
    double d_native = run_cases(native, has_native ? "native" : "rounded (no native kernel)");

    setenv("VIT_BF16_NATIVE", "0", 1);  // read when a backend first probes
    Backend *rounded = backend_cpu_create(2);
    backend_cpu_set_bf16(rounded, 1);
    CHECK(strstr(rounded->details, "native bf16") == NULL, "VIT_BF16_NATIVE=0 keeps the fp32 kernels (%s)",
          rounded->details);
    double d_rounded = run_cases(rounded, "rounded");
    printf("largest relative differences from fp64: native %.3g, rounded %.3g\n", d_native, d_rounded);
    native->destroy(native);
    rounded->destroy(rounded);
    return check_report("gemm");
}
