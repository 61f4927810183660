// IDX loader: synthetic plain and gzipped files in a temporary folder, every malformation
// the loader promises to catch, and the real Fashion-MNIST test split when it is installed.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "testdir.h"
#include "data/idx.h"
#include "util/status.h"

static char g_root[64];
static int g_dirs;

// A fresh sub-folder per case so files of one case never satisfy another.
static const char *new_dir(char *buf, size_t n) {
    snprintf(buf, n, "%s/case%d", g_root, g_dirs++);
    mkdir(buf, 0700);
    return buf;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void write_bytes(const char *path, int gz, const void *a, size_t na, const void *b,
                        size_t nb) {
    if (gz) {
        gzFile g = gzopen(path, "wb");
        if (!g) { perror(path); exit(2); }
        if (na) gzwrite(g, a, (unsigned)na);
        if (nb) gzwrite(g, b, (unsigned)nb);
        gzclose(g);
    } else {
        FILE *f = fopen(path, "wb");
        if (!f) { perror(path); exit(2); }
        if (na) fwrite(a, 1, na, f);
        if (nb) fwrite(b, 1, nb, f);
        fclose(f);
    }
}

// Image file: header for `count` images of rows x cols, then `nbytes` bytes of `data`.
static void write_images(const char *dir, const char *prefix, int gz, uint32_t magic,
                         uint32_t count, uint32_t rows, uint32_t cols, const uint8_t *data,
                         size_t nbytes) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte%s", dir, prefix, gz ? ".gz" : "");
    unsigned char h[16];
    put_be32(h, magic);
    put_be32(h + 4, count);
    put_be32(h + 8, rows);
    put_be32(h + 12, cols);
    write_bytes(path, gz, h, sizeof h, data, nbytes);
}

static void write_labels(const char *dir, const char *prefix, int gz, uint32_t magic,
                         uint32_t count, const uint8_t *data, size_t nbytes) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte%s", dir, prefix, gz ? ".gz" : "");
    unsigned char h[8];
    put_be32(h, magic);
    put_be32(h + 4, count);
    write_bytes(path, gz, h, sizeof h, data, nbytes);
}

static uint8_t g_pix[4096 * 16], g_lab[4096];

static void fill(void) {
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof g_pix; i++) {
        x = x * 1103515245u + 12345u;
        g_pix[i] = (uint8_t)(x >> 16);
    }
    for (size_t i = 0; i < sizeof g_lab; i++) g_lab[i] = (uint8_t)(i % 10);
}

static int mentions(const char *needle) { return strstr(vit_error(), needle) != NULL; }

static int is_empty(const IdxSplit *s) {
    return !s->images && !s->labels && !s->count && !s->rows && !s->cols;
}

// Loads dir/prefix expecting failure; checks the message mentions `needle` (and `needle2`).
static void expect_fail(const char *dir, const char *prefix, const char *needle,
                        const char *needle2, const char *what) {
    IdxSplit s;
    memset(&s, 0xAB, sizeof s);  // garbage in: must come back empty
    int rc = idx_load_split(&s, dir, prefix);
    CHECK(rc == VIT_ERR, "%s: expected failure", what);
    if (getenv("VERBOSE")) printf("  %s -> %s\n", what, vit_error());
    CHECK(is_empty(&s), "%s: split left empty", what);
    CHECK(mentions(needle), "%s: message should mention '%s': %s", what, needle, vit_error());
    if (needle2)
        CHECK(mentions(needle2), "%s: message should mention '%s': %s", what, needle2,
              vit_error());
    if (rc == VIT_OK) idx_free(&s);
}

static void test_good(void) {
    char d[256], p[512];
    // Plain train split: 3 images of 2x4.
    new_dir(d, sizeof d);
    CHECK(!idx_dir_looks_like_idx(d), "empty dir does not look like IDX");
    write_images(d, "train", 0, 0x803, 3, 2, 4, g_pix, 24);
    write_labels(d, "train", 0, 0x801, 3, g_lab + 7, 3);
    CHECK(idx_dir_looks_like_idx(d), "plain train images make an IDX dir");
    IdxSplit s;
    int rc = idx_load_split(&s, d, "train");
    CHECK(rc == VIT_OK, "plain load: %s", vit_error());
    if (rc == VIT_OK) {
        CHECK(s.count == 3 && s.rows == 2 && s.cols == 4, "plain dims %d %dx%d", s.count, s.rows,
              s.cols);
        CHECK(memcmp(s.images, g_pix, 24) == 0, "plain pixels");
        CHECK(memcmp(s.labels, g_lab + 7, 3) == 0, "plain labels");
        idx_free(&s);
        CHECK(is_empty(&s), "idx_free empties");
    }
    idx_free(&s);  // twice is harmless

    // Gzipped t10k split: 50 images of 3x5 (non-square to catch a rows/cols swap).
    new_dir(d, sizeof d);
    write_images(d, "t10k", 1, 0x803, 50, 3, 5, g_pix + 100, 750);
    write_labels(d, "t10k", 1, 0x801, 50, g_lab, 50);
    CHECK(!idx_dir_looks_like_idx(d), "t10k alone is not a training dir");
    rc = idx_load_split(&s, d, "t10k");
    CHECK(rc == VIT_OK, "gz load: %s", vit_error());
    if (rc == VIT_OK) {
        CHECK(s.count == 50 && s.rows == 3 && s.cols == 5, "gz dims %d %dx%d", s.count, s.rows,
              s.cols);
        CHECK(memcmp(s.images, g_pix + 100, 750) == 0, "gz pixels");
        CHECK(memcmp(s.labels, g_lab, 50) == 0, "gz labels");
        idx_free(&s);
    }

    // Mixed: plain images with gzipped labels; large enough to need buffer growth (>1 MiB).
    new_dir(d, sizeof d);
    static uint8_t big[2000 * 28 * 28];
    for (size_t i = 0; i < sizeof big; i++) big[i] = g_pix[i % sizeof g_pix] ^ (uint8_t)(i >> 12);
    write_images(d, "train", 0, 0x803, 2000, 28, 28, big, sizeof big);
    uint8_t lab[2000];
    for (int i = 0; i < 2000; i++) lab[i] = (uint8_t)((i * 7) % 10);
    write_labels(d, "train", 1, 0x801, 2000, lab, sizeof lab);
    rc = idx_load_split(&s, d, "train");
    CHECK(rc == VIT_OK, "mixed load: %s", vit_error());
    if (rc == VIT_OK) {
        CHECK(s.count == 2000 && s.rows == 28 && s.cols == 28, "mixed dims");
        CHECK(memcmp(s.images, big, sizeof big) == 0, "mixed pixels (grown buffer)");
        CHECK(memcmp(s.labels, lab, sizeof lab) == 0, "mixed labels");
        idx_free(&s);
    }

    // Gzipped .gz images compress to >1 MiB of output too: same data through zlib.
    new_dir(d, sizeof d);
    write_images(d, "train", 1, 0x803, 2000, 28, 28, big, sizeof big);
    write_labels(d, "train", 0, 0x801, 2000, lab, sizeof lab);
    CHECK(idx_dir_looks_like_idx(d), "gz train images make an IDX dir");
    rc = idx_load_split(&s, d, "train");
    CHECK(rc == VIT_OK && s.count == 2000 && memcmp(s.images, big, sizeof big) == 0,
          "big gz load: %s", vit_error());
    if (rc == VIT_OK) idx_free(&s);

    // Plain wins over .gz when both exist: make the .gz unusable to prove it is not read.
    new_dir(d, sizeof d);
    write_images(d, "train", 0, 0x803, 1, 1, 1, g_pix, 1);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", d);
    write_bytes(p, 0, "garbage", 7, NULL, 0);
    rc = idx_load_split(&s, d, "train");
    CHECK(rc == VIT_OK && s.count == 1 && s.images[0] == g_pix[0], "plain preferred: %s",
          vit_error());
    if (rc == VIT_OK) idx_free(&s);

    // Largest legal side.
    new_dir(d, sizeof d);
    static uint8_t wide[4096 * 2];
    write_images(d, "train", 1, 0x803, 2, 1, 4096, wide, sizeof wide);
    write_labels(d, "train", 1, 0x801, 2, g_lab, 2);
    rc = idx_load_split(&s, d, "train");
    CHECK(rc == VIT_OK && s.cols == 4096 && s.rows == 1, "1x4096 images: %s", vit_error());
    if (rc == VIT_OK) idx_free(&s);
}

static void test_missing(void) {
    char d[256], p[512];
    snprintf(d, sizeof d, "%s/does-not-exist", g_root);
    expect_fail(d, "train", d, NULL, "missing dir");
    CHECK(!idx_dir_looks_like_idx(d), "missing dir is not IDX");
    CHECK(!idx_dir_looks_like_idx(NULL) && !idx_dir_looks_like_idx(""), "NULL/empty dir");

    new_dir(d, sizeof d);
    expect_fail(d, "train", d, "no train-images-idx3-ubyte[.gz] here", "empty dir");
    write_images(d, "train", 0, 0x803, 1, 1, 1, g_pix, 1);
    expect_fail(d, "train", d, "no train-labels-idx1-ubyte[.gz] here", "labels missing");
    expect_fail(d, "t10k", d, "no t10k-images-idx3-ubyte[.gz] here", "other prefix missing");

    // A regular file where the directory should be.
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", d);
    expect_fail(p, "train", p, "not a directory", "file as dir");

    // A directory where the image file should be is not a file.
    new_dir(d, sizeof d);
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", d);
    mkdir(p, 0700);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    expect_fail(d, "train", "no train-images-idx3-ubyte[.gz] here", NULL, "dir as file");

    IdxSplit s;
    CHECK(idx_load_split(&s, NULL, "train") == VIT_ERR && is_empty(&s), "NULL dir");
    CHECK(idx_load_split(&s, g_root, NULL) == VIT_ERR && is_empty(&s), "NULL prefix");
    CHECK(idx_load_split(NULL, g_root, "train") == VIT_ERR, "NULL split");
}

static void path_of(char *buf, size_t n, const char *dir, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
}

static void test_bad_headers(void) {
    char d[256], p[512], q[512];
    // Images file carrying the label magic.
    new_dir(d, sizeof d);
    write_images(d, "train", 0, 0x801, 1, 1, 1, g_pix, 1);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    path_of(p, sizeof p, d, "train-images-idx3-ubyte");
    expect_fail(d, "train", p, "bad magic 0x00000801, expected 0x00000803 (an IDX image file)",
                "image magic");

    // Labels file carrying the image magic, gzipped.
    new_dir(d, sizeof d);
    write_images(d, "train", 0, 0x803, 1, 1, 1, g_pix, 1);
    write_labels(d, "train", 1, 0x803, 1, g_lab, 1);
    path_of(p, sizeof p, d, "train-labels-idx1-ubyte.gz");
    expect_fail(d, "train", p, "bad magic 0x00000803, expected 0x00000801", "label magic");

    // Little-endian magic: the classic wrong-byte-order writer.
    new_dir(d, sizeof d);
    write_images(d, "train", 0, 0x03080000, 1, 1, 1, g_pix, 1);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    expect_fail(d, "train", "bad magic 0x03080000", NULL, "byte-swapped magic");

    // Bad dimensions.
    const struct { uint32_t count, rows, cols; const char *needle; } dims[] = {
        {0, 28, 28, "bad image count 0"},
        {1, 0, 28, "bad image size 0x28"},
        {1, 28, 0, "bad image size 28x0"},
        {1, 4097, 1, "bad image size 4097x1"},
        {1, 1, 5000, "bad image size 1x5000"},
        {0x80000000u, 1, 1, "bad image count 2147483648"},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        new_dir(d, sizeof d);
        write_images(d, "train", 0, 0x803, dims[i].count, dims[i].rows, dims[i].cols, g_pix, 16);
        write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
        path_of(p, sizeof p, d, "train-images-idx3-ubyte");
        expect_fail(d, "train", p, dims[i].needle, "bad dims");
    }
    new_dir(d, sizeof d);
    write_images(d, "train", 0, 0x803, 1, 1, 1, g_pix, 1);
    write_labels(d, "train", 0, 0x801, 0, g_lab, 0);
    expect_fail(d, "train", "bad label count 0", NULL, "zero labels");

    // Empty and short files.
    new_dir(d, sizeof d);
    path_of(p, sizeof p, d, "train-images-idx3-ubyte");
    write_bytes(p, 0, NULL, 0, NULL, 0);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    expect_fail(d, "train", p, "truncated header", "empty image file");
    write_bytes(p, 0, "\0\0\x08\x03\0\0", 6, NULL, 0);
    expect_fail(d, "train", p, "truncated header (6 of 16 bytes)", "short image header");
    write_images(d, "train", 0, 0x803, 1, 1, 1, g_pix, 1);
    path_of(q, sizeof q, d, "train-labels-idx1-ubyte");
    write_bytes(q, 0, "\0\0\x08\x01", 4, NULL, 0);
    expect_fail(d, "train", q, "truncated header (4 of 8 bytes)", "short label header");
}

static void test_bad_payloads(void) {
    char d[256], p[512], q[512];
    for (int gz = 0; gz <= 1; gz++) {
        const char *sfx = gz ? ".gz" : "";
        // 4 images of 2x4 announced, 2.5 present.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 4, 2, 4, g_pix, 20);
        write_labels(d, "train", gz, 0x801, 4, g_lab, 4);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", d, sfx);
        expect_fail(d, "train", p, "truncated: header announces 4 images of 2x4, file ends after 2 of them",
                    "truncated images");

        // Nothing after the header.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 60000, 28, 28, g_pix, 0);
        write_labels(d, "train", gz, 0x801, 1, g_lab, 1);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", d, sfx);
        expect_fail(d, "train", p,
                    "truncated: header announces 60000 images of 28x28, file ends after 0 of them",
                    "header only");

        // A header announcing ~2^55 bytes over a tiny file must not try to allocate it.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 0x7fffffffu, 4096, 4096, g_pix, 100);
        write_labels(d, "train", gz, 0x801, 1, g_lab, 1);
        expect_fail(d, "train", "truncated: header announces 2147483647 images of 4096x4096",
                    NULL, "huge announced size");

        // Trailing garbage after the images.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 2, 2, 4, g_pix, 17);
        write_labels(d, "train", gz, 0x801, 2, g_lab, 2);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", d, sfx);
        expect_fail(d, "train", p, "trailing data", "trailing image bytes");

        // Labels: truncated, then trailing.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 5, 1, 1, g_pix, 5);
        write_labels(d, "train", gz, 0x801, 5, g_lab, 3);
        snprintf(q, sizeof q, "%s/train-labels-idx1-ubyte%s", d, sfx);
        expect_fail(d, "train", q, "truncated: header announces 5 labels, file ends after 3 of them",
                    "truncated labels");
        write_labels(d, "train", gz, 0x801, 5, g_lab, 6);
        expect_fail(d, "train", q, "trailing data", "trailing label bytes");

        // Count mismatch between the two files.
        new_dir(d, sizeof d);
        write_images(d, "train", gz, 0x803, 3, 2, 2, g_pix, 12);
        write_labels(d, "train", gz, 0x801, 2, g_lab, 2);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", d, sfx);
        snprintf(q, sizeof q, "%s/train-labels-idx1-ubyte%s", d, sfx);
        char want[1200];
        snprintf(want, sizeof want, "%s holds 3 images but %s holds 2 labels", p, q);
        expect_fail(d, "train", want, NULL, "count mismatch");
    }
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void test_corrupt_gzip(void) {
    char d[256], p[512];
    const size_t n = 200 * 28 * 28;
    static uint8_t data[200 * 28 * 28];
    // Compressible but not trivial, so the stream has real Huffman blocks to damage.
    for (size_t i = 0; i < n; i++) data[i] = (uint8_t)((g_pix[i % 997] & 0x0f) + (i / 784) % 7);
    uint8_t lab[200] = {0};

    // Flip bytes at several places in the middle of the deflate stream.
    for (int trial = 0; trial < 6; trial++) {
        new_dir(d, sizeof d);
        write_images(d, "train", 1, 0x803, 200, 28, 28, data, n);
        write_labels(d, "train", 0, 0x801, 200, lab, 200);
        path_of(p, sizeof p, d, "train-images-idx3-ubyte.gz");
        long sz = file_size(p);
        FILE *f = fopen(p, "r+b");
        if (!f) continue;
        long at = 20 + (sz - 40) * (trial + 1) / 8;  // past the gzip header, before the trailer
        unsigned char b[4];
        fseek(f, at, SEEK_SET);
        size_t got = fread(b, 1, sizeof b, f);
        for (size_t i = 0; i < got; i++) b[i] ^= 0x5a;
        fseek(f, at, SEEK_SET);
        fwrite(b, 1, got, f);
        fclose(f);
        expect_fail(d, "train", p, NULL, "corrupt gzip");
    }

    // The CRC trailer alone damaged: data decodes fine but the check must still fail.
    new_dir(d, sizeof d);
    write_images(d, "train", 1, 0x803, 200, 28, 28, data, n);
    write_labels(d, "train", 0, 0x801, 200, lab, 200);
    path_of(p, sizeof p, d, "train-images-idx3-ubyte.gz");
    {
        long sz = file_size(p);
        FILE *f = fopen(p, "r+b");
        if (f) {
            fseek(f, sz - 8, SEEK_SET);  // CRC32 of the trailer
            int c = fgetc(f);
            fseek(f, sz - 8, SEEK_SET);
            fputc(c ^ 0xff, f);
            fclose(f);
        }
    }
    expect_fail(d, "train", p, NULL, "bad gzip CRC");

    // Truncated gzip streams: cut at several points.
    for (int cut = 1; cut <= 3; cut++) {
        new_dir(d, sizeof d);
        write_images(d, "train", 1, 0x803, 200, 28, 28, data, n);
        write_labels(d, "train", 0, 0x801, 200, lab, 200);
        path_of(p, sizeof p, d, "train-images-idx3-ubyte.gz");
        long sz = file_size(p);
        CHECK(truncate(p, sz * cut / 4) == 0, "truncate");
        expect_fail(d, "train", p, NULL, "truncated gzip");
    }
    // Only the trailer missing.
    new_dir(d, sizeof d);
    write_images(d, "train", 1, 0x803, 200, 28, 28, data, n);
    write_labels(d, "train", 0, 0x801, 200, lab, 200);
    path_of(p, sizeof p, d, "train-images-idx3-ubyte.gz");
    CHECK(truncate(p, file_size(p) - 8) == 0, "truncate");
    expect_fail(d, "train", p, NULL, "gzip without trailer");

    // Gzip magic followed by garbage.
    new_dir(d, sizeof d);
    path_of(p, sizeof p, d, "train-images-idx3-ubyte.gz");
    write_bytes(p, 0, "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff\xff\xff", 16,
                NULL, 0);
    write_labels(d, "train", 0, 0x801, 1, g_lab, 1);
    expect_fail(d, "train", p, NULL, "garbage gzip");
}

static void test_real(void) {
    const char *dir = "/usr/share/datasets/fashion-mnist";
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("(no %s: real-data check skipped)\n", dir);
        return;
    }
    CHECK(idx_dir_looks_like_idx(dir), "real dir looks like IDX");
    IdxSplit s;
    int rc = idx_load_split(&s, dir, "t10k");
    CHECK(rc == VIT_OK, "real t10k: %s", vit_error());
    if (rc != VIT_OK) return;
    CHECK(s.count == 10000 && s.rows == 28 && s.cols == 28, "real dims %d %dx%d", s.count,
          s.rows, s.cols);
    int bad = 0, hist[10] = {0};
    for (int i = 0; i < s.count; i++) {
        if (s.labels[i] >= 10) bad++;
        else hist[s.labels[i]]++;
    }
    CHECK(bad == 0, "real labels < 10 (%d bad)", bad);
    CHECK(hist[0] == 1000 && hist[9] == 1000, "t10k is balanced: %d %d", hist[0], hist[9]);
    long sum = 0;
    for (long i = 0; i < 784L * s.count; i++) sum += s.images[i];
    CHECK(sum > 0, "real pixels are not all zero");
    idx_free(&s);
}


int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/vitc-idx-XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 2;
    }
    fill();
    test_good();
    test_missing();
    test_bad_headers();
    test_bad_payloads();
    test_corrupt_gzip();
    test_real();
    testdir_remove(g_root);
    return check_report("idx");
}
