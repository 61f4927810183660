#include "optimizer.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util/status.h"

int optim_config_default(OptimConfig *o, const char *name) {
    memset(o, 0, sizeof *o);
    o->clip_norm = 1.0f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    if (!strcasecmp(name, "sgd")) {
        o->kind = OPT_SGD;
        o->momentum = 0.9f;
    } else if (!strcasecmp(name, "adam")) {
        o->kind = OPT_ADAM;
        o->epsilon = 1e-2f;  // the recipe's Keras setting
    } else if (!strcasecmp(name, "adamw")) {
        o->kind = OPT_ADAMW;
        o->epsilon = 1e-8f;
        o->weight_decay = 0.01f;
    } else if (!strcasecmp(name, "rmsprop")) {
        o->kind = OPT_RMSPROP;
        o->rho = 0.9f;
        o->epsilon = 1e-2f;
    } else {
        return vit_fail("--optimizer %s: expected sgd, adam, adamw or rmsprop", name);
    }
    return VIT_OK;
}

const char *optim_name(OptimizerKind k) {
    static const char *names[] = {"sgd", "adam", "adamw", "rmsprop"};
    return names[k];
}

int optim_uses_m(OptimizerKind k) { return k != OPT_RMSPROP; }
int optim_uses_v(OptimizerKind k) { return k != OPT_SGD; }
