// Evaluation over a dataset (top-1, top-5, mean loss), shared by `vit evaluate` and the
// validation at each epoch end.
#pragma once
#include "data/dataset.h"
#include "model/vit.h"

typedef struct {
    double loss, top1, top5;
    long images;
    double images_per_sec;
    long skipped;                   // unreadable samples substituted (--skip_corrupt)
} EvalResult;

// Evaluates `steps` batches (-1 = all) of d in order, without dropout; under MPI each rank
// takes a contiguous share and the sums are reduced, so every image counts once.
int evaluate(ViT *m, const Dataset *d, int batch, long steps, int workers, EvalResult *r);
// Top-1 and top-5 hits of one batch from host logits (B x K), added to *top1 and *top5.
void count_hits(const float *logits, const int *labels, int B, int K, long *top1, long *top5);
