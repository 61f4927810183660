// ONNX export (src/model/onnx_export.c) of two tiny models, one with erf GELU and no
// pre_logits, one with tanh GELU, pre_logits and another LayerNorm epsilon. Each file is read
// back with the protobuf-c code of proto/onnx.proto (opset, interface, initializers and their
// bytes, node order and attributes); where python3 imports onnx, tools/check_onnx.py runs
// ONNX's full checker and, with onnxruntime, the model on 3 and on 1 and 2 images against
// vit's own logits. Without onnx that part is reported as not checked. Bad folders, a table
// that is not the config's, and leftovers of the atomic write are checked too.
// VIT_ONNX_KEEP=1 leaves the folder (model.onnx, input.f32, logits.f32) and prints its name.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "backend/backend.h"
#include "check.h"
#include "model/onnx_export.h"
#include "model/vit.h"
#include "onnx.pb-c.h"
#include "testdir.h"
#include "util/rng.h"
#include "util/status.h"

enum { NIMG = 3 };

static char g_dir[64];

static ViTConfig tiny(int variant) {
    ViTConfig c = {.hidden = 48, .mlp = 96, .heads = 3, .layers = 2, .patch = 8, .image = 32, .channels = 3,
                   .classes = 10, .representation = variant ? 24 : 0, .dropout = 0.1f, .gelu_tanh = variant,
                   .layernorm_eps = variant ? 1e-5f : 0.0f};
    snprintf(c.name, sizeof c.name, "%s", variant ? "tiny-pre-tanh" : "tiny-erf");
    return c;
}

// Random parameters of the right scale everywhere (the official init zeroes the head, the
// class token and the biases, which would hide a mistake in their layout).
static void fill_params(const ParamTable *t, float *p, uint64_t seed) {
    for (int k = 0; k < t->count; k++) {
        const ParamEntry *e = &t->entries[k];
        const char *end = e->name + strlen(e->name);
        int is_scale = end - e->name >= 6 && !strcmp(end - 6, "/scale");
        for (size_t i = 0; i < e->size; i++) {
            double u = 2 * rng_uniform(seed, (uint32_t)k, i) - 1;
            p[e->offset + i] = (float)(e->fan_in > 0 ? u * sqrt(3.0 / e->fan_in) : is_scale ? 1 + 0.5 * u : 0.5 * u);
        }
    }
}

static int write_floats(const char *path, const float *v, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return VIT_ERR;
    size_t w = fwrite(v, sizeof *v, n, f);
    return fclose(f) == 0 && w == n ? VIT_OK : VIT_ERR;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = buf ? (size_t)n : 0;
    return buf;
}

// ---- the file read back with protobuf-c ----

static int dims_are(const Onnx__ValueInfoProto *v, const char *name, int n, const int64_t *want) {
    if (!v || !v->name || strcmp(v->name, name) || !v->type || !v->type->tensor_type) return 0;
    const Onnx__TypeProto__Tensor *t = v->type->tensor_type;
    if (t->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || !t->shape || (int)t->shape->n_dim != n) return 0;
    const Onnx__TensorShapeProto__Dimension *d0 = t->shape->dim[0];
    if (d0->value_case != ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM || strcmp(d0->dim_param, "batch"))
        return 0;
    for (int i = 1; i < n; i++)
        if (t->shape->dim[i]->value_case != ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE ||
            t->shape->dim[i]->dim_value != want[i])
            return 0;
    return 1;
}

static const Onnx__TensorProto *find_init(const Onnx__GraphProto *g, const char *name) {
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !strcmp(g->initializer[i]->name, name)) return g->initializer[i];
    return NULL;
}

// Every official parameter is an initializer with its own floats (the patch kernel as OIHW).
static void check_initializers(const Onnx__GraphProto *g, const ViTConfig *c, const ParamTable *t, const float *p) {
    int found = 0, same = 0, others_named = 1;
    size_t bytes = 0;
    for (int k = 0; k < t->count; k++) {
        const ParamEntry *e = &t->entries[k];
        const Onnx__TensorProto *x = find_init(g, e->name);
        if (!x || x->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || !x->has_raw_data) continue;
        found++;
        bytes += x->raw_data.len;
        if (x->raw_data.len != e->size * sizeof(float)) continue;
        const float *v = (const float *)x->raw_data.data;  // protobuf-c's unpack aligns its buffers
        if (strcmp(e->name, "embedding/kernel")) {
            same += !memcmp(v, p + e->offset, x->raw_data.len);
            continue;
        }
        int D = c->hidden, C = c->channels, P = c->patch, ok = x->n_dims == 4 && x->dims[0] == D && x->dims[1] == C;
        for (int o = 0; ok && o < D; o++)
            for (int i = 0; i < C; i++)
                for (int y = 0; y < P; y++)
                    for (int z = 0; z < P; z++)
                        ok &= v[((o * C + i) * P + y) * P + z] == p[e->offset + ((y * P + z) * C + i) * D + o];
        same += ok;
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        const char *n = g->initializer[i]->name;
        int official = 0;
        for (int k = 0; k < t->count && !official; k++) official = !strcmp(t->entries[k].name, n);
        if (!official && strncmp(n, "vitc/", 5)) others_named = 0;
    }
    CHECK(found == t->count && same == t->count, "%s: %d of %d parameters are initializers, %d with their floats",
          c->name, found, t->count, same);
    CHECK(bytes == t->total * sizeof(float), "%s: parameter initializers hold %zu bytes, the table %zu", c->name,
          bytes, t->total * sizeof(float));
    CHECK(others_named, "%s: an initializer is neither a parameter nor vitc/...", c->name);
}

static int64_t attr_i(const Onnx__NodeProto *n, const char *name, float *f) {
    for (size_t i = 0; i < n->n_attribute; i++)
        if (!strcmp(n->attribute[i]->name, name)) {
            if (f) *f = n->attribute[i]->f;
            return n->attribute[i]->has_i ? n->attribute[i]->i : -999;
        }
    return -1000;
}

// Topological order, LayerNorm attributes, the GELU form and a reasonable node count.
static void check_nodes(const Onnx__GraphProto *g, const ViTConfig *c) {
    size_t nn = g->n_node;
    int ordered = 1, ln = 0, ln_ok = 0, erf = 0, tanh_ = 0;
    for (size_t i = 0; i < nn; i++) {
        const Onnx__NodeProto *n = g->node[i];
        for (size_t j = 0; j < n->n_input; j++) {
            const char *in = n->input[j];
            int known = !strcmp(in, "images") || find_init(g, in) != NULL;
            for (size_t k = 0; k < i && !known; k++) known = !strcmp(g->node[k]->output[0], in);
            ordered &= known;
        }
        if (!strcmp(n->op_type, "LayerNormalization")) {
            float eps = 0;
            int64_t axis = attr_i(n, "axis", NULL);
            attr_i(n, "epsilon", &eps);
            ln++;
            ln_ok += axis == -1 && eps == config_layernorm_eps(c);
        }
        erf += !strcmp(n->op_type, "Erf");
        tanh_ += !strcmp(n->op_type, "Tanh");
    }
    CHECK(ordered, "%s: a node reads a value made by no earlier node", c->name);
    CHECK(nn > 0 && !strcmp(g->node[nn - 1]->output[0], "logits"), "%s: the last node does not make logits", c->name);
    CHECK(ln == 2 * c->layers + 1 && ln_ok == ln, "%s: %d LayerNormalization nodes, %d with axis -1 and epsilon %g",
          c->name, ln, ln_ok, config_layernorm_eps(c));
    int want_tanh = (c->gelu_tanh ? c->layers : 0) + (c->representation > 0);
    CHECK(erf == (c->gelu_tanh ? 0 : c->layers) && tanh_ == want_tanh, "%s: %d Erf and %d Tanh nodes", c->name, erf,
          tanh_);
    CHECK(nn <= (size_t)(40 * c->layers + 30), "%s: %zu nodes", c->name, nn);
    printf("%s: %zu nodes, %zu initializers\n", c->name, nn, g->n_initializer);
}

static void check_structure(const char *path, const ViTConfig *c, const ParamTable *t, const float *p) {
    size_t len;
    uint8_t *buf = read_file(path, &len);
    Onnx__ModelProto *m = buf ? onnx__model_proto__unpack(NULL, len, buf) : NULL;
    CHECK(m != NULL, "%s: not readable as an ONNX ModelProto", path);
    if (m) {
        const Onnx__GraphProto *g = m->graph;
        CHECK(m->has_ir_version && m->ir_version == 8, "%s: IR version %lld", c->name, (long long)m->ir_version);
        CHECK(m->n_opset_import == 1 && (!m->opset_import[0]->domain || !*m->opset_import[0]->domain) &&
                  m->opset_import[0]->version == 17,
              "%s: opset is not the default domain's 17", c->name);
        CHECK(g && g->n_input == 1 && g->n_output == 1, "%s: not one input and one output", c->name);
        if (g && g->n_input == 1 && g->n_output == 1) {
            CHECK(dims_are(g->input[0], "images", 4, (const int64_t[]){0, c->channels, c->image, c->image}),
                  "%s: input is not images float [batch, C, S, S]", c->name);
            CHECK(dims_are(g->output[0], "logits", 2, (const int64_t[]){0, c->classes}),
                  "%s: output is not logits float [batch, classes]", c->name);
            check_initializers(g, c, t, p);
            check_nodes(g, c);
        }
        onnx__model_proto__free_unpacked(m, NULL);
    }
    free(buf);
}

// ---- ONNX's checker and onnxruntime (tools/check_onnx.py) ----

static void check_with_python(const char *dir, const ViTConfig *c, const float *logits) {
    if (access("tools/check_onnx.py", R_OK) != 0 || system("python3 -c 'import onnx' >/dev/null 2>&1") != 0) {
        printf("note: python3 with the onnx package (or tools/check_onnx.py) not found: %s NOT checked by ONNX's "
               "checker or onnxruntime\n", c->name);
        return;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 tools/check_onnx.py '%s'", dir);
    fflush(stdout);  // the checker's lines after ours
    CHECK(system(cmd) == 0, "%s: tools/check_onnx.py failed: %s", c->name, cmd);
    if (system("python3 -c 'import onnxruntime' >/dev/null 2>&1") != 0) return;
    // The comparison must also be able to fail: one logit off by 1% of the scale.
    float bad[NIMG * 16];
    size_t n = (size_t)NIMG * c->classes;
    memcpy(bad, logits, n * sizeof *bad);
    float scale = 0;
    for (size_t i = 0; i < n; i++) scale = fabsf(bad[i]) > scale ? fabsf(bad[i]) : scale;
    bad[n - 1] += 0.01f * scale;
    write_floats(testdir_path(dir, "logits_bad.f32"), bad, n);
    snprintf(cmd, sizeof cmd, "python3 tools/check_onnx.py '%s' --logits '%s' >/dev/null", dir,
             testdir_path(dir, "logits_bad.f32"));
    CHECK(system(cmd) != 0, "%s: tools/check_onnx.py accepted logits off by 1%%", c->name);
}

// ---- one model ----

static void test_model(Backend *be, int variant) {
    ViTConfig c = tiny(variant);
    char dir[128];
    snprintf(dir, sizeof dir, "%s", testdir_path(g_dir, c.name));
    CHECK(mkdir(dir, 0777) == 0, "%s: cannot make the folder", dir);
    ViT m;
    if (vit_create(&m, &c, be, NIMG, 0)) {
        CHECK(0, "%s: vit_create: %s", c.name, vit_error());
        return;
    }
    size_t S = (size_t)c.image, C = (size_t)c.channels, per = S * S * C;
    float *params = malloc(m.table.total * sizeof *params), *input = malloc(NIMG * per * sizeof *input);
    uint8_t *img = malloc(NIMG * per);
    if (!params || !input || !img) abort();
    fill_params(&m.table, params, 11 + (uint64_t)variant);
    be->upload(be, m.params, params, m.table.total * sizeof *params);
    for (size_t i = 0; i < NIMG * per; i++) img[i] = (uint8_t)(256 * rng_uniform(21, (uint32_t)variant, i));
    // ONNX takes NCHW floats normalised exactly as vit's patchify does with (B, S, S, C) bytes.
    for (size_t b = 0; b < NIMG; b++)
        for (size_t ch = 0; ch < C; ch++)
            for (size_t p = 0; p < S * S; p++)
                input[(b * C + ch) * S * S + p] = (float)img[b * per + p * C + ch] * (2.0f / 255.0f) - 1.0f;
    int rc = vit_forward(&m, img, NULL, NIMG, 0, 0.0f, 0, 0);
    CHECK(rc == VIT_OK, "%s: vit_forward: %s", c.name, vit_error());
    const char *model = testdir_path(dir, "model.onnx");
    rc = onnx_export(model, &c, &m.table, params);
    CHECK(rc == VIT_OK, "%s: onnx_export: %s", c.name, vit_error());
    CHECK(testdir_count(dir, ".tmp.") == 0, "%s: a temp file was left behind", c.name);
    // Writing again replaces the file (rename over it).
    CHECK(onnx_export(model, &c, &m.table, params) == VIT_OK && testdir_count(dir, "") == 1,
          "%s: second export over the first: %s", c.name, vit_error());
    CHECK(write_floats(testdir_path(dir, "input.f32"), input, NIMG * per) == VIT_OK &&
              write_floats(testdir_path(dir, "logits.f32"), m.host_logits, (size_t)NIMG * c.classes) == VIT_OK,
          "%s: cannot write the inputs for the checker", dir);
    if (rc == VIT_OK) {
        check_structure(model, &c, &m.table, params);
        check_with_python(dir, &c, m.host_logits);
    }
    free(params), free(input), free(img);
    vit_destroy(&m);
}

// ---- errors ----

static void test_errors(void) {
    ViTConfig c = tiny(0);
    ParamTable t;
    ParamOffsets o;
    if (params_build(&t, &o, &c)) return;
    float *p = calloc(t.total, sizeof *p);
    if (!p) abort();
    const char *missing = testdir_path(g_dir, "no/such/folder/model.onnx");
    CHECK(onnx_export(missing, &c, &t, p) == VIT_ERR && has(vit_error(), missing), "missing folder: %s", vit_error());
    CHECK(testdir_count(g_dir, ".tmp.") == 0, "a temp file was left behind");
    // A table of another config (one block more) is not this model's.
    ViTConfig deeper = c;
    deeper.layers = 3;
    const char *path = testdir_path(g_dir, "mismatch.onnx");
    CHECK(onnx_export(path, &deeper, &t, p) == VIT_ERR && has(vit_error(), path) && access(path, F_OK) != 0,
          "table of another config: %s", vit_error());
    ViTConfig odd = c;
    odd.heads = 5;  // 48 % 5 != 0
    CHECK(onnx_export(path, &odd, &t, p) == VIT_ERR && has(vit_error(), path), "invalid config: %s", vit_error());
    CHECK(onnx_export(path, &c, &t, NULL) == VIT_ERR && has(vit_error(), path), "no parameters: %s", vit_error());
    free(p);
    params_free(&t, &o);
}

int main(void) {
    strcpy(g_dir, "/tmp/test_onnx_export_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    Backend *be = backend_cpu_create(0);
    if (!be) {
        fprintf(stderr, "backend_cpu_create failed: %s\n", vit_error());
        return 1;
    }
    test_model(be, 0);
    test_model(be, 1);
    test_errors();
    be->destroy(be);
    const char *keep = getenv("VIT_ONNX_KEEP");
    if (keep && *keep)
        printf("kept %s\n", g_dir);
    else
        testdir_remove(g_dir);
    return check_report("onnx_export");
}
