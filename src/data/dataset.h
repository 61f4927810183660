// A labelled image set the loader can index: Fashion-MNIST from IDX files held in memory,
// synthetic images generated from (seed, index), ImageNet TFRecord shards (through an offset
// index of every record), or a folder of class folders. dataset_load produces sample i as
// uint8 (S, S, C) pixels: encoded images are decoded and then augmented (training) or
// center-cropped (evaluation).
#pragma once
#include <stdint.h>
#include "augment.h"
#include "idx.h"

typedef enum { DATA_IDX, DATA_SYNTHETIC, DATA_TFRECORD, DATA_FOLDER } DataKind;

typedef struct {
    int file;
    uint64_t offset;
} RecordRef;

typedef struct {
    const char *name;     // for messages ("train", "t10k", "synthetic", "validation")
    DataKind kind;
    int count, size, channels, classes;
    int synthetic;
    uint64_t seed;        // synthetic: images and labels are a function of (seed, index)
    IdxSplit idx;         // idx: the decoded files
    // tfrecord: shard files, one open descriptor each (pread is thread-safe), every record
    char **files;
    int n_files;
    int *fds;
    RecordRef *records;
    // folder: one path and label per image
    char **paths;
    int *labels;
    // how encoded samples become pixels
    int train;            // 1: training augmentation; 0: evaluation crop
    int fast_decode;      // evaluation crop: decode large JPEGs at a reduced DCT scale (training always does)
    AugmentConfig aug;
    int skip_corrupt;     // substitute unreadable samples (counted) instead of failing
    // class names in label order, when the data has them (folders; shards with classes.txt)
    char **class_names;
    int n_class_names;
} Dataset;

// Per-thread working memory of dataset_load.
typedef struct {
    uint8_t *buf;
    size_t cap;
} SampleScratch;

// Loads <dir>/train-* and <dir>/t10k-* IDX files. classes = 1 + the largest label seen.
int dataset_open_idx(Dataset *train, Dataset *val, const char *dir);
void dataset_synthetic(Dataset *d, const char *name, int count, int size, int channels, int classes, uint64_t seed);
// <dir>/<prefix>-* TFRecord shards (sorted by name); the offset index is cached in
// cache_dir (or next to the data when cache_dir is NULL or ""; silently not cached when
// neither is writable). Labels are 1-based in the files.
int dataset_open_tfrecord(Dataset *d, const char *name, const char *dir, const char *prefix, const char *cache_dir);
// <dir>/train/<class>/* and <dir>/val/<class>/* (JPEG, PNG); class index = position in the
// sorted list of train class folders. Train and val must hold the same classes (a class in
// only one of them is an error naming it). Both get the class names.
int dataset_open_folder(Dataset *train, Dataset *val, const char *dir);
// The same without a val/ folder (training without validation): val is left empty.
int dataset_open_folder_train_only(Dataset *train, Dataset *val, const char *dir);
// Up to `max` entries of `dir` ("train/", "labels.txt", ...) joined by ", " into buf, for
// errors that say what a folder holds; "nothing" when it is empty.
void dataset_describe_folder(const char *dir, int max, char *buf, size_t n);
// Whether <dir>/<sub> is a folder holding at least one folder (class folders, not shards).
int dataset_has_class_folders(const char *dir, const char *sub);
// <dir>/classes.txt (written by `vit prep`), one name per line in label order, into both
// datasets' class names. VIT_OK with no names when the file is absent.
int dataset_read_class_names(Dataset *train, Dataset *val, const char *dir);
// The median width and height of up to `samples` images spread over an encoded dataset
// (folders, TFRecord shards), read from their headers; VIT_ERR when none could be read.
int dataset_typical_size(const Dataset *d, int samples, int *width, int *height);
// Output size and channels of encoded datasets (the model's), and training or evaluation.
void dataset_set_output(Dataset *d, int size, int channels, int train, const AugmentConfig *aug);

// Sample `index` of `epoch` into out (size * size * channels) and *label (0-based). Errors
// (corrupt image, bad record, label out of range) name the file and record.
int dataset_load(const Dataset *d, int index, uint32_t epoch, uint8_t *out, int *label, SampleScratch *s);
void dataset_free(Dataset *d);

// A permutation of 0..n-1 that depends only on (seed, epoch, pass); pass > 0 continues an
// epoch that needs more than one pass over the data.
void dataset_epoch_order(int *perm, int n, uint64_t seed, int epoch, int pass);
