// The CUDA backend's bf16-activation ops (backend.h; issue 15 item 3): opt-in with
// VIT_CUDA_BF16_ACTS=1 and bf16 products, never run on a GPU yet (docs/gpu.md).
#pragma once
#include "backend/backend.h"

// Reads VIT_CUDA_BF16_ACTS ("0", "1" or unset) and, when it is 1 and the products are bf16,
// installs gemm_bf16 and the *_bf16 ops. VIT_ERR (vit_fail) for any other value. Call after
// the other install functions: the ops call the table's fp32 ops.
int cuda_install_bf16_acts(Backend *be);
// gemm_bf16 of the op table (cuda_gemm.cu).
int cuda_gemm_bf16(Backend *be, const GemmBf16 *g);
