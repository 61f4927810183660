// Inputs for tests that run the whole model: synthetic batches, and a random head.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/vit.h"
#include "util/rng.h"

// A 3-block model small enough to train in milliseconds, with dropout on, named `name`.
static inline ViTConfig small_config(const char *name) {
    ViTConfig c = {.hidden = 48, .mlp = 96, .heads = 4, .layers = 3, .patch = 4, .image = 16, .channels = 3,
                   .classes = 10, .representation = 0, .dropout = 0.1f, .gelu_tanh = 0};
    snprintf(c.name, sizeof c.name, "%s", name);
    return c;
}

// Random uint8 images and labels of the model's shape, keyed by `stream`.
static inline void synth_batch(uint8_t *images, int *labels, int B, const ViTConfig *c, uint32_t stream) {
    size_t n = (size_t)B * c->image * c->image * c->channels;
    for (size_t i = 0; i < n; i++) images[i] = (uint8_t)(256 * rng_uniform(3, stream, i));
    for (int b = 0; b < B; b++) labels[b] = (int)(c->classes * rng_uniform(4, stream, (uint64_t)b));
}

// Official initialisation zeroes the classifier head, and a zero head zeroes every gradient
// below it: tests that compare gradients give the head random weights first, so that the
// whole backward pass is exercised.
static inline void randomize_head(ViT *m, uint64_t seed) {
    size_t n = (size_t)(m->cfg.representation ? m->cfg.representation : m->cfg.hidden) * m->cfg.classes;
    float *w = malloc(n * sizeof *w);
    if (!w) abort();
    for (size_t i = 0; i < n; i++) w[i] = (float)(rng_uniform(seed, 9, i) - 0.5);
    m->be->upload(m->be, m->params + m->off.head_kernel, w, n * sizeof *w);
    free(w);
}
