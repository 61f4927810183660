// `vit export`: a checkpoint's weights as an .npz in the official naming and layout, for the
// official code and other loaders.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "commands.h"
#include "common.h"
#include "train/checkpoint.h"
#include "io/npz.h"
#include "util/status.h"

int cmd_export(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("export", "Writes the weights of --checkpoint FILE to --out FILE.npz (official names).");
            return 0;
        }
    ParsedOptions p;
    Checkpoint ck = {0};
    int rc = 2, open = 0;
    float *host = NULL;
    NpzEntry *entries = NULL;
    int64_t (*shapes)[4] = NULL;
    ParamTable t = {0};
    ParamOffsets off = {0};
    if (flags_parse(&p, argc, argv) || flags_no_positional(&p)) goto fail;
    const Options *o = &p.o;
    if (!*o->checkpoint || !*o->out) {
        vit_fail("export needs --checkpoint FILE and --out FILE.npz");
        goto fail;
    }
    if (checkpoint_open(&ck, o->checkpoint)) goto fail;
    open = 1;
    if (params_build(&t, &off, &ck.cfg)) goto fail;
    host = malloc(t.total * sizeof(float));
    entries = calloc((size_t)t.count, sizeof *entries);
    shapes = calloc((size_t)t.count, sizeof *shapes);
    if (!host || !entries || !shapes) {
        vit_fail("out of memory exporting %s", o->checkpoint);
        goto fail;
    }
    if (checkpoint_copy(&ck, o->checkpoint, &t, host, NULL, NULL)) goto fail;
    for (int i = 0; i < t.count; i++) {
        const ParamEntry *e = &t.entries[i];
        for (int k = 0; k < e->ndim; k++) shapes[i][k] = e->shape[k];
        entries[i] = (NpzEntry){e->name, e->ndim, shapes[i], host + e->offset};
    }
    if (npz_write(o->out, entries, t.count)) goto fail;
    printf("wrote %s: %d tensors, %zu parameters (%s)\n", o->out, t.count, t.total, ck.cfg.name);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "vit export: %s\n", vit_error());
done:
    if (open) checkpoint_close(&ck);
    if (t.entries) params_free(&t, &off);
    free(host), free(entries), free(shapes);
    flags_free(&p);
    return rc;
}
