// Where a command's model comes from, decided and opened in one place for train, evaluate,
// predict and export: a vit checkpoint (its config from the metadata), official weights
// (config from the flags and the file), or the official random initialisation.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "data/dataset.h"
#include "flags.h"
#include "io/npz.h"
#include "model/vit.h"
#include "train/checkpoint.h"

typedef enum { SOURCE_CHECKPOINT, SOURCE_WEIGHTS, SOURCE_SCRATCH } SourceKind;

typedef struct {
    SourceKind kind;
    char path[4096];    // the checkpoint or weights file ("" for SOURCE_SCRATCH)
    ViTConfig cfg;      // the model's shape
    Checkpoint ck;      // SOURCE_CHECKPOINT: open until model_source_close
    NpzFile weights;    // SOURCE_WEIGHTS: tensors under the official names
    const char *naming; // SOURCE_WEIGHTS from .safetensors: "timm" or "Hugging Face transformers"
    int head_glorot;    // --head_init glorot: a new head is glorot-uniform, else zeros
    int ema;            // --ema: the checkpoint's moving average ("ema/<name>") instead of its weights
} ModelSource;

// Opens the source the flags name: `checkpoint` when non-empty (train's resume file: a
// .safetensors vit checkpoint, any other file official weights, the recipe's weights-only
// resume), else --checkpoint (a vit checkpoint),
// else --from_scratch, else --pretrained (official .npz, or .safetensors in timm's or Hugging
// Face's naming, converted) or the default official file. `data` (may be NULL)
// supplies image size, channels and classes as cli_model_config does.
int model_source_open(ModelSource *s, const ParsedOptions *p, const char *checkpoint, const Dataset *data);

// The same for a checkpoint already open and verified (train's resume, run_resume_file):
// s takes ck over (ck is left empty), so the file is not read a second time.
int model_source_adopt(ModelSource *s, const ParsedOptions *p, const char *path, Checkpoint *ck);

// Fills m->params (uploaded to m's backend): the checkpoint's parameters (with --ema its moving
// average of them, for evaluate, predict and export) (and its optimizer
// slots into slot_m/slot_v when given), the weights adapted to the model, or the random
// initialisation from `seed`. Unused tensors and head changes are reported on `report`.
int model_source_load(ModelSource *s, ViT *m, uint64_t seed, float *slot_m, float *slot_v, FILE *report);

// The class names a checkpoint's run stored ("data.class_names", one per line in label
// order) as `classes` strings (NULL past the stored ones); NULL when there are none.
char **model_source_class_names(const ModelSource *s, int classes);

void model_source_close(ModelSource *s);
