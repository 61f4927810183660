// Pieces shared by the subcommands: the model config from flags (and the data's shape),
// refusing flags whose support has not arrived yet, the device.
#pragma once
#include "data/dataset.h"
#include "flags.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/vit.h"
#include <stdio.h>

// Errors for flags that parse but are not supported yet, --dtype, --device.
int cli_check_supported(const ParsedOptions *p);
// 1 for cuda, gpu, cuda:N; 0 for cpu; -1 for anything else.
int cli_device_is_cuda(const char *device);
// The backend --device asks for (CPU with `threads`, or the CUDA backend with the
// precision of --dtype/--allow_tf32); NULL with the reason when it cannot start.
Backend *cli_create_backend(const ParsedOptions *p, int threads);
// What the matrix products and activations compute in, for reports.
const char *cli_precision_name(const ParsedOptions *p);
// -d bf16 (or bfloat16) was asked for.
int cli_is_bf16(const ParsedOptions *p);
// Preset + overrides; `data` (may be NULL) supplies image size, channels and classes
// unless the flags set them, and is checked against them.
int cli_model_config(const ParsedOptions *p, const Dataset *data, ViTConfig *c);

// "~/x" -> "$HOME/x".
void cli_expand_home(const char *in, char *out, size_t n);
// The official weights this run starts from: --pretrained, else
// <weights_path>/weights/<model>_imagenet21k.npz; VIT_ERR (naming the path) when missing.
int cli_weights_file(const ParsedOptions *p, char *out, size_t n);
// For the commands that run a model they do not train (predict, evaluate): without
// --checkpoint, --pretrained or --from_scratch the default official weights must exist; when
// they do not, the error names the flags that give a model ("no model to WHAT: ...").
int cli_check_model_given(const ParsedOptions *p, const char *what);
// The evaluation data: the IDX t10k split under --dataset_dir, or synthetic images at the
// model's size. train may be NULL (then only val is opened).
int cli_open_data(const ParsedOptions *p, const ViTConfig *c, Dataset *train, Dataset *val);
// Tells encoded datasets the model's input (size, channels, classes) and how to preprocess:
// training augmentation (off with --deterministic) for train, the evaluation crop for val.
void cli_data_output(const ParsedOptions *p, const ViTConfig *c, Dataset *train, Dataset *val);
// A model for evaluate/predict/export, from --checkpoint (config from its metadata) or from
// official weights (--pretrained or the default file; config from the flags and the file),
// or with --from_scratch from the official random initialisation (for timing).
// `data` (may be NULL) supplies image size, channels and classes as for training.
int cli_load_model(const ParsedOptions *p, const Dataset *data, Backend *be, int batch, ViT *m, FILE *report);
// The same, and with class_names (may be NULL) the class names stored in a checkpoint:
// an array of m->cfg.classes strings (NULL entries past the stored ones), or NULL when it has
// none; free each and the array.
int cli_load_model_named(const ParsedOptions *p, const Dataset *data, Backend *be, int batch, ViT *m, FILE *report,
                         char ***class_names);
// evaluate --checkpoint: --dataset_dir, --data_format, --val_subset and --cache_dir default to
// the values the checkpoint's run recorded (flags.* metadata) when none of the data flags was
// given; says so on `notes`.
int cli_checkpoint_data_defaults(ParsedOptions *p, const StFile *st, FILE *notes);
