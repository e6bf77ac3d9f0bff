/* The 32-value GGUF block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float
 * types (F32, F16, BF16, blocks of one value) for the quantized matmuls.
 *
 * Block layouts (ggml-common.h): an fp16 scale d (and fp16 min m for the _1
 * types), for Q5 a little-endian uint32 of 5th bits (bit j for value j), then
 * the values: Q4/Q5 pack value j in the low nibble of byte j and value j + 16
 * in its high nibble; Q8_0 stores 32 int8. Dequantization follows
 * gguf.quants' float32 operation order (Q4_0: d * (q - 8); Q4_1: d * q + m;
 * Q5_0: d * (q - 16); Q5_1: d * q + m; Q8_0: q * d), so it matches bit for bit.
 * This file is built with -std=c11, where GCC does not contract a * b + c
 * into an FMA, which would change the last bit.
 *
 * The fast path multiplies integer weights with act_q8_32 activations
 * (d_x * qs ~ x). For the types with an offset (Q4_0: q - 8, Q5_0: q - 16) it
 * uses sum((q - o) * a) = sum(q * a) - o * sum(a), with d_x * sum(a) given as
 * the activation's s; the _1 types add m * s.
 */
#include <stdint.h>
#include <string.h>

#include "quant.h"

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ---- scalar helpers ------------------------------------------------------ */

static inline uint16_t rd16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* fp16 -> float32 is exact either way. */
static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 */
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline const act_q8_32 *act_row(const void *xq, int64_t stride, int r) {
    return (const act_q8_32 *)((const char *)xq + r * stride);
}

/* ---- dequantization (every ISA: the exactness reference) ------------------ */

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

static void f32_dequant_row(const uint8_t *row, int64_t n, float *out) {
    memcpy(out, row, (size_t)n * 4);
}

static void f16_dequant_row(const uint8_t *row, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = half_to_float(rd16(row + 2 * i));
}

static void bf16_dequant_row(const uint8_t *row, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = bf16_to_float(rd16(row + 2 * i));
}

static void f32_dequant(const uint8_t *b, float *out) { f32_dequant_row(b, 1, out); }
static void f16_dequant(const uint8_t *b, float *out) { f16_dequant_row(b, 1, out); }
static void bf16_dequant(const uint8_t *b, float *out) { bf16_dequant_row(b, 1, out); }

/* ---- exact dots: portable ------------------------------------------------- */

/* 32 partial sums per row keep the loops vectorisable by the compiler. */
static inline void dot_exact_blocks(void (*deq)(const uint8_t *, float *), int bytes,
                                    const uint8_t *row, int64_t nb, const float *x, int64_t ldx,
                                    int m, float *out, int64_t ldo) {
    float acc[QDOT_MAX_ROWS][32] = {{0}};
    float w[32];
    for (int64_t b = 0; b < nb; b++) {
        deq(row + b * bytes, w);
        for (int r = 0; r < m; r++) {
            const float *xr = x + r * ldx + b * 32;
            for (int j = 0; j < 32; j++) acc[r][j] += w[j] * xr[j];
        }
    }
    for (int r = 0; r < m; r++) {
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += acc[r][j];
        out[r * ldo] = s;
    }
}

#define DOT_EXACT(name, deq, bytes)                                                          \
    static void name(const uint8_t *row, int64_t nb, const float *x, int64_t ldx, int m,     \
                     float *out, int64_t ldo) {                                              \
        dot_exact_blocks(deq, bytes, row, nb, x, ldx, m, out, ldo);                          \
    }
DOT_EXACT(q4_0_dot_exact, q4_0_dequant, 18)
DOT_EXACT(q4_1_dot_exact, q4_1_dequant, 20)
DOT_EXACT(q5_0_dot_exact, q5_0_dequant, 22)
DOT_EXACT(q5_1_dot_exact, q5_1_dequant, 24)
DOT_EXACT(q8_0_dot_exact, q8_0_dequant, 34)

/* Float rows: n values, converted in chunks of 64. */
static inline void dot_exact_float(void (*deq_row)(const uint8_t *, int64_t, float *), int size,
                                   const uint8_t *row, int64_t n, const float *x, int64_t ldx,
                                   int m, float *out, int64_t ldo) {
    float acc[QDOT_MAX_ROWS][16] = {{0}};
    float tail[QDOT_MAX_ROWS] = {0};
    float w[64];
    for (int64_t k0 = 0; k0 < n; k0 += 64) {
        int kc = n - k0 < 64 ? (int)(n - k0) : 64;
        deq_row(row + k0 * size, kc, w);
        int full = kc & ~15;
        for (int r = 0; r < m; r++) {
            const float *xr = x + r * ldx + k0;
            for (int j0 = 0; j0 < full; j0 += 16)
                for (int j = 0; j < 16; j++) acc[r][j] += w[j0 + j] * xr[j0 + j];
            for (int j = full; j < kc; j++) tail[r] += w[j] * xr[j];
        }
    }
    for (int r = 0; r < m; r++) {
        float s = tail[r];
        for (int j = 0; j < 16; j++) s += acc[r][j];
        out[r * ldo] = s;
    }
}

static void f32_dot_exact(const uint8_t *row, int64_t n, const float *x, int64_t ldx, int m,
                          float *out, int64_t ldo) {
    dot_exact_float(f32_dequant_row, 4, row, n, x, ldx, m, out, ldo);
}
static void f16_dot_exact(const uint8_t *row, int64_t n, const float *x, int64_t ldx, int m,
                          float *out, int64_t ldo) {
    dot_exact_float(f16_dequant_row, 2, row, n, x, ldx, m, out, ldo);
}
static void bf16_dot_exact(const uint8_t *row, int64_t n, const float *x, int64_t ldx, int m,
                           float *out, int64_t ldo) {
    dot_exact_float(bf16_dequant_row, 2, row, n, x, ldx, m, out, ldo);
}

/* ---- fast dots: portable ---------------------------------------------------
 * Integer weights q (offset removed by the s term, see the top), an exact
 * int32 sum per block, then d_w * d_x per block in float. */

static inline void unpack_nibbles(const uint8_t *qs, uint8_t *q) {
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
}

static inline void add_high_bits(uint32_t qh, uint8_t *q) {
    for (int j = 0; j < 32; j++) q[j] |= (uint8_t)(((qh >> j) & 1u) << 4);
}

static inline int32_t dot_u8_s8(const uint8_t *q, const int8_t *a) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += (int32_t)q[j] * a[j];
    return s;
}

/* kind: 0 = d * (q - off) (Q4_0, Q5_0), 1 = d * q + m (Q4_1, Q5_1). */
static inline void dot_fast_small(int kind, int high, int off, int bytes, const uint8_t *row,
                                  int64_t nb, const void *xq, int64_t stride, int m, float *out,
                                  int64_t ldo) {
    float acc[QDOT_MAX_ROWS] = {0}, corr[QDOT_MAX_ROWS] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        float d = half_to_float(rd16(blk)), mn = kind ? half_to_float(rd16(blk + 2)) : 0.0f;
        int head = 2 + 2 * kind;
        uint8_t q[32];
        unpack_nibbles(blk + head + 4 * high, q);
        if (high) add_high_bits(rd32(blk + head), q);
        for (int r = 0; r < m; r++) {
            const act_q8_32 *a = act_row(xq, stride, r) + b;
            acc[r] += d * a->d * (float)dot_u8_s8(q, a->qs);
            corr[r] += (kind ? mn : d) * a->s;
        }
    }
    for (int r = 0; r < m; r++) out[r * ldo] = kind ? acc[r] + corr[r] : acc[r] - off * corr[r];
}

static void q4_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                          float *out, int64_t ldo) {
    dot_fast_small(0, 0, 8, 18, row, nb, xq, stride, m, out, ldo);
}
static void q4_1_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                          float *out, int64_t ldo) {
    dot_fast_small(1, 0, 0, 20, row, nb, xq, stride, m, out, ldo);
}
static void q5_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                          float *out, int64_t ldo) {
    dot_fast_small(0, 1, 16, 22, row, nb, xq, stride, m, out, ldo);
}
static void q5_1_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                          float *out, int64_t ldo) {
    dot_fast_small(1, 1, 0, 24, row, nb, xq, stride, m, out, ldo);
}

static void q8_0_dot_fast(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,
                          float *out, int64_t ldo) {
    float acc[QDOT_MAX_ROWS] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 34;
        float d = half_to_float(rd16(blk));
        const int8_t *q = (const int8_t *)(blk + 2);
        for (int r = 0; r < m; r++) {
            const act_q8_32 *a = act_row(xq, stride, r) + b;
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int32_t)q[j] * a->qs[j];
            acc[r] += d * a->d * (float)s;
        }
    }
    for (int r = 0; r < m; r++) out[r * ldo] = acc[r];
}

/* ---- the table ------------------------------------------------------------ */

static const qtype_ops OPS[] = {
    {.type = QT_Q4_0, .block = 32, .bytes = 18, .dequant_block = q4_0_dequant,
     .dot_exact = q4_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q4_0_dot_fast},
    {.type = QT_Q4_1, .block = 32, .bytes = 20, .dequant_block = q4_1_dequant,
     .dot_exact = q4_1_dot_exact, .act = ACT_Q8_32, .dot_fast = q4_1_dot_fast},
    {.type = QT_Q5_0, .block = 32, .bytes = 22, .dequant_block = q5_0_dequant,
     .dot_exact = q5_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q5_0_dot_fast},
    {.type = QT_Q5_1, .block = 32, .bytes = 24, .dequant_block = q5_1_dequant,
     .dot_exact = q5_1_dot_exact, .act = ACT_Q8_32, .dot_fast = q5_1_dot_fast},
    {.type = QT_Q8_0, .block = 32, .bytes = 34, .dequant_block = q8_0_dequant,
     .dot_exact = q8_0_dot_exact, .act = ACT_Q8_32, .dot_fast = q8_0_dot_fast},
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
