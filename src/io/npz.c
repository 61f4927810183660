// numpy .npz reader and writer on top of libzip. The reader trusts nothing in the file:
// every size is checked against the member's real size before anything is allocated, so a
// corrupt or hostile archive gives an error value, never a crash or a huge allocation.
#include "io/npz.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "util/atomic_file.h"
#include "util/status.h"

// Float data goes between memory and file without byte swapping.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npz.c assumes a little-endian host"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_DIMS 8
// numpy itself refuses headers above 10000 bytes by default; 1 MiB leaves room and still
// stops a corrupt length from driving a big allocation.
#define NPY_MAX_HEADER (1u << 20)
// Deflate cannot expand data by more than about 1032:1; a member claiming more is corrupt.
#define DEFLATE_MAX_RATIO 1032u

// ---------------------------------------------------------------------------------------
// .npy header dict: a Python literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// Keys may come in any order with any spacing; only these three keys are allowed.

typedef struct {
    const char *p, *end;
} Cursor;

static void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int eat(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

// A quoted string without escapes (dtype strings and key names never need them).
static int parse_string(Cursor *c, char *out, size_t cap) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '\\' || ch < 0x20 || ch == 0x7f || n + 1 >= cap) return 0;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return 0;
    c->p++;
    out[n] = 0;
    return 1;
}

static int is_ident_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

static int parse_word(Cursor *c, const char *w) {
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return 0;
    if (c->p + n < c->end && is_ident_char(c->p[n])) return 0;
    c->p += n;
    return 1;
}

// A tuple of non-negative ints: "()", "(5,)", "(2, 3)", "(2, 3,)". Python 2 files may
// write "3L". Returns 1, 0 on a syntax error, -1 when there are too many dimensions.
static int parse_shape(Cursor *c, int *ndim, int64_t shape[NPY_MAX_DIMS]) {
    if (!eat(c, '(')) return 0;
    int n = 0, trailing_comma = 0;
    for (;;) {
        if (eat(c, ')')) break;
        if (n > 0 && !trailing_comma) return 0;  // elements must be comma separated
        skip_ws(c);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            int d = *c->p++ - '0';
            if (v > (INT64_MAX - d) / 10) return 0;  // not representable: corrupt
            v = v * 10 + d;
        }
        if (c->p < c->end && *c->p == 'L') c->p++;
        if (n == NPY_MAX_DIMS) return -1;
        shape[n++] = v;
        trailing_comma = eat(c, ',');
    }
    // "(5)" is the int 5 in Python, not a tuple.
    if (n == 1 && !trailing_comma) return 0;
    *ndim = n;
    return 1;
}

// Parses the header of member `key`; on failure returns vit_fail naming path and key.
static int parse_header(const char *path, const char *key, const char *h, size_t n,
                        int *ndim, int64_t shape[NPY_MAX_DIMS]) {
    Cursor c = {h, h + n};
    char descr[32] = "", name[32];
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0;
    if (!eat(&c, '{')) return vit_fail("%s: %s: malformed .npy header (no dict)", path, key);
    for (;;) {
        if (eat(&c, '}')) break;
        if (!parse_string(&c, name, sizeof name) || !eat(&c, ':'))
            return vit_fail("%s: %s: malformed .npy header (bad key)", path, key);
        if (!strcmp(name, "descr") && !have_descr) {
            if (!parse_string(&c, descr, sizeof descr))
                return vit_fail("%s: %s: dtype is not a simple type string (float32 "
                                "little-endian only)", path, key);
            have_descr = 1;
        } else if (!strcmp(name, "fortran_order") && !have_fortran) {
            if (parse_word(&c, "True")) fortran = 1;
            else if (!parse_word(&c, "False"))
                return vit_fail("%s: %s: malformed .npy header (fortran_order)", path, key);
            have_fortran = 1;
        } else if (!strcmp(name, "shape") && !have_shape) {
            int r = parse_shape(&c, ndim, shape);
            if (r < 0)
                return vit_fail("%s: %s: more than %d dimensions", path, key, NPY_MAX_DIMS);
            if (r == 0) return vit_fail("%s: %s: malformed .npy header (shape)", path, key);
            have_shape = 1;
        } else {
            return vit_fail("%s: %s: malformed .npy header (unexpected or repeated key '%s')",
                            path, key, name);
        }
        if (!eat(&c, ',')) {
            if (!eat(&c, '}'))
                return vit_fail("%s: %s: malformed .npy header (expected ',' or '}')", path, key);
            break;
        }
    }
    skip_ws(&c);  // the header ends with spaces and a newline, nothing else
    if (c.p != c.end)
        return vit_fail("%s: %s: malformed .npy header (text after the dict)", path, key);
    if (!have_descr) return vit_fail("%s: %s: .npy header has no 'descr'", path, key);
    if (!have_fortran) return vit_fail("%s: %s: .npy header has no 'fortran_order'", path, key);
    if (!have_shape) return vit_fail("%s: %s: .npy header has no 'shape'", path, key);
    if (strcmp(descr, "<f4") != 0)
        return vit_fail("%s: %s: dtype '%s' not supported (float32 little-endian only)", path,
                        key, descr);
    if (fortran)
        return vit_fail("%s: %s: fortran_order arrays not supported (C order only)", path, key);
    return VIT_OK;
}

// ---------------------------------------------------------------------------------------
// Reading

// Reads exactly n bytes; a short read is reported by the caller as truncation.
static int read_exact(zip_file_t *zf, void *buf, zip_uint64_t n) {
    zip_uint64_t got = 0;
    while (got < n) {
        zip_int64_t r = zip_fread(zf, (char *)buf + got, n - got);
        if (r <= 0) return 0;
        got += (zip_uint64_t)r;
    }
    return 1;
}

static void free_arrays(NpzArray *a, int n) {
    for (int i = 0; i < n; i++) {
        free(a[i].name);
        free(a[i].data);
    }
    free(a);
}

// Reads member `zf` (already opened, `size` bytes uncompressed) into `out`.
static int read_member(const char *path, const char *key, zip_file_t *zf, zip_uint64_t size,
                       NpzArray *out) {
    unsigned char pre[12];
    if (size < 10 || !read_exact(zf, pre, 8))
        return vit_fail("%s: %s: truncated .npy (no header)", path, key);
    if (memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return vit_fail("%s: %s: not a .npy array (bad magic)", path, key);
    int major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0)
        return vit_fail("%s: %s: .npy version %d.%d not supported (1.0, 2.0, 3.0)", path, key,
                        major, minor);
    // Version 1 has a 2-byte header length; versions 2 and 3 a 4-byte one.
    zip_uint64_t lenbytes = major == 1 ? 2 : 4, hlen;
    if (size < 8 + lenbytes || !read_exact(zf, pre + 8, lenbytes))
        return vit_fail("%s: %s: truncated .npy (no header)", path, key);
    hlen = (zip_uint64_t)pre[8] | (zip_uint64_t)pre[9] << 8;
    if (major > 1) hlen |= (zip_uint64_t)pre[10] << 16 | (zip_uint64_t)pre[11] << 24;
    zip_uint64_t offset = 8 + lenbytes;
    if (hlen > NPY_MAX_HEADER)
        return vit_fail("%s: %s: .npy header of %" PRIu64 " bytes is implausibly large", path,
                        key, (uint64_t)hlen);
    if (hlen > size - offset)
        return vit_fail("%s: %s: truncated .npy (header runs past the end)", path, key);
    char *h = malloc(hlen + 1);
    if (!h) return vit_fail("%s: %s: out of memory", path, key);
    if (!read_exact(zf, h, hlen)) {
        free(h);
        return vit_fail("%s: %s: truncated .npy (header): %s", path, key, zip_file_strerror(zf));
    }
    offset += hlen;
    int ndim = 0;
    int64_t shape[NPY_MAX_DIMS];
    int rc = parse_header(path, key, h, hlen, &ndim, shape);
    free(h);
    if (rc != VIT_OK) return rc;

    // Count the elements; any product past SIZE_MAX/4 cannot match a real member.
    size_t count = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) count = 0;
    for (int d = 0; d < ndim && count; d++) {
        if ((uint64_t)shape[d] > (SIZE_MAX / sizeof(float)) / count)
            return vit_fail("%s: %s: shape too large (element count overflows)", path, key);
        count *= (size_t)shape[d];
    }
    zip_uint64_t have = size - offset;
    zip_uint64_t need = (zip_uint64_t)count * sizeof(float);
    if (need != have)
        return vit_fail("%s: %s: data has %" PRIu64 " bytes but the shape needs %" PRIu64
                        " (truncated or corrupt)", path, key, (uint64_t)have, (uint64_t)need);

    // `need` equals the member's size, which was bounded by the file size before this call.
    float *data = malloc(need ? (size_t)need : sizeof(float));
    if (!data) return vit_fail("%s: %s: out of memory for %" PRIu64 " bytes", path, key,
                               (uint64_t)need);
    if (!read_exact(zf, data, need)) {
        vit_fail("%s: %s: truncated or corrupt data: %s", path, key, zip_file_strerror(zf));
        free(data);
        return VIT_ERR;
    }
    // Reading past the end makes libzip verify the CRC of the member.
    char extra;
    zip_int64_t r = zip_fread(zf, &extra, 1);
    if (r != 0) {
        if (r < 0) vit_fail("%s: %s: corrupt member: %s", path, key, zip_file_strerror(zf));
        else vit_fail("%s: %s: member longer than its recorded size", path, key);
        free(data);
        return VIT_ERR;
    }
    out->ndim = ndim;
    for (int d = 0; d < NPY_MAX_DIMS; d++) out->shape[d] = d < ndim ? shape[d] : 0;
    out->count = count;
    out->data = data;
    return VIT_OK;
}

// Names go into one-line messages: control characters (even a newline) are legal in zip
// member names, so they are shown as '?'.
static char *printable(const char *s, size_t n) {
    char *out = malloc(n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++)
        out[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    out[n] = 0;
    return out;
}

// Reads member `i` into `out` (whose name is set as soon as it is known, for freeing).
static int read_entry(zip_t *za, zip_uint64_t i, const char *path, uint64_t file_size,
                      NpzArray *out) {
    zip_stat_t st;
    if (zip_stat_index(za, i, 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME) ||
        !(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_SIZE))
        return vit_fail("%s: member %" PRIu64 ": cannot stat: %s", path, (uint64_t)i,
                        zip_strerror(za));
    size_t len = strlen(st.name);
    char *label = printable(st.name, len);
    if (!label) return vit_fail("%s: out of memory", path);
    int rc = VIT_OK;
    if (len < 5 || strcmp(st.name + len - 4, ".npy") != 0) {
        rc = vit_fail("%s: %s: member is not a .npy array (name must end in .npy)", path, label);
        goto done;
    }
    label[len - 4] = 0;  // the key, as shown in messages
    out->name = strndup(st.name, len - 4);
    if (!out->name) {
        rc = vit_fail("%s: out of memory", path);
        goto done;
    }
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE) {
        rc = vit_fail("%s: %s: encrypted members not supported", path, label);
        goto done;
    }
    if (!(st.valid & ZIP_STAT_COMP_METHOD) ||
        (st.comp_method != ZIP_CM_STORE && st.comp_method != ZIP_CM_DEFLATE)) {
        rc = vit_fail("%s: %s: compression method %d not supported (stored or deflated only)",
                      path, label, (st.valid & ZIP_STAT_COMP_METHOD) ? st.comp_method : -1);
        goto done;
    }
    // Bound the claimed size by what the file can really hold, before allocating it.
    if (st.comp_size > file_size || (st.comp_method == ZIP_CM_STORE && st.size != st.comp_size) ||
        (st.comp_method == ZIP_CM_DEFLATE && st.size / DEFLATE_MAX_RATIO > st.comp_size + 1)) {
        rc = vit_fail("%s: %s: corrupt zip entry (recorded sizes %" PRIu64 "/%" PRIu64
                      " do not fit the file)", path, label, (uint64_t)st.size,
                      (uint64_t)st.comp_size);
        goto done;
    }
    zip_file_t *zf = zip_fopen_index(za, i, 0);
    if (!zf) {
        rc = vit_fail("%s: %s: cannot open member: %s", path, label, zip_strerror(za));
        goto done;
    }
    rc = read_member(path, label, zf, st.size, out);
    if (zip_fclose(zf) != 0 && rc == VIT_OK)
        rc = vit_fail("%s: %s: corrupt member (closing failed)", path, label);
done:
    free(label);
    return rc;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const NpzArray *const *)a)->name, (*(const NpzArray *const *)b)->name);
}

// Two members with one key would make npz_find ambiguous. Sorting keeps this O(n log n)
// even for an archive crafted with millions of members.
static int check_duplicates(const char *path, NpzArray *a, int n) {
    if (n < 2) return VIT_OK;
    NpzArray **ord = malloc((size_t)n * sizeof *ord);
    if (!ord) return vit_fail("%s: out of memory", path);
    for (int i = 0; i < n; i++) ord[i] = &a[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_name);
    int rc = VIT_OK;
    for (int i = 1; i < n && rc == VIT_OK; i++)
        if (!strcmp(ord[i - 1]->name, ord[i]->name)) {
            char *label = printable(ord[i]->name, strlen(ord[i]->name));
            rc = vit_fail("%s: %s: more than one array with this name", path,
                          label ? label : "?");
            free(label);
        }
    free(ord);
    return rc;
}

int npz_read(NpzFile *f, const char *path) {
    if (!f) return vit_fail("npz_read: no output");
    memset(f, 0, sizeof *f);
    if (!path || !*path) return vit_fail("npz_read: empty path");
    struct stat sb;
    if (stat(path, &sb) != 0) return vit_fail("%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))  // libzip needs to seek, and the size bounds every member
        return vit_fail("%s: not a regular file", path);
    uint64_t file_size = sb.st_size > 0 ? (uint64_t)sb.st_size : 0;

    int zerr = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY, &zerr);
    if (!za) {
        zip_error_t e;
        zip_error_init_with_code(&e, zerr);
        vit_fail("%s: cannot read as an .npz (zip) archive: %s", path, zip_error_strerror(&e));
        zip_error_fini(&e);
        return VIT_ERR;
    }
    zip_int64_t n = zip_get_num_entries(za, 0);
    // Each central directory entry takes at least 46 bytes of the file.
    if (n < 0 || n > INT_MAX || (uint64_t)n > file_size / 46 + 1) {
        zip_discard(za);
        return vit_fail("%s: corrupt zip archive (implausible entry count)", path);
    }
    NpzArray *arrays = n ? calloc((size_t)n, sizeof *arrays) : NULL;
    if (n && !arrays) {
        zip_discard(za);
        return vit_fail("%s: out of memory", path);
    }
    int rc = VIT_OK;
    for (zip_int64_t i = 0; i < n && rc == VIT_OK; i++)
        rc = read_entry(za, (zip_uint64_t)i, path, file_size, &arrays[i]);
    if (rc == VIT_OK) rc = check_duplicates(path, arrays, (int)n);
    zip_discard(za);  // read-only: nothing to write back
    if (rc != VIT_OK) {
        free_arrays(arrays, (int)n);  // calloc'd: untouched slots are NULL
        return rc;
    }
    f->arrays = arrays;
    f->count = (int)n;
    return VIT_OK;
}

const NpzArray *npz_find(const NpzFile *f, const char *name) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->count; i++)
        if (!strcmp(f->arrays[i].name, name)) return &f->arrays[i];
    return NULL;
}

void npz_free(NpzFile *f) {
    if (!f) return;
    free_arrays(f->arrays, f->count);
    memset(f, 0, sizeof *f);
}

// ---------------------------------------------------------------------------------------
// Writing. Each member is served to libzip by a callback that yields the .npy header and
// then the caller's floats, so no copy of the (possibly multi-GB) weights is made.

typedef struct {
    char header[512];
    size_t hlen;
    const unsigned char *data;
    zip_uint64_t dlen, pos;
    zip_error_t err;
} NpySource;

static zip_int64_t npy_source_cb(void *ud, void *buf, zip_uint64_t len, zip_source_cmd_t cmd) {
    NpySource *s = ud;
    switch (cmd) {
    case ZIP_SOURCE_OPEN:
        s->pos = 0;
        return 0;
    case ZIP_SOURCE_READ: {
        zip_uint64_t total = s->hlen + s->dlen, n = 0;
        unsigned char *out = buf;
        while (n < len && s->pos < total) {
            zip_uint64_t k;
            if (s->pos < s->hlen) {
                k = s->hlen - s->pos;
                if (k > len - n) k = len - n;
                memcpy(out + n, s->header + s->pos, (size_t)k);
            } else {
                k = total - s->pos;
                if (k > len - n) k = len - n;
                memcpy(out + n, s->data + (s->pos - s->hlen), (size_t)k);
            }
            n += k;
            s->pos += k;
        }
        return (zip_int64_t)n;
    }
    case ZIP_SOURCE_CLOSE:
        return 0;
    case ZIP_SOURCE_STAT: {
        zip_stat_t *st = ZIP_SOURCE_GET_ARGS(zip_stat_t, buf, len, &s->err);
        if (!st) return -1;
        zip_stat_init(st);
        st->valid = ZIP_STAT_SIZE;
        st->size = s->hlen + s->dlen;
        return sizeof *st;
    }
    case ZIP_SOURCE_ERROR:
        return zip_error_to_data(&s->err, buf, len);
    case ZIP_SOURCE_FREE:
        zip_error_fini(&s->err);
        free(s);
        return 0;
    case ZIP_SOURCE_SUPPORTS:
        return ZIP_SOURCE_SUPPORTS_READABLE;
    default:
        zip_error_set(&s->err, ZIP_ER_OPNOTSUPP, 0);
        return -1;
    }
}

// Version 1.0 header padded so the data starts 64-byte aligned, as numpy writes it.
static size_t npy_header(char *out, size_t cap, int ndim, const int64_t *shape) {
    char dict[400];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int d = 0; d < ndim; d++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%" PRId64, d ? ", " : "", shape[d]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, ndim == 1 ? ",), }" : "), }");
    size_t total = 10 + (size_t)n + 1;  // magic, version, length, dict, '\n'
    total = (total + 63) / 64 * 64;
    if (total > cap) return 0;
    size_t hl = total - 10;
    memcpy(out, NPY_MAGIC "\x01\x00", 8);
    out[8] = (char)(hl & 0xff);
    out[9] = (char)(hl >> 8);
    memcpy(out + 10, dict, (size_t)n);
    memset(out + 10 + n, ' ', total - 10 - (size_t)n - 1);
    out[total - 1] = '\n';
    return total;
}

// libzip writes no file for an archive without members; numpy writes this 22-byte one.
static int write_empty_zip(const char *tmp) {
    static const unsigned char eocd[22] = {0x50, 0x4b, 0x05, 0x06};
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return -1;
    int ok = fwrite(eocd, 1, sizeof eocd, fp) == sizeof eocd;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

static int check_entries(const char *path, const NpzEntry *e, int count) {
    if (count < 0 || (count > 0 && !e)) return vit_fail("%s: cannot save: no arrays given", path);
    for (int i = 0; i < count; i++) {
        const char *nm = e[i].name;
        if (!nm || !*nm) return vit_fail("%s: cannot save: array %d has no name", path, i);
        if (e[i].ndim < 0 || e[i].ndim > NPY_MAX_DIMS)
            return vit_fail("%s: %s: cannot save: %d dimensions (0 to %d)", path, nm, e[i].ndim,
                            NPY_MAX_DIMS);
        if (e[i].ndim > 0 && !e[i].shape)
            return vit_fail("%s: %s: cannot save: no shape", path, nm);
        size_t count_el = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            if (e[i].shape[d] < 0)
                return vit_fail("%s: %s: cannot save: negative dimension", path, nm);
            if (e[i].shape[d] && count_el > (SIZE_MAX / sizeof(float)) / (uint64_t)e[i].shape[d])
                return vit_fail("%s: %s: cannot save: shape too large", path, nm);
            count_el *= (size_t)e[i].shape[d];
        }
        if (count_el && !e[i].data) return vit_fail("%s: %s: cannot save: no data", path, nm);
    }
    return VIT_OK;
}

// Adds every entry to `za`; VIT_ERR names the entry.
static int add_entries(zip_t *za, const char *path, const NpzEntry *e, int count) {
    for (int i = 0; i < count; i++) {
        NpySource *s = calloc(1, sizeof *s);
        if (!s) return vit_fail("%s: cannot save: out of memory", path);
        zip_error_init(&s->err);
        s->hlen = npy_header(s->header, sizeof s->header, e[i].ndim, e[i].shape);
        size_t n = 1;
        for (int d = 0; d < e[i].ndim; d++) n *= (size_t)e[i].shape[d];
        s->data = (const unsigned char *)e[i].data;
        s->dlen = (zip_uint64_t)n * sizeof(float);
        zip_source_t *src = zip_source_function(za, npy_source_cb, s);
        if (!src) {
            zip_error_fini(&s->err);
            free(s);
            return vit_fail("%s: %s: cannot save: %s", path, e[i].name, zip_strerror(za));
        }
        size_t nl = strlen(e[i].name);
        char *mname = malloc(nl + 5);
        if (!mname) {
            zip_source_free(src);
            return vit_fail("%s: cannot save: out of memory", path);
        }
        memcpy(mname, e[i].name, nl);
        memcpy(mname + nl, ".npy", 5);
        zip_int64_t idx = zip_file_add(za, mname, src, ZIP_FL_ENC_UTF_8);
        free(mname);
        if (idx < 0) {
            zip_source_free(src);  // not taken over by the archive on failure
            return vit_fail("%s: %s: cannot save: %s", path, e[i].name, zip_strerror(za));
        }
        // Stored, like np.savez: the weights barely compress and loading stays fast.
        if (zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0) != 0)
            return vit_fail("%s: %s: cannot save: %s", path, e[i].name, zip_strerror(za));
    }
    return VIT_OK;
}

int npz_write(const char *path, const NpzEntry *entries, int count) {
    if (!path || !*path) return vit_fail("npz_write: empty path");
    if (check_entries(path, entries, count) != VIT_OK) return VIT_ERR;

    char *tmp = atomic_temp_path(path);
    if (!tmp) return vit_fail("%s: cannot save: out of memory", path);

    int rc = VIT_OK;
    if (count == 0) {
        if (write_empty_zip(tmp) != 0)
            rc = vit_fail("%s: cannot save: writing %s failed: %s", path, tmp, strerror(errno));
    } else {
        int zerr = 0;
        zip_t *za = zip_open(tmp, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
        if (!za) {
            zip_error_t ze;
            zip_error_init_with_code(&ze, zerr);
            rc = vit_fail("%s: cannot save: creating %s failed: %s", path, tmp,
                          zip_error_strerror(&ze));
            zip_error_fini(&ze);
        } else if (add_entries(za, path, entries, count) != VIT_OK) {
            rc = VIT_ERR;
            zip_discard(za);
        } else if (zip_close(za) != 0) {
            // The data is read and written here, so most I/O errors surface now.
            rc = vit_fail("%s: cannot save: writing %s failed: %s", path, tmp, zip_strerror(za));
            zip_discard(za);
        }
    }
    // zip_close writes through stdio without syncing; the data must be on disk before the
    // rename makes it visible under the real name.
    if (rc == VIT_OK) {
        int fd = open(tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0)
            rc = vit_fail("%s: cannot save: syncing %s failed: %s", path, tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    int renamed = 0;
    if (rc == VIT_OK) rc = atomic_commit(tmp, path, &renamed);
    if (!renamed) unlink(tmp);  // may not exist; the old file at `path` was never touched
    free(tmp);
    return rc;
}
