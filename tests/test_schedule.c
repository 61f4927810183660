// Learning-rate schedules against the recipe's formulas, recomputed here in a different
// shape (hand-expanded constants, explicit cases) so a shared typo cannot pass both.
#include <math.h>
#include <string.h>

#include "check.h"
#include "optim/schedule.h"
#include "util/status.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static int close_to(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(1.0, fabs(b)); }

static Schedule mk(LrScheduleKind k, double lr0, double lr1, int E) {
    Schedule s = {.kind = k, .initial_lr = lr0, .final_lr = lr1, .epochs = E,
                  .warmup_steps = 0, .updates_per_epoch = 100};
    return s;
}

static void test_linear(void) {
    Schedule s = mk(SCHED_LINEAR, 1e-3, 1e-5, 11);  // E-1 = 10: fractions are tenths
    for (int e = 0; e < 11; e++) {
        double frac = (10 - e) / 10.0 > 0 ? (10 - e) / 10.0 : 0;  // (E-e-1)/(E-1)
        double want = 1e-5 + (1e-3 - 1e-5) * frac;
        CHECK(close_to(schedule_lr(&s, e, 0), want), "linear e=%d: %g vs %g", e,
              schedule_lr(&s, e, 0), want);
    }
    CHECK(close_to(schedule_lr(&s, 0, 0), 1e-3), "linear starts at initial");
    CHECK(close_to(schedule_lr(&s, 10, 0), 1e-5), "linear ends at final");
    CHECK(close_to(schedule_lr(&s, 5, 0), 1e-5 + 0.5 * (1e-3 - 1e-5)), "linear midpoint");
    // Past the last epoch the max(...,0) clamps at the final rate.
    CHECK(close_to(schedule_lr(&s, 12, 0), 1e-5), "linear clamps past the end");
    // The step index is irrelevant for per-epoch schedules.
    CHECK(schedule_lr(&s, 3, 0) == schedule_lr(&s, 3, 12345), "linear ignores step");
    Schedule one = mk(SCHED_LINEAR, 0.5, 0.1, 1);
    CHECK(schedule_lr(&one, 0, 0) == 0.5, "linear E=1 -> initial");
    Schedule two = mk(SCHED_LINEAR, 0.5, 0.1, 2);
    CHECK(close_to(schedule_lr(&two, 0, 0), 0.5) && close_to(schedule_lr(&two, 1, 0), 0.1),
          "linear E=2 hits both ends");
}

static void test_exp(void) {
    Schedule s = mk(SCHED_EXP, 1e-2, 1e-4, 3);  // ratio 1e-2 over 2 intervals: x0.1 each
    CHECK(close_to(schedule_lr(&s, 0, 0), 1e-2), "exp e=0: %g", schedule_lr(&s, 0, 0));
    CHECK(close_to(schedule_lr(&s, 1, 0), 1e-3), "exp e=1: %g", schedule_lr(&s, 1, 0));
    CHECK(close_to(schedule_lr(&s, 2, 0), 1e-4), "exp e=2: %g", schedule_lr(&s, 2, 0));
    Schedule t = mk(SCHED_EXP, 3e-3, 3e-5, 101);
    for (int e = 0; e <= 100; e += 25) {
        double want = 3e-3 * exp(log(1e-2) * e / 100.0);
        CHECK(close_to(schedule_lr(&t, e, 0), want), "exp e=%d: %g vs %g", e,
              schedule_lr(&t, e, 0), want);
    }
    Schedule one = mk(SCHED_EXP, 0.5, 0.1, 1);
    CHECK(schedule_lr(&one, 0, 0) == 0.5, "exp E=1 -> initial");
    Schedule zero = mk(SCHED_EXP, 0.0, 0.1, 5);
    CHECK(schedule_lr(&zero, 2, 0) == 0.0, "exp with initial 0 is 0, not NaN");
}

static void test_steps(void) {
    Schedule s = mk(SCHED_STEPS, 1.0, 0.0, 120);
    // Expected exponents of 0.1 written out by hand from the recipe.
    const struct { int e; int k; } pts[] = {
        {0, 0},  {1, 0},  {29, 0}, {30, 1}, {31, 1}, {59, 1}, {60, 2},  {61, 2},
        {79, 2}, {80, 3}, {89, 3}, {90, 3}, {109, 3}, {110, 4}, {119, 4},
    };
    for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        double want = 1.0;
        for (int j = 0; j < pts[i].k; j++) want /= 10.0;
        double got = schedule_lr(&s, pts[i].e, 0);
        CHECK(close_to(got, want), "steps e=%d: %g vs %g", pts[i].e, got, want);
    }
    Schedule t = mk(SCHED_STEPS, 0.3, 0.0, 100);
    CHECK(close_to(schedule_lr(&t, 45, 0), 0.03), "steps scales initial");
    Schedule one = mk(SCHED_STEPS, 0.5, 0.1, 1);
    CHECK(schedule_lr(&one, 0, 0) == 0.5, "steps E=1 -> initial");
}

static void test_constant(void) {
    Schedule s = mk(SCHED_CONSTANT, 0.25, 0.01, 50);
    CHECK(schedule_lr(&s, 0, 0) == 0.25 && schedule_lr(&s, 49, 4999) == 0.25, "constant");
    Schedule one = mk(SCHED_CONSTANT, 0.25, 0.01, 1);
    CHECK(schedule_lr(&one, 0, 0) == 0.25, "constant E=1");
}

static double cosine_ref(double lr, long s, long warm, long total) {
    if (s < warm) return lr * (double)s / (double)warm;
    double span = total - warm > 1 ? (double)(total - warm) : 1.0;
    double v = 0.5 * (1.0 + cos(M_PI * (double)(s - warm) / span));
    return lr * (v > 0 ? v : 0);
}

static void test_warmup_cosine(void) {
    Schedule s = {.kind = SCHED_WARMUP_COSINE, .initial_lr = 1e-3, .final_lr = 0,
                  .warmup_steps = 50, .epochs = 4, .updates_per_epoch = 100};  // total 400
    const long W = 50, T = 400;
    CHECK(schedule_lr(&s, 0, 0) == 0.0, "warm-up starts at 0");
    CHECK(close_to(schedule_lr(&s, 0, 25), 0.5e-3), "half-way through warm-up");
    CHECK(close_to(schedule_lr(&s, 0, W - 1), 1e-3 * 49.0 / 50.0), "s = warmup-1: %g",
          schedule_lr(&s, 0, W - 1));
    CHECK(close_to(schedule_lr(&s, 0, W), 1e-3), "s = warmup is the peak: %g",
          schedule_lr(&s, 0, W));
    double w1 = 1e-3 * 0.5 * (1 + cos(M_PI / 350.0));
    CHECK(close_to(schedule_lr(&s, 0, W + 1), w1), "s = warmup+1: %g vs %g",
          schedule_lr(&s, 0, W + 1), w1);
    CHECK(close_to(schedule_lr(&s, 2, 225), 0.5e-3), "cosine midpoint (s=225): %g",
          schedule_lr(&s, 2, 225));
    CHECK(fabs(schedule_lr(&s, 4, T)) < 1e-18, "s = total -> 0: %g", schedule_lr(&s, 4, T));
    CHECK(schedule_lr(&s, 3, T - 1) > 0 && schedule_lr(&s, 3, T - 1) < 1e-6, "last update small");
    for (long st = 0; st <= T; st += 7) {
        double got = schedule_lr(&s, (int)(st / 100), st), want = cosine_ref(1e-3, st, W, T);
        CHECK(close_to(got, want), "cosine s=%ld: %g vs %g", st, got, want);
    }
    // Monotone after the peak.
    int mono = 1;
    for (long st = W; st < T; st++)
        if (schedule_lr(&s, 0, st + 1) > schedule_lr(&s, 0, st)) mono = 0;
    CHECK(mono, "cosine decreases after warm-up");

    // No warm-up: the first update already gets the full rate.
    Schedule n = s;
    n.warmup_steps = 0;
    CHECK(close_to(schedule_lr(&n, 0, 0), 1e-3), "warmup 0: s=0 at the peak");
    CHECK(close_to(schedule_lr(&n, 0, 200), 0.5e-3), "warmup 0: midpoint");
    // E == 1 is not special-cased for the per-step schedule.
    Schedule one = s;
    one.epochs = 1;  // total 100
    CHECK(close_to(schedule_lr(&one, 0, 75), cosine_ref(1e-3, 75, 50, 100)),
          "WarmupCosine E=1 still anneals: %g", schedule_lr(&one, 0, 75));
    CHECK(schedule_lr(&one, 0, 75) < 1e-3 * 0.9, "WarmupCosine E=1 below peak");
    // warmup >= total: the max(1, ...) keeps the denominator positive.
    Schedule degen = s;
    degen.warmup_steps = 400;
    CHECK(close_to(schedule_lr(&degen, 0, 400), 1e-3), "warmup == total: peak at the end");
    CHECK(close_to(schedule_lr(&degen, 0, 401), 0.0), "warmup == total: 0 one step later");
}

static void test_parse(void) {
    const struct { const char *s; LrScheduleKind k; } good[] = {
        {"linear", SCHED_LINEAR},         {"LINEAR", SCHED_LINEAR},
        {"exp", SCHED_EXP},               {"Exp", SCHED_EXP},
        {"steps", SCHED_STEPS},           {"StEpS", SCHED_STEPS},
        {"constant", SCHED_CONSTANT},     {"Constant", SCHED_CONSTANT},
        {"WarmupCosine", SCHED_WARMUP_COSINE}, {"warmupcosine", SCHED_WARMUP_COSINE},
        {"WARMUPCOSINE", SCHED_WARMUP_COSINE},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        LrScheduleKind k = (LrScheduleKind)-1;
        int rc = schedule_parse(good[i].s, &k);
        CHECK(rc == VIT_OK && k == good[i].k, "parse '%s' -> %d (rc %d)", good[i].s, (int)k, rc);
    }
    const char *bad[] = {"", "lin", "linear ", "cosine", "warmup_cosine", "exponential", "step"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        LrScheduleKind k = SCHED_CONSTANT;
        int rc = schedule_parse(bad[i], &k);
        const char *m = vit_error();
        CHECK(rc == VIT_ERR, "parse '%s' should fail", bad[i]);
        CHECK(k == SCHED_CONSTANT, "failed parse leaves output alone");
        CHECK(strstr(m, "linear") && strstr(m, "exp") && strstr(m, "steps") &&
                  strstr(m, "constant") && strstr(m, "WarmupCosine"),
              "message lists valid names: %s", m);
    }
    CHECK(schedule_parse(NULL, NULL) == VIT_ERR, "NULL name fails");
    CHECK(schedule_parse("Cosine", NULL) == VIT_ERR && strstr(vit_error(), "Cosine"),
          "message names the bad input: %s", vit_error());

    // Names round-trip through parse.
    for (int k = SCHED_LINEAR; k <= SCHED_WARMUP_COSINE; k++) {
        LrScheduleKind back;
        CHECK(schedule_parse(schedule_name((LrScheduleKind)k), &back) == VIT_OK &&
                  back == (LrScheduleKind)k,
              "name round trip %d", k);
    }
    CHECK(strcmp(schedule_name(SCHED_WARMUP_COSINE), "WarmupCosine") == 0, "canonical name");
}

int main(void) {
    test_linear();
    test_exp();
    test_steps();
    test_constant();
    test_warmup_cosine();
    test_parse();
    return check_report("schedule");
}
