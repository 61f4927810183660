// CRC-32C (Castagnoli), as TFRecord framing uses it, and TFRecord's "masked" form.
#pragma once
#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *data, size_t n);  // crc = 0 to start
// The portable table path only (tests compare it with the hardware path).
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t n);
static inline uint32_t crc32c_masked(const void *data, size_t n) {
    uint32_t c = crc32c(0, data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
