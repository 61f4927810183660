// TFRecord files: each record is uint64 length, uint32 masked CRC-32C of the length bytes,
// the data, uint32 masked CRC-32C of the data (all little-endian). Both CRCs are verified.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// Sequential reading (indexing, prep checks).
typedef struct {
    FILE *f;
    char *path;
    uint64_t offset;   // of the next record
    uint8_t *buf;
    size_t cap;
} TfrReader;

int tfr_open(TfrReader *r, const char *path);
// Reads the next record: returns 1 with *data/*len (valid until the next call) and *offset
// (where the record starts), 0 at a clean end of file, VIT_ERR on a CRC mismatch or a
// truncated record, with "<path>: record at byte N: what is wrong".
int tfr_next(TfrReader *r, const uint8_t **data, size_t *len, uint64_t *offset);
void tfr_close(TfrReader *r);

// Random access: the record starting at `offset` of an open file descriptor, CRCs verified,
// into *buf (grown with realloc as needed, capacity in *cap). `path` is for messages.
int tfr_read_at(int fd, const char *path, uint64_t offset, uint8_t **buf, size_t *cap, size_t *len);

// Writing: records go to a temp file that tfr_writer_close renames over `path` (atomic).
typedef struct TfrWriter TfrWriter;
TfrWriter *tfr_writer_open(const char *path);  // NULL with vit_fail on error
int tfr_write(TfrWriter *w, const void *data, size_t len);
int tfr_writer_close(TfrWriter *w);            // commits; VIT_ERR leaves no file behind
void tfr_writer_abort(TfrWriter *w);           // discards
