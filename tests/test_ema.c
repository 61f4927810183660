// timm's weight EMA and layer-wise learning-rate decay, against timm's own functions through
// the fixtures of tools/make_ema_fixtures.py:
//  - ModelEmaV3 (decay 0.99, 0.99 with warm-up, 0.9998 with warm-up; 12 updates of given
//    weights, called as timm's train.py calls it): the trainer's ema_apply (the decay schedule
//    and the backend's ema_update) must give every average within 1e-6, and the first
//    update an exact copy of the weights;
//  - param_groups_layer_decay on a 3-block ViT (F = 0.75 and 0.65): every tensor of vit's
//    parameter table must get exactly timm's lr scale (as a double) and timm's weight-decay
//    choice, and every tensor must be there once.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "check.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "train/update.h"
#include "util/status.h"

#define FIXTURES "tests/fixtures/"
#define TOL_EMA 1e-6

static const float *tensor(const StFile *f, const char *name, int rows, int cols) {
    const StTensor *t = st_find(f, name);
    int ok = t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols;
    CHECK(ok, "fixture tensor %s (%d x %d floats)", name, rows, cols);
    return ok ? (const float *)t->data : NULL;
}

// One ModelEmaV3 case: the weights of every update through ema_apply, on the CPU backend.
static void ema_case(Backend *be, const StFile *f, const char *name, int steps, int n) {
    char key[96];
    snprintf(key, sizeof key, "%s.decay", name);
    const char *decay = st_meta(f, key);
    snprintf(key, sizeof key, "%s.warmup", name);
    const char *warmup = st_meta(f, key);
    snprintf(key, sizeof key, "ema/%s", name);
    const float *params = tensor(f, "params", steps + 1, n), *want = tensor(f, key, steps, n);
    CHECK(decay && warmup, "%s: decay and warm-up in the fixture's metadata", name);
    if (!params || !want || !decay || !warmup) return;
    EmaConfig cfg = {1, strtod(decay, NULL), warmup[0] == '1'};
    float *d_ema = be->alloc(be, (size_t)n * sizeof(float)), *d_p = be->alloc(be, (size_t)n * sizeof(float));
    float *got = malloc((size_t)n * sizeof(float));
    be->upload(be, d_ema, params, (size_t)n * sizeof(float));  // the average starts as the model
    double worst = 0;
    for (int step = 1; step <= steps; step++) {
        be->upload(be, d_p, params + (size_t)step * n, (size_t)n * sizeof(float));
        ema_apply(be, d_ema, d_p, (size_t)n, &cfg, step);
        be->download(be, got, d_ema, (size_t)n * sizeof(float));
        const float *w = want + (size_t)(step - 1) * n;
        for (int i = 0; i < n; i++) {
            double d = got[i] > w[i] ? (double)got[i] - w[i] : (double)w[i] - got[i];
            if (!(d <= worst)) worst = d;
        }
        if (step == 1)
            CHECK(!memcmp(got, params + n, (size_t)n * sizeof(float)),
                  "%s: the first update copies the weights exactly (timm's decay 0)", name);
    }
    CHECK(worst <= TOL_EMA, "%s (decay %s%s): %d updates within %g of timm's ModelEmaV3 (max |diff| %.3g)", name,
          decay, cfg.warmup ? ", warm-up" : "", steps, TOL_EMA, worst);
    printf("  ModelEmaV3 %-14s decay %-7s warm-up %d: max |diff| %.3g over %d updates\n", name, decay, cfg.warmup,
           worst, steps);
    free(got);
    be->release(be, d_ema);
    be->release(be, d_p);
}

// The decay schedule itself, on values timm's formula gives (1 - (1 + s)^(-2/3), capped).
static void decay_schedule(void) {
    EmaConfig plain = {1, 0.99, 0}, warm = {1, 0.99, 1};
    CHECK(ema_decay_at(&plain, 1) == 0.0 && ema_decay_at(&warm, 1) == 0.0, "decay 0 at the first update");
    CHECK(ema_decay_at(&plain, 2) == 0.99 && ema_decay_at(&plain, 1000) == 0.99, "no warm-up: the decay from update 2");
    double d2 = ema_decay_at(&warm, 2), d8 = ema_decay_at(&warm, 8);
    CHECK(d2 > 0.37 && d2 < 0.38 && d8 > 0.7499 && d8 < 0.7501, "warm-up: 1 - 2^(-2/3) at update 2 (%.6f), "
          "1 - 8^(-2/3) = 0.75 at update 8 (%.6f)", d2, d8);
    CHECK(ema_decay_at(&warm, 1000000) == 0.99, "warm-up capped at the decay");
}

static void ema_fixtures(void) {
    StFile f;
    if (st_read(&f, FIXTURES "ema_model_ema.safetensors")) {
        CHECK(0, "fixture: %s (python3 tools/make_ema_fixtures.py)", vit_error());
        return;
    }
    const StTensor *p = st_find(&f, "params");
    const char *cases = st_meta(&f, "cases"), *steps = st_meta(&f, "steps");
    CHECK(p && p->ndim == 2 && cases && steps, "fixture holds params, cases and steps");
    Backend *be = p && p->ndim == 2 && cases && steps ? backend_cpu_create(2) : NULL;
    if (be) {
        char list[256];
        snprintf(list, sizeof list, "%s", cases);
        int ncases = 0;
        for (char *c = strtok(list, ","); c; c = strtok(NULL, ","), ncases++)
            ema_case(be, &f, c, atoi(steps), (int)p->shape[1]);
        CHECK(ncases == 3, "three ModelEmaV3 cases in the fixture (%d)", ncases);
        be->destroy(be);
    }
    st_free(&f);
}

// Parses "key=value" ints of the fixture's model line into a config.
static int model_config(const char *line, ViTConfig *c) {
    if (config_from_preset(c, "ViT-Ti_16")) return VIT_ERR;
    c->representation = 0;
    struct { const char *key; int *field; } keys[] = {
        {"layers", &c->layers}, {"hidden", &c->hidden}, {"heads", &c->heads}, {"mlp", &c->mlp},
        {"patch", &c->patch},   {"image", &c->image},   {"channels", &c->channels}, {"classes", &c->classes}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char pat[32];
        snprintf(pat, sizeof pat, " %s=", keys[i].key);
        const char *at = strstr(line, pat);
        if (!at) return vit_fail("model line lacks %s", keys[i].key);
        *keys[i].field = atoi(at + strlen(pat));
    }
    return config_validate(c);
}

// Checks one layer_decay case: the lines that follow it until the next case or the end.
static void layer_case(const ParamTable *t, double decay, char lines[][160], int nlines) {
    int layers = layer_decay_blocks(t), matched = 0, scale_ok = 0, wd_ok = 0;
    char *seen = calloc((size_t)t->count, 1);
    for (int k = 0; k < nlines; k++) {
        char name[128];
        double want;
        int wd;
        if (sscanf(lines[k], "%127s %lf %d", name, &want, &wd) != 3) continue;
        int i = 0;
        while (i < t->count && strcmp(t->entries[i].name, name)) i++;
        CHECK(i < t->count, "layer decay %g: timm's parameter %s is in vit's table", decay, name);
        if (i == t->count) continue;
        double got = layer_decay_scale(decay, layer_decay_id(name, layers), layers);
        matched += !seen[i];
        seen[i] = 1;
        scale_ok += got == want;
        wd_ok += t->entries[i].decay == wd;
        if (got != want) fprintf(stderr, "  %s: scale %.17g, timm %.17g\n", name, got, want);
        if (t->entries[i].decay != wd) fprintf(stderr, "  %s: weight decay %d, timm %d\n", name, t->entries[i].decay, wd);
    }
    CHECK(matched == t->count && nlines == t->count, "layer decay %g: all %d tensors of the table given once (%d of %d "
          "lines)", decay, t->count, matched, nlines);
    CHECK(scale_ok == nlines, "layer decay %g: lr scales exactly timm's for %d of %d tensors", decay, scale_ok, nlines);
    CHECK(wd_ok == nlines, "layer decay %g: weight decay as timm's groups for %d of %d tensors", decay, wd_ok, nlines);
    printf("  layer decay %-5g: %d tensors over %d layers compared with timm's groups\n", decay, nlines,
           layers + 2);
    free(seen);
}

static void layer_decay_fixture(void) {
    FILE *f = fopen(FIXTURES "ema_layer_decay.txt", "r");
    CHECK(f != NULL, "fixture %s (python3 tools/make_ema_fixtures.py)", FIXTURES "ema_layer_decay.txt");
    if (!f) return;
    static char lines[512][160];
    int n = 0, cases = 0;
    ViTConfig c;
    ParamTable t = {0};
    ParamOffsets o;
    double decay = 0;
    int have_model = 0;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == '#' || !line[0]) continue;
        if (!strncmp(line, "model ", 6)) {
            have_model = model_config(line + 5, &c) == VIT_OK && params_build(&t, &o, &c) == VIT_OK;
            CHECK(have_model, "fixture model: %s", have_model ? "" : vit_error());
        } else if (!strncmp(line, "layer_decay ", 12)) {
            if (n && have_model) layer_case(&t, decay, lines, n), cases++;
            decay = strtod(line + 12, NULL);
            n = 0;
        } else if (n < 512) {
            snprintf(lines[n++], sizeof lines[0], "%.159s", line);
        }
    }
    if (n && have_model) layer_case(&t, decay, lines, n), cases++;
    fclose(f);
    CHECK(cases == 2, "two layer_decay cases in the fixture (%d)", cases);
    if (have_model) params_free(&t, &o);
}

int main(void) {
    decay_schedule();
    ema_fixtures();
    layer_decay_fixture();
    return check_report("test_ema");
}
