// `vit evaluate`: loss, top-1 and top-5 of a checkpoint (or official weights) on the
// validation set, without dropout and without keeping activations for a backward pass.
#include <stdio.h>
#include <string.h>
#include "backend/backend.h"
#include "commands.h"
#include "common.h"
#include "model_source.h"
#include "train/trainer.h"
#include "util/status.h"

int cmd_evaluate(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("evaluate", "Evaluates --checkpoint FILE (or --pretrained FILE with model flags) on the\n"
                                         "validation data of --dataset_dir (default: the checkpoint's) or --synthetic_data;\n"
                                         "--json for one object.");
            return 0;
        }
    ParsedOptions p;
    Dataset val = {0};
    Backend *be = NULL;
    ViT m = {0};
    ModelSource src = {0};
    int rc = 2, have_src = 0;
    if (flags_parse(&p, argc, argv) || flags_no_positional(&p) || cli_check_supported(&p) ||
        cli_check_model_given(&p, "evaluate"))
        goto fail;
    const Options *o = &p.o;
    if (o->batch_size < 1) {
        vit_fail("--batch_size %d: must be positive", o->batch_size);
        goto fail;
    }
    if (o->validation_steps < -1) {
        vit_fail("--validation_steps %d: must be >= 0", o->validation_steps);
        goto fail;
    }
    FILE *out = o->json ? stderr : stdout;
    be = cli_create_backend(&p, o->threads);
    if (!be) goto fail;
    // A checkpoint carries its run's data flags: they are the defaults (read before the data).
    if (*o->checkpoint && !o->synthetic_data) {
        if (model_source_open(&src, &p, NULL, NULL)) goto fail;
        have_src = 1;
        if (cli_checkpoint_data_defaults(&p, &src.ck.st, out)) goto fail;
    }
    // IDX data informs the model's shape (as in training); synthetic data follows the model.
    if (!o->synthetic_data && cli_open_data(&p, NULL, NULL, &val)) goto fail;
    if (have_src) {
        uint64_t seed = (uint64_t)(o->seed >= 0 ? o->seed : 0);
        if (vit_create(&m, &src.cfg, be, o->batch_size, 0) || model_source_load(&src, &m, seed, NULL, NULL, out))
            goto fail;
    } else if (cli_load_model(&p, o->synthetic_data ? NULL : &val, be, o->batch_size, &m, out)) {
        goto fail;
    }
    if (o->synthetic_data && cli_open_data(&p, &m.cfg, NULL, &val)) goto fail;
    cli_data_output(&p, &m.cfg, NULL, &val);
    if (val.size != m.cfg.image || val.channels != m.cfg.channels || val.classes > m.cfg.classes) {
        vit_fail("the data (%dx%dx%d, %d classes) does not fit the model (%dx%dx%d, %d classes)", val.size, val.size,
                 val.channels, val.classes, m.cfg.image, m.cfg.image, m.cfg.channels, m.cfg.classes);
        goto fail;
    }
    EvalResult r;
    if (evaluate(&m, &val, o->batch_size, o->validation_steps, o->data_workers, &r)) goto fail;
    const char *what = *o->checkpoint ? o->checkpoint : *o->pretrained ? o->pretrained : o->model;
    fprintf(out, "%s%s: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%ld images, %.1f img/s)\n", what,
            o->ema ? " (moving average, --ema)" : "", r.loss, 100 * r.top1, 100 * r.top5, r.images, r.images_per_sec);
    if (r.skipped) fprintf(out, "%ld unreadable images were skipped\n", r.skipped);
    if (o->json)
        printf("{\"loss\": %.17g, \"top1\": %.6f, \"top5\": %.6f, \"images\": %ld, \"images_per_sec\": %.3f}\n", r.loss,
               r.top1, r.top5, r.images, r.images_per_sec);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "vit evaluate: %s\n", vit_error());
done:
    vit_destroy(&m);
    if (have_src) model_source_close(&src);
    if (be) be->destroy(be);
    dataset_free(&val);
    flags_free(&p);
    return rc;
}
