// Optimizer configuration and the recipe's defaults per kind (the update itself:
// train/update.h, which walks the parameter table; the arithmetic: the backends).
#pragma once
#include "optim/step.h"

typedef struct {
    OptimizerKind kind;
    float momentum, beta1, beta2, rho, epsilon, weight_decay;
    float clip_norm;  // 0 = off
    double layer_decay;  // --layer_decay F in (0, 1]: layer-wise lr scales F^(top - layer); 0 = off
} OptimConfig;

// "sgd" | "adam" | "adamw" | "rmsprop"; fills the recipe's hyperparameters for that kind.
int optim_config_default(OptimConfig *o, const char *name);
const char *optim_name(OptimizerKind k);
// Whether the optimizer needs the first (m) / second (v) moment slot.
int optim_uses_m(OptimizerKind k);
int optim_uses_v(OptimizerKind k);
