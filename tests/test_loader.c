// The threaded loader: batches identical for any number of workers and ring size, in order,
// with short last batches; an unreadable image stops the run with its name, or with
// skip_corrupt is replaced and counted; image folders list classes in sorted order.
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "data/loader.h"
#include "util/status.h"

// All batches of a sequence, concatenated (images then labels), for comparison.
static uint8_t *run(const Dataset *d, int batch, int workers, int slots, const int *order, long n, uint32_t epoch,
                    int **labels_out) {
    Loader *l = loader_create(d, batch, workers, slots);
    size_t bytes = (size_t)d->size * d->size * d->channels;
    uint8_t *all = malloc((size_t)n * bytes);
    int *labels = malloc((size_t)n * sizeof(int));
    long at = 0;
    if (l && loader_begin(l, order, n, epoch) == VIT_OK) {
        while (at < n) {
            const uint8_t *img;
            const int *lab;
            int got;
            if (loader_next(l, &img, &lab, &got)) break;
            memcpy(all + at * bytes, img, (size_t)got * bytes);
            memcpy(labels + at, lab, (size_t)got * sizeof(int));
            at += got;
        }
    }
    loader_destroy(l);
    CHECK(at == n, "loader delivered %ld of %ld samples", at, n);
    *labels_out = labels;
    return all;
}

static void test_determinism(void) {
    Dataset d;
    dataset_synthetic(&d, "synthetic", 100, 8, 3, 7, 42);
    long n = 250;  // more than one pass, last batch short (250 = 7 x 32 + 26)
    int *order = malloc(n * sizeof(int));
    for (long i = 0; i < n; i++) order[i] = (int)((i * 37) % d.count);
    int *l1, *l2, *l3;
    uint8_t *a = run(&d, 32, 1, 2, order, n, 3, &l1);
    uint8_t *b = run(&d, 32, 3, 5, order, n, 3, &l2);
    uint8_t *c = run(&d, 32, 2, 2, order, n, 3, &l3);
    size_t bytes = (size_t)n * 8 * 8 * 3;
    CHECK(!memcmp(a, b, bytes) && !memcmp(l1, l2, n * sizeof(int)), "1 worker and 3 workers give the same batches");
    CHECK(!memcmp(a, c, bytes) && !memcmp(l1, l3, n * sizeof(int)), "2 workers, ring of 2: same batches");
    // sample i of the sequence is dataset sample order[i]
    uint8_t one[8 * 8 * 3];
    int label;
    SampleScratch s = {0};
    dataset_load(&d, order[200], 3, one, &label, &s);
    CHECK(!memcmp(one, a + 200 * sizeof one, sizeof one) && label == l1[200], "samples arrive in the given order");
    free(a), free(b), free(c), free(l1), free(l2), free(l3), free(order);
    dataset_free(&d);
}

static void write_png(const char *path, int w, int h, uint8_t value) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_RGB;
    uint8_t *px = malloc((size_t)w * h * 3);
    memset(px, value, (size_t)w * h * 3);
    png_image_write_to_file(&img, path, 0, px, 0, NULL);
    free(px);
}

static void test_folder(void) {
    char root[] = "/tmp/vitc-loader-XXXXXX";
    if (!mkdtemp(root)) return;
    char p[512];
    const char *classes[] = {"zebra", "ant", "moth"};
    for (int split = 0; split < 2; split++)
        for (int c = 0; c < 3; c++) {
            snprintf(p, sizeof p, "%s/%s", root, split ? "val" : "train");
            mkdir(p, 0777);
            snprintf(p, sizeof p, "%s/%s/%s", root, split ? "val" : "train", classes[c]);
            mkdir(p, 0777);
            for (int i = 0; i < 2; i++) {
                snprintf(p, sizeof p, "%s/%s/%s/img%d.png", root, split ? "val" : "train", classes[c], i);
                write_png(p, 20 + i, 16, (uint8_t)(40 * c + i));
            }
        }
    snprintf(p, sizeof p, "%s/train/moth/broken.png", root);  // a zero-byte image
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    Dataset tr, va;
    int rc = dataset_open_folder(&tr, &va, root);
    CHECK(rc == VIT_OK && tr.count == 7 && va.count == 6 && tr.classes == 3, "folder: 7 train / 6 val images, 3 classes");
    if (rc == VIT_OK) {
        // sorted classes: ant 0, moth 1, zebra 2
        CHECK(tr.labels[0] == 0 && strstr(tr.paths[0], "/ant/") && tr.labels[6] == 2, "classes in sorted order");
        // Threads: augmented batches are the same for 1 and 2 workers and any ring size.
        AugmentConfig aug;
        augment_defaults(&aug);
        dataset_set_output(&va, 8, 3, 1, &aug);
        int vorder[6] = {5, 0, 3, 1, 4, 2};
        int *la, *lb;
        uint8_t *a = run(&va, 4, 1, 2, vorder, 6, 1, &la), *b = run(&va, 4, 2, 3, vorder, 6, 1, &lb);
        CHECK(!memcmp(a, b, 6 * 8 * 8 * 3) && !memcmp(la, lb, 6 * sizeof(int)),
              "decoded + augmented batches identical for 1 and 2 loader threads");
        free(a), free(b), free(la), free(lb);
        dataset_set_output(&tr, 8, 3, 0, NULL);
        int order[7] = {0, 1, 2, 3, 4, 5, 6};
        Loader *l = loader_create(&tr, 7, 2, 2);
        const uint8_t *img;
        const int *lab;
        int n;
        loader_begin(l, order, 7, 0);
        rc = loader_next(l, &img, &lab, &n);
        CHECK(rc == VIT_ERR && strstr(vit_error(), "broken.png"), "a zero-byte image stops the run, named: %s",
              vit_error());
        loader_destroy(l);
        tr.skip_corrupt = 1;
        l = loader_create(&tr, 7, 2, 2);
        loader_begin(l, order, 7, 0);
        rc = loader_next(l, &img, &lab, &n);
        CHECK(rc == VIT_OK && n == 7 && loader_skipped(l) == 1, "skip_corrupt: replaced and counted (%ld)",
              loader_skipped(l));
        loader_destroy(l);
    }
    dataset_free(&tr);
    dataset_free(&va);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    test_determinism();
    test_folder();
    return check_report("loader");
}
