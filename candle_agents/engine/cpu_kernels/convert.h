/* float32 to 16-bit floats, rounded to nearest even as torch's .to() does. */
#ifndef CANDLE_CONVERT_H
#define CANDLE_CONVERT_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* float32 to IEEE half, round to nearest even (as torch's .to(float16)). */
static inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return sign | 0x7E00u; /* NaN */
    int32_t e = (int32_t)(ax >> 23) - 112;      /* the half's biased exponent */
    if (e >= 31) return sign | 0x7C00u;         /* 2^16 and up: infinity */
    if (e <= 0) {                               /* a half subnormal, or zero */
        if (e < -10) return sign;
        uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
        int shift = 14 - e;
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return sign | (uint16_t)h;
    }
    uint32_t h = ((uint32_t)e << 10) | ((ax >> 13) & 0x3FFu), rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry may reach infinity */
    return sign | (uint16_t)h;
}

/* float32 to bfloat16, round to nearest even (as torch's .to(bfloat16)). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* n finite floats to bfloat16 (NaN payloads are not kept, unlike f32_to_bf16). */
static inline void f32_to_bf16_row(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
    for (; i + 16 <= n; i += 16) {
        __m512i x = _mm512_castps_si512(_mm512_loadu_ps(src + i));
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), one);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(half, odd)), 16);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(r));
    }
#endif
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

#endif
