// `vit prep`: raw ImageNet (or train/ and val/ class folders) to the TFRecord shards the
// trainer reads, as the recipe's preprocessing script lays them out.
#include <stdio.h>
#include <string.h>
#include "commands.h"
#include "data/prep.h"
#include "flags.h"
#include "util/status.h"

int cmd_prep(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("prep",
                             "Writes --output_dir/train/train-NNNNN-of-NNNNN, validation/validation-NNNNN-of-NNNNN\n"
                             "and classes.txt (the class names in label order) from --raw_data_dir:\n"
                             "train/<synset>/*.JPEG with validation/*.JPEG and\n"
                             "imagenet_2012_validation_synset_labels.txt or synset_labels.txt (or --val_labels),\n"
                             "or train/<class>/ and val/<class>/ image folders. Uses --train_shards, --val_shards\n"
                             "(at most one shard per image), --data_workers, --skip_corrupt. --local_scratch_dir is\n"
                             "the recipe's name for --output_dir.");
            return 0;
        }
    ParsedOptions p;
    if (flags_parse(&p, argc, argv) || flags_no_positional(&p)) {
        fprintf(stderr, "vit prep: %s\n", vit_error());
        flags_free(&p);
        return 2;
    }
    const Options *o = &p.o;
    PrepOptions po = {
        .raw_dir = o->raw_data_dir,
        .out_dir = o->output_dir,
        .val_labels = o->val_labels,
        .train_shards = o->train_shards,
        .val_shards = o->val_shards,
        .workers = o->data_workers,
        .skip_corrupt = o->skip_corrupt,
        .notes = stderr,
        .progress = stdout,
    };
    PrepStats st;
    int rc = prep_run(&po, &st);
    flags_free(&p);
    if (rc != VIT_OK) {
        fprintf(stderr, "vit prep: %s\n", vit_error());
        return 2;
    }
    printf("wrote %ld train images in %d shards, %ld validation images in %d shards, %ld re-encoded, %ld skipped\n",
           st.train, st.train_shards, st.val, st.val_shards, st.reencoded, st.skipped);
    return 0;
}
