// Full-state checkpoints: one safetensors file holding the parameters under their official
// names, the optimizer slots under "optimizer/m/<name>" and "optimizer/v/<name>", with
// --model_ema the moving average of the weights under "ema/<name>" (metadata
// "train.model_ema" = "1"), and in the metadata the model config, the training position
// (update, epoch, step, dropout counter, seed, the epoch's running metrics) and the run's
// flags. Written atomically.
//
// Checksums (CRC-32C, the Castagnoli CRC of TFRecord framing, as 8 lowercase hex digits in
// the metadata, so the Python `safetensors` package still reads the file):
//   "crc32c/<tensor>"  the CRC of that tensor's bytes as stored (little-endian);
//   "crc32c.header"    the CRC of the header in a canonical form that cannot include itself:
//                      "m\0KEY\0VALUE\0" for every other metadata entry in bytewise key order
//                      (the tensor checksums included), then "t\0NAME\0DTYPE\0SHAPE\0" for
//                      every tensor in bytewise name order, SHAPE the dimensions joined by ","
//                      ("" for a scalar). NUL ends each field, and cannot occur inside one.
// Data offsets are not in the canonical form: the reader requires the tensors to tile the
// data section exactly, and each tensor's CRC is over the bytes its offsets select, so a
// damaged offset fails one or the other. JSON whitespace is outside it: it carries nothing.
// Every read verifies both (checkpoint_open); a file without "crc32c.header" and without any
// other "crc32c" entry (older vit, or another writer) opens unverified, has_checksums = 0.
#pragma once
#include <stdint.h>
#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"

// Where a run stands; enough to continue it exactly.
typedef struct {
    long update;          // optimizer updates done
    int epoch;            // 0-based epoch in progress
    long step_in_epoch;   // micro-steps of that epoch done (a multiple of the accumulation)
    uint32_t micro;       // micro-steps done in the whole run (keys dropout)
    uint64_t seed;
    double loss_sum;      // running sums of the epoch in progress
    long hits, top5, seen;
} TrainState;

typedef struct {
    const char *key, *value;
} MetaPair;

// Host copies of params and slots (m or v may be NULL when the optimizer has none).
int checkpoint_save(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                    const float *m, const float *v, OptimizerKind opt, const TrainState *s, const MetaPair *extra,
                    int n_extra);
// The same with the weights' moving average (NULL: none) as "ema/<name>" tensors.
int checkpoint_save_ema(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                        const float *m, const float *v, const float *ema, OptimizerKind opt, const TrainState *s,
                        const MetaPair *extra, int n_extra);

typedef struct {
    StFile st;
    ViTConfig cfg;
    int has_optimizer;
    int has_checksums;  // 0: the file carries none, so its data went unverified
    int has_ema;        // the file holds "ema/<name>" tensors (a run with --model_ema)
    OptimizerKind opt;
    TrainState state;
} Checkpoint;

// The file's metadata marks it as a vitc checkpoint.
int checkpoint_is_vitc(const StFile *st);
// The checksums of a file read with st_read: VIT_OK when they hold (*has_checksums = 1) or
// when the file has none at all (0); otherwise an error naming the file and the tensor (or
// the header).
int checkpoint_verify(const StFile *st, const char *path, int *has_checksums);
// Reads the file and verifies its checksums (an error naming the file and the tensor on a
// mismatch); fills the model config and training state from its metadata.
int checkpoint_open(Checkpoint *ck, const char *path);
// Copies the parameters (and, when m/v are given, the optimizer slots) named by the table;
// a missing tensor or shape mismatch is an error naming the file and tensor.
int checkpoint_copy(const Checkpoint *ck, const char *path, const ParamTable *t, float *params, float *m, float *v);
// Copies the moving average ("ema/<name>") into ema; an error when the file has none.
int checkpoint_copy_ema(const Checkpoint *ck, const char *path, const ParamTable *t, float *ema);
void checkpoint_close(Checkpoint *ck);
