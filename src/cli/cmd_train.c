// `vit train`: flags -> data, model (official weights, a checkpoint to resume, or random
// initialisation), optimizer, schedule -> the training loop -> report.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "io/npz.h"
#include "model/trainer.h"
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
    if (o->data_workers < 0) return vit_fail("--data_workers %d: must be >= 0", o->data_workers);
    if (o->prefetch_batches < 1) return vit_fail("--prefetch_batches %d: must be >= 1", o->prefetch_batches);
    if (o->rotate_deg < 0 || o->rotate_deg > 180) return vit_fail("--rotate_deg %g: must be in [0, 180]", o->rotate_deg);
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

// Creates --save_dir (one level) and checks it is writable before any training is done.
static int prepare_save_dir(const char *dir) {
    if (!*dir) return VIT_OK;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return vit_fail("--save_dir %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return vit_fail("--save_dir %s: not a folder", dir);
    if (access(dir, W_OK) != 0) return vit_fail("--save_dir %s: not writable", dir);
    return VIT_OK;
}

static void print_json(const TrainResult *r) {
    // 17 significant digits: two runs that print the same numbers computed the same doubles.
    printf("{\"train_loss\": %.17g, \"train_top1\": %.17g, ", r->train_loss, r->train_top1);
    if (r->val.images)
        printf("\"val_loss\": %.17g, \"val_top1\": %.6f, \"val_top5\": %.6f, \"val_images\": %ld, ", r->val.loss,
               r->val.top1, r->val.top5, r->val.images);
    else
        printf("\"val_loss\": null, \"val_top1\": null, \"val_top5\": null, \"val_images\": 0, ");
    printf("\"images_per_sec\": %.3f, \"steps\": %ld, \"seconds\": %.3f, \"checkpoint\": \"%s\"}\n",
           r->images_per_sec, r->updates, r->seconds, r->last_checkpoint);
}

int cmd_train(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("train", "Trains a Vision Transformer (flags as the TensorFlow recipe, plus ours).");
            return 0;
        }
    ParsedOptions p;
    Dataset train = {0}, val = {0};
    Backend *be = NULL;
    ViT model = {0};
    Checkpoint ck = {0};
    int rc = 2, have_ck = 0;
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
    if (prepare_save_dir(o->save_dir)) goto fail;

    // A full-state checkpoint fixes the model and the position; otherwise flags (+ data) do.
    const char *resume = o->resume_from_checkpoint_path;
    size_t rlen = strlen(resume);
    int resume_full = rlen > 12 && !strcmp(resume + rlen - 12, ".safetensors");
    if (*resume && resume_full) {
        if (checkpoint_open(&ck, resume)) goto fail;
        have_ck = 1;
        c = ck.cfg;
        if (!ck.has_optimizer || ck.opt != oc.kind) {
            vit_fail("%s: the checkpoint holds %s optimizer state, this run uses --optimizer %s", resume,
                     ck.has_optimizer ? optim_name(ck.opt) : "no", optim_name(oc.kind));
            goto fail;
        }
    }
    uint64_t seed = have_ck ? ck.state.seed : o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL);
    if (cli_open_data(&p, NULL, &train, &val)) goto fail;
    if (!have_ck && cli_model_config(&p, o->synthetic_data ? NULL : &train, &c)) goto fail;
    NpzFile weights = {0};
    char weights_path[2048] = "";
    if (!have_ck && (*resume || !o->from_scratch)) {
        if (*resume)
            cli_expand_home(resume, weights_path, sizeof weights_path);
        else if (cli_weights_file(&p, weights_path, sizeof weights_path))
            goto fail;
        if (npz_read(&weights, weights_path)) goto fail;
        if (!flags_given(&p, "representation_size")) c.representation = weights_npz_representation(&weights);
    }
    if (o->synthetic_data) {
        ParsedOptions q = p;
        q.o.seed = (long long)seed;
        if (cli_open_data(&q, &c, &train, &val)) goto fail;
    }
    train.seed = o->synthetic_data ? train.seed : seed;  // augmentation draws from the run's seed
    cli_data_output(&p, &c, &train, &val);

    be = backend_cpu_create(o->threads);
    if (!be || vit_create(&model, &c, be, o->batch_size, 1)) {
        npz_free(&weights);
        goto fail;
    }
    FILE *out = o->json ? stderr : stdout;
    if (have_ck) {
        size_t n = model.table.total;
        host = malloc(n * sizeof(float));
        slot_m = optim_uses_m(oc.kind) ? malloc(n * sizeof(float)) : NULL;
        slot_v = optim_uses_v(oc.kind) ? malloc(n * sizeof(float)) : NULL;
        if (!host || (optim_uses_m(oc.kind) && !slot_m) || (optim_uses_v(oc.kind) && !slot_v)) {
            vit_fail("out of memory loading %s", resume);
            goto fail;
        }
        if (checkpoint_copy(&ck, resume, &model.table, host, slot_m, slot_v)) goto fail;
        be->upload(be, model.params, host, n * sizeof(float));
        fprintf(out, "resuming %s: epoch %d, step %ld, update %ld\n", resume, ck.state.epoch + 1,
                ck.state.step_in_epoch, ck.state.update);
    } else if (weights.count) {
        int r2 = weights_load_npz(&model, &weights, weights_path, !strcasecmp(o->head_init, "glorot"), seed, out);
        npz_free(&weights);
        if (r2) goto fail;
        fprintf(out, "weights: %s\n", weights_path);
    } else if (vit_init_params(&model, seed)) {
        goto fail;
    }

    fprintf(out, "vit train: %s  hidden %d  mlp %d  heads %d  layers %d  patch %d  image %dx%dx%d  classes %d  "
                 "(%.3f M parameters, %d tokens)\n",
            c.name, c.hidden, c.mlp, c.heads, c.layers, c.patch, c.image, c.image, c.channels, c.classes,
            model.table.total / 1e6, config_tokens(&c));
    fprintf(out, "data: %s, %d train / %d validation images;  batch %d x %d accumulation;  %s lr %g, %s;  seed %llu;  "
                 "%s fp32, activations %.1f MiB\n",
            o->synthetic_data ? "synthetic" : o->dataset_dir, train.count, val.count, o->batch_size,
            o->grad_accum_steps, optim_name(oc.kind), o->initial_lr, schedule_name(sched.kind),
            (unsigned long long)seed, be->name, model.activation_bytes / 1048576.0);

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

    TrainSetup ts = {.model = &model, .train = &train, .val = val.count ? &val : NULL, .opt = oc, .sched = sched,
                     .batch = o->batch_size, .accum = o->grad_accum_steps, .epochs = o->epochs,
                     .steps_per_epoch = o->steps_per_epoch, .validation_steps = o->validation_steps,
                     .workers = o->data_workers, .prefetch = o->prefetch_batches,
                     .smoothing = o->label_smoothing, .seed = seed, .out = out,
                     .resume = have_ck ? &ck.state : NULL, .resume_m = slot_m, .resume_v = slot_v,
                     .start_epoch = have_ck ? 0 : o->resume_from_epoch,
                     .save_dir = *o->save_dir ? o->save_dir : NULL, .checkpoint_every = o->checkpoint_every_steps,
                     .keep = o->keep_checkpoints, .meta = meta, .n_meta = g_flag_count};
    TrainResult r;
    if (train_run(&ts, &r)) goto fail;
    if (r.val.images)
        fprintf(out, "final validation accuracy: top1 %.2f%%  top5 %.2f%%  (%ld images)\n", 100 * r.val.top1,
                100 * r.val.top5, r.val.images);
    fprintf(out, "trained %ld updates in %.1f s, %.1f img/s%s%s\n", r.updates, r.seconds, r.images_per_sec,
            *r.last_checkpoint ? "; checkpoint " : "", r.last_checkpoint);
    if (o->json) print_json(&r);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "vit train: %s\n", vit_error());
done:
    vit_destroy(&model);
    if (be) be->destroy(be);
    if (have_ck) checkpoint_close(&ck);
    dataset_free(&train);
    dataset_free(&val);
    free(host), free(slot_m), free(slot_v), free(meta), free(meta_text);
    flags_free(&p);
    return rc;
}
