// Every command-line setting of `vit`, filled from the flag table in flags.c.
#pragma once

typedef struct {
    // data
    char dataset_dir[1024];
    char data_format[16];
    char train_subset[256], val_subset[256];
    int synthetic_data;
    int data_workers, prefetch_batches, skip_corrupt;
    float rotate_deg;
    char aa[128];                // timm RandAugment policy ("" = off)
    float reprob;                // random erasing probability
    char remode[16];
    int recount;
    char cache_dir[1024];
    int eval_fast_decode;
    char save_inputs[1024];
    // prep
    char raw_data_dir[1024], output_dir[1024], val_labels[1024];
    int train_shards, val_shards;
    // model
    char model[64];
    int hidden_size, num_layers, num_heads, mlp_dim, patch_size, image_size, channels, num_classes;
    int representation_size;
    float dropout, layernorm_eps;
    char gelu[8];
    char head_init[16];
    // training
    char optimizer[16];
    float momentum, beta1, beta2, epsilon, weight_decay, clip_norm, label_smoothing;
    // regularisation, as timm's train.py: stochastic depth, Mixup/CutMix
    float drop_path, mixup, cutmix, mixup_prob, mixup_switch_prob;
    char mixup_mode[16], cutmix_minmax[64];
    char dtype[16];
    int batch_size, grad_accum_steps, epochs, steps_per_epoch, validation_steps;
    char lr_sched[32];
    float initial_lr, final_lr;
    int warmup_steps;
    long long seed;
    int deterministic;
    char device[16];
    int threads;
    int json;
    // weights, checkpoints, logs
    char weights_path[1024], pretrained[1024];
    int from_scratch;
    char resume_from_checkpoint_path[1024], evaluate_checkpoint_path[1024];
    int resume_from_epoch;
    char save_dir[1024], log_dir[1024];
    char run_name[256];          // the run's folder under save_dir and log_dir (".": none)
    int checkpoint_every_steps, keep_checkpoints;
    char checkpoint[1024], out[1024], labels[1024], format[16];
    int save_summary_steps;
    char profile[64];
    int distributed;
    int zero;
    int skip_nonfinite;
    // timm's weight EMA and layer-wise lr decay (the numbers as text: parsed to doubles, as timm's)
    int model_ema, model_ema_warmup, ema;
    char model_ema_decay[32], layer_decay[32];
    int allow_tf32;
    int recompute;
    int base_tf_server_port;
    char recipe_cache[1024];
    int dump_config;
} Options;
