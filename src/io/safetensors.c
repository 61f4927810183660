// safetensors reader and writer. The reader trusts nothing in the file: the header is parsed
// by a small strict JSON parser and every offset, shape and byte count is checked before any
// tensor pointer is handed out. The writer reproduces the Python package's layout (tensor
// order, 8-byte padded header) and replaces the target atomically.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // fsync, fileno, O_DIRECTORY
#endif
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/status.h"

enum { ST_MAX_DIMS = 8, JSON_MAX_DEPTH = 64 };
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

// Strict UTF-8 check (no overlongs, no surrogates, nothing past U+10FFFF): the header must be
// valid UTF-8 for Python to read it, and names end up in messages.
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return i;
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += len;
    }
    return n;
}

static int utf8_ok(const char *s) { return utf8_invalid_at((const unsigned char *)s, strlen(s)) == strlen(s); }

// ---------------------------------------------------------------------------------------
// Reader: JSON parsing
// ---------------------------------------------------------------------------------------

typedef struct {
    const char *path;
    const unsigned char *s;  // header text; not NUL-terminated
    size_t n, i;
} Parser;

__attribute__((format(printf, 2, 3))) static int perr(Parser *p, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return vit_fail("%s: bad safetensors header: %s (at byte %zu of the JSON)", p->path, msg, p->i);
}

static void skip_ws(Parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static int peek(const Parser *p) { return p->i < p->n ? p->s[p->i] : -1; }

static int expect(Parser *p, char c, const char *context) {
    skip_ws(p);
    if (peek(p) != c) {
        if (peek(p) < 0) return perr(p, "unexpected end of header, expected '%c' %s", c, context);
        return perr(p, "expected '%c' %s", c, context);
    }
    p->i++;
    return VIT_OK;
}

static int hex4(Parser *p, unsigned *out) {
    if (p->n - p->i < 4) return perr(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int c = p->s[p->i + k], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return perr(p, "bad \\u escape");
        v = v * 16 + (unsigned)d;
    }
    p->i += 4;
    *out = v;
    return VIT_OK;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Parses a JSON string into a malloc'd C string (*out NULL when only validating).
static int parse_string(Parser *p, char **out) {
    if (out) *out = NULL;
    skip_ws(p);
    if (peek(p) < 0) return perr(p, "unexpected end of header, expected a string");
    if (peek(p) != '"') return perr(p, "expected a string");
    p->i++;
    // Escapes never expand, so the raw span bounds the decoded length.
    size_t end = p->i;
    while (end < p->n && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) return perr(p, "unterminated string");
    char *buf = out ? malloc(end - p->i + 1) : NULL;
    if (out && !buf) return perr(p, "out of memory");
    size_t o = 0;
    char tmp[4];
    while (p->s[p->i] != '"') {
        unsigned c = p->s[p->i];
        if (c < 0x20) {
            free(buf);
            return perr(p, "control character 0x%02x in string", c);
        }
        if (c != '\\') {
            if (buf) buf[o] = (char)c;
            o++;
            p->i++;
            continue;
        }
        p->i++;
        unsigned e = p->s[p->i++], cp;
        char simple = 0;
        switch (e) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u':
            if (hex4(p, &cp) != VIT_OK) { free(buf); return VIT_ERR; }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf);
                return perr(p, "lone low surrogate \\u%04x in string", cp);
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->n - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') {
                    free(buf);
                    return perr(p, "high surrogate \\u%04x not followed by a low one", cp);
                }
                p->i += 2;
                if (hex4(p, &lo) != VIT_OK) { free(buf); return VIT_ERR; }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return perr(p, "high surrogate \\u%04x not followed by a low one", cp);
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) {
                free(buf);
                return perr(p, "\\u0000 in string");  // would silently cut a C string
            }
            {
                size_t k = put_utf8(tmp, cp);
                if (buf) memcpy(buf + o, tmp, k);
                o += k;
            }
            continue;
        default:
            p->i--;
            free(buf);
            return perr(p, "bad escape '\\%c' in string", e >= 0x20 && e < 0x7f ? (char)e : '?');
        }
        if (buf) buf[o] = simple;
        o++;
    }
    p->i++;  // closing quote
    if (buf) {
        buf[o] = '\0';
        *out = buf;
    }
    return VIT_OK;
}

// A non-negative JSON integer that fits int64 (offsets and dimensions).
static int parse_uint(Parser *p, uint64_t *out, const char *what) {
    skip_ws(p);
    int c = peek(p);
    if (c == '-') return perr(p, "%s must not be negative", what);
    if (c < '0' || c > '9') return perr(p, "%s: expected an integer", what);
    if (c == '0' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9')
        return perr(p, "%s: leading zero in integer", what);
    uint64_t v = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        unsigned d = p->s[p->i] - '0';
        if (v > ((uint64_t)INT64_MAX - d) / 10) return perr(p, "%s: integer too large", what);
        v = v * 10 + d;
        p->i++;
    }
    c = peek(p);
    if (c == '.' || c == 'e' || c == 'E') return perr(p, "%s must be an integer", what);
    *out = v;
    return VIT_OK;
}

static int parse_uint_array(Parser *p, uint64_t *vals, int maxn, int *count, const char *what) {
    *count = 0;
    skip_ws(p);
    if (peek(p) != '[') return perr(p, "%s must be an array of integers", what);
    p->i++;
    skip_ws(p);
    if (peek(p) == ']') {
        p->i++;
        return VIT_OK;
    }
    for (;;) {
        if (*count == maxn) return perr(p, "%s has more than %d entries", what, maxn);
        if (parse_uint(p, &vals[*count], what) != VIT_OK) return VIT_ERR;
        (*count)++;
        skip_ws(p);
        int c = peek(p);
        p->i++;
        if (c == ']') return VIT_OK;
        if (c != ',') {
            p->i--;
            return perr(p, "expected ',' or ']' in %s", what);
        }
    }
}

// Validates and skips a value of a field we do not use (newer writers may add some).
static int skip_value(Parser *p, int depth) {
    if (depth > JSON_MAX_DEPTH) return perr(p, "JSON nested too deeply");
    skip_ws(p);
    int c = peek(p);
    if (c == '"') return parse_string(p, NULL);
    if (c == '{' || c == '[') {
        const char close = c == '{' ? '}' : ']';
        p->i++;
        skip_ws(p);
        if (peek(p) == close) {
            p->i++;
            return VIT_OK;
        }
        for (;;) {
            if (c == '{') {
                if (parse_string(p, NULL) != VIT_OK) return VIT_ERR;
                if (expect(p, ':', "after an object key") != VIT_OK) return VIT_ERR;
            }
            if (skip_value(p, depth + 1) != VIT_OK) return VIT_ERR;
            skip_ws(p);
            int d = peek(p);
            if (d == close) {
                p->i++;
                return VIT_OK;
            }
            if (d != ',') return perr(p, "expected ',' or '%c'", close);
            p->i++;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {  // full JSON number grammar
        if (c == '-') p->i++;
        if (peek(p) == '0') p->i++;
        else if (peek(p) >= '1' && peek(p) <= '9')
            while (peek(p) >= '0' && peek(p) <= '9') p->i++;
        else return perr(p, "bad number");
        if (peek(p) == '.') {
            p->i++;
            if (!(peek(p) >= '0' && peek(p) <= '9')) return perr(p, "bad number");
            while (peek(p) >= '0' && peek(p) <= '9') p->i++;
        }
        if (peek(p) == 'e' || peek(p) == 'E') {
            p->i++;
            if (peek(p) == '+' || peek(p) == '-') p->i++;
            if (!(peek(p) >= '0' && peek(p) <= '9')) return perr(p, "bad number");
            while (peek(p) >= '0' && peek(p) <= '9') p->i++;
        }
        return VIT_OK;
    }
    static const char *const lits[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(lits[k]);
        if (p->n - p->i >= len && memcmp(p->s + p->i, lits[k], len) == 0) {
            p->i += len;
            return VIT_OK;
        }
    }
    if (c < 0) return perr(p, "unexpected end of header, expected a value");
    return perr(p, "unexpected character '%c'", c >= 0x20 && c < 0x7f ? c : '?');
}

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

static int parse_metadata(Parser *p, Build *b) {
    StFile *f = b->f;
    if (expect(p, '{', "for __metadata__ (it must be an object of strings)") != VIT_OK)
        return VIT_ERR;
    skip_ws(p);
    if (peek(p) == '}') {
        p->i++;
        return VIT_OK;
    }
    for (;;) {
        char *k = NULL, *v = NULL;
        if (parse_string(p, &k) != VIT_OK) return VIT_ERR;
        if (expect(p, ':', "after a metadata key") != VIT_OK) { free(k); return VIT_ERR; }
        skip_ws(p);
        if (peek(p) != '"') {
            int rc = perr(p, "metadata value of '%s' is not a string", k);
            free(k);
            return rc;
        }
        if (parse_string(p, &v) != VIT_OK) { free(k); return VIT_ERR; }
        for (int j = 0; j < f->meta_count; j++)
            if (strcmp(f->meta_keys[j], k) == 0) {
                int rc = perr(p, "metadata key '%s' appears twice", k);
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
            if (!nk || !nv) { free(k); free(v); return perr(p, "out of memory"); }
            b->meta_cap = nc;
        }
        f->meta_keys[f->meta_count] = k;
        f->meta_values[f->meta_count] = v;
        f->meta_count++;
        skip_ws(p);
        int c = peek(p);
        if (c == '}') { p->i++; return VIT_OK; }
        if (c != ',') return perr(p, "expected ',' or '}' in __metadata__");
        p->i++;
    }
}

static int parse_dtype(Parser *p, StDtype *out, const char *tname) {
    size_t at = p->i;
    char *s = NULL;
    if (parse_string(p, &s) != VIT_OK) return VIT_ERR;
    for (int d = 0; d < NUM_DTYPES; d++)
        if (strcmp(s, k_dtype_name[d]) == 0) {
            *out = (StDtype)d;
            free(s);
            return VIT_OK;
        }
    p->i = at;
    int rc = perr(p, "tensor '%s': unknown dtype '%.40s' (supported: F32, F64, I32, I64, U8, BF16, F16)",
                  tname, s);
    free(s);
    return rc;
}

// Parses {"dtype":..., "shape":[...], "data_offsets":[b,e]} into tensor slot `t`.
static int parse_tensor(Parser *p, StTensor *t, Span *sp) {
    const char *name = t->name;
    if (expect(p, '{', "to open a tensor entry") != VIT_OK) return VIT_ERR;
    int have_dtype = 0, have_shape = 0, have_off = 0;
    skip_ws(p);
    if (peek(p) == '}') return perr(p, "tensor '%s': empty entry", name);
    for (;;) {
        char *key = NULL;
        if (parse_string(p, &key) != VIT_OK) return VIT_ERR;
        if (expect(p, ':', "after a field name") != VIT_OK) { free(key); return VIT_ERR; }
        int rc = VIT_OK, *seen = NULL;
        if (strcmp(key, "dtype") == 0) {
            seen = &have_dtype;
            rc = parse_dtype(p, &t->dtype, name);
        } else if (strcmp(key, "shape") == 0) {
            seen = &have_shape;
            uint64_t dims[ST_MAX_DIMS];
            rc = parse_uint_array(p, dims, ST_MAX_DIMS, &t->ndim, "shape");
            for (int k = 0; rc == VIT_OK && k < t->ndim; k++) t->shape[k] = (int64_t)dims[k];
        } else if (strcmp(key, "data_offsets") == 0) {
            seen = &have_off;
            uint64_t o[2];
            int n = 0;
            rc = parse_uint_array(p, o, 2, &n, "data_offsets");
            if (rc == VIT_OK && n != 2)
                rc = perr(p, "tensor '%s': data_offsets needs 2 entries, has %d", name, n);
            if (rc == VIT_OK) {
                sp->begin = o[0];
                sp->end = o[1];
            }
        } else {
            rc = skip_value(p, 1);
        }
        if (rc == VIT_OK && seen && (*seen)++) rc = perr(p, "tensor '%s': field '%s' appears twice", name, key);
        free(key);
        if (rc != VIT_OK) return VIT_ERR;
        skip_ws(p);
        int c = peek(p);
        if (c == '}') { p->i++; break; }
        if (c != ',') return perr(p, "expected ',' or '}' in tensor '%s'", name);
        p->i++;
    }
    if (!have_dtype) return perr(p, "tensor '%s': no dtype", name);
    if (!have_shape) return perr(p, "tensor '%s': no shape", name);
    if (!have_off) return perr(p, "tensor '%s': no data_offsets", name);
    return VIT_OK;
}

static int parse_header(Parser *p, Build *b) {
    StFile *f = b->f;
    int seen_meta = 0;
    if (expect(p, '{', "at the start of the header") != VIT_OK) return VIT_ERR;
    skip_ws(p);
    if (peek(p) == '}') {
        p->i++;
    } else {
        for (;;) {
            char *key = NULL;
            if (parse_string(p, &key) != VIT_OK) return VIT_ERR;
            if (expect(p, ':', "after a tensor name") != VIT_OK) { free(key); return VIT_ERR; }
            if (strcmp(key, "__metadata__") == 0) {
                free(key);
                if (seen_meta++) return perr(p, "__metadata__ appears twice");
                if (parse_metadata(p, b) != VIT_OK) return VIT_ERR;
            } else {
                if (f->count == b->cap) {
                    int nc = b->cap ? b->cap * 2 : 16;
                    StTensor *nt = realloc(f->tensors, (size_t)nc * sizeof *nt);
                    if (nt) f->tensors = nt;
                    Span *ns = nt ? realloc(b->spans, (size_t)nc * sizeof *ns) : NULL;
                    if (ns) b->spans = ns;
                    if (!nt || !ns) { free(key); return perr(p, "out of memory"); }
                    b->cap = nc;
                }
                StTensor *t = &f->tensors[f->count];
                memset(t, 0, sizeof *t);
                t->name = key;  // owned by f from here, freed by st_free
                b->spans[f->count].index = f->count;
                f->count++;
                if (parse_tensor(p, t, &b->spans[f->count - 1]) != VIT_OK) return VIT_ERR;
            }
            skip_ws(p);
            int c = peek(p);
            if (c == '}') { p->i++; break; }
            if (c != ',') {
                if (c < 0) return perr(p, "unexpected end of header, expected ',' or '}'");
                return perr(p, "expected ',' or '}' after a header entry");
            }
            p->i++;
        }
    }
    skip_ws(p);  // the Python writer pads with spaces
    if (p->i != p->n) return perr(p, "unexpected data after the JSON object");
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
    size_t bad = utf8_invalid_at(buf + 8, (size_t)hlen);
    if (bad != hlen) {
        st_free(f);
        return vit_fail("%s: bad safetensors header: invalid UTF-8 at byte %zu of the JSON", path, bad);
    }

    Parser p = {.path = path, .s = buf + 8, .n = (size_t)hlen, .i = 0};
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
    if (!utf8_ok(name)) return vit_fail("safetensors: tensor name is not valid UTF-8");
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
    if (!utf8_ok(key) || !utf8_ok(value))
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

// Growable byte string for the header.
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Str;

static void s_put(Str *s, const char *src, size_t n) {
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t nc = s->cap ? s->cap : 256;
        while (nc < s->n + n + 1) nc *= 2;
        char *np = realloc(s->p, nc);
        if (!np) {
            s->oom = 1;
            return;
        }
        s->p = np;
        s->cap = nc;
    }
    memcpy(s->p + s->n, src, n);
    s->n += n;
}

static void s_puts(Str *s, const char *z) { s_put(s, z, strlen(z)); }

static void s_printf(Str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_printf(Str *s, const char *fmt, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (k > 0) s_put(s, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
}

// JSON string with the same escapes serde_json (the Python package's encoder) produces.
static void s_json_string(Str *s, const char *z) {
    s_puts(s, "\"");
    for (const unsigned char *c = (const unsigned char *)z; *c; c++) {
        switch (*c) {
        case '"': s_puts(s, "\\\""); break;
        case '\\': s_puts(s, "\\\\"); break;
        case '\b': s_puts(s, "\\b"); break;
        case '\f': s_puts(s, "\\f"); break;
        case '\n': s_puts(s, "\\n"); break;
        case '\r': s_puts(s, "\\r"); break;
        case '\t': s_puts(s, "\\t"); break;
        default:
            if (*c < 0x20) s_printf(s, "\\u%04x", *c);
            else s_put(s, (const char *)c, 1);
        }
    }
    s_puts(s, "\"");
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
static int build_header(const StWriter *w, Str *h, const WTensor ***order) {
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

    s_puts(h, "{");
    if (w->mn) {
        s_puts(h, "\"__metadata__\":{");
        for (int i = 0; i < w->mn; i++) {
            size_t j = (size_t)(keys[i] - w->mk);
            if (i) s_puts(h, ",");
            s_json_string(h, w->mk[j]);
            s_puts(h, ":");
            s_json_string(h, w->mv[j]);
        }
        s_puts(h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const WTensor *t = ord[i];
        if (w->mn || i) s_puts(h, ",");
        s_json_string(h, t->name);
        s_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", k_dtype_name[t->dtype]);
        for (int k = 0; k < t->ndim; k++) s_printf(h, "%s%" PRId64, k ? "," : "", t->shape[k]);
        s_printf(h, "],\"data_offsets\":[%" PRIu64 ",", off);
        off += t->nbytes;
        s_printf(h, "%" PRIu64 "]}", off);
    }
    s_puts(h, "}");
    // Spaces up to a multiple of 8 so the data (and every 8-byte dtype) starts aligned.
    while (!h->oom && h->n % 8) s_puts(h, " ");
    free(keys);
    if (h->oom) {
        free(ord);
        return VIT_ERR;
    }
    *order = ord;
    return VIT_OK;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
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

    Str h = {0};
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

    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!tmp) {
        free(h.p);
        free(ord);
        return vit_fail("%s: cannot save: out of memory", path);
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());

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
    if (rename(tmp, path) != 0) {
        rc = vit_fail("%s: cannot save: renaming %s over it failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    created = 0;  // the temp name no longer exists
    // Make the rename itself durable. Some file systems cannot fsync a folder (EINVAL).
    char *dir = dir_of(path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL))
            rc = vit_fail("%s: saved, but syncing its folder %s failed: %s", path, dir,
                          strerror(errno));
        if (dfd >= 0) close(dfd);
        free(dir);
    }

done:
    if (fp) fclose(fp);
    if (created) unlink(tmp);
    free(tmp);
    free(h.p);
    free(ord);
    return rc;
}
