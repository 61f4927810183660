// ImageNet TFRecord shards as a dataset: every record's (file, offset) in one index, built by
// reading the shards once and cached, so that an epoch can visit the records in a global
// random order (better mixing than a shuffle buffer, and every rank/epoch is reproducible).
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "dataset.h"
#include "util/atomic_file.h"
#include "tfrecord.h"
#include "util/status.h"

static const char INDEX_MAGIC[8] = {'V', 'I', 'T', 'C', 'I', 'D', 'X', '1'};

typedef struct {
    int64_t size, mtime_ns;
} FileStamp;

static int stamp_of(const char *path, FileStamp *st) {
    struct stat s;
    if (stat(path, &s) != 0) return vit_fail("%s: %s", path, strerror(errno));
    st->size = s.st_size;
    st->mtime_ns = (int64_t)s.st_mtim.tv_sec * 1000000000 + s.st_mtim.tv_nsec;
    return VIT_OK;
}

// The cache: magic, file count, then per file (name length, name, size, mtime, record
// count, offsets). It is used only when every file name, size and time still matches.
static int load_index(Dataset *d, const char *cache, const FileStamp *stamps) {
    FILE *f = fopen(cache, "rb");
    if (!f) return VIT_ERR;
    char magic[8];
    int32_t n;
    int ok = fread(magic, 8, 1, f) == 1 && !memcmp(magic, INDEX_MAGIC, 8) && fread(&n, 4, 1, f) == 1 &&
             n == d->n_files;
    size_t cap = 0, count = 0;
    RecordRef *recs = NULL;
    for (int i = 0; ok && i < d->n_files; i++) {
        int32_t len;
        char name[4096];
        FileStamp st;
        int64_t nrec;
        ok = fread(&len, 4, 1, f) == 1 && len > 0 && len < (int32_t)sizeof name && fread(name, (size_t)len, 1, f) == 1;
        if (ok) name[len] = 0;
        ok = ok && !strcmp(name, d->files[i]) && fread(&st, sizeof st, 1, f) == 1 && st.size == stamps[i].size &&
             st.mtime_ns == stamps[i].mtime_ns && fread(&nrec, 8, 1, f) == 1 && nrec >= 0 && nrec < (1LL << 31);
        if (ok && count + (size_t)nrec > cap) {
            cap = (count + (size_t)nrec) * 2 + 16;
            RecordRef *g = realloc(recs, cap * sizeof *g);
            ok = g != NULL;
            if (g) recs = g;
        }
        for (int64_t k = 0; ok && k < nrec; k++) {
            uint64_t off;
            ok = fread(&off, 8, 1, f) == 1 && off < (uint64_t)st.size;
            recs[count++] = (RecordRef){i, off};
        }
    }
    fclose(f);
    if (!ok || count > 2000000000u) {
        free(recs);
        return VIT_ERR;
    }
    d->records = recs;
    d->count = (int)count;
    return VIT_OK;
}

static void save_index(const Dataset *d, const char *cache, const FileStamp *stamps, const int64_t *per_file) {
    char *tmp = atomic_temp_path(cache);
    FILE *f = tmp ? fopen(tmp, "wb") : NULL;
    if (!f) {
        free(tmp);
        return;  // a cache is an optimisation: an unwritable folder only costs the next start
    }
    int32_t n = d->n_files;
    int ok = fwrite(INDEX_MAGIC, 8, 1, f) == 1 && fwrite(&n, 4, 1, f) == 1;
    size_t at = 0;
    for (int i = 0; ok && i < d->n_files; i++) {
        int32_t len = (int32_t)strlen(d->files[i]);
        ok = fwrite(&len, 4, 1, f) == 1 && fwrite(d->files[i], (size_t)len, 1, f) == 1 &&
             fwrite(&stamps[i], sizeof stamps[i], 1, f) == 1 && fwrite(&per_file[i], 8, 1, f) == 1;
        for (int64_t k = 0; ok && k < per_file[i]; k++, at++) ok = fwrite(&d->records[at].offset, 8, 1, f) == 1;
    }
    ok = fflush(f) == 0 && ok;
    ok = fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    int renamed = 0;
    if (ok) atomic_commit(tmp, cache, &renamed);
    if (!renamed) unlink(tmp);
    free(tmp);
}

int dataset_open_tfrecord(Dataset *d, const char *name, const char *dir, const char *prefix, const char *cache_dir) {
    memset(d, 0, sizeof *d);
    d->name = name;
    d->kind = DATA_TFRECORD;
    char pattern[4200];
    snprintf(pattern, sizeof pattern, "%s/%s-*", dir, prefix);
    glob_t g;
    int gr = glob(pattern, 0, NULL, &g);
    if (gr != 0 || g.gl_pathc == 0) {
        if (gr == 0) globfree(&g);
        return vit_fail("--dataset_dir %s: no TFRecord shards match %s", dir, pattern);
    }
    // Leftovers of an interrupted writer ("<shard>.tmp.<pid>") are not shards.
    size_t kept = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) kept += !strstr(g.gl_pathv[i], ".tmp.");
    d->n_files = (int)kept;
    if (kept == 0) {
        globfree(&g);
        return vit_fail("--dataset_dir %s: no TFRecord shards match %s", dir, pattern);
    }
    d->files = calloc((size_t)d->n_files, sizeof *d->files);
    d->fds = malloc((size_t)d->n_files * sizeof *d->fds);
    FileStamp *stamps = calloc((size_t)d->n_files, sizeof *stamps);
    int64_t *per_file = calloc((size_t)d->n_files, sizeof *per_file);
    int rc = d->files && d->fds && stamps && per_file ? VIT_OK : vit_fail("out of memory listing %s", pattern);
    for (int i = 0; d->fds && i < d->n_files; i++) d->fds[i] = -1;  // nothing open yet
    for (size_t i = 0, j = 0; rc == VIT_OK && j < g.gl_pathc; j++) {
        if (strstr(g.gl_pathv[j], ".tmp.")) continue;
        d->files[i] = strdup(g.gl_pathv[j]);
        if (!d->files[i])
            rc = vit_fail("out of memory");
        else if (stamp_of(d->files[i], &stamps[i]))
            rc = VIT_ERR;
        else if ((d->fds[i] = open(d->files[i], O_RDONLY)) < 0)
            rc = vit_fail("%s: %s", d->files[i], strerror(errno));
        i++;
    }
    globfree(&g);
    // The cache sits next to the shards ("<dir>/<prefix>.vitc-index") or in --cache_dir.
    char cache[4300];
    if (cache_dir && *cache_dir) {
        char flat[256];
        snprintf(flat, sizeof flat, "%s", prefix);
        for (char *c = flat; *c; c++) *c = *c == '/' ? '_' : *c;
        snprintf(cache, sizeof cache, "%s/%s.vitc-index", cache_dir, flat);
    } else {
        snprintf(cache, sizeof cache, "%s/%s.vitc-index", dir, prefix);
    }
    if (rc == VIT_OK && load_index(d, cache, stamps) != VIT_OK) {
        size_t cap = 0, count = 0;
        for (int i = 0; rc == VIT_OK && i < d->n_files; i++) {
            TfrReader r;
            if (tfr_open(&r, d->files[i])) {
                rc = VIT_ERR;
                break;
            }
            const uint8_t *data;
            size_t len;
            uint64_t off;
            int got;
            while ((got = tfr_next(&r, &data, &len, &off)) == 1) {
                if (count == cap) {
                    cap = cap ? 2 * cap : 4096;
                    RecordRef *grown = realloc(d->records, cap * sizeof *grown);
                    if (!grown) {
                        got = vit_fail("out of memory indexing %s", d->files[i]);
                        break;
                    }
                    d->records = grown;
                }
                d->records[count++] = (RecordRef){i, off};
                per_file[i]++;
            }
            tfr_close(&r);
            if (got < 0) rc = VIT_ERR;
        }
        if (rc == VIT_OK && count > 2000000000u) rc = vit_fail("%s: more than 2e9 records", pattern);
        d->count = (int)count;
        if (rc == VIT_OK) save_index(d, cache, stamps, per_file);
    }
    if (rc == VIT_OK && d->count == 0) rc = vit_fail("%s: the shards hold no records", pattern);
    free(stamps);
    free(per_file);
    if (rc != VIT_OK) dataset_free(d);
    return rc;
}
