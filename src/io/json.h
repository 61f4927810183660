// A small strict JSON reader and writer for file headers. Reading is a cursor that the caller
// drives (no tree is built), so a format can check each field as it goes and point its
// messages at the exact byte. Everything is checked: the text comes from files we do not
// trust. Errors are values: VIT_ERR with a message "<path>: bad <what>: <detail> (at byte N
// of the JSON)" from vit_fail.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const unsigned char *s;  // the text; not NUL-terminated
    size_t n, i;             // length and read position (callers may rewind i for messages)
    const char *path;        // file named in messages
    const char *what;        // what the text is, e.g. "safetensors header"
} JsonCursor;

// Starts a cursor at the beginning of s[0..n). Refuses text that is not strict UTF-8 (no
// overlongs, surrogates or code points past U+10FFFF), as strict readers such as serde_json do.
int json_init(JsonCursor *c, const void *s, size_t n, const char *path, const char *what);

// Fails with the message format above, at the cursor's position: callers report format
// errors (missing fields, bad values) the same way as syntax errors.
int json_fail(const JsonCursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void json_skip_ws(JsonCursor *c);
// The next byte without skipping white space, or -1 at the end.
int json_peek(const JsonCursor *c);
// Skips white space, then consumes ch if it comes next. Returns whether it did.
int json_accept(JsonCursor *c, char ch);
// Like json_accept but ch is required; context finishes the message ("expected ':' <context>").
int json_expect(JsonCursor *c, char ch, const char *context);

// A string, decoded into a malloc'd C string; out NULL only validates. \u0000 is refused
// since it would silently cut the C string.
int json_string(JsonCursor *c, char **out);
// An array of at most maxn non-negative integers that fit int64 (offsets, dimensions);
// *count receives how many, `what` names the array in messages.
int json_uint_array(JsonCursor *c, uint64_t *vals, int maxn, int *count, const char *what);
// Validates and skips any value (fields a newer writer may add). Nesting deeper than 64 levels,
// counting the value itself, is refused so hostile input cannot exhaust the stack.
int json_skip_value(JsonCursor *c);

// Whether a C string is strict UTF-8, as JSON text must be.
int json_utf8_valid(const char *z);

// Growable output text. Out of memory is sticky in `oom` so a whole document can be built
// and checked once at the end.
typedef struct {
    char *p;  // not NUL-terminated; free() it
    size_t n, cap;
    int oom;
} JsonBuf;

void json_puts(JsonBuf *b, const char *z);
void json_printf(JsonBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// A quoted string with the escapes serde_json writes, so our files match the Python package's
// byte for byte. z must be valid UTF-8 (see json_utf8_valid).
void json_put_string(JsonBuf *b, const char *z);
