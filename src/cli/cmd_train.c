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
#include "run_settings.h"
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
    // --deterministic turns the loader's augmentation off; asking for some of it is a conflict.
    if (o->deterministic && (o->aa[0] || o->reprob > 0))
        return vit_fail("--%s asks for augmentation, which --deterministic turns off: drop one of them",
                        o->aa[0] ? "aa" : "reprob");
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

// Creates the run's log folder (and its parents) and both TensorBoard files before training
// starts, so an unusable folder is an error now rather than after hours of training.
static int open_logs(const ParsedOptions *p, const char *dir, EventWriter **train, EventWriter **eval) {
    if (!*dir) return VIT_OK;
    char eval_dir[4200];
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
    char resume_file[4096];    // rank 0: the checkpoint (or weights) --resume_from_checkpoint_path means
    Checkpoint resume_ck;      // rank 0, full resume: that checkpoint, open until the model source takes it
    int full_resume;           // it is a checkpoint: the run continues in its folders
    RunFolders folders;        // the run's checkpoint and log folders
    int trained;               // an update was made: a failure keeps what the run wrote
    TrainState rstate;
    float *slot_m, *slot_v;
    EmaConfig ema;             // --model_ema
    float *ema_host;           // the checkpoint's average to continue (every rank), or NULL
    MetaPair *meta;
    char (*meta_text)[1100];
    int n_meta;                // entries in meta (0: g_flag_count, one per flag)
    char *class_meta;          // "data.class_names": the data's class names, one per line
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

// Rank 0 resolves --resume_from_checkpoint_path to a file and, for a checkpoint, takes the
// settings its run recorded (run_settings.h); every rank then holds rank 0's flags. Without
// a resume each rank keeps its own (a rank given bad flags must fail with its own message).
static int resume_settings(TrainCmd *t) {
    const char *given = t->p.o.resume_from_checkpoint_path;
    if (t->rank == 0 && *given) {
        char path[sizeof t->resume_file];
        cli_expand_home(given, path, sizeof path);
        if (run_resume_file(path, t->resume_file, sizeof t->resume_file, &t->resume_ck)) return VIT_ERR;
        t->full_resume = run_is_full_resume(t->resume_file);
        if (t->full_resume && run_resume_settings(&t->p, t->resume_file, &t->resume_ck)) return VIT_ERR;
    }
    if (dist_bcast(&t->full_resume, sizeof t->full_resume, 0)) return VIT_ERR;
    if (!t->full_resume) return VIT_OK;
    return dist_bcast(&t->p.o, sizeof t->p.o, 0) || dist_bcast(t->p.set, sizeof t->p.set, 0) ? VIT_ERR : VIT_OK;
}

// Rank 0 names the run and creates its checkpoint folder; every rank learns the folders.
static int run_folders(TrainCmd *t) {
    if (t->rank == 0 && (run_folders_choose(&t->folders, &t->p, t->full_resume ? t->resume_file : NULL) ||
                         run_folders_make_save(&t->folders)))
        return VIT_ERR;
    return dist_bcast(&t->folders, sizeof t->folders, 0) ||
                   dist_bcast(t->p.o.run_name, sizeof t->p.o.run_name, 0)
               ? VIT_ERR
               : VIT_OK;
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
    return run_folders(t);
}

// Rank 0: where the model comes from. A checkpoint to resume (a folder: its newest) fixes the
// model and the position; official weights (--pretrained, or a weights-only resume from an
// .npz) or the random initialisation take the model's shape from the flags.
static int open_model_source(TrainCmd *t) {
    const Options *o = t->o;
    t->resume = *o->resume_from_checkpoint_path ? t->resume_file : "";  // resolved by resume_settings
    // Rank 0 of a full resume verified the checkpoint already (resume_settings): it is taken over.
    int rc = t->rank == 0 && t->full_resume
                 ? model_source_adopt(&t->src, &t->p, t->resume_file, &t->resume_ck)
                 : model_source_open(&t->src, &t->p, t->resume, o->synthetic_data ? NULL : &t->train);
    if (rc) return VIT_ERR;
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
    if (t->rank == 0 && *t->folders.save) {
        size_t slots = (size_t)optim_uses_m(t->oc.kind) + (size_t)optim_uses_v(t->oc.kind) + (t->ema.on != 0);
        if (check_save_space(t->folders.save, t->model.table.total * sizeof(float) * (1 + slots) + (1 << 20)))
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
    run_folders_print(&t->folders, t->out, "run");
}

// Every flag goes into each checkpoint's metadata, as in effect: the model's shape as built
// (from the preset, the data or the resumed checkpoint), the optimizer with its
// hyper-parameters and the seed drawn, so that a resume of it is the same run without
// retyping anything.
static int build_meta(TrainCmd *t) {
    t->meta = calloc((size_t)g_flag_count, sizeof *t->meta);
    t->meta_text = calloc((size_t)g_flag_count, sizeof *t->meta_text);
    if (!t->meta || !t->meta_text) return vit_fail("out of memory");
    ParsedOptions eff = t->p;  // a copy: positional stays owned by t->p
    Options *e = &eff.o;
    const ViTConfig *c = &t->c;
    snprintf(e->model, sizeof e->model, "%s", c->name);
    e->hidden_size = c->hidden, e->num_layers = c->layers, e->num_heads = c->heads, e->mlp_dim = c->mlp;
    e->patch_size = c->patch, e->image_size = c->image, e->channels = c->channels, e->num_classes = c->classes;
    e->representation_size = c->representation, e->layernorm_eps = c->layernorm_eps;
    snprintf(e->gelu, sizeof e->gelu, "%s", c->gelu_tanh ? "tanh" : "erf");
    snprintf(e->optimizer, sizeof e->optimizer, "%s", optim_name(t->oc.kind));
    // The optimizer's hyper-parameters as used (their flags default to the optimizer's own).
    e->momentum = t->oc.momentum, e->beta1 = t->oc.beta1, e->beta2 = t->oc.beta2;
    e->epsilon = t->oc.epsilon, e->weight_decay = t->oc.weight_decay;
    e->seed = (long long)t->seed;
    for (int i = 0; i < g_flag_count; i++) {
        snprintf(t->meta_text[i], 64, "flags.%s", g_flags[i].name);
        flags_value_text(&eff, i, t->meta_text[i] + 64, sizeof t->meta_text[i] - 64);
        t->meta[i].key = t->meta_text[i];
        t->meta[i].value = t->meta_text[i] + 64;
    }
    return VIT_OK;
}

// What the data decides when the flags leave it open: an epoch too short for one update is
// an error naming the flags (and values) that fix it; a warm-up longer than the run is
// clamped; images far from the model's input size get a note with --image_size to set.
static int data_defaults(TrainCmd *t) {
    const Options *o = t->o;
    const ParsedOptions *p = &t->p;
    long count = t->train.count, B = o->batch_size, A = o->grad_accum_steps;
    long steps = o->steps_per_epoch ? o->steps_per_epoch : count / B;
    if (steps < A && o->steps_per_epoch)
        return vit_fail("--steps_per_epoch %ld: fewer micro-steps than one update's --grad_accum_steps %ld%s; pass "
                        "--grad_accum_steps %ld or --steps_per_epoch %ld", steps, A,
                        flags_on_command_line(p, "grad_accum_steps") ? "" : " (the default)", steps, A);
    if (steps < A) {
        char fix[160];
        long whole = B < count ? B : count;  // one update per batch, as large as the data allows
        if (steps >= 1 && count / A >= 1)
            snprintf(fix, sizeof fix, "--grad_accum_steps %ld, or --batch_size %ld", steps, count / A);
        else if (steps >= 1)
            snprintf(fix, sizeof fix, "--grad_accum_steps %ld", steps);
        else if (count / A >= 1)
            snprintf(fix, sizeof fix, "--batch_size %ld, or --batch_size %ld --grad_accum_steps 1", count / A, whole);
        else
            snprintf(fix, sizeof fix, "--batch_size %ld --grad_accum_steps 1", whole);
        return vit_fail("the %ld training images make %ld batch%s of --batch_size %ld%s per epoch, fewer than the %ld "
                        "of one update (--grad_accum_steps %ld%s): pass %s", count, steps, steps == 1 ? "" : "es", B,
                        flags_on_command_line(p, "batch_size") ? "" : " (the default)", A, A,
                        flags_on_command_line(p, "grad_accum_steps") ? "" : ", the default", fix);
    }
    long total = (long)o->epochs * (steps / A);
    if (t->sched.kind == SCHED_WARMUP_COSINE && t->sched.warmup_steps > total) {
        // A warm-up the user chose stops at the run's end; the recipe's default (sized for
        // ImageNet) becomes a tenth of the run, so the rate still peaks and anneals.
        int chosen = flags_given(p, "warmup_steps");
        long warm = chosen ? total : (total + 9) / 10;
        fprintf(t->out, "note: --warmup_steps %ld%s is longer than this run's %ld updates: warm-up clamped to %ld%s "
                        "(set --warmup_steps to choose)\n", t->sched.warmup_steps, chosen ? "" : " (the default)",
                total, warm, chosen ? "" : ", a tenth of the run");
        t->sched.warmup_steps = warm;
    }
    int w, h;
    if (t->rank == 0 && !o->synthetic_data && !t->have_ck && !flags_given(p, "image_size") &&
        dataset_typical_size(&t->train, 16, &w, &h) == VIT_OK) {
        int side = w < h ? w : h, image = t->c.image, patch = t->c.patch > 0 ? t->c.patch : 1;
        int fit = (side + patch / 2) / patch * patch;  // the nearest whole number of patches
        if (side * 2 < image || side > 2 * image)
            fprintf(t->out, "note: the training images are typically %dx%d, far from the model's %dx%d input: "
                            "--image_size %d trains near their size\n", w, h, image, image, fit > patch ? fit : patch);
    }
    return VIT_OK;
}

// The data's class names (folders, or shards with classes.txt) go into every checkpoint as
// "data.class_names", one per line in label order: predict prints them.
static int add_class_names_meta(TrainCmd *t) {
    const Dataset *d = &t->train;
    if (!d->n_class_names) return VIT_OK;
    size_t len = 1;
    for (int i = 0; i < d->n_class_names; i++) len += strlen(d->class_names[i]) + 1;
    int n = t->n_meta ? t->n_meta : g_flag_count;
    MetaPair *grown = realloc(t->meta, (size_t)(n + 1) * sizeof *grown);
    if (grown) t->meta = grown;
    if (!grown || !(t->class_meta = malloc(len))) return vit_fail("out of memory");
    t->class_meta[0] = 0;
    for (int i = 0, at = 0; i < d->n_class_names; i++)
        at += snprintf(t->class_meta + at, len - (size_t)at, "%s%s", i ? "\n" : "", d->class_names[i]);
    t->meta[n] = (MetaPair){"data.class_names", t->class_meta};
    t->n_meta = n + 1;
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
    const char *base = *t->folders.log ? t->folders.log : ".";
    char trace[4200], dir[4200];
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
    run_folders_print(&t->folders, out, "finished run");
    if (r->skipped_updates) fprintf(out, "skipped %ld updates with a non-finite loss or gradient\n", r->skipped_updates);
    if (dist_size() > 1)
        fprintf(out, "distributed: %d ranks; rank 0 waited %.2f s (%.1f%% of the run) for gradient all-reduces\n",
                dist_size(), r->allreduce_wait, r->seconds > 0 ? 100 * r->allreduce_wait / r->seconds : 0);
    if (t->o->json && t->rank == 0) print_json(r);
}

// The loop itself, with the setup it reads; the profile is written whatever the outcome.
static int run_training(TrainCmd *t) {
    const Options *o = t->o;
    if (t->rank == 0 && (run_folders_make_log(&t->folders) ||
                         open_logs(&t->p, t->folders.log, &t->events, &t->eval_events)))
        return VIT_ERR;
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
                     .save_dir = *t->folders.save ? t->folders.save : NULL, .checkpoint_every = o->checkpoint_every_steps,
                     .keep = o->keep_checkpoints, .meta = t->meta, .n_meta = t->n_meta ? t->n_meta : g_flag_count,
                     .skip_nonfinite = o->skip_nonfinite, .resume_command = resume_cmd,
                     .events = t->events, .eval_events = t->eval_events, .summary_every = o->save_summary_steps,
                     .prof = t->prof, .prof_first = t->prof_first, .prof_last = t->prof_last};
    TrainResult r;
    int rc = train_run(&ts, &r);
    t->trained = r.updates > t->rstate.update;
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
    checkpoint_close(&t->resume_ck);  // still open when the run failed before taking it
    dataset_free(&t->train);
    dataset_free(&t->val);
    free(t->slot_m), free(t->slot_v), free(t->ema_host), free(t->meta), free(t->meta_text);
    free(t->class_meta);
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
    int rc = flags_parse(&t->p, argc, argv) || flags_no_positional(&t->p) || resume_settings(t) ||
             cli_check_supported(&t->p) || check_ranges(&t->p);
    if (!rc && *t->o->evaluate_checkpoint_path) {
        char path[4096];
        snprintf(path, sizeof path, "%s", t->o->evaluate_checkpoint_path);
        flags_free(&t->p);
        checkpoint_close(&t->resume_ck);
        if (t->devnull) fclose(t->devnull);
        free(t);
        return evaluate_handover(argc, argv, path);
    }
    if (!rc) {
        t->out = t->rank ? t->devnull : t->o->json ? stderr : stdout;
        rc = settings(t) || open_sources(t) || data_defaults(t) || create_model(t) || load_parameters(t);
    }
    if (!rc) {
        print_header(t);
        rc = build_meta(t) || add_class_names_meta(t) || run_training(t);
    }
    if (rc) {
        if (dist_active() && dist_size() > 1) {
            // One rank's error ends the job: the others may be waiting for it in a collective.
            fprintf(stderr, "vit train: rank %d: %s\n", t->rank, vit_error());
            dist_abort(1);
        }
        if (t->trained) run_folders_print(&t->folders, t->out, "stopped run");  // what it wrote stays
        fprintf(stderr, "vit train: %s\n", vit_error());  // the error last
    }
    cleanup(t);
    if (rc && t->rank == 0 && !t->trained) run_folders_discard(&t->folders);  // after the files are closed
    free(t);
    return rc ? 2 : 0;
}
