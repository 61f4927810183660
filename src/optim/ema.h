// The exponential moving average of the weights (--model_ema), as timm's ModelEmaV3 with
// the settings timm's train.py gives it: after optimizer update number `step` (1-based, the
// count including this update) every parameter becomes lerp(ema, param, 1 - decay(step)).
#pragma once

typedef struct {
    int on;        // --model_ema
    double decay;  // --model_ema_decay, in (0, 1)
    int warmup;    // --model_ema_warmup: timm's power warm-up (gamma 1, power 2/3)
} EmaConfig;

// timm's ModelEmaV3.get_decay(step) with update_after_step 0 and min_decay 0: 0 for the
// first update (the average starts as the weights after it), then `decay`, or with warm-up
// min(decay, 1 - (1 + s)^(-2/3)) for s = step - 1.
double ema_decay_at(const EmaConfig *e, long step);
