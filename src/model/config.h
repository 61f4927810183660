// The shape of a Vision Transformer: presets ViT-{Ti,S,B,L,H}_{patch} plus overrides.
#pragma once

typedef struct {
    char name[64];          // e.g. "ViT-B_16" (used in file names and reports)
    int hidden;             // D: token width
    int mlp;                // MLP inner width
    int heads;              // attention heads (hidden % heads == 0)
    int layers;             // encoder blocks
    int patch;              // P: patch side, kernel = stride
    int image;              // S: input side (S % P == 0)
    int channels;           // input channels (3 RGB, 1 for Fashion-MNIST)
    int classes;            // head outputs
    int representation;     // pre_logits width, 0 = no pre_logits layer
    float dropout;          // dropout rate after attention and in the MLP
    int gelu_tanh;          // 0: exact erf GELU (recipe), 1: tanh approximation
    float layernorm_eps;    // LayerNorm epsilon; 0 means the official 1e-6 (config_layernorm_eps)
} ViTConfig;

// Fills c from a preset name like "ViT-B_16" (image 384, 1000 classes, no pre_logits,
// dropout 0.1). Returns VIT_ERR with a message for an unknown name.
int config_from_preset(ViTConfig *c, const char *name);
// Checks divisibility and ranges; the message names the offending flag.
int config_validate(const ViTConfig *c);

static inline int config_grid(const ViTConfig *c) { return c->image / c->patch; }
static inline int config_tokens(const ViTConfig *c) { return 1 + config_grid(c) * config_grid(c); }
static inline int config_head_dim(const ViTConfig *c) { return c->hidden / c->heads; }
// The official models use 1e-6; Hugging Face's `transformers` defaults to 1e-12.
static inline float config_layernorm_eps(const ViTConfig *c) { return c->layernorm_eps > 0 ? c->layernorm_eps : 1e-6f; }
// Multiply-accumulates of one image's forward pass (matrix products only).
double config_forward_macs(const ViTConfig *c);
