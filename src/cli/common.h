// Pieces shared by the subcommands: the model config from flags (and the data's shape),
// refusing flags whose support has not arrived yet, the device.
#pragma once
#include "data/dataset.h"
#include "flags.h"
#include "model/config.h"

// Errors for flags that parse but are not supported yet, --dtype, --device.
int cli_check_supported(const ParsedOptions *p);
// Preset + overrides; `data` (may be NULL) supplies image size, channels and classes
// unless the flags set them, and is checked against them.
int cli_model_config(const ParsedOptions *p, const Dataset *data, ViTConfig *c);
