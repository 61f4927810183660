#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/status.h"

typedef struct { const char *size; int hidden, mlp, heads, layers; } SizePreset;

static const SizePreset k_sizes[] = {
    {"Ti", 192, 768, 3, 12},
    {"S", 384, 1536, 6, 12},
    {"B", 768, 3072, 12, 12},
    {"L", 1024, 4096, 16, 24},
    {"H", 1280, 5120, 16, 32},
};

int config_from_preset(ViTConfig *c, const char *name) {
    // Names look like ViT-B_16: size letter(s), underscore, patch size.
    if (strncmp(name, "ViT-", 4) != 0)
        return vit_fail("--model %s: expected ViT-{Ti,S,B,L,H}_{patch}, e.g. ViT-B_16", name);
    const char *us = strchr(name + 4, '_');
    if (!us) return vit_fail("--model %s: missing _{patch}, e.g. ViT-B_16", name);
    char *end;
    long patch = strtol(us + 1, &end, 10);
    if (*end || patch < 1 || patch > 1024) return vit_fail("--model %s: bad patch size '%s'", name, us + 1);
    size_t n = (size_t)(us - (name + 4));
    const SizePreset *p = NULL;
    for (size_t i = 0; i < sizeof k_sizes / sizeof k_sizes[0]; i++)
        if (strlen(k_sizes[i].size) == n && strncmp(k_sizes[i].size, name + 4, n) == 0) p = &k_sizes[i];
    if (!p) return vit_fail("--model %s: unknown size, expected one of Ti, S, B, L, H", name);
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->hidden = p->hidden;
    c->mlp = p->mlp;
    c->heads = p->heads;
    c->layers = p->layers;
    c->patch = (int)patch;
    c->image = 384;  // the recipe always fine-tunes at 384
    c->channels = 3;
    c->classes = 1000;
    c->representation = 0;
    c->dropout = 0.1f;
    c->gelu_tanh = 0;
    c->layernorm_eps = 1e-6f;
    return VIT_OK;
}

int config_validate(const ViTConfig *c) {
    if (c->hidden < 1) return vit_fail("--hidden_size %d: must be positive", c->hidden);
    if (c->mlp < 1) return vit_fail("--mlp_dim %d: must be positive", c->mlp);
    if (c->layers < 1) return vit_fail("--num_layers %d: must be positive", c->layers);
    if (c->heads < 1) return vit_fail("--num_heads %d: must be positive", c->heads);
    if (c->hidden % c->heads)
        return vit_fail("--num_heads %d does not divide --hidden_size %d", c->heads, c->hidden);
    if (c->patch < 1) return vit_fail("--patch_size %d: must be positive", c->patch);
    if (c->image < 1) return vit_fail("--image_size %d: must be positive", c->image);
    if (c->image % c->patch)
        return vit_fail("--image_size %d is not divisible by --patch_size %d", c->image, c->patch);
    if (c->channels < 1 || c->channels > 4) return vit_fail("--channels %d: must be 1..4", c->channels);
    if (c->classes < 1) return vit_fail("--num_classes %d: must be positive", c->classes);
    if (c->representation < 0) return vit_fail("--representation_size %d: must be >= 0", c->representation);
    if (!(c->dropout >= 0 && c->dropout < 1)) return vit_fail("--dropout %g: must be in [0, 1)", c->dropout);
    if (!(c->layernorm_eps >= 0 && c->layernorm_eps < 1))
        return vit_fail("--layernorm_eps %g: must be in (0, 1) (0 in a config: the official 1e-6)", c->layernorm_eps);
    // Guard against sizes whose buffers would overflow 32-bit index arithmetic in ops.
    double tokens = config_tokens(c);
    if (tokens * c->mlp > 2e9 || tokens * tokens > 2e9)
        return vit_fail("--image_size %d with --patch_size %d gives %.0f tokens: too many", c->image, c->patch, tokens);
    return VIT_OK;
}

double config_forward_macs(const ViTConfig *c) {
    double T = config_tokens(c), D = c->hidden, G = config_grid(c);
    double embed = G * G * (double)c->patch * c->patch * c->channels * D;
    double block = T * (4 * D * D + 2 * D * c->mlp) + 2 * T * T * D;
    double tail = c->representation ? D * c->representation + (double)c->representation * c->classes
                                    : D * c->classes;
    return embed + c->layers * block + tail;
}
