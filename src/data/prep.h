// `vit prep`: raw ImageNet (or an image folder) to the recipe's TFRecord shards, as the
// ImageNet preprocessing script writes them: train/train-%05d-of-%05d and
// validation/validation-%05d-of-%05d, one tf.train.Example per image with a 1-based label.
#pragma once
#include <stdio.h>

typedef struct {
    const char *raw_dir;     // holds train/<class>/* and the validation images
    const char *out_dir;     // gets train/ and validation/
    const char *val_labels;  // "" or NULL: <raw_dir>/imagenet_2012_validation_synset_labels.txt, else
                             // <raw_dir>/synset_labels.txt (the recipe README's name), if present
    int train_shards, val_shards;
    int workers;             // 0: the cores
    int skip_corrupt;        // undecodable images are skipped (and counted) instead of failing
    FILE *notes;             // skipped files and leftovers of other runs (NULL: quiet)
    FILE *progress;          // a periodic "N/M shards" line (NULL: quiet)
} PrepOptions;

typedef struct {
    long train, val;      // images written
    long reencoded;       // PNG, CMYK or grayscale inputs written as new RGB JPEGs
    long skipped;         // undecodable images left out (skip_corrupt)
    int classes;
    int train_shards, val_shards;  // written: the options' counts, lowered to the image counts
} PrepStats;

// Lists the input, then writes every shard (each atomically, whole shards per thread; never
// more shards than images) and <out_dir>/classes.txt, the class names in label order.
// VIT_ERR with a message naming the file or folder at fault; shards finished before the
// error stay in place.
int prep_run(const PrepOptions *o, PrepStats *st);
