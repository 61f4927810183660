// `vit predict`: top-5 classes with probabilities for image files, with the evaluation
// preprocessing (full-size decode, short side resized to the model's size, central crop);
// --save_inputs writes what the model was given as PNGs.
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "data/image.h"
#include "util/status.h"

// Class names, one per line; NULL entries when the file is shorter than the class count.
static char **read_labels(const char *path, int classes) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char **names = calloc((size_t)classes, sizeof *names), line[512];
    for (int i = 0; names && i < classes && fgets(line, sizeof line, f); i++) {
        line[strcspn(line, "\r\n")] = 0;
        names[i] = strdup(line);
    }
    fclose(f);
    return names;
}

// The shipped class names live in data/ next to the executable.
static void default_labels(const ViTConfig *c, char *out, size_t n) {
    char exe[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = 0;
    const char *file = c->classes == 1000 ? "imagenet1k_classes.txt"
                       : c->classes == 10 && c->channels == 1 ? "fashion_mnist_classes.txt" : NULL;
    if (file && len > 0)
        snprintf(out, n, "%s/data/%s", dirname(exe), file);
    else
        out[0] = 0;
}

// --save_inputs DIR: an existing folder, or one made now.
static int check_save_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) return S_ISDIR(st.st_mode) ? VIT_OK : vit_fail("--save_inputs %s: not a folder", dir);
    if (mkdir(dir, 0777) != 0) return vit_fail("--save_inputs %s: cannot create it: %s", dir, strerror(errno));
    return VIT_OK;
}

// DIR/<file name without its extension>.png; "-<argument number>" is added when an earlier
// argument has the same name (photos from two folders).
static void input_png_path(const char *dir, char **images, int i, char *out, size_t n) {
    const char *base = strrchr(images[i], '/') ? strrchr(images[i], '/') + 1 : images[i];
    const char *dot = strrchr(base, '.');
    int stem = dot && dot != base ? (int)(dot - base) : (int)strlen(base), clash = 0;
    for (int k = 0; k < i && !clash; k++) {
        const char *b = strrchr(images[k], '/') ? strrchr(images[k], '/') + 1 : images[k];
        const char *d = strrchr(b, '.');
        int len = d && d != b ? (int)(d - b) : (int)strlen(b);
        clash = len == stem && !strncmp(b, base, (size_t)stem);
    }
    if (clash)
        snprintf(out, n, "%s/%.*s-%d.png", dir, stem, base, i + 1);
    else
        snprintf(out, n, "%s/%.*s.png", dir, stem, base);
}

// The model input for image i, made as evaluation makes it: full-size decode (or DCT-scaled
// with --eval_fast_decode), resize, central crop. With --save_inputs, also written as a PNG.
static int prepare_input(const Options *o, const ViTConfig *c, char **images, int i, uint8_t *out) {
    Image img = {0};
    int rc = o->eval_fast_decode ? image_decode_file(&img, images[i], c->image) : image_decode_file_tf(&img, images[i]);
    if (rc == VIT_OK) rc = image_eval_crop(&img, c->image, c->channels, out);
    image_free(&img);
    if (rc == VIT_OK && *o->save_inputs) {
        char png[2200];
        input_png_path(o->save_inputs, images, i, png, sizeof png);
        rc = image_write_png(png, out, c->image, c->image, c->channels);
    }
    return rc;
}

// Softmax of the logits and the five most probable classes, as text or one JSON line.
static void print_top5(const Options *o, const ViTConfig *c, char **names, const char *path, const float *z,
                       float *prob) {
    float mx = z[0];
    for (int k = 1; k < c->classes; k++) mx = z[k] > mx ? z[k] : mx;
    double sum = 0;
    for (int k = 0; k < c->classes; k++) sum += prob[k] = expf(z[k] - mx);
    int top[5], n_top = c->classes < 5 ? c->classes : 5;
    for (int t = 0; t < n_top; t++) {  // selection of the five largest, ties to the lower index
        top[t] = -1;
        for (int k = 0; k < c->classes; k++) {
            int taken = 0;
            for (int u = 0; u < t; u++) taken |= top[u] == k;
            if (!taken && (top[t] < 0 || prob[k] > prob[top[t]])) top[t] = k;
        }
    }
    if (o->json) {
        printf("{\"image\": \"%s\", \"top5\": [", path);
        for (int t = 0; t < n_top; t++)
            printf("%s{\"class\": %d, \"name\": \"%s\", \"probability\": %.6f}", t ? ", " : "", top[t],
                   names && names[top[t]] ? names[top[t]] : "", prob[top[t]] / sum);
        printf("]}\n");
    } else {
        printf("%s\n", path);
        for (int t = 0; t < n_top; t++)
            printf("  %d. %6.2f%%  %s (%d)\n", t + 1, 100 * prob[top[t]] / sum,
                   names && names[top[t]] ? names[top[t]] : "class", top[t]);
    }
}

int cmd_predict(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("predict IMAGE...", "Top-5 classes of each JPEG/PNG image for --checkpoint FILE or "
                                                 "--pretrained FILE;\n--labels FILE names the classes; --save_inputs "
                                                 "DIR writes each model input as a PNG.");
            return 0;
        }
    ParsedOptions p;
    Backend *be = NULL;
    ViT m = {0};
    int rc = 2;
    char **names = NULL;
    uint8_t *batch = NULL;
    if (flags_parse(&p, argc, argv) || cli_check_supported(&p)) goto fail;
    const Options *o = &p.o;
    if (!p.n_positional) {
        vit_fail("predict needs image files (JPEG or PNG)");
        goto fail;
    }
    if (*o->save_inputs && check_save_dir(o->save_inputs)) goto fail;
    if (cli_check_model_given(&p, "predict with")) goto fail;
    be = cli_create_backend(&p, o->threads);
    char **stored = NULL;  // the class names in the checkpoint
    if (!be || cli_load_model_named(&p, NULL, be, 1, &m, stderr, &stored)) goto fail;
    const ViTConfig *c = &m.cfg;
    char labels[1200];
    if (*o->labels)
        snprintf(labels, sizeof labels, "%s", o->labels);
    else
        default_labels(c, labels, sizeof labels);
    // --labels wins; then the names the checkpoint's run stored; then the shipped lists.
    if (stored && !*o->labels) {
        names = stored;
    } else if (stored) {
        for (int k = 0; k < c->classes; k++) free(stored[k]);
        free(stored);
    }
    if (!names && *labels && !(names = read_labels(labels, c->classes)) && *o->labels) {
        vit_fail("--labels %s: cannot read it", o->labels);
        goto fail;
    }
    size_t bytes = (size_t)c->image * c->image * c->channels;
    batch = malloc(bytes);
    float *prob = malloc((size_t)c->classes * sizeof(float));
    if (!batch || !prob) {
        free(prob);
        vit_fail("out of memory");
        goto fail;
    }
    rc = 0;
    for (int i = 0; i < p.n_positional; i++) {
        if (prepare_input(o, c, p.positional, i, batch)) {
            fprintf(stderr, "vit predict: %s\n", vit_error());
            rc = 2;
            continue;
        }
        if (vit_forward(&m, batch, NULL, 1, 0, 0.0f, 0, 0)) {
            fprintf(stderr, "vit predict: %s\n", vit_error());
            rc = 2;
            break;
        }
        print_top5(o, c, names, p.positional[i], m.host_logits, prob);
    }
    free(prob);
    goto done;
fail:
    fprintf(stderr, "vit predict: %s\n", vit_error());
done:
    if (names)
        for (int k = 0; k < m.cfg.classes; k++) free(names[k]);
    free(names);
    free(batch);
    vit_destroy(&m);
    if (be) be->destroy(be);
    flags_free(&p);
    return rc;
}
