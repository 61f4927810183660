// TensorBoard event files: scalars and a text written by src/io/events.c, read back with the
// project's TFRecord reader (which checks both CRCs of every record) and decoded with the
// protobuf-c code of proto/event.proto; records visible before close; a failed write (file
// size limit standing in for a full disk) cut back to whole records; bad folders and tags.
// When the tensorboard pip package is importable, tools/check_events.py reads the same log
// with TensorBoard's own readers (skipped with a note otherwise).
// VIT_EVENTS_KEEP=DIR writes the round-trip log into DIR (new or empty) and leaves it there.
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "testdir.h"
#include "data/tfrecord.h"
#include "event.pb-c.h"
#include "io/events.h"
#include "util/status.h"

static char g_dir[64];

static char *path_in(const char *name) { return testdir_path(g_dir, name); }

// What the round trip writes, and what the readers must find.
typedef struct {
    const char *tag;
    long step;
    double value;
} Scalar;
static const Scalar g_scalars[] = {
    {"train/loss", 10, 2.5},          {"train/accuracy", 10, 0.1},
    {"train/loss", 20, 1.2345678901}, {"train/accuracy", 20, 0.0},  // 0 must still be stored
    {"train/loss", 30, -3e-7},        {"train/accuracy", 30, 1e30},
};
#define NSCALARS (int)(sizeof g_scalars / sizeof g_scalars[0])
static const char *g_text =
    "| flag | value |\n|---|---|\n| --model | ViT-Ti_4 |\n| --initial_lr | 2e-3 |\n| note | µ ✓ |\n";

// Reads every record of `path`: the Events (caller frees with free_events), their count, or
// -1 when the TFRecord reader or the protobuf decoder refuses a record. With out NULL the
// Events are only counted (no limit).
static int read_events(const char *path, Vitc__Tb__Event **out, int max) {
    TfrReader r;
    if (tfr_open(&r, path) != VIT_OK) return -1;
    const uint8_t *d;
    size_t n;
    uint64_t off;
    int count = 0, rc;
    while ((rc = tfr_next(&r, &d, &n, &off)) == 1) {
        Vitc__Tb__Event *e = vitc__tb__event__unpack(NULL, n, d);
        if (!e || (out && count == max)) {
            if (e) vitc__tb__event__free_unpacked(e, NULL);
            rc = VIT_ERR;
            break;
        }
        if (out) out[count] = e;
        else vitc__tb__event__free_unpacked(e, NULL);
        count++;
    }
    tfr_close(&r);
    if (rc != 0) {
        for (int i = 0; out && i < count; i++) vitc__tb__event__free_unpacked(out[i], NULL);
        return -1;
    }
    return count;
}

static void free_events(Vitc__Tb__Event **ev, int n) {
    for (int i = 0; i < n; i++) vitc__tb__event__free_unpacked(ev[i], NULL);
}

// Records of `path` that pass the CRCs and decode as Events; -1 if any does not.
static int count_records(const char *path) { return read_events(path, NULL, 0); }

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

// The one summary value of an event, or NULL.
static Vitc__Tb__Summary__Value *value_of(const Vitc__Tb__Event *e) {
    if (e->what_case != VITC__TB__EVENT__WHAT_SUMMARY || !e->summary || e->summary->n_value != 1) return NULL;
    return e->summary->value[0];
}

// ---- round trip ----

static void write_log(const char *dir, char *path, size_t cap) {
    EventWriter *w = events_open(dir, "test");
    CHECK(w != NULL, "events_open: %s", vit_error());
    if (!w) return;
    snprintf(path, cap, "%s", events_path(w));
    for (int i = 0; i < NSCALARS; i++)
        CHECK(events_scalar(w, g_scalars[i].tag, g_scalars[i].step, g_scalars[i].value) == VIT_OK, "scalar: %s",
              vit_error());
    CHECK(events_text(w, "flags", 0, g_text) == VIT_OK, "text: %s", vit_error());
    CHECK(events_flush(w) == VIT_OK, "flush: %s", vit_error());
    CHECK(events_close(w) == VIT_OK, "close: %s", vit_error());
}

static void test_round_trip(const char *dir, char *path, size_t cap) {
    write_log(dir, path, cap);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char tail[300];
    snprintf(tail, sizeof tail, ".%s.%ld.test", host, (long)getpid());
    CHECK(strncmp(base, "events.out.tfevents.", 20) == 0 && has(base, tail), "file name %s", base);
    long secs = strtol(base + 20, NULL, 10);
    CHECK(labs(secs - (long)time(NULL)) < 120, "file name time %ld", secs);

    Vitc__Tb__Event *ev[64];
    int n = read_events(path, ev, 64);
    CHECK(n == 1 + NSCALARS + 1, "%d records: %s", n, vit_error());
    if (n != 1 + NSCALARS + 1) {
        if (n > 0) free_events(ev, n);
        return;
    }
    CHECK(ev[0]->what_case == VITC__TB__EVENT__WHAT_FILE_VERSION && !strcmp(ev[0]->file_version, "brain.Event:2"),
          "first record is not file_version brain.Event:2");
    double now = (double)time(NULL);
    for (int i = 0; i < n; i++)
        CHECK(ev[i]->wall_time > now - 120 && ev[i]->wall_time < now + 120, "record %d wall_time %f", i,
              ev[i]->wall_time);
    for (int i = 0; i < NSCALARS; i++) {
        const Scalar *s = &g_scalars[i];
        Vitc__Tb__Summary__Value *v = value_of(ev[1 + i]);
        CHECK(v && !strcmp(v->tag, s->tag) && ev[1 + i]->step == s->step, "scalar %d: tag/step", i);
        CHECK(v && v->value_case == VITC__TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE && v->simple_value == (float)s->value,
              "scalar %d: value %g, wrote %g", i, v ? v->simple_value : -1.0, s->value);
    }
    Vitc__Tb__Summary__Value *t = value_of(ev[n - 1]);
    CHECK(t && !strcmp(t->tag, "flags") && ev[n - 1]->step == 0, "text tag/step");
    if (t) {
        CHECK(t->metadata && t->metadata->plugin_data && !strcmp(t->metadata->plugin_data->plugin_name, "text") &&
                  t->metadata->data_class == VITC__TB__DATA_CLASS__DATA_CLASS_TENSOR,
              "text metadata: plugin text, data class TENSOR");
        Vitc__Tb__TensorProto *tp = t->value_case == VITC__TB__SUMMARY__VALUE__VALUE_TENSOR ? t->tensor : NULL;
        CHECK(tp && tp->dtype == VITC__TB__DATA_TYPE__DT_STRING && tp->tensor_shape && tp->tensor_shape->n_dim == 0 &&
                  tp->n_string_val == 1,
              "text tensor: a scalar DT_STRING");
        CHECK(tp && tp->n_string_val == 1 && tp->string_val[0].len == strlen(g_text) &&
                  !memcmp(tp->string_val[0].data, g_text, strlen(g_text)),
              "text content differs");
    }
    free_events(ev, n);
}

// ---- records reach the file at flush, while the writer stays open ----

static void test_visible_while_open(void) {
    char *dir = path_in("live");
    EventWriter *w = events_open(dir, "");
    CHECK(w != NULL, "events_open: %s", vit_error());
    if (!w) return;
    char p[512];
    snprintf(p, sizeof p, "%s", events_path(w));  // still needed after close
    char tail[32];
    snprintf(tail, sizeof tail, ".%ld", (long)getpid());
    CHECK(strlen(p) > strlen(tail) && !strcmp(p + strlen(p) - strlen(tail), tail), "empty suffix: %s", p);
    CHECK(count_records(p) == 1, "file_version not on disk right after open");
    CHECK(events_scalar(w, "loss", 1, 1.0) == VIT_OK, "scalar: %s", vit_error());
    CHECK(count_records(p) == 1, "a record reached the file before flush");
    CHECK(events_flush(w) == VIT_OK && count_records(p) == 2, "flushed record not readable while open");
    // Past the 64 KiB buffer, records go out on their own, and only whole ones.
    int ok = 1;
    for (int i = 0; i < 5000 && ok; i++) ok = events_scalar(w, "loss", 2 + i, 0.5) == VIT_OK;
    int on_disk = count_records(p);
    CHECK(ok && on_disk > 2 && on_disk < 5002, "auto flush: %d records on disk", on_disk);
    CHECK(events_close(w) == VIT_OK, "close: %s", vit_error());
    on_disk = count_records(p);
    CHECK(on_disk == 5002, "after close: %d records", on_disk);
    CHECK(events_close(NULL) == VIT_OK, "events_close(NULL)");
}

// ---- a write that fails (the file size limit stands in for a full disk) ----

static void test_write_failure(void) {
    char *dir = path_in("full");
    EventWriter *w = events_open(dir, "full");
    CHECK(w != NULL, "events_open: %s", vit_error());
    if (!w) return;
    const char *p = events_path(w);
    char keep[512];
    snprintf(keep, sizeof keep, "%s", p);
    int limited = 0;
    CHECK(events_scalar(w, "loss", 1, 1.0) == VIT_OK && events_flush(w) == VIT_OK, "flush: %s", vit_error());
    long before = file_size(p);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {(rlim_t)before + 100, old.rlim_max};
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the signal
    if (before < 0 || setrlimit(RLIMIT_FSIZE, &lim) != 0) {
        printf("note: could not lower the file size limit, write-failure check skipped\n");
    } else {
        limited = 1;
        static char big[2000];
        memset(big, 'x', sizeof big - 1);
        CHECK(events_scalar(w, "loss", 2, 2.0) == VIT_OK, "scalar: %s", vit_error());
        CHECK(events_text(w, "big", 2, big) == VIT_OK, "text: %s", vit_error());
        CHECK(events_flush(w) == VIT_ERR && has(vit_error(), p) && has(vit_error(), "write failed") &&
                  has(vit_error(), "2 records lost"),
              "flush past the limit: %s", vit_error());
        CHECK(file_size(p) == before, "not cut back to the last whole record: %ld bytes, was %ld", file_size(p), before);
        setrlimit(RLIMIT_FSIZE, &old);
    }
    signal(SIGXFSZ, prev);
    // Room again: later records frame correctly after the cut.
    CHECK(events_scalar(w, "loss", 3, 3.0) == VIT_OK && events_close(w) == VIT_OK, "after the failure: %s",
          vit_error());
    Vitc__Tb__Event *ev[8];
    int n = read_events(keep, ev, 8);
    CHECK(limited ? n == 3 : n == 5, "%d records after the failure: %s", n, vit_error());
    if (limited && n == 3) {
        Vitc__Tb__Summary__Value *v = value_of(ev[2]);
        CHECK(ev[1]->step == 1 && ev[2]->step == 3 && v && v->simple_value == 3.0f, "records after the cut");
    }
    if (n > 0) free_events(ev, n);
}

// ---- bad folders, tags and text ----

static void test_errors(void) {
    // A folder under a regular file.
    char *file = path_in("plain");
    FILE *f = fopen(file, "w");
    if (f) fclose(f);
    EventWriter *w = events_open(path_in("plain/logs"), "");
    CHECK(w == NULL && has(vit_error(), "plain/logs") && has(vit_error(), "cannot create folder"),
          "under a regular file: %s", vit_error());
    w = events_open(file, "");
    CHECK(w == NULL && has(vit_error(), "not a folder"), "log folder is a file: %s", vit_error());
    w = events_open(path_in("ok"), "a/b");
    CHECK(w == NULL && has(vit_error(), "suffix"), "suffix with a slash: %s", vit_error());
    CHECK(events_open("", NULL) == NULL, "empty folder name accepted");
    if (geteuid() != 0) {  // root ignores permissions
        char *ro = path_in("readonly");
        mkdir(ro, 0500);
        w = events_open(path_in("readonly/logs"), "");
        CHECK(w == NULL && has(vit_error(), "readonly/logs") && has(vit_error(), strerror(EACCES)),
              "read-only parent: %s", vit_error());
        events_close(w);
    }

    // Nested folders are created; the name is new on every open (O_EXCL guards reuse).
    w = events_open(path_in("a/b/c/"), "x");
    CHECK(w != NULL, "nested folders: %s", vit_error());
    if (!w) return;
    CHECK(!has(events_path(w), "//"), "double slash in %s", events_path(w));
    EventWriter *w2 = events_open(path_in("a/b/c"), "x");  // same second, pid and suffix
    CHECK(w2 == NULL && has(vit_error(), "File exists"), "second writer on the same name: %s", vit_error());
    events_close(w2);
    CHECK(events_scalar(w, "", 1, 1.0) == VIT_ERR && has(vit_error(), "empty tag"), "empty tag: %s", vit_error());
    CHECK(events_scalar(w, NULL, 1, 1.0) == VIT_ERR, "NULL tag accepted");
    CHECK(events_scalar(w, "bad\xff", 1, 1.0) == VIT_ERR && has(vit_error(), "UTF-8"), "invalid UTF-8 tag: %s",
          vit_error());
    CHECK(events_text(w, "t", 1, "\xc0\xaf") == VIT_ERR && has(vit_error(), "UTF-8"), "overlong UTF-8 text: %s",
          vit_error());
    CHECK(events_text(w, "t", 1, "") == VIT_OK, "empty text refused: %s", vit_error());
    CHECK(events_scalar(NULL, "x", 1, 1.0) == VIT_ERR && events_flush(NULL) == VIT_ERR, "NULL writer accepted");
    const char *p = events_path(w);
    char keep[512];
    snprintf(keep, sizeof keep, "%s", p);
    CHECK(events_close(w) == VIT_OK && count_records(keep) == 2, "refused records reached the file");
}

// ---- TensorBoard's own readers (tools/check_events.py) ----

static void test_tensorboard(const char *dir) {
    if (access("tools/check_events.py", R_OK) != 0 ||
        system("python3 -c 'import tensorboard' >/dev/null 2>&1") != 0) {
        printf("note: tensorboard (pip) or tools/check_events.py not found, TensorBoard cross-check skipped\n");
        return;
    }
    char *values = path_in("values.txt");
    FILE *f = fopen(values, "w");
    if (!f) {
        CHECK(0, "%s: cannot write", values);
        return;
    }
    for (int i = 0; i < NSCALARS; i++)
        fprintf(f, "%s %ld %.17g\n", g_scalars[i].tag, g_scalars[i].step, g_scalars[i].value);
    fclose(f);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 tools/check_events.py '%s' --scalar train/loss --scalar train/accuracy --steps 10,20,30 "
             "--text flags --text-contains '| --model | ViT-Ti_4 |' --values-from '%s'",
             dir, values);
    CHECK(system(cmd) == 0, "tools/check_events.py failed: %s", cmd);
    // The checker must also be able to fail.
    snprintf(cmd, sizeof cmd, "python3 tools/check_events.py '%s' --scalar train/loss --steps 10,20 >/dev/null", dir);
    CHECK(system(cmd) != 0, "tools/check_events.py accepted wrong steps");
}

int main(void) {
    strcpy(g_dir, "/tmp/test_events_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *keep = getenv("VIT_EVENTS_KEEP");
    char logs[512], path[1024] = "";
    snprintf(logs, sizeof logs, "%s", keep && *keep ? keep : path_in("logs"));
    test_round_trip(logs, path, sizeof path);
    test_visible_while_open();
    test_write_failure();
    test_errors();
    test_tensorboard(logs);
    if (keep && *keep) printf("kept %s\n", path);
    chmod(path_in("readonly"), 0700);
    testdir_remove(g_dir);
    return check_report("events");
}
