/* K-quant exact dot products and row dequantization for AVX-512 (F, BW, VL).
 * The fast (integer) path is quant_k_avx2.c's on every x86 vector build:
 * measured here, its 256-bit form is as fast as or faster than a 512-bit one.
 *
 * Every type unpacks a block into a common form (kb): 256 unsigned bytes in
 * value order (u, 0..63; value = u - off), 16 int16 scales and (for the
 * types with a min) 16 int16 mins per 16 values, d and dmin. Weights are
 * made in registers by the float operations of the reference
 * dequantization, so each is bit-equal to gguf.quants.dequantize
 * (dequant_row stores them; the dots differ from a float32 matmul on the
 * dequantized weights only in summation order). Q4_K turns its nibbles into
 * floats through a 16-entry table per sub-block (vpermps), the others
 * through int8 -> int32 -> float. One unpack serves up to QDOT_MAX_ROWS
 * activation rows. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#include "quant_k.h"

#define AI static inline __attribute__((always_inline))

typedef struct {
    __m512i u[4]; /* values 64 c .. 64 c + 63 */
    __m256i sc;   /* int16 scale per 16 values */
    __m256i mn;   /* int16 min per 16 values (Q2_K/Q4_K/Q5_K only) */
    float d, dmin;
} kb;

/* Lanes 0..7 of a vector as 0,0,1,1,..,7,7 and lanes 8..15 likewise. */
static const int16_t DUP_LO[16] __attribute__((aligned(32))) = {0, 0, 1, 1, 2, 2, 3, 3,
                                                                 4, 4, 5, 5, 6, 6, 7, 7};
static const int16_t DUP_HI[16] __attribute__((aligned(32))) = {8,  8,  9,  9,  10, 10, 11, 11,
                                                                 12, 12, 13, 13, 14, 14, 15, 15};

AI __m512i bcast32(const uint8_t *p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
}

/* Low nibbles of 32 bytes for the lower half, high nibbles for the upper. */
AI __m512i nibbles(const uint8_t *p) {
    __m512i w = bcast32(p);
    return _mm512_and_si512(_mm512_mask_srli_epi16(w, 0xFFFF0000u, w, 4), _mm512_set1_epi8(15));
}

AI void k4_common(const uint8_t *b, kb *o) {
    __m256i v = _mm256_cvtepu8_epi16(qk_k4_scales(b));
    o->sc = _mm256_permutexvar_epi16(_mm256_load_si256((const __m256i *)DUP_LO), v);
    o->mn = _mm256_permutexvar_epi16(_mm256_load_si256((const __m256i *)DUP_HI), v);
    o->d = qk_f16(b), o->dmin = qk_f16(b + 2);
}

/* Bytes whose bit (c even: 2c in the lower half, 2c + 1 in the upper) is
 * set in p[l]: the third (Q3_K) or fifth (Q5_K) bit of values 64c + l. */
AI __mmask64 high_bits(__m512i hb, int c) {
    __m512i bit = _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi8((char)(1 << (2 * c))),
                                          _mm512_set1_epi8((char)(1 << (2 * c + 1))));
    return _mm512_test_epi8_mask(hb, bit);
}

AI void unpack_q5k(const uint8_t *b, kb *o) {
    __m512i hb = bcast32(b + 16);
    for (int c = 0; c < 4; c++) {
        __m512i lo = nibbles(b + 48 + 32 * c);
        o->u[c] = _mm512_mask_add_epi8(lo, high_bits(hb, c), lo, _mm512_set1_epi8(16));
    }
    k4_common(b, o);
}

/* 2-bit fields: value 128h + 32s + l is (q[32h + l] >> 2s) & 3; part c takes
 * h = c / 2 and s = 2 (c % 2) (+1 in the upper half). */
AI __m512i twobits(const uint8_t *q, int c) {
    __m512i w = bcast32(q + 32 * (c >> 1));
    int s = 2 * (c & 1);
    __m512i sh = _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16((short)(2 * s)),
                                         _mm512_set1_epi16((short)(2 * s + 2)));
    return _mm512_and_si512(_mm512_srlv_epi16(w, sh), _mm512_set1_epi8(3));
}

AI void unpack_q2k(const uint8_t *b, kb *o) {
    for (int c = 0; c < 4; c++) o->u[c] = twobits(b + 16, c);
    __m128i s = _mm_loadu_si128((const __m128i *)b);
    o->sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(15)));
    o->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(15)));
    o->d = qk_f16(b + 80), o->dmin = qk_f16(b + 82);
}

AI void unpack_q3k(const uint8_t *b, kb *o) {
    __m512i hb = bcast32(b);
    for (int c = 0; c < 4; c++) {
        __m512i lo = twobits(b + 32, c);
        o->u[c] = _mm512_mask_add_epi8(lo, high_bits(hb, c), lo, _mm512_set1_epi8(4));
    }
    /* 16 scales of 6 bits: low nibbles in bytes 0..7, high pairs in 8..11. */
    uint32_t a, bb, c;
    memcpy(&a, b + 96, 4), memcpy(&bb, b + 100, 4), memcpy(&c, b + 104, 4);
    __m128i s = _mm_set_epi32((int)(((bb >> 4) & 0x0F0F0F0F) | ((c >> 2) & 0x30303030)),
                              (int)(((a >> 4) & 0x0F0F0F0F) | (c & 0x30303030)),
                              (int)((bb & 0x0F0F0F0F) | ((c << 2) & 0x30303030)),
                              (int)((a & 0x0F0F0F0F) | ((c << 4) & 0x30303030)));
    o->sc = _mm256_cvtepi8_epi16(_mm_sub_epi8(s, _mm_set1_epi8(32)));
    o->d = qk_f16(b + 108), o->dmin = 0.0f;
}

AI void unpack_q6k(const uint8_t *b, kb *o) {
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512(b + 64 * h), qh = bcast32(b + 128 + 32 * h);
        /* High pairs to bits 4..5: shifts 2s within each half (s = 0, 1 | 2, 3). */
        __m512i up = _mm512_sllv_epi16(qh, _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16(4),
                                                                    _mm512_set1_epi16(2)));
        __m512i dn = _mm512_srlv_epi16(qh, _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16(0),
                                                                    _mm512_set1_epi16(2)));
        /* a | (b & c) as one ternary op (0xF8). */
        o->u[2 * h] = _mm512_ternarylogic_epi32(_mm512_and_si512(up, m2), ql, m4, 0xF8);
        o->u[2 * h + 1] =
            _mm512_ternarylogic_epi32(_mm512_and_si512(dn, m2), _mm512_srli_epi16(ql, 4), m4, 0xF8);
    }
    o->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
    o->d = qk_f16(b + 208), o->dmin = 0.0f;
}

typedef void (*unpack_fn)(const uint8_t *, kb *);

AI float reduce4(const __m512 a[4]) {
    __m512 s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    return _mm512_reduce_add_ps(s);
}

/* -- the exact path -------------------------------------------------------------
 * Generic: the unpacked bytes (minus off) through int32 to float, times the
 * 16-value scale d * sc, minus dmin * mn where the type has a min. */
typedef struct {
    int8_t q[QK] __attribute__((aligned(64)));
    float dl[16] __attribute__((aligned(64))), ml[16] __attribute__((aligned(64)));
} kf;

AI void to_floats(const kb *w, kf *f, const int off, const int has_min) {
    for (int c = 0; c < 4; c++)
        _mm512_store_si512(f->q + 64 * c, _mm512_sub_epi8(w->u[c], _mm512_set1_epi8((char)off)));
    _mm512_store_ps(f->dl, _mm512_mul_ps(_mm512_set1_ps(w->d),
                                         _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(w->sc))));
    if (has_min)
        _mm512_store_ps(f->ml, _mm512_mul_ps(_mm512_set1_ps(w->dmin),
                                             _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(w->mn))));
}

/* Weights 16 j .. 16 j + 15 of the block: dl * q (- ml), as the reference. */
AI __m512 weights16(const kf *f, int j, const int has_min) {
    __m128i q = _mm_load_si128((const __m128i *)(f->q + 16 * j));
    __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
    v = _mm512_mul_ps(v, _mm512_set1_ps(f->dl[j]));
    return has_min ? _mm512_sub_ps(v, _mm512_set1_ps(f->ml[j])) : v;
}

AI void exact_rows(const uint8_t *row, int64_t nblocks, const float *x, int64_t ldx,
                   const int M, float *out, int64_t ldo, const int bytes, unpack_fn unpack,
                   const int off, const int has_min) {
    /* 4 chains per row: at one row FMA latency, not throughput, sets the pace */
    __m512 acc[QDOT_MAX_ROWS][4];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < 4; k++) acc[i][k] = _mm512_setzero_ps();
    /* The next block is unpacked one block ahead (see exact_q4k_rows). */
    kf f[2];
    kb w;
    unpack(row, &w);
    to_floats(&w, &f[0], off, has_min);
    for (int64_t blk = 0; blk < nblocks; blk++) {
        if (blk + 1 < nblocks) {
            unpack(row + (blk + 1) * bytes, &w);
            to_floats(&w, &f[(blk + 1) & 1], off, has_min);
        }
        const kf *fb = &f[blk & 1];
        const float *xb = x + blk * QK;
        for (int j0 = 0; j0 < 16; j0 += 4)
            for (int k = 0; k < 4; k++) { /* k constant once unrolled: acc stays in registers */
                __m512 v = weights16(fb, j0 + k, has_min);
                for (int i = 0; i < M; i++)
                    acc[i][k] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xb + i * ldx + 16 * (j0 + k)),
                                                acc[i][k]);
            }
    }
    for (int i = 0; i < M; i++) out[i * ldo] = reduce4(acc[i]);
}

AI void dequant_rows(const uint8_t *row, int64_t nblocks, float *out, const int bytes,
                     unpack_fn unpack, const int off, const int has_min) {
    kf f;
    for (int64_t blk = 0; blk < nblocks; blk++) {
        kb w;
        unpack(row + blk * bytes, &w);
        to_floats(&w, &f, off, has_min);
        for (int j = 0; j < 16; j++)
            _mm512_storeu_ps(out + blk * QK + 16 * j, weights16(&f, j, has_min));
    }
}

/* Q4_K: per sub-block a table of its 16 possible values (d sc k - dmin m),
 * indexed by the nibbles themselves: vpermps reads only the low 4 bits of
 * each index, so the low nibble needs no mask. */
AI void q4k_tables(const uint8_t *b, float t[16]) {
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(qk_k4_scales(b)));
    /* d in lanes 0-7, dmin in 8-15, from one conversion of the first 4 bytes */
    int dw;
    memcpy(&dw, b, 4);
    __m128 h = _mm_cvtph_ps(_mm_cvtsi32_si128(dw));
    __m512i lanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 dd = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(h));
    _mm512_store_ps(t, _mm512_mul_ps(dd, f)); /* d sc[0..7], dmin m[0..7] */
}

/* Weights 64 g .. 64 g + 63 of the block. */
AI void q4k_weights64(const uint8_t *b, const float t[16], int g, __m512 w[4]) {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    /* mul then sub, as the reference: each table value is bit-equal to it */
    __m512 lo = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(t[2 * g]), iota),
                              _mm512_set1_ps(t[8 + 2 * g]));
    __m512 hi = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(t[2 * g + 1]), iota),
                              _mm512_set1_ps(t[9 + 2 * g]));
    const uint8_t *qs = b + 16 + 32 * g;
    __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
    w[0] = _mm512_permutexvar_ps(i0, lo), w[1] = _mm512_permutexvar_ps(i1, lo);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(i0, 4), hi);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(i1, 4), hi);
}

AI void exact_q4k_rows(const uint8_t *row, int64_t nblocks, const float *x, int64_t ldx,
                       const int M, float *out, int64_t ldo) {
    __m512 acc[QDOT_MAX_ROWS][4];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < 4; k++) acc[i][k] = _mm512_setzero_ps();
    /* The scales of the next block are decoded one block ahead: their chain
     * of latencies then overlaps this block's work instead of stalling it. */
    float t[2][16] __attribute__((aligned(64)));
    q4k_tables(row, t[0]);
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const uint8_t *b = row + blk * Q4K_BYTES;
        if (blk + 1 < nblocks) q4k_tables(b + Q4K_BYTES, t[(blk + 1) & 1]);
        const float *xb = x + blk * QK;
        for (int g = 0; g < 4; g++) {
            __m512 w[4];
            q4k_weights64(b, t[blk & 1], g, w);
            for (int i = 0; i < M; i++)
                for (int k = 0; k < 4; k++) {
                    __m512 xv = _mm512_loadu_ps(xb + i * ldx + 64 * g + 16 * k);
                    acc[i][k] = _mm512_fmadd_ps(w[k], xv, acc[i][k]);
                }
        }
    }
    for (int i = 0; i < M; i++) out[i * ldo] = reduce4(acc[i]);
}

static void dequant_q4k_row(const uint8_t *row, int64_t nblocks, float *out) {
    float t[16] __attribute__((aligned(64)));
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const uint8_t *b = row + blk * Q4K_BYTES;
        q4k_tables(b, t);
        for (int g = 0; g < 4; g++) {
            __m512 w[4];
            q4k_weights64(b, t, g, w);
            for (int k = 0; k < 4; k++) _mm512_storeu_ps(out + blk * QK + 64 * g + 16 * k, w[k]);
        }
    }
}

/* -- entry points: one instance per row count ----------------------------------- */

#define BY_ROWS(body)                \
    switch (m) {                     \
    case 1: body(1); break;          \
    case 2: body(2); break;          \
    case 3: body(3); break;          \
    default: body(4); break;         \
    }

#define DEFINE(t)                                                        \
    void qk512_##t##_exact(QK_DOT_EXACT_ARGS) {                          \
        _Static_assert(QDOT_MAX_ROWS == 4, "BY_ROWS covers 1..4 rows"); \
        BY_ROWS(EXACT_##t)                                               \
    }

#define EXACT_ARGS row, nblocks, x, ldx
#define EXACT_q2k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q2K_BYTES, unpack_q2k, 0, 1)
#define EXACT_q3k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q3K_BYTES, unpack_q3k, 4, 0)
#define EXACT_q4k(M) exact_q4k_rows(EXACT_ARGS, M, out, ldo)
#define EXACT_q5k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q5K_BYTES, unpack_q5k, 0, 1)
#define EXACT_q6k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q6K_BYTES, unpack_q6k, 32, 0)

DEFINE(q2k)
DEFINE(q3k)
DEFINE(q4k)
DEFINE(q5k)
DEFINE(q6k)

void qk512_q2k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q2K_BYTES, unpack_q2k, 0, 1);
}
void qk512_q3k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q3K_BYTES, unpack_q3k, 4, 0);
}
void qk512_q4k_dequant(QK_DEQUANT_ARGS) {
    dequant_q4k_row(row, nblocks, out);
}
void qk512_q5k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q5K_BYTES, unpack_q5k, 0, 1);
}
void qk512_q6k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q6K_BYTES, unpack_q6k, 32, 0);
}
#endif
