#include "optim/ema.h"
#include <math.h>

double ema_decay_at(const EmaConfig *e, long step) {
    long s = step - 1;  // timm: max(0, step - update_after_step - 1)
    if (s <= 0) return 0.0;
    if (!e->warmup) return e->decay;
    double d = 1.0 - pow(1.0 + (double)s, -2.0 / 3.0);  // warmup_gamma 1, warmup_power 2/3
    d = d < e->decay ? d : e->decay;
    return d > 0.0 ? d : 0.0;  // min_decay 0
}
