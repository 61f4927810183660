// IDX reader. gzread reads gzip and plain files alike, so one path handles both layouts of
// the Fashion-MNIST distribution. The header is never trusted for allocation sizes: buffers
// grow with the bytes actually read, so a lying header cannot request terabytes.
#include "data/idx.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "util/status.h"
#include "util/fs.h"

enum { IDX_MAX_SIDE = 4096 };
#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static char *join(const char *dir, const char *prefix, const char *suffix) {
    size_t n = strlen(dir) + strlen(prefix) + strlen(suffix) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s%s", dir, prefix, suffix);
    return p;
}

// Picks <dir>/<prefix><suffix> or its .gz sibling; *out is malloc'd.
static int find_file(char **out, const char *dir, const char *prefix, const char *suffix) {
    *out = NULL;
    char *plain = join(dir, prefix, suffix);
    if (!plain) return vit_fail("%s: out of memory", dir);
    if (path_is_file(plain)) {
        *out = plain;
        return VIT_OK;
    }
    size_t n = strlen(plain) + 4;
    char *gz = malloc(n);
    if (!gz) {
        free(plain);
        return vit_fail("%s: out of memory", dir);
    }
    snprintf(gz, n, "%s.gz", plain);
    free(plain);
    if (path_is_file(gz)) {
        *out = gz;
        return VIT_OK;
    }
    free(gz);
    return vit_fail("%s: no %s%s[.gz] here", dir, prefix, suffix);
}

// zlib prefixes its messages with the path we already print; drop the repeat.
static const char *strip_path(const char *msg, const char *path) {
    size_t n = strlen(path);
    if (strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') return msg + n + 2;
    return msg;
}

// A gzip stream cut short reads as a short count with Z_BUF_ERROR set (not as -1): the
// pending zlib error, if any, is the only sign.
static const char *gz_note(gzFile g, const char *path) {
    int errnum = Z_OK;
    const char *msg = gzerror(g, &errnum);
    return errnum != Z_OK && msg && *msg ? strip_path(msg, path) : NULL;
}

static int read_fail(gzFile g, const char *path) {
    int errnum = Z_OK;
    const char *msg = gzerror(g, &errnum);
    msg = msg && *msg ? strip_path(msg, path) : "unknown error";
    if (errnum == Z_ERRNO) return vit_fail("%s: read error: %s", path, msg);
    return vit_fail("%s: corrupt gzip data: %s", path, msg);
}

// Reads up to want bytes; returns the count read (short only at end of file) or -1.
static int64_t read_exact(gzFile g, unsigned char *dst, uint64_t want) {
    uint64_t got = 0;
    while (got < want) {
        uint64_t left = want - got;
        unsigned chunk = left > (1u << 30) ? (1u << 30) : (unsigned)left;  // gzread takes unsigned
        int r = gzread(g, dst + got, chunk);
        if (r < 0) return -1;
        if (r == 0) break;
        got += (uint64_t)r;
    }
    return (int64_t)got;
}

// Reads the payload after the header: `item` bytes per record, `count` records announced.
// Grows the buffer as data arrives (doubling, capped at the announced size).
static int read_payload(gzFile g, const char *path, uint64_t count, uint64_t item,
                        const char *what, uint32_t rows, uint32_t cols, uint8_t **out) {
    *out = NULL;
    const uint64_t total = count * item;  // count < 2^31, item <= 2^24: no overflow
    uint64_t cap = total < (1u << 20) ? total : (1u << 20), have = 0;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) return vit_fail("%s: out of memory", path);
    for (;;) {
        int64_t r = read_exact(g, buf + have, cap - have);
        if (r < 0) {
            free(buf);
            return read_fail(g, path);
        }
        have += (uint64_t)r;
        if (have < cap) break;  // end of file before the buffer filled
        if (cap == total) break;
        uint64_t ncap = cap * 2 < total ? cap * 2 : total;
        if (ncap > SIZE_MAX) {
            free(buf);
            return vit_fail("%s: %" PRIu64 " bytes of %s do not fit in memory", path, total, what);
        }
        uint8_t *nb = realloc(buf, (size_t)ncap);
        if (!nb) {
            free(buf);
            return vit_fail("%s: out of memory for %" PRIu64 " bytes of %s", path, total, what);
        }
        buf = nb;
        cap = ncap;
    }
    if (have < total) {
        const char *note = gz_note(g, path);
        free(buf);
        if (rows)
            return vit_fail("%s: truncated: header announces %" PRIu64 " %s of %" PRIu32 "x%" PRIu32
                            ", file ends after %" PRIu64 " of them%s%s%s",
                            path, count, what, rows, cols, have / item, note ? " (" : "",
                            note ? note : "", note ? ")" : "");
        return vit_fail("%s: truncated: header announces %" PRIu64 " %s, file ends after %" PRIu64
                        " of them%s%s%s",
                        path, count, what, have / item, note ? " (" : "", note ? note : "",
                        note ? ")" : "");
    }
    // Exactly the announced data: anything after it means the header is wrong.
    // Also drives zlib through the gzip trailer, so a bad CRC or a missing trailer shows up.
    unsigned char extra;
    int r = gzread(g, &extra, 1);
    const char *note = r == 0 ? gz_note(g, path) : NULL;
    if (note) {
        free(buf);
        return vit_fail("%s: damaged gzip stream after the %" PRIu64 " %s: %s", path, count, what,
                        note);
    }
    if (r != 0) {
        free(buf);
        if (r < 0) return read_fail(g, path);
        return vit_fail("%s: trailing data after the %" PRIu64 " %s the header announces", path,
                        count, what);
    }
    *out = buf;
    return VIT_OK;
}

static gzFile open_gz(const char *path) {
    errno = 0;
    gzFile g = gzopen(path, "rb");
    if (!g) {
        vit_fail("%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    gzbuffer(g, 1u << 18);  // fewer syscalls than the 8 KiB default on a 47 MB file
    return g;
}

static int read_header(gzFile g, const char *path, unsigned char *hdr, unsigned n,
                       uint32_t magic, const char *kind) {
    int64_t r = read_exact(g, hdr, n);
    if (r < 0) return read_fail(g, path);
    if ((uint64_t)r < n) {
        const char *note = gz_note(g, path);
        return vit_fail("%s: truncated header (%" PRId64 " of %u bytes)%s%s%s", path, r, n,
                        note ? " (" : "", note ? note : "", note ? ")" : "");
    }
    uint32_t m = be32(hdr);
    if (m != magic)
        return vit_fail("%s: bad magic 0x%08" PRIx32 ", expected 0x%08" PRIx32 " (an IDX %s file)",
                        path, m, magic, kind);
    return VIT_OK;
}

static int load_images(IdxSplit *s, const char *path) {
    gzFile g = open_gz(path);
    if (!g) return VIT_ERR;
    unsigned char h[16];
    int rc = read_header(g, path, h, sizeof h, IDX_MAGIC_IMAGES, "image");
    if (rc == VIT_OK) {
        uint32_t count = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
        if (count < 1 || count > INT32_MAX)
            rc = vit_fail("%s: bad image count %" PRIu32 " (must be 1..%d)", path, count, INT32_MAX);
        else if (rows < 1 || rows > IDX_MAX_SIDE || cols < 1 || cols > IDX_MAX_SIDE)
            rc = vit_fail("%s: bad image size %" PRIu32 "x%" PRIu32 " (rows and cols must be 1..%d)",
                          path, rows, cols, IDX_MAX_SIDE);
        else
            rc = read_payload(g, path, count, (uint64_t)rows * cols, "images", rows, cols,
                              &s->images);
        if (rc == VIT_OK) {
            s->count = (int)count;
            s->rows = (int)rows;
            s->cols = (int)cols;
        }
    }
    gzclose(g);
    return rc;
}

static int load_labels(const char *path, uint8_t **labels, int *count) {
    gzFile g = open_gz(path);
    if (!g) return VIT_ERR;
    unsigned char h[8];
    int rc = read_header(g, path, h, sizeof h, IDX_MAGIC_LABELS, "label");
    if (rc == VIT_OK) {
        uint32_t n = be32(h + 4);
        if (n < 1 || n > INT32_MAX)
            rc = vit_fail("%s: bad label count %" PRIu32 " (must be 1..%d)", path, n, INT32_MAX);
        else
            rc = read_payload(g, path, n, 1, "labels", 0, 0, labels);
        if (rc == VIT_OK) *count = (int)n;
    }
    gzclose(g);
    return rc;
}

int idx_load_split(IdxSplit *s, const char *dir, const char *prefix) {
    if (!s) return vit_fail("idx_load_split: no output");
    memset(s, 0, sizeof *s);
    if (!dir || !*dir) return vit_fail("idx: empty data directory name");
    if (!prefix || !*prefix) return vit_fail("%s: empty IDX split name", dir);
    struct stat st;
    if (stat(dir, &st) != 0) return vit_fail("%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return vit_fail("%s: not a directory", dir);

    char *ipath = NULL, *lpath = NULL;
    uint8_t *labels = NULL;
    int nlabels = 0;
    int rc = find_file(&ipath, dir, prefix, "-images-idx3-ubyte");
    if (rc == VIT_OK) rc = find_file(&lpath, dir, prefix, "-labels-idx1-ubyte");
    if (rc == VIT_OK) rc = load_images(s, ipath);
    if (rc == VIT_OK) rc = load_labels(lpath, &labels, &nlabels);
    if (rc == VIT_OK && nlabels != s->count)
        rc = vit_fail("%s holds %d images but %s holds %d labels", ipath, s->count, lpath, nlabels);
    if (rc == VIT_OK) {
        s->labels = labels;
    } else {
        free(labels);
        idx_free(s);
    }
    free(ipath);
    free(lpath);
    return rc;
}

int idx_dir_looks_like_idx(const char *dir) {
    if (!dir || !*dir) return 0;
    char *p = join(dir, "train", "-images-idx3-ubyte");
    char *q = join(dir, "train", "-images-idx3-ubyte.gz");
    int ok = (p && path_is_file(p)) || (q && path_is_file(q));
    free(p);
    free(q);
    return ok;
}

void idx_free(IdxSplit *s) {
    if (!s) return;
    free(s->images);
    free(s->labels);
    memset(s, 0, sizeof *s);
}
