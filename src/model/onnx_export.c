// ONNX export. The ModelProto of the inference graph is built in an arena (every message,
// name and converted tensor lives there and goes at once), then its packed bytes stream into
// a temp file that is renamed over the target, so the model is never held twice in memory.
// Parameter initializers are not copied: their raw_data points into the caller's buffer,
// which is why only little-endian hosts are supported (ONNX's raw_data is little-endian).
#include "onnx_export.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "onnx.pb-c.h"
#include "util/atomic_file.h"
#include "util/status.h"

enum { OPSET = 17, IR_VERSION = 8 };  // opset 17 came with IR version 8 (ONNX 1.12)
#define ONE_MESSAGE_LIMIT 2147483647ull  // protobuf parsers refuse messages of 2 GiB and more
#define F32 ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT
#define I64 ONNX__TENSOR_PROTO__DATA_TYPE__INT64

// ---- the arena and the graph builder ----

typedef struct Chunk {
    struct Chunk *next;
    size_t used, cap;
    max_align_t data[];
} Chunk;

typedef struct {
    void **p;
    size_t n, cap;
} PtrVec;

typedef struct {
    Chunk *mem;
    int failed;             // out of memory (or `bad`): later calls do nothing
    const char *bad;        // a parameter whose size does not fit the graph (an internal error)
    PtrVec nodes, inits;
    Onnx__NodeProto *last;  // attributes go to the node made last
    const ParamTable *t;
    const float *params;
    char scope[128];        // prefix of the value names made now
    int seq;                // running number that keeps value names unique
} Gb;

static void *gb_alloc(Gb *g, size_t bytes) {
    if (g->failed) return NULL;
    size_t unit = sizeof(max_align_t);
    bytes = (bytes + unit - 1) / unit * unit;
    Chunk *c = g->mem;
    if (!c || c->cap - c->used < bytes) {
        size_t cap = bytes > ((size_t)64 << 10) ? bytes : ((size_t)64 << 10);
        c = malloc(sizeof *c + cap);
        if (!c) {
            g->failed = 1;
            return NULL;
        }
        c->next = g->mem;
        c->used = 0;
        c->cap = cap;
        g->mem = c;
    }
    void *p = (unsigned char *)c->data + c->used;
    c->used += bytes;
    memset(p, 0, bytes);
    return p;
}

static void gb_free(Gb *g) {
    while (g->mem) {
        Chunk *next = g->mem->next;
        free(g->mem);
        g->mem = next;
    }
    free(g->nodes.p);
    free(g->inits.p);
}

static char *gb_str(Gb *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *gb_str(Gb *g, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n < 0 ? NULL : gb_alloc(g, (size_t)n + 1);
    if (!s) {
        g->failed = 1;
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static void push(Gb *g, PtrVec *v, void *item) {
    if (g->failed) return;
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 256;
        void **p = realloc(v->p, cap * sizeof *p);
        if (!p) {
            g->failed = 1;
            return;
        }
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = item;
}

// A node with one output: `out`, or a fresh "<scope>/<op>_<n>" when out is NULL. Returns the
// output's name ("" once the builder has failed, which the caller finds out at the end).
static const char *node(Gb *g, const char *op, const char *out, int nin, const char *const *in) {
    Onnx__NodeProto *n = gb_alloc(g, sizeof *n);
    char **ins = gb_alloc(g, (size_t)nin * sizeof *ins);
    char **outs = gb_alloc(g, sizeof *outs);
    if (!out) out = gb_str(g, "%s/%s_%d", g->scope, op, g->seq++);
    if (g->failed) return "";
    onnx__node_proto__init(n);
    for (int i = 0; i < nin; i++) ins[i] = (char *)in[i];
    outs[0] = (char *)out;
    n->n_input = (size_t)nin;
    n->input = ins;
    n->n_output = 1;
    n->output = outs;
    n->name = (char *)out;  // one output per node, so its name names the node too
    n->op_type = (char *)op;
    push(g, &g->nodes, n);
    g->last = n;
    return out;
}
#define NARGS(...) ((int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)))
#define OP(g, op, ...) node(g, op, NULL, NARGS(__VA_ARGS__), (const char *[]){__VA_ARGS__})
#define DIMS(...) NARGS_I64(__VA_ARGS__), ((const int64_t[]){__VA_ARGS__})
#define NARGS_I64(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

static Onnx__AttributeProto *attr(Gb *g, const char *name, Onnx__AttributeProto__AttributeType type) {
    Onnx__NodeProto *n = g->last;
    Onnx__AttributeProto *a = gb_alloc(g, sizeof *a);
    Onnx__AttributeProto **list = n ? gb_alloc(g, (n->n_attribute + 1) * sizeof *list) : NULL;
    if (g->failed || !list) return NULL;
    onnx__attribute_proto__init(a);
    a->name = (char *)name;
    a->has_type = 1;
    a->type = type;
    for (size_t i = 0; i < n->n_attribute; i++) list[i] = n->attribute[i];
    list[n->n_attribute++] = a;
    n->attribute = list;
    return a;
}

static void attr_int(Gb *g, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) a->has_i = 1, a->i = v;
}

static void attr_float(Gb *g, const char *name, float v) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (a) a->has_f = 1, a->f = v;
}

static void attr_ints(Gb *g, const char *name, int n, const int64_t *v) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *copy = gb_alloc(g, (size_t)n * sizeof *copy);
    if (!a || !copy) return;
    memcpy(copy, v, (size_t)n * sizeof *copy);
    a->n_ints = (size_t)n;
    a->ints = copy;
}

// ---- initializers ----

// An initializer whose bytes stay where `data` points (params or the arena) until the write.
static const char *tensor(Gb *g, const char *name, int dtype, int ndim, const int64_t *dims, const void *data,
                          size_t bytes) {
    Onnx__TensorProto *t = gb_alloc(g, sizeof *t);
    int64_t *d = gb_alloc(g, (size_t)ndim * sizeof *d);
    if (g->failed) return "";
    onnx__tensor_proto__init(t);
    if (ndim) memcpy(d, dims, (size_t)ndim * sizeof *d);
    t->n_dims = (size_t)ndim;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = dtype;
    t->name = (char *)name;
    t->has_raw_data = 1;
    t->raw_data.len = bytes;
    t->raw_data.data = (uint8_t *)data;
    push(g, &g->inits, t);
    return name;
}

static const ParamEntry *entry_at(const ParamTable *t, size_t offset) {
    for (int i = 0; i < t->count; i++)
        if (t->entries[i].offset == offset) return &t->entries[i];
    return NULL;
}

// The official parameter at `offset`, under its own name, in the shape the ONNX op takes
// (the same floats in the same order; ndim 0 keeps the official shape).
static const char *param(Gb *g, size_t offset, int ndim, const int64_t *dims) {
    const ParamEntry *e = entry_at(g->t, offset);
    int64_t own[4];
    if (e && ndim == 0) {
        ndim = e->ndim;
        for (int i = 0; i < ndim; i++) own[i] = e->shape[i];
        dims = own;
    }
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
    if (!e || e->size != n) {
        if (!g->failed) g->bad = e ? e->name : "a parameter";
        g->failed = 1;
        return "";
    }
    return tensor(g, e->name, F32, ndim, dims, g->params + offset, n * sizeof(float));
}
#define PARAM(g, offset) param(g, offset, 0, NULL)

static const char *const_i64(Gb *g, const char *name, int ndim, int n, const int64_t *v) {
    int64_t *copy = gb_alloc(g, (size_t)n * sizeof *copy);
    if (!copy) return "";
    memcpy(copy, v, (size_t)n * sizeof *copy);
    int64_t dim = n;
    return tensor(g, name, I64, ndim, &dim, copy, (size_t)n * sizeof *copy);
}

static const char *const_f32(Gb *g, const char *name, float v) {
    float *copy = gb_alloc(g, sizeof *copy);
    if (!copy) return "";
    *copy = v;
    return tensor(g, name, F32, 0, NULL, copy, sizeof *copy);
}

// Constants of the graph itself (shapes for Reshape, scalars for the elementwise ops).
typedef struct {
    const char *flat, *heads, *merge, *ones2, *cls_index;
    const char *scale, *half, *one, *inv_sqrt2, *cubic, *sqrt_2_over_pi;
} Consts;

static void make_consts(Gb *g, const ViTConfig *c, Consts *k) {
    int64_t D = c->hidden, H = c->heads, hd = D / H, zero = 0;
    // Reshape copies a 0 from the input's dims: batch and token counts stay symbolic.
    k->flat = const_i64(g, "vitc/shape_channels_tokens", 1, 3, (const int64_t[]){0, D, -1});
    k->heads = const_i64(g, "vitc/shape_split_heads", 1, 4, (const int64_t[]){0, 0, H, hd});
    k->merge = const_i64(g, "vitc/shape_merge_heads", 1, 3, (const int64_t[]){0, 0, D});
    k->ones2 = const_i64(g, "vitc/ones_2", 1, 2, (const int64_t[]){1, 1});
    k->cls_index = const_i64(g, "vitc/class_token_index", 0, 1, &zero);
    k->scale = const_f32(g, "vitc/attention_scale", 1.0f / sqrtf((float)hd));  // as the backends compute it
    k->half = const_f32(g, "vitc/half", 0.5f);
    k->one = const_f32(g, "vitc/one", 1.0f);
    if (c->gelu_tanh) {
        k->cubic = const_f32(g, "vitc/gelu_cubic", 0.044715f);
        k->sqrt_2_over_pi = const_f32(g, "vitc/sqrt_2_over_pi", 0.7978845608028654f);
    } else {
        k->inv_sqrt2 = const_f32(g, "vitc/inv_sqrt2", 0.70710678118654752f);
    }
}

// ---- the graph ----

static const char *layer_norm(Gb *g, const ViTConfig *c, const char *x, size_t scale, size_t bias) {
    const char *s = PARAM(g, scale), *b = PARAM(g, bias);
    const char *y = OP(g, "LayerNormalization", x, s, b);
    attr_int(g, "axis", -1);
    attr_float(g, "epsilon", config_layernorm_eps(c));
    return y;
}

// y = x @ kernel + bias with kernel viewed as (in, out) and bias as (out).
static const char *dense(Gb *g, const char *x, size_t kernel, size_t bias, int in, int out) {
    const char *y = OP(g, "MatMul", x, param(g, kernel, DIMS(in, out)));
    return OP(g, "Add", y, param(g, bias, DIMS(out)));
}

static const char *transpose(Gb *g, const char *x, int n, const int64_t *perm) {
    const char *y = OP(g, "Transpose", x);
    attr_ints(g, "perm", n, perm);
    return y;
}

// Conv patch embedding, then (N, D, G, G) -> (N, G*G, D) (token gy * G + gx, vit's order),
// the class token in front (broadcast to the batch read from the input) and positions added.
static const char *embed(Gb *g, const ViTConfig *c, const ParamOffsets *o, const Consts *k) {
    int D = c->hidden, C = c->channels, P = c->patch;
    snprintf(g->scope, sizeof g->scope, "embedding");
    const ParamEntry *e = entry_at(g->t, o->embed_kernel);
    size_t n = (size_t)D * C * P * P;
    float *w = gb_alloc(g, n * sizeof *w);
    if (!w || !e) return "";
    // Conv takes OIHW; the official kernel is HWIO.
    const float *src = g->params + o->embed_kernel;
    for (int oc = 0; oc < D; oc++)
        for (int ic = 0; ic < C; ic++)
            for (int y = 0; y < P; y++)
                for (int x = 0; x < P; x++)
                    w[(((size_t)oc * C + ic) * P + y) * P + x] = src[(((size_t)y * P + x) * C + ic) * D + oc];
    const char *kernel = tensor(g, e->name, F32, DIMS(D, C, P, P), w, n * sizeof *w);
    const char *conv = OP(g, "Conv", "images", kernel, PARAM(g, o->embed_bias));
    attr_ints(g, "kernel_shape", DIMS(P, P));
    attr_ints(g, "strides", DIMS(P, P));
    const char *flat = OP(g, "Reshape", conv, k->flat);
    const char *tokens = transpose(g, flat, DIMS(0, 2, 1));
    const char *batch = OP(g, "Shape", "images");
    attr_int(g, "end", 1);
    const char *shape = OP(g, "Concat", batch, k->ones2);  // (N, 1, 1)
    attr_int(g, "axis", 0);
    const char *cls = OP(g, "Expand", PARAM(g, o->cls), shape);
    const char *x = OP(g, "Concat", cls, tokens);
    attr_int(g, "axis", 1);
    return OP(g, "Add", x, PARAM(g, o->pos));
}

// x + out(softmax(q k^T / sqrt(hd)) v), q, k, v from LayerNorm_0(x), per head.
static const char *attention(Gb *g, const ViTConfig *c, const BlockOffsets *w, const Consts *k, const char *x) {
    int D = c->hidden;
    const char *h = layer_norm(g, c, x, w->ln0_scale, w->ln0_bias);
    const char *q = dense(g, h, w->q_kernel, w->q_bias, D, D);
    const char *kk = dense(g, h, w->k_kernel, w->k_bias, D, D);
    const char *v = dense(g, h, w->v_kernel, w->v_bias, D, D);
    // (N, T, D) -> (N, H, T, hd); k goes to (N, H, hd, T) so that q @ k is the score matrix
    q = transpose(g, OP(g, "Reshape", q, k->heads), DIMS(0, 2, 1, 3));
    kk = transpose(g, OP(g, "Reshape", kk, k->heads), DIMS(0, 2, 3, 1));
    v = transpose(g, OP(g, "Reshape", v, k->heads), DIMS(0, 2, 1, 3));
    const char *s = OP(g, "Mul", OP(g, "MatMul", q, kk), k->scale);
    const char *p = OP(g, "Softmax", s);
    attr_int(g, "axis", -1);
    const char *o = transpose(g, OP(g, "MatMul", p, v), DIMS(0, 2, 1, 3));
    o = OP(g, "Reshape", o, k->merge);
    o = dense(g, o, w->out_kernel, w->out_bias, D, D);
    return OP(g, "Add", x, o);
}

// 0.5 x (1 + erf(x / sqrt 2)), or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
static const char *gelu(Gb *g, const ViTConfig *c, const Consts *k, const char *x) {
    const char *t;
    if (c->gelu_tanh) {
        const char *x3 = OP(g, "Mul", OP(g, "Mul", x, x), x);
        const char *u = OP(g, "Add", x, OP(g, "Mul", x3, k->cubic));
        t = OP(g, "Tanh", OP(g, "Mul", u, k->sqrt_2_over_pi));
    } else {
        t = OP(g, "Erf", OP(g, "Mul", x, k->inv_sqrt2));
    }
    const char *y = OP(g, "Mul", x, OP(g, "Add", t, k->one));
    return OP(g, "Mul", y, k->half);
}

static const char *mlp(Gb *g, const ViTConfig *c, const BlockOffsets *w, const Consts *k, const char *x) {
    const char *h = layer_norm(g, c, x, w->ln2_scale, w->ln2_bias);
    h = dense(g, h, w->fc1_kernel, w->fc1_bias, c->hidden, c->mlp);
    h = gelu(g, c, k, h);
    h = dense(g, h, w->fc2_kernel, w->fc2_bias, c->mlp, c->hidden);
    return OP(g, "Add", x, h);
}

// The class token's row, the final LayerNorm (per row, so on that row alone, as vit does),
// pre_logits and the head, into the graph output "logits".
static void classify(Gb *g, const ViTConfig *c, const ParamOffsets *o, const Consts *k, const char *x) {
    int D = c->hidden, R = c->representation, in = R > 0 ? R : D;
    snprintf(g->scope, sizeof g->scope, "Transformer/encoder_norm");
    const char *h = OP(g, "Gather", x, k->cls_index);
    attr_int(g, "axis", 1);
    h = layer_norm(g, c, h, o->norm_scale, o->norm_bias);
    if (R > 0) {
        snprintf(g->scope, sizeof g->scope, "pre_logits");
        h = OP(g, "Tanh", dense(g, h, o->pre_kernel, o->pre_bias, D, R));
    }
    snprintf(g->scope, sizeof g->scope, "head");
    const char *y = OP(g, "MatMul", h, param(g, o->head_kernel, DIMS(in, c->classes)));
    node(g, "Add", "logits", 2, (const char *[]){y, PARAM(g, o->head_bias)});
}

static void build_graph(Gb *g, const ViTConfig *c, const ParamOffsets *o) {
    Consts k = {0};  // the GELU form not chosen leaves its constants unset
    make_consts(g, c, &k);
    const char *x = embed(g, c, o, &k);
    for (int l = 0; l < c->layers; l++) {
        snprintf(g->scope, sizeof g->scope, "Transformer/encoderblock_%d/MultiHeadDotProductAttention_1", l);
        x = attention(g, c, &o->blocks[l], &k, x);
        snprintf(g->scope, sizeof g->scope, "Transformer/encoderblock_%d/MlpBlock_3", l);
        x = mlp(g, c, &o->blocks[l], &k, x);
    }
    classify(g, c, o, &k, x);
}

// ---- the model message ----

// A float32 graph input or output whose first dimension is the symbolic "batch".
static Onnx__ValueInfoProto *value_info(Gb *g, const char *name, int ndim, const int64_t *dims) {
    Onnx__ValueInfoProto *v = gb_alloc(g, sizeof *v);
    Onnx__TypeProto *type = gb_alloc(g, sizeof *type);
    Onnx__TypeProto__Tensor *tensor = gb_alloc(g, sizeof *tensor);
    Onnx__TensorShapeProto *shape = gb_alloc(g, sizeof *shape);
    Onnx__TensorShapeProto__Dimension **dim = gb_alloc(g, (size_t)ndim * sizeof *dim);
    for (int i = 0; i < ndim && !g->failed; i++) {
        Onnx__TensorShapeProto__Dimension *d = gb_alloc(g, sizeof *d);
        if (!d) break;
        onnx__tensor_shape_proto__dimension__init(d);
        if (i == 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = "batch";
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        }
        dim[i] = d;
    }
    if (g->failed) return NULL;
    onnx__tensor_shape_proto__init(shape);
    shape->n_dim = (size_t)ndim;
    shape->dim = dim;
    onnx__type_proto__tensor__init(tensor);
    tensor->has_elem_type = 1;
    tensor->elem_type = F32;
    tensor->shape = shape;
    onnx__type_proto__init(type);
    type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    type->tensor_type = tensor;
    onnx__value_info_proto__init(v);
    v->name = (char *)name;
    v->type = type;
    return v;
}

// A PtrVec's items as an arena array of the message type's pointers.
static void **items(Gb *g, const PtrVec *v) {
    void **p = gb_alloc(g, v->n * sizeof *p);
    if (p) memcpy(p, v->p, v->n * sizeof *p);
    return p;
}

static Onnx__StringStringEntryProto *meta(Gb *g, const char *key, const char *value) {
    Onnx__StringStringEntryProto *e = gb_alloc(g, sizeof *e);
    if (!e) return NULL;
    onnx__string_string_entry_proto__init(e);
    e->key = (char *)key;
    e->value = (char *)value;
    return e;
}

static Onnx__ModelProto *assemble(Gb *g, const ViTConfig *c) {
    Onnx__ModelProto *m = gb_alloc(g, sizeof *m);
    Onnx__GraphProto *graph = gb_alloc(g, sizeof *graph);
    Onnx__OperatorSetIdProto *opset = gb_alloc(g, sizeof *opset);
    Onnx__OperatorSetIdProto **opsets = gb_alloc(g, sizeof *opsets);
    Onnx__ValueInfoProto **in = gb_alloc(g, sizeof *in), **out = gb_alloc(g, sizeof *out);
    Onnx__StringStringEntryProto **props = gb_alloc(g, 2 * sizeof *props);
    void **nodes = items(g, &g->nodes), **inits = items(g, &g->inits);
    if (g->failed) return NULL;
    in[0] = value_info(g, "images", DIMS(0, c->channels, c->image, c->image));
    out[0] = value_info(g, "logits", DIMS(0, c->classes));
    props[0] = meta(g, "vitc.model", c->name);
    props[1] = meta(g, "vitc.input", "images: RGB, NCHW, each uint8 value v as v * 2/255 - 1");
    if (g->failed) return NULL;
    onnx__graph_proto__init(graph);
    graph->name = c->name[0] ? (char *)c->name : "vit";
    graph->n_node = g->nodes.n;
    graph->node = (Onnx__NodeProto **)nodes;
    graph->n_initializer = g->inits.n;
    graph->initializer = (Onnx__TensorProto **)inits;
    graph->n_input = graph->n_output = 1;
    graph->input = in;
    graph->output = out;
    onnx__operator_set_id_proto__init(opset);
    opset->domain = "";
    opset->has_version = 1;
    opset->version = OPSET;
    opsets[0] = opset;
    onnx__model_proto__init(m);
    m->has_ir_version = 1;
    m->ir_version = IR_VERSION;
    m->producer_name = "vitc";
    m->graph = graph;
    m->n_opset_import = 1;
    m->opset_import = opsets;
    m->n_metadata_props = 2;
    m->metadata_props = props;
    return m;
}

// ---- the file ----

// protobuf-c's output sink: the packed bytes go straight to the file.
typedef struct {
    ProtobufCBuffer base;
    FILE *fp;
    int err;  // errno of the first failed write; later appends do nothing
} FileSink;

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    FileSink *s = (FileSink *)b;
    if (!s->err && len && fwrite(data, 1, len, s->fp) != len) s->err = errno ? errno : EIO;
}

static int write_model(const char *path, const Onnx__ModelProto *m) {
    size_t size = onnx__model_proto__get_packed_size(m);
    if (size > ONE_MESSAGE_LIMIT)
        return vit_fail("%s: cannot save: the model takes %zu bytes, past the 2 GiB protobuf limit of one ONNX file",
                        path, size);
    char *tmp = atomic_temp_path(path);
    if (!tmp) return vit_fail("%s: cannot save: out of memory", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int rc = vit_fail("%s: cannot create temporary file %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    setvbuf(fp, NULL, _IOFBF, (size_t)1 << 20);  // protobuf-c appends tags a few bytes at a time
    FileSink s = {{sink_append}, fp, 0};
    errno = 0;
    size_t n = onnx__model_proto__pack_to_buffer(m, &s.base);
    int rc = VIT_OK, renamed = 0;
    if (s.err || n != size)
        rc = vit_fail("%s: cannot save: writing %s failed: %s", path, tmp, strerror(s.err ? s.err : EIO));
    else if (fflush(fp) != 0 || fsync(fileno(fp)) != 0)  // on disk before the rename shows it
        rc = vit_fail("%s: cannot save: flushing %s failed: %s", path, tmp, strerror(errno));
    if (fclose(fp) != 0 && rc == VIT_OK) rc = vit_fail("%s: cannot save: closing %s failed: %s", path, tmp, strerror(errno));
    if (rc == VIT_OK) rc = atomic_commit(tmp, path, &renamed);
    if (!renamed) unlink(tmp);
    free(tmp);
    return rc;
}

// Offsets from the config, and `t` checked to be the table they describe.
static int check_table(const char *path, const ViTConfig *c, const ParamTable *t, ParamTable *own,
                       ParamOffsets *off) {
    char msg[256];
    if (config_validate(c) || params_build(own, off, c)) {
        snprintf(msg, sizeof msg, "%s", vit_error());  // vit_fail reuses the buffer vit_error returns
        return vit_fail("%s: %s", path, msg);
    }
    int same = own->count == t->count && own->total == t->total;
    for (int i = 0; same && i < t->count; i++) {
        const ParamEntry *a = &own->entries[i], *b = &t->entries[i];
        same = !strcmp(a->name, b->name) && a->offset == b->offset && a->size == b->size;
    }
    if (!same) {
        int count = own->count;
        size_t total = own->total;
        params_free(own, off);
        return vit_fail("%s: the parameter table (%d tensors, %zu floats) is not the model config's (%d tensors, "
                        "%zu floats)", path, t->count, t->total, count, total);
    }
    return VIT_OK;
}

int onnx_export(const char *path, const ViTConfig *c, const ParamTable *t, const float *params) {
    if (!path || !*path) return vit_fail("ONNX export: no output file given");
    if (!c || !t || !params) return vit_fail("%s: ONNX export without a model", path);
    const uint16_t probe = 1;
    if (*(const uint8_t *)&probe != 1)
        return vit_fail("%s: ONNX export needs a little-endian host (ONNX stores tensors little-endian)", path);
    ParamTable own;
    ParamOffsets off;
    if (check_table(path, c, t, &own, &off)) return VIT_ERR;
    Gb g = {.t = t, .params = params};
    build_graph(&g, c, &off);
    Onnx__ModelProto *m = g.failed ? NULL : assemble(&g, c);
    int rc;
    if (g.bad)
        rc = vit_fail("%s: internal error: %s does not have the size the graph needs", path, g.bad);
    else if (!m)
        rc = vit_fail("%s: out of memory building the ONNX graph", path);
    else
        rc = write_model(path, m);
    gb_free(&g);
    params_free(&own, &off);
    return rc;
}
