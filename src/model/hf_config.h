// The architecture in a Hugging Face `transformers` ViT folder's config.json (the file next
// to model.safetensors), so `--pretrained FOLDER` needs no model flags: widths, depth, heads,
// patch, channels, LayerNorm epsilon and the GELU form.
#pragma once
#include "config.h"

typedef struct {
    int hidden, layers, heads, mlp, patch, image, channels;  // 0 where the file has none
    double layernorm_eps;                                     // 0 where the file has none
    int gelu_tanh;                                            // -1 where the file has none
} HfConfig;

// Reads dir/config.json. An unreadable file, bad JSON, a model_type other than "vit", a
// number out of range or an activation vit does not have is a one-line error naming the file.
int hf_config_read(const char *dir, HfConfig *h);
