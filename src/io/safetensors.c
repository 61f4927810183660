// safetensors reader and writer. The reader trusts nothing in the file: the header is parsed
// by the strict JSON cursor of io/json.h and every offset, shape and byte count is checked
// before any tensor pointer is handed out. The writer reproduces the Python package's layout
// (tensor order, 8-byte padded header) and replaces the target atomically.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // fsync, fileno, O_DIRECTORY
#endif
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"
#include "util/atomic_file.h"
#include "util/status.h"

enum { ST_MAX_DIMS = 8 };
// The Python package refuses larger headers; refusing them here too keeps files portable.
#define ST_MAX_HEADER 100000000ull

static const char *const k_dtype_name[] = {
    [ST_F32] = "F32", [ST_F64] = "F64", [ST_I32] = "I32",   [ST_I64] = "I64",
    [ST_U8] = "U8",   [ST_BF16] = "BF16", [ST_F16] = "F16",
};
static const size_t k_dtype_size[] = {
    [ST_F32] = 4, [ST_F64] = 8, [ST_I32] = 4, [ST_I64] = 8, [ST_U8] = 1, [ST_BF16] = 2, [ST_F16] = 2,
};
// Python orders tensors by its Dtype enum (declaration order) descending, then by name;
// these are the relative positions of our dtypes in that enum.
static const int k_dtype_rank[] = {
    [ST_U8] = 0, [ST_F16] = 1, [ST_BF16] = 2, [ST_I32] = 3, [ST_F32] = 4, [ST_F64] = 5, [ST_I64] = 6,
};
enum { NUM_DTYPES = (int)(sizeof k_dtype_name / sizeof k_dtype_name[0]) };

static int dtype_ok(StDtype d) { return (int)d >= 0 && (int)d < NUM_DTYPES; }

size_t st_dtype_size(StDtype d) { return dtype_ok(d) ? k_dtype_size[d] : 0; }
const char *st_dtype_name(StDtype d) { return dtype_ok(d) ? k_dtype_name[d] : "?"; }

// ---------------------------------------------------------------------------------------
// Reader: the header's JSON schema
// ---------------------------------------------------------------------------------------

// One tensor's parsed header entry, before validation against the data section.
typedef struct {
    uint64_t begin, end;
    int index;
} Span;

typedef struct {
    StFile *f;
    Span *spans;
    int cap;
    int meta_cap;
} Build;

static int parse_metadata(JsonCursor *p, Build *b) {
    StFile *f = b->f;
    if (json_expect(p, '{', "for __metadata__ (it must be an object of strings)") != VIT_OK)
        return VIT_ERR;
    if (json_accept(p, '}')) return VIT_OK;
    for (;;) {
        char *k = NULL, *v = NULL;
        if (json_string(p, &k) != VIT_OK) return VIT_ERR;
        if (json_expect(p, ':', "after a metadata key") != VIT_OK) { free(k); return VIT_ERR; }
        json_skip_ws(p);
        if (json_peek(p) != '"') {
            int rc = json_fail(p, "metadata value of '%s' is not a string", k);
            free(k);
            return rc;
        }
        if (json_string(p, &v) != VIT_OK) { free(k); return VIT_ERR; }
        for (int j = 0; j < f->meta_count; j++)
            if (strcmp(f->meta_keys[j], k) == 0) {
                int rc = json_fail(p, "metadata key '%s' appears twice", k);
                free(k);
                free(v);
                return rc;
            }
        if (f->meta_count == b->meta_cap) {
            int nc = b->meta_cap ? b->meta_cap * 2 : 8;
            char **nk = realloc(f->meta_keys, (size_t)nc * sizeof *nk);
            if (nk) f->meta_keys = nk;
            char **nv = nk ? realloc(f->meta_values, (size_t)nc * sizeof *nv) : NULL;
            if (nv) f->meta_values = nv;
            if (!nk || !nv) { free(k); free(v); return json_fail(p, "out of memory"); }
            b->meta_cap = nc;
        }
        f->meta_keys[f->meta_count] = k;
        f->meta_values[f->meta_count] = v;
        f->meta_count++;
        if (json_accept(p, '}')) return VIT_OK;
        if (!json_accept(p, ',')) return json_fail(p, "expected ',' or '}' in __metadata__");
    }
}

static int parse_dtype(JsonCursor *p, StDtype *out, const char *tname) {
    size_t at = p->i;
    char *s = NULL;
    if (json_string(p, &s) != VIT_OK) return VIT_ERR;
    for (int d = 0; d < NUM_DTYPES; d++)
        if (strcmp(s, k_dtype_name[d]) == 0) {
            *out = (StDtype)d;
            free(s);
            return VIT_OK;
        }
    p->i = at;  // point the message at the value
    int rc = json_fail(p, "tensor '%s': unknown dtype '%.40s' (supported: F32, F64, I32, I64, U8, BF16,"
                          " F16)", tname, s);
    free(s);
    return rc;
}

// Parses {"dtype":..., "shape":[...], "data_offsets":[b,e]} into tensor slot `t`.
static int parse_tensor(JsonCursor *p, StTensor *t, Span *sp) {
    const char *name = t->name;
    if (json_expect(p, '{', "to open a tensor entry") != VIT_OK) return VIT_ERR;
    int have_dtype = 0, have_shape = 0, have_off = 0;
    json_skip_ws(p);
    if (json_peek(p) == '}') return json_fail(p, "tensor '%s': empty entry", name);
    for (;;) {
        char *key = NULL;
        if (json_string(p, &key) != VIT_OK) return VIT_ERR;
        if (json_expect(p, ':', "after a field name") != VIT_OK) { free(key); return VIT_ERR; }
        int rc = VIT_OK, *seen = NULL;
        if (strcmp(key, "dtype") == 0) {
            seen = &have_dtype;
            rc = parse_dtype(p, &t->dtype, name);
        } else if (strcmp(key, "shape") == 0) {
            seen = &have_shape;
            uint64_t dims[ST_MAX_DIMS];
            rc = json_uint_array(p, dims, ST_MAX_DIMS, &t->ndim, "shape");
            for (int k = 0; rc == VIT_OK && k < t->ndim; k++) t->shape[k] = (int64_t)dims[k];
        } else if (strcmp(key, "data_offsets") == 0) {
            seen = &have_off;
            uint64_t o[2];
            int n = 0;
            rc = json_uint_array(p, o, 2, &n, "data_offsets");
            if (rc == VIT_OK && n != 2)
                rc = json_fail(p, "tensor '%s': data_offsets needs 2 entries, has %d", name, n);
            if (rc == VIT_OK) {
                sp->begin = o[0];
                sp->end = o[1];
            }
        } else {
            rc = json_skip_value(p);
        }
        if (rc == VIT_OK && seen && (*seen)++)
            rc = json_fail(p, "tensor '%s': field '%s' appears twice", name, key);
        free(key);
        if (rc != VIT_OK) return VIT_ERR;
        if (json_accept(p, '}')) break;
        if (!json_accept(p, ',')) return json_fail(p, "expected ',' or '}' in tensor '%s'", name);
    }
    if (!have_dtype) return json_fail(p, "tensor '%s': no dtype", name);
    if (!have_shape) return json_fail(p, "tensor '%s': no shape", name);
    if (!have_off) return json_fail(p, "tensor '%s': no data_offsets", name);
    return VIT_OK;
}

static int parse_header(JsonCursor *p, Build *b) {
    StFile *f = b->f;
    int seen_meta = 0;
    if (json_expect(p, '{', "at the start of the header") != VIT_OK) return VIT_ERR;
    if (!json_accept(p, '}')) {
        for (;;) {
            char *key = NULL;
            if (json_string(p, &key) != VIT_OK) return VIT_ERR;
            if (json_expect(p, ':', "after a tensor name") != VIT_OK) { free(key); return VIT_ERR; }
            if (strcmp(key, "__metadata__") == 0) {
                free(key);
                if (seen_meta++) return json_fail(p, "__metadata__ appears twice");
                if (parse_metadata(p, b) != VIT_OK) return VIT_ERR;
            } else {
                if (f->count == b->cap) {
                    int nc = b->cap ? b->cap * 2 : 16;
                    StTensor *nt = realloc(f->tensors, (size_t)nc * sizeof *nt);
                    if (nt) f->tensors = nt;
                    Span *ns = nt ? realloc(b->spans, (size_t)nc * sizeof *ns) : NULL;
                    if (ns) b->spans = ns;
                    if (!nt || !ns) { free(key); return json_fail(p, "out of memory"); }
                    b->cap = nc;
                }
                StTensor *t = &f->tensors[f->count];
                memset(t, 0, sizeof *t);
                t->name = key;  // owned by f from here, freed by st_free
                b->spans[f->count].index = f->count;
                f->count++;
                if (parse_tensor(p, t, &b->spans[f->count - 1]) != VIT_OK) return VIT_ERR;
            }
            if (json_accept(p, '}')) break;
            if (!json_accept(p, ',')) {
                if (json_peek(p) < 0)
                    return json_fail(p, "unexpected end of header, expected ',' or '}'");
                return json_fail(p, "expected ',' or '}' after a header entry");
            }
        }
    }
    json_skip_ws(p);  // the Python writer pads with spaces
    if (p->i != p->n) return json_fail(p, "unexpected data after the JSON object");
    return VIT_OK;
}

// ---------------------------------------------------------------------------------------
// Reader: validation and file handling
// ---------------------------------------------------------------------------------------

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const StTensor *const *)a)->name, (*(const StTensor *const *)b)->name);
}

static int cmp_span(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index - y->index;
}

// Writes "[2,3,4]" into buf for messages.
static void shape_str(char *buf, size_t n, const StTensor *t) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int k = 0; k < t->ndim && o < n; k++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, k ? "," : "", t->shape[k]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static int validate(const char *path, Build *b, const unsigned char *data, uint64_t data_len) {
    StFile *f = b->f;
    for (int i = 0; i < f->count; i++) {
        StTensor *t = &f->tensors[i];
        const Span *sp = &b->spans[i];
        // Product of the dimensions; any zero dimension makes the tensor empty.
        uint64_t elems = 1;
        int zero = 0;
        for (int k = 0; k < t->ndim; k++) zero |= t->shape[k] == 0;
        for (int k = 0; k < t->ndim && !zero; k++) {
            uint64_t d = (uint64_t)t->shape[k];
            if (elems > UINT64_MAX / d) {
                elems = UINT64_MAX;  // saturate: reported as too large below
                break;
            }
            elems *= d;
        }
        if (zero) elems = 0;
        size_t es = k_dtype_size[t->dtype];
        char sh[128];
        shape_str(sh, sizeof sh, t);
        if (elems > (uint64_t)SIZE_MAX / es)
            return vit_fail("%s: tensor '%s': shape %s is too large", path, t->name, sh);
        uint64_t need = elems * es;
        if (sp->end < sp->begin)
            return vit_fail("%s: tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] end before they begin",
                            path, t->name, sp->begin, sp->end);
        if (sp->end > data_len)
            return vit_fail("%s: tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64
                            "] lie outside the data section (%" PRIu64 " bytes)",
                            path, t->name, sp->begin, sp->end, data_len);
        if (sp->end - sp->begin != need)
            return vit_fail("%s: tensor '%s': shape %s of %s needs %" PRIu64
                            " bytes but data_offsets [%" PRIu64 ",%" PRIu64 "] hold %" PRIu64,
                            path, t->name, sh, k_dtype_name[t->dtype], need, sp->begin, sp->end,
                            sp->end - sp->begin);
        t->nbytes = (size_t)need;
        t->data = data + sp->begin;
    }

    // Names must be unique for st_find to mean anything.
    if (f->count > 1) {
        const StTensor **v = malloc((size_t)f->count * sizeof *v);
        if (!v) return vit_fail("%s: out of memory", path);
        for (int i = 0; i < f->count; i++) v[i] = &f->tensors[i];
        qsort(v, (size_t)f->count, sizeof *v, cmp_tensor_name);
        for (int i = 1; i < f->count; i++)
            if (strcmp(v[i - 1]->name, v[i]->name) == 0) {
                int rc = vit_fail("%s: tensor '%s' appears twice in the header", path, v[i]->name);
                free(v);
                return rc;
            }
        free(v);
    }

    // Like the Python reader: tensors tile the data section exactly, no overlap, no gap.
    if (f->count > 1) qsort(b->spans, (size_t)f->count, sizeof *b->spans, cmp_span);
    uint64_t pos = 0;
    for (int i = 0; i < f->count; i++) {
        const Span *sp = &b->spans[i];
        const char *name = f->tensors[sp->index].name;
        if (sp->begin < pos)
            return vit_fail("%s: tensor '%s' overlaps '%s' (data_offsets [%" PRIu64 ",%" PRIu64 "])",
                            path, name, f->tensors[b->spans[i - 1].index].name, sp->begin, sp->end);
        if (sp->begin > pos)
            return vit_fail("%s: tensor '%s' starts at byte %" PRIu64 " of the data but the bytes from %" PRIu64
                            " belong to no tensor",
                            path, name, sp->begin, pos);
        pos = sp->end;
    }
    if (pos != data_len)
        return vit_fail("%s: the data section holds %" PRIu64 " bytes but the tensors cover %" PRIu64,
                        path, data_len, pos);
    return VIT_OK;
}

static int read_whole_file(const char *path, unsigned char **out, size_t *size) {
    *out = NULL;
    *size = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return vit_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        int e = errno;
        fclose(fp);
        return vit_fail("%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        fclose(fp);
        return vit_fail("%s: not a regular file", path);
    }
    if (st.st_size < 0 || (uintmax_t)st.st_size > SIZE_MAX) {
        fclose(fp);
        return vit_fail("%s: file too large for this machine", path);
    }
    size_t n = (size_t)st.st_size, got = 0;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(fp);
        return vit_fail("%s: out of memory reading %zu bytes", path, n);
    }
    while (got < n) {
        size_t want = n - got > ((size_t)1 << 30) ? ((size_t)1 << 30) : n - got;
        size_t r = fread(buf + got, 1, want, fp);
        got += r;
        if (r < want) break;
    }
    if (got < n) {
        int e = ferror(fp) ? errno : 0;
        free(buf);
        fclose(fp);
        if (e) return vit_fail("%s: read error: %s", path, strerror(e));
        return vit_fail("%s: file shrank while reading (%zu of %zu bytes)", path, got, n);
    }
    fclose(fp);
    *out = buf;
    *size = n;
    return VIT_OK;
}

int st_read(StFile *f, const char *path) {
    if (!f) return vit_fail("st_read: no output");
    memset(f, 0, sizeof *f);
    if (!path) return vit_fail("st_read: no path");
    unsigned char *buf;
    size_t size;
    if (read_whole_file(path, &buf, &size) != VIT_OK) return VIT_ERR;
    f->buffer = buf;
    f->size = size;
    if (size < 8) {
        st_free(f);
        return vit_fail("%s: not a safetensors file: %zu bytes, too short for the 8-byte header length",
                        path, size);
    }
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | buf[k];
    if (hlen > ST_MAX_HEADER) {
        st_free(f);
        return vit_fail("%s: not a safetensors file: header length %" PRIu64
                        " exceeds the %llu-byte limit",
                        path, hlen, ST_MAX_HEADER);
    }
    if (hlen > size - 8) {
        st_free(f);
        return vit_fail("%s: not a safetensors file: header length %" PRIu64
                        " exceeds the %zu bytes that follow it",
                        path, hlen, size - 8);
    }
    if (hlen < 2) {
        st_free(f);
        return vit_fail("%s: not a safetensors file: header length %" PRIu64 " is too short for JSON",
                        path, hlen);
    }
    // The header must be valid UTF-8 for Python to read it, and names end up in messages.
    JsonCursor p;
    if (json_init(&p, buf + 8, (size_t)hlen, path, "safetensors header") != VIT_OK) {
        st_free(f);
        return VIT_ERR;
    }
    Build b = {.f = f};
    int rc = parse_header(&p, &b);
    if (rc == VIT_OK) rc = validate(path, &b, buf + 8 + hlen, size - 8 - hlen);
    free(b.spans);
    if (rc != VIT_OK) st_free(f);
    return rc;
}

const StTensor *st_find(const StFile *f, const char *name) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

void st_free(StFile *f) {
    if (!f) return;
    for (int i = 0; i < f->count; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->meta_count; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->buffer);
    memset(f, 0, sizeof *f);
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} WTensor;

struct StWriter {
    WTensor *t;
    int n, cap;
    char **mk, **mv;
    int mn, mcap;
};

StWriter *st_writer_new(void) {
    StWriter *w = calloc(1, sizeof *w);
    if (!w) vit_fail("st_writer_new: out of memory");
    return w;
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->mn; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->mk);
    free(w->mv);
    free(w);
}

int st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                  const void *data) {
    if (!w) return vit_fail("st_writer_add: no writer");
    if (!name || !*name) return vit_fail("safetensors: tensor name is empty");
    if (strcmp(name, "__metadata__") == 0)
        return vit_fail("safetensors: '__metadata__' is reserved and cannot name a tensor");
    if (!json_utf8_valid(name)) return vit_fail("safetensors: tensor name is not valid UTF-8");
    if (!dtype_ok(dtype)) return vit_fail("safetensors: tensor '%s': bad dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return vit_fail("safetensors: tensor '%s': %d dimensions (0..%d supported)", name, ndim,
                        ST_MAX_DIMS);
    if (ndim > 0 && !shape) return vit_fail("safetensors: tensor '%s': no shape", name);
    size_t elems = 1;
    int zero = 0;
    for (int k = 0; k < ndim; k++) {
        if (shape[k] < 0)
            return vit_fail("safetensors: tensor '%s': negative dimension %" PRId64, name, shape[k]);
        zero |= shape[k] == 0;
    }
    for (int k = 0; k < ndim && !zero; k++) {
        if ((uint64_t)shape[k] > SIZE_MAX / elems)
            return vit_fail("safetensors: tensor '%s': shape too large", name);
        elems *= (size_t)shape[k];
    }
    if (zero) elems = 0;
    if (elems > SIZE_MAX / k_dtype_size[dtype])
        return vit_fail("safetensors: tensor '%s': shape too large", name);
    size_t nbytes = elems * k_dtype_size[dtype];
    if (nbytes && !data) return vit_fail("safetensors: tensor '%s': no data", name);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return vit_fail("safetensors: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        int nc = w->cap ? w->cap * 2 : 16;
        WTensor *nt = realloc(w->t, (size_t)nc * sizeof *nt);
        if (!nt) return vit_fail("safetensors: out of memory");
        w->t = nt;
        w->cap = nc;
    }
    WTensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return vit_fail("safetensors: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int k = 0; k < ndim; k++) t->shape[k] = shape[k];
    t->nbytes = nbytes;
    t->data = data;
    w->n++;
    return VIT_OK;
}

int st_writer_meta(StWriter *w, const char *key, const char *value) {
    if (!w) return vit_fail("st_writer_meta: no writer");
    if (!key || !value) return vit_fail("safetensors: metadata key or value missing");
    if (!json_utf8_valid(key) || !json_utf8_valid(value))
        return vit_fail("safetensors: metadata '%s' is not valid UTF-8", key);
    char *v = strdup(value);
    if (!v) return vit_fail("safetensors: out of memory");
    for (int i = 0; i < w->mn; i++)
        if (strcmp(w->mk[i], key) == 0) {  // later values win, as in a Python dict
            free(w->mv[i]);
            w->mv[i] = v;
            return VIT_OK;
        }
    if (w->mn == w->mcap) {
        int nc = w->mcap ? w->mcap * 2 : 8;
        char **nk = realloc(w->mk, (size_t)nc * sizeof *nk);
        if (nk) w->mk = nk;
        char **nv = nk ? realloc(w->mv, (size_t)nc * sizeof *nv) : NULL;
        if (nv) w->mv = nv;
        if (!nk || !nv) {
            free(v);
            return vit_fail("safetensors: out of memory");
        }
        w->mcap = nc;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return vit_fail("safetensors: out of memory");
    }
    w->mk[w->mn] = k;
    w->mv[w->mn] = v;
    w->mn++;
    return VIT_OK;
}

static int cmp_wtensor(const void *a, const void *b) {
    const WTensor *x = *(const WTensor *const *)a, *y = *(const WTensor *const *)b;
    if (k_dtype_rank[x->dtype] != k_dtype_rank[y->dtype])
        return k_dtype_rank[x->dtype] > k_dtype_rank[y->dtype] ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(**(const char *const *const *)a, **(const char *const *const *)b);
}

static int write_all(FILE *fp, const void *p, size_t n) {
    const unsigned char *c = p;
    while (n) {
        size_t k = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        if (fwrite(c, 1, k, fp) != k) return VIT_ERR;
        c += k;
        n -= k;
    }
    return VIT_OK;
}

// Builds the padded header; *order receives the tensors in file order.
static int build_header(const StWriter *w, JsonBuf *h, const WTensor ***order) {
    const WTensor **ord = malloc((size_t)(w->n ? w->n : 1) * sizeof *ord);
    char ***keys = malloc((size_t)(w->mn ? w->mn : 1) * sizeof *keys);
    if (!ord || !keys) {
        free(ord);
        free(keys);
        return VIT_ERR;
    }
    for (int i = 0; i < w->n; i++) ord[i] = &w->t[i];
    qsort(ord, (size_t)w->n, sizeof *ord, cmp_wtensor);
    // Python's metadata order is hash order; sorted keys make our files reproducible.
    for (int i = 0; i < w->mn; i++) keys[i] = &w->mk[i];
    qsort(keys, (size_t)w->mn, sizeof *keys, cmp_str_ptr);

    json_puts(h, "{");
    if (w->mn) {
        json_puts(h, "\"__metadata__\":{");
        for (int i = 0; i < w->mn; i++) {
            size_t j = (size_t)(keys[i] - w->mk);
            if (i) json_puts(h, ",");
            json_put_string(h, w->mk[j]);
            json_puts(h, ":");
            json_put_string(h, w->mv[j]);
        }
        json_puts(h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const WTensor *t = ord[i];
        if (w->mn || i) json_puts(h, ",");
        json_put_string(h, t->name);
        json_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", k_dtype_name[t->dtype]);
        for (int k = 0; k < t->ndim; k++) json_printf(h, "%s%" PRId64, k ? "," : "", t->shape[k]);
        json_printf(h, "],\"data_offsets\":[%" PRIu64 ",", off);
        off += t->nbytes;
        json_printf(h, "%" PRIu64 "]}", off);
    }
    json_puts(h, "}");
    // Spaces up to a multiple of 8 so the data (and every 8-byte dtype) starts aligned.
    while (!h->oom && h->n % 8) json_puts(h, " ");
    free(keys);
    if (h->oom) {
        free(ord);
        return VIT_ERR;
    }
    *order = ord;
    return VIT_OK;
}

int st_writer_save(StWriter *w, const char *path) {
    if (!w) return vit_fail("st_writer_save: no writer");
    if (!path || !*path) return vit_fail("st_writer_save: empty path");
    uint64_t total = 0;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].nbytes > UINT64_MAX - total)
            return vit_fail("%s: cannot save: tensors too large", path);
        total += w->t[i].nbytes;
    }

    JsonBuf h = {0};
    const WTensor **ord = NULL;
    if (build_header(w, &h, &ord) != VIT_OK) {
        free(h.p);
        return vit_fail("%s: cannot save: out of memory", path);
    }
    if (h.n > ST_MAX_HEADER) {
        free(h.p);
        free(ord);
        return vit_fail("%s: cannot save: header of %zu bytes exceeds the %llu-byte limit", path,
                        h.n, ST_MAX_HEADER);
    }

    char *tmp = atomic_temp_path(path);
    if (!tmp) {
        free(h.p);
        free(ord);
        return vit_fail("%s: cannot save: out of memory", path);
    }

    int rc = VIT_OK, created = 0;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        rc = vit_fail("%s: cannot create temporary file %s: %s", path, tmp, strerror(errno));
        goto done;
    }
    created = 1;
    unsigned char len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (unsigned char)((uint64_t)h.n >> (8 * k));
    int ok = write_all(fp, len8, 8) == VIT_OK && write_all(fp, h.p, h.n) == VIT_OK;
    for (int i = 0; ok && i < w->n; i++)
        if (ord[i]->nbytes) ok = write_all(fp, ord[i]->data, ord[i]->nbytes) == VIT_OK;
    if (!ok) {
        rc = vit_fail("%s: cannot save: writing %s failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    // Data must be on disk before the rename makes it visible under the real name.
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        rc = vit_fail("%s: cannot save: flushing %s failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    int cerr = fclose(fp);
    fp = NULL;
    if (cerr != 0) {
        rc = vit_fail("%s: cannot save: closing %s failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    int renamed;
    rc = atomic_commit(tmp, path, &renamed);
    if (renamed) created = 0;  // the temp name no longer exists

done:
    if (fp) fclose(fp);
    if (created) unlink(tmp);
    free(tmp);
    free(h.p);
    free(ord);
    return rc;
}
