// `vit export`: a model's weights for other programs: the official .npz, a timm state dict,
// a Hugging Face `transformers` folder, or an ONNX inference graph. The model comes from a
// checkpoint or from weights (--pretrained), through the same loading as evaluate and predict.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "io/npz.h"
#include "model/onnx_export.h"
#include "model/weights_torch.h"
#include "model_source.h"
#include "util/status.h"

typedef enum { EXPORT_NPZ, EXPORT_TIMM, EXPORT_HF, EXPORT_ONNX } ExportFormat;

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n > k && !strcasecmp(s + n - k, tail);
}

// --format, else from --out's extension.
static int export_format(const Options *o, ExportFormat *f) {
    static const char *names[] = {"npz", "timm", "hf", "onnx"};
    for (int i = 0; i < 4; i++)
        if (!strcasecmp(o->format, names[i])) return *f = (ExportFormat)i, VIT_OK;
    if (*o->format) return vit_fail("--format %s: expected npz, timm, hf or onnx", o->format);
    if (ends_with(o->out, ".npz")) return *f = EXPORT_NPZ, VIT_OK;
    if (ends_with(o->out, ".safetensors")) return *f = EXPORT_TIMM, VIT_OK;
    if (ends_with(o->out, ".onnx")) return *f = EXPORT_ONNX, VIT_OK;
    return vit_fail("--out %s: no format from its name (.npz, .safetensors, .onnx): give --format npz|timm|hf|onnx "
                    "(hf writes a folder)", o->out);
}

// Weights exported as they are: the class count and input size come from the file unless
// the flags set them (training and evaluation keep the recipe's defaults instead).
static void shape_from_weights(const ParsedOptions *p, ModelSource *s) {
    const NpzArray *head = npz_find(&s->weights, "head/bias");
    const NpzArray *pos = npz_find(&s->weights, "Transformer/posembed_input/pos_embedding");
    if (head && head->ndim == 1 && !flags_given(p, "num_classes")) s->cfg.classes = (int)head->shape[0];
    if (pos && pos->ndim == 3 && !flags_given(p, "image_size")) {
        int grid = 0;
        while ((long)(grid + 1) * (grid + 1) <= pos->shape[1] - 1) grid++;
        if ((long)grid * grid == pos->shape[1] - 1) s->cfg.image = grid * s->cfg.patch;
    }
}

static int write_npz(const char *path, const ParamTable *t, const float *host) {
    NpzEntry *entries = calloc((size_t)t->count, sizeof *entries);
    int64_t(*shapes)[4] = calloc((size_t)t->count, sizeof *shapes);
    int rc = entries && shapes ? VIT_OK : vit_fail("out of memory exporting to %s", path);
    for (int i = 0; i < t->count && rc == VIT_OK; i++) {
        const ParamEntry *e = &t->entries[i];
        for (int k = 0; k < e->ndim; k++) shapes[i][k] = e->shape[k];
        entries[i] = (NpzEntry){e->name, e->ndim, shapes[i], host + e->offset};
    }
    if (rc == VIT_OK) rc = npz_write(path, entries, t->count);
    free(entries), free(shapes);
    return rc;
}

// The model on a CPU backend (whatever --device says: nothing is computed), its parameters
// back on the host.
static int load_host_params(const ParsedOptions *p, Backend *be, ViT *m, float **host) {
    const Options *o = &p->o;
    ModelSource src;
    int rc = model_source_open(&src, p, NULL, NULL);
    if (rc == VIT_OK && src.kind == SOURCE_WEIGHTS) shape_from_weights(p, &src);
    if (rc == VIT_OK) rc = config_validate(&src.cfg);
    if (rc == VIT_OK) rc = vit_create(m, &src.cfg, be, 1, 0);
    if (rc == VIT_OK) rc = model_source_load(&src, m, (uint64_t)(o->seed >= 0 ? o->seed : 0), NULL, NULL, stderr);
    model_source_close(&src);
    if (rc != VIT_OK) return rc;
    *host = malloc(m->table.total * sizeof(float));
    if (!*host) return vit_fail("out of memory exporting %s", o->out);
    be->download(be, *host, m->params, m->table.total * sizeof(float));
    return VIT_OK;
}

int cmd_export(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("export", "Writes a model (--checkpoint FILE or --pretrained FILE) to --out: official "
                                       ".npz, timm .safetensors, Hugging Face folder (--format hf) or ONNX.");
            return 0;
        }
    ParsedOptions p;
    Backend *be = NULL;
    ViT m = {0};
    float *host = NULL;
    int rc = VIT_ERR;
    ExportFormat fmt = EXPORT_NPZ;
    if (flags_parse(&p, argc, argv) || flags_no_positional(&p)) goto done;
    const Options *o = &p.o;
    if ((!*o->checkpoint == !*o->pretrained) || !*o->out) {
        vit_fail("export needs one of --checkpoint FILE or --pretrained FILE, and --out FILE");
        goto done;
    }
    if (export_format(o, &fmt) || !(be = backend_cpu_create(o->threads)) || load_host_params(&p, be, &m, &host))
        goto done;
    const char *what[] = {"official .npz", "timm state dict", "Hugging Face folder", "ONNX (opset 17)"};
    switch (fmt) {
    case EXPORT_NPZ: rc = write_npz(o->out, &m.table, host); break;
    case EXPORT_TIMM: rc = weights_save_timm(o->out, &m.cfg, &m.table, host); break;
    case EXPORT_HF: rc = weights_save_hf(o->out, &m.cfg, &m.table, host); break;
    case EXPORT_ONNX: rc = onnx_export(o->out, &m.cfg, &m.table, host); break;
    }
    if (rc == VIT_OK)
        printf("wrote %s: %s, %zu parameters (%s, %d classes, %dx%d input)%s\n", o->out, what[fmt], m.table.total,
               m.cfg.name, m.cfg.classes, m.cfg.image, m.cfg.image, o->ema ? ", the moving average (--ema)" : "");
done:
    if (rc != VIT_OK) fprintf(stderr, "vit export: %s\n", vit_error());
    free(host);
    if (m.params) vit_destroy(&m);
    if (be) be->destroy(be);
    flags_free(&p);
    return rc == VIT_OK ? 0 : 2;
}
