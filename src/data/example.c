// tf.train.Example records. Reading uses a small hand decoder of the protobuf wire format:
// it walks the whole message (so malformed input is rejected, not half-read) but copies
// nothing, and image/encoded is returned as a pointer into the record. Building uses the
// protobuf-c code generated from proto/example.proto.
//
// Wire format reminders: a field is a varint tag (field number << 3 | wire type) followed by
// a varint (type 0), 8 bytes (1), a varint length and that many bytes (2) or 4 bytes (5).
// Example{features=1} -> Features{map<string,Feature> feature=1}, each map entry a message
// {key=1, value=2} -> Feature{oneof bytes_list=1, float_list=2, int64_list=3} -> *List{value=1}.
#include "example.h"

#include <stdlib.h>
#include <string.h>

#include "example.pb-c.h"
#include "util/status.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };
enum { KIND_NONE = 0, KIND_BYTES = 1, KIND_FLOAT = 2, KIND_INT64 = 3 };

typedef struct {
    const uint8_t *base;  // start of the record, for byte offsets in messages
    const char *where;
} Ctx;

typedef struct {
    uint32_t num;
    int wt;
    uint64_t v;            // WT_VARINT, WT_I64, WT_I32
    const uint8_t *s;      // WT_LEN payload
    size_t n;
    const uint8_t *at;     // where the field starts
} Field;

// What one Feature holds, as far as the image fields need: its kind (the last oneof member
// seen wins, as in protobuf's merge rules) and the first value of its list.
typedef struct {
    int kind, has_first;
    const uint8_t *bytes;
    size_t bytes_len;
    int64_t i64;
} FeatureState;

static int malformed(const Ctx *c, const uint8_t *at, const char *what) {
    return vit_fail("%s: malformed Example (protobuf) at byte %td: %s", c->where, at - c->base, what);
}

// Up to 10 bytes; like protobuf's own parsers, bits beyond 64 in the 10th byte are dropped.
static int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end) return 0;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 1;
        }
    }
    return 0;  // an 11th byte would be needed
}

// Reads the next field of [*pp, end): 1 with *f, 0 at the end, VIT_ERR if malformed.
static int next_field(const Ctx *c, const uint8_t **pp, const uint8_t *end, Field *f) {
    const uint8_t *p = *pp;
    memset(f, 0, sizeof *f);  // every member defined on every path (and for -Wmaybe-uninitialized)
    if (p >= end) return 0;
    f->at = p;
    uint64_t tag;
    if (!read_varint(&p, end, &tag)) return malformed(c, f->at, "truncated field tag");
    if (tag > UINT32_MAX || (tag >> 3) == 0) return malformed(c, f->at, "invalid field number");
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    switch (f->wt) {
    case WT_VARINT:
        if (!read_varint(&p, end, &f->v)) return malformed(c, f->at, "truncated varint");
        break;
    case WT_I64:
    case WT_I32: {
        size_t w = f->wt == WT_I64 ? 8 : 4;
        if ((size_t)(end - p) < w) return malformed(c, f->at, "truncated fixed-width value");
        f->v = 0;
        for (size_t i = w; i-- > 0;) f->v = (f->v << 8) | p[i];
        p += w;
        break;
    }
    case WT_LEN: {
        uint64_t n;
        if (!read_varint(&p, end, &n)) return malformed(c, f->at, "truncated length");
        if (n > (uint64_t)(end - p)) return malformed(c, f->at, "length runs past the end");
        f->s = p;
        f->n = (size_t)n;
        p += n;
        break;
    }
    default:  // 3/4 are groups, which no Example uses; 6/7 do not exist
        return malformed(c, f->at, "unsupported wire type");
    }
    *pp = p;
    return 1;
}

static int wrong_type(const Ctx *c, const Field *f) {
    return malformed(c, f->at, "known field with the wrong wire type");
}

// The list inside a Feature (field `kind` of the oneof). Numeric lists may be packed
// (one length-delimited run, as TensorFlow writes them) or unpacked (one field per value).
static int parse_list(const Ctx *c, const uint8_t *p, const uint8_t *end, int kind, FeatureState *fs) {
    Field f;
    int rc;
    while ((rc = next_field(c, &p, end, &f)) == 1) {
        if (f.num != 1) continue;  // unknown field: skipped, its framing already checked
        if (kind == KIND_BYTES) {
            if (f.wt != WT_LEN) return wrong_type(c, &f);
            if (!fs->has_first) {
                fs->has_first = 1;
                fs->bytes = f.s;
                fs->bytes_len = f.n;
            }
        } else if (kind == KIND_FLOAT) {
            if (f.wt == WT_LEN) {
                if (f.n % 4) return malformed(c, f.at, "packed float list not a multiple of 4 bytes");
                if (f.n) fs->has_first = 1;
            } else if (f.wt == WT_I32) {
                fs->has_first = 1;
            } else {
                return wrong_type(c, &f);
            }
        } else {  // KIND_INT64
            if (f.wt == WT_LEN) {
                const uint8_t *q = f.s, *qe = f.s + f.n;
                while (q < qe) {
                    uint64_t v;
                    if (!read_varint(&q, qe, &v)) return malformed(c, q, "truncated packed int64");
                    if (!fs->has_first) {
                        fs->has_first = 1;
                        fs->i64 = (int64_t)v;  // two's complement, as protobuf encodes int64
                    }
                }
            } else if (f.wt == WT_VARINT) {
                if (!fs->has_first) {
                    fs->has_first = 1;
                    fs->i64 = (int64_t)f.v;
                }
            } else {
                return wrong_type(c, &f);
            }
        }
    }
    return rc;
}

static int parse_feature(const Ctx *c, const uint8_t *p, const uint8_t *end, FeatureState *fs) {
    Field f;
    int rc;
    while ((rc = next_field(c, &p, end, &f)) == 1) {
        if (f.num > 3) continue;
        if (f.wt != WT_LEN) return wrong_type(c, &f);
        // A different oneof member replaces the previous one; the same one merges (lists append).
        if (fs->kind != (int)f.num) memset(fs, 0, sizeof *fs);
        fs->kind = (int)f.num;
        if (parse_list(c, f.s, f.s + f.n, fs->kind, fs) != VIT_OK) return VIT_ERR;
    }
    return rc;
}

typedef struct {
    int have_encoded, have_label;
    FeatureState encoded, label;
} Wanted;

static int key_is(const uint8_t *k, size_t n, const char *want) {
    size_t m = strlen(want);
    return n == m && memcmp(k, want, m) == 0;
}

// One map entry {key=1, value=2}. Entries with the same key: the last one wins.
static int parse_entry(const Ctx *c, const uint8_t *p, const uint8_t *end, Wanted *w) {
    const uint8_t *key = NULL;
    size_t key_len = 0;
    FeatureState fs = {0};
    Field f;
    int rc;
    while ((rc = next_field(c, &p, end, &f)) == 1) {
        if (f.num == 1) {
            if (f.wt != WT_LEN) return wrong_type(c, &f);
            key = f.s;
            key_len = f.n;
        } else if (f.num == 2) {
            if (f.wt != WT_LEN) return wrong_type(c, &f);
            if (parse_feature(c, f.s, f.s + f.n, &fs) != VIT_OK) return VIT_ERR;
        }
    }
    if (rc != 0) return rc;
    if (!key) return VIT_OK;  // key "" is nothing we look for
    if (key_is(key, key_len, "image/encoded")) {
        w->have_encoded = 1;
        w->encoded = fs;
    } else if (key_is(key, key_len, "image/class/label")) {
        w->have_label = 1;
        w->label = fs;
    }
    return VIT_OK;
}

static int parse_features(const Ctx *c, const uint8_t *p, const uint8_t *end, Wanted *w) {
    Field f;
    int rc;
    while ((rc = next_field(c, &p, end, &f)) == 1) {
        if (f.num != 1) continue;
        if (f.wt != WT_LEN) return wrong_type(c, &f);
        if (parse_entry(c, f.s, f.s + f.n, w) != VIT_OK) return VIT_ERR;
    }
    return rc;
}

static const char *kind_name(int kind) {
    switch (kind) {
    case KIND_BYTES: return "a bytes_list";
    case KIND_FLOAT: return "a float_list";
    case KIND_INT64: return "an int64_list";
    default: return "an empty Feature";
    }
}

int example_parse_image(const uint8_t *data, size_t len, ExampleImage *out, const char *where) {
    Ctx c = {data, where ? where : "Example"};
    Wanted w = {0};
    const uint8_t *p = data, *end = data + len;
    Field f;
    int rc;
    memset(out, 0, sizeof *out);
    if (!data && len) return malformed(&c, data, "no data");
    // A repeated `features` field merges into one Features, so entries simply accumulate.
    while ((rc = next_field(&c, &p, end, &f)) == 1) {
        if (f.num != 1) continue;
        if (f.wt != WT_LEN) return wrong_type(&c, &f);
        if (parse_features(&c, f.s, f.s + f.n, &w) != VIT_OK) return VIT_ERR;
    }
    if (rc != 0) return VIT_ERR;
    if (!w.have_encoded) return vit_fail("%s: Example has no image/encoded", c.where);
    if (w.encoded.kind != KIND_BYTES)
        return vit_fail("%s: image/encoded is %s, not a bytes_list", c.where,
                        kind_name(w.encoded.kind));
    if (!w.encoded.has_first) return vit_fail("%s: image/encoded has no value", c.where);
    if (!w.have_label) return vit_fail("%s: Example has no image/class/label", c.where);
    if (w.label.kind != KIND_INT64)
        return vit_fail("%s: image/class/label is %s, not an int64_list", c.where,
                        kind_name(w.label.kind));
    if (!w.label.has_first) return vit_fail("%s: image/class/label has no value", c.where);
    out->encoded = w.encoded.bytes;
    out->encoded_len = w.encoded.bytes_len;
    out->label = w.label.i64;
    return VIT_OK;
}

// ---- building, with protobuf-c ----

enum { N_FEATURES = 10 };

typedef struct {
    Tensorflow__Features__FeatureEntry entry[N_FEATURES];
    Tensorflow__Features__FeatureEntry *entries[N_FEATURES];
    Tensorflow__Feature feature[N_FEATURES];
    Tensorflow__BytesList bytes[N_FEATURES];
    Tensorflow__Int64List ints[N_FEATURES];
    ProtobufCBinaryData bin[N_FEATURES];
    int64_t val[N_FEATURES];
    size_t n;
} Builder;

static void add_bytes(Builder *b, const char *key, const void *data, size_t len) {
    size_t i = b->n++;
    tensorflow__features__feature_entry__init(&b->entry[i]);
    tensorflow__feature__init(&b->feature[i]);
    tensorflow__bytes_list__init(&b->bytes[i]);
    b->bin[i].data = (uint8_t *)data;  // protobuf-c only reads it while packing
    b->bin[i].len = len;
    b->bytes[i].n_value = 1;
    b->bytes[i].value = &b->bin[i];
    b->feature[i].kind_case = TENSORFLOW__FEATURE__KIND_BYTES_LIST;
    b->feature[i].bytes_list = &b->bytes[i];
    b->entry[i].key = (char *)key;
    b->entry[i].value = &b->feature[i];
    b->entries[i] = &b->entry[i];
}

static void add_str(Builder *b, const char *key, const char *s) {
    if (!s) s = "";
    add_bytes(b, key, s, strlen(s));
}

static void add_int(Builder *b, const char *key, int64_t v) {
    size_t i = b->n++;
    tensorflow__features__feature_entry__init(&b->entry[i]);
    tensorflow__feature__init(&b->feature[i]);
    tensorflow__int64_list__init(&b->ints[i]);
    b->val[i] = v;
    b->ints[i].n_value = 1;
    b->ints[i].value = &b->val[i];
    b->feature[i].kind_case = TENSORFLOW__FEATURE__KIND_INT64_LIST;
    b->feature[i].int64_list = &b->ints[i];
    b->entry[i].key = (char *)key;
    b->entry[i].value = &b->feature[i];
    b->entries[i] = &b->entry[i];
}

int example_build_image(const ExampleFields *f, uint8_t **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (!f->encoded && f->encoded_len)
        return vit_fail("example_build_image: image/encoded is NULL with length %zu", f->encoded_len);
    Builder b;
    b.n = 0;
    // The feature order of TensorFlow's ImageNet preprocessing script.
    add_int(&b, "image/height", f->height);
    add_int(&b, "image/width", f->width);
    add_str(&b, "image/colorspace", "RGB");
    add_int(&b, "image/channels", f->channels);
    add_int(&b, "image/class/label", f->label);
    add_str(&b, "image/class/synset", f->synset);
    add_str(&b, "image/class/text", f->text);
    add_str(&b, "image/format", "JPEG");
    add_str(&b, "image/filename", f->filename);
    add_bytes(&b, "image/encoded", f->encoded ? (const void *)f->encoded : "", f->encoded_len);

    Tensorflow__Features features = TENSORFLOW__FEATURES__INIT;
    features.n_feature = b.n;
    features.feature = b.entries;
    Tensorflow__Example ex = TENSORFLOW__EXAMPLE__INIT;
    ex.features = &features;

    size_t n = tensorflow__example__get_packed_size(&ex);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return vit_fail("example_build_image: out of memory for %zu bytes", n);
    if (tensorflow__example__pack(&ex, buf) != n) {
        free(buf);
        return vit_fail("example_build_image: protobuf-c packed an unexpected size");
    }
    *out = buf;
    *len = n;
    return VIT_OK;
}
