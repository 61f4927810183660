// The per-epoch progress line: rewritten in place on a terminal, plain periodic lines
// otherwise (logs, CI).
#pragma once
#include <stdio.h>

typedef struct {
    FILE *out;
    int tty;
    int epoch, epochs;
    long total, last_printed;
    double start, last_time;
} Progress;

// out NULL: prints nothing (the non-reporting ranks of a distributed run).
void progress_begin(Progress *p, FILE *out, int epoch, int epochs, long total);
// step is 1-based within the epoch.
void progress_update(Progress *p, long step, double loss, double acc, double lr, double images_per_sec);
void progress_end(Progress *p);
