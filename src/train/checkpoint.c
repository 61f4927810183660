#include "checkpoint.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "optim/optimizer.h"
#include "util/crc32c.h"
#include "util/status.h"

#define FORMAT "vitc-checkpoint-1"
#define EMA_PREFIX "ema/"         // the moving average's tensors: "ema/<official name>"
#define EMA_META "train.model_ema"  // "1" when the file holds them

// ---------------------------------------------------------------------------------------
// Checksums (the design is in checkpoint.h)
// ---------------------------------------------------------------------------------------

#define CRC_HEADER "crc32c.header"
#define CRC_PREFIX "crc32c/"

// One tensor as the header describes it; the header checksum covers these fields.
typedef struct {
    const char *name;
    StDtype dtype;
    int ndim;
    const int64_t *shape;
} TensorDesc;

// Feeds s and its terminating NUL: NUL cannot occur inside a field, so fields never run together.
static uint32_t crc_field(uint32_t c, const char *s) { return crc32c(c, s, strlen(s) + 1); }

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const MetaPair *)a)->key, ((const MetaPair *)b)->key);
}

static int cmp_desc(const void *a, const void *b) {
    return strcmp(((const TensorDesc *)a)->name, ((const TensorDesc *)b)->name);
}

// The header's canonical form: "m\0KEY\0VALUE\0" per metadata entry in key order (all but
// CRC_HEADER), then "t\0NAME\0DTYPE\0D0,D1,...\0" per tensor in name order. Sorts both arrays.
static uint32_t header_crc(MetaPair *meta, int n_meta, TensorDesc *t, int n_t) {
    qsort(meta, (size_t)n_meta, sizeof *meta, cmp_meta);
    qsort(t, (size_t)n_t, sizeof *t, cmp_desc);
    uint32_t c = 0;
    for (int i = 0; i < n_meta; i++) c = crc_field(crc_field(crc_field(c, "m"), meta[i].key), meta[i].value);
    for (int i = 0; i < n_t; i++) {
        char shape[8 * 24] = "";
        size_t o = 0;
        for (int k = 0; k < t[i].ndim && o < sizeof shape; k++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
        c = crc_field(crc_field(crc_field(crc_field(c, "t"), t[i].name), st_dtype_name(t[i].dtype)), shape);
    }
    return c;
}

// "%08x" as written; anything else is damage.
static int parse_crc(const char *s, uint32_t *out) {
    uint32_t v = 0;
    int n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0 || n >= 8) return VIT_ERR;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return n == 8 ? VIT_OK : VIT_ERR;
}

static int is_crc_key(const char *key) { return !strncmp(key, "crc32c", 6); }

// Every tensor against its "crc32c/<name>" entry, and no entry without its tensor.
static int verify_tensors(const StFile *st, const char *path) {
    int matched = 0;
    for (int i = 0; i < st->meta_count; i++) {
        const char *key = st->meta_keys[i];
        if (strncmp(key, CRC_PREFIX, strlen(CRC_PREFIX))) continue;
        const StTensor *t = st_find(st, key + strlen(CRC_PREFIX));
        if (!t) return vit_fail("%s: metadata %s: no tensor %s in the file (damaged header)", path, key,
                                key + strlen(CRC_PREFIX));
        uint32_t want, got = crc32c(0, t->data, t->nbytes);
        if (parse_crc(st->meta_values[i], &want))
            return vit_fail("%s: tensor %s: checksum '%s' is not 8 hex digits (damaged header)", path, t->name,
                            st->meta_values[i]);
        if (got != want)
            return vit_fail("%s: tensor %s: checksum mismatch (stored %08x, computed %08x): the file is damaged",
                            path, t->name, want, got);
        matched++;
    }
    if (matched == st->count) return VIT_OK;
    for (int i = 0; i < st->count; i++) {
        size_t n = strlen(CRC_PREFIX) + strlen(st->tensors[i].name) + 1;
        char *key = malloc(n);
        if (!key) return vit_fail("%s: out of memory", path);
        snprintf(key, n, "%s%s", CRC_PREFIX, st->tensors[i].name);
        int found = st_meta(st, key) != NULL;
        free(key);
        if (!found) return vit_fail("%s: tensor %s has no checksum (damaged header)", path, st->tensors[i].name);
    }
    return VIT_OK;
}

int checkpoint_verify(const StFile *st, const char *path, int *has_checksums) {
    *has_checksums = 0;
    const char *stored = st_meta(st, CRC_HEADER);
    int crc_keys = 0;
    for (int i = 0; i < st->meta_count; i++) crc_keys += is_crc_key(st->meta_keys[i]);
    // Other checksum entries without this one: the key itself was damaged, not a file without checksums.
    if (!stored)
        return crc_keys ? vit_fail("%s: metadata %s missing but %d other checksum entries present (damaged header)",
                                   path, CRC_HEADER, crc_keys)
                        : VIT_OK;
    uint32_t want;
    if (parse_crc(stored, &want))
        return vit_fail("%s: metadata %s = '%s' is not 8 hex digits (damaged header)", path, CRC_HEADER, stored);
    MetaPair *meta = malloc((size_t)(st->meta_count ? st->meta_count : 1) * sizeof *meta);
    TensorDesc *desc = malloc((size_t)(st->count ? st->count : 1) * sizeof *desc);
    if (!meta || !desc) {
        free(meta), free(desc);
        return vit_fail("%s: out of memory", path);
    }
    int n_meta = 0;
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], CRC_HEADER)) meta[n_meta++] = (MetaPair){st->meta_keys[i], st->meta_values[i]};
    for (int i = 0; i < st->count; i++) {
        const StTensor *t = &st->tensors[i];
        desc[i] = (TensorDesc){t->name, t->dtype, t->ndim, t->shape};
    }
    uint32_t got = header_crc(meta, n_meta, desc, st->count);
    free(meta), free(desc);
    if (got != want)
        return vit_fail("%s: header checksum mismatch (stored %08x, computed %08x): the metadata or the tensor "
                        "table is damaged", path, want, got);
    if (verify_tensors(st, path)) return VIT_ERR;
    *has_checksums = 1;
    return VIT_OK;
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

typedef struct {
    char name[128], crc_key[144], crc[12];
    int64_t shape[4];
    TensorDesc desc;
    const float *data;
} SaveTensor;

// Parameters, then (when given) the m and v slots and the weights' moving average, each with
// its checksum entry.
static int collect_tensors(SaveTensor *st, const ParamTable *t, const float *params, const float *m,
                           const float *v, const float *ema) {
    int n = 0;
    for (int i = 0; i < t->count; i++) {
        const ParamEntry *e = &t->entries[i];
        const float *src[4] = {params, m, v, ema};
        const char *prefix[4] = {"", "optimizer/m/", "optimizer/v/", EMA_PREFIX};
        for (int k = 0; k < 4; k++) {
            if (!src[k]) continue;
            SaveTensor *s = &st[n++];
            snprintf(s->name, sizeof s->name, "%s%s", prefix[k], e->name);
            snprintf(s->crc_key, sizeof s->crc_key, "%s%s", CRC_PREFIX, s->name);
            for (int d = 0; d < e->ndim; d++) s->shape[d] = e->shape[d];
            s->data = src[k] + e->offset;
            snprintf(s->crc, sizeof s->crc, "%08x", crc32c(0, s->data, e->size * sizeof(float)));
            s->desc = (TensorDesc){s->name, ST_F32, e->ndim, s->shape};
        }
    }
    return n;
}

// Adds or replaces (later values win, as in the writer).
static void meta_put(MetaPair *meta, int *n, const char *key, const char *value) {
    for (int i = 0; i < *n; i++)
        if (!strcmp(meta[i].key, key)) {
            meta[i].value = value;
            return;
        }
    meta[(*n)++] = (MetaPair){key, value};
}

// The model config and the training position; buf holds the formatted values.
static int config_meta(MetaPair *meta, char (*buf)[64], const ViTConfig *c, OptimizerKind opt, const TrainState *s) {
    static const char *const keys[] = {"model.hidden", "model.mlp", "model.heads", "model.layers", "model.patch",
        "model.image", "model.channels", "model.classes", "model.representation", "model.dropout", "model.gelu",
        "train.update", "train.epoch", "train.step_in_epoch", "train.micro", "train.seed", "train.loss_sum",
        "train.hits", "train.top5", "train.seen", "model.layernorm_eps"};
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
    snprintf(buf[20], sizeof buf[20], "%.9g", config_layernorm_eps(c));
    int n = 0;
    meta[n++] = (MetaPair){"format", FORMAT};
    meta[n++] = (MetaPair){"model.name", c->name};
    meta[n++] = (MetaPair){"optimizer", optim_name(opt)};
    for (int i = 0; i < 21; i++) meta[n++] = (MetaPair){keys[i], buf[i]};
    return n;
}

// Hands everything to the writer: tensors, metadata, and the header checksum over both.
static int write_file(const char *path, SaveTensor *st, int n_t, MetaPair *meta, int n_meta) {
    StWriter *w = st_writer_new();
    TensorDesc *desc = malloc((size_t)n_t * sizeof *desc);
    MetaPair *sorted = malloc((size_t)n_meta * sizeof *sorted);
    if (!w || !desc || !sorted) {
        st_writer_free(w), free(desc), free(sorted);
        return vit_fail("out of memory writing %s", path);
    }
    int rc = VIT_OK;
    for (int i = 0; i < n_t && rc == VIT_OK; i++) {
        desc[i] = st[i].desc;
        rc = st_writer_add(w, st[i].name, ST_F32, st[i].desc.ndim, st[i].shape, st[i].data);
    }
    for (int i = 0; i < n_meta && rc == VIT_OK; i++) rc = st_writer_meta(w, meta[i].key, meta[i].value);
    memcpy(sorted, meta, (size_t)n_meta * sizeof *sorted);
    char crc[12];
    snprintf(crc, sizeof crc, "%08x", header_crc(sorted, n_meta, desc, n_t));
    if (rc == VIT_OK) rc = st_writer_meta(w, CRC_HEADER, crc);
    if (rc == VIT_OK) rc = st_writer_save(w, path);
    st_writer_free(w), free(desc), free(sorted);
    return rc;
}

int checkpoint_save(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                    const float *m, const float *v, OptimizerKind opt, const TrainState *s, const MetaPair *extra,
                    int n_extra) {
    return checkpoint_save_ema(path, c, t, params, m, v, NULL, opt, s, extra, n_extra);
}

int checkpoint_save_ema(const char *path, const ViTConfig *c, const ParamTable *t, const float *params,
                        const float *m, const float *v, const float *ema, OptimizerKind opt, const TrainState *s,
                        const MetaPair *extra, int n_extra) {
    int max_t = t->count * 4, max_meta = 25 + n_extra + max_t;
    SaveTensor *st = malloc((size_t)(max_t ? max_t : 1) * sizeof *st);
    MetaPair *meta = malloc((size_t)max_meta * sizeof *meta);
    if (!st || !meta) {
        free(st), free(meta);
        return vit_fail("out of memory writing %s", path);
    }
    char buf[21][64];
    int n_meta = config_meta(meta, buf, c, opt, s);
    for (int i = 0; i < n_extra; i++) meta_put(meta, &n_meta, extra[i].key, extra[i].value);
    if (ema) meta_put(meta, &n_meta, EMA_META, "1");
    int n_t = collect_tensors(st, t, params, m, v, ema);
    for (int i = 0; i < n_t; i++) meta_put(meta, &n_meta, st[i].crc_key, st[i].crc);
    int rc = VIT_OK;
    for (int i = 0; i < n_meta && rc == VIT_OK; i++)  // the header checksum is computed, never passed in
        if (!strcmp(meta[i].key, CRC_HEADER)) rc = vit_fail("%s: metadata key %s is reserved", path, CRC_HEADER);
    if (rc == VIT_OK) rc = write_file(path, st, n_t, meta, n_meta);
    free(st), free(meta);
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
    // Checksums first: a damaged file must say so, not fail later on a garbled value.
    if (checkpoint_verify(&ck->st, path, &ck->has_checksums)) {
        st_free(&ck->st);
        return VIT_ERR;
    }
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
    const char *ema = st_meta(&ck->st, EMA_META);
    ck->has_ema = ema && !strcmp(ema, "1");
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

int checkpoint_copy_ema(const Checkpoint *ck, const char *path, const ParamTable *t, float *ema) {
    if (!ck->has_ema)
        return vit_fail("%s: holds no moving average of the weights (its run had no --model_ema)", path);
    char name[160];
    for (int i = 0; i < t->count; i++) {
        const ParamEntry *e = &t->entries[i];
        snprintf(name, sizeof name, "%s%s", EMA_PREFIX, e->name);
        if (copy_tensor(ck, path, e, name, ema + e->offset)) return VIT_ERR;
    }
    return VIT_OK;
}

void checkpoint_close(Checkpoint *ck) {
    st_free(&ck->st);
    memset(ck, 0, sizeof *ck);
}
