// All parameters live in one fp32 buffer; this table maps each official Flax name
// ("Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel") to its offset and shape.
// Gradients and optimizer slots are parallel buffers with the same layout, so
// initialisation, import/export, checkpoints, the optimizer, clipping and all-reduce
// are whole-buffer (or per-entry) loops over this table.
#pragma once
#include <stddef.h>
#include "config.h"

// How a tensor is initialised when training from scratch, and whether weight decay applies.
typedef enum {
    INIT_ZERO,
    INIT_XAVIER_UNIFORM,  // Dense kernels of attention and MLP
    INIT_LECUN_NORMAL,    // patch embedding, pre_logits (truncation-free normal, std sqrt(1/fan_in))
    INIT_NORMAL_1E6,      // MLP biases
    INIT_NORMAL_002,      // position embedding
    INIT_ONE,             // LayerNorm scale
} ParamInit;

typedef struct {
    char name[96];
    int ndim;
    int shape[4];
    size_t offset;        // in floats from the start of the buffer
    size_t size;          // number of floats
    int fan_in, fan_out;  // for the initialisers (Dense kernels are (in, out))
    ParamInit init;
    int decay;            // 1: weight decay applies (kernels); 0: biases, LayerNorm, cls, pos
} ParamEntry;

typedef struct {
    ParamEntry *entries;
    int count;
    size_t total;         // floats in the buffer
} ParamTable;

// Offsets of the tensors of one encoder block, for the model code.
typedef struct {
    size_t ln0_scale, ln0_bias;
    size_t q_kernel, q_bias, k_kernel, k_bias, v_kernel, v_bias, out_kernel, out_bias;
    size_t ln2_scale, ln2_bias;
    size_t fc1_kernel, fc1_bias, fc2_kernel, fc2_bias;
} BlockOffsets;

typedef struct {
    size_t embed_kernel, embed_bias, cls, pos;
    BlockOffsets *blocks;  // config.layers entries
    size_t norm_scale, norm_bias;
    size_t pre_kernel, pre_bias;  // only when representation > 0
    size_t head_kernel, head_bias;
} ParamOffsets;

// VIT_ERR (out of memory) leaves *t and *o empty, nothing to free.
int params_build(ParamTable *t, ParamOffsets *o, const ViTConfig *c);
void params_free(ParamTable *t, ParamOffsets *o);
// Host-side initialisation of a buffer of t->total floats, as the official code does.
void params_init(const ParamTable *t, float *buf, unsigned long long seed);
