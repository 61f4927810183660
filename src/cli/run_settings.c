#include "run_settings.h"
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "optim/optimizer.h"
#include "train/checkpoint.h"
#include "util/status.h"
#include "util/fs.h"

static int is_checkpoint_name(const char *name) {
    size_t len = strlen(name);
    return len >= 12 && !strcmp(name + len - 12, ".safetensors") && strstr(name, "-ckpt-");
}

int run_is_full_resume(const char *file) {
    size_t len = file ? strlen(file) : 0;
    return len > 12 && !strcmp(file + len - 12, ".safetensors");
}

// ---- which checkpoint a folder means ----

typedef struct {
    struct timespec mtime;
    char name[256];  // a d_name (NAME_MAX 255)
} CkCandidate;

static int newer_first(const void *a, const void *b) {
    const CkCandidate *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec > y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec > y->mtime.tv_nsec ? -1 : 1;
    return -strcmp(x->name, y->name);
}

static int later(struct timespec a, struct timespec b) {
    return a.tv_sec != b.tv_sec ? a.tv_sec > b.tv_sec : a.tv_nsec > b.tv_nsec;
}

// The checkpoints of one folder, newest first (*n = 0: none).
static int list_checkpoints(const char *dir, CkCandidate **out, int *n) {
    *out = NULL, *n = 0;
    DIR *d = opendir(dir);
    if (!d) return vit_fail("--resume_from_checkpoint_path %s: %s", dir, strerror(errno));
    CkCandidate *c = NULL;
    int cap = 0;
    struct dirent *e;
    char path[4400];
    while ((e = readdir(d))) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!is_checkpoint_name(e->d_name) || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (*n == cap) {
            CkCandidate *g = realloc(c, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *c);
            if (!g) {
                free(c), closedir(d);
                return vit_fail("out of memory listing %s", dir);
            }
            c = g;
        }
        c[*n].mtime = st.st_mtim;
        snprintf(c[(*n)++].name, sizeof c->name, "%s", e->d_name);
    }
    closedir(d);
    if (*n) qsort(c, (size_t)*n, sizeof *c, newer_first);
    *out = c;
    return VIT_OK;
}

// The most recently written checkpoint of a folder that verifies (a write cut short leaves
// only a *.tmp.* file; a file damaged since is skipped with one line saying why), left open
// in *ck.
static int newest_checkpoint(const char *dir, char *path, size_t cap, Checkpoint *ck) {
    CkCandidate *c;
    int n, found = 0;
    if (list_checkpoints(dir, &c, &n)) return VIT_ERR;
    if (!n) return vit_fail("--resume_from_checkpoint_path %s: no *-ckpt-*.safetensors checkpoint in the folder", dir);
    for (int i = 0; i < n && !found; i++) {
        snprintf(path, cap, "%s/%s", dir, c[i].name);
        found = checkpoint_open(ck, path) == VIT_OK;
        if (!found) fprintf(stderr, "skipping a checkpoint that does not verify: %s\n", vit_error());
    }
    free(c);
    if (!found)
        return vit_fail("--resume_from_checkpoint_path %s: none of its %d checkpoints verifies (each is named above)",
                        dir, n);
    return VIT_OK;
}

// A --save_dir of run folders: the run whose newest checkpoint is the most recent.
static int newest_run(const char *dir, char *run, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return vit_fail("--resume_from_checkpoint_path %s: %s", dir, strerror(errno));
    struct timespec best = {0, 0};
    int runs = 0;
    struct dirent *e;
    char sub[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub) continue;
        CkCandidate *c;
        int n;
        if (!path_is_dir(sub) || list_checkpoints(sub, &c, &n)) continue;
        if (n && (!runs++ || later(c[0].mtime, best))) {
            best = c[0].mtime;
            snprintf(run, cap, "%s", sub);
        }
        free(c);
    }
    closedir(d);
    if (!runs)
        return vit_fail("--resume_from_checkpoint_path %s: no *-ckpt-*.safetensors checkpoint in the folder or in "
                        "run folders under it", dir);
    if (runs > 1)
        fprintf(stderr, "note: %s holds %d runs: resuming the newest, %s (name a run folder to choose another)\n", dir,
                runs, run);
    return VIT_OK;
}

int run_resume_file(const char *given, char *file, size_t cap, Checkpoint *ck) {
    if (!path_is_dir(given)) {
        if (snprintf(file, cap, "%s", given) >= (int)cap) return vit_fail("--resume_from_checkpoint_path: path too long");
        return run_is_full_resume(file) ? checkpoint_open(ck, file) : VIT_OK;
    }
    CkCandidate *c;
    int n;
    if (list_checkpoints(given, &c, &n)) return VIT_ERR;
    free(c);
    if (n) return newest_checkpoint(given, file, cap, ck);
    char run[4096];
    return newest_run(given, run, sizeof run) || newest_checkpoint(run, file, cap, ck);
}

// ---- the checkpoint's settings ----

// Flags that describe this process rather than the run: never taken from a checkpoint.
static int per_process(const char *name) {
    static const char *const names[] = {"resume_from_checkpoint_path", "resume_from_epoch", "evaluate_checkpoint_path",
                                        "distributed", "zero", "profile"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i])) return 1;
    return 0;
}

// The value a flag has in the checkpoint's tensors or random streams, which a resume cannot
// change: the model's shape (from the model.* metadata, whatever flags made it), the
// optimizer (its state's layout) and the seed. NULL for any other flag.
static const char *fixed_value(const Checkpoint *ck, const char *name, char *buf, size_t cap) {
    const ViTConfig *c = &ck->cfg;
    struct { const char *flag; int value; } ints[] = {
        {"hidden_size", c->hidden}, {"num_layers", c->layers},   {"num_heads", c->heads},
        {"mlp_dim", c->mlp},        {"patch_size", c->patch},    {"image_size", c->image},
        {"channels", c->channels},  {"num_classes", c->classes}, {"representation_size", c->representation}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (!strcmp(name, ints[i].flag)) return snprintf(buf, cap, "%d", ints[i].value), buf;
    if (!strcmp(name, "model")) return c->name;
    if (!strcmp(name, "gelu")) return c->gelu_tanh ? "tanh" : "erf";
    if (!strcmp(name, "layernorm_eps")) return snprintf(buf, cap, "%.9g", c->layernorm_eps), buf;
    if (!strcmp(name, "optimizer")) return ck->has_optimizer ? optim_name(ck->opt) : NULL;
    if (!strcmp(name, "seed")) return snprintf(buf, cap, "%llu", (unsigned long long)ck->state.seed), buf;
    return NULL;
}

// A value as the user would write it: numbers in %g ("0.01", not "0.00999999978").
static const char *shown(int i, const char *text, char *buf, size_t cap) {
    if (g_flags[i].type != FLAG_FLOAT || !*text) return *text ? text : "''";
    snprintf(buf, cap, "%g", strtod(text, NULL));
    return buf;
}

static int take_flag(ParsedOptions *p, const Checkpoint *ck, const char *file, int i) {
    const Flag *f = &g_flags[i];
    if (!(f->commands & CMD_TRAIN) || f->ignored || per_process(f->name)) return VIT_OK;
    char key[96], buf[64], now[1100];
    snprintf(key, sizeof key, "flags.%s", f->name);
    const char *fixed = fixed_value(ck, f->name, buf, sizeof buf);
    const char *recorded = fixed ? fixed : st_meta(&ck->st, key);
    if (!recorded) return VIT_OK;  // an older checkpoint: today's default
    if (p->set[i] == FLAG_SET_BY_USER) {
        flags_value_text(p, i, now, sizeof now);
        if (flags_same_text(i, now, recorded)) return VIT_OK;
        char a[64], b[64];
        const char *what = !strcmp(f->name, "optimizer") ? "its optimizer state"
                           : !strcmp(f->name, "seed")    ? "its seed (data order, dropout)"
                                                         : "the model's shape";
        if (fixed)
            return vit_fail("--%s %s: the run in %s has %s, and a resume cannot change %s (start a new run for that)",
                            f->name, shown(i, now, a, sizeof a), file, shown(i, recorded, b, sizeof b), what);
        fprintf(stderr, "--%s %s overrides the checkpoint's %s\n", f->name, shown(i, now, a, sizeof a),
                shown(i, recorded, b, sizeof b));
        return VIT_OK;
    }
    if (flags_set_text(p, i, recorded)) return VIT_OK;  // unreadable (its type changed): keep the default
    if (!flags_same_text(i, recorded, f->def)) p->set[i] = FLAG_SET_BY_CHECKPOINT;
    return VIT_OK;
}

int run_resume_settings(ParsedOptions *p, const char *file, const Checkpoint *ck) {
    int rc = VIT_OK;
    for (int i = 0; i < g_flag_count && rc == VIT_OK; i++) rc = take_flag(p, ck, file, i);
    return rc;
}

// ---- the run's folders ----

static void join(char *out, size_t cap, const char *dir, const char *name) {
    if (!strcmp(name, "."))
        snprintf(out, cap, "%s", dir);
    else
        snprintf(out, cap, "%s/%s", dir, name);
}

static int nonempty_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int any = 0;
    while (!any && (e = readdir(d))) any = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return any;
}

static int taken(const char *save_dir, const char *log_dir, const char *name) {
    char a[4096], b[4096];
    join(a, sizeof a, save_dir, name);
    join(b, sizeof b, log_dir, name);
    struct stat st;
    return (*save_dir && stat(a, &st) == 0) || (*log_dir && stat(b, &st) == 0);
}

static int check_name(const char *name) {
    if (!*name) return vit_fail("--run_name '': expected a name ('.' writes into --save_dir and --log_dir directly)");
    if (strchr(name, '/') || !strcmp(name, ".."))
        return vit_fail("--run_name %s: a folder name without '/' (or '.' for none)", name);
    return VIT_OK;
}

int run_folders_choose(RunFolders *f, ParsedOptions *p, const char *resume_file) {
    Options *o = &p->o;
    memset(f, 0, sizeof *f);
    if (resume_file) {
        // The run continues: its name from the checkpoint (an older one, without it, wrote
        // into --save_dir itself), its checkpoints beside the one resumed unless the user
        // named other folders.
        snprintf(f->name, sizeof f->name, "%s", *o->run_name ? o->run_name : ".");
        if (check_name(f->name)) return VIT_ERR;
        if (*o->save_dir && !flags_on_command_line(p, "save_dir") && !flags_on_command_line(p, "run_name")) {
            snprintf(f->save, sizeof f->save, "%s", resume_file);
            char *slash = strrchr(f->save, '/');
            if (slash)
                *slash = 0;
            else
                snprintf(f->save, sizeof f->save, ".");
        } else if (*o->save_dir) {
            join(f->save, sizeof f->save, o->save_dir, f->name);
        }
    } else if (flags_on_command_line(p, "run_name")) {
        snprintf(f->name, sizeof f->name, "%s", o->run_name);
        if (check_name(f->name)) return VIT_ERR;
        char dir[4096];
        for (int k = 0; k < 2 && strcmp(f->name, "."); k++) {
            const char *base = k ? o->log_dir : o->save_dir;
            join(dir, sizeof dir, base, f->name);
            if (*base && nonempty_dir(dir))
                return vit_fail("--run_name %s: %s already holds another run's files (choose another name, or "
                                "continue that run with --resume_from_checkpoint_path %s)", f->name, dir, dir);
        }
    } else {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
        snprintf(f->name, sizeof f->name, "%.200s-%s", o->model, stamp);
        for (int k = 2; taken(o->save_dir, o->log_dir, f->name); k++)
            snprintf(f->name, sizeof f->name, "%.200s-%s-%d", o->model, stamp, k);
    }
    if (!resume_file && *o->save_dir) join(f->save, sizeof f->save, o->save_dir, f->name);
    if (*o->log_dir) join(f->log, sizeof f->log, o->log_dir, f->name);
    snprintf(o->run_name, sizeof o->run_name, "%s", f->name);
    return VIT_OK;
}

// mkdir -p, remembering the outermost folder it created.
static int make_dirs(const char *flag, const char *dir, size_t *made) {
    char part[4096];
    snprintf(part, sizeof part, "%s", dir);
    size_t len = strlen(part);
    for (size_t k = 1; k <= len; k++) {
        if (part[k] != '/' && part[k] != 0) continue;
        char c = part[k];
        part[k] = 0;
        if (mkdir(part, 0777) == 0) {
            if (!*made) *made = k;
        } else if (errno != EEXIST) {
            return vit_fail("--%s %s: cannot create %s: %s", flag, dir, part, strerror(errno));
        }
        part[k] = c;
    }
    if (!path_is_dir(dir)) return vit_fail("--%s %s: not a folder", flag, dir);
    if (access(dir, W_OK) != 0) return vit_fail("--%s %s: not writable", flag, dir);
    return VIT_OK;
}

int run_folders_make_save(RunFolders *f) { return *f->save ? make_dirs("save_dir", f->save, &f->save_made) : VIT_OK; }
int run_folders_make_log(RunFolders *f) { return *f->log ? make_dirs("log_dir", f->log, &f->log_made) : VIT_OK; }

// Removes dir and its parents up to the outermost one created, while they are empty.
static void remove_made(const char *dir, size_t made) {
    char part[4096];
    snprintf(part, sizeof part, "%s", dir);
    for (size_t len = strlen(part); made && len >= made; len = strlen(part)) {
        if (rmdir(part) != 0) return;
        char *slash = strrchr(part, '/');
        if (!slash) return;
        *slash = 0;
    }
}

// This process's TensorBoard files (events.out.tfevents.<time>.<host>.<pid>) in dir.
static void remove_own_events(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    char pid[32], path[4400];
    snprintf(pid, sizeof pid, ".%ld", (long)getpid());
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name), n = strlen(pid);
        if (strncmp(e->d_name, "events.out.tfevents.", 20) || len < n || strcmp(e->d_name + len - n, pid)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

void run_folders_discard(const RunFolders *f) {
    if (*f->log) {
        char eval[4200];
        snprintf(eval, sizeof eval, "%s/eval", f->log);
        remove_own_events(f->log);
        remove_own_events(eval);
        if (f->log_made) rmdir(eval);
        remove_made(f->log, f->log_made);
    }
    if (*f->save) remove_made(f->save, f->save_made);
}

void run_folders_print(const RunFolders *f, FILE *out, const char *what) {
    if (!out) return;
    fprintf(out, "%s %s: checkpoints %s%s, logs %s%s\n", what, f->name, *f->save ? "in " : "off (--save_dir=)",
            f->save, *f->log ? "in " : "off (--log_dir=)", f->log);
}
