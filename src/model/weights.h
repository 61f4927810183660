// Adapting official (.npz) weights to a model, kept apart from the model itself: name
// mapping, block-count and shape checks, position-embedding resize to the model's grid,
// head reset when the class count differs, and a report of what was not used or not set.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "io/npz.h"
#include "vit.h"

// Width of pre_logits in the file (0 when it has none): the model gets a pre_logits layer
// of that width unless --representation_size says otherwise.
int weights_npz_representation(const NpzFile *f);

// Copies the file's tensors into m->params (uploaded to the device). head_glorot: init of a
// new head when the file's class count differs (0 = zeros, the official fine-tuning choice).
// Unused keys are reported on `report` (may be NULL); missing tensors, block-count and
// shape mismatches are errors naming the file and the key.
int weights_load_npz(ViT *m, const NpzFile *f, const char *path, int head_glorot, uint64_t seed, FILE *report);

// Resizes position embeddings of a gs_old x gs_old grid to gs_new x gs_new (class row
// excluded: src is gs_old^2 x D, dst gs_new^2 x D) by corner-aligned linear interpolation,
// the rule of scipy.ndimage.zoom with order 1 that the official code uses.
void posemb_resize(const float *src, int gs_old, float *dst, int gs_new, int D);
