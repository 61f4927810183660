// Checkpoints of a running training: where the run stands (built here only), the write
// (sharded optimizer slots gathered to rank 0, which writes the file), --keep_checkpoints,
// and when a checkpoint falls inside an epoch.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "run.h"
#include "util/status.h"

// The position to resume from: epoch, and micro-steps of it done. At an epoch boundary
// (step_in_epoch 0) the epoch's running sums start from zero.
TrainState run_state(const Run *run, int epoch, long step_in_epoch) {
    TrainState st = {run->update, epoch, step_in_epoch, run->micro, run->s->seed, 0, 0, 0, 0};
    if (step_in_epoch > 0) st.loss_sum = run->loss_sum, st.hits = run->hits, st.top5 = run->top5, st.seen = run->seen;
    return st;
}

static int alloc_host_copies(Run *run, size_t n) {
    SaveState *ss = &run->save;
    int keep = run->s->keep;
    ss->params = malloc(n * sizeof(float));
    ss->m = run->slots.m ? malloc(n * sizeof(float)) : NULL;
    ss->v = run->slots.v ? malloc(n * sizeof(float)) : NULL;
    ss->ema = run->ema ? malloc(n * sizeof(float)) : NULL;
    ss->written = calloc((size_t)(keep > 0 ? keep + 1 : 1), sizeof *ss->written);
    if (!ss->params || (run->slots.m && !ss->m) || (run->slots.v && !ss->v) || (run->ema && !ss->ema) || !ss->written)
        return vit_fail("out of memory for a checkpoint copy (%.1f MiB)", 4.0 * n * 4 / 1048576);
    return VIT_OK;
}

// Only this run's checkpoints are removed, oldest first, after the new one is safe.
static void keep_newest(Run *run, const char *path) {
    SaveState *ss = &run->save;
    int keep = run->s->keep;
    snprintf(ss->written[ss->n_written++], sizeof ss->written[0], "%s", path);
    if (ss->n_written > keep) {
        unlink(ss->written[0]);
        memmove(ss->written, ss->written + 1, (size_t)keep * sizeof ss->written[0]);
        ss->n_written--;
    }
}

// Every rank calls it at the same points: sharded optimizer slots are gathered to rank 0,
// which writes the same full checkpoint an unsharded run does. `counted`: an epoch or step
// checkpoint that --keep_checkpoints rotates.
int run_save(Run *run, int epoch, long step_in_epoch, const char *tag, int counted) {
    TrainSetup *s = run->s;
    ViT *m = run->m;
    size_t n = m->table.total;
    int root = run->rank == 0;
    if (!root && !run->slots.sharded) return VIT_OK;  // replicas hold the same state; one writer
    if (root && !run->save.params && alloc_host_copies(run, n)) return VIT_ERR;
    if (zero_slots_gather(&run->slots, run->be, run->save.m, run->save.v)) return VIT_ERR;
    if (!root) return VIT_OK;
    run->be->download(run->be, run->save.params, m->params, n * sizeof(float));
    if (run->ema) run->be->download(run->be, run->save.ema, run->ema, n * sizeof(float));
    char path[1100];
    snprintf(path, sizeof path, "%s/%s-ckpt-%s.safetensors", s->save_dir, m->cfg.name, tag);
    TrainState st = run_state(run, epoch, step_in_epoch);
    if (checkpoint_save_ema(path, &m->cfg, &m->table, run->save.params, run->save.m, run->save.v, run->save.ema,
                            s->opt.kind, &st, s->meta, s->n_meta))
        return VIT_ERR;
    snprintf(run->r->last_checkpoint, sizeof run->r->last_checkpoint, "%s", path);
    if (run->out) {  // a line of its own, also between a terminal's progress redraws
        fprintf(run->out, "%scheckpoint: %s\n", isatty(fileno(run->out)) ? "\r\033[K" : "", path);
        fflush(run->out);
    }
    if (counted && s->keep > 0) keep_newest(run, path);
    return VIT_OK;
}

// After an update: a stop signal saves where the run stands (at the epoch's end, as the next
// epoch's start), and --checkpoint_every_steps saves every N updates within an epoch.
int run_checkpoint_in_epoch(Run *run, int stop, int updated) {
    TrainSetup *s = run->s;
    long next = run->step + 1;
    int epoch_done = stop && next == run->steps;  // resume at the next epoch
    int mid = next < run->steps && (stop || (s->checkpoint_every > 0 && updated && run->update % s->checkpoint_every == 0));
    if (!s->save_dir || (!epoch_done && !mid)) return VIT_OK;
    char tag[32];
    if (epoch_done)
        snprintf(tag, sizeof tag, "%03d", run->epoch + 1);
    else
        snprintf(tag, sizeof tag, "step-%07ld", run->update);
    prof_begin(s->prof, "checkpoint", "io");
    int rc = epoch_done ? run_save(run, run->epoch + 1, 0, tag, 1) : run_save(run, run->epoch, next, tag, !stop);
    prof_end(s->prof);
    return rc;
}
