// .npz reader/writer: round trips, hand-built .npy streams of every header version inside
// stored and deflated zips (what numpy writes, without needing Python here), malformed
// files that must fail with a message naming the file, and the atomic write.
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "check.h"
#include "testdir.h"
#include "io/npz.h"
#include "util/status.h"

static char g_dir[64];

static char *path_in(const char *name) { return testdir_path(g_dir, name); }

// An .npy byte stream: magic, version, header length (2 or 4 bytes), the dict padded with
// spaces and a newline to a multiple of 64, then `nbytes` of data.
static unsigned char *make_npy(int major, const char *dict, const void *data, size_t nbytes,
                               size_t *len) {
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hl = total - pre;
    unsigned char *b = malloc(total + nbytes + 1);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    b[7] = 0;
    for (size_t i = 0; i < pre - 8; i++) b[8 + i] = (unsigned char)(hl >> (8 * i));
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', total - pre - dl - 1);
    b[total - 1] = '\n';
    if (nbytes) memcpy(b + total, data, nbytes);
    *len = total + nbytes;
    return b;
}

// Writes a zip of the given members with libzip (ZIP_CM_STORE or ZIP_CM_DEFLATE).
static int make_zip(const char *path, int n, const char **names, unsigned char **bufs,
                    const size_t *lens, int method) {
    int err;
    unlink(path);
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    if (!za) return -1;
    for (int i = 0; i < n; i++) {
        zip_source_t *s = zip_source_buffer(za, bufs[i], lens[i], 0);
        zip_int64_t idx = s ? zip_file_add(za, names[i], s, 0) : -1;
        if (idx < 0 || zip_set_file_compression(za, (zip_uint64_t)idx, method, 0) != 0) {
            zip_discard(za);
            return -1;
        }
    }
    return zip_close(za);
}

// One member `name` holding an .npy of the given version and dict.
static int zip_one(const char *path, const char *name, int major, const char *dict,
                   const void *data, size_t nbytes, int method) {
    size_t len;
    unsigned char *b = make_npy(major, dict, data, nbytes, &len);
    int rc = make_zip(path, 1, &name, &b, &len, method);
    free(b);
    return rc;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    fwrite(p, 1, n, fp);
    fclose(fp);
}

// npz_read must fail with a message naming the file and containing `what`.
static void expect_fail(const char *path, const char *what, const char *label) {
    NpzFile f;
    int rc = npz_read(&f, path);
    CHECK(rc == VIT_ERR, "%s: expected an error", label);
    CHECK(strstr(vit_error(), path) != NULL, "%s: message does not name the file: %s", label,
          vit_error());
    CHECK(strstr(vit_error(), what) != NULL, "%s: message lacks '%s': %s", label, what,
          vit_error());
    CHECK(f.count == 0 && f.arrays == NULL, "%s: output not cleared", label);
    if (rc == VIT_OK) npz_free(&f);
}



static void test_round_trip(void) {
    float v1[5], v4[2 * 3 * 1 * 4], sc = -2.5f;
    for (int i = 0; i < 5; i++) v1[i] = 0.25f * (float)i - 1.0f;
    for (int i = 0; i < 24; i++) v4[i] = (float)i * 1.1f - 7.3f;
    // Values whose bits a text or double round trip would mangle.
    uint32_t specials[4] = {0x7fc12345u /* NaN payload */, 0x80000000u /* -0 */,
                            0x00000001u /* denormal */, 0x7f800000u /* inf */};
    memcpy(v4, specials, sizeof specials);
    int64_t s1[1] = {5}, s4[4] = {2, 3, 1, 4}, s0[2] = {0, 3};
    NpzEntry e[4] = {
        {"Transformer/encoderblock_0/LayerNorm_0/scale", 1, s1, v1},
        {"embedding/kernel", 4, s4, v4},
        {"cls", 0, NULL, &sc},
        {"empty", 2, s0, NULL},
    };
    const char *p = path_in("rt.npz");
    CHECK(npz_write(p, e, 4) == VIT_OK, "write: %s", vit_error());
    CHECK(testdir_count(g_dir, ".tmp.") == 0, "temp file left after a successful write");
    NpzFile f;
    int rc = npz_read(&f, p);
    CHECK(rc == VIT_OK, "read back: %s", vit_error());
    if (rc != VIT_OK) return;
    CHECK(f.count == 4, "count %d", f.count);
    for (int i = 0; i < 4 && i < f.count; i++) {
        const NpzArray *a = npz_find(&f, e[i].name);
        CHECK(a != NULL, "missing %s", e[i].name);
        if (!a) continue;
        CHECK(a->ndim == e[i].ndim, "%s: ndim %d", e[i].name, a->ndim);
        size_t n = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            CHECK(a->shape[d] == e[i].shape[d], "%s: dim %d", e[i].name, d);
            n *= (size_t)e[i].shape[d];
        }
        CHECK(a->count == n, "%s: count %zu", e[i].name, a->count);
        CHECK(n == 0 || memcmp(a->data, e[i].data, n * sizeof(float)) == 0,
              "%s: floats differ", e[i].name);
    }
    CHECK(npz_find(&f, "embedding") == NULL, "found a prefix");
    CHECK(npz_find(&f, "nope") == NULL, "found a missing name");
    npz_free(&f);
    CHECK(f.count == 0 && f.arrays == NULL, "npz_free clears");

    // No arrays at all: the 22-byte empty zip numpy also writes.
    p = path_in("empty.npz");
    CHECK(npz_write(p, NULL, 0) == VIT_OK, "write empty: %s", vit_error());
    rc = npz_read(&f, p);
    CHECK(rc == VIT_OK && f.count == 0, "read empty: %s", vit_error());
    if (rc == VIT_OK) npz_free(&f);
}

// What numpy writes, byte for byte in layout: every header version, stored and deflated,
// plus a dict in another key order and spacing.
static void test_numpy_layouts(void) {
    float x[6] = {1, -2, 3.5f, 4, 5e-3f, 6e7f};
    const char *dicts[2] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
        "{ \"shape\" :( 2 ,3 ) ,'fortran_order':False,\t'descr' : \"<f4\"}",
    };
    for (int major = 1; major <= 3; major++)
        for (int m = 0; m < 2; m++)
            for (int di = 0; di < 2; di++) {
                const char *p = path_in("v.npz");
                int method = m ? ZIP_CM_DEFLATE : ZIP_CM_STORE;
                CHECK(zip_one(p, "layer/w.npy", major, dicts[di], x, sizeof x, method) == 0,
                      "make zip");
                NpzFile f;
                int rc = npz_read(&f, p);
                CHECK(rc == VIT_OK, "v%d.0 %s dict %d: %s", major, m ? "deflated" : "stored", di,
                      vit_error());
                if (rc != VIT_OK) continue;
                const NpzArray *a = npz_find(&f, "layer/w");
                CHECK(a && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3 && a->count == 6 &&
                          memcmp(a->data, x, sizeof x) == 0,
                      "v%d.0 contents", major);
                npz_free(&f);
            }

    // Several members, 1-D "(5,)" and scalar "()" shapes, deflated.
    float five[5] = {1, 2, 3, 4, 5}, one = 42;
    size_t l1, l2;
    unsigned char *b[2] = {
        make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", five, 20, &l1),
        make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &one, 4, &l2)};
    const char *names[2] = {"a/b/c.npy", "s.npy"};
    size_t lens[2] = {l1, l2};
    const char *p = path_in("multi.npz");
    CHECK(make_zip(p, 2, names, b, lens, ZIP_CM_DEFLATE) == 0, "make zip");
    free(b[0]);
    free(b[1]);
    NpzFile f;
    int rc = npz_read(&f, p);
    CHECK(rc == VIT_OK, "multi: %s", vit_error());
    if (rc == VIT_OK) {
        const NpzArray *a = npz_find(&f, "a/b/c"), *s = npz_find(&f, "s");
        CHECK(a && a->ndim == 1 && a->shape[0] == 5 && a->data[4] == 5, "1-D member");
        CHECK(s && s->ndim == 0 && s->count == 1 && s->data[0] == 42, "scalar member");
        npz_free(&f);
    }
}

static void test_bad_files(void) {
    const char *ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    float two[2] = {1, 2};
    char *p;

    p = path_in("garbage.npz");
    write_bytes(p, "this is not a zip archive at all, just text......", 48);
    expect_fail(p, "zip", "garbage");

    p = path_in("missing.npz");
    expect_fail(p, "cannot open", "missing file");

    // A valid archive cut in half loses its central directory.
    {
        float big[256] = {0};
        int64_t sh[1] = {256};
        NpzEntry e = {"w", 1, sh, big};
        p = path_in("half.npz");
        CHECK(npz_write(p, &e, 1) == VIT_OK, "write: %s", vit_error());
        struct stat sb;
        stat(p, &sb);
        CHECK(truncate(p, sb.st_size / 2) == 0, "truncate");
        expect_fail(p, "zip", "truncated zip");
    }

    p = path_in("txt.npz");
    zip_one(p, "notes.txt", 1, ok, two, 8, ZIP_CM_STORE);
    expect_fail(p, ".npy", "member not .npy");

    {
        // Messages stay on one line even when a member name holds a newline.
        p = path_in("newline.npz");
        zip_one(p, "bad\nname.txt", 1, ok, two, 8, ZIP_CM_STORE);
        expect_fail(p, "bad?name.txt", "newline in a name");
        CHECK(strchr(vit_error(), '\n') == NULL, "message spans lines: %s", vit_error());
    }

    {
        // Two members with one name: libzip refuses to write that, so patch the bytes.
        p = path_in("dup.npz");
        size_t l1, l2;
        unsigned char *b[2] = {make_npy(1, ok, two, 8, &l1), make_npy(1, ok, two, 8, &l2)};
        const char *names[2] = {"w/a.npy", "w/b.npy"};
        size_t lens[2] = {l1, l2};
        make_zip(p, 2, names, b, lens, ZIP_CM_STORE);
        free(b[0]);
        free(b[1]);
        FILE *fp = fopen(p, "rb");
        unsigned char buf[4096];
        size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
        if (fp) fclose(fp);
        for (size_t i = 0; i + 7 <= n; i++)
            if (!memcmp(buf + i, "w/b.npy", 7)) buf[i + 2] = 'a';
        write_bytes(p, buf, n);
        expect_fail(p, "w/a: more than one array", "duplicate names");
    }

    {
        p = path_in("magic.npz");
        size_t len;
        unsigned char *b = make_npy(1, ok, two, 8, &len);
        b[1] = 'X';
        const char *name = "w.npy";
        make_zip(p, 1, &name, &b, &len, ZIP_CM_STORE);
        free(b);
        expect_fail(p, "magic", "bad magic");
    }

    p = path_in("ver.npz");
    zip_one(p, "w.npy", 4, ok, two, 8, ZIP_CM_STORE);
    expect_fail(p, "version", "version 4.0");

    p = path_in("fortran.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", two, 8,
            ZIP_CM_STORE);
    expect_fail(p, "fortran", "fortran order");

    const char *dtypes[3] = {"<f8", ">f4", "<i4"};
    for (int i = 0; i < 3; i++) {
        char dict[128], want[64];
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (2,), }",
                 dtypes[i]);
        snprintf(want, sizeof want, "w: dtype '%s' not supported", dtypes[i]);
        p = path_in("dtype.npz");
        zip_one(p, "w.npy", 1, dict, two, 8, ZIP_CM_DEFLATE);
        expect_fail(p, want, dtypes[i]);
    }

    // Shape (4,) but only 3 floats: a truncated .npy.
    p = path_in("short.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", two, 8,
            ZIP_CM_STORE);
    expect_fail(p, "bytes", "truncated data");

    // More data than the shape: also refused.
    p = path_in("long.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", two, 8,
            ZIP_CM_STORE);
    expect_fail(p, "bytes", "extra data");

    p = path_in("noshape.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': False, }", two, 8, ZIP_CM_STORE);
    expect_fail(p, "'shape'", "missing shape");

    p = path_in("huge.npz");
    zip_one(p, "w.npy", 2,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }",
            two, 8, ZIP_CM_STORE);
    expect_fail(p, "too large", "absurd shape");

    // A huge single dimension must not allocate: the member is only 8 bytes.
    p = path_in("huge1.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }",
            two, 8, ZIP_CM_DEFLATE);
    expect_fail(p, "bytes", "huge 1-D shape");

    p = path_in("syntax.npz");
    zip_one(p, "w.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", two, 8,
            ZIP_CM_STORE);
    expect_fail(p, "malformed", "(2) is not a tuple");

    p = path_in("extra_key.npz");
    zip_one(p, "w.npy", 3, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            two, 8, ZIP_CM_STORE);
    expect_fail(p, "malformed", "unknown key");

    {
        // Header length pointing past the end of the member.
        p = path_in("hlen.npz");
        size_t len;
        unsigned char *b = make_npy(1, ok, two, 8, &len);
        b[8] = 0xff;
        b[9] = 0x7f;
        const char *name = "w.npy";
        make_zip(p, 1, &name, &b, &len, ZIP_CM_STORE);
        free(b);
        expect_fail(p, "truncated", "header length");
    }
}

static void test_atomic_write(void) {
    float a = 1, b[2] = {2, 3};
    int64_t s2[1] = {2};
    NpzEntry ea = {"a", 0, NULL, &a};
    NpzEntry eb[2] = {{"b", 1, s2, b}, {"c/d", 0, NULL, &a}};

    // Into a missing folder: an error naming the path, nothing left behind.
    const char *p = path_in("no_such_dir/x.npz");
    CHECK(npz_write(p, &ea, 1) == VIT_ERR, "write into a missing folder succeeded");
    CHECK(strstr(vit_error(), p) != NULL, "message does not name the path: %s", vit_error());
    CHECK(access(path_in("no_such_dir"), F_OK) != 0, "folder created");
    CHECK(testdir_count(g_dir, ".tmp.") == 0, "temp file left");

    // Overwriting replaces the old contents.
    p = path_in("over.npz");
    CHECK(npz_write(p, &ea, 1) == VIT_OK, "first write: %s", vit_error());
    CHECK(npz_write(p, eb, 2) == VIT_OK, "overwrite: %s", vit_error());
    NpzFile f;
    int rc = npz_read(&f, p);
    CHECK(rc == VIT_OK && f.count == 2 && npz_find(&f, "a") == NULL && npz_find(&f, "c/d") &&
              npz_find(&f, "b") && npz_find(&f, "b")->data[1] == 3,
          "overwritten contents: %s", vit_error());
    if (rc == VIT_OK) npz_free(&f);

    // Failing writes leave the existing file as it was.
    NpzEntry dup[2] = {{"b", 1, s2, b}, {"b", 1, s2, b}};
    CHECK(npz_write(p, dup, 2) == VIT_ERR && strstr(vit_error(), p), "duplicate names: %s",
          vit_error());
    int64_t bad9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, neg[1] = {-1};
    NpzEntry e9 = {"x", 9, bad9, b}, en = {"x", 1, neg, b}, enull = {"x", 1, s2, NULL};
    CHECK(npz_write(p, &e9, 1) == VIT_ERR, "9 dimensions accepted");
    CHECK(npz_write(p, &en, 1) == VIT_ERR, "negative dimension accepted");
    CHECK(npz_write(p, &enull, 1) == VIT_ERR, "NULL data accepted");
    rc = npz_read(&f, p);
    CHECK(rc == VIT_OK && f.count == 2 && npz_find(&f, "c/d"), "old file damaged: %s",
          vit_error());
    if (rc == VIT_OK) npz_free(&f);
    CHECK(testdir_count(g_dir, ".tmp.") == 0, "temp file left after failed writes");

    // The rename itself fails (a folder is in the way): the temp file is removed.
    const char *d = path_in("a_folder");
    mkdir(d, 0700);
    CHECK(npz_write(d, &ea, 1) == VIT_ERR && strstr(vit_error(), d), "rename over a folder: %s",
          vit_error());
    CHECK(testdir_count(g_dir, ".tmp.") == 0, "temp file left after a failed rename");
}

int main(void) {
    strcpy(g_dir, "/tmp/test_npz_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_numpy_layouts();
    test_bad_files();
    test_atomic_write();
    testdir_remove(g_dir);
    return check_report("npz");
}
