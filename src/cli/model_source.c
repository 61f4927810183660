#include "model_source.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "common.h"
#include "model/weights.h"
#include "model/hf_config.h"
#include "model/weights_torch.h"
#include "util/status.h"
#include "util/fs.h"

static int is_checkpoint_file(const char *path) {
    size_t n = strlen(path);
    return n > 12 && !strcmp(path + n - 12, ".safetensors");
}

// Weights in PyTorch's namings (timm, Hugging Face) as a .safetensors file: converted to the
// official names and layouts, so the checks and adaptations of .npz weights apply unchanged.
static int read_torch_weights(ModelSource *s) {
    StFile st;
    if (st_read(&st, s->path)) return VIT_ERR;
    int rc = VIT_OK;
    TorchNaming naming = weights_torch_naming(&st);
    if (checkpoint_is_vitc(&st))
        rc = vit_fail("%s: a vit checkpoint, not weights to start from: continue its run with "
                      "--resume_from_checkpoint_path, or evaluate, predict and export it with --checkpoint", s->path);
    else if (naming == TORCH_NONE)
        rc = vit_fail("%s: tensor names in neither timm's (patch_embed.proj.weight, blocks.N...) nor Hugging Face's "
                      "(vit.embeddings..., vit.encoder.layer.N...) naming", s->path);
    else
        rc = weights_from_torch(&st, s->path, s->cfg.heads, &s->weights);
    if (rc == VIT_OK) s->naming = weights_torch_naming_name(naming);
    st_free(&st);
    return rc;
}

// --pretrained FOLDER: a Hugging Face folder. Its config.json sets the architecture (flags
// given on the command line still win), its model.safetensors holds the weights.
static int open_hf_folder(ModelSource *s, const ParsedOptions *p, const Dataset *data) {
    char dir[sizeof s->path];
    snprintf(dir, sizeof dir, "%s", s->path);
    HfConfig h;
    if (hf_config_read(dir, &h)) return VIT_ERR;
    struct { const char *flag; int value; int *field; } arch[] = {
        {"hidden_size", h.hidden, &s->cfg.hidden}, {"num_layers", h.layers, &s->cfg.layers},
        {"num_heads", h.heads, &s->cfg.heads},     {"mlp_dim", h.mlp, &s->cfg.mlp},
        {"patch_size", h.patch, &s->cfg.patch},    {"channels", h.channels, &s->cfg.channels}};
    for (size_t i = 0; i < sizeof arch / sizeof arch[0]; i++)
        if (arch[i].value && !flags_given(p, arch[i].flag)) *arch[i].field = arch[i].value;
    // The model's own resolution, unless the flags or IDX data (never resized) fix another.
    if (h.image && !flags_given(p, "image_size") && !(data && data->kind == DATA_IDX)) s->cfg.image = h.image;
    if (h.layernorm_eps > 0 && !flags_given(p, "layernorm_eps")) s->cfg.layernorm_eps = (float)h.layernorm_eps;
    if (h.gelu_tanh >= 0 && !flags_given(p, "gelu")) s->cfg.gelu_tanh = h.gelu_tanh;
    if (snprintf(s->path, sizeof s->path, "%s/model.safetensors", dir) >= (int)sizeof s->path)
        return vit_fail("--pretrained %s: path too long", dir);
    if (config_validate(&s->cfg)) return vit_fail("%s/config.json: %s", dir, vit_error());
    return VIT_OK;
}

// A file given as a checkpoint or weights that is neither: say what it is and what is
// expected, before a reader reports a detail of the wrong format ("not a zip archive").
static int check_model_file(const char *flag, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return vit_fail("--%s %s: %s", flag, path, strerror(errno));
    unsigned char head[512];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    static const char expected[] = "expected a vit checkpoint (.safetensors, from vit train) or official weights (.npz)";
    if (n >= 4 && !memcmp(head, "PK\3\4", 4)) return VIT_OK;  // zip: .npz
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if (n >= 9 && head[8] == '{' && !head[6] && !head[7]) return VIT_OK;
    if (n == 0) return vit_fail("--%s %s: an empty file; %s", flag, path, expected);
    int text = 1;
    for (size_t i = 0; i < n && text; i++)
        text = head[i] == '\n' || head[i] == '\r' || head[i] == '\t' || (head[i] >= 32 && head[i] != 127) || head[i] >= 128;
    return vit_fail("--%s %s: %s, not a safetensors or npz file; %s", flag, path,
                    text ? "a text file" : "an unknown binary file", expected);
}

char **model_source_class_names(const ModelSource *s, int classes) {
    const char *text = s->kind == SOURCE_CHECKPOINT ? st_meta(&s->ck.st, "data.class_names") : NULL;
    if (!text || !*text || classes < 1) return NULL;
    char **names = calloc((size_t)classes, sizeof *names);
    for (int i = 0; names && i < classes && *text; i++) {
        size_t len = strcspn(text, "\n");
        names[i] = strndup(text, len);
        text += len + (text[len] == '\n');
    }
    return names;
}

// The model of the checkpoint open in s->ck.
static int checkpoint_source(ModelSource *s) {
    if (!s->ck.has_checksums) fprintf(stderr, "note: %s has no checksums: loaded unverified\n", s->path);
    if (s->ema && !s->ck.has_ema)
        return vit_fail("--ema: %s holds no moving average of the weights (its run had no --model_ema)", s->path);
    s->cfg = s->ck.cfg;
    return VIT_OK;
}

int model_source_adopt(ModelSource *s, const ParsedOptions *p, const char *path, Checkpoint *ck) {
    memset(s, 0, sizeof *s);
    s->head_glorot = !strcasecmp(p->o.head_init, "glorot");
    s->kind = SOURCE_CHECKPOINT;
    snprintf(s->path, sizeof s->path, "%s", path);
    s->ck = *ck;
    memset(ck, 0, sizeof *ck);  // s owns it now
    return checkpoint_source(s);
}

int model_source_open(ModelSource *s, const ParsedOptions *p, const char *checkpoint, const Dataset *data) {
    const Options *o = &p->o;
    memset(s, 0, sizeof *s);
    s->head_glorot = !strcasecmp(o->head_init, "glorot");
    int given = checkpoint && *checkpoint;
    if (!given) checkpoint = o->checkpoint;
    s->ema = !given && o->ema;
    if (s->ema && !*o->checkpoint)
        return vit_fail("--ema needs --checkpoint FILE (a checkpoint of a run with --model_ema)");
    if (*checkpoint) {
        char path[sizeof s->path];
        cli_expand_home(checkpoint, path, sizeof path);
        if (!path_is_dir(path) &&
            check_model_file(given ? "resume_from_checkpoint_path" : "checkpoint", path))
            return VIT_ERR;
    }
    if (*checkpoint && (!given || is_checkpoint_file(checkpoint))) {
        s->kind = SOURCE_CHECKPOINT;
        cli_expand_home(checkpoint, s->path, sizeof s->path);
        return checkpoint_open(&s->ck, s->path) ? VIT_ERR : checkpoint_source(s);
    }
    if (!*checkpoint && o->from_scratch) {
        s->kind = SOURCE_SCRATCH;
        return cli_model_config(p, data, &s->cfg);
    }
    s->kind = SOURCE_WEIGHTS;
    if (*checkpoint)
        cli_expand_home(checkpoint, s->path, sizeof s->path);
    else if (cli_weights_file(p, s->path, sizeof s->path))
        return VIT_ERR;
    if (cli_model_config(p, data, &s->cfg)) return VIT_ERR;
    if (path_is_dir(s->path) && open_hf_folder(s, p, data)) return VIT_ERR;
    if (is_checkpoint_file(s->path) ? read_torch_weights(s) : npz_read(&s->weights, s->path)) return VIT_ERR;
    if (!flags_given(p, "representation_size")) s->cfg.representation = weights_npz_representation(&s->weights);
    return VIT_OK;
}

static int load_checkpoint(ModelSource *s, ViT *m, float *slot_m, float *slot_v) {
    float *host = malloc(m->table.total * sizeof(float));
    if (!host) return vit_fail("out of memory loading %s", s->path);
    int rc = s->ema ? checkpoint_copy_ema(&s->ck, s->path, &m->table, host)
                    : checkpoint_copy(&s->ck, s->path, &m->table, host, slot_m, slot_v);
    if (rc == VIT_OK) m->be->upload(m->be, m->params, host, m->table.total * sizeof(float));
    free(host);
    return rc;
}

int model_source_load(ModelSource *s, ViT *m, uint64_t seed, float *slot_m, float *slot_v, FILE *report) {
    switch (s->kind) {
    case SOURCE_CHECKPOINT:
        return load_checkpoint(s, m, slot_m, slot_v);
    case SOURCE_WEIGHTS: {
        int rc = weights_load_npz(m, &s->weights, s->path, s->head_glorot, seed, report);
        if (rc == VIT_OK && report) fprintf(report, "weights: %s%s%s%s\n", s->path, s->naming ? " (" : "",
                                            s->naming ? s->naming : "", s->naming ? " naming)" : "");
        return rc;
    }
    case SOURCE_SCRATCH:
        // The official random initialisation (zero head: every prediction is a tie until trained).
        if (vit_init_params(m, seed)) return VIT_ERR;
        if (report) fprintf(report, "model: %s from random initialisation (--from_scratch)\n", m->cfg.name);
        return VIT_OK;
    }
    return vit_fail("unknown model source");
}

void model_source_close(ModelSource *s) {
    if (s->kind == SOURCE_CHECKPOINT) checkpoint_close(&s->ck);
    npz_free(&s->weights);
    memset(s, 0, sizeof *s);
}
