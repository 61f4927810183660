// Speed of the CPU backend's attention forward and backward on ViT training shapes, in ms
// per call and GFLOP/s (forward 4*B*H*T*T*hd: Q K^T and P V; backward 8*B*H*T*T*hd: dV, dP,
// dQ, dK). Each case is timed for --reps calls after one warm-up call, repeated --rounds
// times; the best round is reported (other jobs on the machine only ever slow a round down).
//
// usage: attention_speed [--threads 2] [--rounds 5] [--reps 10] [--bf16] [--sgemm] [--isa avx512|avx2|generic]
//                        [--case all|b16|l16|demo]
// --sgemm: the products through dnnl_sgemm instead of the register-tile kernels.
// --isa: the kernels of a lower instruction set than the CPU's best (as VIT_CPU_ISA); the
// header line names the set in use.
// Build: make BUILD=build-att CUDA=0 build-att/bench/attention_speed
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"

// From backend/cpu/cpu.h, declared weak so that this file also builds and runs against the
// previous cpu_attention.c (git show ec05fd1:src/backend/cpu/cpu_attention.c), for before/after.
void cpu_attention_use_sgemm(int on) __attribute__((weak));
#include "util/clock.h"

static float *filled(size_t n, unsigned seed) {
    float *x = malloc(n * sizeof(float));
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((s >> 8) * (1.0f / 16777216.0f) - 0.5f) * 2.0f;
    }
    return x;
}

static void run_case(Backend *be, const char *what, int B, int T, int H, int hd, int rounds, int reps) {
    size_t n = (size_t)B * T * H * hd;
    float *q = filled(n, 1), *k = filled(n, 2), *v = filled(n, 3), *dout = filled(n, 4);
    float *out = malloc(n * sizeof(float)), *dq = malloc(n * sizeof(float)), *dk = malloc(n * sizeof(float)),
          *dv = malloc(n * sizeof(float));
    float *state = malloc(be->attention_state_floats(be, B, T, H, hd) * sizeof(float));
    float *scratch = malloc(be->attention_scratch_floats(be, B, T, H, hd) * sizeof(float));
    if (!q || !k || !v || !dout || !out || !dq || !dk || !dv || !state || !scratch) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    // Warm-up: page faults, oneDNN primitive creation.
    if (be->attention_forward(be, out, state, scratch, q, k, v, B, T, H, hd) ||
        be->attention_backward(be, dq, dk, dv, dout, out, state, scratch, q, k, v, B, T, H, hd)) {
        fprintf(stderr, "attention failed\n");
        exit(1);
    }
    double best_f = 1e30, best_b = 1e30;
    for (int r = 0; r < rounds; r++) {
        double t0 = clock_seconds();
        for (int i = 0; i < reps; i++) be->attention_forward(be, out, state, scratch, q, k, v, B, T, H, hd);
        double t1 = clock_seconds();
        for (int i = 0; i < reps; i++)
            be->attention_backward(be, dq, dk, dv, dout, out, state, scratch, q, k, v, B, T, H, hd);
        double t2 = clock_seconds();
        if ((t1 - t0) / reps < best_f) best_f = (t1 - t0) / reps;
        if ((t2 - t1) / reps < best_b) best_b = (t2 - t1) / reps;
    }
    double f = 4.0 * B * H * T * T * hd;
    printf("%-26s B %d T %3d H %2d hd %2d  forward %7.2f ms %6.1f GFLOP/s  backward %7.2f ms %6.1f GFLOP/s\n", what,
           B, T, H, hd, best_f * 1e3, f / best_f / 1e9, best_b * 1e3, 2 * f / best_b / 1e9);
    double cs = 0;  // keeps the results live; also a quick cross-version check
    for (size_t i = 0; i < n; i += 97) cs += out[i] + dq[i] + dk[i] + dv[i];
    printf("%-26s checksum %.6e\n", "", cs);
    free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv), free(state), free(scratch);
}

static const char *usage =
    "usage: attention_speed [--threads 2] [--rounds 5] [--reps 10] [--bf16] [--sgemm] [--isa avx512|avx2|generic]\n"
    "                       [--case all|b16|l16|demo]\n";

int main(int argc, char **argv) {
    int threads = 2, rounds = 5, reps = 10, bf16 = 0, sgemm = 0;
    const char *which = "all";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bf16")) bf16 = 1;
        else if (!strcmp(argv[i], "--sgemm")) sgemm = 1;
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
            const char *v = argv[++i];
            int isa = !strcmp(v, "avx512")  ? CPU_ISA_AVX512
                      : !strcmp(v, "avx2")    ? CPU_ISA_AVX2
                      : !strcmp(v, "generic") ? CPU_ISA_GENERIC
                                              : -1;
            if (isa < 0) {
                fputs(usage, stderr);
                return 2;
            }
            if ((int)cpu_isa_force(isa) != isa)
                fprintf(stderr, "--isa %s: this CPU lacks it; using %s\n", v, cpu_isa_name(cpu_isa()));
        } else if (!strcmp(argv[i], "--case") && i + 1 < argc) {
            which = argv[++i];
        } else {
            fputs(usage, stderr);
            return 2;
        }
    }
    Backend *be = backend_cpu_create(threads);
    if (!be) return 1;
    backend_cpu_set_bf16(be, bf16);
    if (sgemm && !cpu_attention_use_sgemm) {
        fprintf(stderr, "--sgemm: this attention has no dnnl_sgemm switch\n");
        return 2;
    }
    if (cpu_attention_use_sgemm) cpu_attention_use_sgemm(sgemm);
    // The kernels' instruction set; dnnl_sgemm below AVX2 as with --sgemm.
    printf("threads %d, %s, %s\n", threads, bf16 ? "bf16" : "fp32",
           sgemm || cpu_isa() == CPU_ISA_GENERIC ? "dnnl_sgemm" : cpu_isa_name(cpu_isa()));
    int all = !strcmp(which, "all");
    if (all || !strcmp(which, "b16")) run_case(be, "ViT-B/16 224", 8, 197, 12, 64, rounds, reps);
    if (all || !strcmp(which, "l16")) run_case(be, "ViT-L/16 384", 2, 577, 16, 64, rounds, reps);
    if (all || !strcmp(which, "demo")) run_case(be, "demo Ti_4 28px (hd 16)", 128, 50, 4, 16, rounds, reps);
    be->destroy(be);
    return 0;
}
