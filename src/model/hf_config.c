#include "hf_config.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/json.h"
#include "util/status.h"

// A JSON number at the cursor (the cursor API has no number reader: config.json is the one
// place vit needs one).
static int read_number(JsonCursor *c, double *out) {
    json_skip_ws(c);
    char buf[64];
    size_t k = 0;
    while (c->i < c->n && k + 1 < sizeof buf && strchr("+-0123456789.eE", c->s[c->i])) buf[k++] = (char)c->s[c->i++];
    buf[k] = 0;
    char *end;
    errno = 0;
    *out = strtod(buf, &end);
    if (!k || *end || errno) return json_fail(c, "expected a number");
    return VIT_OK;
}

static int read_field(JsonCursor *c, const char *key, HfConfig *h) {
    struct { const char *key; int *field; } ints[] = {
        {"hidden_size", &h->hidden}, {"num_hidden_layers", &h->layers}, {"num_attention_heads", &h->heads},
        {"intermediate_size", &h->mlp}, {"patch_size", &h->patch}, {"image_size", &h->image},
        {"num_channels", &h->channels}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (strcmp(key, ints[i].key)) continue;
        double v;
        if (read_number(c, &v)) return VIT_ERR;
        if (v < 1 || v > (1 << 24) || v != (int)v) return json_fail(c, "%s %g: not a positive integer", key, v);
        *ints[i].field = (int)v;
        return VIT_OK;
    }
    if (!strcmp(key, "layer_norm_eps")) {
        if (read_number(c, &h->layernorm_eps)) return VIT_ERR;
        if (!(h->layernorm_eps > 0 && h->layernorm_eps < 1)) return json_fail(c, "layer_norm_eps must be in (0, 1)");
        return VIT_OK;
    }
    if (strcmp(key, "hidden_act") && strcmp(key, "model_type")) return json_skip_value(c);
    char *v = NULL;
    if (json_string(c, &v)) return VIT_ERR;
    int rc = VIT_OK;
    if (!strcmp(key, "model_type") && strcmp(v, "vit"))
        rc = json_fail(c, "model_type \"%s\": vit reads ViT models (model_type \"vit\")", v);
    else if (!strcmp(key, "hidden_act") && !strcmp(v, "gelu"))
        h->gelu_tanh = 0;
    else if (!strcmp(key, "hidden_act") && (!strcmp(v, "gelu_pytorch_tanh") || !strcmp(v, "gelu_new")))
        h->gelu_tanh = 1;
    else if (!strcmp(key, "hidden_act"))
        rc = json_fail(c, "hidden_act \"%s\": vit has gelu (erf) and the tanh form only", v);
    free(v);
    return rc;
}

int hf_config_read(const char *dir, HfConfig *h) {
    *h = (HfConfig){.gelu_tanh = -1};
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return vit_fail("%s: cannot open: %s", path, strerror(errno));
    char *text = malloc(1 << 20);
    size_t n = text ? fread(text, 1, 1 << 20, f) : 0;
    int too_big = text && n == (1 << 20);
    fclose(f);
    if (!text) return vit_fail("out of memory reading %s", path);
    JsonCursor c;
    int rc = too_big ? vit_fail("%s: over 1 MiB, not a model config", path)
                     : json_init(&c, text, n, path, "Hugging Face config");
    if (rc == VIT_OK) rc = json_expect(&c, '{', "at the start");
    for (int first = 1; rc == VIT_OK && !json_accept(&c, '}'); first = 0) {
        char *key = NULL;
        if (!first) rc = json_expect(&c, ',', "between fields");
        if (rc == VIT_OK) json_skip_ws(&c), rc = json_string(&c, &key);
        if (rc == VIT_OK) rc = json_expect(&c, ':', "after a key");
        if (rc == VIT_OK) rc = read_field(&c, key, h);
        free(key);
    }
    free(text);
    return rc;
}
