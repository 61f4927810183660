// PyTorch weights (src/model/weights_torch.c) against tools/make_torch_fixtures.py's files: the
// naming of each file; timm (fp32) and Hugging Face (bf16 classifier, fp16 ViTModel with pooler)
// imports give PyTorch's logits / pooler output through vit's forward pass; export to timm and
// to a Hugging Face folder re-imports bit for bit; bad files are refused naming file and tensor.
// VIT_TORCH_EXPORT_KEEP=DIR keeps the exports there for tools/check_torch_export.py;
// VIT_TORCH_VERBOSE=1 prints the logit differences.
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "io/npz.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "model/weights_torch.h"
#include "testdir.h"
#include "util/status.h"

static Backend *be;
static const char *FX = "tests/fixtures";
static StFile fx;  // torch_logits.safetensors

static ViTConfig small_config(float eps, int classes, int representation) {
    ViTConfig c = {.hidden = 48, .mlp = 96, .heads = 3, .layers = 2, .patch = 8, .image = 32, .channels = 3,
                   .classes = classes, .representation = representation, .layernorm_eps = eps};
    strcpy(c.name, "ViT-test");
    return c;
}

static char *fixture(const char *name) {
    static char buf[4][256];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", FX, name);
    return p;
}

static StTensor *tensor(StFile *f, const char *name) { return (StTensor *)st_find(f, name); }

static void test_naming(void) {
    struct { const char *file; TorchNaming want; } cases[] = {
        {"torch_timm.safetensors", TORCH_TIMM}, {"torch_hf_cls.safetensors", TORCH_HF},
        {"torch_hf_model.safetensors", TORCH_HF}, {"npz_logits.safetensors", TORCH_NONE},
        {"parity.safetensors", TORCH_NONE}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        StFile f;
        if (st_read(&f, fixture(cases[k].file))) {
            CHECK(0, "%s", vit_error());
            continue;
        }
        TorchNaming n = weights_torch_naming(&f);
        CHECK(n == cases[k].want, "%s: naming %s, expected %s", cases[k].file, weights_torch_naming_name(n),
              weights_torch_naming_name(cases[k].want));
        if (n == TORCH_NONE) {
            NpzFile o;
            CHECK(weights_from_torch(&f, "x.safetensors", 3, &o) == VIT_ERR && has(vit_error(), "x.safetensors"),
                  "%s: import of a non-PyTorch file: '%s'", cases[k].file, vit_error());
        }
        st_free(&f);
    }
    CHECK(!strcmp(weights_torch_naming_name(TORCH_TIMM), "timm") &&
              !strcmp(weights_torch_naming_name(TORCH_HF), "Hugging Face transformers"),
          "naming names");
}

// Appends a [n,n] identity head, so the logits are the pooled features.
static int add_identity_head(NpzFile *f, int n) {
    NpzArray *a = realloc(f->arrays, (size_t)(f->count + 2) * sizeof *a);
    if (!a) return VIT_ERR;
    f->arrays = a;
    NpzArray k = {strdup("head/kernel"), 2, {n, n}, (size_t)n * n, calloc((size_t)n * n, sizeof(float))};
    NpzArray b = {strdup("head/bias"), 1, {n}, (size_t)n, calloc((size_t)n, sizeof(float))};
    for (int i = 0; k.data && i < n; i++) k.data[i * n + i] = 1.0f;
    a[f->count++] = k;
    a[f->count++] = b;
    return k.name && k.data && b.name && b.data ? VIT_OK : VIT_ERR;
}

// Imports a fixture into *m (created here) and checks its forward pass against `ref`.
static int import_case(ViT *m, const char *file, ViTConfig c, const char *ref, int pooled) {
    StFile st;
    NpzFile f;
    const char *path = fixture(file);
    memset(m, 0, sizeof *m);
    if (st_read(&st, path) || weights_from_torch(&st, path, c.heads, &f)) {
        CHECK(0, "%s", vit_error());
        return VIT_ERR;
    }
    st_free(&st);
    c.representation = weights_npz_representation(&f);
    CHECK(c.representation == (pooled ? 48 : 0), "%s: pre_logits width %d", file, c.representation);
    if (pooled && add_identity_head(&f, 48)) CHECK(0, "out of memory");
    FILE *report = tmpfile();
    char text[1024] = "";
    int ok = vit_create(m, &c, be, 2, 0) == 0 && weights_load_npz(m, &f, path, 0, 0, report) == 0;
    CHECK(ok, "%s: %s", file, vit_error());
    if (report) {
        rewind(report);
        size_t n = fread(text, 1, sizeof text - 1, report);
        text[n] = '\0';
        fclose(report);
    }
    CHECK(!has(text, "unused") && !has(text, "new head"), "%s: the load reported '%s'", file, text);
    npz_free(&f);
    if (!ok) return VIT_ERR;
    const StTensor *img = st_find(&fx, "images_u8"), *want = st_find(&fx, ref);
    ok = vit_forward(m, img->data, NULL, 2, 0, 0, 0, 0) == 0;
    CHECK(ok, "%s forward: %s", file, vit_error());
    if (ok) {
        double r = check_rel_diff(m->host_logits, want->data, (size_t)2 * c.classes);
        if (getenv("VIT_TORCH_VERBOSE")) printf("%s: relative difference %.3g\n", file, r);
        CHECK(r <= 1e-4, "%s: vit's output vs PyTorch's %s: relative difference %.3g", file, ref, r);
    }
    return ok ? VIT_OK : VIT_ERR;
}

// Imports an export back: the same names, shapes and bits as the model's parameters.
static void check_reimport(const char *path, TorchNaming want, const ViT *m, const float *host) {
    StFile st;
    NpzFile f;
    if (st_read(&st, path)) {
        CHECK(0, "%s", vit_error());
        return;
    }
    TorchNaming n = weights_torch_naming(&st);
    CHECK(n == want, "%s: naming %s", path, weights_torch_naming_name(n));
    const char *fmt = st_meta(&st, "format");
    CHECK(fmt && !strcmp(fmt, "pt"), "%s: metadata format '%s'", path, fmt ? fmt : "(none)");
    for (int i = 0; i < st.count; i++)
        CHECK(st.tensors[i].dtype == ST_F32, "%s: %s is %s", path, st.tensors[i].name,
              st_dtype_name(st.tensors[i].dtype));
    if (weights_from_torch(&st, path, m->cfg.heads, &f)) {
        CHECK(0, "%s: %s", path, vit_error());
        st_free(&st);
        return;
    }
    CHECK(f.count == m->table.count, "%s: %d tensors back, the model has %d", path, f.count, m->table.count);
    int same = 1;
    for (int i = 0; i < m->table.count; i++) {
        const ParamEntry *e = &m->table.entries[i];
        const NpzArray *a = npz_find(&f, e->name);
        int ok = a && a->ndim == e->ndim && a->count == e->size;
        for (int k = 0; ok && k < e->ndim; k++) ok = a->shape[k] == e->shape[k];
        ok = ok && !memcmp(a->data, host + e->offset, e->size * sizeof(float));
        if (!ok) CHECK(0, "%s: %s not given back bit for bit", path, e->name);
        same &= ok;
    }
    CHECK(same, "%s: every parameter back bit for bit", path);
    npz_free(&f);
    st_free(&st);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 16);
    if (buf) buf[fread(buf, 1, (1 << 16) - 1, f)] = '\0';
    fclose(f);
    return buf;
}

// Exports m both ways into dir as timm_from_<tag>.safetensors and hf_from_<tag>/.
static void export_case(const ViT *m, const char *tag, const char *dir) {
    float *host = malloc(m->table.total * sizeof(float));
    if (!host) return;
    m->be->download(m->be, host, m->params, m->table.total * sizeof(float));
    char timm[512], hf[512], cfg[600], eps[64];
    snprintf(timm, sizeof timm, "%s/timm_from_%s.safetensors", dir, tag);
    snprintf(hf, sizeof hf, "%s/hf_from_%s", dir, tag);
    int ok = weights_save_timm(timm, &m->cfg, &m->table, host) == 0;
    CHECK(ok, "timm export: %s", vit_error());
    if (ok) check_reimport(timm, TORCH_TIMM, m, host);
    ok = weights_save_hf(hf, &m->cfg, &m->table, host) == 0;
    CHECK(ok, "Hugging Face export: %s", vit_error());
    snprintf(cfg, sizeof cfg, "%s/model.safetensors", hf);
    if (ok) check_reimport(cfg, TORCH_HF, m, host);
    snprintf(cfg, sizeof cfg, "%s/config.json", hf);
    char *text = read_text(cfg);
    snprintf(eps, sizeof eps, "\"layer_norm_eps\": %s", m->cfg.layernorm_eps == 1e-12f ? "1e-12" : "1e-06");
    CHECK(text && has(text, "\"model_type\": \"vit\"") && has(text, eps) && has(text, "\"hidden_act\": \"gelu\"") &&
              has(text, "\"9\": \"LABEL_9\"") && has(text, "\"num_attention_heads\": 3"),
          "%s: %s", cfg, text ? text : "missing");
    free(text);
    CHECK(testdir_count(dir, ".tmp.") == 0 && testdir_count(hf, ".tmp.") == 0, "%s: temporary files left", dir);
    free(host);
}

static void test_models(const char *dir) {
    ViT m;
    if (import_case(&m, "torch_timm.safetensors", small_config(0, 10, 0), "logits/timm", 0) == VIT_OK)
        export_case(&m, "timm", dir);
    vit_destroy(&m);
    if (import_case(&m, "torch_hf_cls.safetensors", small_config(1e-12f, 10, 0), "logits/hf_cls", 0) == VIT_OK)
        export_case(&m, "hf", dir);
    vit_destroy(&m);
    if (import_case(&m, "torch_hf_model.safetensors", small_config(1e-12f, 48, 0), "pooled/hf_model", 1)) {
        vit_destroy(&m);
        return;
    }
    // pre_logits has no place in either export.
    float *host = calloc(m.table.total, sizeof(float));
    const char *p = testdir_path(dir, "pre.safetensors");
    CHECK(host && weights_save_timm(p, &m.cfg, &m.table, host) == VIT_ERR && has(vit_error(), p) &&
              has(vit_error(), "pre_logits"),
          "timm export with pre_logits: '%s'", vit_error());
    p = testdir_path(dir, "pre_hf");
    CHECK(host && weights_save_hf(p, &m.cfg, &m.table, host) == VIT_ERR && has(vit_error(), p) &&
              has(vit_error(), "pre_logits"),
          "Hugging Face export with pre_logits: '%s'", vit_error());
    free(host);
    vit_destroy(&m);
}

// Runs the import with tensor `name` renamed / reshaped / retyped, expecting an error with `needle`.
static void expect_error(const char *file, const char *name, const char *rename, const int64_t *shape, int dtype,
                         int heads, const char *needle) {
    StFile st;
    NpzFile f;
    if (st_read(&st, fixture(file))) {
        CHECK(0, "%s", vit_error());
        return;
    }
    StTensor *t = name ? tensor(&st, name) : NULL;
    char *saved = t ? t->name : NULL;
    if (t && rename) t->name = (char *)rename;
    if (t && shape) memcpy(t->shape, shape, (size_t)t->ndim * sizeof *shape);
    if (t && dtype >= 0) t->dtype = (StDtype)dtype;
    int rc = weights_from_torch(&st, "w.safetensors", heads, &f);
    CHECK(rc == VIT_ERR && has(vit_error(), "w.safetensors") && has(vit_error(), needle), "%s %s: got '%s'", file,
          name ? name : "", rc ? vit_error() : "success");
    if (rc == VIT_OK) npz_free(&f);
    if (t) t->name = saved;
    st_free(&st);
}

static void test_bad(void) {
    const char *T = "torch_timm.safetensors", *H = "torch_hf_cls.safetensors";
    int64_t qkv[2] = {48, 144}, pos[3] = {1, 16, 48};
    expect_error(T, "blocks.1.attn.qkv.weight", NULL, qkv, -1, 3, "blocks.1.attn.qkv.weight has shape (48, 144)");
    expect_error(T, "blocks.1.attn.proj.weight", "blocks.1.attn.proj.w", NULL, -1, 3,
                 "no tensor blocks.1.attn.proj.weight");
    expect_error(T, "norm.weight", "fc_norm.weight", NULL, -1, 3, "fc_norm.weight: a timm model with global-average");
    expect_error(T, "blocks.0.norm1.weight", "blocks.0.ls1.gamma", NULL, -1, 3, "blocks.0.ls1.gamma: layer scale");
    expect_error(T, "cls_token", "cls_tokens", NULL, -1, 3, "no cls_token");
    expect_error(T, "pos_embed", NULL, pos, -1, 3, "pos_embed has 16 tokens");
    expect_error(T, "head.bias", NULL, NULL, ST_I32, 3, "head.bias has dtype I32");
    expect_error(T, NULL, NULL, NULL, -1, 5, "not divisible by 5 heads");
    expect_error(H, "vit.encoder.layer.1.attention.attention.key.bias", "vit.encoder.layer.1.attention.attention.k",
                 NULL, -1, 3, "no tensor vit.encoder.layer.1.attention.attention.key.bias");
    expect_error(H, "vit.embeddings.cls_token", "vit.embeddings.distillation_token", NULL, -1, 3, "distilled DeiT");
    expect_error("npz_logits.safetensors", NULL, NULL, NULL, -1, 3, "not a timm or Hugging Face");
}

// An unknown tensor is carried under its own name (the load reports it unused), and
// transformers 5's in-memory names give the same arrays as save_pretrained's.
static void test_extra_and_v5_names(void) {
    StFile st;
    NpzFile a, b;
    if (st_read(&st, fixture("torch_hf_cls.safetensors"))) {
        CHECK(0, "%s", vit_error());
        return;
    }
    int ok = weights_from_torch(&st, "hf", 3, &a) == 0;
    CHECK(ok, "%s", vit_error());
    static const char *map[][2] = {{"attention.attention.query.", "attention.q_proj."},
                                   {"attention.attention.key.", "attention.k_proj."},
                                   {"attention.attention.value.", "attention.v_proj."},
                                   {"attention.output.dense.", "attention.o_proj."},
                                   {"intermediate.dense.", "mlp.fc1."},
                                   {"output.dense.", "mlp.fc2."}};
    char **saved = calloc((size_t)st.count, sizeof *saved), names[64][128];
    int renamed = 0;
    for (int i = 0; saved && i < st.count && renamed < 64; i++) {
        int layer;
        char rest[96];
        if (sscanf(st.tensors[i].name, "vit.encoder.layer.%d.%95s", &layer, rest) != 2) continue;
        char *r = rest;
        for (size_t k = 0; k < sizeof map / sizeof *map; k++)
            if (!strncmp(rest, map[k][0], strlen(map[k][0]))) {
                snprintf(names[renamed], sizeof names[0], "vit.layers.%d.%s%s", layer, map[k][1],
                         rest + strlen(map[k][0]));
                r = NULL;
            }
        if (r) snprintf(names[renamed], sizeof names[0], "vit.layers.%d.%s", layer, rest);
        saved[i] = st.tensors[i].name;
        st.tensors[i].name = names[renamed++];
    }
    CHECK(renamed == 32, "renamed %d tensors", renamed);
    int same = ok && weights_from_torch(&st, "hf5", 3, &b) == 0;
    CHECK(same, "transformers 5 names: %s", vit_error());
    for (int i = 0; same && i < a.count; i++) {
        const NpzArray *x = &a.arrays[i], *y = npz_find(&b, x->name);
        same = y && y->count == x->count && !memcmp(x->data, y->data, x->count * sizeof(float));
    }
    CHECK(same && a.count == b.count, "transformers 5 names give the same arrays");
    if (same) npz_free(&b);
    for (int i = 0; saved && i < st.count; i++)
        if (saved[i]) st.tensors[i].name = saved[i];
    free(saved);

    // One more tensor, unknown to the rules.
    StTensor *grown = realloc(st.tensors, (size_t)(st.count + 1) * sizeof *grown);
    float extra[4] = {1, 2, 3, 4};
    if (grown) {
        st.tensors = grown;
        grown[st.count++] = (StTensor){"vit.encoder.layer.0.attention.relative_bias", ST_F32, 1, {4}, 16, extra};
        NpzFile c;
        int rc = weights_from_torch(&st, "hf", 3, &c);
        const NpzArray *e = rc ? NULL : npz_find(&c, "vit.encoder.layer.0.attention.relative_bias");
        CHECK(e && e->count == 4 && e->data[3] == 4.0f && c.count == a.count + 1, "unknown tensor carried: %s",
              rc ? vit_error() : "missing");
        if (!rc) npz_free(&c);
        st.count--;
    }
    if (ok) npz_free(&a);
    st_free(&st);
}

int main(void) {
    be = backend_cpu_create(0);
    if (st_read(&fx, fixture("torch_logits.safetensors"))) {
        CHECK(0, "%s", vit_error());
        return check_report("weights_torch");
    }
    char dir[] = "/tmp/test_weights_torch_XXXXXX";
    const char *keep = getenv("VIT_TORCH_EXPORT_KEEP");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (keep && *keep) mkdir(keep, 0777);
    test_naming();
    test_models(keep && *keep ? keep : dir);
    test_bad();
    test_extra_and_v5_names();
    if (keep && *keep) printf("kept the exports in %s\n", keep);
    testdir_remove(dir);
    st_free(&fx);
    be->destroy(be);
    return check_report("weights_torch");
}
