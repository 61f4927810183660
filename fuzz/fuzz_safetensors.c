// libFuzzer target for st_read. The reader takes a path, so each input is written to an
// in-memory file (memfd) reached through /proc/self/fd: nothing is left in /tmp.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "util/status.h"

static int g_fd = -1;
static char g_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (g_fd < 0) {
        g_fd = memfd_create("fuzz_safetensors", 0);
        if (g_fd < 0) abort();
        snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    }
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) abort();

    StFile f;
    if (st_read(&f, g_path) == VIT_OK) {
        // Read every byte a tensor claims so ASan sees any range outside the buffer.
        volatile unsigned sink = 0;
        for (int i = 0; i < f.count; i++) {
            const StTensor *t = &f.tensors[i];
            for (size_t k = 0; k < t->nbytes; k++) sink += ((const unsigned char *)t->data)[k];
            if (st_find(&f, t->name) == NULL) abort();
        }
        for (int i = 0; i < f.meta_count; i++)
            if (st_meta(&f, f.meta_keys[i]) == NULL) abort();
        (void)sink;
        st_free(&f);
    } else if (vit_error()[0] == 0) {
        abort();  // an error must always come with a message
    }
    return 0;
}
