#include "common.h"
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <sys/stat.h>
#include "model_source.h"
#include "util/status.h"
#ifdef VIT_CUDA
#include "backend/cuda_backend.h"
#include "util/fs.h"
#endif

int cli_check_supported(const ParsedOptions *p) {
    const Options *o = &p->o;
    int bf16 = !strcasecmp(o->dtype, "bf16") || !strcasecmp(o->dtype, "bfloat16");
    if (!bf16 && strcasecmp(o->dtype, "fp32") && strcasecmp(o->dtype, "float32"))
        return vit_fail("--dtype %s: expected fp32 or bf16", o->dtype);
    if (!strcasecmp(o->device, "hpu"))
        return vit_fail("--device HPU: Habana accelerators are not supported; use --device cpu (or cuda)");
    int cuda = cli_device_is_cuda(o->device);
    if (cuda < 0) return vit_fail("--device %s: expected cpu, cuda or cuda:N", o->device);
#ifndef VIT_CUDA
    if (cuda) return vit_fail("--device %s: this vit was built without CUDA (rebuild with make CUDA=1)", o->device);
#endif
    if (o->allow_tf32 && !cuda) return vit_fail("--allow_tf32: TF32 exists only on NVIDIA GPUs (--device cuda)");
#ifndef VIT_NCCL
    if (cuda && o->distributed)
        return vit_fail("--distributed with --device cuda: this vit was built without NCCL (multi-GPU needs CUDA, "
                        "MPI and NCCL: put nccl.h in CUDA's include folder or /usr/include and rebuild with make; "
                        "make NCCL=1 insists), or use one GPU or --device cpu");
#endif
    if (o->threads < 0) return vit_fail("--threads %d: must be >= 0", o->threads);
    return VIT_OK;
}

int cli_device_is_cuda(const char *device) {
    if (!strcasecmp(device, "cpu")) return 0;
    if (!strcasecmp(device, "cuda") || !strcasecmp(device, "gpu")) return 1;
    if (!strncasecmp(device, "cuda:", 5)) {
        char *end;
        long n = strtol(device + 5, &end, 10);
        return device[5] && !*end && n >= 0 && n < 1024 ? 1 : -1;
    }
    return -1;
}

Backend *cli_create_backend(const ParsedOptions *p, int threads) {
    const Options *o = &p->o;
    if (!cli_device_is_cuda(o->device)) {
        Backend *be = backend_cpu_create(threads);
        if (be && (!strcasecmp(o->dtype, "bf16") || !strcasecmp(o->dtype, "bfloat16"))) backend_cpu_set_bf16(be, 1);
        return be;
    }
#ifdef VIT_CUDA
    // cuda:N picks the device; under a launcher each rank takes the GPU of its local rank
    // (Open MPI's mpirun, MPICH's Hydra, Slurm's srun).
    int device = 0;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!local) local = getenv("MPI_LOCALRANKID");
    if (!local) local = getenv("SLURM_LOCALID");
    if (!strncasecmp(o->device, "cuda:", 5)) device = atoi(o->device + 5);
    else if (local) device = atoi(local);
    int bf16 = !strcasecmp(o->dtype, "bf16") || !strcasecmp(o->dtype, "bfloat16");
    CudaPrecision prec = bf16 ? CUDA_BF16 : o->allow_tf32 ? CUDA_TF32 : CUDA_FP32;
    return backend_cuda_create(device, prec);  // its errors already name --device cuda
#else
    vit_fail("--device %s: this vit was built without CUDA (rebuild with make CUDA=1)", o->device);
    return NULL;
#endif
}

int cli_is_bf16(const ParsedOptions *p) {
    return !strcasecmp(p->o.dtype, "bf16") || !strcasecmp(p->o.dtype, "bfloat16");
}

const char *cli_precision_name(const ParsedOptions *p) {
    const Options *o = &p->o;
    int bf16 = !strcasecmp(o->dtype, "bf16") || !strcasecmp(o->dtype, "bfloat16");
    if (!cli_device_is_cuda(o->device))
        return bf16 ? "bf16 matrix products (operands rounded to bf16, fp32 sums; kernels: the backend line)" : "fp32";
    if (bf16) return "bf16 matrix products (fp32 accumulation)";
    return o->allow_tf32 ? "fp32, TF32 matrix products" : "fp32";
}

int cli_model_config(const ParsedOptions *p, const Dataset *data, ViTConfig *c) {
    const Options *o = &p->o;
    if (config_from_preset(c, o->model)) return VIT_ERR;
    // Overrides: only flags the user gave replace the preset.
    struct { const char *flag; int value; int *field; } ov[] = {
        {"hidden_size", o->hidden_size, &c->hidden}, {"num_layers", o->num_layers, &c->layers},
        {"num_heads", o->num_heads, &c->heads},      {"mlp_dim", o->mlp_dim, &c->mlp},
        {"patch_size", o->patch_size, &c->patch},    {"image_size", o->image_size, &c->image},
        {"channels", o->channels, &c->channels},     {"num_classes", o->num_classes, &c->classes},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++) {
        if (!flags_given(p, ov[i].flag)) continue;
        if (ov[i].value < 1) return vit_fail("--%s %d: must be positive", ov[i].flag, ov[i].value);
        *ov[i].field = ov[i].value;
    }
    if (data && data->kind == DATA_FOLDER && !flags_given(p, "num_classes")) c->classes = data->classes;
    if (data && data->kind == DATA_FOLDER && c->classes < data->classes)
        return vit_fail("--num_classes %d: the data has %d class folders", c->classes, data->classes);
    // Shards written by `vit prep` name their classes in classes.txt.
    if (data && data->kind == DATA_TFRECORD && data->n_class_names) {
        if (!flags_given(p, "num_classes")) c->classes = data->n_class_names;
        if (c->classes < data->n_class_names)
            return vit_fail("--num_classes %d: the data's classes.txt names %d classes", c->classes,
                            data->n_class_names);
    }
    if (data && data->kind == DATA_IDX) {
        if (!flags_given(p, "image_size")) c->image = data->size;
        if (!flags_given(p, "channels")) c->channels = data->channels;
        if (!flags_given(p, "num_classes")) c->classes = data->classes;
        if (c->image != data->size)
            return vit_fail("--image_size %d: the %s images are %dx%d (IDX data is not resized)", c->image, data->name,
                            data->size, data->size);
        if (c->channels != data->channels)
            return vit_fail("--channels %d: the %s images have %d channel(s)", c->channels, data->name, data->channels);
        if (c->classes < data->classes)
            return vit_fail("--num_classes %d: the %s labels go up to %d", c->classes, data->name, data->classes - 1);
    }
    c->representation = o->representation_size < 0 ? 0 : o->representation_size;
    if (flags_given(p, "representation_size") && o->representation_size < 0)
        return vit_fail("--representation_size %d: must be >= 0", o->representation_size);
    c->dropout = o->dropout;
    c->layernorm_eps = o->layernorm_eps;
    if (!(o->layernorm_eps > 0 && o->layernorm_eps < 1))
        return vit_fail("--layernorm_eps %g: must be in (0, 1)", o->layernorm_eps);
    if (!strcasecmp(o->gelu, "erf"))
        c->gelu_tanh = 0;
    else if (!strcasecmp(o->gelu, "tanh"))
        c->gelu_tanh = 1;
    else
        return vit_fail("--gelu %s: expected erf or tanh", o->gelu);
    return config_validate(c);
}

void cli_expand_home(const char *in, char *out, size_t n) {
    const char *home = getenv("HOME");
    if (in[0] == '~' && (in[1] == '/' || in[1] == 0) && home)
        snprintf(out, n, "%s%s", home, in + 1);
    else
        snprintf(out, n, "%s", in);
}

int cli_weights_file(const ParsedOptions *p, char *out, size_t n) {
    const Options *o = &p->o;
    struct stat st;
    if (*o->pretrained) {
        cli_expand_home(o->pretrained, out, n);
        if (stat(out, &st) != 0) return vit_fail("--pretrained %s: no such file", o->pretrained);
        return VIT_OK;
    }
    char dir[1024];
    cli_expand_home(o->weights_path, dir, sizeof dir);
    snprintf(out, n, "%s/weights/%s_imagenet21k.npz", dir, o->model);
    if (stat(out, &st) != 0)
        return vit_fail("no official weights at %s (--weights_path %s); put %s_imagenet21k.npz there, or pass "
                        "--pretrained FILE, or --from_scratch to train from random initialisation",
                        out, o->weights_path, o->model);
    return VIT_OK;
}

int cli_check_model_given(const ParsedOptions *p, const char *what) {
    const Options *o = &p->o;
    char path[2200];
    if (*o->checkpoint || *o->pretrained || o->from_scratch || cli_weights_file(p, path, sizeof path) == VIT_OK)
        return VIT_OK;
    return vit_fail("no model to %s: pass --checkpoint FILE (a checkpoint of vit train) or --pretrained FILE "
                    "(official .npz, timm or Hugging Face weights); no default weights at %s", what, path);
}

int cli_open_data(const ParsedOptions *p, const ViTConfig *c, Dataset *train, Dataset *val) {
    const Options *o = &p->o;
    Dataset scratch;
    if (!train) train = &scratch;
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    if (o->synthetic_data) {
        if (!c) return VIT_OK;  // sized once the model is known
        long B = o->batch_size, n_train = (long)(o->steps_per_epoch ? o->steps_per_epoch : 10) * B;
        long n_val = (long)(o->validation_steps > 0 ? o->validation_steps : 2) * B;
        if (n_train > 2000000000L || n_val > 2000000000L)
            return vit_fail("--steps_per_epoch x --batch_size: too many synthetic images");
        uint64_t seed = (uint64_t)(o->seed >= 0 ? o->seed : 0);
        if (train != &scratch) dataset_synthetic(train, "synthetic", (int)n_train, c->image, c->channels, c->classes, seed);
        dataset_synthetic(val, "synthetic-val", (int)n_val, c->image, c->channels, c->classes, seed ^ 0x5eedull);
        return VIT_OK;
    }
    if (strcasecmp(o->data_format, "auto") && strcasecmp(o->data_format, "idx") &&
        strcasecmp(o->data_format, "tfrecord") && strcasecmp(o->data_format, "folder"))
        return vit_fail("--data_format %s: expected auto, idx, tfrecord or folder", o->data_format);
    if (!path_is_dir(o->dataset_dir))
        return vit_fail("--dataset_dir %s: no such folder", o->dataset_dir);
    // auto: IDX files, else train/ + val/ class folders (train/ holding folders is enough to
    // tell: a missing val/ is then named as such), else TFRecord shards.
    const char *fmt = o->data_format;
    char probe[2100];
    snprintf(probe, sizeof probe, "%s/train", o->dataset_dir);
    int is_idx = idx_dir_looks_like_idx(o->dataset_dir);
    int has_train_dir = path_is_dir(probe);
    snprintf(probe, sizeof probe, "%s/val", o->dataset_dir);
    int has_val_dir = path_is_dir(probe);
    int folders = (has_train_dir && has_val_dir) || dataset_has_class_folders(o->dataset_dir, "train");
    int rc;
    if (!strcasecmp(fmt, "idx") || (!strcasecmp(fmt, "auto") && is_idx)) {
        rc = dataset_open_idx(train, val, o->dataset_dir);
    } else if (!strcasecmp(fmt, "folder") || (!strcasecmp(fmt, "auto") && folders)) {
        // --validation_steps 0 trains without validation: val/ may be absent.
        rc = !has_val_dir && o->validation_steps == 0 && train != &scratch
                 ? dataset_open_folder_train_only(train, val, o->dataset_dir)
                 : dataset_open_folder(train, val, o->dataset_dir);
        size_t n = strlen(o->dataset_dir);
        if (rc != VIT_OK && !strncmp(vit_error(), o->dataset_dir, n) && !strncmp(vit_error() + n, ": found", 7)) {
            char why[2400];
            snprintf(why, sizeof why, "%s", vit_error());
            rc = vit_fail("--dataset_dir %s", why);
        }
    } else {
        rc = train == &scratch ? VIT_OK
                               : dataset_open_tfrecord(train, "train", o->dataset_dir, o->train_subset, o->cache_dir);
        if (rc == VIT_OK)
            rc = dataset_open_tfrecord(val, "validation", o->dataset_dir, o->val_subset, o->cache_dir);
        if (rc != VIT_OK && !strcasecmp(fmt, "auto") && strstr(vit_error(), "no TFRecord shards match")) {
            char why[1200], seen[1024];
            snprintf(why, sizeof why, "%s", vit_error());
            dataset_describe_folder(o->dataset_dir, 6, seen, sizeof seen);
            rc = vit_fail("--dataset_dir %s: found %s; expected IDX files, train/<class>/ and val/<class>/ image "
                          "folders, or TFRecord shards (%s; --train_subset and --val_subset set their prefixes)",
                          o->dataset_dir, seen, strstr(why, "no TFRecord"));
        }
        if (rc == VIT_OK) rc = dataset_read_class_names(train == &scratch ? NULL : train, val, o->dataset_dir);
    }
    if (train == &scratch) dataset_free(&scratch);
    if (rc == VIT_OK) {
        train->skip_corrupt = val->skip_corrupt = o->skip_corrupt;
        train->seed = val->seed = (uint64_t)(o->seed >= 0 ? o->seed : 0);
    }
    return rc;
}

void cli_data_output(const ParsedOptions *p, const ViTConfig *c, Dataset *train, Dataset *val) {
    AugmentConfig aug;
    augment_defaults(&aug);
    aug.rotate_deg = p->o.rotate_deg;
    // Checked by `vit train` before any work (cmd_train.c's check_ranges), so it cannot fail here.
    if (augment_set_timm(&aug, p->o.aa, p->o.reprob, p->o.remode, p->o.recount)) randaug_defaults(&aug.ra);
    // --deterministic: no augmentation, so the same seed gives the same batches.
    if (train) dataset_set_output(train, c->image, c->channels, !p->o.deterministic, &aug);
    if (val) dataset_set_output(val, c->image, c->channels, 0, NULL);
    // Training decodes DCT-scaled even with --deterministic; evaluation full size unless asked.
    if (train) train->fast_decode = 1;
    if (val) val->fast_decode = p->o.eval_fast_decode;
    Dataset *sets[2] = {train, val};
    for (int i = 0; i < 2; i++)
        if (sets[i] && sets[i]->kind == DATA_TFRECORD) sets[i]->classes = c->classes;  // labels checked against it
}

int cli_load_model(const ParsedOptions *p, const Dataset *data, Backend *be, int batch, ViT *m, FILE *report) {
    return cli_load_model_named(p, data, be, batch, m, report, NULL);
}

int cli_load_model_named(const ParsedOptions *p, const Dataset *data, Backend *be, int batch, ViT *m, FILE *report,
                         char ***class_names) {
    ModelSource src;
    uint64_t seed = (uint64_t)(p->o.seed >= 0 ? p->o.seed : 0);
    int rc = model_source_open(&src, p, NULL, data);
    if (rc == VIT_OK) rc = vit_create(m, &src.cfg, be, batch, 0);
    if (rc == VIT_OK) rc = model_source_load(&src, m, seed, NULL, NULL, report);
    if (rc == VIT_OK && class_names) *class_names = model_source_class_names(&src, m->cfg.classes);
    model_source_close(&src);
    return rc;
}

int cli_checkpoint_data_defaults(ParsedOptions *p, const StFile *st, FILE *notes) {
    // The data a checkpoint's run trained on, for evaluate: only where the user gave no
    // data flags of their own (synthetic data, or data named on the command line, win).
    static const char *const names[] = {"dataset_dir", "data_format", "val_subset", "cache_dir"};
    if (flags_given(p, "synthetic_data") || flags_given(p, "dataset_dir")) return VIT_OK;
    const char *dir = st_meta(st, "flags.dataset_dir");
    const char *synthetic = st_meta(st, "flags.synthetic_data");
    if (!dir || !*dir || (synthetic && !strcmp(synthetic, "true"))) return VIT_OK;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char key[64];
        snprintf(key, sizeof key, "flags.%s", names[i]);
        const char *value = st_meta(st, key);
        if (value && !flags_given(p, names[i]) && flags_set_text(p, flags_index(names[i]), value)) return VIT_ERR;
    }
    if (notes) fprintf(notes, "data: %s (the checkpoint's --dataset_dir)\n", p->o.dataset_dir);
    return VIT_OK;
}
