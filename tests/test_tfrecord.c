// TFRecord framing and tf.train.Example records: CRC-32C vectors (hardware and table paths),
// the committed fixture written by an independent writer (the `tfrecord` pip package, see
// tools/make_tfrecord_fixtures.py), write/read round trips, random access, and bad input of
// every kind, which must come back as VIT_ERR naming the file and the record's byte.
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "testdir.h"
#include "data/example.h"
#include "data/tfrecord.h"
#include "util/crc32c.h"
#include "util/status.h"

static const char *g_fixture = "tests/fixtures/records.tfrecord";
static const char *g_fixture_json = "tests/fixtures/records.json";
static char g_dir[64];

static char *path_in(const char *name) { return testdir_path(g_dir, name); }

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}



// Counts the records of a file; the return of the last tfr_next (0 or VIT_ERR) in *last.
static int count_records(const char *path, int *last) {
    TfrReader r;
    *last = VIT_ERR;
    if (tfr_open(&r, path) != VIT_OK) return -1;
    const uint8_t *d;
    size_t n;
    uint64_t off;
    int count = 0, rc;
    while ((rc = tfr_next(&r, &d, &n, &off)) == 1) count++;
    *last = rc;
    tfr_close(&r);
    return count;
}

// ---- CRC-32C ----

static void test_crc(void) {
    const char *s = "123456789";
    CHECK(crc32c(0, s, 9) == 0xE3069283u, "crc32c(123456789) = %08x", crc32c(0, s, 9));
    CHECK(crc32c_sw(0, s, 9) == 0xE3069283u, "table crc32c(123456789) = %08x", crc32c_sw(0, s, 9));
    CHECK(crc32c(0, "", 0) == 0 && crc32c(0x1234u, "", 0) == 0x1234u, "empty input changes the crc");
    // RFC 3720 (iSCSI) B.4 vectors.
    uint8_t z[32], ones[32], up[32], down[32];
    for (int i = 0; i < 32; i++) {
        z[i] = 0;
        ones[i] = 0xff;
        up[i] = (uint8_t)i;
        down[i] = (uint8_t)(31 - i);
    }
    CHECK(crc32c(0, z, 32) == 0x8A9136AAu, "zeros: %08x", crc32c(0, z, 32));
    CHECK(crc32c(0, ones, 32) == 0x62A8AB43u, "ones: %08x", crc32c(0, ones, 32));
    CHECK(crc32c(0, up, 32) == 0x46DD794Eu, "ascending: %08x", crc32c(0, up, 32));
    CHECK(crc32c(0, down, 32) == 0x113FDB5Cu, "descending: %08x", crc32c(0, down, 32));
    CHECK(crc32c_sw(0, down, 32) == 0x113FDB5Cu, "table descending: %08x", crc32c_sw(0, down, 32));

    // Hardware and table paths agree at every alignment and length, and calls chain.
    enum { N = 1000 };
    uint8_t *buf = malloc(N + 8);
    uint32_t x = 12345;
    for (int i = 0; i < N + 8; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    int agree = 1, chain = 1;
    for (int a = 0; a < 8; a++)
        for (int n = 0; n <= N; n += (n < 40 ? 1 : 37)) {
            uint32_t h = crc32c(0, buf + a, (size_t)n), t = crc32c_sw(0, buf + a, (size_t)n);
            if (h != t) agree = 0;
            int k = n / 3;
            if (crc32c(crc32c(0, buf + a, (size_t)k), buf + a + k, (size_t)(n - k)) != h) chain = 0;
            if (crc32c_sw(crc32c_sw(0, buf + a, (size_t)k), buf + a + k, (size_t)(n - k)) != h) chain = 0;
        }
    CHECK(agree, "hardware and table CRC-32C differ");
    CHECK(chain, "crc32c does not chain over split buffers");
    free(buf);
    // The mask TFRecord applies: rotate right 15, add 0xa282ead8 (value from TensorFlow's code).
    uint32_t c = crc32c(0, s, 9);
    CHECK(crc32c_masked(s, 9) == ((c >> 15 | c << 17) + 0xa282ead8u), "masked crc");
}

// ---- the committed fixture ----

typedef struct {
    uint64_t offset, length, encoded_len, crc;
    int64_t label;
    char head[40];
} FixtureRow;

// Finds "key": in a line of records.json and reads the number or string after it.
static const char *json_field(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    return p ? p + strlen(pat) : NULL;
}

static int load_rows(FixtureRow *rows, int maxn) {
    FILE *f = fopen(g_fixture_json, "r");
    if (!f) return -1;
    char line[1024];
    int n = 0;
    while (n < maxn && fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"offset\"")) continue;
        const char *o = json_field(line, "offset"), *l = json_field(line, "length"),
                   *lab = json_field(line, "label"), *el = json_field(line, "encoded_len"),
                   *c = json_field(line, "encoded_crc32c"), *h = json_field(line, "encoded_head");
        if (!o || !l || !lab || !el || !c || !h) break;
        FixtureRow *r = &rows[n++];
        r->offset = strtoull(o, NULL, 10);
        r->length = strtoull(l, NULL, 10);
        r->label = strtoll(lab, NULL, 10);
        r->encoded_len = strtoull(el, NULL, 10);
        r->crc = strtoull(c, NULL, 10);
        if (sscanf(h, "\"%39[0-9a-f]\"", r->head) != 1) r->head[0] = 0;
    }
    fclose(f);
    return n;
}

static int matches_row(const ExampleImage *im, const FixtureRow *row) {
    char hex[40] = {0};
    size_t k = im->encoded_len < 16 ? im->encoded_len : 16;
    for (size_t i = 0; i < k; i++) snprintf(hex + 2 * i, 3, "%02x", im->encoded[i]);
    return im->label == row->label && im->encoded_len == row->encoded_len &&
           crc32c(0, im->encoded, im->encoded_len) == row->crc && strcmp(hex, row->head) == 0;
}

static void test_fixture(void) {
    FixtureRow rows[16];
    int nrows = load_rows(rows, 16);
    CHECK(nrows == 5, "%s: %d rows (run tools/make_tfrecord_fixtures.py tests/fixtures)",
          g_fixture_json, nrows);
    if (nrows <= 0) return;

    TfrReader r;
    CHECK(tfr_open(&r, g_fixture) == VIT_OK, "open fixture: %s", vit_error());
    const uint8_t *d;
    size_t n;
    uint64_t off;
    int i = 0, rc;
    while ((rc = tfr_next(&r, &d, &n, &off)) == 1) {
        if (i >= nrows) break;
        char where[128];
        snprintf(where, sizeof where, "%s: record %d", g_fixture, i);
        CHECK(off == rows[i].offset && n == rows[i].length, "record %d at %llu len %zu", i,
              (unsigned long long)off, n);
        ExampleImage im;
        CHECK(example_parse_image(d, n, &im, where) == VIT_OK, "parse: %s", vit_error());
        CHECK(matches_row(&im, &rows[i]), "record %d: label %lld, %zu bytes differ from the JSON", i,
              (long long)im.label, im.encoded_len);
        // Zero-copy: the image bytes lie inside the record buffer.
        CHECK(im.encoded > d && im.encoded + im.encoded_len <= d + n, "encoded not inside the record");
        i++;
    }
    CHECK(rc == 0 && i == nrows, "fixture: %d records, last rc %d (%s)", i, rc, vit_error());
    CHECK(tfr_next(&r, &d, &n, &off) == 0, "EOF is not sticky");
    tfr_close(&r);

    // Random access at the recorded offsets, in reverse order, with one growing buffer.
    int fd = open(g_fixture, O_RDONLY);
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    for (int k = nrows - 1; k >= 0; k--) {
        int ok = tfr_read_at(fd, g_fixture, rows[k].offset, &buf, &cap, &len) == VIT_OK;
        CHECK(ok && len == rows[k].length, "read_at %llu: %s", (unsigned long long)rows[k].offset,
              vit_error());
        ExampleImage im;
        CHECK(ok && example_parse_image(buf, len, &im, "read_at") == VIT_OK && matches_row(&im, &rows[k]),
              "read_at record %d: %s", k, vit_error());
    }
    // An offset inside a record: its "header" fails the length CRC.
    CHECK(tfr_read_at(fd, g_fixture, rows[1].offset + 3, &buf, &cap, &len) == VIT_ERR &&
              has(vit_error(), g_fixture) && has(vit_error(), "length CRC"),
          "read_at mid-record: %s", vit_error());
    struct stat st;
    fstat(fd, &st);
    CHECK(tfr_read_at(fd, g_fixture, (uint64_t)st.st_size, &buf, &cap, &len) == VIT_ERR &&
              has(vit_error(), "no record"),
          "read_at at EOF: %s", vit_error());
    CHECK(tfr_read_at(fd, g_fixture, UINT64_MAX - 5, &buf, &cap, &len) == VIT_ERR,
          "read_at huge offset accepted");
    free(buf);
    close(fd);
}

// ---- round trip through example_build_image, the writer and both readers ----

static void test_round_trip(void) {
    enum { N = 12 };
    const char *p = path_in("rt.tfrecord");
    uint8_t *img[N];
    size_t img_len[N];
    int64_t labels[N];
    uint64_t offsets[N];
    TfrWriter *w = tfr_writer_open(p);
    CHECK(w != NULL, "writer open: %s", vit_error());
    if (!w) return;
    for (int i = 0; i < N; i++) {
        // Sizes from empty to 3 MB (buffer growth), labels including negative and large.
        img_len[i] = i == 0 ? 0 : i == N - 1 ? (3u << 20) : (size_t)(i * 997);
        img[i] = malloc(img_len[i] + 1);
        for (size_t k = 0; k < img_len[i]; k++) img[i][k] = (uint8_t)(k * 31 + (size_t)i);
        labels[i] = i == 3 ? -7 : i == 4 ? INT64_MAX : i == 5 ? INT64_MIN : i * 83 + 1;
        char fname[32];
        snprintf(fname, sizeof fname, "img_%d.JPEG", i);
        ExampleFields f = {img[i], img_len[i], labels[i], "n01440764", i % 2 ? "tench, Tinca tinca" : "",
                           fname, 100 + i, 200 + i, 3};
        uint8_t *rec = NULL;
        size_t rec_len = 0;
        CHECK(example_build_image(&f, &rec, &rec_len) == VIT_OK, "build %d: %s", i, vit_error());
        if (i == 1) {
            // Every feature of the preprocessing script is there, with the fixed strings.
            const char *keys[] = {"image/encoded", "image/class/label", "image/class/synset",
                                  "image/class/text", "image/filename", "image/format",
                                  "image/colorspace", "image/channels", "image/height",
                                  "image/width", "JPEG", "RGB", "n01440764", "img_1.JPEG"};
            for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
                CHECK(memmem(rec, rec_len, keys[k], strlen(keys[k])) != NULL, "built record lacks %s", keys[k]);
        }
        ExampleImage im;
        CHECK(example_parse_image(rec, rec_len, &im, "built") == VIT_OK && im.label == labels[i] &&
                  im.encoded_len == img_len[i] &&
                  (img_len[i] == 0 || memcmp(im.encoded, img[i], img_len[i]) == 0),
              "parse built %d: %s", i, vit_error());
        CHECK(tfr_write(w, rec, rec_len) == VIT_OK, "write %d: %s", i, vit_error());
        free(rec);
    }
    CHECK(tfr_write(w, "", 0) == VIT_OK, "write empty record: %s", vit_error());
    CHECK(testdir_count(g_dir, "") == 1, "the temp file is missing or the target appeared early");
    CHECK(access(p, F_OK) != 0, "target exists before close");
    CHECK(tfr_writer_close(w) == VIT_OK, "close: %s", vit_error());
    CHECK(testdir_count(g_dir, "") == 1 && access(p, F_OK) == 0, "after close: temp left or no file");

    TfrReader r;
    CHECK(tfr_open(&r, p) == VIT_OK, "open: %s", vit_error());
    const uint8_t *d;
    size_t n;
    uint64_t off, expect_off = 0;
    int i = 0, rc, ok = 1;
    while ((rc = tfr_next(&r, &d, &n, &off)) == 1 && i < N) {
        ExampleImage im;
        offsets[i] = off;
        if (off != expect_off || example_parse_image(d, n, &im, "rt") != VIT_OK || im.label != labels[i] ||
            im.encoded_len != img_len[i] || (img_len[i] && memcmp(im.encoded, img[i], img_len[i])))
            ok = 0;
        expect_off = off + n + 16;
        i++;
    }
    CHECK(ok && i == N, "round trip: %d records, %s", i, vit_error());
    CHECK(rc == 1 && n == 0 && off == expect_off, "the empty record: rc %d n %zu", rc, n);
    CHECK(tfr_next(&r, &d, &n, &off) == 0, "no clean EOF after the last record: %s", vit_error());
    tfr_close(&r);

    int fd = open(p, O_RDONLY);
    uint8_t *buf = NULL;
    size_t cap = 0, len;
    ok = 1;
    for (int k = N - 1; k >= 0; k -= 2) {
        ExampleImage im;
        if (tfr_read_at(fd, p, offsets[k], &buf, &cap, &len) != VIT_OK ||
            example_parse_image(buf, len, &im, "rt") != VIT_OK || im.label != labels[k] ||
            im.encoded_len != img_len[k] || (img_len[k] && memcmp(im.encoded, img[k], img_len[k])))
            ok = 0;
    }
    CHECK(ok, "random access round trip: %s", vit_error());
    free(buf);
    close(fd);
    for (int k = 0; k < N; k++) free(img[k]);
    unlink(p);

    // Abort leaves nothing; a folder that does not exist fails at open with the path.
    w = tfr_writer_open(path_in("aborted.tfrecord"));
    CHECK(w && tfr_write(w, "abc", 3) == VIT_OK, "writer: %s", vit_error());
    tfr_writer_abort(w);
    CHECK(testdir_count(g_dir, "") == 0, "abort left a file");
    w = tfr_writer_open("/nonexistent_dir_vitc/x.tfrecord");
    CHECK(w == NULL && has(vit_error(), "/nonexistent_dir_vitc/x.tfrecord"), "open in a missing folder: %s",
          vit_error());
    CHECK(tfr_writer_close(NULL) == VIT_ERR, "close(NULL)");
    tfr_writer_abort(NULL);
}

// ---- broken files ----

// Expects the file to fail at record index `bad` (earlier records fine) with a message that
// names the file, the record's byte and `what`.
static void expect_bad_file(const char *path, int bad, uint64_t at, const char *what, const char *label) {
    int last;
    int n = count_records(path, &last);
    char byte[48];
    snprintf(byte, sizeof byte, "record at byte %llu", (unsigned long long)at);
    const char *m = vit_error();
    CHECK(n == bad && last == VIT_ERR && has(m, path) && has(m, byte) && has(m, what),
          "%s: %d records, rc %d, message \"%s\"", label, n, last, m);
}

static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void test_bad_files(void) {
    FixtureRow rows[16];
    int nrows = load_rows(rows, 16);
    size_t size;
    uint8_t *orig = read_file(g_fixture, &size);
    CHECK(orig && nrows == 5, "fixture missing");
    if (!orig || nrows != 5) {
        free(orig);
        return;
    }
    const char *p = path_in("bad.tfrecord");
    uint8_t *b = malloc(size);

    // A flipped bit in record 1's length, in its length CRC, in record 2's data, in its data CRC.
    memcpy(b, orig, size);
    b[rows[1].offset + 1] ^= 0x01;
    write_file(p, b, size);
    expect_bad_file(p, 1, rows[1].offset, "length CRC mismatch", "flipped length");
    memcpy(b, orig, size);
    b[rows[1].offset + 9] ^= 0x80;
    write_file(p, b, size);
    expect_bad_file(p, 1, rows[1].offset, "length CRC mismatch", "flipped length CRC");
    memcpy(b, orig, size);
    b[rows[2].offset + 12 + rows[2].length / 2] ^= 0x10;
    write_file(p, b, size);
    expect_bad_file(p, 2, rows[2].offset, "data CRC mismatch", "flipped data");
    memcpy(b, orig, size);
    b[rows[2].offset + 12 + rows[2].length + 2] ^= 0x04;
    write_file(p, b, size);
    expect_bad_file(p, 2, rows[2].offset, "data CRC mismatch", "flipped data CRC");
    // The same through random access.
    int fd = open(p, O_RDONLY);
    uint8_t *buf = NULL;
    size_t cap = 0, len;
    CHECK(tfr_read_at(fd, p, rows[2].offset, &buf, &cap, &len) == VIT_ERR && has(vit_error(), p) &&
              has(vit_error(), "data CRC"),
          "read_at flipped data CRC: %s", vit_error());
    close(fd);

    // Cut inside record 3: in the header, in the data, in the data CRC. Cut at a record
    // boundary: a clean end after 3 records.
    uint64_t cuts[3] = {rows[3].offset + 5, rows[3].offset + 12 + 100, rows[3].offset + 12 + rows[3].length + 3};
    for (int k = 0; k < 3; k++) {
        write_file(p, orig, (size_t)cuts[k]);
        expect_bad_file(p, 3, rows[3].offset, "truncated", "cut file");
        fd = open(p, O_RDONLY);
        CHECK(tfr_read_at(fd, p, rows[3].offset, &buf, &cap, &len) == VIT_ERR && has(vit_error(), "truncated"),
              "read_at cut %d: %s", k, vit_error());
        close(fd);
    }
    write_file(p, orig, (size_t)rows[3].offset);
    int last;
    CHECK(count_records(p, &last) == 3 && last == 0, "cut at a boundary: rc %d %s", last, vit_error());

    // A zero-length file is an empty shard: clean end, no records.
    write_file(p, "", 0);
    CHECK(count_records(p, &last) == 0 && last == 0, "empty file: rc %d %s", last, vit_error());

    // Lengths with valid CRCs: 100 MB with 20 bytes behind it is "truncated" (nothing is
    // allocated for it); 2^40 is over the cap.
    uint8_t h[40] = {0};
    uint64_t lens[2] = {100u << 20, 1ull << 40};
    const char *whats[2] = {"truncated", "1 GiB"};
    for (int k = 0; k < 2; k++) {
        put_le64(h, lens[k]);
        put_le32(h + 8, crc32c_masked(h, 8));
        write_file(p, h, sizeof h);
        expect_bad_file(p, 0, 0, whats[k], "huge length");
        fd = open(p, O_RDONLY);
        size_t cap0 = cap;
        CHECK(tfr_read_at(fd, p, 0, &buf, &cap, &len) == VIT_ERR && has(vit_error(), whats[k]) && cap == cap0,
              "read_at huge length: %s", vit_error());
        close(fd);
    }
    free(buf);

    CHECK(tfr_open(&(TfrReader){0}, path_in("missing.tfrecord")) == VIT_ERR &&
              has(vit_error(), "missing.tfrecord"),
          "opening a missing file: %s", vit_error());
    unlink(p);
    free(b);
    free(orig);
}

// ---- malformed and incomplete Examples, hand-encoded ----

typedef struct {
    uint8_t b[512];
    size_t n;
} Pb;

static void pb_raw(Pb *p, const void *d, size_t n) {
    if (p->n + n <= sizeof p->b) memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void pb_varint(Pb *p, uint64_t v) {
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) c |= 0x80;
        pb_raw(p, &c, 1);
    } while (v);
}
static void pb_len(Pb *p, int field, const void *d, size_t n) {
    pb_varint(p, (uint64_t)field << 3 | 2);
    pb_varint(p, n);
    pb_raw(p, d, n);
}
static void pb_sub(Pb *p, int field, const Pb *sub) { pb_len(p, field, sub->b, sub->n); }

// Feature{bytes_list{value: s}}
static Pb feat_bytes(const char *s) {
    Pb l = {0}, f = {0};
    pb_len(&l, 1, s, strlen(s));
    pb_sub(&f, 1, &l);
    return f;
}
// Feature{int64_list{value: v}}, packed (as TensorFlow writes) or not.
static Pb feat_int(int64_t v, int packed) {
    Pb l = {0}, f = {0};
    if (packed) {
        Pb vals = {0};
        pb_varint(&vals, (uint64_t)v);
        pb_sub(&l, 1, &vals);
    } else {
        pb_varint(&l, 1 << 3 | 0);
        pb_varint(&l, (uint64_t)v);
    }
    pb_sub(&f, 3, &l);
    return f;
}
static void add_entry(Pb *features, const char *key, const Pb *feature) {
    Pb e = {0};
    pb_len(&e, 1, key, strlen(key));
    pb_sub(&e, 2, feature);
    pb_sub(features, 1, &e);
}
static Pb example_of(const Pb *features) {
    Pb ex = {0};
    pb_sub(&ex, 1, features);
    return ex;
}

static int parse(const Pb *ex, ExampleImage *im) { return example_parse_image(ex->b, ex->n, im, "f.tfrecord: record 7"); }

static void test_examples(void) {
    ExampleImage im;
    Pb enc = feat_bytes("JPEGDATA"), lab = feat_int(42, 1);

    // Good, with unpacked int64, unknown fields, floats both ways and extra bytes values.
    Pb fs = {0};
    Pb fl = {0}, ff = {0}, floats = {0};
    pb_raw(&floats, "\0\0\x80\x3f\0\0\0\x40", 8);
    pb_sub(&fl, 1, &floats);                      // packed
    pb_varint(&fl, 1 << 3 | 5), pb_raw(&fl, "\0\0\x40\x40", 4);  // unpacked
    pb_sub(&ff, 2, &fl);
    add_entry(&fs, "image/object/bbox/xmin", &ff);
    pb_varint(&fs, 9 << 3 | 0), pb_varint(&fs, 300);  // unknown varint field
    pb_varint(&fs, 10 << 3 | 1), pb_raw(&fs, "12345678", 8);  // unknown fixed64
    Pb lab_unpacked = feat_int(-3, 0);
    add_entry(&fs, "image/class/label", &lab_unpacked);
    Pb two = {0}, twof = {0};
    pb_len(&two, 1, "first", 5);
    pb_len(&two, 1, "second", 6);
    pb_sub(&twof, 1, &two);
    add_entry(&fs, "image/encoded", &twof);
    Pb ex = example_of(&fs);
    CHECK(parse(&ex, &im) == VIT_OK && im.label == -3 && im.encoded_len == 5 &&
              memcmp(im.encoded, "first", 5) == 0 && im.encoded >= ex.b && im.encoded < ex.b + ex.n,
          "unpacked label, two values: %s", vit_error());

    // Duplicate keys: the last entry wins (protobuf map semantics). Value before key is fine.
    fs = (Pb){0};
    add_entry(&fs, "image/encoded", &enc);
    Pb lab1 = feat_int(1, 1), lab2 = feat_int(2, 1);
    add_entry(&fs, "image/class/label", &lab1);
    {
        Pb e = {0};
        pb_sub(&e, 2, &lab2);
        pb_len(&e, 1, "image/class/label", 17);
        pb_sub(&fs, 1, &e);
    }
    ex = example_of(&fs);
    CHECK(parse(&ex, &im) == VIT_OK && im.label == 2, "duplicate key: label %lld %s", (long long)im.label,
          vit_error());

    // Missing image/encoded, missing label, label as bytes, encoded as int64, empty label list.
    struct {
        const char *name, *want;
        int with_enc, lab_kind;  // lab_kind: 0 none, 1 int64, 2 bytes, 3 empty int64 list
        int enc_int;
    } cases[] = {
        {"missing image/encoded", "no image/encoded", 0, 1, 0},
        {"missing label", "no image/class/label", 1, 0, 0},
        {"label as bytes", "image/class/label is a bytes_list", 1, 2, 0},
        {"encoded as int64", "image/encoded is an int64_list", 1, 1, 1},
        {"empty label list", "image/class/label has no value", 1, 3, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        fs = (Pb){0};
        if (cases[k].with_enc) {
            Pb e = cases[k].enc_int ? feat_int(5, 1) : enc;
            add_entry(&fs, "image/encoded", &e);
        }
        Pb l = {0};
        if (cases[k].lab_kind == 1) l = lab;
        if (cases[k].lab_kind == 2) l = feat_bytes("42");
        if (cases[k].lab_kind == 3) {
            Pb empty = {0};
            pb_sub(&l, 3, &empty);
        }
        if (cases[k].lab_kind) add_entry(&fs, "image/class/label", &l);
        ex = example_of(&fs);
        int rc = parse(&ex, &im);
        CHECK(rc == VIT_ERR && has(vit_error(), "f.tfrecord: record 7: ") && has(vit_error(), cases[k].want),
              "%s: rc %d \"%s\"", cases[k].name, rc, vit_error());
    }

    // Malformed wire format, each must be rejected with the record named.
    struct {
        const char *name;
        const char *bytes;
        size_t n;
    } bad[] = {
        {"truncated varint", "\x08\x80", 2},
        {"length past the end", "\x0a\x05\x01", 3},
        {"wire type 7", "\x0f", 1},
        {"group", "\x0b\x0c", 2},
        {"field number 0", "\x00\x01", 2},
        {"11-byte varint", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12},
        {"features as varint", "\x08\x01", 2},
        {"entry key as varint", "\x0a\x04\x0a\x02\x08\x01", 6},
        {"packed float of 3 bytes", "\x0a\x0b\x0a\x09\x12\x07\x12\x05\x0a\x03\0\0\0", 13},
        {"truncated packed int64", "\x0a\x0b\x0a\x09\x12\x07\x1a\x05\x0a\x03\x01\x80\x80", 13},
        {"truncated fixed32", "\x15\x01\x02", 3},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        int rc = example_parse_image((const uint8_t *)bad[k].bytes, bad[k].n, &im, "f.tfrecord: record 7");
        CHECK(rc == VIT_ERR && has(vit_error(), "f.tfrecord: record 7: malformed"), "%s: rc %d \"%s\"",
              bad[k].name, rc, vit_error());
    }
    // Garbage bytes and an empty record.
    uint8_t junk[256];
    for (int k = 0; k < 256; k++) junk[k] = (uint8_t)(255 - k);
    CHECK(example_parse_image(junk, sizeof junk, &im, "junk") == VIT_ERR && has(vit_error(), "junk: "),
          "garbage accepted");
    CHECK(example_parse_image(junk, 0, &im, "empty") == VIT_ERR && has(vit_error(), "no image/encoded"),
          "empty record: %s", vit_error());

    // Every proper prefix of a real record is an error (and never a crash).
    ExampleFields f = {(const uint8_t *)"0123456789", 10, 5, "n1", "t", "f.JPEG", 2, 3, 3};
    uint8_t *rec;
    size_t rec_len;
    if (example_build_image(&f, &rec, &rec_len) == VIT_OK) {
        int all = 1;
        for (size_t k = 0; k < rec_len; k++) {
            uint8_t *cut = malloc(k + 1);  // exact size so ASan sees any over-read
            memcpy(cut, rec, k);
            if (example_parse_image(cut, k, &im, "prefix") != VIT_ERR) all = 0;
            free(cut);
        }
        CHECK(all, "a truncated Example was accepted");
        CHECK(example_parse_image(rec, rec_len, &im, "full") == VIT_OK && im.label == 5, "full: %s", vit_error());
        free(rec);
    }
}

int main(void) {
    strcpy(g_dir, "/tmp/test_tfrecord_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_crc();
    test_fixture();
    test_round_trip();
    test_bad_files();
    test_examples();
    testdir_remove(g_dir);
    return check_report("tfrecord");
}
