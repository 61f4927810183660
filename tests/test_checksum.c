// Checkpoint checksums: a saved checkpoint verifies and reads back exactly; a bit flipped in
// any tensor is an error naming the file and that tensor; a bit flipped in the header (length,
// metadata, tensor table) is an error naming the file; a file without checksums opens, marked
// unverified; damaged checksum entries are errors, not "no checksums".
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "testdir.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "util/crc32c.h"
#include "util/status.h"

static char g_root[64];

static int spit(const char *path, const unsigned char *b, size_t n) {
    unlink(path);  // rewriting a truncated file would make ext4 flush it each time
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

// Writes buf with byte `at` XOR mask to `path`, opens it as a checkpoint; returns VIT_OK/VIT_ERR.
static int open_flipped(const char *path, unsigned char *buf, size_t n, size_t at, unsigned char mask) {
    buf[at] ^= mask;
    int w = spit(path, buf, n);
    buf[at] ^= mask;
    if (w) return 99;
    Checkpoint ck;
    int rc = checkpoint_open(&ck, path);
    if (rc == VIT_OK) checkpoint_close(&ck);
    return rc;
}

static int one_line_naming(const char *msg, const char *path) {
    return strstr(msg, path) == msg && !strchr(msg, '\n');
}

typedef struct {
    ViTConfig cfg;
    ParamTable t;
    ParamOffsets o;
    float *p, *m, *v;
} Model;

static int model_make(Model *x) {
    memset(x, 0, sizeof *x);
    if (config_from_preset(&x->cfg, "ViT-Ti_4")) return -1;
    ViTConfig *c = &x->cfg;
    c->hidden = 8, c->mlp = 16, c->heads = 2, c->layers = 1, c->image = 8, c->channels = 1, c->classes = 3;
    if (params_build(&x->t, &x->o, c)) return -1;
    size_t n = x->t.total;
    x->p = malloc(n * sizeof(float)), x->m = malloc(n * sizeof(float)), x->v = malloc(n * sizeof(float));
    if (!x->p || !x->m || !x->v) return -1;
    params_init(&x->t, x->p, 7);
    for (size_t i = 0; i < n; i++) x->m[i] = (float)i * 1e-3f - 0.5f, x->v[i] = (float)(i % 13) * 1e-4f;
    return 0;
}

static void model_free(Model *x) {
    params_free(&x->t, &x->o);
    free(x->p), free(x->m), free(x->v);
}

static void test_round_trip(const Model *x, const char *path) {
    Checkpoint ck;
    CHECK(checkpoint_open(&ck, path) == VIT_OK, "a fresh checkpoint opens: %s", vit_error());
    CHECK(ck.has_checksums == 1, "a fresh checkpoint carries checksums");
    size_t n = x->t.total;
    float *p = calloc(n, sizeof(float)), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    CHECK(p && m && v && checkpoint_copy(&ck, path, &x->t, p, m, v) == VIT_OK, "copy: %s", vit_error());
    CHECK(p && m && v && !memcmp(p, x->p, n * 4) && !memcmp(m, x->m, n * 4) && !memcmp(v, x->v, n * 4),
          "parameters and slots read back bit for bit");
    const StTensor *t = st_find(&ck.st, "embedding/kernel");
    const char *crc = st_meta(&ck.st, "crc32c/embedding/kernel");
    char want[16] = "";
    if (t) snprintf(want, sizeof want, "%08x", crc32c(0, t->data, t->nbytes));
    CHECK(t && crc && !strcmp(crc, want), "crc32c/embedding/kernel is the CRC-32C of its bytes (%s vs %s)",
          crc ? crc : "missing", want);
    CHECK(st_meta(&ck.st, "crc32c.header") && strlen(st_meta(&ck.st, "crc32c.header")) == 8,
          "crc32c.header is 8 hex digits");
    checkpoint_close(&ck);
    free(p), free(m), free(v);
}

// One flip inside every tensor (at a different spot in each): the error names the tensor.
static void test_data_flips(const char *path, unsigned char *buf, size_t n) {
    StFile st;
    if (st_read(&st, path)) {
        CHECK(0, "st_read: %s", vit_error());
        return;
    }
    char *flip = testdir_path(g_root, "flip.safetensors");
    int named = 0;
    for (int i = 0; i < st.count; i++) {
        const StTensor *t = &st.tensors[i];
        size_t at = (size_t)((const unsigned char *)t->data - (const unsigned char *)st.buffer);
        at += (size_t)(i * 7919) % t->nbytes;
        char want[256];
        snprintf(want, sizeof want, "tensor %s: checksum mismatch", t->name);
        int rc = open_flipped(flip, buf, n, at, (unsigned char)(1u << (i % 8)));
        int ok = rc == VIT_ERR && one_line_naming(vit_error(), flip) && strstr(vit_error(), want);
        if (!ok) fprintf(stderr, "  flip in %s at byte %zu: rc %d, %s\n", t->name, at, rc, vit_error());
        named += ok;
    }
    CHECK(named == st.count, "a flipped bit in each of the %d tensors is an error naming the file and the tensor "
          "(%d did)", st.count, named);
    // The case: one byte XOR 0x40 at 1000 bytes past the header.
    size_t data0 = (size_t)((const unsigned char *)st.tensors[0].data - (const unsigned char *)st.buffer);
    for (int i = 0; i < st.count; i++) {
        size_t a = (size_t)((const unsigned char *)st.tensors[i].data - (const unsigned char *)st.buffer);
        if (a < data0) data0 = a;
    }
    int rc = open_flipped(flip, buf, n, data0 + 1000, 0x40);
    CHECK(rc == VIT_ERR && strstr(vit_error(), "checksum mismatch"), "XOR 0x40 at data byte 1000 is refused: %s",
          vit_error());
    st_free(&st);
}

// Every byte of the length and the header JSON, each flipped at one bit: refused, naming the file.
static void test_header_flips(const unsigned char *orig, size_t n) {
    unsigned char *buf = malloc(n);
    if (!buf) return;
    memcpy(buf, orig, n);
    uint64_t h = 0;
    for (int k = 7; k >= 0; k--) h = h << 8 | buf[k];
    char *flip = testdir_path(g_root, "hflip.safetensors");
    long tried = 0, refused = 0;
    for (size_t at = 0; at < 8 + h && at < n; at++) {
        unsigned char mask = (unsigned char)(1u << (at * 5 % 8));  // each bit position in turn
        tried++;
        int rc = open_flipped(flip, buf, n, at, mask);
        int ok = rc == VIT_ERR && one_line_naming(vit_error(), flip);
        if (!ok && tried - refused < 5)
            fprintf(stderr, "  header byte %zu ^ 0x%02x ('%c'): rc %d, %s\n", at, mask,
                    buf[at] >= 32 && buf[at] < 127 ? buf[at] : '?', rc, rc ? vit_error() : "accepted");
        refused += ok;
    }
    CHECK(tried > 1000 && refused == tried, "every flipped bit of the %llu-byte header refused (%ld of %ld)",
          (unsigned long long)h + 8, refused, tried);
    free(buf);
}

// Rewrites the file's tensors and metadata, leaving out the keys `drop` selects.
static int rewrite_without(const char *src, const char *dst, int (*drop)(const char *key)) {
    StFile st;
    if (st_read(&st, src)) return -1;
    StWriter *w = st_writer_new();
    int rc = w ? VIT_OK : VIT_ERR;
    for (int i = 0; i < st.count && rc == VIT_OK; i++)
        rc = st_writer_add(w, st.tensors[i].name, st.tensors[i].dtype, st.tensors[i].ndim, st.tensors[i].shape,
                           st.tensors[i].data);
    for (int i = 0; i < st.meta_count && rc == VIT_OK; i++)
        if (!drop(st.meta_keys[i])) rc = st_writer_meta(w, st.meta_keys[i], st.meta_values[i]);
    if (rc == VIT_OK) rc = st_writer_save(w, dst);
    st_writer_free(w);
    st_free(&st);
    return rc;
}

static int drop_all_crc(const char *k) { return !strncmp(k, "crc32c", 6); }
static int drop_header_crc(const char *k) { return !strcmp(k, "crc32c.header"); }
static int drop_one_tensor_crc(const char *k) { return !strcmp(k, "crc32c/head/bias"); }

static void test_without_checksums(const Model *x, const char *path) {
    char *old = testdir_path(g_root, "old.safetensors");
    CHECK(rewrite_without(path, old, drop_all_crc) == VIT_OK, "rewrite without checksums: %s", vit_error());
    Checkpoint ck;
    int rc = checkpoint_open(&ck, old);
    CHECK(rc == VIT_OK && ck.has_checksums == 0, "a checkpoint without checksums opens, marked unverified: %s",
          rc ? vit_error() : "");
    if (rc == VIT_OK) {
        float *p = calloc(x->t.total, sizeof(float));
        CHECK(p && checkpoint_copy(&ck, old, &x->t, p, NULL, NULL) == VIT_OK &&
              !memcmp(p, x->p, x->t.total * sizeof(float)), "and reads back the same parameters");
        free(p);
        checkpoint_close(&ck);
    }
    char *bad = testdir_path(g_root, "nohdr.safetensors");
    CHECK(rewrite_without(path, bad, drop_header_crc) == VIT_OK, "rewrite without crc32c.header");
    rc = checkpoint_open(&ck, bad);
    CHECK(rc == VIT_ERR && one_line_naming(vit_error(), bad) && strstr(vit_error(), "crc32c.header missing"),
          "tensor checksums without crc32c.header: damaged, not unchecksummed: %s", vit_error());
    if (rc == VIT_OK) checkpoint_close(&ck);
    CHECK(rewrite_without(path, bad, drop_one_tensor_crc) == VIT_OK, "rewrite without one tensor checksum");
    rc = checkpoint_open(&ck, bad);
    CHECK(rc == VIT_ERR && strstr(vit_error(), "header checksum mismatch"),
          "a tensor checksum entry gone: the header checksum fails: %s", vit_error());
    if (rc == VIT_OK) checkpoint_close(&ck);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/vitc_test_checksum_%d", (int)getpid());
    mkdir(g_root, 0700);
    Model x;
    if (model_make(&x)) {
        CHECK(0, "model: %s", vit_error());
        return check_report("test_checksum");
    }
    char *path = testdir_path(g_root, "ck.safetensors");
    TrainState s = {12, 1, 4, 24, 5, 1.25, 3, 9, 16};
    MetaPair extra[] = {{"flags.optimizer", "adamw"}, {"flags.save_dir", "saves"}};
    CHECK(checkpoint_save(path, &x.cfg, &x.t, x.p, x.m, x.v, OPT_ADAMW, &s, extra, 2) == VIT_OK, "save: %s",
          vit_error());
    MetaPair reserved[] = {{"crc32c.header", "00000000"}};
    CHECK(checkpoint_save(testdir_path(g_root, "r.safetensors"), &x.cfg, &x.t, x.p, x.m, x.v, OPT_ADAMW, &s,
                          reserved, 1) == VIT_ERR, "crc32c.header cannot be passed in as metadata");
    test_round_trip(&x, path);
    size_t n;
    unsigned char *buf = testdir_slurp(path, &n);
    CHECK(buf && n > 1000, "read the checkpoint back");
    if (buf) {
        test_data_flips(path, buf, n);
        test_header_flips(buf, n);
    }
    test_without_checksums(&x, path);
    free(buf);
    model_free(&x);
    testdir_remove(g_root);
    return check_report("test_checksum");
}
