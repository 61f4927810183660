// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78). Every TFRecord byte goes through
// here twice per epoch, so it has a hardware path (SSE4.2 crc32 instruction, 8 bytes per
// step) chosen at run time, and a slicing-by-8 table path for other CPUs.
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82F63B78u

static uint32_t g_table[8][256];
static int g_have_hw;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

// Table k maps a byte to its CRC contribution when followed by k more zero bytes.
static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++) c = (c >> 1) ^ (POLY & (0u - (c & 1)));
        g_table[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            g_table[k][i] = (g_table[k - 1][i] >> 8) ^ g_table[0][g_table[k - 1][i] & 0xff];
#if defined(__x86_64__)
    __builtin_cpu_init();  // may run before the constructors that normally do this
    g_have_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n) {
    // Byte steps until p is 8-aligned, so the 8-byte loads below are aligned.
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ g_table[0][(c ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = g_table[7][lo & 0xff] ^ g_table[6][(lo >> 8) & 0xff] ^ g_table[5][(lo >> 16) & 0xff] ^
            g_table[4][lo >> 24] ^ g_table[3][hi & 0xff] ^ g_table[2][(hi >> 8) & 0xff] ^
            g_table[1][(hi >> 16) & 0xff] ^ g_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ g_table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi(c, *p++);
        n--;
    }
    unsigned long long c64 = c;
    while (n >= 8) {
        unsigned long long v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t n) {
    pthread_once(&g_once, crc32c_init);
    const uint8_t *p = data;
    uint32_t c = ~crc;  // the pre/post inversion lets calls chain: crc32c(crc32c(0,a),b) = crc(ab)
    if (n == 0) return crc;
#if defined(__x86_64__)
    if (g_have_hw) return ~crc_hw(c, p, n);
#endif
    return ~crc_table(c, p, n);
}

// For tests: the table path regardless of the CPU, to check both paths agree.
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t n) {
    pthread_once(&g_once, crc32c_init);
    if (n == 0) return crc;
    return ~crc_table(~crc, data, n);
}
