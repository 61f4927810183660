#include "common.h"
#include <string.h>
#include <strings.h>
#include "util/status.h"

int cli_check_supported(const ParsedOptions *p) {
    for (int i = 0; i < g_flag_count; i++) {
        const Flag *f = &g_flags[i];
        if (f->later && p->set[i]) return vit_fail("--%s: not supported yet (%s)", f->name, f->later);
    }
    const Options *o = &p->o;
    if (!strcasecmp(o->dtype, "bf16") || !strcasecmp(o->dtype, "bfloat16"))
        return vit_fail("--dtype bf16: not supported yet (bf16 mixed precision arrives with the CPU speed work); use fp32");
    if (strcasecmp(o->dtype, "fp32") && strcasecmp(o->dtype, "float32"))
        return vit_fail("--dtype %s: expected fp32 or bf16", o->dtype);
    if (!strcasecmp(o->device, "hpu"))
        return vit_fail("--device HPU: Habana accelerators are not supported; use --device cpu (or cuda)");
    if (!strcasecmp(o->device, "cuda") || !strcasecmp(o->device, "gpu"))
        return vit_fail("--device %s: not supported yet (the CUDA backend is not built); use --device cpu", o->device);
    if (strcasecmp(o->device, "cpu")) return vit_fail("--device %s: expected cpu or cuda", o->device);
    if (o->threads < 0) return vit_fail("--threads %d: must be >= 0", o->threads);
    return VIT_OK;
}

int cli_model_config(const ParsedOptions *p, const Dataset *data, ViTConfig *c) {
    const Options *o = &p->o;
    if (config_from_preset(c, o->model)) return VIT_ERR;
    // Overrides: only flags the user gave replace the preset.
    struct { const char *flag; int value; int *field; } ov[] = {
        {"hidden_size", o->hidden_size, &c->hidden}, {"num_layers", o->num_layers, &c->layers},
        {"num_heads", o->num_heads, &c->heads},      {"mlp_dim", o->mlp_dim, &c->mlp},
        {"patch_size", o->patch_size, &c->patch},    {"image_size", o->image_size, &c->image},
        {"channels", o->channels, &c->channels},     {"num_classes", o->num_classes, &c->classes},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++) {
        if (!flags_given(p, ov[i].flag)) continue;
        if (ov[i].value < 1) return vit_fail("--%s %d: must be positive", ov[i].flag, ov[i].value);
        *ov[i].field = ov[i].value;
    }
    if (data && !data->synthetic) {
        if (!flags_given(p, "image_size")) c->image = data->size;
        if (!flags_given(p, "channels")) c->channels = data->channels;
        if (!flags_given(p, "num_classes")) c->classes = data->classes;
        if (c->image != data->size)
            return vit_fail("--image_size %d: the %s images are %dx%d (IDX data is not resized)", c->image, data->name,
                            data->size, data->size);
        if (c->channels != data->channels)
            return vit_fail("--channels %d: the %s images have %d channel(s)", c->channels, data->name, data->channels);
        if (c->classes < data->classes)
            return vit_fail("--num_classes %d: the %s labels go up to %d", c->classes, data->name, data->classes - 1);
    }
    c->representation = o->representation_size < 0 ? 0 : o->representation_size;
    if (flags_given(p, "representation_size") && o->representation_size < 0)
        return vit_fail("--representation_size %d: must be >= 0", o->representation_size);
    c->dropout = o->dropout;
    if (!strcasecmp(o->gelu, "erf"))
        c->gelu_tanh = 0;
    else if (!strcasecmp(o->gelu, "tanh"))
        c->gelu_tanh = 1;
    else
        return vit_fail("--gelu %s: expected erf or tanh", o->gelu);
    return config_validate(c);
}
