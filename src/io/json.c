// Strict JSON for file headers: a cursor-driven reader that checks every byte and a writer
// that escapes strings the way serde_json does. See json.h.
#include "io/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/status.h"

// Deep enough for any real header; bounds the recursion of json_skip_value on hostile input.
enum { JSON_MAX_DEPTH = 64 };

// Offset of the first byte that breaks strict UTF-8, or n when all of it is valid.
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

int json_utf8_valid(const char *z) {
    size_t n = strlen(z);
    return utf8_invalid_at((const unsigned char *)z, n) == n;
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

int json_init(JsonCursor *p, const void *s, size_t n, const char *path, const char *what) {
    *p = (JsonCursor){.s = s, .n = n, .i = 0, .path = path, .what = what};
    size_t bad = utf8_invalid_at(p->s, n);
    if (bad != n) return vit_fail("%s: bad %s: invalid UTF-8 at byte %zu of the JSON", path, what, bad);
    return VIT_OK;
}

int json_fail(const JsonCursor *p, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return vit_fail("%s: bad %s: %s (at byte %zu of the JSON)", p->path, p->what, msg, p->i);
}

void json_skip_ws(JsonCursor *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

int json_peek(const JsonCursor *p) { return p->i < p->n ? p->s[p->i] : -1; }

int json_accept(JsonCursor *p, char ch) {
    json_skip_ws(p);
    if (json_peek(p) != ch) return 0;
    p->i++;
    return 1;
}

int json_expect(JsonCursor *p, char ch, const char *context) {
    if (json_accept(p, ch)) return VIT_OK;
    if (json_peek(p) < 0) return json_fail(p, "unexpected end of JSON, expected '%c' %s", ch, context);
    return json_fail(p, "expected '%c' %s", ch, context);
}

static int hex4(JsonCursor *p, unsigned *out) {
    if (p->n - p->i < 4) return json_fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int c = p->s[p->i + k], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return json_fail(p, "bad \\u escape");
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

int json_string(JsonCursor *p, char **out) {
    if (out) *out = NULL;
    json_skip_ws(p);
    if (json_peek(p) < 0) return json_fail(p, "unexpected end of JSON, expected a string");
    if (json_peek(p) != '"') return json_fail(p, "expected a string");
    p->i++;
    // Escapes never expand, so the raw span bounds the decoded length.
    size_t end = p->i;
    while (end < p->n && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) return json_fail(p, "unterminated string");
    char *buf = out ? malloc(end - p->i + 1) : NULL;
    if (out && !buf) return json_fail(p, "out of memory");
    size_t o = 0;
    char tmp[4];
    while (p->s[p->i] != '"') {
        unsigned c = p->s[p->i];
        if (c < 0x20) {
            free(buf);
            return json_fail(p, "control character 0x%02x in string", c);
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
                return json_fail(p, "lone low surrogate \\u%04x in string", cp);
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->n - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') {
                    free(buf);
                    return json_fail(p, "high surrogate \\u%04x not followed by a low one", cp);
                }
                p->i += 2;
                if (hex4(p, &lo) != VIT_OK) { free(buf); return VIT_ERR; }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return json_fail(p, "high surrogate \\u%04x not followed by a low one", cp);
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) {
                free(buf);
                return json_fail(p, "\\u0000 in string");
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
            return json_fail(p, "bad escape '\\%c' in string", e >= 0x20 && e < 0x7f ? (char)e : '?');
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

// A non-negative integer that fits int64.
static int json_uint(JsonCursor *p, uint64_t *out, const char *what) {
    json_skip_ws(p);
    int c = json_peek(p);
    if (c == '-') return json_fail(p, "%s must not be negative", what);
    if (c < '0' || c > '9') return json_fail(p, "%s: expected an integer", what);
    if (c == '0' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9')
        return json_fail(p, "%s: leading zero in integer", what);
    uint64_t v = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        unsigned d = p->s[p->i] - '0';
        if (v > ((uint64_t)INT64_MAX - d) / 10) return json_fail(p, "%s: integer too large", what);
        v = v * 10 + d;
        p->i++;
    }
    c = json_peek(p);
    if (c == '.' || c == 'e' || c == 'E') return json_fail(p, "%s must be an integer", what);
    *out = v;
    return VIT_OK;
}

int json_uint_array(JsonCursor *p, uint64_t *vals, int maxn, int *count, const char *what) {
    *count = 0;
    if (!json_accept(p, '[')) return json_fail(p, "%s must be an array of integers", what);
    if (json_accept(p, ']')) return VIT_OK;
    for (;;) {
        if (*count == maxn) return json_fail(p, "%s has more than %d entries", what, maxn);
        if (json_uint(p, &vals[*count], what) != VIT_OK) return VIT_ERR;
        (*count)++;
        if (json_accept(p, ']')) return VIT_OK;
        if (!json_accept(p, ',')) return json_fail(p, "expected ',' or ']' in %s", what);
    }
}

static int skip_value(JsonCursor *p, int depth) {
    if (depth > JSON_MAX_DEPTH) return json_fail(p, "JSON nested too deeply");
    json_skip_ws(p);
    int c = json_peek(p);
    if (c == '"') return json_string(p, NULL);
    if (c == '{' || c == '[') {
        const char close = c == '{' ? '}' : ']';
        p->i++;
        if (json_accept(p, close)) return VIT_OK;
        for (;;) {
            if (c == '{') {
                if (json_string(p, NULL) != VIT_OK) return VIT_ERR;
                if (json_expect(p, ':', "after an object key") != VIT_OK) return VIT_ERR;
            }
            if (skip_value(p, depth + 1) != VIT_OK) return VIT_ERR;
            if (json_accept(p, close)) return VIT_OK;
            if (!json_accept(p, ',')) return json_fail(p, "expected ',' or '%c'", close);
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {  // full JSON number grammar
        if (c == '-') p->i++;
        if (json_peek(p) == '0') p->i++;
        else if (json_peek(p) >= '1' && json_peek(p) <= '9')
            while (json_peek(p) >= '0' && json_peek(p) <= '9') p->i++;
        else return json_fail(p, "bad number");
        if (json_peek(p) == '.') {
            p->i++;
            if (!(json_peek(p) >= '0' && json_peek(p) <= '9')) return json_fail(p, "bad number");
            while (json_peek(p) >= '0' && json_peek(p) <= '9') p->i++;
        }
        if (json_peek(p) == 'e' || json_peek(p) == 'E') {
            p->i++;
            if (json_peek(p) == '+' || json_peek(p) == '-') p->i++;
            if (!(json_peek(p) >= '0' && json_peek(p) <= '9')) return json_fail(p, "bad number");
            while (json_peek(p) >= '0' && json_peek(p) <= '9') p->i++;
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
    if (c < 0) return json_fail(p, "unexpected end of JSON, expected a value");
    return json_fail(p, "unexpected character '%c'", c >= 0x20 && c < 0x7f ? c : '?');
}

int json_skip_value(JsonCursor *p) { return skip_value(p, 1); }

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

// Makes room for n more bytes (plus one, so a vsnprintf terminator always fits).
static int reserve(JsonBuf *b, size_t n) {
    if (b->oom) return 0;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return 0;
        }
        b->p = np;
        b->cap = nc;
    }
    return 1;
}

static void json_put(JsonBuf *b, const void *src, size_t n) {
    if (!reserve(b, n)) return;
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

void json_puts(JsonBuf *b, const char *z) { json_put(b, z, strlen(z)); }

void json_printf(JsonBuf *b, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k > 0 && reserve(b, (size_t)k)) {
        vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap2);
        b->n += (size_t)k;
    }
    va_end(ap2);
}

void json_put_string(JsonBuf *b, const char *z) {
    json_puts(b, "\"");
    for (const unsigned char *c = (const unsigned char *)z; *c; c++) {
        switch (*c) {
        case '"': json_puts(b, "\\\""); break;
        case '\\': json_puts(b, "\\\\"); break;
        case '\b': json_puts(b, "\\b"); break;
        case '\f': json_puts(b, "\\f"); break;
        case '\n': json_puts(b, "\\n"); break;
        case '\r': json_puts(b, "\\r"); break;
        case '\t': json_puts(b, "\\t"); break;
        default:
            if (*c < 0x20) json_printf(b, "\\u%04x", *c);
            else json_put(b, c, 1);
        }
    }
    json_puts(b, "\"");
}
