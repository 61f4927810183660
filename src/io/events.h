// TensorBoard event files: TFRecord-framed Event protos (proto/event.proto) that
// `tensorboard --logdir DIR` reads while the run is still going. The file is appended to in
// place (never a temp file renamed at the end) and always ends at a record boundary after a
// flush, so a crash loses at most the records not yet flushed.
// One writer per file; a writer is not thread-safe.
#pragma once

typedef struct EventWriter EventWriter;

// Creates `dir` (and parents) if needed and opens
// dir/events.out.tfevents.<unix seconds>.<hostname>.<pid>[.<suffix>] (suffix NULL or "": no
// suffix part), writing and flushing the file_version "brain.Event:2" record first. NULL
// after vit_fail naming the folder or file on error (also when that name already exists).
EventWriter *events_open(const char *dir, const char *suffix);

// A scalar (shown by TensorBoard's Scalars dashboard), stored as a float32 simple_value.
int events_scalar(EventWriter *w, const char *tag, long step, double value);  // VIT_OK / VIT_ERR

// A text summary (markdown, UTF-8) shown by TensorBoard's Text dashboard, e.g. the run's
// flags as a table.
int events_text(EventWriter *w, const char *tag, long step, const char *markdown);

// Records gather in memory and reach the file at events_flush (the caller flushes per epoch
// or per logged summary), or on their own once 64 KiB have gathered.
// Writes the buffered records to the file. On a write error (disk full) the file is cut back
// to its last whole record, the buffered records are dropped, and the message names the
// file; later records can still be written once there is room.
int events_flush(EventWriter *w);

// Flush, fsync and close; NULL-safe. VIT_ERR when that last flush, sync or close failed.
int events_close(EventWriter *w);

const char *events_path(const EventWriter *w);
