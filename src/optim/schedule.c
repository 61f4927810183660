// Learning-rate schedules. The formulas are taken literally from the recipe; the only
// liberties are guards that keep degenerate inputs (E == 1, zero warm-up, zero initial rate)
// from dividing by zero.
#include "optim/schedule.h"

#include <math.h>
#include <stddef.h>

#include "util/status.h"

static const char *const k_names[] = {
    [SCHED_LINEAR] = "linear",
    [SCHED_EXP] = "exp",
    [SCHED_STEPS] = "steps",
    [SCHED_CONSTANT] = "constant",
    [SCHED_WARMUP_COSINE] = "WarmupCosine",
};
enum { NUM_SCHEDULES = (int)(sizeof k_names / sizeof k_names[0]) };

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

// ASCII-only case folding: locale-dependent strcasecmp could accept surprising spellings.
static int same_name(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (lower((unsigned char)*a) != lower((unsigned char)*b)) return 0;
    return *a == *b;
}

int schedule_parse(const char *name, LrScheduleKind *out) {
    if (name)
        for (int k = 0; k < NUM_SCHEDULES; k++)
            if (same_name(name, k_names[k])) {
                if (out) *out = (LrScheduleKind)k;
                return VIT_OK;
            }
    return vit_fail("unknown learning-rate schedule '%s' (valid: linear, exp, steps, constant, "
                    "WarmupCosine)",
                    name ? name : "(null)");
}

const char *schedule_name(LrScheduleKind k) {
    return (int)k >= 0 && (int)k < NUM_SCHEDULES ? k_names[k] : "?";
}

double schedule_lr(const Schedule *s, int epoch, long step) {
    if (!s) return 0.0;
    const double lr0 = s->initial_lr, lr1 = s->final_lr;
    if (epoch < 0) epoch = 0;  // negative indices are caller bugs; treat as the start
    if (step < 0) step = 0;

    if (s->kind == SCHED_WARMUP_COSINE) {
        const long warm = s->warmup_steps > 0 ? s->warmup_steps : 0;
        if (step < warm) return lr0 * (double)step / (double)warm;
        const long total = (long)(s->epochs > 0 ? s->epochs : 0) * s->updates_per_epoch;
        const long span = total - warm > 1 ? total - warm : 1;
        const double pi = 3.14159265358979323846;
        const double c = 0.5 * (1.0 + cos(pi * (double)(step - warm) / (double)span));
        return lr0 * (c > 0.0 ? c : 0.0);
    }

    // Per-epoch schedules: a single epoch has nothing to anneal towards.
    const int E = s->epochs;
    switch (s->kind) {
    case SCHED_LINEAR: {
        if (E <= 1) return lr0;
        double frac = (double)(E - epoch - 1) / (double)(E - 1);
        return lr1 + (lr0 - lr1) * (frac > 0.0 ? frac : 0.0);
    }
    case SCHED_EXP:
        if (E <= 1 || lr0 == 0.0) return lr0;  // 0 * anything: avoid 0/0 in the ratio
        return lr0 * pow(lr1 / lr0, (double)epoch / (double)(E - 1));
    case SCHED_STEPS:
        if (E <= 1) return lr0;
        return lr0 * pow(0.1, (double)(epoch < 80 ? epoch / 30 : (epoch + 10) / 30));
    case SCHED_CONSTANT:
    default:
        return lr0;
    }
}
