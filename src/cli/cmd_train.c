// `vit train`: flags -> data, model (official weights, a checkpoint to resume, or random
// initialisation), optimizer, schedule -> the training loop -> report.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "dist/dist.h"
#include "dist/nccl_sync.h"
#include "prof/profiled_backend.h"
#include "prof/roofline.h"
#include "train/trainer.h"
#include "model_source.h"
#include "util/status.h"

// --drop_path and the Mixup/CutMix flags (timm's train.py), checked before any data is read;
// the model checks the batch and the image size again when it takes them.
static int regularization_from_flags(const Options *o, MixupConfig *mix) {
    if (!(o->drop_path >= 0 && o->drop_path <= 1)) return vit_fail("--drop_path %g: must be in [0, 1]", o->drop_path);
    *mix = (MixupConfig){.mixup_alpha = o->mixup, .cutmix_alpha = o->cutmix, .prob = o->mixup_prob,
                         .switch_prob = o->mixup_switch_prob};
    if (mixup_parse_mode(o->mixup_mode, &mix->mode) || mixup_parse_minmax(o->cutmix_minmax, mix->minmax))
        return VIT_ERR;
    return mixup_validate(mix, o->batch_size / (dist_size() > 0 ? dist_size() : 1), 0);
}

static int check_ranges(const ParsedOptions *p) {
    const Options *o = &p->o;
    MixupConfig mix;
    if (regularization_from_flags(o, &mix)) return VIT_ERR;
    if (o->batch_size < 1) return vit_fail("--batch_size %d: must be positive", o->batch_size);
    if (o->grad_accum_steps < 1) return vit_fail("--grad_accum_steps %d: must be positive", o->grad_accum_steps);
    if (o->epochs < 1) return vit_fail("--epochs %d: must be positive", o->epochs);
    if (o->steps_per_epoch < 0) return vit_fail("--steps_per_epoch %d: must be >= 0", o->steps_per_epoch);
    if (o->validation_steps < -1) return vit_fail("--validation_steps %d: must be >= 0", o->validation_steps);
    if (o->initial_lr < 0) return vit_fail("--initial_lr %g: must be >= 0", o->initial_lr);
    if (o->final_lr < 0) return vit_fail("--final_lr %g: must be >= 0", o->final_lr);
    if (o->warmup_steps < 0) return vit_fail("--warmup_steps %d: must be >= 0", o->warmup_steps);
    if (o->clip_norm < 0) return vit_fail("--clip_norm %g: must be >= 0 (0 = off)", o->clip_norm);
    if (o->label_smoothing < 0 || o->label_smoothing >= 1)
        return vit_fail("--label_smoothing %g: must be in [0, 1)", o->label_smoothing);
    if (o->deterministic && !flags_given(p, "seed")) return vit_fail("--deterministic needs --seed");
    if (flags_given(p, "seed") && o->seed < 0) return vit_fail("--seed %lld: must be >= 0", o->seed);
    if (o->resume_from_epoch < 0 || o->resume_from_epoch >= o->epochs)
        return vit_fail("--resume_from_epoch %d: must be in 0..%d (--epochs %d)", o->resume_from_epoch, o->epochs - 1,
                        o->epochs);
    if (o->checkpoint_every_steps < 0) return vit_fail("--checkpoint_every_steps %d: must be >= 0", o->checkpoint_every_steps);
    if (o->keep_checkpoints < 0) return vit_fail("--keep_checkpoints %d: must be >= 0", o->keep_checkpoints);
    if (o->save_summary_steps < 0) return vit_fail("--save_summary_steps %d: must be >= 0", o->save_summary_steps);
    if (o->data_workers < 0) return vit_fail("--data_workers %d: must be >= 0", o->data_workers);
    if (o->prefetch_batches < 1) return vit_fail("--prefetch_batches %d: must be >= 1", o->prefetch_batches);
    if (o->rotate_deg < 0 || o->rotate_deg > 180) return vit_fail("--rotate_deg %g: must be in [0, 180]", o->rotate_deg);
    AugmentConfig aug;  // --aa, --reprob, --remode, --recount
    augment_defaults(&aug);
    if (augment_set_timm(&aug, o->aa, o->reprob, o->remode, o->recount)) return VIT_ERR;
    if (o->zero != 0 && o->zero != 1)
        return vit_fail("--zero %d: expected 0 (off) or 1 (shard the optimizer state across the ranks)", o->zero);
    if (o->zero && !o->distributed)
        return vit_fail("--zero 1 needs --distributed: it shards the optimizer state across MPI ranks");
    if (strcasecmp(o->head_init, "zeros") && strcasecmp(o->head_init, "glorot"))
        return vit_fail("--head_init %s: expected zeros or glorot", o->head_init);
    return VIT_OK;
}

static int optimizer_from_flags(const ParsedOptions *p, OptimConfig *oc) {
    const Options *o = &p->o;
    if (optim_config_default(oc, o->optimizer)) return VIT_ERR;
    struct { const char *flag; float value; float *field; int positive; } ov[] = {
        {"momentum", o->momentum, &oc->momentum, 0}, {"beta1", o->beta1, &oc->beta1, 0},
        {"beta2", o->beta2, &oc->beta2, 0},          {"epsilon", o->epsilon, &oc->epsilon, 1},
        {"weight_decay", o->weight_decay, &oc->weight_decay, 0},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++) {
        if (!flags_given(p, ov[i].flag)) continue;
        float v = ov[i].value;
        int below_one = i < 3;  // momentum and betas are fractions
        if (v < 0 || (below_one && v >= 1) || (ov[i].positive && v <= 0))
            return vit_fail("--%s %g: out of range", ov[i].flag, v);
        *ov[i].field = v;
    }
    oc->clip_norm = o->clip_norm;
    return VIT_OK;
}

// A decimal number of a flag given as text (kept as the double timm would use).
static int flag_double(const char *flag, const char *text, double *x) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (!*text || *end || errno || !isfinite(v)) return vit_fail("--%s '%s': expected a number", flag, text);
    *x = v;
    return VIT_OK;
}

// --model_ema[_decay, _warmup] and --layer_decay, checked as timm would accept them.
static int ema_from_flags(const ParsedOptions *p, OptimConfig *oc, EmaConfig *ema) {
    const Options *o = &p->o;
    if (flags_given(p, "ema"))
        return vit_fail("--ema selects a checkpoint's average for evaluate, predict and export; training keeps one "
                        "with --model_ema");
    *ema = (EmaConfig){o->model_ema, 0.9998, o->model_ema_warmup};
    if (flag_double("model_ema_decay", o->model_ema_decay, &ema->decay)) return VIT_ERR;
    if (!(ema->decay > 0 && ema->decay < 1))
        return vit_fail("--model_ema_decay %s: must be in (0, 1)", o->model_ema_decay);
    oc->layer_decay = 0;
    if (!flags_given(p, "layer_decay")) return VIT_OK;
    if (flag_double("layer_decay", o->layer_decay, &oc->layer_decay)) return VIT_ERR;
    if (!(oc->layer_decay > 0 && oc->layer_decay <= 1))
        return vit_fail("--layer_decay %s: must be in (0, 1] (1 scales nothing)", o->layer_decay);
    return VIT_OK;
}

// Creates --save_dir (and its parents) and checks it is writable before any training is done.
static int prepare_save_dir(const char *dir) {
    if (!*dir) return VIT_OK;
    char part[4096];
    snprintf(part, sizeof part, "%s", dir);
    for (char *c = part + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        if (mkdir(part, 0777) != 0 && errno != EEXIST) return vit_fail("--save_dir %s: cannot create %s: %s", dir, part, strerror(errno));
        *c = '/';
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return vit_fail("--save_dir %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return vit_fail("--save_dir %s: not a folder", dir);
    if (access(dir, W_OK) != 0) return vit_fail("--save_dir %s: not writable", dir);
    return VIT_OK;
}

// --resume_from_checkpoint_path DIR: the most recently written checkpoint there that verifies
// (a write interrupted by a crash or kill -9 leaves only a *.tmp.* file, never a partial one;
// a file damaged since is skipped, with one line on stderr saying why).
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

static int newest_checkpoint(const char *dir, char *path, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return vit_fail("--resume_from_checkpoint_path %s: %s", dir, strerror(errno));
    CkCandidate *c = NULL;
    int n = 0, n_cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") || !strstr(e->d_name, "-ckpt-")) continue;
        struct stat st;
        snprintf(path, cap, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (n == n_cap) {
            CkCandidate *g = realloc(c, (size_t)(n_cap = n_cap ? 2 * n_cap : 16) * sizeof *c);
            if (!g) {
                free(c), closedir(d);
                return vit_fail("out of memory listing %s", dir);
            }
            c = g;
        }
        c[n].mtime = st.st_mtim;
        snprintf(c[n++].name, sizeof c->name, "%s", e->d_name);
    }
    closedir(d);
    if (!n) return vit_fail("--resume_from_checkpoint_path %s: no *-ckpt-*.safetensors checkpoint in the folder", dir);
    qsort(c, (size_t)n, sizeof *c, newer_first);
    int found = 0;
    for (int i = 0; i < n && !found; i++) {
        Checkpoint ck;
        snprintf(path, cap, "%s/%s", dir, c[i].name);
        found = checkpoint_open(&ck, path) == VIT_OK;
        if (found)
            checkpoint_close(&ck);
        else
            fprintf(stderr, "skipping a checkpoint that does not verify: %s\n", vit_error());
    }
    free(c);
    if (!found)
        return vit_fail("--resume_from_checkpoint_path %s: none of its %d checkpoints verifies (each is named above)",
                        dir, n);
    return VIT_OK;
}

// A checkpoint must fit: better to refuse before training than to fail at the first save.
static int check_save_space(const char *dir, size_t bytes) {
    struct statvfs vfs;
    if (statvfs(dir, &vfs) != 0) return VIT_OK;  // unknown: the write itself will tell
    double free_bytes = (double)vfs.f_bavail * vfs.f_frsize;
    if (free_bytes < (double)bytes)
        return vit_fail("--save_dir %s: %.1f MiB free, one checkpoint needs %.1f MiB", dir, free_bytes / 1048576.0,
                        bytes / 1048576.0);
    return VIT_OK;
}

// Under mpirun without --threads, ranks on one host share its cores rather than each
// starting a thread per core (which would oversubscribe the machine N-fold).
static int threads_per_rank(void) {
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = local && atoi(local) > 0 ? atoi(local) : 1;
    return cores / n > 1 ? (int)(cores / n) : 1;
}

// --profile N or A,B (1-based micro-steps of this run); "0" or "" = off.
static int parse_profile(const char *text, long *first, long *last) {
    *first = *last = 0;
    if (!*text || !strcmp(text, "0")) return VIT_OK;
    char *end;
    long a = strtol(text, &end, 10), b = a;
    if (*end == ',') b = strtol(end + 1, &end, 10);
    if (*end || a < 1 || b < a) return vit_fail("--profile %s: expected N or A,B with 1 <= A <= B (micro-steps)", text);
    *first = a, *last = b;
    return VIT_OK;
}

// Creates --log_dir (and its parents) and both TensorBoard files before training starts,
// so an unusable folder is an error now rather than after hours of training.
static int open_logs(const ParsedOptions *p, EventWriter **train, EventWriter **eval) {
    const char *dir = p->o.log_dir;
    if (!*dir) return VIT_OK;
    char eval_dir[4096];
    snprintf(eval_dir, sizeof eval_dir, "%s/eval", dir);
    if (!(*train = events_open(dir, "")) || !(*eval = events_open(eval_dir, ""))) {
        char why[1024];
        snprintf(why, sizeof why, "%s", vit_error());
        return vit_fail("--log_dir %s: %s", dir, why);
    }
    // The run's flags, as a table the Text dashboard shows.
    size_t cap = 64 * 1024, len = 0;
    char *md = malloc(cap);
    if (!md) return vit_fail("out of memory");
    len += snprintf(md + len, cap - len, "| flag | value |\n|---|---|\n");
    for (int i = 0; i < g_flag_count && len < cap; i++) {
        char value[1024];
        flags_value_text(p, i, value, sizeof value);
        len += snprintf(md + len, cap - len, "| %s | %s |\n", g_flags[i].name, value);
    }
    int rc = events_text(*train, "flags", 0, md) || events_flush(*train) ? VIT_ERR : VIT_OK;
    free(md);
    return rc;
}

// Rank 0's parameters (initialised or loaded) to every rank.
static int broadcast_params(ViT *m) {
    size_t bytes = m->table.total * sizeof(float);
    float *host = malloc(bytes);
    if (!host) return vit_fail("out of memory for the parameter broadcast (%.1f MiB)", bytes / 1048576.0);
    if (dist_rank() == 0) m->be->download(m->be, host, m->params, bytes);
    int rc = dist_bcast(host, bytes, 0);
    if (rc == VIT_OK && dist_rank() != 0) m->be->upload(m->be, m->params, host, bytes);
    free(host);
    return rc;
}

// Appends to a bounded string; a full buffer truncates quietly (the command is advice).
static void append(char *buf, size_t cap, const char *text) {
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s", text);
}

// The command that continues this run from a checkpoint: the same flags without any
// earlier resume flags (the checkpoint path is appended when it is printed).
static void resume_command(char *buf, size_t cap, int argc, char **argv) {
    buf[0] = 0;
    if (dist_size() > 1) snprintf(buf, cap, "mpirun -np %d ", dist_size());
    append(buf, cap, g_program);
    append(buf, cap, " train");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--resume_from_checkpoint_path", 29) || !strncmp(a, "--resume_from_epoch", 19)) {
            if (!strchr(a, '=')) i++;  // and its value
            continue;
        }
        append(buf, cap, " ");
        int plain = *a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+@%") ==
                              strlen(a);
        if (plain) {
            append(buf, cap, a);
            continue;
        }
        append(buf, cap, "'");  // single quotes for the shell; an embedded ' becomes '\''
        for (const char *c = a; *c; c++) append(buf, cap, *c == '\'' ? "'\\''" : (char[2]){*c, 0});
        append(buf, cap, "'");
    }
}

// Peak resident memory of this process so far, in MiB (Linux reports KiB).
static double peak_rss_mib(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0;
}

static void print_json(const TrainResult *r) {
    // 17 significant digits: two runs that print the same numbers computed the same doubles.
    printf("{\"train_loss\": %.17g, \"train_top1\": %.17g, ", r->train_loss, r->train_top1);
    if (r->val.images)
        printf("\"val_loss\": %.17g, \"val_top1\": %.6f, \"val_top5\": %.6f, \"val_images\": %ld, ", r->val.loss,
               r->val.top1, r->val.top5, r->val.images);
    else
        printf("\"val_loss\": null, \"val_top1\": null, \"val_top5\": null, \"val_images\": 0, ");
    if (r->val_ema.images)  // --model_ema: the average's validation
        printf("\"val_ema_loss\": %.17g, \"val_ema_top1\": %.6f, \"val_ema_top5\": %.6f, ", r->val_ema.loss,
               r->val_ema.top1, r->val_ema.top5);
    printf("\"images_per_sec\": %.3f, \"steps\": %ld, \"skipped_updates\": %ld, \"stopped_by_signal\": %s, "
           "\"seconds\": %.3f, \"data_wait_seconds\": %.3f, \"allreduce_wait_seconds\": %.3f, \"ranks\": %d, \"optimizer_state_mib\": %.6f, "
           "\"peak_rss_mib\": %.1f, \"checkpoint\": \"%s\"}\n",
           r->images_per_sec, r->updates, r->skipped_updates, r->stopped_by_signal ? "true" : "false", r->seconds,
           r->data_wait, r->allreduce_wait, dist_size(), r->optimizer_state_bytes / 1048576.0, peak_rss_mib(), r->last_checkpoint);
}

// Everything one `vit train` holds, so each stage below is a function and one place frees it.
typedef struct {
    int argc;
    char **argv;
    int rank;
    FILE *devnull, *out;  // only rank 0 reports
    ParsedOptions p;
    const Options *o;
    OptimConfig oc;
    Schedule sched;
    ViTConfig c;
    uint64_t seed;
    Dataset train, val;
    Backend *be, *inner;  // be wraps inner when profiling
    Profiler *prof;
    long prof_first, prof_last;
    EventWriter *events, *eval_events;
    ViT model;
    NcclSync *nccl;
    GradTransport nccl_transport;
    ModelSource src;
    int have_ck;
    const char *resume;
    char resume_file[4096];
    TrainState rstate;
    float *slot_m, *slot_v;
    EmaConfig ema;             // --model_ema
    float *ema_host;           // the checkpoint's average to continue (every rank), or NULL
    MetaPair *meta;
    char (*meta_text)[1100];
} TrainCmd;

// MPI starts before the flags are read, so a rank that rejects them can end the whole job.
static int start_distributed(int argc, char **argv) {
    int want_dist = 0;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--distributed") || !strcmp(argv[i], "--distributed=1") ||
            !strcmp(argv[i], "--distributed=true"))
            want_dist = 1;
    if (dist_init(want_dist)) return VIT_ERR;
    if (!want_dist && dist_launcher_size() > 1)
        return vit_fail("started by mpirun as one of %d processes without --distributed: each would train alone and "
                        "overwrite the others' checkpoints; add --distributed", dist_launcher_size());
    return VIT_OK;
}

// The recipe's way to evaluate (--evaluate_checkpoint_path): hand over to `vit evaluate`.
static int evaluate_handover(int argc, char **argv, const char *path) {
    char *eargv[argc + 2];
    eargv[0] = "--checkpoint";
    eargv[1] = (char *)path;
    int n = 2;
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "--evaluate_checkpoint_path", 26)) {
            if (!strchr(argv[i], '=')) i++;
            continue;
        }
        eargv[n++] = argv[i];
    }
    return cmd_evaluate(n, eargv);
}

// Optimizer, schedule and preset from the flags: a bad --model is reported before any data is read.
static int settings(TrainCmd *t) {
    const Options *o = t->o;
    if (optimizer_from_flags(&t->p, &t->oc) || ema_from_flags(&t->p, &t->oc, &t->ema)) return VIT_ERR;
    if (schedule_parse(o->lr_sched, &t->sched.kind))
        return vit_fail("--lr_sched %s: expected linear, exp, steps, constant or WarmupCosine", o->lr_sched);
    t->sched.initial_lr = o->initial_lr;
    t->sched.final_lr = o->final_lr;
    t->sched.warmup_steps = o->warmup_steps;
    if (config_from_preset(&t->c, o->model)) return VIT_ERR;
    if (o->batch_size % dist_size())
        return vit_fail("--batch_size %d: the global batch must be divisible by the %d ranks", o->batch_size,
                        dist_size());
    if (t->rank == 0 && prepare_save_dir(o->save_dir)) return VIT_ERR;
    return VIT_OK;
}

// Rank 0: where the model comes from. A checkpoint to resume (a folder: its newest) fixes the
// model and the position; official weights (--pretrained, or a weights-only resume from an
// .npz) or the random initialisation take the model's shape from the flags.
static int open_model_source(TrainCmd *t) {
    const Options *o = t->o;
    struct stat rst;
    t->resume = o->resume_from_checkpoint_path;
    if (*t->resume && stat(t->resume, &rst) == 0 && S_ISDIR(rst.st_mode)) {
        if (newest_checkpoint(t->resume, t->resume_file, sizeof t->resume_file)) return VIT_ERR;
        t->resume = t->resume_file;
    }
    if (model_source_open(&t->src, &t->p, t->resume, o->synthetic_data ? NULL : &t->train)) return VIT_ERR;
    t->c = t->src.cfg;
    t->have_ck = t->src.kind == SOURCE_CHECKPOINT;
    if (!t->have_ck) return VIT_OK;
    const Checkpoint *ck = &t->src.ck;
    if (!ck->has_optimizer || ck->opt != t->oc.kind)
        return vit_fail("%s: the checkpoint holds %s optimizer state, this run uses --optimizer %s", t->resume,
                        ck->has_optimizer ? optim_name(ck->opt) : "no", optim_name(t->oc.kind));
    return VIT_OK;
}

// The model's shape, the seed and the data. Under MPI rank 0 alone reads weights or
// checkpoints and broadcasts what it found.
static int open_sources(TrainCmd *t) {
    const Options *o = t->o;
    int rank = t->rank;
    if (cli_open_data(&t->p, NULL, &t->train, &t->val)) return VIT_ERR;
    if (rank == 0 && open_model_source(t)) return VIT_ERR;
    t->seed = t->have_ck ? t->src.ck.state.seed : o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL);
    t->rstate = t->have_ck ? t->src.ck.state : (TrainState){0};
    if (dist_bcast(&t->c, sizeof t->c, 0) || dist_bcast(&t->seed, sizeof t->seed, 0) ||
        dist_bcast(&t->have_ck, sizeof t->have_ck, 0) || dist_bcast(&t->rstate, sizeof t->rstate, 0))
        return VIT_ERR;
    if (o->synthetic_data) {
        ParsedOptions q = t->p;
        q.o.seed = (long long)t->seed;
        if (cli_open_data(&q, &t->c, &t->train, &t->val)) return VIT_ERR;
    }
    t->train.seed = o->synthetic_data ? t->train.seed : t->seed;  // augmentation draws from the run's seed
    if (rank == 0) cli_data_output(&t->p, &t->c, &t->train, &t->val);
    return VIT_OK;
}

// The backend (wrapped by the profiler with --profile) and the model on it.
static int create_model(TrainCmd *t) {
    const Options *o = t->o;
    if (parse_profile(o->profile, &t->prof_first, &t->prof_last)) return VIT_ERR;
    t->inner = cli_create_backend(&t->p, dist_size() > 1 && !flags_given(&t->p, "threads") ? threads_per_rank()
                                                                                          : o->threads);
    if (t->inner && t->prof_first) {
        t->prof = profiler_create(t->rank);
        // A GPU runs ops asynchronously: each span waits for its op to finish.
        t->be = t->prof ? backend_profiled(t->inner, t->prof, cli_device_is_cuda(o->device)) : NULL;
    } else {
        t->be = t->inner;
    }
    if (!t->be) return VIT_ERR;
    MixupConfig mix;
    if (vit_create_ex(&t->model, &t->c, t->be, o->batch_size / dist_size(), 1,
                      (o->recompute ? VIT_RECOMPUTE : 0) | (cli_is_bf16(&t->p) ? VIT_STORE_BF16 : 0)) ||
        regularization_from_flags(o, &mix))
        return VIT_ERR;
    return vit_set_regularization(&t->model, o->drop_path, &mix);
}

// --model_ema resuming a checkpoint with an average: every rank continues it (rank 0 reads it).
// Without one in the file the average starts from the resumed weights.
static int restore_ema(TrainCmd *t) {
    size_t n = t->model.table.total;
    int has = t->rank == 0 && t->src.ck.has_ema;
    if (!t->ema.on) return VIT_OK;
    if (dist_bcast(&has, sizeof has, 0)) return VIT_ERR;
    if (!has) {  // (only rank 0 knows the path; the others print to /dev/null)
        fprintf(t->out, "note: %s holds no moving average: --model_ema starts from its weights\n",
                t->rank == 0 ? t->resume : "the checkpoint");
        return VIT_OK;
    }
    if (!(t->ema_host = malloc(n * sizeof(float))))
        return vit_fail("out of memory for the checkpoint's moving average (%.1f MiB)", n * 4 / 1048576.0);
    if (t->rank == 0 && checkpoint_copy_ema(&t->src.ck, t->resume, &t->model.table, t->ema_host)) return VIT_ERR;
    return dist_bcast(t->ema_host, n * sizeof(float), 0);
}

// The checkpoint's parameters (rank 0) and optimizer slots (every rank that holds them whole).
static int restore_checkpoint(TrainCmd *t) {
    size_t n = t->model.table.total;
    OptimizerKind k = t->oc.kind;
    // Sharded slots (--zero 1) are scattered from rank 0's copy by the trainer: only it holds them whole.
    int sharded = t->o->zero && dist_size() > 1, full = t->rank == 0 || !sharded;
    t->slot_m = full && optim_uses_m(k) ? malloc(n * sizeof(float)) : NULL;
    t->slot_v = full && optim_uses_v(k) ? malloc(n * sizeof(float)) : NULL;
    if ((full && optim_uses_m(k) && !t->slot_m) || (full && optim_uses_v(k) && !t->slot_v))
        return vit_fail("out of memory loading %s", t->resume);
    if (t->rank == 0) {
        if (model_source_load(&t->src, &t->model, t->seed, t->slot_m, t->slot_v, NULL)) return VIT_ERR;
    }
    if (!sharded && ((t->slot_m && dist_bcast(t->slot_m, n * sizeof(float), 0)) ||
                     (t->slot_v && dist_bcast(t->slot_v, n * sizeof(float), 0))))
        return VIT_ERR;
    if (restore_ema(t)) return VIT_ERR;
    fprintf(t->out, "resuming %s: epoch %d, step %ld, update %ld\n", t->resume, t->rstate.epoch + 1,
            t->rstate.step_in_epoch, t->rstate.update);
    return VIT_OK;
}

// Parameters from the checkpoint, the official weights or the random initialisation, on
// every rank; then NCCL and the free-space check.
static int load_parameters(TrainCmd *t) {
    const Options *o = t->o;
    if (t->have_ck) {
        if (restore_checkpoint(t)) return VIT_ERR;
    } else if (t->rank != 0) {
        // parameters arrive from rank 0 below
    } else if (model_source_load(&t->src, &t->model, t->seed, NULL, NULL, t->out)) {
        return VIT_ERR;
    }
    if (dist_active() && broadcast_params(&t->model)) return VIT_ERR;
    // One process per GPU: gradients are summed by NCCL on the device (even with one rank, so
    // `mpirun -np 1` runs the same path). It orders its work against the unwrapped backend.
    if (dist_active() && cli_device_is_cuda(o->device) == 1) {
        if (!(t->nccl = nccl_sync_create(t->inner))) return VIT_ERR;
        t->nccl_transport = nccl_sync_transport(t->nccl);
    }
    if (t->rank == 0 && *o->save_dir) {
        size_t slots = (size_t)optim_uses_m(t->oc.kind) + (size_t)optim_uses_v(t->oc.kind) + (t->ema.on != 0);
        if (check_save_space(o->save_dir, t->model.table.total * sizeof(float) * (1 + slots) + (1 << 20)))
            return VIT_ERR;
    }
    return VIT_OK;
}

static void print_header(const TrainCmd *t) {
    const Options *o = t->o;
    const ViTConfig *c = &t->c;
    fprintf(t->out, "vit train: %s  hidden %d  mlp %d  heads %d  layers %d  patch %d  image %dx%dx%d  classes %d  "
                    "(%.3f M parameters, %d tokens)\n",
            c->name, c->hidden, c->mlp, c->heads, c->layers, c->patch, c->image, c->image, c->channels, c->classes,
            t->model.table.total / 1e6, config_tokens(c));
    if (t->be->details) fprintf(t->out, "backend: %s: %s\n", t->be->name, t->be->details);
    fprintf(t->out, "data: %s, %d train / %d validation images;  batch %d x %d accumulation;  %s lr %g, %s;  seed %llu;  "
                    "%s %s, %sactivations %.1f MiB%s\n",
            o->synthetic_data ? "synthetic" : o->dataset_dir, t->train.count, t->val.count, o->batch_size,
            o->grad_accum_steps, optim_name(t->oc.kind), o->initial_lr, schedule_name(t->sched.kind),
            (unsigned long long)t->seed, t->be->name, cli_precision_name(&t->p),
            t->model.store_bf16 ? "bf16-saved " : "", t->model.activation_bytes / 1048576.0,
            o->recompute ? " (--recompute)" : "");
    if (t->ema.on || t->oc.layer_decay > 0) {
        if (t->ema.on) fprintf(t->out, "model EMA: decay %g%s", t->ema.decay, t->ema.warmup ? " with warm-up" : "");
        if (t->oc.layer_decay > 0)
            fprintf(t->out, "%slayer-wise lr decay %g over %d layers", t->ema.on ? ";  " : "", t->oc.layer_decay,
                    c->layers + 2);
        fprintf(t->out, "\n");
    }
}

// Every flag goes into each checkpoint's metadata.
static int build_meta(TrainCmd *t) {
    t->meta = calloc((size_t)g_flag_count, sizeof *t->meta);
    t->meta_text = calloc((size_t)g_flag_count, sizeof *t->meta_text);
    if (!t->meta || !t->meta_text) return vit_fail("out of memory");
    for (int i = 0; i < g_flag_count; i++) {
        snprintf(t->meta_text[i], 64, "flags.%s", g_flags[i].name);
        flags_value_text(&t->p, i, t->meta_text[i] + 64, sizeof t->meta_text[i] - 64);
        t->meta[i].key = t->meta_text[i];
        t->meta[i].value = t->meta_text[i] + 64;
    }
    return VIT_OK;
}

// The ceilings for the table's roofline columns, measured after the profiled steps so they
// cannot disturb them, through the unwrapped backend so they record no spans. Ranks measure
// at once, as they trained: each sees its share of the machine. Then the trace and the table.
static void write_profile(TrainCmd *t, int train_rc) {
    Roofline roof;
    if (!train_rc && roofline_measure(t->inner, &roof))
        fprintf(stderr, "vit train: warning: roofline not measured: %s\n", vit_error());
    else if (!train_rc)
        profiler_set_roofline(t->prof, &roof);
    const char *base = *t->o->log_dir ? t->o->log_dir : ".";
    char trace[4096], dir[4096];
    snprintf(trace, sizeof trace, "%s/profile/trace.rank%d.json", base, t->rank);
    snprintf(dir, sizeof dir, "%s/profile", base);
    mkdir(dir, 0777);
    if (profiler_write_trace(t->prof, trace))
        fprintf(stderr, "vit train: warning: %s\n", vit_error());
    else
        fprintf(t->out, "profile: micro-steps %ld..%ld written to %s (open in ui.perfetto.dev)\n", t->prof_first,
                t->prof_last, trace);
    profiler_print_table(t->prof, t->out, 25);
}

static void report(const TrainCmd *t, const TrainResult *r) {
    FILE *out = t->out;
    if (r->val.images)
        fprintf(out, "final validation accuracy: top1 %.2f%%  top5 %.2f%%  (%ld images)\n", 100 * r->val.top1,
                100 * r->val.top5, r->val.images);
    if (r->val_ema.images)
        fprintf(out, "final validation accuracy (EMA): top1 %.2f%%  top5 %.2f%%  (%ld images)\n",
                100 * r->val_ema.top1, 100 * r->val_ema.top5, r->val_ema.images);
    fprintf(out, "trained %ld updates in %.1f s, %.1f img/s, peak host memory %.0f MiB%s%s\n", r->updates, r->seconds,
            r->images_per_sec, peak_rss_mib(), *r->last_checkpoint ? "; checkpoint " : "", r->last_checkpoint);
    if (r->skipped_updates) fprintf(out, "skipped %ld updates with a non-finite loss or gradient\n", r->skipped_updates);
    if (dist_size() > 1)
        fprintf(out, "distributed: %d ranks; rank 0 waited %.2f s (%.1f%% of the run) for gradient all-reduces\n",
                dist_size(), r->allreduce_wait, r->seconds > 0 ? 100 * r->allreduce_wait / r->seconds : 0);
    if (t->o->json && t->rank == 0) print_json(r);
}

// The loop itself, with the setup it reads; the profile is written whatever the outcome.
static int run_training(TrainCmd *t) {
    const Options *o = t->o;
    if (t->rank == 0 && open_logs(&t->p, &t->events, &t->eval_events)) return VIT_ERR;
    char resume_cmd[8192];
    resume_command(resume_cmd, sizeof resume_cmd, t->argc, t->argv);
    TrainSetup ts = {.model = &t->model, .train = &t->train, .val = t->val.count ? &t->val : NULL, .opt = t->oc,
                     .zero = o->zero, .grad_transport = t->nccl ? &t->nccl_transport : NULL, .sched = t->sched,
                     .batch = o->batch_size, .accum = o->grad_accum_steps, .epochs = o->epochs,
                     .steps_per_epoch = o->steps_per_epoch, .validation_steps = o->validation_steps,
                     .workers = o->data_workers, .prefetch = o->prefetch_batches,
                     .smoothing = o->label_smoothing, .seed = t->seed, .out = t->out,
                     .resume = t->have_ck ? &t->rstate : NULL, .resume_m = t->slot_m, .resume_v = t->slot_v,
                     .ema = t->ema, .resume_ema = t->ema_host,
                     .start_epoch = t->have_ck ? 0 : o->resume_from_epoch,
                     .save_dir = *o->save_dir ? o->save_dir : NULL, .checkpoint_every = o->checkpoint_every_steps,
                     .keep = o->keep_checkpoints, .meta = t->meta, .n_meta = g_flag_count,
                     .skip_nonfinite = o->skip_nonfinite, .resume_command = resume_cmd,
                     .events = t->events, .eval_events = t->eval_events, .summary_every = o->save_summary_steps,
                     .prof = t->prof, .prof_first = t->prof_first, .prof_last = t->prof_last};
    TrainResult r;
    int rc = train_run(&ts, &r);
    t->events = ts.events, t->eval_events = ts.eval_events;  // NULL if logging failed and stopped
    if (t->prof) write_profile(t, rc);
    if (rc) return rc;
    if (events_close(t->events) || events_close(t->eval_events))
        fprintf(stderr, "vit train: warning: %s\n", vit_error());
    t->events = t->eval_events = NULL;
    report(t, &r);
    return VIT_OK;
}

static void cleanup(TrainCmd *t) {
    nccl_sync_destroy(t->nccl);  // waits for sums in flight on the gradients vit_destroy frees
    vit_destroy(&t->model);
    if (t->be && t->be != t->inner) t->be->destroy(t->be);
    if (t->inner) t->inner->destroy(t->inner);
    profiler_destroy(t->prof);
    events_close(t->events);
    events_close(t->eval_events);
    model_source_close(&t->src);
    dataset_free(&t->train);
    dataset_free(&t->val);
    free(t->slot_m), free(t->slot_v), free(t->ema_host), free(t->meta), free(t->meta_text);
    flags_free(&t->p);
    if (t->devnull) fclose(t->devnull);
    dist_finalize();
}

int cmd_train(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("train", "Trains a Vision Transformer (flags as the TensorFlow recipe, plus ours).");
            return 0;
        }
    if (start_distributed(argc, argv)) {
        fprintf(stderr, "vit train: %s\n", vit_error());
        return 2;
    }
    TrainCmd *t = calloc(1, sizeof *t);
    if (!t) {
        fprintf(stderr, "vit train: out of memory\n");
        dist_finalize();
        return 2;
    }
    t->argc = argc, t->argv = argv, t->rank = dist_rank(), t->o = &t->p.o;
    t->devnull = t->rank ? fopen("/dev/null", "w") : NULL;
    int rc = flags_parse(&t->p, argc, argv) || flags_no_positional(&t->p) || cli_check_supported(&t->p) ||
             check_ranges(&t->p);
    if (!rc && *t->o->evaluate_checkpoint_path) {
        char path[4096];
        snprintf(path, sizeof path, "%s", t->o->evaluate_checkpoint_path);
        flags_free(&t->p);
        if (t->devnull) fclose(t->devnull);
        free(t);
        return evaluate_handover(argc, argv, path);
    }
    if (!rc) {
        t->out = t->rank ? t->devnull : t->o->json ? stderr : stdout;
        rc = settings(t) || open_sources(t) || create_model(t) || load_parameters(t);
    }
    if (!rc) {
        print_header(t);
        rc = build_meta(t) || run_training(t);
    }
    if (rc) {
        if (dist_active() && dist_size() > 1) {
            // One rank's error ends the job: the others may be waiting for it in a collective.
            fprintf(stderr, "vit train: rank %d: %s\n", t->rank, vit_error());
            dist_abort(1);
        }
        fprintf(stderr, "vit train: %s\n", vit_error());
    }
    cleanup(t);
    free(t);
    return rc ? 2 : 0;
}
