// Measures the CPU backend's matrix-product rate on the shapes of ViT-B/16 training and on a
// large square product, in GFLOP/s; the best of them is reported as the machine's ceiling.
// Build: make build/bench/gemm_ceiling
#include <stdio.h>
#include <stdlib.h>
#include "backend/backend.h"
#include "io/progress.h"

static double rate(Backend *be, int batch, int M, int N, int K, int ta, int tb, int acc) {
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N, nc = (size_t)batch * M * N;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4);
    for (size_t i = 0; i < na; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < nb; i++) B[i] = (float)(i % 5) * 0.1f;
    for (size_t i = 0; i < nc; i++) C[i] = 0;
    be->gemm(be, batch, M, N, K, A, ta, B, tb, C, NULL, 1.0f, acc);  // creates the primitive
    int reps = 0;
    double t0 = progress_now(), t;
    do {
        be->gemm(be, batch, M, N, K, A, ta, B, tb, C, NULL, 1.0f, acc);
        reps++;
    } while ((t = progress_now() - t0) < 0.5);
    free(A), free(B), free(C);
    return 2.0 * batch * M * N * K * reps / t / 1e9;
}

int main(int argc, char **argv) {
    int tokens = argc > 1 ? atoi(argv[1]) : 8 * 197;
    Backend *be = backend_cpu_create(0);
    double best = rate(be, 1, 2048, 2048, 2048, 0, 0, 0), r;
    printf("%-28s %6.1f GFLOP/s\n", "square 2048^3", best);
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
        printf("%-28s %6.1f GFLOP/s\n", s[i].what, r = rate(be, 1, s[i].M, s[i].N, s[i].K, s[i].ta, s[i].tb, s[i].acc));
        if (r > best) best = r;
    }
    printf("%-28s %6.1f GFLOP/s\n", "attn S=QK^T 96x197x197x64", rate(be, 96, 197, 197, 64, 0, 1, 0));
    printf("%-28s %6.1f GFLOP/s\n", "attn O=PV   96x197x64x197", rate(be, 96, 197, 64, 197, 0, 0, 0));
    printf("%-28s %6.1f GFLOP/s\n", "attn dV=P^T dO", rate(be, 96, 197, 64, 197, 1, 0, 0));
    printf("ceiling: %.1f GFLOP/s\n", best);
    be->destroy(be);
    return 0;
}
