/* The 32-value GGUF block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float
 * types (F32, F16, BF16, blocks of one value) for the quantized matmuls:
 * dequantization, the exact dots and the ops table. The integer dots are in
 * quant_legacy_fast.c, the block unpacking in quant_legacy_blocks.h.
 *
 * The exact dots unpack each block to floats as dequantization does, then
 * accumulate x * w with FMAs in float32: per row, an unpacked block serves
 * every x row of the call (up to QDOT_MAX_ROWS).
 */
#include "quant_legacy_blocks.h"

/* ---- dequantization ------------------------------------------------------------- */

#if defined(__AVX512F__)
#define DEQUANT(name, unpack)                                                                \
    static void name(const uint8_t *b, float *out) {                                         \
        w32f w = unpack(b);                                                                  \
        _mm512_storeu_ps(out, w.lo);                                                         \
        _mm512_storeu_ps(out + 16, w.hi);                                                    \
    }
#elif defined(__AVX2__)
#define DEQUANT(name, unpack)                                                                \
    static void name(const uint8_t *b, float *out) {                                         \
        w32f w = unpack(b);                                                                  \
        for (int g = 0; g < 4; g++) _mm256_storeu_ps(out + 8 * g, w.v[g]);                   \
    }
#endif

#if defined(DEQUANT)
DEQUANT(q4_0_dequant, q4_0_f)
DEQUANT(q4_1_dequant, q4_1_f)
DEQUANT(q5_0_dequant, q5_0_f)
DEQUANT(q5_1_dequant, q5_1_f)
DEQUANT(q8_0_dequant, q8_0_f)
#else
static void q4_0_dequant(const uint8_t *b, float *out) {
    float d = half_to_float(rd16(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        out[j] = d * (float)((int)(qs[j] & 0x0F) - 8);
        out[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
    }
}

static void q4_1_dequant(const uint8_t *b, float *out) {
    float d = half_to_float(rd16(b)), m = half_to_float(rd16(b + 2));
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        out[j] = d * (float)(qs[j] & 0x0F) + m;
        out[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

static void q5_0_dequant(const uint8_t *b, float *out) {
    float d = half_to_float(rd16(b));
    uint32_t qh = rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        out[j] = d * (float)(lo - 16);
        out[j + 16] = d * (float)(hi - 16);
    }
}

static void q5_1_dequant(const uint8_t *b, float *out) {
    float d = half_to_float(rd16(b)), m = half_to_float(rd16(b + 2));
    uint32_t qh = rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        out[j] = d * (float)lo + m;
        out[j + 16] = d * (float)hi + m;
    }
}

static void q8_0_dequant(const uint8_t *b, float *out) {
    float d = half_to_float(rd16(b));
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) out[j] = (float)qs[j] * d;
}
#endif

/* Whole rows: the per-block function inlined, no call per block. */
#define DEQUANT_ROW(name, one, bytes)                                                        \
    static void name(const uint8_t *row, int64_t nb, float *out) {                           \
        for (int64_t b = 0; b < nb; b++) one(row + b * bytes, out + 32 * b);                 \
    }
DEQUANT_ROW(q4_0_dequant_row, q4_0_dequant, 18)
DEQUANT_ROW(q4_1_dequant_row, q4_1_dequant, 20)
DEQUANT_ROW(q5_0_dequant_row, q5_0_dequant, 22)
DEQUANT_ROW(q5_1_dequant_row, q5_1_dequant, 24)
DEQUANT_ROW(q8_0_dequant_row, q8_0_dequant, 34)

/* Float rows: VW values at a time from `load`, the rest one by one. */
#if defined(__AVX512F__)
#define VW 16
typedef __m512 vecf;
INLINE vecf f32_load(const uint8_t *p) { return _mm512_loadu_ps((const float *)p); }
INLINE vecf f16_load(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
INLINE vecf bf16_load(const uint8_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
#define VSTORE _mm512_storeu_ps
#define VLOADX _mm512_loadu_ps
#define VFMA _mm512_fmadd_ps
#define VZERO _mm512_setzero_ps
#define VADD _mm512_add_ps
#define VSUM _mm512_reduce_add_ps
#elif defined(__AVX2__)
#define VW 8
typedef __m256 vecf;
INLINE vecf f32_load(const uint8_t *p) { return _mm256_loadu_ps((const float *)p); }
INLINE vecf f16_load(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
INLINE vecf bf16_load(const uint8_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
#define VSTORE _mm256_storeu_ps
#define VLOADX _mm256_loadu_ps
#define VFMA _mm256_fmadd_ps
#define VZERO _mm256_setzero_ps
#define VADD _mm256_add_ps
#define VSUM hsum256
#endif

INLINE float f32_one(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}
INLINE float f16_one(const uint8_t *p) { return half_to_float(rd16(p)); }
INLINE float bf16_one(const uint8_t *p) { return bf16_to_float(rd16(p)); }

#if defined(VW)
#define DEQUANT_FLOAT_ROW(name, load, one, size)                                             \
    static void name(const uint8_t *row, int64_t n, float *out) {                            \
        int64_t i = 0;                                                                       \
        for (; i + VW <= n; i += VW) VSTORE(out + i, load(row + i * size));                  \
        for (; i < n; i++) out[i] = one(row + i * size);                                     \
    }
#else
#define DEQUANT_FLOAT_ROW(name, load, one, size)                                             \
    static void name(const uint8_t *row, int64_t n, float *out) {                            \
        for (int64_t i = 0; i < n; i++) out[i] = one(row + i * size);                        \
    }
#endif
DEQUANT_FLOAT_ROW(f32_dequant_row, f32_load, f32_one, 4)
DEQUANT_FLOAT_ROW(f16_dequant_row, f16_load, f16_one, 2)
DEQUANT_FLOAT_ROW(bf16_dequant_row, bf16_load, bf16_one, 2)

static void f32_dequant(const uint8_t *b, float *out) { *out = f32_one(b); }
static void f16_dequant(const uint8_t *b, float *out) { *out = f16_one(b); }
static void bf16_dequant(const uint8_t *b, float *out) { *out = bf16_one(b); }

/* ---- exact dots ------------------------------------------------------------------ */

#if defined(__AVX512F__)
/* Blocks in runs of 16 (one scale conversion); two accumulators per row,
 * four for a single row (FMA latency). */
#define DOT_EXACT(name, unpack, bytes, has_min)                                              \
    INLINE void name##_m(const uint8_t *row, int64_t nb, const float *x, int64_t ldx,        \
                         const int m, float *out, int64_t ldo) {                             \
        __m512 a0[QDOT_MAX_ROWS], a1[QDOT_MAX_ROWS], c0 = _mm512_setzero_ps(), c1 = c0;      \
        for (int r = 0; r < m; r++) a0[r] = a1[r] = _mm512_setzero_ps();                     \
        for (int64_t b0 = 0; b0 < nb; b0 += 16) {                                            \
            int n = nb - b0 < 16 ? (int)(nb - b0) : 16, i = 0;                               \
            const uint8_t *blk = row + b0 * bytes;                                           \
            const float *xb = x + b0 * 32;                                                   \
            float ds[16], ms[16];                                                            \
            block_scales(blk, bytes, n, has_min, ds, ms);                                    \
            if (m == 1) {                                                                    \
                for (; i + 2 <= n; i += 2) {                                                 \
                    w32f w = unpack(blk + i * bytes, ds[i], ms[i]);                          \
                    w32f v = unpack(blk + (i + 1) * bytes, ds[i + 1], ms[i + 1]);            \
                    const float *xr = xb + i * 32;                                           \
                    a0[0] = _mm512_fmadd_ps(w.lo, _mm512_loadu_ps(xr), a0[0]);               \
                    a1[0] = _mm512_fmadd_ps(w.hi, _mm512_loadu_ps(xr + 16), a1[0]);          \
                    c0 = _mm512_fmadd_ps(v.lo, _mm512_loadu_ps(xr + 32), c0);                \
                    c1 = _mm512_fmadd_ps(v.hi, _mm512_loadu_ps(xr + 48), c1);                \
                }                                                                            \
            }                                                                                \
            for (; i < n; i++) {                                                             \
                w32f w = unpack(blk + i * bytes, ds[i], ms[i]);                              \
                for (int r = 0; r < m; r++) {                                                \
                    const float *xr = xb + r * ldx + i * 32;                                 \
                    a0[r] = _mm512_fmadd_ps(w.lo, _mm512_loadu_ps(xr), a0[r]);               \
                    a1[r] = _mm512_fmadd_ps(w.hi, _mm512_loadu_ps(xr + 16), a1[r]);          \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        a0[0] = _mm512_add_ps(a0[0], c0);                                                    \
        a1[0] = _mm512_add_ps(a1[0], c1);                                                    \
        for (int r = 0; r < m; r++)                                                          \
            out[r * ldo] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));                \
    }
#elif defined(__AVX2__)
#define DOT_EXACT(name, unpack, bytes, has_min)                                              \
    INLINE void name##_m(const uint8_t *row, int64_t nb, const float *x, int64_t ldx,        \
                         const int m, float *out, int64_t ldo) {                             \
        __m256 a0[QDOT_MAX_ROWS], a1[QDOT_MAX_ROWS];                                         \
        for (int r = 0; r < m; r++) a0[r] = a1[r] = _mm256_setzero_ps();                     \
        for (int64_t b = 0; b < nb; b++) {                                                   \
            w32f w = unpack(row + b * bytes);                                                \
            for (int r = 0; r < m; r++) {                                                    \
                const float *xr = x + r * ldx + b * 32;                                      \
                a0[r] = _mm256_fmadd_ps(w.v[0], _mm256_loadu_ps(xr), a0[r]);                 \
                a1[r] = _mm256_fmadd_ps(w.v[1], _mm256_loadu_ps(xr + 8), a1[r]);             \
                a0[r] = _mm256_fmadd_ps(w.v[2], _mm256_loadu_ps(xr + 16), a0[r]);            \
                a1[r] = _mm256_fmadd_ps(w.v[3], _mm256_loadu_ps(xr + 24), a1[r]);            \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < m; r++) out[r * ldo] = hsum256(_mm256_add_ps(a0[r], a1[r]));    \
    }
#else
/* 32 partial sums per row keep the loops vectorisable by the compiler. */
#define DOT_EXACT(name, deq, bytes, has_min)                                                 \
    INLINE void name##_m(const uint8_t *row, int64_t nb, const float *x, int64_t ldx,        \
                         const int m, float *out, int64_t ldo) {                             \
        float acc[QDOT_MAX_ROWS][32] = {{0}}, w[32];                                         \
        for (int64_t b = 0; b < nb; b++) {                                                   \
            deq(row + b * bytes, w);                                                         \
            for (int r = 0; r < m; r++) {                                                    \
                const float *xr = x + r * ldx + b * 32;                                      \
                for (int j = 0; j < 32; j++) acc[r][j] += w[j] * xr[j];                      \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < m; r++) {                                                        \
            float s = 0.0f;                                                                  \
            for (int j = 0; j < 32; j++) s += acc[r][j];                                     \
            out[r * ldo] = s;                                                                \
        }                                                                                    \
    }
#define q4_0_f q4_0_dequant
#define q4_1_f q4_1_dequant
#define q5_0_f q5_0_dequant
#define q5_1_f q5_1_dequant
#define q8_0_f q8_0_dequant
#endif

/* One copy of the loop per row count, so accumulators stay in registers. */
#define DOT_DISPATCH(name)                                                                   \
    static void name(const uint8_t *row, int64_t nb, const float *x, int64_t ldx, int m,     \
                     float *out, int64_t ldo) {                                              \
        switch (m) {                                                                         \
        case 1: name##_m(row, nb, x, ldx, 1, out, ldo); break;                               \
        case 2: name##_m(row, nb, x, ldx, 2, out, ldo); break;                               \
        case 3: name##_m(row, nb, x, ldx, 3, out, ldo); break;                               \
        default: name##_m(row, nb, x, ldx, 4, out, ldo); break;                              \
        }                                                                                    \
    }

#if defined(__AVX512F__)
DOT_EXACT(q4_0_dot_exact, q4_0_dot_w, 18, 0)
DOT_EXACT(q4_1_dot_exact, q4_1_dot_w, 20, 1)
DOT_EXACT(q5_0_dot_exact, q5_0_dot_w, 22, 0)
DOT_EXACT(q5_1_dot_exact, q5_1_dot_w, 24, 1)
DOT_EXACT(q8_0_dot_exact, q8_0_dot_w, 34, 0)
#else
DOT_EXACT(q4_0_dot_exact, q4_0_f, 18, 0)
DOT_EXACT(q4_1_dot_exact, q4_1_f, 20, 1)
DOT_EXACT(q5_0_dot_exact, q5_0_f, 22, 0)
DOT_EXACT(q5_1_dot_exact, q5_1_f, 24, 1)
DOT_EXACT(q8_0_dot_exact, q8_0_f, 34, 0)
#endif
DOT_DISPATCH(q4_0_dot_exact)
DOT_DISPATCH(q4_1_dot_exact)
DOT_DISPATCH(q5_0_dot_exact)
DOT_DISPATCH(q5_1_dot_exact)
DOT_DISPATCH(q8_0_dot_exact)

/* Float rows of n values. */
#if defined(VW)
#define DOT_FLOAT(name, load, one, size)                                                     \
    INLINE void name##_m(const uint8_t *row, int64_t n, const float *x, int64_t ldx,         \
                         const int m, float *out, int64_t ldo) {                             \
        vecf a0[QDOT_MAX_ROWS], a1[QDOT_MAX_ROWS];                                           \
        for (int r = 0; r < m; r++) a0[r] = a1[r] = VZERO();                                 \
        int64_t i = 0;                                                                       \
        for (; i + 2 * VW <= n; i += 2 * VW) {                                               \
            vecf w0 = load(row + i * size), w1 = load(row + (i + VW) * size);                \
            for (int r = 0; r < m; r++) {                                                    \
                a0[r] = VFMA(w0, VLOADX(x + r * ldx + i), a0[r]);                            \
                a1[r] = VFMA(w1, VLOADX(x + r * ldx + i + VW), a1[r]);                       \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < m; r++) {                                                        \
            float s = VSUM(VADD(a0[r], a1[r]));                                              \
            for (int64_t j = i; j < n; j++) s += one(row + j * size) * x[r * ldx + j];       \
            out[r * ldo] = s;                                                                \
        }                                                                                    \
    }
#else
#define DOT_FLOAT(name, load, one, size)                                                     \
    INLINE void name##_m(const uint8_t *row, int64_t n, const float *x, int64_t ldx,         \
                         const int m, float *out, int64_t ldo) {                             \
        float acc[QDOT_MAX_ROWS][16] = {{0}}, tail[QDOT_MAX_ROWS] = {0}, w[16];              \
        int64_t i = 0;                                                                       \
        for (; i + 16 <= n; i += 16) {                                                       \
            for (int j = 0; j < 16; j++) w[j] = one(row + (i + j) * size);                   \
            for (int r = 0; r < m; r++)                                                      \
                for (int j = 0; j < 16; j++) acc[r][j] += w[j] * x[r * ldx + i + j];         \
        }                                                                                    \
        for (int r = 0; r < m; r++) {                                                        \
            for (int64_t j = i; j < n; j++) tail[r] += one(row + j * size) * x[r * ldx + j]; \
            float s = tail[r];                                                               \
            for (int j = 0; j < 16; j++) s += acc[r][j];                                     \
            out[r * ldo] = s;                                                                \
        }                                                                                    \
    }
#endif
DOT_FLOAT(f32_dot_exact, f32_load, f32_one, 4)
DOT_FLOAT(f16_dot_exact, f16_load, f16_one, 2)
DOT_FLOAT(bf16_dot_exact, bf16_load, bf16_one, 2)
DOT_DISPATCH(f32_dot_exact)
DOT_DISPATCH(f16_dot_exact)
DOT_DISPATCH(bf16_dot_exact)

/* ---- the table --------------------------------------------------------------------- */

static const qtype_ops OPS[] = {
    {.type = QT_Q4_0, .block = 32, .bytes = 18, .dequant_block = q4_0_dequant,
     .dequant_row = q4_0_dequant_row,
     .dot_exact = q4_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q4_0_dot_fast,
     .dot_fast_x8 = X8_FN(q4_0_dot_x8)},
    {.type = QT_Q4_1, .block = 32, .bytes = 20, .dequant_block = q4_1_dequant,
     .dequant_row = q4_1_dequant_row,
     .dot_exact = q4_1_dot_exact, .act = ACT_Q8_32, .dot_fast = q4_1_dot_fast,
     .dot_fast_x8 = X8_FN(q4_1_dot_x8)},
    {.type = QT_Q5_0, .block = 32, .bytes = 22, .dequant_block = q5_0_dequant,
     .dequant_row = q5_0_dequant_row,
     .dot_exact = q5_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q5_0_dot_fast,
     .dot_fast_x8 = X8_FN(q5_0_dot_x8)},
    {.type = QT_Q5_1, .block = 32, .bytes = 24, .dequant_block = q5_1_dequant,
     .dequant_row = q5_1_dequant_row,
     .dot_exact = q5_1_dot_exact, .act = ACT_Q8_32, .dot_fast = q5_1_dot_fast,
     .dot_fast_x8 = X8_FN(q5_1_dot_x8)},
    {.type = QT_Q8_0, .block = 32, .bytes = 34, .dequant_block = q8_0_dequant,
     .dequant_row = q8_0_dequant_row,
     .dot_exact = q8_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q8_0_dot_fast,
     .dot_fast_x8 = X8_Q8_FN(q8_0_dot_x8)},
    {.type = QT_F32, .block = 1, .bytes = 4, .dequant_block = f32_dequant,
     .dot_exact = f32_dot_exact, .dequant_row = f32_dequant_row},
    {.type = QT_F16, .block = 1, .bytes = 2, .dequant_block = f16_dequant,
     .dot_exact = f16_dot_exact, .dequant_row = f16_dequant_row},
    {.type = QT_BF16, .block = 1, .bytes = 2, .dequant_block = bf16_dequant,
     .dot_exact = bf16_dot_exact, .dequant_row = bf16_dequant_row},
};

const qtype_ops *quant_legacy_ops(int type) {
    for (unsigned i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
        if (OPS[i].type == type) return &OPS[i];
    return 0;
}
