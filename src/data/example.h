// tf.train.Example records of ImageNet shards (the keys of the recipe's preprocessing):
// parsing the fields a trainer needs, and building records for `vit prep`.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *encoded;  // image/encoded: points into the caller's `data` (zero-copy),
                             // so it is valid as long as that buffer is (for tfr_next, until
                             // the next tfr_next call)
    size_t encoded_len;
    int64_t label;           // image/class/label (1-based in ImageNet shards)
} ExampleImage;

// Parses a serialized Example. Missing image/encoded or image/class/label, or a malformed
// protobuf, is VIT_ERR with a message that starts with `where` (file and record).
// Takes the first value of each list; packed and unpacked int64 lists are both accepted;
// of map entries with the same key the last wins (protobuf's rules). Allocates nothing.
int example_parse_image(const uint8_t *data, size_t len, ExampleImage *out, const char *where);

typedef struct {
    const uint8_t *encoded;
    size_t encoded_len;
    int64_t label;            // image/class/label
    const char *synset;       // image/class/synset
    const char *text;         // image/class/text (may be "")
    const char *filename;     // image/filename
    int height, width, channels;  // image/height, image/width, image/channels
    // image/format is "JPEG", image/colorspace "RGB"
} ExampleFields;

// Serializes an Example with the preprocessing script's features into a malloc'd buffer.
int example_build_image(const ExampleFields *f, uint8_t **out, size_t *len);
