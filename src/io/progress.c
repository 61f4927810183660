#include "progress.h"
#include <unistd.h>
#include "util/clock.h"


void progress_begin(Progress *p, FILE *out, int epoch, int epochs, long total, long later) {
    p->out = out;
    p->tty = out && isatty(fileno(out));
    p->epoch = epoch;
    p->epochs = epochs;
    p->total = total;
    p->later = later > 0 ? later : 0;
    p->last_printed = 0;
    p->start = p->last_time = clock_seconds();
}

static void format_eta(char *buf, size_t n, double seconds) {
    long s = seconds > 0 && seconds < 1e8 ? (long)seconds : 0;
    if (s >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, n, "%ld:%02ld", s / 60, s % 60);
}

void progress_update(Progress *p, long step, double loss, double acc, double lr, double images_per_sec) {
    if (!p->out) return;
    double now = clock_seconds();
    int last = step == p->total;
    // Terminal: at most 5 redraws a second. Otherwise: about ten lines per epoch.
    if (p->tty ? (!last && now - p->last_time < 0.2) : (!last && step - p->last_printed < (p->total + 9) / 10))
        return;
    double per_step = (now - p->start) / step;
    char eta[32], run_eta[32];
    format_eta(eta, sizeof eta, per_step * (p->total - step));
    format_eta(run_eta, sizeof run_eta, per_step * (p->total - step + p->later));
    fprintf(p->out, "%sepoch %d/%d  step %ld/%ld  loss %.4f  acc %5.2f%%  lr %.3e  %.1f img/s  ETA %s (epoch %s)%s",
            p->tty ? "\r" : "", p->epoch + 1, p->epochs, step, p->total, loss, 100 * acc, lr, images_per_sec, run_eta,
            eta, p->tty ? "\033[K" : "\n");
    fflush(p->out);
    p->last_time = now;
    p->last_printed = step;
}

void progress_end(Progress *p) {
    if (!p->out) return;
    if (p->tty) fputc('\n', p->out);
    fflush(p->out);
}
