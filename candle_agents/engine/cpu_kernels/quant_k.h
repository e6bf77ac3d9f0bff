/* Shared by the K-quant files (quant_k.c: formats, portable C and the type
 * table; quant_k_avx512.c: AVX-512 exact dots and dequantization;
 * quant_k_avx2.c: the 256-bit paths, the fast one on every x86 vector build).
 *
 * Block layouts (256 values each; GGML's ggml-common.h):
 *   Q2_K  84 B: scales[16] (low nibble scale, high nibble min, per 16 values),
 *               qs[64] (2-bit), fp16 d, fp16 dmin
 *   Q3_K 110 B: hmask[32] (3rd bit), qs[64] (low 2 bits), scales[12]
 *               (16 packed 6-bit scales, offset 32), fp16 d
 *   Q4_K 144 B: fp16 d, fp16 dmin, scales[12] (8 packed 6-bit scales and
 *               8 mins, per 32 values), qs[128] (nibbles)
 *   Q5_K 176 B: as Q4_K, then qh[32] (5th bit) before qs[128]
 *   Q6_K 210 B: ql[128] (low nibbles), qh[64] (high 2 bits), scales[16]
 *               (int8, per 16 values), fp16 d
 * Value order (v = index in the block):
 *   Q2_K/Q3_K low bits: v = 128 h + 32 s + l -> (qs[32 h + l] >> 2 s) & 3
 *   Q3_K/Q5_K high bit:  v = 32 b + l       -> (hmask[l] >> b) & 1
 *   Q4_K/Q5_K nibbles:   v = 64 g + 32 s + l -> (qs[32 g + l] >> 4 s) & 15
 *   Q6_K low nibbles:    v = 128 h + 64 s + t -> (ql[64 h + t] >> 4 s) & 15
 *   Q6_K high bits:      v = 128 h + 32 s + l -> (qh[32 h + l] >> 2 s) & 3
 */
#ifndef CANDLE_QUANT_K_H
#define CANDLE_QUANT_K_H
#include <stdint.h>
#include <string.h>

#include "quant.h"

#define QK 256
#define Q2K_BYTES 84
#define Q3K_BYTES 110
#define Q4K_BYTES 144
#define Q5K_BYTES 176
#define Q6K_BYTES 210

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__F16C__)
static inline float qk_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#else
static inline float qk_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, u;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in float */
        float f = (float)mant * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= sign;
    } else if (exp == 31) {
        u = sign | 0x7F800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif

/* Q4_K/Q5_K: the 6-bit scales and mins of the 8 sub-blocks of 32. */
static inline void qk_scale_min_k4(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

#if defined(__AVX2__)
/* Q4_K/Q5_K: the 8 scales then the 8 mins as bytes, from the block's first
 * 16 bytes (d, dmin, scales[12]) in one load: bytes 4-7 hold scales 0-3
 * (low 6 bits), 8-11 mins 0-3, 12-15 the low 4 bits of scales 4-7 (low
 * nibble) and mins 4-7 (high nibble); the top 2 bits of bytes 4-11 are
 * the high bits of scales and mins 4-7. */
static inline __m128i qk_k4_scales(const uint8_t *b) {
    const __m128i v = _mm_loadu_si128((const __m128i *)b);
    /* P: sources of the low parts in each output position; Q: of the top 2 bits */
    __m128i p = _mm_shuffle_epi8(
        v, _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    __m128i q = _mm_shuffle_epi8(
        v, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11));
    const __m128i lo6 = _mm_setr_epi8(63, 63, 63, 63, 0, 0, 0, 0, 63, 63, 63, 63, 0, 0, 0, 0);
    const __m128i nib_lo = _mm_setr_epi8(0, 0, 0, 0, 15, 15, 15, 15, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128i nib_hi = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
    /* epi16 shifts: bits that cross into the neighbouring byte are masked off */
    __m128i nib =
        _mm_or_si128(_mm_and_si128(p, nib_lo), _mm_and_si128(_mm_srli_epi16(p, 4), nib_hi));
    __m128i top = _mm_and_si128(_mm_srli_epi16(q, 2), _mm_set1_epi8(0x30));
    return _mm_or_si128(_mm_and_si128(p, lo6), _mm_or_si128(nib, top));
}
#endif

/* Q3_K: the 16 signed scales (6 bits, offset 32), one per 16 values. */
static inline void qk_scales_q3(const uint8_t *s, int8_t sc[16]) {
    for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
        int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        sc[i] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* The vector paths (each file defines its own where the target allows). */
#define QK_DOT_EXACT_ARGS                                                                \
    const uint8_t *row, int64_t nblocks, const float *x, int64_t ldx, int m, float *out, \
        int64_t ldo
#define QK_DOT_FAST_ARGS                                                                  \
    const uint8_t *row, int64_t nblocks, const void *xq, int64_t xq_stride, int m, float *out, \
        int64_t ldo

#define QK_DEQUANT_ARGS const uint8_t *row, int64_t nblocks, float *out

#define QK_X8_ARGS                                                                   \
    const uint8_t *w, int64_t row_bytes, int nrows, int64_t nblocks, const void *xg, \
        int64_t xg_stride, int ngroups, float *out, int64_t ldo

#define QK_DECLARE(name)                  \
    void name##_exact(QK_DOT_EXACT_ARGS); \
    void name##_fast(QK_DOT_FAST_ARGS);   \
    void name##_dequant(QK_DEQUANT_ARGS); \
    void name##_x8(QK_X8_ARGS);
/* qk512_*_fast and _x8 are not defined: AVX-512 builds take qk256_*'s. */
QK_DECLARE(qk512_q2k)
QK_DECLARE(qk512_q3k)
QK_DECLARE(qk512_q4k)
QK_DECLARE(qk512_q5k)
QK_DECLARE(qk512_q6k)
QK_DECLARE(qk256_q2k)
QK_DECLARE(qk256_q3k)
QK_DECLARE(qk256_q4k)
QK_DECLARE(qk256_q5k)
QK_DECLARE(qk256_q6k)
#undef QK_DECLARE

#endif
