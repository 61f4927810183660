// Learning-rate schedules of the recipe (Habana's "Vision Transformer for TensorFlow": its
// --lr_sched linear, exp, steps, constant and WarmupCosine), with its formulas.
#pragma once

typedef enum { SCHED_LINEAR, SCHED_EXP, SCHED_STEPS, SCHED_CONSTANT, SCHED_WARMUP_COSINE } LrScheduleKind;

typedef struct {
    LrScheduleKind kind;
    double initial_lr, final_lr;
    long warmup_steps;      // WarmupCosine, in optimizer updates
    int epochs;             // E
    long updates_per_epoch; // optimizer updates per epoch (WarmupCosine total = epochs * this)
} Schedule;

// "linear", "exp", "steps", "constant", "WarmupCosine" (case-insensitive). VIT_ERR on others.
int schedule_parse(const char *name, LrScheduleKind *out);
const char *schedule_name(LrScheduleKind k);
// Learning rate for the update with 0-based global index `step` that happens in 0-based epoch `epoch`.
double schedule_lr(const Schedule *s, int epoch, long step);
