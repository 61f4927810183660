// Official initialisation zeroes the classifier head, and a zero head zeroes every gradient
// below it: tests that compare gradients give the head random weights first, so that the
// whole backward pass is exercised.
#pragma once
#include <stdlib.h>
#include "model/vit.h"
#include "util/rng.h"

static inline void randomize_head(ViT *m, uint64_t seed) {
    size_t n = (size_t)(m->cfg.representation ? m->cfg.representation : m->cfg.hidden) * m->cfg.classes;
    float *w = malloc(n * sizeof *w);
    if (!w) abort();
    for (size_t i = 0; i < n; i++) w[i] = (float)(rng_uniform(seed, 9, i) - 0.5);
    m->be->upload(m->be, m->params + m->off.head_kernel, w, n * sizeof *w);
    free(w);
}
