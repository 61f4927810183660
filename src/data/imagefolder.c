// A folder of class folders: <dir>/train/<class>/* and <dir>/val/<class>/*. The class index
// is the position of the class folder in the sorted list of train class folders; val must
// hold the same classes, since a class in only one split is a mistake a count hides.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "dataset.h"
#include "util/status.h"
#include "util/fs.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Sorted names of the entries of `dir` that are folders (dirs = 1) or image files (dirs = 0).
static int list(const char *dir, int dirs, char ***out, int *n) {
    *out = NULL;
    *n = 0;
    DIR *dp = opendir(dir);
    if (!dp) return vit_fail("%s: cannot open the folder", dir);
    int cap = 0, rc = VIT_OK;
    struct dirent *e;
    while ((e = readdir(dp)) && rc == VIT_OK) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || (dirs ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))) continue;
        if (!dirs) {
            const char *ext = strrchr(e->d_name, '.');
            if (!ext || (strcasecmp(ext, ".jpg") && strcasecmp(ext, ".jpeg") && strcasecmp(ext, ".png"))) continue;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            char **g = realloc(*out, (size_t)cap * sizeof *g);
            if (!g) {
                rc = vit_fail("out of memory listing %s", dir);
                break;
            }
            *out = g;
        }
        (*out)[(*n)++] = strdup(e->d_name);
    }
    closedir(dp);
    if (*n) qsort(*out, (size_t)*n, sizeof **out, cmp_str);
    return rc;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static int open_split(Dataset *d, const char *name, const char *root, char **classes, int n_classes) {
    memset(d, 0, sizeof *d);
    d->name = name;
    d->kind = DATA_FOLDER;
    d->classes = n_classes;
    int cap = 0, rc = VIT_OK;
    for (int c = 0; c < n_classes && rc == VIT_OK; c++) {
        char cdir[4096 + 260];
        snprintf(cdir, sizeof cdir, "%s/%s", root, classes[c]);
        struct stat st;
        if (stat(cdir, &st) != 0) continue;  // a val split may lack a class
        char **files;
        int nf;
        if ((rc = list(cdir, 0, &files, &nf))) break;
        for (int i = 0; i < nf && rc == VIT_OK; i++) {
            if (d->count == cap) {
                cap = cap ? 2 * cap : 1024;
                char **p = realloc(d->paths, (size_t)cap * sizeof *p);
                int *l = realloc(d->labels, (size_t)cap * sizeof *l);
                if (p) d->paths = p;
                if (l) d->labels = l;
                if (!p || !l) rc = vit_fail("out of memory listing %s", root);
            }
            if (rc == VIT_OK) {
                size_t len = strlen(cdir) + strlen(files[i]) + 2;
                d->paths[d->count] = malloc(len);
                if (d->paths[d->count]) snprintf(d->paths[d->count], len, "%s/%s", cdir, files[i]);
                d->labels[d->count++] = c;
            }
        }
        free_list(files, nf);
    }
    if (rc == VIT_OK && d->count == 0) rc = vit_fail("%s: no JPEG or PNG images in its class folders", root);
    if (rc != VIT_OK) dataset_free(d);
    return rc;
}

void dataset_describe_folder(const char *dir, int max, char *buf, size_t n) {
    buf[0] = 0;
    DIR *dp = opendir(dir);
    if (!dp) {
        snprintf(buf, n, "nothing readable");
        return;
    }
    // Sorted, so the message is the same on every machine.
    char *names[64];
    int count = 0, more = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.') continue;
        if (count == 64) {
            more++;
            continue;
        }
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        int is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
        size_t len = strlen(e->d_name) + 2;
        if ((names[count] = malloc(len))) snprintf(names[count++], len, "%s%s", e->d_name, is_dir ? "/" : "");
    }
    closedir(dp);
    qsort(names, (size_t)count, sizeof *names, cmp_str);
    for (int i = 0; i < count; i++) {
        size_t len = strlen(buf);
        if (i < max) snprintf(buf + len, n - len, "%s%s", i ? ", " : "", names[i]);
        free(names[i]);
    }
    size_t len = strlen(buf);
    if (count + more > max) snprintf(buf + len, n - len, " and %d more", count + more - max);
    if (!count) snprintf(buf, n, "nothing");
}

int dataset_has_class_folders(const char *dir, const char *sub) {
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (!path_is_dir(path)) return 0;
    char **names;
    int n;
    if (list(path, 1, &names, &n)) return 0;
    free_list(names, n);
    return n > 0;
}

// Names of up to a few classes, for messages ("bird, cat, dog and 7 more").
static void some_names(char **v, int n, char *buf, size_t cap) {
    buf[0] = 0;
    for (int i = 0; i < n && i < 5; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", v[i]);
    }
    size_t len = strlen(buf);
    if (n > 5) snprintf(buf + len, cap - len, " and %d more", n - 5);
}

// The first class of `a` missing from `b` (both sorted), or NULL.
static const char *first_missing(char **a, int na, char **b, int nb) {
    for (int i = 0, j = 0; i < na; i++) {
        while (j < nb && strcmp(b[j], a[i]) < 0) j++;
        if (j == nb || strcmp(b[j], a[i])) return a[i];
    }
    return NULL;
}

static int same_classes(const char *tdir, const char *vdir, char **tc, int nt, char **vc, int nv) {
    char seen[512];
    const char *c = first_missing(vc, nv, tc, nt);
    if (c) {
        some_names(tc, nt, seen, sizeof seen);
        return vit_fail("%s/%s: a class only in val/: %s has no '%s' folder (its classes: %s); add it or remove the "
                        "val/ one", vdir, c, tdir, c, seen);
    }
    if ((c = first_missing(tc, nt, vc, nv))) {
        some_names(vc, nv, seen, sizeof seen);
        return vit_fail("%s/%s: a class only in train/: %s has no '%s' folder (its classes: %s); give it validation "
                        "images or remove it", tdir, c, vdir, c, seen);
    }
    return VIT_OK;
}

// Both datasets get their own copy of the names (dataset_free frees each).
static int set_names(Dataset *d, char **classes, int n) {
    if (!(d->class_names = calloc((size_t)n, sizeof *d->class_names))) return vit_fail("out of memory");
    d->n_class_names = n;
    for (int i = 0; i < n; i++)
        if (!(d->class_names[i] = strdup(classes[i]))) return vit_fail("out of memory");
    return VIT_OK;
}

static int open_folder(Dataset *train, Dataset *val, const char *dir, int with_val) {
    char tdir[4096 + 8], vdir[4096 + 8];
    snprintf(tdir, sizeof tdir, "%s/train", dir);
    snprintf(vdir, sizeof vdir, "%s/val", dir);
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    char seen[1024];
    if (!path_is_dir(tdir) || (with_val && !path_is_dir(vdir))) {
        dataset_describe_folder(dir, 6, seen, sizeof seen);
        return vit_fail("%s: found %s; a folder dataset needs train/<class>/ and val/<class>/ folders (rename a "
                        "validation/ folder to val/, point --dataset_dir at the folder holding both, or pass "
                        "--validation_steps 0 to train without val/)", dir, seen);
    }
    char **classes, **vclasses = NULL;
    int n, nv = 0;
    if (list(tdir, 1, &classes, &n)) return VIT_ERR;
    int rc = n == 0 ? vit_fail("%s: no class folders", tdir) : VIT_OK;
    if (rc == VIT_OK && with_val) {
        rc = list(vdir, 1, &vclasses, &nv);
        if (rc == VIT_OK) rc = same_classes(tdir, vdir, classes, n, vclasses, nv);
    }
    if (rc == VIT_OK) rc = open_split(train, "train", tdir, classes, n);
    if (rc == VIT_OK && with_val && (rc = open_split(val, "val", vdir, classes, n))) dataset_free(train);
    if (rc == VIT_OK && !with_val) val->name = "val", val->kind = DATA_FOLDER, val->classes = n;
    if (rc == VIT_OK && (set_names(train, classes, n) || set_names(val, classes, n))) {
        dataset_free(train);
        dataset_free(val);
        rc = VIT_ERR;
    }
    free_list(classes, n);
    free_list(vclasses, nv);
    return rc;
}

int dataset_open_folder(Dataset *train, Dataset *val, const char *dir) { return open_folder(train, val, dir, 1); }

int dataset_open_folder_train_only(Dataset *train, Dataset *val, const char *dir) {
    return open_folder(train, val, dir, 0);
}
