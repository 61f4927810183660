// libFuzzer target for npz_read. The reader takes a path, so each input is written to an
// in-memory file (memfd) reached through /proc/self/fd: nothing is left in /tmp.
// An input that starts with the .npy magic is first wrapped as the only member of a stored
// zip, so the fuzzer can work on the .npy header parser without fighting zip checksums.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "io/npz.h"
#include "util/status.h"

static int g_fd = -1;
static char g_path[64];

static void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

// A minimal stored zip with one member "a.npy": local header, data, central directory, end.
static unsigned char *wrap_in_zip(const uint8_t *data, size_t size, size_t *out_len) {
    static const char name[] = "a.npy";
    const size_t nl = sizeof name - 1;
    size_t lh = 30 + nl, cd = 46 + nl, total = lh + size + cd + 22;
    unsigned char *z = calloc(1, total);
    if (!z) return NULL;
    uint32_t crc = (uint32_t)crc32(0L, data, (uInt)size);
    unsigned char *p = z;
    put32(p, 0x04034b50); put16(p + 4, 20); put32(p + 14, crc);
    put32(p + 18, (uint32_t)size); put32(p + 22, (uint32_t)size); put16(p + 26, (unsigned)nl);
    memcpy(p + 30, name, nl);
    memcpy(z + lh, data, size);
    p = z + lh + size;
    put32(p, 0x02014b50); put16(p + 4, 20); put16(p + 6, 20); put32(p + 16, crc);
    put32(p + 20, (uint32_t)size); put32(p + 24, (uint32_t)size); put16(p + 28, (unsigned)nl);
    memcpy(p + 46, name, nl);
    p += cd;
    put32(p, 0x06054b50); put16(p + 8, 1); put16(p + 10, 1);
    put32(p + 12, (uint32_t)cd); put32(p + 16, (uint32_t)(lh + size));
    *out_len = total;
    return z;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (g_fd < 0) {
        g_fd = memfd_create("fuzz_npz", 0);
        if (g_fd < 0) abort();
        snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    }
    unsigned char *wrapped = NULL;
    if (size >= 6 && size < (1u << 30) && memcmp(data, "\x93NUMPY", 6) == 0) {
        wrapped = wrap_in_zip(data, size, &size);
        if (!wrapped) return 0;
        data = wrapped;
    }
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) abort();
    free(wrapped);

    NpzFile f;
    if (npz_read(&f, g_path) == VIT_OK) {
        // Touch every element so ASan sees any array shorter than its count.
        volatile float sink = 0;
        for (int i = 0; i < f.count; i++) {
            const NpzArray *a = &f.arrays[i];
            for (size_t k = 0; k < a->count; k++) sink += a->data[k];
            if (npz_find(&f, a->name) == NULL) abort();
        }
        (void)sink;
        npz_free(&f);
    } else if (vit_error()[0] == 0) {
        abort();  // an error must always come with a message
    }
    return 0;
}
