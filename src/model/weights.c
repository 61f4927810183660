#include "weights.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/rng.h"
#include "util/status.h"

int weights_npz_representation(const NpzFile *f) {
    const NpzArray *a = npz_find(f, "pre_logits/kernel");
    return a && a->ndim == 2 ? (int)a->shape[1] : 0;
}

// Source coordinate of output index i when n_in samples are stretched over n_out with the
// first and last samples aligned.
static void corner_aligned(int i, int n_in, int n_out, int *i0, int *i1, double *w) {
    double x = n_out > 1 ? (double)i * (n_in - 1) / (n_out - 1) : 0.0;
    *i0 = (int)floor(x);
    if (*i0 > n_in - 1) *i0 = n_in - 1;
    *i1 = *i0 + 1 < n_in ? *i0 + 1 : *i0;
    *w = x - *i0;
}

void posemb_resize(const float *src, int gs_old, float *dst, int gs_new, int D) {
    for (int y = 0; y < gs_new; y++) {
        int y0, y1, x0, x1;
        double wy, wx;
        corner_aligned(y, gs_old, gs_new, &y0, &y1, &wy);
        for (int x = 0; x < gs_new; x++) {
            corner_aligned(x, gs_old, gs_new, &x0, &x1, &wx);
            const float *a = src + ((size_t)y0 * gs_old + x0) * D, *b = src + ((size_t)y0 * gs_old + x1) * D;
            const float *c = src + ((size_t)y1 * gs_old + x0) * D, *d = src + ((size_t)y1 * gs_old + x1) * D;
            float *o = dst + ((size_t)y * gs_new + x) * D;
            for (int k = 0; k < D; k++) {
                double top = a[k] + wx * (b[k] - a[k]), bottom = c[k] + wx * (d[k] - c[k]);
                o[k] = (float)(top + wy * (bottom - top));
            }
        }
    }
}

static void shape_text(char *buf, size_t n, int ndim, const int64_t *s64, const int *s32) {
    int k = snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < (int)n; i++)
        k += snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)(s64 ? s64[i] : s32[i]));
    if (k < (int)n) snprintf(buf + k, n - k, ndim == 1 ? ",)" : ")");
}

static int same_shape(const NpzArray *a, const ParamEntry *e) {
    if (a->ndim != e->ndim) return 0;
    for (int i = 0; i < e->ndim; i++)
        if (a->shape[i] != e->shape[i]) return 0;
    return 1;
}

static int count_blocks(const NpzFile *f) {
    int blocks = 0;
    for (int i = 0; i < f->count; i++) {
        int b;
        if (sscanf(f->arrays[i].name, "Transformer/encoderblock_%d/", &b) == 1 && b + 1 > blocks) blocks = b + 1;
    }
    return blocks;
}

int weights_load_npz(ViT *m, const NpzFile *f, const char *path, int head_glorot, uint64_t seed, FILE *report) {
    const ParamTable *t = &m->table;
    const ViTConfig *c = &m->cfg;
    int blocks = count_blocks(f);
    if (blocks != c->layers)
        return vit_fail("%s: the file holds %d encoder blocks, the model has %d (--num_layers / --model)", path, blocks,
                        c->layers);
    float *host = calloc(t->total, sizeof(float));
    char *used = calloc((size_t)f->count + 1, 1);
    if (!host || !used) {
        free(host), free(used);
        return vit_fail("out of memory loading %s", path);
    }
    int rc = VIT_OK, new_head = 0;
    for (int i = 0; i < t->count && rc == VIT_OK; i++) {
        const ParamEntry *e = &t->entries[i];
        float *dst = host + e->offset;
        const NpzArray *a = npz_find(f, e->name);
        int is_head = !strncmp(e->name, "head/", 5);
        if (a) used[a - f->arrays] = 1;
        if (is_head && (!a || !same_shape(a, e))) {
            // A new task: the official fine-tuning starts from a fresh head.
            new_head = 1;
            if (head_glorot && e->ndim == 2) {
                double limit = sqrt(6.0 / (e->shape[0] + e->shape[1]));
                for (size_t k = 0; k < e->size; k++) dst[k] = (float)((2 * rng_uniform(seed, 0x68656164u, k) - 1) * limit);
            }
            continue;
        }
        char want[64], have[64];
        shape_text(want, sizeof want, e->ndim, NULL, e->shape);
        if (!a) {
            rc = vit_fail("%s: no tensor %s %s, which the model needs", path, e->name, want);
            break;
        }
        shape_text(have, sizeof have, a->ndim, a->shape, NULL);
        if (same_shape(a, e)) {
            memcpy(dst, a->data, e->size * sizeof(float));
        } else if (!strcmp(e->name, "Transformer/posembed_input/pos_embedding") && a->ndim == 3 && a->shape[0] == 1 &&
                   a->shape[2] == e->shape[2]) {
            // Another resolution: keep the class row, resize the grid.
            int D = e->shape[2], gs_new = config_grid(c);
            int64_t old_tokens = a->shape[1] - 1;
            int gs_old = (int)llround(sqrt((double)old_tokens));
            if (old_tokens < 1 || (int64_t)gs_old * gs_old != old_tokens) {
                rc = vit_fail("%s: %s has %lld grid tokens, not a square grid", path, e->name, (long long)old_tokens);
                break;
            }
            memcpy(dst, a->data, (size_t)D * sizeof(float));
            posemb_resize(a->data + D, gs_old, dst + D, gs_new, D);
            if (report) fprintf(report, "weights: position embedding resized from %dx%d to %dx%d\n", gs_old, gs_old, gs_new, gs_new);
        } else {
            rc = vit_fail("%s: %s has shape %s in the file, the model expects %s", path, e->name, have, want);
        }
    }
    if (rc == VIT_OK && report) {
        if (new_head)
            fprintf(report, "weights: head not taken from the file (%d classes here): new head, %s\n", c->classes,
                    head_glorot ? "glorot-uniform" : "zeros");
        int unused = 0;
        for (int i = 0; i < f->count; i++) unused += !used[i] && strncmp(f->arrays[i].name, "head/", 5);
        if (unused) {
            fprintf(report, "weights: %d tensors of the file unused:", unused);
            for (int i = 0, shown = 0; i < f->count && shown < 8; i++)
                if (!used[i] && strncmp(f->arrays[i].name, "head/", 5)) fprintf(report, " %s", f->arrays[i].name), shown++;
            fprintf(report, unused > 8 ? " ...\n" : "\n");
        }
    }
    if (rc == VIT_OK) m->be->upload(m->be, m->params, host, t->total * sizeof(float));
    free(host), free(used);
    return rc;
}
