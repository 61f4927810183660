#include "status.h"
#include <stdio.h>

static _Thread_local char g_message[1024];

int vit_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
    return VIT_ERR;
}

const char *vit_error(void) { return g_message; }
