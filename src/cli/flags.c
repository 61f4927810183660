#include "flags.h"
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/status.h"

#define F(field, type) offsetof(Options, field), sizeof(((Options *)0)->field)

const Flag g_flags[] = {
    // data
    {"dataset_dir", "--dataset", FLAG_STRING, F(dataset_dir, 0), "/data/tensorflow/imagenet/tf_records",
     "data folder: ImageNet TFRecords, train/ and val/ class folders, or IDX files", NULL, 0},
    {"data_format", NULL, FLAG_STRING, F(data_format, 0), "auto", "auto | idx | tfrecord | folder", NULL, 0},
    {"train_subset", NULL, FLAG_STRING, F(train_subset, 0), "train/train", "TFRecord prefix of training shards", NULL, 0},
    {"val_subset", NULL, FLAG_STRING, F(val_subset, 0), "validation/validation", "TFRecord prefix of validation shards",
     NULL, 0},
    {"synthetic_data", NULL, FLAG_BOOL, F(synthetic_data, 0), "0",
     "random images and labels generated in memory at the model's size (benchmarks)", NULL, 0},
    {"data_workers", NULL, FLAG_INT, F(data_workers, 0), "0", "data loader threads (default: the cores)", NULL, 0},
    {"prefetch_batches", NULL, FLAG_INT, F(prefetch_batches, 0), "4", "batches the loader prepares ahead", NULL, 0},
    {"skip_corrupt", NULL, FLAG_BOOL, F(skip_corrupt, 0), "0",
     "skip unreadable images (counted, reported per epoch) instead of stopping", NULL, 0},
    {"rotate_deg", NULL, FLAG_FLOAT, F(rotate_deg, 0), "0", "training augmentation: random rotation up to +-N degrees",
     NULL, 0},
    {"cache_dir", NULL, FLAG_STRING, F(cache_dir, 0), "", "where the TFRecord offset index is cached "
     "(default: next to the shards)", NULL, 0},
    // prep
    {"raw_data_dir", NULL, FLAG_STRING, F(raw_data_dir, 0), "", "prep: raw ImageNet (train/, validation/) or "
     "train/ and val/ class folders", NULL, 0},
    {"output_dir", "--local_scratch_dir", FLAG_STRING, F(output_dir, 0), "", "prep: where train/ and validation/ "
     "shards go", NULL, 0},
    {"val_labels", NULL, FLAG_STRING, F(val_labels, 0), "", "prep: validation synsets, one per line in file-name "
     "order (default <raw_data_dir>/imagenet_2012_validation_synset_labels.txt)", NULL, 0},
    {"train_shards", NULL, FLAG_INT, F(train_shards, 0), "1024", "prep: training shards", NULL, 0},
    {"val_shards", NULL, FLAG_INT, F(val_shards, 0), "128", "prep: validation shards", NULL, 0},
    // model
    {"model", NULL, FLAG_STRING, F(model, 0), "ViT-B_16", "preset ViT-{Ti,S,B,L,H}_{patch}", NULL, 0},
    {"hidden_size", NULL, FLAG_INT, F(hidden_size, 0), "0", "override: token width", NULL, 0},
    {"num_layers", NULL, FLAG_INT, F(num_layers, 0), "0", "override: encoder blocks", NULL, 0},
    {"num_heads", NULL, FLAG_INT, F(num_heads, 0), "0", "override: attention heads", NULL, 0},
    {"mlp_dim", NULL, FLAG_INT, F(mlp_dim, 0), "0", "override: MLP width", NULL, 0},
    {"patch_size", NULL, FLAG_INT, F(patch_size, 0), "0", "override: patch side", NULL, 0},
    {"image_size", NULL, FLAG_INT, F(image_size, 0), "0", "input side (default 384, or the data's own size)", NULL, 0},
    {"channels", NULL, FLAG_INT, F(channels, 0), "0", "input channels (default 3, or the data's)", NULL, 0},
    {"num_classes", NULL, FLAG_INT, F(num_classes, 0), "0", "classes (default 1000, or the data's)", NULL, 0},
    {"representation_size", NULL, FLAG_INT, F(representation_size, 0), "-1",
     "pre_logits width; 0 = none (default none when training from scratch)", NULL, 0},
    {"dropout", NULL, FLAG_FLOAT, F(dropout, 0), "0.1", "dropout rate", NULL, 0},
    {"gelu", NULL, FLAG_STRING, F(gelu, 0), "erf", "erf (exact, the recipe) | tanh (approximation)", NULL, 0},
    {"head_init", NULL, FLAG_STRING, F(head_init, 0), "zeros", "zeros | glorot: init of a new head", NULL, 0},
    // training
    {"optimizer", NULL, FLAG_STRING, F(optimizer, 0), "sgd", "sgd | adam | adamw | rmsprop", NULL, 0},
    {"momentum", NULL, FLAG_FLOAT, F(momentum, 0), "", "sgd momentum (default 0.9)", NULL, 0},
    {"beta1", NULL, FLAG_FLOAT, F(beta1, 0), "", "adam/adamw beta1 (default 0.9)", NULL, 0},
    {"beta2", NULL, FLAG_FLOAT, F(beta2, 0), "", "adam/adamw beta2 (default 0.999)", NULL, 0},
    {"epsilon", NULL, FLAG_FLOAT, F(epsilon, 0), "",
     "adam/rmsprop 1e-2 (the recipe), adamw 1e-8", NULL, 0},
    {"weight_decay", NULL, FLAG_FLOAT, F(weight_decay, 0), "",
     "decoupled decay on kernels (adamw default 0.01, others 0)", NULL, 0},
    {"clip_norm", NULL, FLAG_FLOAT, F(clip_norm, 0), "1.0", "global-norm gradient clipping, 0 = off", NULL, 0},
    {"label_smoothing", NULL, FLAG_FLOAT, F(label_smoothing, 0), "0", "label smoothing of the loss", NULL, 0},
    {"dtype", "-d", FLAG_STRING, F(dtype, 0), "fp32", "fp32 | bf16", NULL, 0},
    {"batch_size", NULL, FLAG_INT, F(batch_size, 0), "32", "global batch of one micro-step", NULL, 0},
    {"grad_accum_steps", NULL, FLAG_INT, F(grad_accum_steps, 0), "8", "micro-batches per optimizer update", NULL, 0},
    {"epochs", NULL, FLAG_INT, F(epochs, 0), "10", "epochs", NULL, 0},
    {"steps_per_epoch", NULL, FLAG_INT, F(steps_per_epoch, 0), "0", "micro-steps per epoch (default data / batch)",
     NULL, 0},
    {"validation_steps", NULL, FLAG_INT, F(validation_steps, 0), "-1",
     "validation batches (default: the whole set; 0 = no validation)", NULL, 0},
    {"lr_sched", NULL, FLAG_STRING, F(lr_sched, 0), "WarmupCosine", "linear | exp | steps | constant | WarmupCosine",
     NULL, 0},
    {"initial_lr", NULL, FLAG_FLOAT, F(initial_lr, 0), "6e-2", "peak / initial learning rate", NULL, 0},
    {"final_lr", NULL, FLAG_FLOAT, F(final_lr, 0), "1e-5", "final learning rate (linear, exp)", NULL, 0},
    {"warmup_steps", NULL, FLAG_INT, F(warmup_steps, 0), "4000", "WarmupCosine warm-up, in optimizer updates", NULL, 0},
    {"seed", NULL, FLAG_LONG, F(seed, 0), "-1", "seed of every random stream (default: from the clock)", NULL, 0},
    {"deterministic", NULL, FLAG_BOOL, F(deterministic, 0), "0", "no augmentation, fixed order; needs --seed", NULL, 0},
    {"device", NULL, FLAG_STRING, F(device, 0), "cpu", "cpu | cuda | cuda:N", NULL, 0},
    {"allow_tf32", NULL, FLAG_BOOL, F(allow_tf32, 0), "0", "cuda fp32: TF32 tensor-core matrix products", NULL, 0},
    {"threads", NULL, FLAG_INT, F(threads, 0), "0", "CPU threads (default: all cores)", NULL, 0},
    {"json", NULL, FLAG_BOOL, F(json, 0), "0", "print one JSON object with the results at the end", NULL, 0},
    // weights, checkpoints, logs
    {"weights_path", NULL, FLAG_STRING, F(weights_path, 0), "~/.keras", "folder holding weights/<model>_imagenet21k.npz",
     NULL, 0},
    {"pretrained", NULL, FLAG_STRING, F(pretrained, 0), "", "explicit .npz weights file (official naming)", NULL, 0},
    {"from_scratch", NULL, FLAG_BOOL, F(from_scratch, 0), "0",
     "random initialisation instead of the official weights", NULL, 0},
    {"resume_from_checkpoint_path", NULL, FLAG_STRING, F(resume_from_checkpoint_path, 0), "",
     "continue a run exactly from a vitc checkpoint (.safetensors); an .npz loads weights only", NULL, 0},
    {"resume_from_epoch", NULL, FLAG_INT, F(resume_from_epoch, 0), "0",
     "initial epoch for weight-only resume (the schedule continues from it)", NULL, 0},
    {"evaluate_checkpoint_path", NULL, FLAG_STRING, F(evaluate_checkpoint_path, 0), "",
     "evaluate a checkpoint on the validation set and exit", NULL, 0},
    {"save_dir", NULL, FLAG_STRING, F(save_dir, 0), "saves", "checkpoint folder; '' = no checkpoints", NULL, 0},
    {"checkpoint_every_steps", NULL, FLAG_INT, F(checkpoint_every_steps, 0), "0",
     "also write a checkpoint every N optimizer updates", NULL, 0},
    {"keep_checkpoints", NULL, FLAG_INT, F(keep_checkpoints, 0), "0",
     "keep only the newest K epoch/step checkpoints of the run (0 = all)", NULL, 0},
    {"checkpoint", NULL, FLAG_STRING, F(checkpoint, 0), "", "evaluate/predict/export: a vitc checkpoint", NULL, 0},
    {"out", NULL, FLAG_STRING, F(out, 0), "", "export: the .npz to write", NULL, 0},
    {"labels", NULL, FLAG_STRING, F(labels, 0), "", "predict: class names, one per line", NULL, 0},
    {"log_dir", NULL, FLAG_STRING, F(log_dir, 0), "logs", "TensorBoard folder", NULL, 0},
    {"save_summary_steps", NULL, FLAG_INT, F(save_summary_steps, 0), "100",
     "TensorBoard training scalars every N optimizer updates (0 = per epoch only); --log_dir '' = no logs", NULL, 0},
    {"profile", NULL, FLAG_STRING, F(profile, 0), "0",
     "N or A,B: profile micro-step N or steps A..B (Chrome trace in <log_dir>/profile, op table at the end)", NULL, 0},
    {"distributed", NULL, FLAG_BOOL, F(distributed, 0), "0",
     "data-parallel over MPI ranks (mpirun -np N vit train --distributed); --batch_size is global", NULL, 0},
    {"zero", NULL, FLAG_INT, F(zero, 0), "0",
     "with --distributed: 1 = each rank keeps the optimizer state (Adam m/v, momentum) of 1/N of the parameters "
     "(ZeRO stage 1; checkpoints stay full); 0 = every rank keeps all of it", NULL, 0},
    {"recompute", NULL, FLAG_BOOL, F(recompute, 0), "0",
     "activation checkpointing: keep only each block's input, recompute the block in the backward pass "
     "(~4.6x less activation memory, ~23% more step time)", NULL, 0},
    {"skip_nonfinite", NULL, FLAG_BOOL, F(skip_nonfinite, 0), "0",
     "skip updates with a non-finite loss or gradient norm (counted) instead of stopping", NULL, 0},
    {"base_tf_server_port", NULL, FLAG_INT, F(base_tf_server_port, 0), "7850", "TensorFlow-only; ignored", NULL, 1},
    {"recipe_cache", NULL, FLAG_STRING, F(recipe_cache, 0), "", "Habana-only; ignored", NULL, 1},
    {"dump_config", NULL, FLAG_BOOL, F(dump_config, 0), "0", "Habana-only; ignored", NULL, 1},
};
const int g_flag_count = sizeof g_flags / sizeof g_flags[0];

static int set_value(Options *o, const Flag *f, const char *value, const char *shown) {
    char *field = (char *)o + f->offset, *end;
    errno = 0;
    switch (f->type) {
    case FLAG_INT: {
        long v = strtol(value, &end, 10);
        if (!*value || *end || errno || v < -2147483647L || v > 2147483647L)
            return vit_fail("%s %s: expected an integer", shown, value);
        *(int *)field = (int)v;
        break;
    }
    case FLAG_LONG: {
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno) return vit_fail("%s %s: expected an integer", shown, value);
        *(long long *)field = v;
        break;
    }
    case FLAG_FLOAT: {
        double v = strtod(value, &end);
        if (!*value || *end || errno || !isfinite(v)) return vit_fail("%s %s: expected a number", shown, value);
        *(float *)field = (float)v;
        break;
    }
    case FLAG_STRING:
        if (strlen(value) >= f->size) return vit_fail("%s: value longer than %u characters", shown, f->size - 1);
        strcpy(field, value);
        break;
    case FLAG_BOOL:
        if (!strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes"))
            *(int *)field = 1;
        else if (!strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no"))
            *(int *)field = 0;
        else
            return vit_fail("%s=%s: expected true or false", shown, value);
        break;
    }
    return VIT_OK;
}

static const Flag *find_flag(const char *arg, size_t len) {
    for (int i = 0; i < g_flag_count; i++) {
        const Flag *f = &g_flags[i];
        if (strlen(f->name) == len && !strncmp(f->name, arg, len)) return f;
    }
    return NULL;
}

int flags_parse(ParsedOptions *p, int argc, char **argv) {
    memset(p, 0, sizeof *p);
    for (int i = 0; i < g_flag_count; i++) {
        const Flag *f = &g_flags[i];
        if (*f->def && set_value(&p->o, f, f->def, f->name)) return VIT_ERR;
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const Flag *f = NULL;
        const char *value = NULL;
        // Aliases ("-d", "--dataset") match the whole argument or "alias=value".
        for (int k = 0; k < g_flag_count && !f; k++) {
            const char *al = g_flags[k].alias;
            size_t n = al ? strlen(al) : 0;
            if (al && !strncmp(arg, al, n) && (arg[n] == 0 || arg[n] == '=')) {
                f = &g_flags[k];
                value = arg[n] == '=' ? arg + n + 1 : NULL;
            }
        }
        if (!f) {
            if (strncmp(arg, "--", 2) != 0 || !strcmp(arg, "--")) {
                char **grown = realloc(p->positional, (size_t)(p->n_positional + 1) * sizeof *grown);
                if (!grown) return vit_fail("out of memory parsing arguments");
                p->positional = grown;
                p->positional[p->n_positional++] = argv[i];
                continue;
            }
            const char *eq = strchr(arg, '=');
            size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            f = find_flag(arg + 2, len);
            if (!f) return vit_fail("unknown flag %.*s (see --help)", (int)(len + 2), arg);
            value = eq ? eq + 1 : NULL;
        }
        char shown[96];
        snprintf(shown, sizeof shown, "--%s", f->name);
        if (!value) {
            if (f->type == FLAG_BOOL)
                value = "1";
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return vit_fail("%s: missing value", shown);
        }
        if (set_value(&p->o, f, value, shown)) return VIT_ERR;
        p->set[f - g_flags] = 1;
        if (f->ignored) fprintf(stderr, "note: %s is accepted for compatibility and ignored\n", shown);
    }
    return VIT_OK;
}

int flags_no_positional(const ParsedOptions *p) {
    if (p->n_positional) return vit_fail("unexpected argument '%s' (flags start with --)", p->positional[0]);
    return VIT_OK;
}

void flags_free(ParsedOptions *p) {
    free(p->positional);
    p->positional = NULL;
    p->n_positional = 0;
}

void flags_value_text(const ParsedOptions *p, int i, char *buf, unsigned n) {
    const Flag *f = &g_flags[i];
    const char *field = (const char *)&p->o + f->offset;
    switch (f->type) {
    case FLAG_INT: snprintf(buf, n, "%d", *(const int *)field); break;
    case FLAG_LONG: snprintf(buf, n, "%lld", *(const long long *)field); break;
    case FLAG_FLOAT: snprintf(buf, n, "%.9g", *(const float *)field); break;
    case FLAG_STRING: snprintf(buf, n, "%s", field); break;
    case FLAG_BOOL: snprintf(buf, n, "%s", *(const int *)field ? "true" : "false"); break;
    }
}

int flags_given(const ParsedOptions *p, const char *name) {
    const Flag *f = find_flag(name, strlen(name));
    return f && p->set[f - g_flags];
}

void flags_print_help(const char *command, const char *summary) {
    printf("usage: vit %s [flags]\n%s\n\nflags:\n", command, summary);
    for (int i = 0; i < g_flag_count; i++) {
        const Flag *f = &g_flags[i];
        char left[96];
        const char *kind = f->type == FLAG_BOOL ? "" : f->type == FLAG_STRING ? " S" : f->type == FLAG_FLOAT ? " X" : " N";
        snprintf(left, sizeof left, "--%s%s%s%s", f->name, kind, f->alias ? ", " : "", f->alias ? f->alias : "");
        printf("  %-34s %s", left, f->help);
        if (*f->def && strcmp(f->def, "0") && strcmp(f->def, "-1")) printf(" [%s]", f->def);
        if (f->later) printf(" (not supported yet)");
        printf("\n");
    }
}
