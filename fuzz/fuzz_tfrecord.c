// libFuzzer target for the TFRecord reader and the tf.train.Example decoder. Each input is a
// TFRecord file in an in-memory file (memfd, reached through /proc/self/fd), read with
// tfr_next; every record is re-read with tfr_read_at at its offset and decoded with
// example_parse_image. Whenever the hand decoder accepts a record, protobuf-c (the generated
// code of proto/example.proto) must accept it too and find the same label and image bytes,
// so the fuzzer also checks the decoder's semantics, not only its memory safety.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "data/example.h"
#include "data/tfrecord.h"
#include "example.pb-c.h"
#include "util/status.h"

static int g_fd = -1;
static char g_path[64];

// What protobuf-c sees: the last map entry of a key wins, as in protobuf's map semantics.
static void cross_check(const uint8_t *d, size_t n, const ExampleImage *im) {
    Tensorflow__Example *ex = tensorflow__example__unpack(NULL, n, d);
    if (!ex) abort();  // the hand decoder accepted what protobuf-c calls malformed
    const Tensorflow__Feature *enc = NULL, *lab = NULL;
    if (ex->features)
        for (size_t i = 0; i < ex->features->n_feature; i++) {
            const Tensorflow__Features__FeatureEntry *e = ex->features->feature[i];
            if (!strcmp(e->key, "image/encoded")) enc = e->value;
            if (!strcmp(e->key, "image/class/label")) lab = e->value;
        }
    if (!enc || enc->kind_case != TENSORFLOW__FEATURE__KIND_BYTES_LIST || enc->bytes_list->n_value == 0)
        abort();
    if (!lab || lab->kind_case != TENSORFLOW__FEATURE__KIND_INT64_LIST || lab->int64_list->n_value == 0)
        abort();
    const ProtobufCBinaryData *b = &enc->bytes_list->value[0];
    if (b->len != im->encoded_len || (b->len && memcmp(b->data, im->encoded, b->len) != 0)) abort();
    if (lab->int64_list->value[0] != im->label) abort();
    tensorflow__example__free_unpacked(ex, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (g_fd < 0) {
        g_fd = memfd_create("fuzz_tfrecord", 0);
        if (g_fd < 0) abort();
        snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    }
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) abort();

    TfrReader r;
    if (tfr_open(&r, g_path) != VIT_OK) abort();
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *d;
    size_t n;
    uint64_t off;
    int rc, count = 0;
    while ((rc = tfr_next(&r, &d, &n, &off)) == 1) {
        // Random access must see the same bytes at the same offset.
        size_t len = 0;
        if (tfr_read_at(g_fd, g_path, off, &buf, &cap, &len) != VIT_OK || len != n ||
            (n && memcmp(buf, d, n) != 0))
            abort();
        char where[96];
        snprintf(where, sizeof where, "%s: record %d", g_path, count);
        ExampleImage im;
        if (example_parse_image(d, n, &im, where) == VIT_OK) {
            if (im.encoded_len && (im.encoded < d || im.encoded + im.encoded_len > d + n)) abort();
            cross_check(d, n, &im);
        } else if (strncmp(vit_error(), where, strlen(where)) != 0) {
            abort();  // every message starts with the record's name
        }
        count++;
    }
    if (rc == VIT_ERR && vit_error()[0] == 0) abort();
    tfr_close(&r);

    // Random access at an arbitrary offset (taken from the input) must fail cleanly or work.
    if (size >= 2) {
        uint64_t at = ((uint64_t)data[0] | (uint64_t)data[1] << 8) % (size + 1);
        size_t len;
        if (tfr_read_at(g_fd, g_path, at, &buf, &cap, &len) == VIT_OK && len > size) abort();
    }
    // The decoder alone on the raw input, without framing, reaches deeper protobuf shapes.
    ExampleImage im;
    if (example_parse_image(data, size, &im, "raw") == VIT_OK) cross_check(data, size, &im);
    free(buf);
    return 0;
}
