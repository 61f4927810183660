// fp32 bit patterns that exercise a conversion to bf16: ties both ways, the largest finite
// (rounds to inf), denormals (ties too), infinities, quiet and signalling NaNs of both signs,
// zeros; then seeded random patterns with many ties and denormals mixed in.
#pragma once
#include <stddef.h>
#include <stdint.h>

static inline void bf16_test_bits(uint32_t *bits, size_t n) {
    static const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u, 0xbf808000u, 0xbf818000u,
                                       0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0xff7fffffu, 0x00000001u, 0x00008000u,
                                       0x00018000u, 0x007fffffu, 0x807fffffu, 0x80008000u, 0x00400000u, 0x7f800000u,
                                       0xff800000u, 0x7f800001u, 0x7fbfffffu, 0x7fc00000u, 0xffc00001u, 0xff800001u,
                                       0x7fffffffu, 0x00000000u, 0x80000000u, 0x00010000u};
    size_t ns = sizeof special / sizeof special[0];
    uint64_t st = 99;
    for (size_t i = 0; i < n; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        bits[i] = i < ns ? special[i] : (uint32_t)(st >> 32);
        if (i % 7 == 1) bits[i] = (bits[i] & 0xffff0000u) | 0x8000u;  // many ties
        if (i % 11 == 2) bits[i] &= 0x807fffffu;                          // many denormals
    }
}
