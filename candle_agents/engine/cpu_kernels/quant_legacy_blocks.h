/* Unpacking the 32-value GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), shared by
 * quant_legacy.c (dequantization, exact dots) and quant_legacy_fast.c
 * (integer dots). Private to those two files.
 *
 * Block layouts (ggml-common.h): an fp16 scale d (and an fp16 min m for the
 * _1 types), for Q5 a little-endian uint32 of 5th bits (bit j for value j),
 * then the values: Q4/Q5 keep value j in the low nibble of byte j and value
 * j + 16 in its high nibble; Q8_0 stores 32 int8.
 *
 * The float unpackers compute in gguf.quants' float32 operation order
 * (Q4_0: d * (q - 8); Q4_1: d * q + m; Q5_0: d * (q - 16); Q5_1: d * q + m;
 * Q8_0: q * d), so dequantization matches it bit for bit. These files are
 * built with -std=c11, where GCC does not contract a * b + c into an FMA
 * (which would change the last bit of Q4_1 / Q5_1).
 */
#ifndef CANDLE_QUANT_LEGACY_BLOCKS_H
#define CANDLE_QUANT_LEGACY_BLOCKS_H
#include <stdint.h>
#include <string.h>

#include "quant.h"

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE uint16_t rd16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

INLINE uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* fp16 -> float32 is exact either way. */
INLINE float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        float f = (float)man * 0x1p-24f; /* zero or subnormal, exact */
        return sign ? -f : f;
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

INLINE float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

INLINE const act_q8_32 *act_row(const void *xq, int64_t stride, int r) {
    return (const act_q8_32 *)((const char *)xq + r * stride);
}

/* ---- 32 float values per block -------------------------------------------------- */

#if defined(__AVX512F__)
/* Values 0-15 and 16-31 of a block. Nibbles become floats through a 16-entry
 * table (vpermps reads the low 4 bits of each index). */
typedef struct {
    __m512 lo, hi;
} w32f;

INLINE __m512 nib_table(float base) {
    return _mm512_add_ps(_mm512_set1_ps(base),
                         _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

INLINE __m512i nib_bytes(const uint8_t *qs) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
}

INLINE w32f q4_0_f(const uint8_t *b) {
    __m512 d = _mm512_set1_ps(half_to_float(rd16(b))), t = nib_table(-8.0f);
    __m512i v = nib_bytes(b + 2);
    w32f w = {_mm512_mul_ps(d, _mm512_permutexvar_ps(v, t)),
              _mm512_mul_ps(d, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t))};
    return w;
}

INLINE w32f q4_1_f(const uint8_t *b) {
    __m512 d = _mm512_set1_ps(half_to_float(rd16(b))), t = nib_table(0.0f);
    __m512 m = _mm512_set1_ps(half_to_float(rd16(b + 2)));
    __m512i v = nib_bytes(b + 4);
    w32f w = {_mm512_add_ps(_mm512_mul_ps(d, _mm512_permutexvar_ps(v, t)), m),
              _mm512_add_ps(_mm512_mul_ps(d, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t)),
                            m)};
    return w;
}

/* The 5th bit adds 16 (exact in float) to the lanes its mask bit selects. */
INLINE w32f q5_q(const uint8_t *qs, uint32_t qh, float base) {
    __m512 t = nib_table(base), sixteen = _mm512_set1_ps(16.0f);
    __m512i v = nib_bytes(qs);
    __m512 lo = _mm512_permutexvar_ps(v, t), hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t);
    w32f q = {_mm512_mask_add_ps(lo, (__mmask16)qh, lo, sixteen),
              _mm512_mask_add_ps(hi, (__mmask16)(qh >> 16), hi, sixteen)};
    return q;
}

INLINE w32f q5_0_f(const uint8_t *b) {
    __m512 d = _mm512_set1_ps(half_to_float(rd16(b)));
    w32f q = q5_q(b + 6, rd32(b + 2), -16.0f);
    w32f w = {_mm512_mul_ps(d, q.lo), _mm512_mul_ps(d, q.hi)};
    return w;
}

INLINE w32f q5_1_f(const uint8_t *b) {
    __m512 d = _mm512_set1_ps(half_to_float(rd16(b)));
    __m512 m = _mm512_set1_ps(half_to_float(rd16(b + 2)));
    w32f q = q5_q(b + 8, rd32(b + 4), 0.0f);
    w32f w = {_mm512_add_ps(_mm512_mul_ps(d, q.lo), m), _mm512_add_ps(_mm512_mul_ps(d, q.hi), m)};
    return w;
}

INLINE w32f q8_0_f(const uint8_t *b) {
    __m512 d = _mm512_set1_ps(half_to_float(rd16(b)));
    __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
    __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)));
    w32f w = {_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d)};
    return w;
}

/* For the exact dots, which need float32 accuracy but not gguf's bits: the
 * 16 possible weights of a block, d * (i - o) + m, computed once into the
 * table that vpermps indexes (one rounding instead of two; fewer steps).
 * d and m are converted for 16 blocks at a time into an array, then
 * broadcast from memory (a load, not a shuffle: vpmovzxbd and vpermps keep
 * the shuffle port busy). A gather is slower here (microcoded on CPUs with
 * the GDS mitigation), and so is one vector conversion of 16 scalar-stored
 * fp16 values (the load cannot be forwarded from the stores). */
INLINE void block_scales(const uint8_t *b, int bytes, int n, int has_min, float *d, float *m) {
    for (int i = 0; i < n; i++) {
        d[i] = half_to_float(rd16(b + i * bytes));
        if (has_min) m[i] = half_to_float(rd16(b + i * bytes + 2));
    }
}

INLINE w32f table_w(const uint8_t *qs, __m512 t) {
    __m512i v = nib_bytes(qs);
    w32f w = {_mm512_permutexvar_ps(v, t), _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t)};
    return w;
}

INLINE w32f q4_0_dot_w(const uint8_t *b, float d, float m) {
    (void)m;
    return table_w(b + 2, _mm512_mul_ps(_mm512_set1_ps(d), nib_table(-8.0f)));
}

INLINE w32f q4_1_dot_w(const uint8_t *b, float d, float m) {
    return table_w(b + 4, _mm512_fmadd_ps(_mm512_set1_ps(d), nib_table(0.0f), _mm512_set1_ps(m)));
}

/* Q5: the table covers q < 16; the 5th bit adds 16 d. */
INLINE w32f q5_dot_w(const uint8_t *qs, uint32_t qh, float d, __m512 t) {
    __m512 d16 = _mm512_set1_ps(16.0f * d);
    w32f w = table_w(qs, t);
    w.lo = _mm512_mask_add_ps(w.lo, (__mmask16)qh, w.lo, d16);
    w.hi = _mm512_mask_add_ps(w.hi, (__mmask16)(qh >> 16), w.hi, d16);
    return w;
}

INLINE w32f q5_0_dot_w(const uint8_t *b, float d, float m) {
    (void)m;
    return q5_dot_w(b + 6, rd32(b + 2), d, _mm512_mul_ps(_mm512_set1_ps(d), nib_table(-16.0f)));
}

INLINE w32f q5_1_dot_w(const uint8_t *b, float d, float m) {
    __m512 t = _mm512_fmadd_ps(_mm512_set1_ps(d), nib_table(0.0f), _mm512_set1_ps(m));
    return q5_dot_w(b + 8, rd32(b + 4), d, t);
}

INLINE w32f q8_0_dot_w(const uint8_t *b, float d, float m) {
    (void)m;
    __m512 vd = _mm512_set1_ps(d);
    __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
    __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)));
    w32f w = {_mm512_mul_ps(_mm512_cvtepi32_ps(lo), vd), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), vd)};
    return w;
}


#elif defined(__AVX2__)
/* Values 8g .. 8g + 7 of a block in v[g]. */
typedef struct {
    __m256 v[4];
} w32f;

/* Nibbles as int32: low nibbles of bytes 0-7, 8-15, then high nibbles. */
INLINE void nib_ints(const uint8_t *qs, __m256i q[4]) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

INLINE void add_fifth_bits(uint32_t qh, __m256i q[4]) {
    __m256i bits = _mm256_set1_epi32((int)qh), one = _mm256_set1_epi32(1);
    for (int g = 0; g < 4; g++) {
        __m256i sh = _mm256_setr_epi32(8 * g, 8 * g + 1, 8 * g + 2, 8 * g + 3, 8 * g + 4,
                                       8 * g + 5, 8 * g + 6, 8 * g + 7);
        __m256i b = _mm256_and_si256(_mm256_srlv_epi32(bits, sh), one);
        q[g] = _mm256_or_si256(q[g], _mm256_slli_epi32(b, 4));
    }
}

/* d * (q - off) (min == NULL) or d * q + m */
INLINE w32f scale_ints(__m256i q[4], int off, const uint8_t *dp, const uint8_t *mp) {
    __m256 d = _mm256_set1_ps(half_to_float(rd16(dp)));
    __m256 m = mp ? _mm256_set1_ps(half_to_float(rd16(mp))) : _mm256_setzero_ps();
    w32f w;
    for (int g = 0; g < 4; g++) {
        __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(q[g], _mm256_set1_epi32(off)));
        w.v[g] = mp ? _mm256_add_ps(_mm256_mul_ps(d, f), m) : _mm256_mul_ps(d, f);
    }
    return w;
}

INLINE w32f q4_0_f(const uint8_t *b) {
    __m256i q[4];
    nib_ints(b + 2, q);
    return scale_ints(q, 8, b, 0);
}

INLINE w32f q4_1_f(const uint8_t *b) {
    __m256i q[4];
    nib_ints(b + 4, q);
    return scale_ints(q, 0, b, b + 2);
}

INLINE w32f q5_0_f(const uint8_t *b) {
    __m256i q[4];
    nib_ints(b + 6, q);
    add_fifth_bits(rd32(b + 2), q);
    return scale_ints(q, 16, b, 0);
}

INLINE w32f q5_1_f(const uint8_t *b) {
    __m256i q[4];
    nib_ints(b + 8, q);
    add_fifth_bits(rd32(b + 4), q);
    return scale_ints(q, 0, b, b + 2);
}

INLINE w32f q8_0_f(const uint8_t *b) {
    __m256 d = _mm256_set1_ps(half_to_float(rd16(b)));
    w32f w;
    for (int g = 0; g < 4; g++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * g)));
        w.v[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
    return w;
}
#endif

/* ---- 32 unsigned 8-bit values per block, for the integer dots ----------------- */

#if defined(__AVX2__)
/* Nibbles as bytes in value order (low nibbles, then high). */
INLINE __m256i nib_u8(const uint8_t *qs) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* 0x10 in byte j where bit j of qh is set. */
INLINE __m256i fifth_bits_u8(uint32_t qh) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10));
#else
    /* byte j takes byte j / 8 of qh, then tests its bit j % 8 */
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i q = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick);
    q = _mm256_cmpeq_epi8(_mm256_and_si256(q, bit), bit);
    return _mm256_and_si256(q, _mm256_set1_epi8(0x10));
#endif
}

/* Sums of 4 products of unsigned u and signed s bytes, as 8 int32. No
 * saturation for the values used here: maddubs's int16 pair sums stay below
 * 2 * 128 * 127. */
INLINE __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* The integer dots (quant_legacy_fast.c). */
void q4_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                   float *out, int64_t ldo);
void q4_1_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                   float *out, int64_t ldo);
void q5_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                   float *out, int64_t ldo);
void q5_1_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                   float *out, int64_t ldo);
void q8_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                   float *out, int64_t ldo);

/* The 8-row-group dots (quant_legacy_fast.c), where they pay: with 256-bit
 * integer multiply-adds, and for Q8_0 only with VNNI (see there). */
#define DOT_X8_ARGS                                                                          \
    const uint8_t *w, int64_t row_bytes, int nrows, int64_t nb, const void *xg,              \
        int64_t xg_stride, int ngroups, float *out, int64_t ldo
void q4_0_dot_x8(DOT_X8_ARGS);
void q4_1_dot_x8(DOT_X8_ARGS);
void q5_0_dot_x8(DOT_X8_ARGS);
void q5_1_dot_x8(DOT_X8_ARGS);
void q8_0_dot_x8(DOT_X8_ARGS);
#if defined(__AVX2__)
#define HAVE_X8 1
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
#define HAVE_X8_Q8 1
#endif
#endif
#if defined(HAVE_X8)
#define X8_FN(f) f
#else
#define X8_FN(f) 0
#endif
#if defined(HAVE_X8_Q8)
#define X8_Q8_FN(f) f
#else
#define X8_Q8_FN(f) 0
#endif

#endif
