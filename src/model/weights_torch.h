// PyTorch ViT weights: timm's `VisionTransformer` state dict and Hugging Face transformers'
// `ViTForImageClassification` / `ViTModel`, read from and written to safetensors, converted
// to and from the official (Flax .npz) names and layouts that the rest of vit uses.
//
// Layouts (official <- PyTorch): embedding/kernel [p,p,C,D] (HWIO) <- Conv2d [D,C,p,p];
// Dense kernels [in,out] <- Linear weight [out,in]; query/key/value kernels [D,H,hd] and
// biases [H,hd] <- timm's fused qkv [3D,D] (rows q, then k, then v) or HF's separate
// [D,D]; out/kernel [H,hd,D] <- [D,D]; cls, position embedding unchanged. Every conversion
// is a permutation, so export followed by import gives back the same bits.
//
// Export reproduces the model as (timm 1.0.x):
//   timm.models.vision_transformer.VisionTransformer(img_size=S, patch_size=P, in_chans=C,
//       num_classes=K, embed_dim=D, depth=L, num_heads=H, mlp_ratio=M/D)
//   plus act_layer='gelu_tanh' when the model uses tanh GELU, and
//   norm_layer=functools.partial(torch.nn.LayerNorm, eps=E) when its epsilon is not 1e-6;
//   the defaults (qkv_bias, class_token, global_pool='token', no fc_norm) are the official ViT.
// timm 1.0 has no representation (pre_logits) layer, so a model with one cannot be exported
// there; older timm's pre_logits.fc.{weight,bias} are still read. Hugging Face's classifier
// reads the class token directly (its pooler is not on that path), so the same holds there;
// a ViTModel's pooler.dense (Dense + tanh, the official pre_logits when config.pooler_act is
// "tanh", its default) is read as pre_logits when the file has no classifier.
#pragma once
#include "io/npz.h"
#include "io/safetensors.h"
#include "config.h"
#include "params.h"

typedef enum { TORCH_NONE = 0, TORCH_TIMM = 1, TORCH_HF = 2 } TorchNaming;

// The naming a safetensors file's tensor names follow: timm ("patch_embed.proj.weight",
// "blocks.N.*"), Hugging Face ("[vit.]embeddings.*", "[vit.]encoder.layer.N.*", the
// transformers-5 in-memory "[vit.]layers.N.*" too, with or without "classifier.*"), or
// TORCH_NONE for anything else (vit's own checkpoints, or a file that looks like both).
TorchNaming weights_torch_naming(const StFile *st);
const char *weights_torch_naming_name(TorchNaming n);  // "timm", "Hugging Face transformers"

// Converts every tensor of `st` (named as weights_torch_naming says) to the official name and
// layout into `out` (free with npz_free; nothing to free on error). `heads` splits the
// attention projections; a width not divisible by it is an error. F32, F16 and BF16 tensors
// are widened to fp32. Tensors it does not know are carried under their own names, so
// weights_load_npz reports them unused. Missing tensors, misshapen ones and tensors of
// features vit does not implement (registers, global pooling, pre-norm, layer scale, q/k
// norm, attention pooling, distillation token, no class token) are one-line errors naming
// `path` and the tensor.
int weights_from_torch(const StFile *st, const char *path, int heads, NpzFile *out);

// Exports host params (official layout, table t) as one timm state-dict .safetensors (see the
// constructor above; VisionTransformer(...).load_state_dict(..., strict=True) accepts it).
// c->representation > 0 is an error (timm 1.0 has no such layer).
int weights_save_timm(const char *path, const ViTConfig *c, const ParamTable *t, const float *params);
// Exports to folder `dir` (created if missing): model.safetensors under
// ViTForImageClassification's names and config.json, for
// ViTForImageClassification.from_pretrained(dir). c->representation > 0 is an error.
int weights_save_hf(const char *dir, const ViTConfig *c, const ParamTable *t, const float *params);
