#include "cpu_isa.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_isa = -1;

static CpuIsa hardware_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return CPU_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CPU_ISA_AVX2;
    return CPU_ISA_GENERIC;
}

const char *cpu_isa_name(CpuIsa isa) { return isa == CPU_ISA_AVX512 ? "avx512" : isa == CPU_ISA_AVX2 ? "avx2" : "generic"; }

CpuIsa cpu_isa(void) {
    if (g_isa >= 0) return (CpuIsa)g_isa;
    CpuIsa hw = hardware_isa(), want = hw;
    const char *v = getenv("VIT_CPU_ISA");
    if (v && *v) {
        if (!strcmp(v, "avx512")) want = CPU_ISA_AVX512;
        else if (!strcmp(v, "avx2")) want = CPU_ISA_AVX2;
        else if (!strcmp(v, "generic")) want = CPU_ISA_GENERIC;
        else fprintf(stderr, "note: VIT_CPU_ISA=%s is not avx512, avx2 or generic; using %s\n", v, cpu_isa_name(hw));
        if (want > hw) {
            fprintf(stderr, "note: VIT_CPU_ISA=%s: this CPU lacks it; using %s\n", v, cpu_isa_name(hw));
            want = hw;
        }
    }
    g_isa = (int)want;
    return want;
}

CpuIsa cpu_isa_force(int isa) {
    CpuIsa hw = hardware_isa();
    if (isa > CPU_ISA_AVX512) {
        g_isa = -1;
        return cpu_isa();
    }
    g_isa = isa > (int)hw ? (int)hw : isa < 0 ? 0 : isa;
    return (CpuIsa)g_isa;
}

int cpu_has_avx512_bf16(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
}
