// `vit train`: flags -> data, model (official weights, a checkpoint to resume, or random
// initialisation), optimizer, schedule -> the training loop -> report.
#include <errno.h>
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
#include "io/npz.h"
#include "prof/profiled_backend.h"
#include "prof/roofline.h"
#include "train/trainer.h"
#include "model/weights.h"
#include "util/status.h"

static int check_ranges(const ParsedOptions *p) {
    const Options *o = &p->o;
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

// --resume_from_checkpoint_path DIR: the most recently written complete checkpoint there
// (a write interrupted by a crash or kill -9 leaves only a *.tmp.* file, never a partial one).
static int newest_checkpoint(const char *dir, char *path, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return vit_fail("--resume_from_checkpoint_path %s: %s", dir, strerror(errno));
    struct dirent *e;
    struct timespec best = {0, 0};
    path[0] = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") || !strstr(e->d_name, "-ckpt-")) continue;
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (!*path || st.st_mtim.tv_sec > best.tv_sec ||
            (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec >= best.tv_nsec)) {
            best = st.st_mtim;
            snprintf(path, cap, "%s", full);
        }
    }
    closedir(d);
    if (!*path) return vit_fail("--resume_from_checkpoint_path %s: no *-ckpt-*.safetensors checkpoint in the folder", dir);
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
    printf("\"images_per_sec\": %.3f, \"steps\": %ld, \"skipped_updates\": %ld, \"stopped_by_signal\": %s, "
           "\"seconds\": %.3f, \"data_wait_seconds\": %.3f, \"allreduce_wait_seconds\": %.3f, \"ranks\": %d, \"optimizer_state_mib\": %.6f, "
           "\"peak_rss_mib\": %.1f, \"checkpoint\": \"%s\"}\n",
           r->images_per_sec, r->updates, r->skipped_updates, r->stopped_by_signal ? "true" : "false", r->seconds,
           r->data_wait, r->allreduce_wait, dist_size(), r->optimizer_state_bytes / 1048576.0, peak_rss_mib(), r->last_checkpoint);
}

int cmd_train(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("train", "Trains a Vision Transformer (flags as the TensorFlow recipe, plus ours).");
            return 0;
        }
    // MPI starts before the flags are read, so a rank that rejects them can end the whole job.
    int want_dist = 0;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--distributed") || !strcmp(argv[i], "--distributed=1") ||
            !strcmp(argv[i], "--distributed=true"))
            want_dist = 1;
    if (dist_init(want_dist)) {
        fprintf(stderr, "vit train: %s\n", vit_error());
        return 2;
    }
    if (!want_dist && dist_launcher_size() > 1) {
        fprintf(stderr, "vit train: started by mpirun as one of %d processes without --distributed: each would "
                        "train alone and overwrite the others' checkpoints; add --distributed\n",
                dist_launcher_size());
        return 2;
    }
    int rank = dist_rank();
    FILE *devnull = rank ? fopen("/dev/null", "w") : NULL;  // only rank 0 reports
    ParsedOptions p;
    Dataset train = {0}, val = {0};
    Backend *be = NULL, *inner = NULL;  // be wraps inner when profiling
    Profiler *prof = NULL;
    long prof_first = 0, prof_last = 0;
    EventWriter *events = NULL, *eval_events = NULL;
    ViT model = {0};
    NcclSync *nccl = NULL;
    GradTransport nccl_transport = {0};
    Checkpoint ck = {0};
    int rc = 2, have_ck = 0, ck_open = 0;
    float *slot_m = NULL, *slot_v = NULL, *host = NULL;
    MetaPair *meta = NULL;
    char (*meta_text)[1100] = NULL;
    if (flags_parse(&p, argc, argv) || flags_no_positional(&p) || cli_check_supported(&p) || check_ranges(&p))
        goto fail;
    const Options *o = &p.o;
    if (*o->evaluate_checkpoint_path) {  // the recipe's way to evaluate: hand over to `vit evaluate`
        flags_free(&p);
        char *eargv[argc + 2];
        eargv[0] = "--checkpoint";
        eargv[1] = (char *)o->evaluate_checkpoint_path;
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
    OptimConfig oc;
    Schedule sched = {0};
    if (optimizer_from_flags(&p, &oc)) goto fail;
    if (schedule_parse(o->lr_sched, &sched.kind)) {
        vit_fail("--lr_sched %s: expected linear, exp, steps, constant or WarmupCosine", o->lr_sched);
        goto fail;
    }
    sched.initial_lr = o->initial_lr;
    sched.final_lr = o->final_lr;
    sched.warmup_steps = o->warmup_steps;
    ViTConfig c;
    if (config_from_preset(&c, o->model)) goto fail;  // a bad --model is reported before any data is read
    if (o->batch_size % dist_size()) {
        vit_fail("--batch_size %d: the global batch must be divisible by the %d ranks", o->batch_size, dist_size());
        goto fail;
    }
    if (rank == 0 && prepare_save_dir(o->save_dir)) goto fail;
    FILE *out = rank ? devnull : o->json ? stderr : stdout;

    // A full-state checkpoint fixes the model and the position; otherwise flags (+ data) do.
    // Under MPI rank 0 alone reads weights or checkpoints and broadcasts what it found.
    const char *resume = o->resume_from_checkpoint_path;
    char resume_file[4096];
    struct stat rst;
    if (rank == 0 && *resume && stat(resume, &rst) == 0 && S_ISDIR(rst.st_mode)) {
        if (newest_checkpoint(resume, resume_file, sizeof resume_file)) goto fail;
        resume = resume_file;
    }
    size_t rlen = strlen(resume);
    int resume_full = rlen > 12 && !strcmp(resume + rlen - 12, ".safetensors");
    if (rank == 0 && *resume && resume_full) {
        if (checkpoint_open(&ck, resume)) goto fail;
        have_ck = ck_open = 1;
        c = ck.cfg;
        if (!ck.has_optimizer || ck.opt != oc.kind) {
            vit_fail("%s: the checkpoint holds %s optimizer state, this run uses --optimizer %s", resume,
                     ck.has_optimizer ? optim_name(ck.opt) : "no", optim_name(oc.kind));
            goto fail;
        }
    }
    uint64_t seed = have_ck ? ck.state.seed : o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL);
    if (cli_open_data(&p, NULL, &train, &val)) goto fail;
    if (rank == 0 && !have_ck && cli_model_config(&p, o->synthetic_data ? NULL : &train, &c)) goto fail;
    NpzFile weights = {0};
    char weights_path[2048] = "";
    if (rank == 0 && !have_ck && (*resume || !o->from_scratch)) {
        if (*resume)
            cli_expand_home(resume, weights_path, sizeof weights_path);
        else if (cli_weights_file(&p, weights_path, sizeof weights_path))
            goto fail;
        if (npz_read(&weights, weights_path)) goto fail;
        if (!flags_given(&p, "representation_size")) c.representation = weights_npz_representation(&weights);
    }
    TrainState rstate = have_ck ? ck.state : (TrainState){0};
    if (dist_bcast(&c, sizeof c, 0) || dist_bcast(&seed, sizeof seed, 0) || dist_bcast(&have_ck, sizeof have_ck, 0) ||
        dist_bcast(&rstate, sizeof rstate, 0))
        goto fail;
    if (o->synthetic_data) {
        ParsedOptions q = p;
        q.o.seed = (long long)seed;
        if (cli_open_data(&q, &c, &train, &val)) goto fail;
    }
    train.seed = o->synthetic_data ? train.seed : seed;  // augmentation draws from the run's seed
    if (rank == 0) cli_data_output(&p, &c, &train, &val);

    if (parse_profile(o->profile, &prof_first, &prof_last)) goto fail;
    inner = cli_create_backend(&p, dist_size() > 1 && !flags_given(&p, "threads") ? threads_per_rank() : o->threads);
    if (inner && prof_first) {
        prof = profiler_create(rank);
        // A GPU runs ops asynchronously: each span waits for its op to finish.
        be = prof ? backend_profiled(inner, prof, cli_device_is_cuda(o->device)) : NULL;
    } else {
        be = inner;
    }
    if (!be || vit_create_ex(&model, &c, be, o->batch_size / dist_size(), 1,
                               (o->recompute ? VIT_RECOMPUTE : 0) | (cli_is_bf16(&p) ? VIT_STORE_BF16 : 0))) {
        npz_free(&weights);
        goto fail;
    }
    if (have_ck) {
        size_t n = model.table.total;
        // Sharded slots (--zero 1) are scattered from rank 0's copy by the trainer: only it holds them whole.
        int sharded = o->zero && dist_size() > 1, full = rank == 0 || !sharded;
        host = malloc(n * sizeof(float));
        slot_m = full && optim_uses_m(oc.kind) ? malloc(n * sizeof(float)) : NULL;
        slot_v = full && optim_uses_v(oc.kind) ? malloc(n * sizeof(float)) : NULL;
        if (!host || (full && optim_uses_m(oc.kind) && !slot_m) || (full && optim_uses_v(oc.kind) && !slot_v)) {
            vit_fail("out of memory loading %s", resume);
            goto fail;
        }
        if (rank == 0) {
            if (checkpoint_copy(&ck, resume, &model.table, host, slot_m, slot_v)) goto fail;
            be->upload(be, model.params, host, n * sizeof(float));
        }
        if (!sharded && ((slot_m && dist_bcast(slot_m, n * sizeof(float), 0)) ||
                         (slot_v && dist_bcast(slot_v, n * sizeof(float), 0))))
            goto fail;
        fprintf(out, "resuming %s: epoch %d, step %ld, update %ld\n", resume, rstate.epoch + 1, rstate.step_in_epoch,
                rstate.update);
    } else if (rank != 0) {
        // parameters arrive from rank 0 below
    } else if (weights.count) {
        int r2 = weights_load_npz(&model, &weights, weights_path, !strcasecmp(o->head_init, "glorot"), seed, out);
        npz_free(&weights);
        if (r2) goto fail;
        fprintf(out, "weights: %s\n", weights_path);
    } else if (vit_init_params(&model, seed)) {
        goto fail;
    }

    if (dist_active() && broadcast_params(&model)) goto fail;
    // One process per GPU: gradients are summed by NCCL on the device (even with one rank, so
    // `mpirun -np 1` runs the same path). It orders its work against the unwrapped backend.
    if (dist_active() && cli_device_is_cuda(o->device) == 1) {
        if (!(nccl = nccl_sync_create(inner))) goto fail;
        nccl_transport = nccl_sync_transport(nccl);
    }
    if (rank == 0 && *o->save_dir) {
        size_t slots = (size_t)optim_uses_m(oc.kind) + (size_t)optim_uses_v(oc.kind);
        if (check_save_space(o->save_dir, model.table.total * sizeof(float) * (1 + slots) + (1 << 20))) goto fail;
    }

    fprintf(out, "vit train: %s  hidden %d  mlp %d  heads %d  layers %d  patch %d  image %dx%dx%d  classes %d  "
                 "(%.3f M parameters, %d tokens)\n",
            c.name, c.hidden, c.mlp, c.heads, c.layers, c.patch, c.image, c.image, c.channels, c.classes,
            model.table.total / 1e6, config_tokens(&c));
    if (be->details) fprintf(out, "backend: %s: %s\n", be->name, be->details);
    fprintf(out, "data: %s, %d train / %d validation images;  batch %d x %d accumulation;  %s lr %g, %s;  seed %llu;  "
                 "%s %s, %sactivations %.1f MiB%s\n",
            o->synthetic_data ? "synthetic" : o->dataset_dir, train.count, val.count, o->batch_size,
            o->grad_accum_steps, optim_name(oc.kind), o->initial_lr, schedule_name(sched.kind),
            (unsigned long long)seed, be->name, cli_precision_name(&p), model.store_bf16 ? "bf16-saved " : "",
            model.activation_bytes / 1048576.0,
            o->recompute ? " (--recompute)" : "");

    // Every flag goes into each checkpoint's metadata.
    meta = calloc((size_t)g_flag_count, sizeof *meta);
    meta_text = calloc((size_t)g_flag_count, sizeof *meta_text);
    if (!meta || !meta_text) {
        vit_fail("out of memory");
        goto fail;
    }
    for (int i = 0; i < g_flag_count; i++) {
        snprintf(meta_text[i], 64, "flags.%s", g_flags[i].name);
        flags_value_text(&p, i, meta_text[i] + 64, sizeof meta_text[i] - 64);
        meta[i].key = meta_text[i];
        meta[i].value = meta_text[i] + 64;
    }

    if (rank == 0 && open_logs(&p, &events, &eval_events)) goto fail;
    char resume_cmd[8192];
    resume_command(resume_cmd, sizeof resume_cmd, argc, argv);
    TrainSetup ts = {.model = &model, .train = &train, .val = val.count ? &val : NULL, .opt = oc, .zero = o->zero,
                     .grad_transport = nccl ? &nccl_transport : NULL,
                     .sched = sched,
                     .batch = o->batch_size, .accum = o->grad_accum_steps, .epochs = o->epochs,
                     .steps_per_epoch = o->steps_per_epoch, .validation_steps = o->validation_steps,
                     .workers = o->data_workers, .prefetch = o->prefetch_batches,
                     .smoothing = o->label_smoothing, .seed = seed, .out = out,
                     .resume = have_ck ? &rstate : NULL, .resume_m = slot_m, .resume_v = slot_v,
                     .start_epoch = have_ck ? 0 : o->resume_from_epoch,
                     .save_dir = *o->save_dir ? o->save_dir : NULL, .checkpoint_every = o->checkpoint_every_steps,
                     .keep = o->keep_checkpoints, .meta = meta, .n_meta = g_flag_count,
                     .skip_nonfinite = o->skip_nonfinite, .resume_command = resume_cmd,
                     .events = events, .eval_events = eval_events, .summary_every = o->save_summary_steps,
                     .prof = prof, .prof_first = prof_first, .prof_last = prof_last};
    TrainResult r;
    int train_rc = train_run(&ts, &r);
    events = ts.events, eval_events = ts.eval_events;  // NULL if logging failed and stopped
    if (prof) {
        // The ceilings for the table's roofline columns, measured after the profiled steps so
        // they cannot disturb them, through the unwrapped backend so they record no spans.
        // Ranks measure at once, as they trained: each sees its share of the machine.
        Roofline roof;
        if (!train_rc && roofline_measure(inner, &roof))
            fprintf(stderr, "vit train: warning: roofline not measured: %s\n", vit_error());
        else if (!train_rc)
            profiler_set_roofline(prof, &roof);
        char trace[4096];
        snprintf(trace, sizeof trace, "%s/profile/trace.rank%d.json", *o->log_dir ? o->log_dir : ".", rank);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/profile", *o->log_dir ? o->log_dir : ".");
        mkdir(dir, 0777);
        if (profiler_write_trace(prof, trace)) fprintf(stderr, "vit train: warning: %s\n", vit_error());
        else fprintf(out, "profile: micro-steps %ld..%ld written to %s (open in ui.perfetto.dev)\n", prof_first,
                     prof_last, trace);
        profiler_print_table(prof, out, 25);
    }
    if (train_rc) goto fail;
    if (events_close(events) || events_close(eval_events)) fprintf(stderr, "vit train: warning: %s\n", vit_error());
    events = eval_events = NULL;
    if (r.val.images)
        fprintf(out, "final validation accuracy: top1 %.2f%%  top5 %.2f%%  (%ld images)\n", 100 * r.val.top1,
                100 * r.val.top5, r.val.images);
    fprintf(out, "trained %ld updates in %.1f s, %.1f img/s, peak host memory %.0f MiB%s%s\n", r.updates, r.seconds,
            r.images_per_sec, peak_rss_mib(), *r.last_checkpoint ? "; checkpoint " : "", r.last_checkpoint);
    if (r.skipped_updates) fprintf(out, "skipped %ld updates with a non-finite loss or gradient\n", r.skipped_updates);
    if (dist_size() > 1)
        fprintf(out, "distributed: %d ranks; rank 0 waited %.2f s (%.1f%% of the run) for gradient all-reduces\n",
                dist_size(), r.allreduce_wait, r.seconds > 0 ? 100 * r.allreduce_wait / r.seconds : 0);
    if (o->json && rank == 0) print_json(&r);
    rc = 0;
    goto done;
fail:
    if (dist_active() && dist_size() > 1) {
        // One rank's error ends the job: the others may be waiting for it in a collective.
        fprintf(stderr, "vit train: rank %d: %s\n", rank, vit_error());
        dist_abort(1);
    }
    fprintf(stderr, "vit train: %s\n", vit_error());
done:
    nccl_sync_destroy(nccl);  // waits for sums in flight on the gradients vit_destroy frees
    vit_destroy(&model);
    if (be && be != inner) be->destroy(be);
    if (inner) inner->destroy(inner);
    profiler_destroy(prof);
    events_close(events);
    events_close(eval_events);
    if (ck_open) checkpoint_close(&ck);
    dataset_free(&train);
    dataset_free(&val);
    free(host), free(slot_m), free(slot_v), free(meta), free(meta_text);
    flags_free(&p);
    if (devnull) fclose(devnull);
    dist_finalize();
    return rc;
}
