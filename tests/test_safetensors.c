// safetensors: round trip through the writer and reader, the exact byte layout the Python
// package produces, every malformed input the reader must refuse, and the atomic save.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "testdir.h"
#include "io/safetensors.h"
#include "util/status.h"

static char g_root[64];

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_root, name); }

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = v << 8 | p[k];
    return v;
}


static int shape_eq(const StTensor *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int k = 0; k < ndim; k++)
        if (t->shape[k] != shape[k]) return 0;
    return 1;
}

static int file_is_zeroed(const StFile *f) {
    return !f->tensors && !f->count && !f->meta_keys && !f->meta_values && !f->meta_count &&
           !f->buffer && !f->size;
}

// ---------------------------------------------------------------------------------------

typedef struct {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t nbytes;
} Spec;

static void test_roundtrip(void) {
    static float w[6] = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
    static float scalar = 42.0f;
    static int32_t idx[4] = {0, -1, 2147483647, -2147483647 - 1};
    static uint8_t mask[5] = {0, 1, 255, 128, 7};
    static double dd[2] = {3.141592653589793, -1e300};
    static int64_t ll[1] = {-9007199254740993LL};
    static uint16_t bf[3] = {0x3f80, 0xbf80, 0x7f80};
    static uint16_t hf[1] = {0x3c00};
    const Spec specs[] = {
        {"w", ST_F32, 2, {2, 3}, w, sizeof w},
        {"idx", ST_I32, 1, {4}, idx, sizeof idx},
        {"mask", ST_U8, 1, {5}, mask, sizeof mask},
        {"scalar", ST_F32, 0, {0}, &scalar, sizeof scalar},
        {"empty", ST_F32, 2, {0, 3}, NULL, 0},
        {"dd", ST_F64, 1, {2}, dd, sizeof dd},
        {"ll", ST_I64, 3, {1, 1, 1}, ll, sizeof ll},
        {"bf", ST_BF16, 1, {3}, bf, sizeof bf},
        {"hf", ST_F16, 1, {1}, hf, sizeof hf},
        {"blocks.0.attn/q\"k\\v \u00e9\xf0\x9f\x98\x80", ST_F32, 1, {3}, w, 12},
    };
    const int nspec = (int)(sizeof specs / sizeof specs[0]);
    const char *mk[] = {"format", "epoch", "we\"ird\\key\n", "empty", "unicode"};
    const char *mv[] = {"pt", "12", "tab\there\x01", "", "sn\u00f8w \u2603"};

    StWriter *wr = st_writer_new();
    CHECK(wr != NULL, "writer");
    if (!wr) return;
    for (int i = 0; i < nspec; i++)
        CHECK(st_writer_add(wr, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape,
                            specs[i].data) == VIT_OK,
              "add %s: %s", specs[i].name, vit_error());
    CHECK(st_writer_meta(wr, "format", "old") == VIT_OK, "meta");
    for (int i = 0; i < 5; i++) CHECK(st_writer_meta(wr, mk[i], mv[i]) == VIT_OK, "meta %d", i);

    char path[256];
    path_in(path, sizeof path, "model.safetensors");
    int rc = st_writer_save(wr, path);
    CHECK(rc == VIT_OK, "save: %s", vit_error());
    // Saving twice from one writer is fine and gives identical bytes.
    char path2[256];
    path_in(path2, sizeof path2, "model2.safetensors");
    CHECK(st_writer_save(wr, path2) == VIT_OK, "second save: %s", vit_error());
    st_writer_free(wr);
    CHECK(testdir_count(g_root, ".tmp.") == 0, "no temp files after saves");

    size_t n1, n2;
    unsigned char *b1 = testdir_slurp(path, &n1), *b2 = testdir_slurp(path2, &n2);
    CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0, "saves are deterministic");
    free(b2);

    StFile f;
    rc = st_read(&f, path);
    CHECK(rc == VIT_OK, "read: %s", vit_error());
    if (rc == VIT_OK) {
        CHECK(f.count == nspec, "count %d", f.count);
        CHECK(f.size == n1, "size");
        for (int i = 0; i < nspec; i++) {
            const StTensor *t = st_find(&f, specs[i].name);
            CHECK(t != NULL, "find %s", specs[i].name);
            if (!t) continue;
            CHECK(t->dtype == specs[i].dtype, "%s dtype", specs[i].name);
            CHECK(shape_eq(t, specs[i].ndim, specs[i].shape), "%s shape", specs[i].name);
            CHECK(t->nbytes == specs[i].nbytes, "%s nbytes %zu", specs[i].name, t->nbytes);
            CHECK(specs[i].nbytes == 0 || memcmp(t->data, specs[i].data, t->nbytes) == 0,
                  "%s bytes", specs[i].name);
            // Data pointers must be aligned for their element type (reader hands out pointers).
            CHECK((uintptr_t)t->data % st_dtype_size(t->dtype) == 0, "%s aligned", specs[i].name);
            CHECK((const unsigned char *)t->data >= (const unsigned char *)f.buffer &&
                      (const unsigned char *)t->data + t->nbytes <=
                          (const unsigned char *)f.buffer + f.size,
                  "%s inside buffer", specs[i].name);
        }
        const StTensor *tw = st_find(&f, "w");
        if (tw) CHECK(((const float *)tw->data)[1] == -2.25f, "float value via pointer");
        CHECK(st_find(&f, "nope") == NULL && st_find(&f, "") == NULL, "find missing");
        CHECK(f.meta_count == 5, "meta count %d", f.meta_count);
        for (int i = 0; i < 5; i++) {
            const char *v = st_meta(&f, mk[i]);
            CHECK(v && strcmp(v, mv[i]) == 0, "meta %s = %s", mk[i], v ? v : "(null)");
        }
        CHECK(strcmp(st_meta(&f, "format"), "pt") == 0, "later meta value wins");
        CHECK(st_meta(&f, "absent") == NULL, "meta missing");
        st_free(&f);
        CHECK(file_is_zeroed(&f), "st_free zeroes");
        st_free(&f);  // twice is harmless
    }

    // Raw layout: 8-byte length, header padded with spaces to a multiple of 8, data after.
    if (b1 && n1 >= 8) {
        uint64_t hl = le64(b1);
        CHECK(hl % 8 == 0, "header length %llu is a multiple of 8", (unsigned long long)hl);
        CHECK((8 + hl) % 8 == 0, "data starts 8-byte aligned");
        CHECK(hl <= n1 - 8, "header inside file");
        if (hl <= n1 - 8 && hl > 0) {
            const char *h = (const char *)b1 + 8;
            size_t end = (size_t)hl;
            while (end > 0 && h[end - 1] == ' ') end--;
            CHECK(end > 0 && h[end - 1] == '}', "header JSON ends with '}' then only spaces");
            CHECK(hl - end < 8, "padding shorter than 8");
            CHECK(strncmp(h, "{\"__metadata__\":{", 17) == 0, "metadata first");
            // Tensor order: by dtype as the Python package orders them (I64, F64, F32, I32,
            // BF16, F16, U8), names ascending within a dtype.
            const char *order[] = {"\"ll\":", "\"dd\":", "\"blocks.0.attn/q\\\"k\\\\v ",
                                   "\"empty\":", "\"scalar\":", "\"w\":", "\"idx\":",
                                   "\"bf\":", "\"hf\":", "\"mask\":"};
            int ordered = 1;
            char *hz = strndup(h, (size_t)hl);
            // Search each name after the previous one (and after the metadata, which has
            // a key that is also a tensor name).
            const char *prev = hz ? strstr(hz, "}") : NULL;
            for (size_t i = 0; prev && i < sizeof order / sizeof order[0]; i++) {
                const char *at = strstr(prev, order[i]);
                if (!at) {
                    ordered = 0;
                    fprintf(stderr, "  order: %s misplaced\n", order[i]);
                } else {
                    prev = at;
                }
            }
            if (!prev) ordered = 0;
            CHECK(ordered, "tensors in Python's order");
            CHECK(hz && strstr(hz, "\"we\\\"ird\\\\key\\n\":\"tab\\there\\u0001\""),
                  "JSON escapes as serde_json writes them");
            CHECK(hz && strstr(hz, "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":["),
                  "tensor entry layout");
            CHECK(hz && strstr(hz, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],"), "scalar shape []");
            free(hz);
        }
    }
    free(b1);
}

// Exact bytes for a small file, checked against what Python's safetensors writes for the
// same tensors (dtype order first, then name; compact JSON; space padding).
static void test_exact_layout(void) {
    static const float a[2] = {1.0f, 2.0f};
    static const float c[1] = {3.0f};
    static const uint8_t b[3] = {9, 8, 7};
    const int64_t s2[] = {2}, s3[] = {3}, s1[] = {1};
    StWriter *w = st_writer_new();
    if (!w) return;
    st_writer_add(w, "c", ST_F32, 1, s1, c);
    st_writer_add(w, "b", ST_U8, 1, s3, b);
    st_writer_add(w, "a", ST_F32, 1, s2, a);
    char path[256];
    path_in(path, sizeof path, "exact.safetensors");
    CHECK(st_writer_save(w, path) == VIT_OK, "save exact: %s", vit_error());
    st_writer_free(w);
    const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[12,15]}}";
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8, n;
    unsigned char *buf = testdir_slurp(path, &n);
    CHECK(buf && n == 8 + padded + 15, "exact size %zu vs %zu", n, 8 + padded + 15);
    if (buf && n == 8 + padded + 15) {
        CHECK(le64(buf) == padded, "exact header length");
        CHECK(memcmp(buf + 8, json, jl) == 0, "exact JSON: %.*s", (int)jl, (const char *)buf + 8);
        int spaces = 1;
        for (size_t i = jl; i < padded; i++) spaces &= buf[8 + i] == ' ';
        CHECK(spaces, "padding is spaces");
        const unsigned char *d = buf + 8 + padded;
        CHECK(memcmp(d, a, 8) == 0 && memcmp(d + 8, c, 4) == 0 && memcmp(d + 12, b, 3) == 0,
              "data in header order");
    }
    free(buf);

    // An empty writer makes "{}" padded to 8: a valid, empty file.
    w = st_writer_new();
    path_in(path, sizeof path, "empty.safetensors");
    CHECK(w && st_writer_save(w, path) == VIT_OK, "save empty");
    st_writer_free(w);
    buf = testdir_slurp(path, &n);
    CHECK(buf && n == 16 && le64(buf) == 8 && memcmp(buf + 8, "{}      ", 8) == 0, "empty layout");
    free(buf);
    StFile f;
    CHECK(st_read(&f, path) == VIT_OK && f.count == 0 && f.meta_count == 0, "read empty: %s",
          vit_error());
    st_free(&f);
}

// ---------------------------------------------------------------------------------------

// Writes 8-byte length + header (space-padded to a multiple of 8) + data.
static void write_st(const char *path, const char *json, const void *data, size_t nd) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
    unsigned char l8[8];
    for (int k = 0; k < 8; k++) l8[k] = (unsigned char)((uint64_t)padded >> (8 * k));
    fwrite(l8, 1, 8, f);
    fwrite(json, 1, jl, f);
    for (size_t i = jl; i < padded; i++) fputc(' ', f);
    if (nd) fwrite(data, 1, nd, f);
    fclose(f);
}

static void write_raw(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    if (n) fwrite(bytes, 1, n, f);
    fclose(f);
}

static int g_case;

// Reads `path` expecting failure whose message names the file and contains `needle`.
static void expect_bad(const char *path, const char *needle, const char *what) {
    StFile f;
    memset(&f, 0x5A, sizeof f);
    int rc = st_read(&f, path);
    CHECK(rc == VIT_ERR, "%s: expected VIT_ERR", what);
    if (getenv("VERBOSE")) printf("  %-28s -> %s\n", what, vit_error());
    CHECK(strstr(vit_error(), path) != NULL, "%s: message names the file: %s", what, vit_error());
    if (needle)
        CHECK(strstr(vit_error(), needle) != NULL, "%s: message should contain '%s': %s", what,
              needle, vit_error());
    CHECK(file_is_zeroed(&f), "%s: StFile left empty", what);
    if (rc == VIT_OK) st_free(&f);
}

static void bad_json(const char *json, const void *data, size_t nd, const char *needle,
                     const char *what) {
    char path[256];
    snprintf(path, sizeof path, "%s/bad%03d.safetensors", g_root, g_case++);
    write_st(path, json, data, nd);
    expect_bad(path, needle, what);
}

static void good_json(const char *json, const void *data, size_t nd, int count, const char *what) {
    char path[256];
    snprintf(path, sizeof path, "%s/good%03d.safetensors", g_root, g_case++);
    write_st(path, json, data, nd);
    StFile f;
    int rc = st_read(&f, path);
    CHECK(rc == VIT_OK, "%s: %s", what, vit_error());
    if (rc == VIT_OK) {
        CHECK(f.count == count, "%s: count %d", what, f.count);
        st_free(&f);
    }
}

#define T(name, dt, shape, off) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}"

static void test_bad_inputs(void) {
    char path[256];
    static unsigned char zeros[64];

    // File-level problems.
    path_in(path, sizeof path, "missing.safetensors");
    expect_bad(path, "No such file", "missing file");
    expect_bad(g_root, "not a regular file", "directory");
    path_in(path, sizeof path, "empty-file.safetensors");
    write_raw(path, "", 0);
    expect_bad(path, "too short", "empty file");
    write_raw(path, "\x10\0\0\0\0", 5);
    expect_bad(path, "too short", "5-byte file");
    {
        unsigned char b[8 + 16] = {0x40, 0, 0, 0, 0, 0, 0, 0};  // announces 64, holds 16
        memcpy(b + 8, "{}              ", 16);
        write_raw(path, b, sizeof b);
        expect_bad(path, "header length 64 exceeds", "header longer than file");
        unsigned char h[16] = {0, 0, 0, 0, 0, 0, 0, 0x80, '{', '}'};  // 2^63
        write_raw(path, h, sizeof h);
        expect_bad(path, "exceeds", "header length 2^63");
        unsigned char z[16] = {0};
        write_raw(path, z, sizeof z);
        expect_bad(path, "too short for JSON", "header length 0");
    }
    {
        // Over the Python package's 100 MB header limit: refused before looking further.
        uint64_t hl = 100000008;
        unsigned char h[16] = {0};
        for (int k = 0; k < 8; k++) h[k] = (unsigned char)(hl >> (8 * k));
        write_raw(path, h, sizeof h);
        expect_bad(path, "100000000-byte limit", "header over 100 MB");
    }

    // Not JSON / wrong JSON shape.
    bad_json("hello world", NULL, 0, "bad safetensors header", "non-JSON header");
    bad_json("[1,2,3]", NULL, 0, "expected '{'", "array header");
    bad_json("{", NULL, 0, "unexpected end", "truncated JSON");
    bad_json("{\"a\":", NULL, 0, "unexpected end", "truncated after key");
    bad_json("{\"a", NULL, 0, "unterminated string", "unterminated key");
    bad_json("{}x", NULL, 0, "after the JSON", "garbage after object");
    bad_json("{} {}", NULL, 0, "after the JSON", "two objects");
    bad_json("{a:1}", NULL, 0, "expected a string", "unquoted key");
    bad_json("{\"a\":1}", NULL, 0, "expected '{'", "tensor entry not an object");
    bad_json("{\"a\":{}}", NULL, 0, "empty entry", "empty tensor entry");
    bad_json("{" T("a", "F32", "[1]", "[0,4]") ",}", zeros, 4, "expected a string", "trailing comma");
    bad_json("{" T("a", "F32", "[1]", "[0,4]") " " T("b", "F32", "[1]", "[4,8]") "}", zeros, 8,
             "expected ','", "missing comma");
    {
        char nul[] = "{\"a\":{}}";
        nul[3] = '\0';  // NUL inside the header bytes
        char p2[256];
        snprintf(p2, sizeof p2, "%s/nul.safetensors", g_root);
        unsigned char b[16] = {8, 0, 0, 0, 0, 0, 0, 0};
        memcpy(b + 8, nul, 8);
        write_raw(p2, b, 16);
        expect_bad(p2, "bad safetensors header", "NUL byte in header");
    }

    // Strings.
    bad_json("{\"a\xff\":{}}", NULL, 0, "invalid UTF-8", "invalid UTF-8");
    bad_json("{\"a\xc0\x80\":{}}", NULL, 0, "invalid UTF-8", "overlong UTF-8");
    bad_json("{\"\xed\xa0\x80\":{}}", NULL, 0, "invalid UTF-8", "UTF-8 surrogate");
    bad_json("{\"a\\u0000\":{}}", NULL, 0, "\\u0000", "escaped NUL");
    bad_json("{\"a\\udc00\":{}}", NULL, 0, "surrogate", "lone low surrogate");
    bad_json("{\"a\\ud800x\":{}}", NULL, 0, "surrogate", "lone high surrogate");
    bad_json("{\"a\\ud800\\u0041\":{}}", NULL, 0, "surrogate", "high + non-low surrogate");
    bad_json("{\"a\\q\":{}}", NULL, 0, "bad escape", "bad escape");
    bad_json("{\"a\\u12g4\":{}}", NULL, 0, "\\u escape", "bad hex");
    bad_json("{\"a\\u12\"}", NULL, 0, NULL, "short \\u");
    bad_json("{\"a\tb\":{}}", NULL, 0, "control character", "raw tab in string");
    bad_json("{\"a\\", NULL, 0, "unterminated", "backslash at end");

    // dtypes.
    bad_json("{" T("a", "F8", "[1]", "[0,1]") "}", zeros, 1, "unknown dtype 'F8'", "dtype F8");
    bad_json("{" T("a", "f32", "[1]", "[0,4]") "}", zeros, 4, "unknown dtype 'f32'", "dtype case");
    bad_json("{" T("a", "BOOL", "[1]", "[0,1]") "}", zeros, 1, "unknown dtype", "dtype BOOL");
    bad_json("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
             "expected a string", "dtype number");

    // Shapes and offsets.
    bad_json("{" T("a", "F32", "[-1]", "[0,4]") "}", zeros, 4, "negative", "negative dim");
    bad_json("{" T("a", "F32", "[1.0]", "[0,4]") "}", zeros, 4, "integer", "float dim");
    bad_json("{" T("a", "F32", "[1e0]", "[0,4]") "}", zeros, 4, "integer", "exp dim");
    bad_json("{" T("a", "F32", "[01]", "[0,4]") "}", zeros, 4, "leading zero", "leading zero");
    bad_json("{" T("a", "F32", "[\"1\"]", "[0,4]") "}", zeros, 4, "expected an integer", "string dim");
    bad_json("{" T("a", "F32", "1", "[0,4]") "}", zeros, 4, "must be an array", "shape not array");
    bad_json("{" T("a", "F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", zeros, 4, "more than 8",
             "9 dims");
    bad_json("{" T("a", "F32", "[99999999999999999999]", "[0,4]") "}", zeros, 4, "too large",
             "dim overflows int64");
    bad_json("{" T("a", "F32", "[4294967296,4294967296]", "[0,4]") "}", zeros, 4, "too large",
             "shape product overflows");
    bad_json("{" T("a", "F32", "[1]", "[0]") "}", zeros, 4, "2 entries", "one offset");
    bad_json("{" T("a", "F32", "[1]", "[0,4,8]") "}", zeros, 4, "more than 2", "three offsets");
    bad_json("{" T("a", "F32", "[1]", "[4,0]") "}", zeros, 4, "end before", "end < begin");
    bad_json("{" T("a", "F32", "[2]", "[0,8]") "}", zeros, 4, "outside the data section",
             "truncated data");
    bad_json("{" T("a", "F32", "[1]", "[100,104]") "}", zeros, 4, "outside the data section",
             "offsets out of range");
    bad_json("{" T("a", "F32", "[1]", "[0,18446744073709551615]") "}", zeros, 4, "too large",
             "offset > int64");
    bad_json("{" T("a", "F32", "[2,3]", "[0,20]") "}", zeros, 20, "needs 24 bytes", "shape/byte mismatch");
    bad_json("{" T("a", "F64", "[2]", "[0,8]") "}", zeros, 8, "needs 16 bytes", "dtype size mismatch");
    bad_json("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4, "no dtype", "missing dtype");
    bad_json("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", zeros, 4, "no shape", "missing shape");
    bad_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros, 4, "no data_offsets",
             "missing offsets");
    bad_json("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             zeros, 4, "twice", "duplicate field");

    // Layout of the data section.
    bad_json("{" T("a", "F32", "[1]", "[0,4]") "," T("a", "F32", "[1]", "[4,8]") "}", zeros, 8,
             "appears twice", "duplicate tensor");
    bad_json("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[1]", "[4,8]") "}", zeros, 8,
             "overlaps", "overlap");
    bad_json("{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[8,12]") "}", zeros, 12,
             "belong to no tensor", "gap");
    bad_json("{" T("a", "F32", "[1]", "[4,8]") "}", zeros, 8, "belong to no tensor", "gap at start");
    bad_json("{" T("a", "F32", "[1]", "[0,4]") "}", zeros, 12, "cover 4", "trailing data");
    bad_json("{}", zeros, 8, "cover 0", "data without tensors");

    // Metadata.
    bad_json("{\"__metadata__\":{\"k\":1}}", NULL, 0, "not a string", "metadata int value");
    bad_json("{\"__metadata__\":[\"k\"]}", NULL, 0, "__metadata__", "metadata array");
    bad_json("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", NULL, 0, "twice", "metadata dup key");
    bad_json("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0, "twice", "metadata twice");

    // Unknown fields are skipped, but must still be well-formed and not nested without end.
    {
        char deep[400];
        size_t o = (size_t)snprintf(deep, sizeof deep, "{\"a\":{\"x\":");
        for (int i = 0; i < 100; i++) deep[o++] = '[';
        deep[o] = '\0';
        bad_json(deep, NULL, 0, "nested too deeply", "deep nesting");
    }
    bad_json("{\"a\":{\"x\":tru,\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", zeros, 1,
             "unexpected character", "bad literal in unknown field");
    bad_json("{\"a\":{\"x\":-,\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", zeros, 1,
             "bad number", "bad number in unknown field");

    // Accepted oddities: whitespace, unknown fields, escapes in names, empty tensors.
    good_json(" {\n\t\"a\" : { \"dtype\" : \"U8\" , \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 2 ] } }\r\n",
              zeros, 2, 1, "whitespace everywhere");
    good_json("{\"a\":{\"extra\":[1,-2.5e3,{\"k\":null,\"t\":true,\"f\":false}],\"dtype\":\"U8\","
              "\"shape\":[2],\"data_offsets\":[0,2]}}",
              zeros, 2, 1, "unknown field skipped");
    good_json("{" T("a", "F32", "[0,5]", "[0,0]") "," T("b", "F32", "[]", "[0,4]") "}", zeros, 4, 2,
              "zero-size and scalar tensors");
    good_json("{\"__metadata__\":{}}", NULL, 0, 0, "empty metadata");
    {
        char path2[256];
        snprintf(path2, sizeof path2, "%s/esc.safetensors", g_root);
        write_st(path2, "{\"\\u00e9\\ud83d\\ude00\\n\\/\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                 zeros, 1);
        StFile f;
        int rc = st_read(&f, path2);
        CHECK(rc == VIT_OK, "escaped name: %s", vit_error());
        if (rc == VIT_OK) {
            CHECK(st_find(&f, "\xc3\xa9\xf0\x9f\x98\x80\n/") != NULL, "escapes decoded to UTF-8");
            st_free(&f);
        }
    }

    // Arguments.
    CHECK(st_read(NULL, path) == VIT_ERR, "NULL StFile");
    StFile f;
    CHECK(st_read(&f, NULL) == VIT_ERR && file_is_zeroed(&f), "NULL path");
}

// ---------------------------------------------------------------------------------------

static void test_writer_errors(void) {
    static const float x[4] = {0};
    const int64_t s1[] = {4}, neg[] = {-1}, nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    StWriter *w = st_writer_new();
    if (!w) return;
    CHECK(st_writer_add(w, "x", ST_F32, 1, s1, x) == VIT_OK, "add x");
    CHECK(st_writer_add(w, "x", ST_F32, 1, s1, x) == VIT_ERR && strstr(vit_error(), "twice"),
          "duplicate name: %s", vit_error());
    CHECK(st_writer_add(w, "__metadata__", ST_F32, 1, s1, x) == VIT_ERR, "reserved name");
    CHECK(st_writer_add(w, "", ST_F32, 1, s1, x) == VIT_ERR, "empty name");
    CHECK(st_writer_add(w, NULL, ST_F32, 1, s1, x) == VIT_ERR, "NULL name");
    CHECK(st_writer_add(w, "bad\xff", ST_F32, 1, s1, x) == VIT_ERR, "non-UTF-8 name");
    CHECK(st_writer_add(w, "n", ST_F32, 1, neg, x) == VIT_ERR && strstr(vit_error(), "'n'"),
          "negative dim names the tensor: %s", vit_error());
    CHECK(st_writer_add(w, "n", ST_F32, 9, nine, x) == VIT_ERR, "9 dims");
    CHECK(st_writer_add(w, "n", ST_F32, -1, s1, x) == VIT_ERR, "negative ndim");
    CHECK(st_writer_add(w, "n", (StDtype)99, 1, s1, x) == VIT_ERR, "bad dtype");
    CHECK(st_writer_add(w, "n", ST_F32, 1, s1, NULL) == VIT_ERR, "NULL data");
    CHECK(st_writer_add(w, "n", ST_F32, 1, NULL, x) == VIT_ERR, "NULL shape");
    const int64_t huge[] = {INT64_MAX, INT64_MAX};
    CHECK(st_writer_add(w, "n", ST_F32, 2, huge, x) == VIT_ERR, "overflowing shape");
    const int64_t zero[] = {0, INT64_MAX};
    CHECK(st_writer_add(w, "z", ST_F32, 2, zero, NULL) == VIT_OK, "zero-size tensor, NULL data");
    CHECK(st_writer_meta(w, NULL, "v") == VIT_ERR && st_writer_meta(w, "k", NULL) == VIT_ERR,
          "NULL meta");
    CHECK(st_writer_add(NULL, "n", ST_F32, 1, s1, x) == VIT_ERR, "NULL writer add");
    CHECK(st_writer_meta(NULL, "k", "v") == VIT_ERR, "NULL writer meta");
    CHECK(st_writer_save(NULL, "/tmp/x") == VIT_ERR, "NULL writer save");
    CHECK(st_writer_save(w, NULL) == VIT_ERR && st_writer_save(w, "") == VIT_ERR, "bad save path");
    // Failed adds leave the writer usable: the saved file has exactly x and z.
    char path[256];
    path_in(path, sizeof path, "after-errors.safetensors");
    CHECK(st_writer_save(w, path) == VIT_OK, "save after errors: %s", vit_error());
    StFile f;
    if (st_read(&f, path) == VIT_OK) {
        const StTensor *z = st_find(&f, "z");
        CHECK(f.count == 2 && st_find(&f, "x") && z && z->nbytes == 0 && z->shape[1] == INT64_MAX,
              "after-errors contents");
        st_free(&f);
    } else {
        CHECK(0, "read after-errors: %s", vit_error());
    }
    st_writer_free(w);
    st_writer_free(NULL);

    CHECK(st_dtype_size(ST_F32) == 4 && st_dtype_size(ST_F64) == 8 && st_dtype_size(ST_I32) == 4 &&
              st_dtype_size(ST_I64) == 8 && st_dtype_size(ST_U8) == 1 &&
              st_dtype_size(ST_BF16) == 2 && st_dtype_size(ST_F16) == 2 &&
              st_dtype_size((StDtype)42) == 0,
          "dtype sizes");
    CHECK(strcmp(st_dtype_name(ST_BF16), "BF16") == 0 && strcmp(st_dtype_name(ST_U8), "U8") == 0,
          "dtype names");
}

static void test_atomic_save(void) {
    static const float x[3] = {1, 2, 3};
    const int64_t s3[] = {3};
    StWriter *w = st_writer_new();
    if (!w) return;
    st_writer_add(w, "x", ST_F32, 1, s3, x);

    // Folder that does not exist: fails, names the path and the OS reason, leaves nothing.
    char path[512], dir[256];
    path_in(dir, sizeof dir, "no-such-dir");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(st_writer_save(w, path) == VIT_ERR, "save into missing folder fails");
    CHECK(strstr(vit_error(), path) && strstr(vit_error(), "No such file or directory"),
          "message names path and strerror: %s", vit_error());
    CHECK(access(dir, F_OK) != 0, "missing folder not created");
    CHECK(testdir_count(g_root, ".tmp.") == 0, "no temp left in the parent");

    // Replacing an existing file.
    path_in(path, sizeof path, "replace.safetensors");
    write_raw(path, "old contents, not safetensors", 29);
    CHECK(st_writer_save(w, path) == VIT_OK, "save over existing: %s", vit_error());
    StFile f;
    int rc = st_read(&f, path);
    CHECK(rc == VIT_OK, "replaced file reads: %s", vit_error());
    if (rc == VIT_OK) {
        const StTensor *t = st_find(&f, "x");
        CHECK(t && t->nbytes == 12 && memcmp(t->data, x, 12) == 0, "replaced content");
        st_free(&f);
    }
    CHECK(testdir_count(g_root, ".tmp.") == 0, "no temp left after replace");

    // A failure at rename time (target is a non-empty folder) removes the temp file and
    // leaves the target as it was.
    path_in(path, sizeof path, "is-a-dir.safetensors");
    mkdir(path, 0700);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/keep", path);
    write_raw(inner, "keep", 4);
    CHECK(st_writer_save(w, path) == VIT_ERR, "save over a folder fails");
    CHECK(strstr(vit_error(), path) != NULL, "rename failure names path: %s", vit_error());
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode) && access(inner, F_OK) == 0,
          "folder untouched");
    CHECK(testdir_count(g_root, ".tmp.") == 0, "no temp left after failed rename");

    // Relative path (no slash): the folder to sync is ".".
    char cwd[512];
    if (getcwd(cwd, sizeof cwd) && chdir(g_root) == 0) {
        CHECK(st_writer_save(w, "relative.safetensors") == VIT_OK, "relative save: %s", vit_error());
        CHECK(access("relative.safetensors", F_OK) == 0, "relative file exists");
        CHECK(chdir(cwd) == 0, "chdir back");
    }
    st_writer_free(w);
}


int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/vitc-st-XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 2;
    }
    test_roundtrip();
    test_exact_layout();
    test_bad_inputs();
    test_writer_errors();
    test_atomic_save();
    testdir_remove(g_root);
    return check_report("safetensors");
}
