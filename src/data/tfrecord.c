// TFRecord framing: [uint64 length][uint32 masked crc(length)][data][uint32 masked crc(data)],
// little-endian. Lengths come from the file, so nothing is allocated for a length before it
// has passed its CRC, the 1 GiB cap and a check against the bytes the file really has left.
#include "tfrecord.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/atomic_file.h"
#include "util/crc32c.h"
#include "util/status.h"

#define TFR_MAX_RECORD (1ull << 30)
#define TFR_HEADER 12

static uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// Checks a record header (length and its CRC) and sets *len, the data length.
static int check_header(const uint8_t *hdr, const char *path, uint64_t at, uint64_t *len) {
    *len = get_le64(hdr);
    if (crc32c_masked(hdr, 8) != get_le32(hdr + 8))
        return vit_fail("%s: record at byte %llu: length CRC mismatch (corrupt file)", path,
                        (unsigned long long)at);
    if (*len > TFR_MAX_RECORD)
        return vit_fail("%s: record at byte %llu: length %llu exceeds the 1 GiB limit", path,
                        (unsigned long long)at, (unsigned long long)*len);
    return VIT_OK;
}

// Before growing a buffer for a record, make sure the file holds it: a corrupt or hostile
// length must read as "truncated", not as a huge allocation. Non-regular files (pipes) skip
// this; the 1 GiB cap still bounds them.
static int check_remaining(int fd, const char *path, uint64_t at, uint64_t need) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return VIT_OK;
    uint64_t size = (uint64_t)st.st_size, body = at + TFR_HEADER;
    uint64_t left = size > body ? size - body : 0;
    if (left < need)
        return vit_fail("%s: record at byte %llu: truncated (length %llu, but only %llu bytes follow)",
                        path, (unsigned long long)at, (unsigned long long)(need - 4),
                        (unsigned long long)left);
    return VIT_OK;
}

static int grow(uint8_t **buf, size_t *cap, size_t need, const char *path, uint64_t at) {
    if (need <= *cap) return VIT_OK;
    size_t n = *cap * 2 > need ? *cap * 2 : need;  // doubling keeps reallocs rare
    if (n > TFR_MAX_RECORD + 4) n = need;
    uint8_t *b = realloc(*buf, n);
    if (!b)
        return vit_fail("%s: record at byte %llu: out of memory for %zu bytes", path,
                        (unsigned long long)at, need);
    *buf = b;
    *cap = n;
    return VIT_OK;
}

static int check_data_crc(const uint8_t *buf, size_t len, const char *path, uint64_t at) {
    if (crc32c_masked(buf, len) != get_le32(buf + len))
        return vit_fail("%s: record at byte %llu: data CRC mismatch (corrupt file)", path,
                        (unsigned long long)at);
    return VIT_OK;
}

int tfr_open(TfrReader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->f = fopen(path, "rbe");
    if (!r->f) return vit_fail("%s: cannot open: %s", path, strerror(errno));
    r->path = strdup(path);
    if (!r->path) {
        fclose(r->f);
        r->f = NULL;
        return vit_fail("%s: out of memory", path);
    }
    return VIT_OK;
}

// After VIT_ERR the reader's position is unspecified: the caller should close it.
int tfr_next(TfrReader *r, const uint8_t **data, size_t *len, uint64_t *offset) {
    if (!r->f) return vit_fail("%s: TFRecord reader is not open", r->path ? r->path : "(null)");
    const char *path = r->path;
    uint64_t at = r->offset;
    uint8_t hdr[TFR_HEADER];
    size_t got = fread(hdr, 1, sizeof hdr, r->f);
    if (got < sizeof hdr) {
        if (ferror(r->f))
            return vit_fail("%s: record at byte %llu: read error: %s", path, (unsigned long long)at,
                            strerror(errno));
        if (got == 0) return 0;  // clean end: the file ends exactly after a record
        return vit_fail("%s: record at byte %llu: truncated (file ends inside the 12-byte header)",
                        path, (unsigned long long)at);
    }
    uint64_t n;
    if (check_header(hdr, path, at, &n) != VIT_OK) return VIT_ERR;
    size_t need = (size_t)n + 4;
    if (need > r->cap) {
        if (check_remaining(fileno(r->f), path, at, need) != VIT_OK) return VIT_ERR;
        if (grow(&r->buf, &r->cap, need, path, at) != VIT_OK) return VIT_ERR;
    }
    got = fread(r->buf, 1, need, r->f);
    if (got < need) {
        if (ferror(r->f))
            return vit_fail("%s: record at byte %llu: read error: %s", path, (unsigned long long)at,
                            strerror(errno));
        return vit_fail("%s: record at byte %llu: truncated (length %llu, but only %zu bytes follow)",
                        path, (unsigned long long)at, (unsigned long long)n, got);
    }
    if (check_data_crc(r->buf, (size_t)n, path, at) != VIT_OK) return VIT_ERR;
    r->offset = at + TFR_HEADER + need;
    *data = r->buf;
    *len = (size_t)n;
    if (offset) *offset = at;
    return 1;
}

void tfr_close(TfrReader *r) {
    if (r->f) fclose(r->f);
    free(r->path);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

// pread until n bytes or the end of the file; the count read, or -1 with errno.
static ssize_t pread_full(int fd, void *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(off + done));
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (k == 0) break;
        done += (size_t)k;
    }
    return (ssize_t)done;
}

int tfr_read_at(int fd, const char *path, uint64_t offset, uint8_t **buf, size_t *cap, size_t *len) {
    if (!path) path = "(tfrecord)";
    // Bound the offset so that offset + header + 1 GiB record never overflows off_t.
    if (offset > (1ull << 62))
        return vit_fail("%s: record at byte %llu: offset out of range", path,
                        (unsigned long long)offset);
    uint8_t hdr[TFR_HEADER];
    ssize_t got = pread_full(fd, hdr, sizeof hdr, offset);
    if (got < 0)
        return vit_fail("%s: record at byte %llu: read error: %s", path,
                        (unsigned long long)offset, strerror(errno));
    if (got == 0)
        return vit_fail("%s: record at byte %llu: no record there (at or past the end of the file)",
                        path, (unsigned long long)offset);
    if ((size_t)got < sizeof hdr)
        return vit_fail("%s: record at byte %llu: truncated (file ends inside the 12-byte header)",
                        path, (unsigned long long)offset);
    uint64_t n;
    if (check_header(hdr, path, offset, &n) != VIT_OK) return VIT_ERR;
    size_t need = (size_t)n + 4;
    if (need > *cap) {
        if (check_remaining(fd, path, offset, need) != VIT_OK) return VIT_ERR;
        if (grow(buf, cap, need, path, offset) != VIT_OK) return VIT_ERR;
    }
    got = pread_full(fd, *buf, need, offset + TFR_HEADER);
    if (got < 0)
        return vit_fail("%s: record at byte %llu: read error: %s", path,
                        (unsigned long long)offset, strerror(errno));
    if ((size_t)got < need)
        return vit_fail("%s: record at byte %llu: truncated (length %llu, but only %zd bytes follow)",
                        path, (unsigned long long)offset, (unsigned long long)n, got);
    if (check_data_crc(*buf, (size_t)n, path, offset) != VIT_OK) return VIT_ERR;
    *len = (size_t)n;
    return VIT_OK;
}

struct TfrWriter {
    FILE *f;
    char *path, *tmp;
    int failed;  // a write failed: closing must not commit a partial file
};

static void writer_free(TfrWriter *w) {
    free(w->path);
    free(w->tmp);
    free(w);
}

TfrWriter *tfr_writer_open(const char *path) {
    TfrWriter *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = atomic_temp_path(path))) {
        if (w) writer_free(w);
        vit_fail("%s: out of memory", path);
        return NULL;
    }
    w->f = fopen(w->tmp, "wbe");
    if (!w->f) {
        vit_fail("%s: cannot create %s: %s", path, w->tmp, strerror(errno));
        writer_free(w);
        return NULL;
    }
    return w;
}

int tfr_write(TfrWriter *w, const void *data, size_t len) {
    if (w->failed) return vit_fail("%s: not writing: an earlier write failed", w->path);
    if (len > TFR_MAX_RECORD) {
        w->failed = 1;
        return vit_fail("%s: record of %zu bytes exceeds the 1 GiB limit", w->path, len);
    }
    uint8_t hdr[TFR_HEADER], tail[4];
    put_le64(hdr, len);
    put_le32(hdr + 8, crc32c_masked(hdr, 8));
    put_le32(tail, crc32c_masked(data, len));
    if (fwrite(hdr, 1, sizeof hdr, w->f) != sizeof hdr ||
        (len && fwrite(data, 1, len, w->f) != len) || fwrite(tail, 1, 4, w->f) != 4) {
        w->failed = 1;
        return vit_fail("%s: writing %s failed: %s", w->path, w->tmp, strerror(errno));
    }
    return VIT_OK;
}

int tfr_writer_close(TfrWriter *w) {
    if (!w) return vit_fail("tfr_writer_close: no writer (open failed?)");
    int rc = VIT_OK;
    if (w->failed)
        rc = vit_fail("%s: not saved: an earlier write failed", w->path);
    else if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0)
        rc = vit_fail("%s: not saved: writing %s failed: %s", w->path, w->tmp, strerror(errno));
    if (fclose(w->f) != 0 && rc == VIT_OK)
        rc = vit_fail("%s: not saved: closing %s failed: %s", w->path, w->tmp, strerror(errno));
    int renamed = 0;
    if (rc == VIT_OK) rc = atomic_commit(w->tmp, w->path, &renamed);
    if (!renamed) unlink(w->tmp);
    writer_free(w);
    return rc;
}

void tfr_writer_abort(TfrWriter *w) {
    if (!w) return;
    fclose(w->f);
    unlink(w->tmp);
    writer_free(w);
}
