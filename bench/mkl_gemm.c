// MKL's single and bf16 matrix products on the ViT-B/16 training shapes, for choosing the
// matrix library by measurement (bench/matrix_libraries.sh). MKL is loaded at run time from
// the libmkl_rt.so.N given on the command line, with its GNU OpenMP threading layer: the
// OpenMP runtime vit uses (one per process). Not linked into vit.
// Build: cc -O2 -fopenmp -Isrc bench/mkl_gemm.c src/util/clock.c -ldl -o build/bench/mkl_gemm
// usage: mkl_gemm /path/to/libmkl_rt.so.3 [tokens]
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "util/clock.h"

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, THREADING_GNU = 3 };
typedef void (*Sgemm)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                      int);
typedef void (*Bgemm)(int, int, int, int, int, int, float, const uint16_t *, int, const uint16_t *, int, float,
                      float *, int);

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: mkl_gemm /path/to/libmkl_rt.so.N [tokens]\n");
        return 2;
    }
    void *mkl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!mkl) {
        fprintf(stderr, "mkl_gemm: %s\n", dlerror());
        return 1;
    }
    int tokens = argc > 2 ? atoi(argv[2]) : 8 * 197;
    int (*set_layer)(int) = (int (*)(int))dlsym(mkl, "MKL_Set_Threading_Layer");
    Sgemm sgemm = (Sgemm)dlsym(mkl, "cblas_sgemm");
    Bgemm bgemm = (Bgemm)dlsym(mkl, "cblas_gemm_bf16bf16f32");
    void (*version)(char *, int) = (void (*)(char *, int))dlsym(mkl, "MKL_Get_Version_String");
    if (!set_layer || !sgemm || !bgemm) {
        fprintf(stderr, "mkl_gemm: %s lacks the MKL functions used here\n", argv[1]);
        return 1;
    }
    set_layer(THREADING_GNU);  // before any other MKL call
    char v[200] = "";
    if (version) version(v, sizeof v);
    printf("library: %s, GNU OpenMP\n", v);
    struct { const char *what; int M, N, K, ta, tb; } s[] = {
        {"square 2048^3", 2048, 2048, 2048, 0, 0},
        {"qkv/out fwd  N x 768 x 768", tokens, 768, 768, 0, 0},
        {"fc1 fwd      N x 3072 x 768", tokens, 3072, 768, 0, 0},
        {"fc2 fwd      N x 768 x 3072", tokens, 768, 3072, 0, 0},
        {"dX  = dY W^T N x 768 x 3072", tokens, 768, 3072, 0, 1},
        {"dX  = dY W^T N x 3072 x 768", tokens, 3072, 768, 0, 1},
        {"dW += X^T dY 768 x 3072 x N", 768, 3072, tokens, 1, 0},
        {"dW += X^T dY 3072 x 768 x N", 3072, 768, tokens, 1, 0},
        {"dW += X^T dY 768 x 768 x N", 768, 768, tokens, 1, 0},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        int M = s[i].M, N = s[i].N, K = s[i].K, lda = s[i].ta ? M : K, ldb = s[i].tb ? K : N;
        float *A = malloc(4L * M * K), *B = malloc(4L * K * N), *C = calloc((size_t)M * N, 4);
        uint16_t *Ab = malloc(2L * M * K), *Bb = malloc(2L * K * N);
        for (long j = 0; j < (long)M * K; j++) A[j] = (float)(j % 7) * 0.1f, Ab[j] = 0x3f80;
        for (long j = 0; j < (long)K * N; j++) B[j] = (float)(j % 5) * 0.1f, Bb[j] = 0x3f80;
        double rate[2];
        for (int bf16 = 0; bf16 < 2; bf16++) {
            int reps = -1;  // the first call (MKL's set-up) is not timed
            double t0 = 0, t;
            do {
                if (bf16)
                    bgemm(ROW_MAJOR, s[i].ta ? TRANS : NO_TRANS, s[i].tb ? TRANS : NO_TRANS, M, N, K, 1, Ab, lda, Bb,
                          ldb, 0, C, N);
                else
                    sgemm(ROW_MAJOR, s[i].ta ? TRANS : NO_TRANS, s[i].tb ? TRANS : NO_TRANS, M, N, K, 1, A, lda, B,
                          ldb, 0, C, N);
                if (++reps == 0) t0 = clock_seconds();
            } while ((t = clock_seconds() - t0) < 0.5 || reps < 3);
            rate[bf16] = 2.0 * M * N * (double)K * reps / t / 1e9;
        }
        printf("  %-28s N=%-5d fp32 %6.1f GFLOP/s  bf16 %6.1f GFLOP/s\n", s[i].what, tokens, rate[0], rate[1]);
        free(A), free(B), free(C), free(Ab), free(Bb);
    }
    return 0;
}
