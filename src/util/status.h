// Errors are values: library functions return VIT_OK or VIT_ERR and leave a one-line
// message (naming the file, flag or tensor at fault) that only the CLI prints.
#pragma once
#include <stdarg.h>

enum { VIT_OK = 0, VIT_ERR = -1 };

// Formats the message for the current thread and returns VIT_ERR.
int vit_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The message of the most recent vit_fail on this thread ("" if none).
const char *vit_error(void);
