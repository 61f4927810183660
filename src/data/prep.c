// `vit prep`: the recipe's ImageNet preprocessing. The input is listed and checked up front
// (classes, validation labels), then worker threads each take whole shards and write them
// through the atomic TFRecord writer, so an interrupted run never leaves a half shard.
#include "data/prep.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/example.h"
#include "data/image.h"
#include "data/jpeg_encode.h"
#include "data/tfrecord.h"
#include "util/atomic_file.h"
#include "util/clock.h"
#include "util/rng.h"
#include "util/status.h"
#include "util/fs.h"

// The validation labels' file in raw_dir: the name the ImageNet 2012 tools use, then the name
// the recipe's README downloads it under (wget -O synset_labels.txt).
static const char *const LABELS_FILES[] = {"imagenet_2012_validation_synset_labels.txt", "synset_labels.txt"};
#define JPEG_QUALITY 95
#define SHUFFLE_SEED 0
// No photo is this large; refuse rather than read a stray disk image into memory.
#define MAX_FILE_BYTES ((size_t)1 << 30)
#define PROGRESS_SECONDS 10.0

// ---------------------------------------------------------------- listing

typedef struct {
    char **v;
    size_t n, cap;
} Names;

static void names_free(Names *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

// Takes ownership of s (a malloc'd string); NULL s means an earlier allocation failed.
static int names_take(Names *l, char *s) {
    if (!s) return vit_fail("out of memory listing the input");
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **g = realloc(l->v, cap * sizeof *g);
        if (!g) {
            free(s);
            return vit_fail("out of memory listing the input");
        }
        l->v = g;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return VIT_OK;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

// Only image extensions count, so README files or .txt lists in the folders are ignored; the
// content (not the extension) decides JPEG or PNG later.
static int has_image_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".png"));
}

// Sorted (byte order, like Python's sorted) sub-folders or image files of `dir`; hidden
// names are skipped.
static int list_dir(const char *dir, int want_dirs, Names *out) {
    DIR *d = opendir(dir);
    if (!d) return vit_fail("%s: %s", dir, strerror(errno));
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            int err = errno;
            closedir(d);
            if (err) return vit_fail("%s: %s", dir, strerror(err));
            break;
        }
        if (e->d_name[0] == '.') continue;
        if (!want_dirs && !has_image_ext(e->d_name)) continue;
        char *path = join(dir, e->d_name);
        if (!path) {
            closedir(d);
            return vit_fail("out of memory listing %s", dir);
        }
        struct stat s;
        int keep = stat(path, &s) == 0 && (want_dirs ? S_ISDIR(s.st_mode) : S_ISREG(s.st_mode));
        free(path);
        if (keep && names_take(out, strdup(e->d_name))) {
            closedir(d);
            return VIT_ERR;
        }
    }
    if (out->n) qsort(out->v, out->n, sizeof *out->v, cmp_name);
    return VIT_OK;
}

typedef struct {
    char *name;  // base name
    int cls;     // 0-based index into the sorted train classes
    int dir;     // index into the folder list
} Item;

typedef struct {
    Item *v;
    size_t n, cap;
} Items;

typedef struct {
    Names classes;  // sorted train class folders; label = index + 1
    Names dirs;     // full folder paths the items live in
    Items train, val;
} Listing;

static void listing_free(Listing *l) {
    names_free(&l->classes);
    names_free(&l->dirs);
    for (size_t i = 0; i < l->train.n; i++) free(l->train.v[i].name);
    for (size_t i = 0; i < l->val.n; i++) free(l->val.v[i].name);
    free(l->train.v);
    free(l->val.v);
}

// Moves the names of `files` (all in folder `dir`, class cls) into `items`.
static int items_take(Items *items, Names *files, int cls, int dir) {
    if (items->n + files->n > items->cap) {
        size_t cap = (items->n + files->n) * 2 + 64;
        Item *g = realloc(items->v, cap * sizeof *g);
        if (!g) return vit_fail("out of memory listing the input");
        items->v = g;
        items->cap = cap;
    }
    for (size_t i = 0; i < files->n; i++) items->v[items->n++] = (Item){files->v[i], cls, dir};
    free(files->v);
    memset(files, 0, sizeof *files);
    return VIT_OK;
}

static int find_class(const Names *classes, const char *name) {
    char *const *hit = bsearch(&name, classes->v, classes->n, sizeof *classes->v, cmp_name);
    return hit ? (int)(hit - classes->v) : -1;
}

// Adds the folder `dir` (taken) to the list and its images to `items` with class cls.
static int add_folder(Listing *l, Items *items, char *dir, int cls) {
    int idx = (int)l->dirs.n;
    if (names_take(&l->dirs, dir)) return VIT_ERR;
    Names files = {0};
    if (list_dir(l->dirs.v[idx], 0, &files) || items_take(items, &files, cls, idx)) {
        names_free(&files);
        return VIT_ERR;
    }
    return VIT_OK;
}

static int list_train(const char *raw, Listing *l) {
    char *tdir = join(raw, "train");
    if (!tdir) return vit_fail("out of memory");
    int rc = VIT_OK;
    if (!path_is_dir(tdir))
        rc = vit_fail("%s: no such folder (expected train/<class>/ images)", tdir);
    else if (list_dir(tdir, 1, &l->classes))
        rc = VIT_ERR;
    else if (l->classes.n == 0)
        rc = vit_fail("%s: no class folders", tdir);
    else if (l->classes.n > INT32_MAX / 2)
        rc = vit_fail("%s: too many class folders", tdir);
    for (size_t c = 0; rc == VIT_OK && c < l->classes.n; c++)
        rc = add_folder(l, &l->train, join(tdir, l->classes.v[c]), (int)c);
    if (rc == VIT_OK && l->train.n == 0) rc = vit_fail("%s: no images (.JPEG, .jpg, .png) in the class folders", tdir);
    free(tdir);
    return rc;
}

// Layout (a): one folder of validation images and a file with one synset per line, in the
// sorted order of the image names (the ImageNet 2012 devkit's ground truth as synsets).
static int list_val_labelled(const char *raw, const char *labels, Listing *l) {
    char *vdir = join(raw, "validation");
    if (vdir && !path_is_dir(vdir)) {
        free(vdir);
        vdir = join(raw, "val");
    }
    if (!vdir) return vit_fail("out of memory");
    if (!path_is_dir(vdir)) {
        vit_fail("%s: no validation/ or val/ folder for the labels in %s", raw, labels);
        free(vdir);
        return VIT_ERR;
    }
    size_t first = l->val.n;
    if (add_folder(l, &l->val, vdir, -1)) return VIT_ERR;
    vdir = l->dirs.v[l->dirs.n - 1];
    size_t n = l->val.n - first;
    if (n == 0) return vit_fail("%s: no images (.JPEG, .jpg, .png)", vdir);

    FILE *f = fopen(labels, "r");
    if (!f) return vit_fail("%s: %s", labels, strerror(errno));
    char *line = NULL;
    size_t cap = 0, k = 0;
    long lineno = 0, blank = 0;
    int rc = VIT_OK;
    while (rc == VIT_OK && getline(&line, &cap, f) >= 0) {
        lineno++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = 0;
        if (!len) {  // blank lines only at the end (a trailing newline or two)
            if (!blank) blank = lineno;
            continue;
        }
        if (blank)
            rc = vit_fail("%s line %ld: blank line among the labels", labels, blank);
        else if (k >= n)
            rc = vit_fail("%s: more labels than the %zu images in %s", labels, n, vdir);
        else if ((l->val.v[first + k].cls = find_class(&l->classes, line)) < 0)
            rc = vit_fail("%s line %ld: synset '%.64s' is not among the %zu train classes", labels, lineno, line,
                          l->classes.n);
        k++;
    }
    if (rc == VIT_OK && ferror(f)) rc = vit_fail("%s: read error: %s", labels, strerror(errno));
    if (rc == VIT_OK && k < n) rc = vit_fail("%s: %zu labels for the %zu images in %s", labels, k, n, vdir);
    free(line);
    fclose(f);
    return rc;
}

// Layout (b): val/<class>/ (or validation/<class>/) folders named like the train classes.
static int list_val_folders(const char *vdir, Listing *l) {
    Names vc = {0};
    int rc = list_dir(vdir, 1, &vc);
    for (size_t i = 0; rc == VIT_OK && i < vc.n; i++) {
        int cls = find_class(&l->classes, vc.v[i]);
        if (cls < 0)
            rc = vit_fail("%s/%s: class not among the %zu train classes", vdir, vc.v[i], l->classes.n);
        else
            rc = add_folder(l, &l->val, join(vdir, vc.v[i]), cls);
    }
    // Training refuses a class that only one split has (imagefolder.c); so does prep.
    for (size_t c = 0; rc == VIT_OK && vc.n < l->classes.n && c < l->classes.n; c++) {
        size_t i = 0;
        while (i < vc.n && strcmp(vc.v[i], l->classes.v[c])) i++;
        if (i == vc.n)
            rc = vit_fail("%s: train class '%s' has no folder here: every class needs images in both splits", vdir,
                          l->classes.v[c]);
    }
    if (rc == VIT_OK && l->val.n == 0) rc = vit_fail("%s: no images (.JPEG, .jpg, .png) in the class folders", vdir);
    names_free(&vc);
    return rc;
}

static int has_subfolders(const char *dir) {
    Names sub = {0};
    int yes = path_is_dir(dir) && list_dir(dir, 1, &sub) == VIT_OK && sub.n > 0;
    names_free(&sub);
    return yes;
}

static int list_val(const PrepOptions *o, Listing *l) {
    int given = o->val_labels && *o->val_labels;
    char *labels = given ? strdup(o->val_labels) : join(o->raw_dir, LABELS_FILES[0]);
    if (labels && !given && !path_is_file(labels)) {
        char *other = join(o->raw_dir, LABELS_FILES[1]);
        if (other && path_is_file(other)) {
            free(labels);
            labels = other;
        } else {
            free(other);
        }
    }
    if (!labels) return vit_fail("out of memory");
    int rc;
    if (given || path_is_file(labels)) {
        rc = list_val_labelled(o->raw_dir, labels, l);
    } else {
        char *val = join(o->raw_dir, "val"), *validation = join(o->raw_dir, "validation");
        if (!val || !validation)
            rc = vit_fail("out of memory");
        else if (has_subfolders(val))
            rc = list_val_folders(val, l);
        else if (has_subfolders(validation))
            rc = list_val_folders(validation, l);
        else
            rc = vit_fail("%s: no validation images: expected val/<class>/ folders, or validation/ (or val/) images "
                          "with %s, %s or --val_labels", o->raw_dir, LABELS_FILES[0], LABELS_FILES[1]);
        free(val);
        free(validation);
    }
    free(labels);
    return rc;
}

// Fisher-Yates with the counter-based generator: the same order on every machine.
static void shuffle(Items *it, uint64_t seed) {
    for (size_t i = it->n; i > 1; i--) {
        Philox4 r = philox4x32(seed, (uint32_t)i, (uint32_t)((uint64_t)i >> 32), 0x70726570u, 0);
        uint64_t bits = (uint64_t)r.v[0] | (uint64_t)r.v[1] << 32;
        size_t j = (size_t)(bits % i);
        Item t = it->v[i - 1];
        it->v[i - 1] = it->v[j];
        it->v[j] = t;
    }
}

// ---------------------------------------------------------------- shards

typedef struct {
    const Item *items;
    size_t first, step, end;  // items first, first + step, ... below end
    char *path;
    int validation;
} Job;

typedef struct {
    const PrepOptions *o;
    const Listing *l;
    Job *jobs;
    int n_jobs;
    pthread_mutex_t mu;  // guards everything below, and the notes/progress streams
    int next, failed, done;
    char error[1024];
    long written[2], reencoded, skipped;
    double start, last_print;
} Ctx;

typedef struct {
    uint8_t *file;
    size_t file_cap;
    JpegBuffer jpeg;
} Scratch;

static int read_file(const char *path, Scratch *s, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return vit_fail("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        int err = errno;
        fclose(f);
        return vit_fail("%s: %s", path, strerror(err));
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return vit_fail("%s: %lld bytes, too large for an image", path, (long long)st.st_size);
    }
    size_t want = (size_t)st.st_size;
    if (want + 1 > s->file_cap) {  // +1: never a zero-byte malloc
        uint8_t *g = realloc(s->file, want + 1);
        if (!g) {
            fclose(f);
            return vit_fail("%s: out of memory", path);
        }
        s->file = g;
        s->file_cap = want + 1;
    }
    size_t got = fread(s->file, 1, want, f);
    int bad = got != want || ferror(f);
    fclose(f);
    if (bad) return vit_fail("%s: read error (file changed or unreadable)", path);
    *len = got;
    return VIT_OK;
}

// Writes one image's record. I/O errors always fail; undecodable images are skipped (counted
// in *skipped, named in the notes) when skip_corrupt is set.
static int write_item(Ctx *c, TfrWriter *w, const Item *it, Scratch *s, long *skipped, long *reencoded) {
    char *path = join(c->l->dirs.v[it->dir], it->name);
    if (!path) return vit_fail("out of memory");
    Image img = {0};
    size_t len = 0;
    int rc = read_file(path, s, &len);
    if (rc == VIT_OK && image_decode(&img, s->file, len, path, 0) != VIT_OK) {
        if (c->o->skip_corrupt) {
            (*skipped)++;
            if (c->o->notes) {
                pthread_mutex_lock(&c->mu);
                fprintf(c->o->notes, "note: skipped %s\n", vit_error());
                pthread_mutex_unlock(&c->mu);
            }
            free(path);
            return VIT_OK;
        }
        rc = VIT_ERR;
    }
    const uint8_t *enc = s->file;
    size_t enc_len = len;
    static const uint8_t jpeg_magic[3] = {0xFF, 0xD8, 0xFF};
    int keep = rc == VIT_OK && len >= 3 && !memcmp(s->file, jpeg_magic, 3) && jpeg_is_rgb(s->file, len);
    if (rc == VIT_OK && !keep) {
        rc = jpeg_encode_rgb(&img, JPEG_QUALITY, path, &s->jpeg);
        enc = s->jpeg.buf;
        enc_len = s->jpeg.len;
        (*reencoded)++;
    }
    if (rc == VIT_OK) {
        const char *slash = strrchr(path, '/');
        ExampleFields f = {
            .encoded = enc,
            .encoded_len = enc_len,
            .label = it->cls + 1,  // the recipe's labels are 1-based
            .synset = c->l->classes.v[it->cls],
            .text = "",
            .filename = slash ? slash + 1 : path,
            .height = img.height,
            .width = img.width,
            .channels = 3,
        };
        uint8_t *rec = NULL;
        size_t rec_len = 0;
        rc = example_build_image(&f, &rec, &rec_len);
        if (rc == VIT_OK) rc = tfr_write(w, rec, rec_len);
        free(rec);
    }
    image_free(&img);
    free(path);
    return rc;
}

static int write_shard(Ctx *c, const Job *j, Scratch *s, long *written, long *skipped, long *reencoded) {
    TfrWriter *w = tfr_writer_open(j->path);
    if (!w) return VIT_ERR;
    long n = 0;
    for (size_t i = j->first; i < j->end; i += j->step, n++) {
        // Another worker failed: stop early, its message is the one reported.
        if (__atomic_load_n(&c->failed, __ATOMIC_RELAXED) ||
            write_item(c, w, &j->items[i], s, skipped, reencoded) != VIT_OK) {
            tfr_writer_abort(w);
            return VIT_ERR;
        }
    }
    *written = n - *skipped;
    return tfr_writer_close(w);
}

static void *worker(void *arg) {
    Ctx *c = arg;
    Scratch s = {0};
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int k = c->failed || c->next >= c->n_jobs ? -1 : c->next++;
        pthread_mutex_unlock(&c->mu);
        if (k < 0) break;
        const Job *j = &c->jobs[k];
        long written = 0, skipped = 0, reencoded = 0;
        int rc = write_shard(c, j, &s, &written, &skipped, &reencoded);
        pthread_mutex_lock(&c->mu);
        if (rc != VIT_OK) {
            if (!c->failed) snprintf(c->error, sizeof c->error, "%s", vit_error());
            __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        } else {
            c->written[j->validation] += written;
            c->skipped += skipped;
            c->reencoded += reencoded;
            c->done++;
            double t = clock_seconds();
            if (c->o->progress && t - c->last_print >= PROGRESS_SECONDS) {
                fprintf(c->o->progress, "prep: %d/%d shards, %ld images, %.0f s\n", c->done, c->n_jobs,
                        c->written[0] + c->written[1], t - c->start);
                fflush(c->o->progress);
                c->last_print = t;
            }
        }
        pthread_mutex_unlock(&c->mu);
    }
    free(s.file);
    free(s.jpeg.buf);
    return NULL;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) == 0 || (errno == EEXIST && path_is_dir(path))) return VIT_OK;
    return vit_fail("%s: cannot create folder: %s", path, strerror(errno == EEXIST ? ENOTDIR : errno));
}

// Creates path and its missing parents.
static int make_dirs(const char *path) {
    char *p = strdup(path);
    if (!p) return vit_fail("out of memory");
    int rc = VIT_OK;
    for (char *q = p + 1; rc == VIT_OK && *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (!path_is_dir(p)) rc = make_dir(p);
        *q = '/';
    }
    if (rc == VIT_OK) rc = make_dir(p);
    free(p);
    return rc;
}

// The trainer reads every "<prefix>-*" file; shards of a run with another shard count would
// be read as well, so they are pointed out (not deleted: they are the user's files).
static void note_leftovers(FILE *notes, const char *dir, const char *prefix, int shards) {
    if (!notes) return;
    DIR *d = opendir(dir);
    if (!d) return;
    int count = 0;
    size_t plen = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d))) {
        int idx, of, end = 0;
        if (strncmp(e->d_name, prefix, plen) || e->d_name[plen] != '-') continue;
        if (sscanf(e->d_name + plen + 1, "%d-of-%d%n", &idx, &of, &end) == 2 && !e->d_name[plen + 1 + end] &&
            of == shards)
            continue;
        count++;
    }
    closedir(d);
    if (count)
        fprintf(notes, "note: %s holds %d other %s-* file%s (another run's shards?); the trainer reads them too\n", dir,
                count, prefix, count == 1 ? "" : "s");
}

// <out_dir>/classes.txt: the train class folders in label order (label - 1 = line index),
// so training on the shards knows the class count and the names.
static int write_class_names(const char *out_dir, const Names *classes) {
    char *path = join(out_dir, "classes.txt"), *tmp = path ? atomic_temp_path(path) : NULL;
    if (!tmp) {
        free(path);
        return vit_fail("out of memory");
    }
    FILE *f = fopen(tmp, "w");
    int rc = f ? VIT_OK : vit_fail("%s: %s", tmp, strerror(errno)), renamed = 0;
    for (size_t i = 0; f && i < classes->n; i++) fprintf(f, "%s\n", classes->v[i]);
    if (f && (fflush(f) != 0 || fsync(fileno(f)) != 0 || ferror(f))) rc = vit_fail("%s: %s", tmp, strerror(errno));
    if (f && fclose(f) != 0 && rc == VIT_OK) rc = vit_fail("%s: %s", tmp, strerror(errno));
    if (rc == VIT_OK) rc = atomic_commit(tmp, path, &renamed);
    if (!renamed) unlink(tmp);
    free(tmp);
    free(path);
    return rc;
}

static int add_jobs(Job *jobs, int *n, const char *out_dir, int validation, const Items *items, int shards) {
    const char *sub = validation ? "validation" : "train";
    for (int k = 0; k < shards; k++) {
        Job *j = &jobs[(*n)++];
        size_t len = strlen(out_dir) + 2 * strlen(sub) + 32;
        if (!(j->path = malloc(len))) return vit_fail("out of memory");
        snprintf(j->path, len, "%s/%s/%s-%05d-of-%05d", out_dir, sub, sub, k, shards);
        j->items = items->v;
        j->validation = validation;
        if (validation) {
            // Contiguous ranges: read in shard order, the shards give the sorted list.
            j->first = items->n * (size_t)k / (size_t)shards;
            j->end = items->n * (size_t)(k + 1) / (size_t)shards;
            j->step = 1;
        } else {
            // Round-robin over the shuffled list: every shard mixes all classes.
            j->first = (size_t)k;
            j->end = items->n;
            j->step = (size_t)shards;
        }
    }
    return VIT_OK;
}

int prep_run(const PrepOptions *o, PrepStats *st) {
    memset(st, 0, sizeof *st);
    if (!o->raw_dir || !*o->raw_dir) return vit_fail("--raw_data_dir is required");
    if (!o->out_dir || !*o->out_dir) return vit_fail("--output_dir is required");
    if (o->train_shards < 1 || o->train_shards > 99999)
        return vit_fail("--train_shards %d: must be between 1 and 99999", o->train_shards);
    if (o->val_shards < 1 || o->val_shards > 99999)
        return vit_fail("--val_shards %d: must be between 1 and 99999", o->val_shards);
    if (o->workers < 0) return vit_fail("--data_workers %d: must be >= 0", o->workers);
    if (!path_is_dir(o->raw_dir)) {
        struct stat s;
        if (stat(o->raw_dir, &s) != 0) return vit_fail("--raw_data_dir %s: %s", o->raw_dir, strerror(errno));
        return vit_fail("--raw_data_dir %s: not a folder", o->raw_dir);
    }

    Listing l = {0};
    Ctx c = {.o = o, .l = &l};
    int rc = list_train(o->raw_dir, &l);
    if (rc == VIT_OK) rc = list_val(o, &l);
    if (rc == VIT_OK) {
        shuffle(&l.train, SHUFFLE_SEED);
        char *tdir = join(o->out_dir, "train"), *vdir = join(o->out_dir, "validation");
        rc = !tdir || !vdir ? vit_fail("out of memory") : make_dirs(tdir);
        if (rc == VIT_OK) rc = make_dir(vdir);
        free(tdir);
        free(vdir);
    }
    // An empty shard is a file for nothing: no more shards than images.
    int train_shards = (size_t)o->train_shards > l.train.n ? (int)l.train.n : o->train_shards;
    int val_shards = (size_t)o->val_shards > l.val.n ? (int)l.val.n : o->val_shards;
    if (rc == VIT_OK && o->notes && (train_shards < o->train_shards || val_shards < o->val_shards))
        fprintf(o->notes, "note: %zu train and %zu validation images: writing %d and %d shards (--train_shards %d, "
                          "--val_shards %d), one image or more each\n",
                l.train.n, l.val.n, train_shards, val_shards, o->train_shards, o->val_shards);
    if (rc == VIT_OK) rc = write_class_names(o->out_dir, &l.classes);
    if (rc == VIT_OK) {
        c.jobs = calloc((size_t)train_shards + (size_t)val_shards, sizeof *c.jobs);
        rc = c.jobs ? VIT_OK : vit_fail("out of memory");
    }
    if (rc == VIT_OK) rc = add_jobs(c.jobs, &c.n_jobs, o->out_dir, 0, &l.train, train_shards);
    if (rc == VIT_OK) rc = add_jobs(c.jobs, &c.n_jobs, o->out_dir, 1, &l.val, val_shards);

    if (rc == VIT_OK) {
        int workers = o->workers;
        if (workers == 0) {
            long cores = sysconf(_SC_NPROCESSORS_ONLN);
            workers = cores > 0 ? (int)(cores < 256 ? cores : 256) : 1;
        }
        if (workers > c.n_jobs) workers = c.n_jobs;
        pthread_t *threads = calloc((size_t)workers, sizeof *threads);
        pthread_mutex_init(&c.mu, NULL);
        c.start = c.last_print = clock_seconds();
        int started = 0;
        if (threads)
            while (started < workers && pthread_create(&threads[started], NULL, worker, &c) == 0) started++;
        if (started == 0) {
            rc = vit_fail("cannot start worker threads");
        } else {
            for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
            if (c.failed) rc = vit_fail("%s", c.error);
        }
        pthread_mutex_destroy(&c.mu);
        free(threads);
    }
    if (rc == VIT_OK) {
        st->train = c.written[0];
        st->val = c.written[1];
        st->reencoded = c.reencoded;
        st->skipped = c.skipped;
        st->classes = (int)l.classes.n;
        st->train_shards = train_shards;
        st->val_shards = val_shards;
        char *tdir = join(o->out_dir, "train"), *vdir = join(o->out_dir, "validation");
        if (tdir) note_leftovers(o->notes, tdir, "train", train_shards);
        if (vdir) note_leftovers(o->notes, vdir, "validation", val_shards);
        free(tdir);
        free(vdir);
    }
    for (int i = 0; i < c.n_jobs; i++) free(c.jobs[i].path);
    free(c.jobs);
    listing_free(&l);
    return rc;
}
