// Measures the CPU backend's matrix-product rate on the shapes of ViT-B/16 training and on a
// large square product, in GFLOP/s; the best of them is reported as the machine's ceiling.
// Then oneDNN's native bf16 matmul (bf16 operands, fp32 result) on a 2048^3 product, where the
// CPU has one (AVX512-BF16, AMX; oneDNN 2.6 has none for AVX2): "bf16 ceiling: ...".
// Build: make build/bench/gemm_ceiling
#include <oneapi/dnnl/dnnl.h>
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

// oneDNN's bf16 matmul rate on an n^3 product, or 0 when oneDNN has no implementation here.
static double bf16_rate(int n) {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    if (dnnl_engine_create(&eng, dnnl_cpu, 0) != dnnl_success) return 0;
    dnnl_stream_create(&st, eng, dnnl_stream_default_flags);
    dnnl_dims_t dims = {n, n};
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_memory_desc_init_by_tag(&a_md, 2, dims, dnnl_bf16, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&b_md, 2, dims, dnnl_bf16, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&c_md, 2, dims, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t desc;
    dnnl_primitive_desc_t pd = NULL;
    double r = 0;
    if (dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md) == dnnl_success &&
        dnnl_primitive_desc_create(&pd, &desc, NULL, eng, NULL) == dnnl_success) {
        dnnl_primitive_t prim;
        dnnl_memory_t a, b, c;
        dnnl_primitive_create(&prim, pd);
        dnnl_memory_create(&a, &a_md, eng, DNNL_MEMORY_ALLOCATE);
        dnnl_memory_create(&b, &b_md, eng, DNNL_MEMORY_ALLOCATE);
        dnnl_memory_create(&c, &c_md, eng, DNNL_MEMORY_ALLOCATE);
        void *pa, *pb;
        dnnl_memory_get_data_handle(a, &pa);
        dnnl_memory_get_data_handle(b, &pb);
        for (size_t i = 0; i < (size_t)n * n; i++) ((unsigned short *)pa)[i] = ((unsigned short *)pb)[i] = 0x3f80;
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
        dnnl_primitive_execute(prim, st, 3, args);
        dnnl_stream_wait(st);
        int reps = 0;
        double t0 = progress_now(), t;
        do {
            dnnl_primitive_execute(prim, st, 3, args);
            dnnl_stream_wait(st);
            reps++;
        } while ((t = progress_now() - t0) < 0.5);
        r = 2.0 * n * n * (double)n * reps / t / 1e9;
        dnnl_memory_destroy(a), dnnl_memory_destroy(b), dnnl_memory_destroy(c);
        dnnl_primitive_destroy(prim);
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return r;
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
    double b16 = bf16_rate(2048);
    if (b16 > 0)
        printf("bf16 ceiling: %.1f GFLOP/s (oneDNN bf16 matmul 2048^3)\n", b16);
    else
        printf("bf16 ceiling: none (oneDNN has no bf16 matmul for this CPU)\n");
    be->destroy(be);
    return 0;
}
