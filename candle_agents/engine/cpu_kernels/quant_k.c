/* K-quant GGUF blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) for the quantized
 * matmuls (quant.h): dequantization, and the portable C dot products that
 * the vector files (quant_k_avx512.c, quant_k_avx2.c) replace where the
 * compile target allows. Layouts and value order: quant_k.h. */
#include "quant_k.h"

/* -- dequantization, in gguf.quants' float32 operation order -------------- */

static void dequant_q2k(const uint8_t *b, float *out) {
    const uint8_t *sc = b, *qs = b + 16;
    float d = qk_f16(b + 80), dmin = qk_f16(b + 82);
    for (int v = 0; v < QK; v++) {
        int h = v >> 7, s = (v >> 5) & 3, l = v & 31, j = v >> 4;
        float dl = d * (float)(sc[j] & 15), ml = dmin * (float)(sc[j] >> 4);
        out[v] = dl * (float)((qs[32 * h + l] >> (2 * s)) & 3) - ml;
    }
}

static void dequant_q3k(const uint8_t *b, float *out) {
    const uint8_t *hm = b, *qs = b + 32;
    int8_t sc[16];
    qk_scales_q3(b + 96, sc);
    float d = qk_f16(b + 108);
    for (int v = 0; v < QK; v++) {
        int h = v >> 7, s = (v >> 5) & 3, l = v & 31;
        int q = ((qs[32 * h + l] >> (2 * s)) & 3) - (((hm[l] >> (v >> 5)) & 1) ? 0 : 4);
        out[v] = (d * (float)sc[v >> 4]) * (float)q;
    }
}

static void dequant_q4k(const uint8_t *b, float *out) {
    uint8_t sc[8], mn[8];
    qk_scale_min_k4(b + 4, sc, mn);
    float d = qk_f16(b), dmin = qk_f16(b + 2);
    const uint8_t *qs = b + 16;
    for (int v = 0; v < QK; v++) {
        int g = v >> 6, s = (v >> 5) & 1, l = v & 31, j = v >> 5;
        float dl = d * (float)sc[j], ml = dmin * (float)mn[j];
        out[v] = dl * (float)((qs[32 * g + l] >> (4 * s)) & 15) - ml;
    }
}

static void dequant_q5k(const uint8_t *b, float *out) {
    uint8_t sc[8], mn[8];
    qk_scale_min_k4(b + 4, sc, mn);
    float d = qk_f16(b), dmin = qk_f16(b + 2);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int v = 0; v < QK; v++) {
        int g = v >> 6, s = (v >> 5) & 1, l = v & 31, j = v >> 5;
        float dl = d * (float)sc[j], ml = dmin * (float)mn[j];
        int q = ((qs[32 * g + l] >> (4 * s)) & 15) | (((qh[l] >> j) & 1) << 4);
        out[v] = dl * (float)q - ml;
    }
}

static void dequant_q6k(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = qk_f16(b + 208);
    for (int v = 0; v < QK; v++) {
        int h = v >> 7, lo = (ql[64 * h + (v & 63)] >> (4 * ((v >> 6) & 1))) & 15;
        int hi = (qh[32 * h + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3;
        out[v] = (d * (float)sc[v >> 4]) * (float)((lo | (hi << 4)) - 32);
    }
}

/* -- portable dot products ---------------------------------------------------
 * Exact: dequantize the block once, then one dot per activation row. */

#define EXACT_SCALAR(name, bytes, dequant)                                            \
    static __attribute__((unused)) void name(QK_DOT_EXACT_ARGS) {                     \
        float acc[QDOT_MAX_ROWS] = {0}, w[QK];                                        \
        for (int64_t blk = 0; blk < nblocks; blk++) {                                 \
            dequant(row + blk * (bytes), w);                                          \
            for (int i = 0; i < m; i++) {                                             \
                const float *xi = x + i * ldx + blk * QK;                             \
                float s[8] = {0}; /* 8 partial sums: vectorisable, and more exact */ \
                for (int v = 0; v < QK; v += 8)                                       \
                    for (int l = 0; l < 8; l++) s[l] += w[v + l] * xi[v + l];         \
                acc[i] += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); \
            }                                                                         \
        }                                                                             \
        for (int i = 0; i < m; i++) out[i * ldo] = acc[i];                            \
    }

EXACT_SCALAR(exact_q2k, Q2K_BYTES, dequant_q2k)
EXACT_SCALAR(exact_q3k, Q3K_BYTES, dequant_q3k)
EXACT_SCALAR(exact_q4k, Q4K_BYTES, dequant_q4k)
EXACT_SCALAR(exact_q5k, Q5K_BYTES, dequant_q5k)
EXACT_SCALAR(exact_q6k, Q6K_BYTES, dequant_q6k)

/* Fast: a block as integers, value = d * sc[v / 16] * q[v] - dmin * mn[v / 16]
 * (mn all zero for the types without a min), so that against activations
 * dx * a[v] the block's dot is
 *   dx * (d * sum_j sc[j] * sum_{v in j} q a - dmin * sum_j mn[j] * bsums[j]). */
typedef struct {
    int8_t q[QK];
    int16_t sc[16], mn[16];
    float d, dmin;
} qk_ints;

static void ints_q2k(const uint8_t *b, qk_ints *o) {
    for (int v = 0; v < QK; v++)
        o->q[v] = (b[16 + 32 * (v >> 7) + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3;
    for (int j = 0; j < 16; j++) o->sc[j] = b[j] & 15, o->mn[j] = b[j] >> 4;
    o->d = qk_f16(b + 80), o->dmin = qk_f16(b + 82);
}

static void ints_q3k(const uint8_t *b, qk_ints *o) {
    int8_t sc[16];
    qk_scales_q3(b + 96, sc);
    for (int v = 0; v < QK; v++) {
        int q = (b[32 + 32 * (v >> 7) + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3;
        o->q[v] = (int8_t)(q - (((b[v & 31] >> (v >> 5)) & 1) ? 0 : 4));
    }
    for (int j = 0; j < 16; j++) o->sc[j] = sc[j], o->mn[j] = 0;
    o->d = qk_f16(b + 108), o->dmin = 0.0f;
}

static void ints_k4(const uint8_t *b, qk_ints *o, const uint8_t *qh) {
    uint8_t sc[8], mn[8];
    qk_scale_min_k4(b + 4, sc, mn);
    const uint8_t *qs = qh ? b + 48 : b + 16;
    for (int v = 0; v < QK; v++) {
        int q = (qs[32 * (v >> 6) + (v & 31)] >> (4 * ((v >> 5) & 1))) & 15;
        o->q[v] = (int8_t)(qh ? q | (((qh[v & 31] >> (v >> 5)) & 1) << 4) : q);
    }
    for (int j = 0; j < 16; j++) o->sc[j] = sc[j >> 1], o->mn[j] = mn[j >> 1];
    o->d = qk_f16(b), o->dmin = qk_f16(b + 2);
}

static void ints_q4k(const uint8_t *b, qk_ints *o) { ints_k4(b, o, NULL); }
static void ints_q5k(const uint8_t *b, qk_ints *o) { ints_k4(b, o, b + 16); }

static void ints_q6k(const uint8_t *b, qk_ints *o) {
    for (int v = 0; v < QK; v++) {
        int h = v >> 7, lo = (b[64 * h + (v & 63)] >> (4 * ((v >> 6) & 1))) & 15;
        int hi = (b[128 + 32 * h + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3;
        o->q[v] = (int8_t)((lo | (hi << 4)) - 32);
    }
    for (int j = 0; j < 16; j++) o->sc[j] = (int8_t)b[192 + j], o->mn[j] = 0;
    o->d = qk_f16(b + 208), o->dmin = 0.0f;
}

#define FAST_SCALAR(name, bytes, unpack)                                                     \
    static __attribute__((unused)) void name(QK_DOT_FAST_ARGS) {                             \
        float acc[QDOT_MAX_ROWS] = {0};                                                      \
        qk_ints w;                                                                           \
        for (int64_t blk = 0; blk < nblocks; blk++) {                                        \
            unpack(row + blk * (bytes), &w);                                                 \
            for (int i = 0; i < m; i++) {                                                    \
                const act_q8_256 *a = (const act_q8_256 *)((const char *)xq + i * xq_stride) \
                                      + blk;                                                 \
                int32_t isum = 0, msum = 0;                                                  \
                for (int j = 0; j < 16; j++) {                                               \
                    int32_t s = 0;                                                           \
                    for (int v = 16 * j; v < 16 * j + 16; v++) s += w.q[v] * a->qs[v];       \
                    isum += w.sc[j] * s;                                                     \
                    msum += w.mn[j] * a->bsums[j];                                           \
                }                                                                            \
                acc[i] += a->d * (w.d * (float)isum - w.dmin * (float)msum);                 \
            }                                                                                \
        }                                                                                    \
        for (int i = 0; i < m; i++) out[i * ldo] = acc[i];                                   \
    }

FAST_SCALAR(fast_q2k, Q2K_BYTES, ints_q2k)
FAST_SCALAR(fast_q3k, Q3K_BYTES, ints_q3k)
FAST_SCALAR(fast_q4k, Q4K_BYTES, ints_q4k)
FAST_SCALAR(fast_q5k, Q5K_BYTES, ints_q5k)
FAST_SCALAR(fast_q6k, Q6K_BYTES, ints_q6k)

/* -- the type table ------------------------------------------------------------
 * The vector paths come from the compile target (-march=native is the
 * run-time dispatch): on AVX-512BW the exact path and dequant_row are
 * quant_k_avx512.c's and the fast path quant_k_avx2.c's (256-bit measured as
 * fast or faster), on AVX2 both are quant_k_avx2.c's, else the portable C
 * above. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define OPS_OF(id, t, size)                                                              \
    {.type = id, .block = QK, .bytes = size, .dequant_block = dequant_##t,             \
     .dot_exact = qk512_##t##_exact, .act = ACT_Q8_256, .dot_fast = qk256_##t##_fast,      \
     .dequant_row = qk512_##t##_dequant, .dot_fast_x8 = qk256_##t##_x8}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define OPS_OF(id, t, size)                                                              \
    {.type = id, .block = QK, .bytes = size, .dequant_block = dequant_##t,             \
     .dot_exact = qk256_##t##_exact, .act = ACT_Q8_256, .dot_fast = qk256_##t##_fast,      \
     .dequant_row = qk256_##t##_dequant, .dot_fast_x8 = qk256_##t##_x8}
#else /* the driver loops dequant_block where dequant_row is NULL */
#define OPS_OF(id, t, size)                                                              \
    {.type = id, .block = QK, .bytes = size, .dequant_block = dequant_##t,             \
     .dot_exact = exact_##t, .act = ACT_Q8_256, .dot_fast = fast_##t}
#endif

static const qtype_ops OPS[] = {
    OPS_OF(QT_Q2_K, q2k, Q2K_BYTES), OPS_OF(QT_Q3_K, q3k, Q3K_BYTES),
    OPS_OF(QT_Q4_K, q4k, Q4K_BYTES), OPS_OF(QT_Q5_K, q5k, Q5K_BYTES),
    OPS_OF(QT_Q6_K, q6k, Q6K_BYTES),
};

const qtype_ops *quant_k_ops(int type) {
    for (unsigned i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
        if (OPS[i].type == type) return &OPS[i];
    return NULL;
}
