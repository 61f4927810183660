// Staged inputs (vit_stage, then vit_forward with images NULL), the way the trainer feeds
// the model a batch ahead: the same logits, losses and gradients as passing the batch to
// vit_forward directly, while the next batch waits in the other input buffer; misuse is an
// error naming the sizes, not a forward pass over stale data.
#include <string.h>
#include "backend/backend.h"
#include "check.h"
#include "model/vit.h"
#include "model_inputs.h"
#include "util/status.h"

enum { B = 4 };

typedef struct {
    float logits[B * 10], losses[B], *grads;
} Pass;

// Forward and backward of batches 0 and 1, either passed directly or each staged while the
// previous one is still current (staged after its forward pass, before its backward pass).
static int two_steps(Backend *be, const ViTConfig *c, int staged, Pass out[2]) {
    ViT m;
    if (vit_create(&m, c, be, B, 1)) return VIT_ERR;
    vit_init_params(&m, 5);
    randomize_head(&m, 6);
    size_t per = (size_t)c->image * c->image * c->channels;
    uint8_t img[2][B * 16 * 16 * 3];
    int lab[2][B];
    for (int k = 0; k < 2; k++) synth_batch(img[k], lab[k], B, c, 30 + (uint32_t)k);
    int rc = per * B <= sizeof img[0] ? VIT_OK : vit_fail("test images too small");
    if (staged && rc == VIT_OK) rc = vit_stage(&m, img[0], lab[0], B);
    for (int k = 0; k < 2 && rc == VIT_OK; k++) {
        be->zero(be, m.grads, m.table.total * sizeof(float));
        rc = staged ? vit_forward(&m, NULL, NULL, B, 1, 0.1f, 9, (uint32_t)k)
                    : vit_forward(&m, img[k], lab[k], B, 1, 0.1f, 9, (uint32_t)k);
        if (rc == VIT_OK && staged && k == 0) {
            rc = vit_stage(&m, img[1], lab[1], B);
            memset(img[0], 0, sizeof img[0]);  // the current batch's host copy may go once staged...
            memset(lab[0], 0, sizeof lab[0]);  // ...and its backward pass must not read it
        }
        if (rc == VIT_OK) rc = vit_backward(&m, B, 0.1f, 1.0f / B, 9, (uint32_t)k);
        if (rc == VIT_OK) {
            memcpy(out[k].logits, m.host_logits, sizeof out[k].logits);
            memcpy(out[k].losses, m.host_losses, sizeof out[k].losses);
            out[k].grads = malloc(m.table.total * sizeof(float));
            be->download(be, out[k].grads, m.grads, m.table.total * sizeof(float));
        }
    }
    vit_destroy(&m);
    return rc;
}

static void test_same_numbers(Backend *be) {
    ViTConfig c = small_config("stage");
    Pass direct[2] = {0}, staged[2] = {0};
    int r1 = two_steps(be, &c, 0, direct), r2 = two_steps(be, &c, 1, staged);
    CHECK(r1 == VIT_OK && r2 == VIT_OK, "both runs complete: %s", vit_error());
    if (r1 || r2) return;
    ViT probe;
    vit_create(&probe, &c, be, B, 1);
    size_t n = probe.table.total;
    vit_destroy(&probe);
    for (int k = 0; k < 2; k++) {
        CHECK(!memcmp(direct[k].logits, staged[k].logits, sizeof direct[k].logits) &&
                  !memcmp(direct[k].losses, staged[k].losses, sizeof direct[k].losses),
              "batch %d: staged logits and losses equal the direct ones", k);
        CHECK(!memcmp(direct[k].grads, staged[k].grads, n * sizeof(float)),
              "batch %d: staged gradients equal the direct ones", k);
        free(direct[k].grads), free(staged[k].grads);
    }
}

static void test_misuse(Backend *be) {
    ViTConfig c = small_config("stage");
    ViT m;
    if (vit_create(&m, &c, be, B, 1)) return;
    vit_init_params(&m, 5);
    uint8_t img[B * 16 * 16 * 3] = {0};
    int lab[B] = {0};
    int rc = vit_forward(&m, NULL, NULL, B, 1, 0, 1, 0);
    CHECK(rc == VIT_ERR && strstr(vit_error(), "0 are staged"), "forward with nothing staged: %s", vit_error());
    CHECK(vit_stage(&m, img, lab, B + 1) == VIT_ERR, "staging more images than planned: %s", vit_error());
    vit_stage(&m, img, lab, 2);
    rc = vit_forward(&m, NULL, NULL, 3, 1, 0, 1, 0);
    CHECK(rc == VIT_ERR && strstr(vit_error(), "3 images: 2 are staged"), "forward over another size: %s",
          vit_error());
    vit_stage(&m, img, lab, B);
    CHECK(vit_forward(&m, NULL, NULL, B, 1, 0, 1, 0) == VIT_OK, "forward over the staged batch");
    CHECK(vit_forward(&m, NULL, NULL, B, 1, 0, 1, 0) == VIT_ERR, "a staged batch is consumed once");
    vit_destroy(&m);
}

int main(void) {
    Backend *be = backend_cpu_create(0);
    if (!be) return 1;
    test_same_numbers(be);
    test_misuse(be);
    be->destroy(be);
    return check_report("stage");
}
