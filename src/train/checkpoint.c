#include "checkpoint.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "optim/optimizer.h"
#include "util/status.h"

#define FORMAT "vitc-checkpoint-1"

int checkpoint_save(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                    const float *m, const float *v, OptimizerKind opt, const TrainState *s, const MetaPair *extra,
                    int n_extra) {
    StWriter *w = st_writer_new();
    if (!w) return vit_fail("out of memory writing %s", path);
    char (*names)[128] = malloc((size_t)t->count * 2 * sizeof *names);
    if (!names) {
        st_writer_free(w);
        return vit_fail("out of memory writing %s", path);
    }
    int rc = VIT_OK;
    for (int i = 0; i < t->count && rc == VIT_OK; i++) {
        const ParamEntry *e = &t->entries[i];
        int64_t shape[4];
        for (int k = 0; k < e->ndim; k++) shape[k] = e->shape[k];
        rc = st_writer_add(w, e->name, ST_F32, e->ndim, shape, params + e->offset);
        snprintf(names[2 * i], sizeof names[0], "optimizer/m/%s", e->name);
        snprintf(names[2 * i + 1], sizeof names[0], "optimizer/v/%s", e->name);
        if (rc == VIT_OK && m) rc = st_writer_add(w, names[2 * i], ST_F32, e->ndim, shape, m + e->offset);
        if (rc == VIT_OK && v) rc = st_writer_add(w, names[2 * i + 1], ST_F32, e->ndim, shape, v + e->offset);
    }
    char buf[32][64];
    struct { const char *key; int slot; } fields[] = {{"model.hidden", 0}, {"model.mlp", 1}, {"model.heads", 2},
        {"model.layers", 3}, {"model.patch", 4}, {"model.image", 5}, {"model.channels", 6}, {"model.classes", 7},
        {"model.representation", 8}, {"model.dropout", 9}, {"model.gelu", 10}, {"train.update", 11},
        {"train.epoch", 12}, {"train.step_in_epoch", 13}, {"train.micro", 14}, {"train.seed", 15},
        {"train.loss_sum", 16}, {"train.hits", 17}, {"train.top5", 18}, {"train.seen", 19}};
    int vals[] = {c->hidden, c->mlp, c->heads, c->layers, c->patch, c->image, c->channels, c->classes,
                  c->representation};
    for (int i = 0; i < 9; i++) snprintf(buf[i], sizeof buf[i], "%d", vals[i]);
    snprintf(buf[9], sizeof buf[9], "%.9g", c->dropout);
    snprintf(buf[10], sizeof buf[10], "%s", c->gelu_tanh ? "tanh" : "erf");
    snprintf(buf[11], sizeof buf[11], "%ld", s->update);
    snprintf(buf[12], sizeof buf[12], "%d", s->epoch);
    snprintf(buf[13], sizeof buf[13], "%ld", s->step_in_epoch);
    snprintf(buf[14], sizeof buf[14], "%u", s->micro);
    snprintf(buf[15], sizeof buf[15], "%llu", (unsigned long long)s->seed);
    snprintf(buf[16], sizeof buf[16], "%a", s->loss_sum);  // exact, so a resumed run reports the same means
    snprintf(buf[17], sizeof buf[17], "%ld", s->hits);
    snprintf(buf[18], sizeof buf[18], "%ld", s->top5);
    snprintf(buf[19], sizeof buf[19], "%ld", s->seen);
    if (rc == VIT_OK) rc = st_writer_meta(w, "format", FORMAT);
    if (rc == VIT_OK) rc = st_writer_meta(w, "model.name", c->name);
    if (rc == VIT_OK) rc = st_writer_meta(w, "optimizer", optim_name(opt));
    char eps[32];
    snprintf(eps, sizeof eps, "%.9g", config_layernorm_eps(c));
    if (rc == VIT_OK) rc = st_writer_meta(w, "model.layernorm_eps", eps);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0] && rc == VIT_OK; i++)
        rc = st_writer_meta(w, fields[i].key, buf[fields[i].slot]);
    for (int i = 0; i < n_extra && rc == VIT_OK; i++) rc = st_writer_meta(w, extra[i].key, extra[i].value);
    if (rc == VIT_OK) rc = st_writer_save(w, path);
    st_writer_free(w);
    free(names);
    return rc;
}

static int meta_long(const Checkpoint *ck, const char *path, const char *key, long long lo, long long hi,
                     long long *out) {
    const char *v = st_meta(&ck->st, key);
    if (!v) return vit_fail("%s: metadata '%s' missing (not a vitc checkpoint?)", path, key);
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) return vit_fail("%s: metadata %s = '%s' is invalid", path, key, v);
    *out = x;
    return VIT_OK;
}

int checkpoint_is_vitc(const StFile *st) {
    const char *fmt = st_meta(st, "format");
    return fmt && !strcmp(fmt, FORMAT);
}

int checkpoint_open(Checkpoint *ck, const char *path) {
    memset(ck, 0, sizeof *ck);
    if (st_read(&ck->st, path)) return VIT_ERR;
    const char *fmt = st_meta(&ck->st, "format");
    if (!fmt || strcmp(fmt, FORMAT)) {
        // The message first: fmt points into the file's metadata.
        vit_fail("%s: not a vitc checkpoint (metadata format is '%s', expected '%s'); weights to start from go to "
                 "--pretrained", path, fmt ? fmt : "", FORMAT);
        st_free(&ck->st);
        return VIT_ERR;
    }
    ViTConfig *c = &ck->cfg;
    const char *name = st_meta(&ck->st, "model.name");
    snprintf(c->name, sizeof c->name, "%s", name ? name : "ViT");
    struct { const char *key; int *field; long long lo, hi; } ints[] = {
        {"model.hidden", &c->hidden, 1, 1 << 20},   {"model.mlp", &c->mlp, 1, 1 << 22},
        {"model.heads", &c->heads, 1, 4096},        {"model.layers", &c->layers, 1, 4096},
        {"model.patch", &c->patch, 1, 4096},        {"model.image", &c->image, 1, 1 << 16},
        {"model.channels", &c->channels, 1, 4},     {"model.classes", &c->classes, 1, 1 << 24},
        {"model.representation", &c->representation, 0, 1 << 20}};
    long long x;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (meta_long(ck, path, ints[i].key, ints[i].lo, ints[i].hi, &x)) goto fail;
        *ints[i].field = (int)x;
    }
    const char *drop = st_meta(&ck->st, "model.dropout"), *gelu = st_meta(&ck->st, "model.gelu");
    c->dropout = drop ? strtof(drop, NULL) : 0.0f;
    c->gelu_tanh = gelu && !strcmp(gelu, "tanh");
    const char *eps = st_meta(&ck->st, "model.layernorm_eps");  // absent before it existed: the official 1e-6
    c->layernorm_eps = eps ? strtof(eps, NULL) : 1e-6f;
    if (config_validate(c)) {
        vit_fail("%s: model config in the metadata is invalid: %s", path, vit_error());
        goto fail;
    }
    TrainState *s = &ck->state;
    if (meta_long(ck, path, "train.update", 0, 1LL << 40, &x)) goto fail;
    s->update = (long)x;
    if (meta_long(ck, path, "train.epoch", 0, 1 << 30, &x)) goto fail;
    s->epoch = (int)x;
    if (meta_long(ck, path, "train.step_in_epoch", 0, 1LL << 40, &x)) goto fail;
    s->step_in_epoch = (long)x;
    if (meta_long(ck, path, "train.micro", 0, 0xffffffffLL, &x)) goto fail;
    s->micro = (uint32_t)x;
    const char *seed = st_meta(&ck->st, "train.seed"), *loss = st_meta(&ck->st, "train.loss_sum");
    s->seed = seed ? strtoull(seed, NULL, 10) : 0;
    s->loss_sum = loss ? strtod(loss, NULL) : 0;
    if (meta_long(ck, path, "train.hits", 0, 1LL << 50, &x)) goto fail;
    s->hits = (long)x;
    if (meta_long(ck, path, "train.top5", 0, 1LL << 50, &x)) goto fail;
    s->top5 = (long)x;
    if (meta_long(ck, path, "train.seen", 0, 1LL << 50, &x)) goto fail;
    s->seen = (long)x;
    OptimConfig oc;
    const char *opt = st_meta(&ck->st, "optimizer");
    ck->has_optimizer = opt && optim_config_default(&oc, opt) == VIT_OK;
    if (ck->has_optimizer) ck->opt = oc.kind;
    return VIT_OK;
fail:
    st_free(&ck->st);
    return VIT_ERR;
}

static int copy_tensor(const Checkpoint *ck, const char *path, const ParamEntry *e, const char *name, float *dst) {
    const StTensor *t = st_find(&ck->st, name);
    if (!t) return vit_fail("%s: tensor %s missing", path, name);
    int ok = t->dtype == ST_F32 && t->ndim == e->ndim;
    for (int k = 0; ok && k < e->ndim; k++) ok = t->shape[k] == e->shape[k];
    if (!ok) return vit_fail("%s: tensor %s has the wrong dtype or shape for this model", path, name);
    memcpy(dst, t->data, e->size * sizeof(float));
    return VIT_OK;
}

int checkpoint_copy(const Checkpoint *ck, const char *path, const ParamTable *t, float *params, float *m, float *v) {
    char name[160];
    for (int i = 0; i < t->count; i++) {
        const ParamEntry *e = &t->entries[i];
        if (copy_tensor(ck, path, e, e->name, params + e->offset)) return VIT_ERR;
        snprintf(name, sizeof name, "optimizer/m/%s", e->name);
        if (m && copy_tensor(ck, path, e, name, m + e->offset)) return VIT_ERR;
        snprintf(name, sizeof name, "optimizer/v/%s", e->name);
        if (v && copy_tensor(ck, path, e, name, v + e->offset)) return VIT_ERR;
    }
    return VIT_OK;
}

void checkpoint_close(Checkpoint *ck) {
    st_free(&ck->st);
    memset(ck, 0, sizeof *ck);
}
