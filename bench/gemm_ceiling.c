// Measures the CPU backend's matrix-product rate on the shapes of ViT-B/16 training and on a
// large square product, in GFLOP/s; the best of them is reported as the machine's ceiling.
// Then oneDNN's native bf16 matmul (bf16 operands, fp32 result) on a 2048^3 product, where the
// CPU has one (AVX512-BF16, AMX; oneDNN 2.6 has none for AVX2): "bf16 ceiling: ...".
// Build: make build/bench/gemm_ceiling
#include <stdio.h>
#include <stdlib.h>
#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "util/clock.h"
#include "util/status.h"

static double rate(Backend *be, int batch, int M, int N, int K, int ta, int tb, int acc) {
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N, nc = (size_t)batch * M * N;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4);
    for (size_t i = 0; i < na; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < nb; i++) B[i] = (float)(i % 5) * 0.1f;
    for (size_t i = 0; i < nc; i++) C[i] = 0;
    be->gemm(be, batch, M, N, K, A, ta, B, tb, C, NULL, 1.0f, acc);  // creates the primitive
    int reps = 0;
    double t0 = clock_seconds(), t;
    do {
        be->gemm(be, batch, M, N, K, A, ta, B, tb, C, NULL, 1.0f, acc);
        reps++;
    } while ((t = clock_seconds() - t0) < 0.5);
    free(A), free(B), free(C);
    return 2.0 * batch * M * N * K * reps / t / 1e9;
}

// The native bf16 matmul rate (bf16 operands, fp32 result) on an n^3 product, or 0 where
// oneDNN has no native bf16 kernel for this CPU.
static double bf16_rate(Backend *be, int n) {
    size_t nn = (size_t)n * n;
    uint16_t *A = malloc(nn * 2), *B = malloc(nn * 2);
    float *C = malloc(nn * 4);
    for (size_t i = 0; i < nn; i++) A[i] = B[i] = 0x3f80;  // 1.0
    double r = 0;
    if (cpu_gemm_bf16(be, n, n, n, A, 0, B, 0, C) == VIT_OK) {
        int reps = 0;
        double t0 = clock_seconds(), t;
        do {
            cpu_gemm_bf16(be, n, n, n, A, 0, B, 0, C);
            reps++;
        } while ((t = clock_seconds() - t0) < 0.5);
        r = 2.0 * n * n * (double)n * reps / t / 1e9;
    }
    free(A), free(B), free(C);
    return r;
}

// The eight ViT-B/16 training product shapes at `tokens` rows, then attention's batched ones;
// returns the best rate seen.
static double shapes(Backend *be, int tokens, double best, double ceiling) {
    struct { const char *what; int M, N, K, ta, tb, acc; } s[] = {
        {"qkv/out fwd  N x 768 x 768", tokens, 768, 768, 0, 0, 0},
        {"fc1 fwd      N x 3072 x 768", tokens, 3072, 768, 0, 0, 0},
        {"fc2 fwd      N x 768 x 3072", tokens, 768, 3072, 0, 0, 0},
        {"dX  = dY W^T N x 768 x 3072", tokens, 768, 3072, 0, 1, 0},
        {"dX  = dY W^T N x 3072 x 768", tokens, 3072, 768, 0, 1, 0},
        {"dW += X^T dY 768 x 3072 x N", 768, 3072, tokens, 1, 0, 1},
        {"dW += X^T dY 3072 x 768 x N", 3072, 768, tokens, 1, 0, 1},
        {"dW += X^T dY 768 x 768 x N", 768, 768, tokens, 1, 0, 1},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        double r = rate(be, 1, s[i].M, s[i].N, s[i].K, s[i].ta, s[i].tb, s[i].acc);
        printf("  %-28s N=%-5d %6.1f GFLOP/s  %3.0f%% of square\n", s[i].what, tokens, r, 100 * r / ceiling);
        if (r > best) best = r;
    }
    return best;
}

int main(int argc, char **argv) {
    int tokens = argc > 1 ? atoi(argv[1]) : 8 * 197;
    Backend *be = backend_cpu_create(0);
    if (!be) {
        fprintf(stderr, "gemm_ceiling: %s\n", vit_error());
        return 1;
    }
    printf("library: %s\n", be->details);
    for (int bf16 = 0; bf16 <= 1; bf16++) {
        // bf16 through the backend: operands rounded and converted on every call, as in training
        backend_cpu_set_bf16(be, bf16);
        double square = rate(be, 1, 2048, 2048, 2048, 0, 0, 0);
        printf("%s, through the backend:\n  %-28s %6.1f GFLOP/s\n", bf16 ? "bf16" : "fp32", "square 2048^3", square);
        double best = shapes(be, tokens, square, square);
        best = shapes(be, 8 * tokens, best, square);
        printf("  %-28s %6.1f GFLOP/s\n", "attn S=QK^T 96x197x197x64", rate(be, 96, 197, 197, 64, 0, 1, 0));
        printf("  %-28s %6.1f GFLOP/s\n", "attn O=PV   96x197x64x197", rate(be, 96, 197, 64, 197, 0, 0, 0));
        if (!bf16) printf("ceiling: %.1f GFLOP/s\n", best);
    }
    double b16 = bf16_rate(be, 2048);
    if (b16 > 0)
        printf("bf16 ceiling: %.1f GFLOP/s (native bf16 matmul 2048^3, operands already bf16)\n", b16);
    else
        printf("bf16 ceiling: none (oneDNN has no native bf16 matmul for this CPU)\n");
    be->destroy(be);
    return 0;
}
