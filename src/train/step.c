// One micro-step of training: forward, the next batch fetched while the device still works,
// backward (gradients accumulate), the gradient sums across ranks at the window's end, and
// the step's figures agreed over the ranks. Each profile span opens and closes here.
//
// The step's loss and hits are summed on the device (vit_forward with m->metrics) and read
// once, after the backward pass is issued: the host no longer waits between the two passes.
// With VIT_CUDA_GRAPH=1 (docs/gpu.md) both passes are captured once per input buffer as a
// CUDA graph and replayed with one launch where the run allows it (see graph_usable).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "run.h"
#include "util/status.h"
#include "util/stop_signal.h"
#ifdef VIT_CUDA
#include "backend/cuda_graph.h"
#endif

int run_fetch(Run *run, const int **labels) {
    const uint8_t *images;
    int got;
    prof_begin(run->s->prof, "data wait", "data");
    int rc = loader_next(run->ld, &images, labels, &got);
    prof_end(run->s->prof);
    return rc ? rc : vit_stage(run->m, images, *labels, run->Bl);
}

static void on_grad_ready(void *ctx, size_t offset, size_t count) { gradsync_ready(ctx, offset, count); }

// This rank's figures for the micro-step just run (before they are summed over the ranks):
// the device sums, bit for bit what the host computed from the downloaded logits and losses.
static Agreement agreement(Run *run) {
    double h[METRICS];
    run->be->download(run->be, h, run->scalars + STEP_SCALARS, sizeof h);  // NaN bytes after a device failure
    double loss = h[METRIC_LOSS];
    return (Agreement){loss, h[METRIC_TOP1], h[METRIC_TOP5], !isfinite(loss), stop_signal_requested() != 0};
}

// ---- CUDA graphs (VIT_CUDA_GRAPH=1) -------------------------------------------------------------
struct StepGraph {
    int off;  // decided against graphs (or a capture broke): eager from then on
#ifdef VIT_CUDA
    CudaGraph *g[2];  // one per input buffer: the model alternates two staged buffers
    int warm[2];      // an eager pass has run on that buffer (scratch sizes, plans: capture allocates nothing)
    int B;
#endif
};

void run_graph_destroy(Run *run) {
    if (!run->graph) return;
#ifdef VIT_CUDA
    for (int i = 0; i < 2; i++) backend_cuda_graph_destroy(run->graph->g[i]);
#endif
    free(run->graph);
    run->graph = NULL;
}

#ifdef VIT_CUDA
// Why this run cannot replay captured passes, or NULL. Dropout, drop path and Mixup draw their
// masks from the step counter, which a graph would freeze at its capture's value.
static const char *graph_obstacle(const Run *run) {
    const ViT *m = run->m;
    if (run->ranks > 1) return "more than one rank (NCCL's all-reduce runs beside the passes)";
    if (run->s->prof) return "profiling (--profile times each op)";
    if (m->cfg.dropout > 0 || m->drop_path > 0 || mixup_enabled(&m->mix))
        return "dropout, drop path or Mixup (their masks follow the step counter)";
    return NULL;
}

static void graph_note(const char *why) {
    fprintf(stderr, "note: VIT_CUDA_GRAPH=1: %s; running eagerly\n", why);
}

// The first micro-step decides; NULL: eager.
static struct StepGraph *graph_open(Run *run) {
    if (run->graph) return run->graph->off ? NULL : run->graph;
    if (!(run->graph = calloc(1, sizeof *run->graph))) return NULL;  // no memory: eager, the run goes on
    struct StepGraph *sg = run->graph;
    sg->off = 1;
    if (!backend_cuda_graph_requested()) return NULL;
    const char *why = graph_obstacle(run);
    if (why) return graph_note(why), NULL;
    for (int i = 0; i < 2; i++)
        if (!(sg->g[i] = backend_cuda_graph_create(run->be))) return graph_note(vit_error()), NULL;
    sg->off = 0;
    sg->B = run->Bl;
    return sg;
}

static void no_wait(Backend *be) { (void)be; }

// Forward and backward of the staged batch through graph sg->g[k]: captured on the buffer's
// second use (the first ran eagerly), replayed after. vit_forward's host-side bookkeeping is
// redone here on a replay. Returns 1 when the passes were issued, 0 for "run them eagerly"
// (the model's state as it was), VIT_ERR on failure.
static int graph_passes(Run *run, struct StepGraph *sg, float smoothing, float scale) {
    ViT *m = run->m;
    Backend *be = run->be;
    int k = m->stage_slot, B = run->Bl;
    if (B != sg->B || m->staged_B != B) return 0;
    if (!sg->warm[k]) {
        sg->warm[k] = 1;
        return 0;
    }
    be->wait_uploads(be);  // the batch's copy, before the graph (inside it the wait is a no-op)
    if (!backend_cuda_graph_ready(sg->g[k])) {
        // Capture through a copy of the op table whose wait_uploads does nothing: a capture may
        // not wait for work recorded outside it.
        Backend view = *be;
        view.wait_uploads = no_wait;
        int staged_labels = m->staged_labels;
        if (backend_cuda_graph_begin(sg->g[k])) {
            graph_note(vit_error());
            sg->off = 1;
            return 0;
        }
        m->be = &view;
        int rc = vit_forward(m, NULL, NULL, B, 1, smoothing, run->drop_seed, run->micro);
        if (rc == VIT_OK) rc = vit_backward(m, B, smoothing, scale, run->drop_seed, run->micro);
        m->be = be;
        int end = backend_cuda_graph_end(sg->g[k]);
        if (rc || end) {  // nothing ran: put the staged batch back and go on eagerly
            graph_note(vit_error());
            sg->off = 1;
            m->stage_slot = k, m->staged_B = B, m->staged_labels = staged_labels;
            return 0;
        }
    } else {  // vit_forward's bookkeeping for the buffer it would have used
        m->stage_slot = 1 - k;
        m->staged_B = 0;
        m->images = m->image_buf[k];
        m->labels = m->label_buf[k];
        m->mixed = 0;
    }
    return backend_cuda_graph_launch(sg->g[k]) ? VIT_ERR : 1;
}
#endif

// The loader runs a batch ahead of the model: batch step + 1 is fetched and staged (copied
// to the device, asynchronously on a GPU) right after this step's forward pass, so that its
// copy overlaps the backward pass (after a replayed graph: the copy follows it). A failed
// fetch is kept in *pending and ends the run at the start of the next step, where fetching it
// used to.
int run_micro_step(Run *run, const int **labels, int *pending, Agreement *ag) {
    TrainSetup *s = run->s;
    ViT *m = run->m;
    Backend *be = run->be;
    int last_micro = run->step % run->A == run->A - 1;
    if (!run->scalars && run_alloc_scalars(run)) return VIT_ERR;
    if (run->sync) gradsync_begin(run->sync);
    m->grad_ready = run->sync && last_micro ? on_grad_ready : NULL;  // accumulate locally until the last
    m->grad_ready_ctx = run->sync;
    const float scale = 1.0f / ((float)run->B * run->A);
    be->zero(be, run->scalars + STEP_SCALARS, METRICS * sizeof(double));
    m->metrics = run->scalars + STEP_SCALARS;
    int rc = VIT_OK, done = 0;
#ifdef VIT_CUDA
    struct StepGraph *sg = graph_open(run);
    if (sg) {
        prof_begin(s->prof, "graph", "phase");
        done = graph_passes(run, sg, s->smoothing, scale);
        prof_end(s->prof);
        if (done == 1 && run->step + 1 < run->steps) *pending = run_fetch(run, labels);
        if (done < 0) rc = VIT_ERR;
    }
#endif
    if (!done) {
        prof_begin(s->prof, "forward", "phase");
        rc = vit_forward(m, NULL, NULL, run->Bl, 1, s->smoothing, run->drop_seed, run->micro);
        prof_end(s->prof);
        if (rc == VIT_OK && run->step + 1 < run->steps) *pending = run_fetch(run, labels);
        prof_begin(s->prof, "backward", "phase");
        if (rc == VIT_OK) rc = vit_backward(m, run->Bl, s->smoothing, scale, run->drop_seed, run->micro);
        prof_end(s->prof);
    }
    m->metrics = NULL;  // evaluation passes copy their outputs to the host
    if (rc == VIT_OK) *ag = agreement(run);
    prof_begin(s->prof, "allreduce", "comm");
    if (rc == VIT_OK && run->sync && last_micro) rc = gradsync_finish(run->sync);
    if (rc == VIT_OK) {
        double v[5] = {ag->loss, ag->hits, ag->top5, ag->nonfinite, ag->stop};
        rc = dist_allreduce_sum_double(v, 5);
        *ag = (Agreement){v[0], v[1], v[2], v[3], v[4]};
    }
    prof_end(s->prof);
    return rc;
}
