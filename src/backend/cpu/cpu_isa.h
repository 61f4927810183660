// Which vector instruction set the CPU backend's own kernels use, chosen once at run time
// from the CPU's features, overridable with VIT_CPU_ISA. The kernels carry their target in
// attributes, so the choice holds whatever -march the build used.
#pragma once

typedef enum { CPU_ISA_GENERIC = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 } CpuIsa;

// The best of the CPU's features and VIT_CPU_ISA (`avx512`, `avx2` or `generic`: a lower
// level than the CPU has, for A/B runs and tests; a higher one is refused with a note).
CpuIsa cpu_isa(void);
// Forces an instruction set for the process (tests); CPU_ISA_AVX512 + 1 restores the choice above.
// Returns the level in effect, never more than the CPU has.
CpuIsa cpu_isa_force(int isa);
const char *cpu_isa_name(CpuIsa isa);
// Whether the CPU has AVX512-BF16 (vdpbf16ps): native bf16 matrix products.
int cpu_has_avx512_bf16(void);
