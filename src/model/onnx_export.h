// ONNX export of the inference graph (opset 17, IR version 8), written with the protobuf-c
// code of proto/onnx.proto: a model that ONNX Runtime and other ONNX readers run without vit.
//
// Input `images`: float32 [batch, C, S, S] (NCHW), already normalised as vit does for its
// uint8 input: x * 2/255 - 1, so values lie in [-1, 1]. `batch` is symbolic (any size).
// Output `logits`: float32 [batch, classes]; no softmax.
//
// The graph: Conv patch embedding, class token and position embedding, the pre-LayerNorm
// encoder blocks (LayerNormalization, q/k/v products, softmax attention, exact erf GELU or
// its tanh form as the config says), the class token's row, the final LayerNormalization,
// optional pre_logits (Dense + Tanh) and the head. Dropout is not part of it.
//
// Initializers carry the official parameter names ("Transformer/encoderblock_0/...") with
// the official data, in the shapes the ONNX ops take: the patch kernel is transposed from
// HWIO to Conv's OIHW, the attention kernels are (hidden, hidden) matrices and their
// biases vectors (the same floats as the official (D, heads, head_dim) and (heads, head_dim,
// D) tensors, in the same order). Constants of the graph itself are named "vitc/...".
//
// The whole model lives in one protobuf message, which ONNX limits to 2 GiB: models past
// that (ViT-H) are refused with an error rather than written in the external-data form.
#pragma once
#include "config.h"
#include "params.h"

// Writes the inference graph of a model with config `c` and host parameters `params` (fp32,
// official layout of the ParamTable `t`, as in src/model/params.c) to `path` as an ONNX
// model, atomically (temp file, fsync, rename). VIT_ERR with a message naming `path` when
// the config or table is invalid or does not match, the model is too large, or the file
// cannot be written; nothing is left at `path` then (an older file there stays as it was).
int onnx_export(const char *path, const ViTConfig *c, const ParamTable *t, const float *params);
