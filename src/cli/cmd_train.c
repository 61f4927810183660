// `vit train`: flags -> data, model, optimizer, schedule -> the training loop -> report.
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "model/trainer.h"
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
    return VIT_OK;
}

static int optimizer_from_flags(const ParsedOptions *p, OptimConfig *oc) {
    const Options *o = &p->o;
    if (optim_config_default(oc, o->optimizer)) return VIT_ERR;
    struct { const char *flag; float value; float *field; float lo, hi; } ov[] = {
        {"momentum", o->momentum, &oc->momentum, 0, 1},   {"beta1", o->beta1, &oc->beta1, 0, 1},
        {"beta2", o->beta2, &oc->beta2, 0, 1},            {"epsilon", o->epsilon, &oc->epsilon, 0, 1e30f},
        {"weight_decay", o->weight_decay, &oc->weight_decay, 0, 1e30f},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++) {
        if (!flags_given(p, ov[i].flag)) continue;
        if (!(ov[i].value >= ov[i].lo && ov[i].value < ov[i].hi) || (ov[i].lo == 0 && ov[i].hi > 1 && ov[i].value < 0))
            return vit_fail("--%s %g: out of range [%g, %g)", ov[i].flag, ov[i].value, ov[i].lo, ov[i].hi);
        if (!strcmp(ov[i].flag, "epsilon") && ov[i].value <= 0) return vit_fail("--epsilon %g: must be positive", ov[i].value);
        *ov[i].field = ov[i].value;
    }
    oc->clip_norm = o->clip_norm;
    return VIT_OK;
}

// Chooses and opens the data: synthetic, or IDX files under --dataset_dir.
static int open_data(const ParsedOptions *p, Dataset *train, Dataset *val, int *have_val) {
    const Options *o = &p->o;
    *have_val = 0;
    const char *fmt = o->data_format;
    if (strcasecmp(fmt, "auto") && strcasecmp(fmt, "idx") && strcasecmp(fmt, "tfrecord") && strcasecmp(fmt, "folder"))
        return vit_fail("--data_format %s: expected auto, idx, tfrecord or folder", fmt);
    if (o->synthetic_data) return VIT_OK;  // sized from the model, see below
    if (!strcasecmp(fmt, "tfrecord") || !strcasecmp(fmt, "folder"))
        return vit_fail("--data_format %s: not supported yet (the ImageNet pipeline arrives later); use idx", fmt);
    struct stat st;
    if (stat(o->dataset_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return vit_fail("--dataset_dir %s: no such folder", o->dataset_dir);
    if (!strcasecmp(fmt, "auto") && !idx_dir_looks_like_idx(o->dataset_dir))
        return vit_fail("--dataset_dir %s: no IDX files (train-images-idx3-ubyte[.gz]) there; TFRecord and "
                        "image-folder data are not supported yet",
                        o->dataset_dir);
    if (dataset_open_idx(train, val, o->dataset_dir)) return VIT_ERR;
    *have_val = 1;
    return VIT_OK;
}

static void print_json(const TrainResult *r) {
    printf("{\"train_loss\": %.6f, \"train_top1\": %.6f, ", r->train_loss, r->train_top1);
    if (r->val.images)
        printf("\"val_loss\": %.6f, \"val_top1\": %.6f, \"val_top5\": %.6f, \"val_images\": %ld, ", r->val.loss,
               r->val.top1, r->val.top5, r->val.images);
    else
        printf("\"val_loss\": null, \"val_top1\": null, \"val_top5\": null, \"val_images\": 0, ");
    printf("\"images_per_sec\": %.3f, \"steps\": %ld, \"seconds\": %.3f}\n", r->images_per_sec, r->updates, r->seconds);
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
    int rc = 2, have_val = 0;
    if (flags_parse(&p, argc, argv) || cli_check_supported(&p) || check_ranges(&p)) goto fail;
    const Options *o = &p.o;
    OptimConfig oc;
    Schedule sched = {0};
    if (optimizer_from_flags(&p, &oc)) goto fail;
    if (schedule_parse(o->lr_sched, &sched.kind)) {
        vit_fail("--lr_sched %s: expected linear, exp, steps, constant or WarmupCosine", o->lr_sched);
        goto fail;
    }
    ViTConfig c;
    if (config_from_preset(&c, o->model)) goto fail;  // a bad --model is reported before any data is read
    sched.initial_lr = o->initial_lr;
    sched.final_lr = o->final_lr;
    sched.warmup_steps = o->warmup_steps;
    uint64_t seed = o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL);

    if (open_data(&p, &train, &val, &have_val)) goto fail;
    if (cli_model_config(&p, o->synthetic_data ? NULL : &train, &c)) goto fail;
    if (o->synthetic_data) {
        int B = o->batch_size;
        long n_train = (long)(o->steps_per_epoch ? o->steps_per_epoch : 10) * B;
        long n_val = (long)(o->validation_steps > 0 ? o->validation_steps : 2) * B;
        if (n_train > 2000000000L || n_val > 2000000000L) {
            vit_fail("--steps_per_epoch x --batch_size: too many synthetic images");
            goto fail;
        }
        dataset_synthetic(&train, "synthetic", (int)n_train, c.image, c.channels, c.classes, seed);
        dataset_synthetic(&val, "synthetic-val", (int)n_val, c.image, c.channels, c.classes, seed ^ 0x5eedull);
        have_val = 1;
    }

    be = backend_cpu_create(o->threads);
    if (!be || vit_create(&model, &c, be, o->batch_size, 1) || vit_init_params(&model, seed)) goto fail;

    FILE *out = o->json ? stderr : stdout;
    fprintf(out, "vit train: %s  hidden %d  mlp %d  heads %d  layers %d  patch %d  image %dx%dx%d  classes %d  "
                 "(%.3f M parameters, %d tokens)\n",
            c.name, c.hidden, c.mlp, c.heads, c.layers, c.patch, c.image, c.image, c.channels, c.classes,
            model.table.total / 1e6, config_tokens(&c));
    fprintf(out, "data: %s, %d train / %d validation images;  batch %d x %d accumulation;  %s lr %g, %s;  seed %llu;  "
                 "%s fp32, activations %.1f MiB\n",
            o->synthetic_data ? "synthetic" : o->dataset_dir, train.count, have_val ? val.count : 0, o->batch_size,
            o->grad_accum_steps, optim_name(oc.kind), o->initial_lr, schedule_name(sched.kind),
            (unsigned long long)seed, be->name, model.activation_bytes / 1048576.0);

    TrainSetup ts = {&model, &train, have_val ? &val : NULL, oc, sched, o->batch_size, o->grad_accum_steps, o->epochs,
                     o->steps_per_epoch, o->validation_steps, o->label_smoothing, seed, out};
    TrainResult r;
    if (train_run(&ts, &r)) goto fail;
    if (r.val.images)
        fprintf(out, "final validation accuracy: top1 %.2f%%  top5 %.2f%%  (%ld images)\n", 100 * r.val.top1,
                100 * r.val.top5, r.val.images);
    fprintf(out, "trained %ld updates in %.1f s, %.1f img/s\n", r.updates, r.seconds, r.images_per_sec);
    if (o->json) print_json(&r);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "vit train: %s\n", vit_error());
done:
    vit_destroy(&model);
    if (be) be->destroy(be);
    dataset_free(&train);
    dataset_free(&val);
    return rc;
}
