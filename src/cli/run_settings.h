// A training run's identity: what a resume takes from the checkpoint it continues, and the
// folders a run writes to. Used by `vit train` only.
//
// Resume = the same run: the flags a checkpoint recorded ("flags.<name>") are the defaults;
// a flag typed on the command line that differs either applies with a one-line notice on
// stderr (epochs, rates, schedule, folders, validation, cadence, threads...) or is refused
// (the model's shape, the optimizer, the seed: what the saved tensors or the run's random
// streams depend on). Keys an older vit did not write keep today's defaults.
//
// One run, one folder: <save_dir>/<run_name> and <log_dir>/<run_name>, the name from
// --run_name or <model>-<YYYYmmdd-HHMMSS> (-2, -3... when taken); "." writes into the two
// folders themselves (the layout before run folders). A resume continues in its run's folder.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include "flags.h"
#include "train/checkpoint.h"

// --resume_from_checkpoint_path as given: a file (returned as is), a folder holding
// checkpoints (its newest that verifies), or a --save_dir holding run folders (the newest
// run's newest checkpoint, the choice named on stderr). For a full resume (a .safetensors
// file) the checkpoint is left open, verified, in *ck (the caller closes it or hands it to
// model_source_adopt): a resume reads and checks the file once.
int run_resume_file(const char *given, char *file, size_t cap, Checkpoint *ck);

// Whether the resume file is a full checkpoint (.safetensors), not weights only (.npz).
int run_is_full_resume(const char *file);

// The recorded settings of the checkpoint `file`, open in ck, into p as above (rank 0).
int run_resume_settings(ParsedOptions *p, const char *file, const Checkpoint *ck);

typedef struct {
    char name[256];
    char save[4096], log[4096];  // the run's folders; "" = not written
    size_t save_made, log_made;  // length of the outermost folder this run created (0: none)
} RunFolders;

// Rank 0: names the run and its folders (p->o.run_name gets the name). resume_file: a full
// resume's checkpoint, or NULL for a new run.
int run_folders_choose(RunFolders *f, ParsedOptions *p, const char *resume_file);
// Creates the checkpoint folder and checks it is writable (the log folder: run_folders_make_log).
int run_folders_make_save(RunFolders *f);
int run_folders_make_log(RunFolders *f);
// A run that ends before its first update: removes the event files this process wrote and
// the folders it created (only empty ones go).
void run_folders_discard(const RunFolders *f);
// "run NAME: checkpoints in ..., logs in ..." (`what`: "run" or "run ... done").
void run_folders_print(const RunFolders *f, FILE *out, const char *what);
