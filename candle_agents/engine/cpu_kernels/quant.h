/* Quantized matmuls on GGUF block formats: what the per-type code provides
 * (quant_legacy.c: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the float types;
 * quant_k.c: Q2_K..Q6_K) and the driver (quant.c) consumes.
 *
 * Weights are GGUF tensors as stored: row n of W[N, K] is K / block
 * consecutive blocks of `bytes` bytes. Type ids are GGML's (ggml.h). */
#ifndef CANDLE_QUANT_H
#define CANDLE_QUANT_H
#include <stdint.h>

enum {
    QT_F32 = 0, QT_F16 = 1, QT_Q4_0 = 2, QT_Q4_1 = 3, QT_Q5_0 = 6, QT_Q5_1 = 7,
    QT_Q8_0 = 8, QT_Q2_K = 10, QT_Q3_K = 11, QT_Q4_K = 12, QT_Q5_K = 13,
    QT_Q6_K = 14, QT_BF16 = 30,
};

/* Activations quantized for the fast path, one struct per block of one row.
 * ACT_Q8_32 (for the 32-value types): d * qs[i] ~ x[i]; s = d * sum(qs), for
 * types with a min term. ACT_Q8_256 (for the K-quants): bsums[j] = sum of
 * qs[16 j .. 16 j + 15]. */
typedef struct { float d; float s; int8_t qs[32]; } act_q8_32;
typedef struct { float d; int16_t bsums[16]; int8_t qs[256]; } act_q8_256;
enum { ACT_NONE = 0, ACT_Q8_32 = 1, ACT_Q8_256 = 2 };
/* Eight ACT_Q8_32 rows interleaved, for dot_fast_x8: one block of rows
 * 8 g .. 8 g + 7 holds their d and s, and in qs[32 j + 4 r + i] byte 4 j + i
 * of row r, so a 256-bit multiply-add takes 4 values of 8 rows at once. */
typedef struct { float d[8]; float s[8]; int8_t qs[256]; } act_q8_32x8;
/* Eight ACT_Q8_256 rows interleaved: what dot_fast_x8 of an ACT_Q8_256 type
 * (the K-quants) takes in place of act_q8_32x8. qs as there (qs[32 j + 4 r +
 * i] is value 4 j + i of row r); bsums[p][r] holds row r's sums of values
 * 32 p .. 32 p + 15 and 32 p + 16 .. 32 p + 31 (its bsums 2p and 2p + 1), so
 * one pmaddwd weights a pair of them for 8 rows. */
typedef struct { float d[8]; int16_t bsums[8][8][2]; int8_t qs[8 * 256]; } act_q8_256x8;

/* The most activation rows one dot call takes (the driver tiles M by this). */
#define QDOT_MAX_ROWS 4

typedef struct {
    int type;
    int block;  /* values per block */
    int bytes;  /* bytes per block */
    /* One block to `block` floats, in the float32 operation order of
     * gguf.quants.dequantize, so results match it bit for bit. */
    void (*dequant_block)(const uint8_t *blk, float *out);
    /* Exact path: out[i * ldo] = dot(dequant(row), x + i * ldx) for i < m
     * (m <= QDOT_MAX_ROWS); weights dequantized in registers, float32
     * accumulation. */
    void (*dot_exact)(const uint8_t *row, int64_t nblocks, const float *x, int64_t ldx, int m,
                      float *out, int64_t ldo);
    /* Fast path (NULL where the type has none): the same dot against
     * activations quantized as `act`; xq holds m rows of nblocks structs,
     * rows xq_stride bytes apart. */
    int act;
    void (*dot_fast)(const uint8_t *row, int64_t nblocks, const void *xq, int64_t xq_stride,
                     int m, float *out, int64_t ldo);
    /* Optional (NULL: the driver loops dequant_block): nblocks consecutive
     * blocks to floats, bit for bit as dequant_block. The float types have
     * blocks of one value, so a call per block would dominate. */
    void (*dequant_row)(const uint8_t *row, int64_t nblocks, float *out);
    /* Optional fast path for many x rows: the dots of weight rows
     * w + j * row_bytes (j < nrows <= QX8_MAX_ROWS) with groups of 8 x rows
     * as act_q8_32x8 (ACT_Q8_32 types) or act_q8_256x8 (ACT_Q8_256), nblocks
     * structs a group, groups xg_stride bytes apart, ngroups <=
     * QX8_MAX_GROUPS: out[(8 g + i) * ldo + j]. A group may end in zero rows
     * (d = 0, all sums 0) whose outputs the driver drops.
     * Each weight block is unpacked once per call, and one multiply-add of
     * 4 weight bytes serves 8 x rows, where dot_fast unpacks per 4 x rows
     * and scales every block of every row separately. */
    void (*dot_fast_x8)(const uint8_t *w, int64_t row_bytes, int nrows, int64_t nblocks,
                        const void *xg, int64_t xg_stride, int ngroups, float *out, int64_t ldo);
} qtype_ops;

#define QX8_MAX_ROWS 8
#define QX8_MAX_GROUPS 8

/* The ops of `type`, or NULL. Each file defines its lookup; quant.c asks both. */
const qtype_ops *quant_legacy_ops(int type);
const qtype_ops *quant_k_ops(int type);

/* Activation quantizers (quant.c): row x[K] into K / 32 or K / 256 structs. */
void quantize_act_q8_32(const float *x, int64_t k, act_q8_32 *out);
void quantize_act_q8_256(const float *x, int64_t k, act_q8_256 *out);

#endif
