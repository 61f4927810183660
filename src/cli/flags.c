#include "flags.h"
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/status.h"

#define F(field) offsetof(Options, field), sizeof(((Options *)0)->field)

// Flag.commands: which commands read a flag, through which shared helper (common.c).
#define DATA (CMD_TRAIN | CMD_EVALUATE)               // cli_open_data: the data to train on or to evaluate
#define RUN (CMD_TRAIN | CMD_EVALUATE | CMD_PREDICT)  // a model on a backend: cli_create_backend, cli_load_model
#define SHAPE (RUN | CMD_INFO | CMD_EXPORT)           // cli_model_config: preset and overrides

const Flag g_flags[] = {
    // data
    {"dataset_dir", "--dataset", FLAG_STRING, F(dataset_dir), "/data/tensorflow/imagenet/tf_records",
     "data folder: ImageNet TFRecords, train/ and val/ class folders, or IDX files", 0, DATA},
    {"data_format", NULL, FLAG_STRING, F(data_format), "auto", "auto | idx | tfrecord | folder", 0, DATA},
    {"train_subset", NULL, FLAG_STRING, F(train_subset), "train/train", "TFRecord prefix of training shards",
     0, CMD_TRAIN},
    {"val_subset", NULL, FLAG_STRING, F(val_subset), "validation/validation", "TFRecord prefix of validation shards",
     0, DATA},
    {"synthetic_data", NULL, FLAG_BOOL, F(synthetic_data), "0",
     "random images and labels generated in memory at the model's size (benchmarks)", 0, DATA},
    {"data_workers", NULL, FLAG_INT, F(data_workers), "0", "data loader threads (default: the cores)",
     0, DATA | CMD_PREP},
    {"prefetch_batches", NULL, FLAG_INT, F(prefetch_batches), "4", "batches the loader prepares ahead",
     0, CMD_TRAIN},
    {"skip_corrupt", NULL, FLAG_BOOL, F(skip_corrupt), "0",
     "skip unreadable images (counted, reported per epoch) instead of stopping", 0, DATA | CMD_PREP},
    {"aa", NULL, FLAG_STRING, F(aa), "", "training: timm's RandAugment policy, e.g. rand-m9-mstd0.5-inc1 ('' = off)",
     0, CMD_TRAIN},
    {"reprob", NULL, FLAG_FLOAT, F(reprob), "0", "training: timm's random erasing probability", 0, CMD_TRAIN},
    {"remode", NULL, FLAG_STRING, F(remode), "pixel", "random erasing fill: pixel | const | rand", 0, CMD_TRAIN},
    {"recount", NULL, FLAG_INT, F(recount), "1", "random erasing: up to N boxes per image", 0, CMD_TRAIN},
    {"rotate_deg", NULL, FLAG_FLOAT, F(rotate_deg), "0", "training augmentation: random rotation up to +-N degrees",
     0, CMD_TRAIN},
    {"cache_dir", NULL, FLAG_STRING, F(cache_dir), "", "where the TFRecord offset index is cached "
     "(default: next to the shards)", 0, DATA},
    {"eval_fast_decode", NULL, FLAG_BOOL, F(eval_fast_decode), "0",
     "evaluation and predict: decode large JPEGs at a reduced DCT scale (faster; the recipe decodes full size)",
     0, RUN},
    // prep
    {"raw_data_dir", NULL, FLAG_STRING, F(raw_data_dir), "", "prep: raw ImageNet (train/, validation/) or "
     "train/ and val/ class folders", 0, CMD_PREP},
    {"output_dir", "--local_scratch_dir", FLAG_STRING, F(output_dir), "", "prep: where train/ and validation/ "
     "shards go", 0, CMD_PREP},
    {"val_labels", NULL, FLAG_STRING, F(val_labels), "", "prep: validation synsets, one per line in file-name "
     "order (default <raw_data_dir>/imagenet_2012_validation_synset_labels.txt or synset_labels.txt)", 0, CMD_PREP},
    {"train_shards", NULL, FLAG_INT, F(train_shards), "1024", "prep: training shards", 0, CMD_PREP},
    {"val_shards", NULL, FLAG_INT, F(val_shards), "128", "prep: validation shards", 0, CMD_PREP},
    // model
    {"model", NULL, FLAG_STRING, F(model), "ViT-B_16", "preset ViT-{Ti,S,B,L,H}_{patch}", 0, SHAPE},
    {"hidden_size", NULL, FLAG_INT, F(hidden_size), "0", "override: token width", 0, SHAPE},
    {"num_layers", NULL, FLAG_INT, F(num_layers), "0", "override: encoder blocks", 0, SHAPE},
    {"num_heads", NULL, FLAG_INT, F(num_heads), "0", "override: attention heads", 0, SHAPE},
    {"mlp_dim", NULL, FLAG_INT, F(mlp_dim), "0", "override: MLP width", 0, SHAPE},
    {"patch_size", NULL, FLAG_INT, F(patch_size), "0", "override: patch side", 0, SHAPE},
    {"image_size", NULL, FLAG_INT, F(image_size), "0", "input side (default 384, or the data's own size)",
     0, SHAPE},
    {"channels", NULL, FLAG_INT, F(channels), "0", "input channels (default 3, or the data's)", 0, SHAPE},
    {"num_classes", NULL, FLAG_INT, F(num_classes), "0", "classes (default 1000, or the data's)", 0, SHAPE},
    {"representation_size", NULL, FLAG_INT, F(representation_size), "-1",
     "pre_logits width; 0 = none (default none when training from scratch)", 0, SHAPE},
    {"dropout", NULL, FLAG_FLOAT, F(dropout), "0.1", "dropout rate", 0, CMD_TRAIN},
    {"gelu", NULL, FLAG_STRING, F(gelu), "erf", "erf (exact, the recipe) | tanh (approximation)", 0, SHAPE},
    {"layernorm_eps", NULL, FLAG_FLOAT, F(layernorm_eps), "1e-6",
     "LayerNorm epsilon (1e-6 official and timm; 1e-12 for Hugging Face ViT weights)", 0, SHAPE},
    {"head_init", NULL, FLAG_STRING, F(head_init), "zeros", "zeros | glorot: init of a new head",
     0, RUN | CMD_EXPORT},
    // training
    {"optimizer", NULL, FLAG_STRING, F(optimizer), "sgd", "sgd | adam | adamw | rmsprop", 0, CMD_TRAIN},
    {"momentum", NULL, FLAG_FLOAT, F(momentum), "", "sgd momentum (default 0.9)", 0, CMD_TRAIN},
    {"beta1", NULL, FLAG_FLOAT, F(beta1), "", "adam/adamw beta1 (default 0.9)", 0, CMD_TRAIN},
    {"beta2", NULL, FLAG_FLOAT, F(beta2), "", "adam/adamw beta2 (default 0.999)", 0, CMD_TRAIN},
    {"epsilon", NULL, FLAG_FLOAT, F(epsilon), "",
     "adam/rmsprop 1e-2 (the recipe), adamw 1e-8", 0, CMD_TRAIN},
    {"weight_decay", NULL, FLAG_FLOAT, F(weight_decay), "",
     "decoupled decay on kernels (adamw default 0.01, others 0)", 0, CMD_TRAIN},
    {"clip_norm", NULL, FLAG_FLOAT, F(clip_norm), "1.0", "global-norm gradient clipping, 0 = off", 0, CMD_TRAIN},
    {"label_smoothing", NULL, FLAG_FLOAT, F(label_smoothing), "0", "label smoothing of the loss", 0, CMD_TRAIN},
    {"drop_path", NULL, FLAG_FLOAT, F(drop_path), "0",
     "stochastic depth: the last block's per-image drop rate of its residual branches, linear from 0 at the "
     "first block (timm's --drop-path)", 0, CMD_TRAIN},
    {"mixup", NULL, FLAG_FLOAT, F(mixup), "0", "mixup alpha: images and targets mixed with weights ~ Beta(a, a); "
     "0 = off (timm's --mixup)", 0, CMD_TRAIN},
    {"cutmix", NULL, FLAG_FLOAT, F(cutmix), "0", "CutMix alpha: a box of another image pasted, weights ~ Beta(a, a); "
     "0 = off (timm's --cutmix)", 0, CMD_TRAIN},
    {"cutmix_minmax", NULL, FLAG_STRING, F(cutmix_minmax), "",
     "LO,HI: CutMix box sides drawn as fractions of the image in [LO, HI) instead of from alpha (timm's "
     "--cutmix-minmax)", 0, CMD_TRAIN},
    {"mixup_prob", NULL, FLAG_FLOAT, F(mixup_prob), "1.0", "probability of mixing a batch, pair or image",
     0, CMD_TRAIN},
    {"mixup_switch_prob", NULL, FLAG_FLOAT, F(mixup_switch_prob), "0.5",
     "probability of CutMix instead of mixup when both are on", 0, CMD_TRAIN},
    {"mixup_mode", NULL, FLAG_STRING, F(mixup_mode), "batch",
     "batch | pair | elem: one mixing draw per batch, per pair (b, B-1-b) or per image", 0, CMD_TRAIN},
    {"dtype", "-d", FLAG_STRING, F(dtype), "fp32", "fp32 | bf16", 0, RUN},
    {"batch_size", NULL, FLAG_INT, F(batch_size), "32", "global batch of one micro-step", 0, DATA},
    {"grad_accum_steps", NULL, FLAG_INT, F(grad_accum_steps), "8", "micro-batches per optimizer update",
     0, CMD_TRAIN},
    {"epochs", NULL, FLAG_INT, F(epochs), "10", "epochs", 0, CMD_TRAIN},
    {"steps_per_epoch", NULL, FLAG_INT, F(steps_per_epoch), "0", "micro-steps per epoch (default data / batch)",
     0, CMD_TRAIN},
    {"validation_steps", NULL, FLAG_INT, F(validation_steps), "-1",
     "validation batches (default: the whole set; 0 = no validation)", 0, DATA},
    {"lr_sched", NULL, FLAG_STRING, F(lr_sched), "WarmupCosine", "linear | exp | steps | constant | WarmupCosine",
     0, CMD_TRAIN},
    {"initial_lr", NULL, FLAG_FLOAT, F(initial_lr), "6e-2", "peak / initial learning rate", 0, CMD_TRAIN},
    {"final_lr", NULL, FLAG_FLOAT, F(final_lr), "1e-5", "final learning rate (linear, exp)", 0, CMD_TRAIN},
    {"warmup_steps", NULL, FLAG_INT, F(warmup_steps), "4000", "WarmupCosine warm-up, in optimizer updates",
     0, CMD_TRAIN},
    {"seed", NULL, FLAG_LONG, F(seed), "-1", "seed of every random stream (default: from the clock)", 0, DATA},
    {"deterministic", NULL, FLAG_BOOL, F(deterministic), "0", "no augmentation, fixed order; needs --seed",
     0, CMD_TRAIN},
    {"device", NULL, FLAG_STRING, F(device), "cpu", "cpu | cuda | cuda:N", 0, RUN},
    {"allow_tf32", NULL, FLAG_BOOL, F(allow_tf32), "0", "cuda fp32: TF32 tensor-core matrix products", 0, RUN},
    {"threads", NULL, FLAG_INT, F(threads), "0", "CPU threads (default: all cores)", 0, RUN},
    {"json", NULL, FLAG_BOOL, F(json), "0", "print one JSON object with the results at the end",
     0, RUN | CMD_INFO},
    // weights, checkpoints, logs
    {"weights_path", NULL, FLAG_STRING, F(weights_path), "~/.keras", "folder holding weights/<model>_imagenet21k.npz",
     0, RUN},
    {"pretrained", NULL, FLAG_STRING, F(pretrained), "",
     "weights to start from: official .npz, or .safetensors in timm's or Hugging Face's naming", 0, RUN | CMD_EXPORT},
    {"from_scratch", NULL, FLAG_BOOL, F(from_scratch), "0",
     "random initialisation instead of the official weights", 0, RUN},
    {"resume_from_checkpoint_path", NULL, FLAG_STRING, F(resume_from_checkpoint_path), "",
     "continue a run exactly from a vitc checkpoint (.safetensors); an .npz loads weights only", 0, CMD_TRAIN},
    {"resume_from_epoch", NULL, FLAG_INT, F(resume_from_epoch), "0",
     "initial epoch for weight-only resume (the schedule continues from it)", 0, CMD_TRAIN},
    {"evaluate_checkpoint_path", NULL, FLAG_STRING, F(evaluate_checkpoint_path), "",
     "evaluate a checkpoint on the validation set and exit", 0, CMD_TRAIN},
    {"save_dir", NULL, FLAG_STRING, F(save_dir), "saves", "checkpoint folder; '' = no checkpoints", 0, CMD_TRAIN},
    {"run_name", NULL, FLAG_STRING, F(run_name), "",
     "the run's folder under --save_dir and --log_dir (default <model>-<YYYYmmdd-HHMMSS>; '.' = write into them "
     "directly); a resume continues in the checkpoint's run", 0, CMD_TRAIN},
    {"checkpoint_every_steps", NULL, FLAG_INT, F(checkpoint_every_steps), "0",
     "also write a checkpoint every N optimizer updates", 0, CMD_TRAIN},
    {"keep_checkpoints", NULL, FLAG_INT, F(keep_checkpoints), "0",
     "keep only the newest K epoch/step checkpoints of the run (0 = all)", 0, CMD_TRAIN},
    {"checkpoint", NULL, FLAG_STRING, F(checkpoint), "", "evaluate/predict/export: a vitc checkpoint",
     0, CMD_EVALUATE | CMD_PREDICT | CMD_EXPORT},
    {"out", NULL, FLAG_STRING, F(out), "", "export: the file (a folder for --format hf) to write", 0, CMD_EXPORT},
    {"format", NULL, FLAG_STRING, F(format), "",
     "export: npz | timm | hf | onnx (default from --out: .npz, .safetensors timm, .onnx)", 0, CMD_EXPORT},
    {"labels", NULL, FLAG_STRING, F(labels), "", "predict: class names, one per line", 0, CMD_PREDICT},
    {"save_inputs", NULL, FLAG_STRING, F(save_inputs), "",
     "predict: write each image's model input (after preprocessing) as DIR/<name>.png", 0, CMD_PREDICT},
    {"log_dir", NULL, FLAG_STRING, F(log_dir), "logs", "TensorBoard folder", 0, CMD_TRAIN},
    {"save_summary_steps", NULL, FLAG_INT, F(save_summary_steps), "100",
     "TensorBoard training scalars every N optimizer updates (0 = per epoch only); --log_dir '' = no logs",
     0, CMD_TRAIN},
    {"profile", NULL, FLAG_STRING, F(profile), "0",
     "N or A,B: profile micro-step N or steps A..B (Chrome trace in <log_dir>/profile, op table at the end)",
     0, CMD_TRAIN},
    {"distributed", NULL, FLAG_BOOL, F(distributed), "0",
     "data-parallel over MPI ranks (mpirun -np N vit train --distributed); --batch_size is global", 0, CMD_TRAIN},
    {"zero", NULL, FLAG_INT, F(zero), "0",
     "with --distributed: 1 = each rank keeps the optimizer state (Adam m/v, momentum) of 1/N of the parameters "
     "(ZeRO stage 1; checkpoints stay full); 0 = every rank keeps all of it", 0, CMD_TRAIN},
    {"recompute", NULL, FLAG_BOOL, F(recompute), "0",
     "activation checkpointing: keep only each block's input, recompute the block in the backward pass "
     "(~4.6x less activation memory, ~23% more step time)", 0, CMD_TRAIN},
    {"skip_nonfinite", NULL, FLAG_BOOL, F(skip_nonfinite), "0",
     "skip updates with a non-finite loss or gradient norm (counted) instead of stopping", 0, CMD_TRAIN},
    {"model_ema", NULL, FLAG_BOOL, F(model_ema), "0",
     "keep an exponential moving average of the weights (timm's ModelEmaV3), validated each epoch and saved in "
     "every checkpoint", 0, CMD_TRAIN},
    {"model_ema_decay", NULL, FLAG_STRING, F(model_ema_decay), "0.9998",
     "decay of --model_ema, in (0, 1): ema = decay * ema + (1 - decay) * weights after each update", 0, CMD_TRAIN},
    {"model_ema_warmup", NULL, FLAG_BOOL, F(model_ema_warmup), "0",
     "--model_ema warm-up: decay min(D, 1 - (1 + n)^(-2/3)) at update n + 1 (timm's)", 0, CMD_TRAIN},
    {"layer_decay", NULL, FLAG_STRING, F(layer_decay), "",
     "layer-wise learning-rate decay F in (0, 1]: a layer's rate times F^(L + 1 - layer) (timm's; default off)",
     0, CMD_TRAIN},
    {"ema", NULL, FLAG_BOOL, F(ema), "0",
     "evaluate/predict/export the checkpoint's moving average of the weights (a run with --model_ema)",
     0, CMD_EVALUATE | CMD_PREDICT | CMD_EXPORT},
    {"base_tf_server_port", NULL, FLAG_INT, F(base_tf_server_port), "7850", "TensorFlow-only; ignored",
     1, CMD_TRAIN},
    {"recipe_cache", NULL, FLAG_STRING, F(recipe_cache), "", "Habana-only; ignored", 1, CMD_TRAIN},
    {"dump_config", NULL, FLAG_BOOL, F(dump_config), "0", "Habana-only; ignored", 1, CMD_TRAIN},
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

// Edit distance between a[0..n) and b, with '-' and '_' the same letter (--batch-size).
static int edit_distance(const char *a, size_t n, const char *b) {
    size_t m = strlen(b);
    if (n > 63 || m > 63) return 64;
    int row[64];
    for (size_t j = 0; j <= m; j++) row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            char x = a[i - 1] == '-' ? '_' : a[i - 1], y = b[j - 1] == '-' ? '_' : b[j - 1];
            int best = diag + (x != y);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = row[j];
            row[j] = best;
        }
    }
    return row[m];
}

// An unknown --name: the nearest known flag as a suggestion when it is close (a typo, a
// dash for an underscore), else a pointer to --help.
static int unknown_flag(const char *name, size_t len) {
    const Flag *best = NULL;
    int best_d = 64;
    for (int i = 0; i < g_flag_count; i++) {
        int d = edit_distance(name, len, g_flags[i].name);
        if (d < best_d) best_d = d, best = &g_flags[i];
    }
    // Close: a third of the name's letters at most (and at least one edit allowed).
    int limit = (int)len / 3 > 1 ? (int)len / 3 : 1;
    if (best && best_d <= limit)
        return vit_fail("unknown flag --%.*s: did you mean --%s? (see --help)", (int)len, name, best->name);
    return vit_fail("unknown flag --%.*s (see --help)", (int)len, name);
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
            if (!f) return unknown_flag(arg + 2, len);
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
        p->set[f - g_flags] = FLAG_SET_BY_USER;
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

int flags_index(const char *name) {
    const Flag *f = find_flag(name, strlen(name));
    return f ? (int)(f - g_flags) : -1;
}

int flags_on_command_line(const ParsedOptions *p, const char *name) {
    const Flag *f = find_flag(name, strlen(name));
    return f && p->set[f - g_flags] == FLAG_SET_BY_USER;
}

int flags_set_text(ParsedOptions *p, int i, const char *text) {
    char shown[96];
    snprintf(shown, sizeof shown, "--%s", g_flags[i].name);
    return set_value(&p->o, &g_flags[i], text, shown);
}

// Both texts parsed as flag i's type and printed back, so "1e-3" and "0.001" compare equal.
int flags_same_text(int i, const char *a, const char *b) {
    ParsedOptions x, y;
    memset(&x, 0, sizeof x), memset(&y, 0, sizeof y);
    const Flag *f = &g_flags[i];
    const char *da = *a || f->type == FLAG_STRING ? a : "0", *db = *b || f->type == FLAG_STRING ? b : "0";
    if (set_value(&x.o, f, da, f->name) || set_value(&y.o, f, db, f->name)) return !strcmp(a, b);
    char ta[1100], tb[1100];
    flags_value_text(&x, i, ta, sizeof ta);
    flags_value_text(&y, i, tb, sizeof tb);
    return !strcmp(ta, tb);
}

// The CMD_* bit of a command name (its first word), 0 for none.
static unsigned command_bit(const char *command) {
    static const struct { const char *name; unsigned bit; } commands[] = {
        {"train", CMD_TRAIN},     {"evaluate", CMD_EVALUATE}, {"predict", CMD_PREDICT},
        {"export", CMD_EXPORT},   {"prep", CMD_PREP},         {"info", CMD_INFO},
    };
    size_t len = strcspn(command, " ");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strlen(commands[i].name) == len && !strncmp(commands[i].name, command, len)) return commands[i].bit;
    return 0;
}

void flags_print_help(const char *command, const char *summary) {
    unsigned bit = command_bit(command);
    printf("usage: vit %s [flags]\n%s\n\nflags:\n", command, summary);
    for (int i = 0; i < g_flag_count; i++) {
        const Flag *f = &g_flags[i];
        if (bit && !(f->commands & bit)) continue;
        char left[96];
        const char *kind = f->type == FLAG_BOOL ? "" : f->type == FLAG_STRING ? " S" : f->type == FLAG_FLOAT ? " X" : " N";
        snprintf(left, sizeof left, "--%s%s%s%s", f->name, kind, f->alias ? ", " : "", f->alias ? f->alias : "");
        printf("  %-34s %s", left, f->help);
        if (*f->def && strcmp(f->def, "0") && strcmp(f->def, "-1")) printf(" [%s]", f->def);
        printf("\n");
    }
}
