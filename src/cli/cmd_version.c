// `vit version` (or `vit --version`): the version, what the build includes, the matrix
// library and the CPU features the CPU backend's kernels use.
#include <stdio.h>
#include <string.h>
#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_isa.h"
#include "commands.h"
#include "version.h"

#ifdef VIT_CUDA
#define BUILD_CUDA "yes"
#else
#define BUILD_CUDA "no"
#endif
#ifdef VIT_MPI
#define BUILD_MPI "yes"
#else
#define BUILD_MPI "no"
#endif
#ifdef VIT_NCCL
#define BUILD_NCCL "yes"
#else
#define BUILD_NCCL "no"
#endif

int cmd_version(int argc, char **argv) {
    if (argc > 0) {
        if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
            printf("usage: vit version (or vit --version)\n"
                   "Prints the version, the build's options (CUDA, MPI, NCCL), the matrix library and the CPU\n"
                   "features the CPU backend uses.\n");
            return 0;
        }
        fprintf(stderr, "vit version: unexpected argument '%s' (it takes none)\n", argv[0]);
        return 2;
    }
    printf("vit %s\n", VIT_VERSION);
    printf("build   CUDA %s, MPI %s, NCCL %s\n", BUILD_CUDA, BUILD_MPI, BUILD_NCCL);
    GemmCache *gemm = cpu_gemm_cache_create();
    printf("matrix  %s\n", gemm ? cpu_gemm_library(gemm) : "oneDNN (no CPU engine could be created)");
    cpu_gemm_cache_destroy(gemm);
    printf("cpu     %s kernels, AVX512-BF16 %s\n", cpu_isa_name(cpu_isa()), cpu_has_avx512_bf16() ? "yes" : "no");
    return 0;
}
