// Official-weights import: an .npz in the official naming (written by tools/make_npz_fixtures.py)
// gives the PyTorch reference's logits, with and without pre_logits, at the file's grid and at
// a larger one (position embeddings resized); the resize itself against scipy.ndimage.zoom;
// bad files are refused with a message naming the file and the tensor.
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "io/npz.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "util/status.h"

static Backend *be;
static const char *FX = "tests/fixtures";

static ViTConfig small_config(int image, int representation) {
    ViTConfig c = {.hidden = 48, .mlp = 96, .heads = 3, .layers = 2, .patch = 8, .image = image, .channels = 3,
                   .classes = 10, .representation = representation, .dropout = 0, .gelu_tanh = 0};
    strcpy(c.name, "ViT-test");
    return c;
}

static void test_posemb(void) {
    StFile f;
    char path[256];
    snprintf(path, sizeof path, "%s/posemb_zoom.safetensors", FX);
    if (st_read(&f, path)) {
        CHECK(0, "%s", vit_error());
        return;
    }
    struct { const char *src, *dst; int g0, g1; } cases[] = {
        {"src_14", "dst_14_24", 14, 24}, {"src_7", "dst_7_12", 7, 12}, {"src_6", "dst_6_4", 6, 4}};
    for (int k = 0; k < 3; k++) {
        const StTensor *s = st_find(&f, cases[k].src), *d = st_find(&f, cases[k].dst);
        int D = 8, g0 = cases[k].g0, g1 = cases[k].g1;
        float out[577 * 8];
        posemb_resize((const float *)s->data + D, g0, out, g1, D);  // class row excluded
        double md = 0;
        const float *ref = (const float *)d->data + D;
        for (int i = 0; i < g1 * g1 * D; i++) md = fmax(md, fabs(out[i] - ref[i]));
        CHECK(md <= 1e-6, "position embedding %dx%d -> %dx%d vs scipy.ndimage.zoom: max diff %g", g0, g0, g1, g1, md);
    }
    st_free(&f);
}

static void test_logits(void) {
    StFile fx;
    char path[256];
    snprintf(path, sizeof path, "%s/npz_logits.safetensors", FX);
    if (st_read(&fx, path)) {
        CHECK(0, "%s", vit_error());
        return;
    }
    const char *kinds[2] = {"pre", "nopre"};
    int sizes[2] = {32, 48};
    for (int k = 0; k < 2; k++) {
        NpzFile f;
        snprintf(path, sizeof path, "%s/npz_%s.npz", FX, kinds[k]);
        if (npz_read(&f, path)) {
            CHECK(0, "%s", vit_error());
            continue;
        }
        int R = weights_npz_representation(&f);
        CHECK(R == (k == 0 ? 48 : 0), "%s: pre_logits width %d", path, R);
        for (int s = 0; s < 2; s++) {
            ViTConfig c = small_config(sizes[s], R);
            ViT m;
            char key[64];
            snprintf(key, sizeof key, "images_%d", sizes[s]);
            const StTensor *img = st_find(&fx, key);
            snprintf(key, sizeof key, "logits/%s/%d", kinds[k], sizes[s]);
            const StTensor *ref = st_find(&fx, key);
            int ok = vit_create(&m, &c, be, 4, 0) == 0 && weights_load_npz(&m, &f, path, 0, 0, NULL) == 0 &&
                     vit_forward(&m, img->data, NULL, 4, 0, 0, 0, 0) == 0;
            CHECK(ok, "%s at %d: %s", path, sizes[s], vit_error());
            if (ok) {
                double r = check_rel_diff(m.host_logits, ref->data, 40);
                CHECK(r <= 1e-5, "%s at image %d: logits relative difference %.3g", path, sizes[s], r);
            }
            vit_destroy(&m);
        }
        npz_free(&f);
    }
    st_free(&fx);
}

static void expect_error(const char *what, ViTConfig c, NpzFile *f, const char *needle) {
    ViT m;
    int made = vit_create(&m, &c, be, 1, 0) == 0;
    int rc = made ? weights_load_npz(&m, f, "w.npz", 0, 0, NULL) : VIT_ERR;
    CHECK(rc == VIT_ERR && strstr(vit_error(), "w.npz") && strstr(vit_error(), needle), "%s: got '%s'", what,
          rc ? vit_error() : "success");
    if (made) vit_destroy(&m);
}

static void test_bad(void) {
    NpzFile f;
    char path[256];
    snprintf(path, sizeof path, "%s/npz_pre.npz", FX);
    if (npz_read(&f, path)) {
        CHECK(0, "%s", vit_error());
        return;
    }
    ViTConfig c = small_config(32, 48);
    c.layers = 3;
    expect_error("block-count mismatch", c, &f, "2 encoder blocks");
    c = small_config(32, 48);
    c.mlp = 64;
    expect_error("shape mismatch", c, &f, "MlpBlock_3/Dense_0/kernel");
    // A missing tensor: hide one name.
    NpzArray *a = (NpzArray *)npz_find(&f, "Transformer/encoder_norm/scale");
    char *saved = a->name;
    a->name = "renamed";
    expect_error("missing tensor", small_config(32, 48), &f, "Transformer/encoder_norm/scale");
    a->name = saved;
    // Another class count: the file's head is skipped and a zero head made, no error.
    c = small_config(32, 48);
    c.classes = 7;
    ViT m;
    int ok = vit_create(&m, &c, be, 1, 0) == 0 && weights_load_npz(&m, &f, path, 0, 0, NULL) == 0;
    CHECK(ok, "new head for 7 classes: %s", vit_error());
    if (ok) {
        int zero = 1;
        for (size_t i = 0; i < (size_t)48 * 7; i++) zero &= m.params[m.off.head_kernel + i] == 0.0f;
        CHECK(zero, "new head is zero-initialised");
    }
    vit_destroy(&m);
    npz_free(&f);
}

int main(void) {
    be = backend_cpu_create(0);
    test_posemb();
    test_logits();
    test_bad();
    be->destroy(be);
    return check_report("weights");
}
