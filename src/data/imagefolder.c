// A folder of class folders: <dir>/train/<class>/* and <dir>/val/<class>/*. The class index
// is the position of the class folder in the sorted list of train class folders, so train
// and val agree even when val lacks a class.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "dataset.h"
#include "util/status.h"

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

int dataset_open_folder(Dataset *train, Dataset *val, const char *dir) {
    char tdir[4096 + 8], vdir[4096 + 8];
    snprintf(tdir, sizeof tdir, "%s/train", dir);
    snprintf(vdir, sizeof vdir, "%s/val", dir);
    char **classes;
    int n;
    if (list(tdir, 1, &classes, &n)) return VIT_ERR;
    if (n == 0) {
        free_list(classes, n);
        return vit_fail("%s: no class folders", tdir);
    }
    int rc = open_split(train, "train", tdir, classes, n);
    if (rc == VIT_OK) {
        rc = open_split(val, "val", vdir, classes, n);
        if (rc) dataset_free(train);
    }
    free_list(classes, n);
    return rc;
}
