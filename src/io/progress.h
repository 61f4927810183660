// The per-epoch progress line: rewritten in place on a terminal, plain periodic lines
// otherwise (logs, CI).
#pragma once
#include <stdio.h>

typedef struct {
    FILE *out;
    int tty;
    int epoch, epochs;
    long total, last_printed;
    long later;  // micro-steps of the epochs after this one
    double start, last_time;
} Progress;

// out NULL: prints nothing (the non-reporting ranks of a distributed run). `later`: the
// micro-steps of the run's remaining epochs, for the run's ETA (validation not counted).
void progress_begin(Progress *p, FILE *out, int epoch, int epochs, long total, long later);
// step is 1-based within the epoch.
void progress_update(Progress *p, long step, double loss, double acc, double lr, double images_per_sec);
void progress_end(Progress *p);
