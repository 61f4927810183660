// The safetensors format: 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets} plus an optional "__metadata__" string map, then
// the raw little-endian data. Readable by the Python `safetensors` package.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32, ST_F64, ST_I32, ST_I64, ST_U8, ST_BF16, ST_F16 } StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[8];
    size_t nbytes;
    const void *data;     // points into the file's buffer
} StTensor;

typedef struct {
    StTensor *tensors;
    int count;
    char **meta_keys, **meta_values;
    int meta_count;
    void *buffer;         // whole file
    size_t size;
} StFile;

// Reads and validates the whole file (header JSON, dtypes, offsets inside the data, no
// overlaps, shapes matching byte counts). VIT_ERR with a message naming the file otherwise.
int st_read(StFile *f, const char *path);
const StTensor *st_find(const StFile *f, const char *name);
const char *st_meta(const StFile *f, const char *key);   // NULL when absent
void st_free(StFile *f);
size_t st_dtype_size(StDtype d);
const char *st_dtype_name(StDtype d);

// Writer: collect tensors (data is referenced, not copied: it must stay valid until
// st_writer_save) and metadata (copied), then save
// atomically (temp file in the same folder, fsync, rename, fsync of the folder).
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
int st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data);
int st_writer_meta(StWriter *w, const char *key, const char *value);
int st_writer_save(StWriter *w, const char *path);
void st_writer_free(StWriter *w);
