// TensorBoard event files. Each record is a TFRecord-framed Event: [uint64 length]
// [uint32 masked CRC-32C of the length][Event bytes][uint32 masked CRC-32C of the bytes],
// little-endian. The framing is written here rather than through TfrWriter because that one
// commits by renaming a temp file at close, and TensorBoard must read this file while the
// run is going. Records gather in our own buffer (not stdio's) so that the file on disk only
// ever grows by whole records, and a failed write can be cut back to the last one.
#include "events.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "event.pb-c.h"
#include "util/crc32c.h"
#include "util/status.h"
#include "util/fs.h"

#define FRAME_HEAD 12          // length + its CRC
#define FRAME_TAIL 4           // CRC of the data
#define AUTO_FLUSH (64 << 10)  // bytes gathered before a record write flushes on its own

struct EventWriter {
    int fd;
    char *path;
    uint64_t size;  // bytes of whole records in the file
    uint8_t *buf;   // framed records not yet written
    size_t len, cap;
    size_t nrec;    // records in buf (for the message when they are lost)
};

static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Protobuf strings must be UTF-8: TensorBoard's parser rejects the whole record otherwise.
static int utf8_valid(const unsigned char *s) {
    while (*s) {
        unsigned c = *s++;
        int more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (more < 0 || (more == 1 && c < 0xC2) || (more == 3 && c > 0xF4)) return 0;
        unsigned cp = c & (0x3Fu >> more);
        for (int i = 0; i < more; i++, s++) {
            if ((*s & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (*s & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;  // overlong, surrogate or out of range
    }
    return 1;
}

// ---- folders and the file name ----

// mkdir -p: every missing component of dir, in order.
static int make_dirs(const char *dir) {
    char *p = strdup(dir);
    if (!p) return vit_fail("%s: out of memory", dir);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char keep = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && !(errno == EEXIST && path_is_dir(p))) {
            int err = errno;
            int rc = err == EEXIST   ? vit_fail("%s: cannot create folder: %s exists and is not a folder", dir, p)
                     : strlen(p) < n ? vit_fail("%s: cannot create folder %s: %s", dir, p, strerror(err))
                                     : vit_fail("%s: cannot create folder: %s", dir, strerror(err));
            free(p);
            return rc;
        }
        *s = keep;
        if (!keep) break;
    }
    free(p);
    return VIT_OK;
}

// dir/events.out.tfevents.<seconds>.<host>.<pid>[.<suffix>], malloc'd.
static char *event_file_name(const char *dir, const char *suffix) {
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) strcpy(host, "localhost");
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';  // never a folder part
    const char *sep = suffix && *suffix ? "." : "";
    if (!suffix) suffix = "";
    const char *slash = dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/";
    long long secs = (long long)time(NULL);
    int n = snprintf(NULL, 0, "%s%sevents.out.tfevents.%010lld.%s.%ld%s%s", dir, slash, secs, host,
                     (long)getpid(), sep, suffix);
    char *path = n < 0 ? NULL : malloc((size_t)n + 1);
    if (path)
        snprintf(path, (size_t)n + 1, "%s%sevents.out.tfevents.%010lld.%s.%ld%s%s", dir, slash, secs,
                 host, (long)getpid(), sep, suffix);
    return path;
}

// ---- records ----

// Frames the packed Event into the buffer; flushes once enough has gathered.
static int append_event(EventWriter *w, const Vitc__Tb__Event *ev) {
    size_t n = vitc__tb__event__get_packed_size(ev);
    size_t need = w->len + FRAME_HEAD + n + FRAME_TAIL;
    if (need > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < need) cap *= 2;
        uint8_t *b = realloc(w->buf, cap);
        if (!b) return vit_fail("%s: out of memory for a %zu-byte event", w->path, n);
        w->buf = b;
        w->cap = cap;
    }
    uint8_t *p = w->buf + w->len;
    put_le64(p, n);
    put_le32(p + 8, crc32c_masked(p, 8));
    vitc__tb__event__pack(ev, p + FRAME_HEAD);
    put_le32(p + FRAME_HEAD + n, crc32c_masked(p + FRAME_HEAD, n));
    w->len = need;
    w->nrec++;
    return w->len >= AUTO_FLUSH ? events_flush(w) : VIT_OK;
}

static int append_summary(EventWriter *w, long step, Vitc__Tb__Summary__Value *v) {
    Vitc__Tb__Summary s = VITC__TB__SUMMARY__INIT;
    s.n_value = 1;
    s.value = &v;
    Vitc__Tb__Event ev = VITC__TB__EVENT__INIT;
    ev.wall_time = wall_time();
    ev.step = step;
    ev.what_case = VITC__TB__EVENT__WHAT_SUMMARY;
    ev.summary = &s;
    return append_event(w, &ev);
}

static int check_tag(const EventWriter *w, const char *tag) {
    if (!w) return vit_fail("events: no event writer (not opened)");
    if (!tag || !*tag) return vit_fail("%s: summary with an empty tag", w->path);
    if (!utf8_valid((const unsigned char *)tag)) return vit_fail("%s: tag '%s' is not valid UTF-8", w->path, tag);
    return VIT_OK;
}

// ---- API ----

EventWriter *events_open(const char *dir, const char *suffix) {
    if (!dir || !*dir) {
        vit_fail("events: empty log folder name");
        return NULL;
    }
    if (suffix && strchr(suffix, '/')) {
        vit_fail("%s: event file suffix '%s' contains a '/'", dir, suffix);
        return NULL;
    }
    if (make_dirs(dir) != VIT_OK) return NULL;
    EventWriter *w = calloc(1, sizeof *w);
    if (!w || !(w->path = event_file_name(dir, suffix))) {
        free(w);
        vit_fail("%s: out of memory", dir);
        return NULL;
    }
    // O_EXCL: two writers must never interleave records in one file.
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        vit_fail("%s: cannot create: %s", w->path, strerror(errno));
        free(w->path);
        free(w);
        return NULL;
    }
    Vitc__Tb__Event ev = VITC__TB__EVENT__INIT;
    ev.wall_time = wall_time();
    ev.what_case = VITC__TB__EVENT__WHAT_FILE_VERSION;
    ev.file_version = "brain.Event:2";  // version 2: TensorBoard does not purge on step rewinds
    if (append_event(w, &ev) != VIT_OK || events_flush(w) != VIT_OK) {
        // The message is already set; keep it while cleaning up.
        close(w->fd);
        unlink(w->path);
        free(w->buf);
        free(w->path);
        free(w);
        return NULL;
    }
    return w;
}

int events_scalar(EventWriter *w, const char *tag, long step, double value) {
    if (check_tag(w, tag) != VIT_OK) return VIT_ERR;
    // simple_value, as TensorBoard's own Python writer stores scalars: the classic
    // EventAccumulator returns it from Scalars(), and 2.x turns it into a float32 "scalars"
    // tensor on load (data_compat), which the Scalars dashboard shows. A tensor written here
    // instead would be invisible to the classic reader's Scalars(). Precision is float32.
    Vitc__Tb__Summary__Value v = VITC__TB__SUMMARY__VALUE__INIT;
    v.tag = (char *)tag;
    v.value_case = VITC__TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
    v.simple_value = (float)value;
    return append_summary(w, step, &v);
}

int events_text(EventWriter *w, const char *tag, long step, const char *markdown) {
    if (check_tag(w, tag) != VIT_OK) return VIT_ERR;
    if (!markdown) markdown = "";
    if (!utf8_valid((const unsigned char *)markdown))
        return vit_fail("%s: text '%s' is not valid UTF-8", w->path, tag);
    // What the text plugin reads: plugin "text" (empty content = its default options) and a
    // scalar DT_STRING tensor holding the markdown.
    Vitc__Tb__SummaryMetadata__PluginData plugin = VITC__TB__SUMMARY_METADATA__PLUGIN_DATA__INIT;
    plugin.plugin_name = "text";
    Vitc__Tb__SummaryMetadata meta = VITC__TB__SUMMARY_METADATA__INIT;
    meta.plugin_data = &plugin;
    meta.data_class = VITC__TB__DATA_CLASS__DATA_CLASS_TENSOR;
    Vitc__Tb__TensorShapeProto shape = VITC__TB__TENSOR_SHAPE_PROTO__INIT;  // no dims: a scalar
    ProtobufCBinaryData str = {strlen(markdown), (uint8_t *)markdown};
    Vitc__Tb__TensorProto t = VITC__TB__TENSOR_PROTO__INIT;
    t.dtype = VITC__TB__DATA_TYPE__DT_STRING;
    t.tensor_shape = &shape;
    t.n_string_val = 1;
    t.string_val = &str;
    Vitc__Tb__Summary__Value v = VITC__TB__SUMMARY__VALUE__INIT;
    v.tag = (char *)tag;
    v.metadata = &meta;
    v.value_case = VITC__TB__SUMMARY__VALUE__VALUE_TENSOR;
    v.tensor = &t;
    return append_summary(w, step, &v);
}

int events_flush(EventWriter *w) {
    if (!w) return vit_fail("events: no event writer (not opened)");
    size_t done = 0;
    while (done < w->len) {
        ssize_t k = pwrite(w->fd, w->buf + done, w->len - done, (off_t)(w->size + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int err = k < 0 ? errno : EIO;
            // Cut a partly written record off, so that records written later still frame.
            if (done && ftruncate(w->fd, (off_t)w->size) != 0) {
                // Then the next flush writes over the torn part anyway (pwrite at w->size).
            }
            size_t lost = w->nrec;
            w->len = w->nrec = 0;
            return vit_fail("%s: write failed: %s (%zu record%s lost)", w->path, strerror(err), lost,
                            lost == 1 ? "" : "s");
        }
        done += (size_t)k;
    }
    w->size += w->len;
    w->len = w->nrec = 0;
    return VIT_OK;
}

int events_close(EventWriter *w) {
    if (!w) return VIT_OK;
    int rc = events_flush(w);
    // fsync: a flushed record survives a process crash; this makes the end survive a power loss.
    if (fsync(w->fd) != 0 && rc == VIT_OK && errno != EINVAL)
        rc = vit_fail("%s: write failed: %s", w->path, strerror(errno));
    if (close(w->fd) != 0 && rc == VIT_OK) rc = vit_fail("%s: write failed: %s", w->path, strerror(errno));
    free(w->buf);
    free(w->path);
    free(w);
    return rc;
}

const char *events_path(const EventWriter *w) { return w ? w->path : ""; }
