/* The quantized matmul driver: out = x @ W^T (+ bias) with W kept in its
 * GGUF block format (see quant.h for what each type provides).
 *
 * Three paths, picked per call:
 *  - exact, few rows: the type's dot_exact per output row (weights
 *    dequantized in registers, float32 accumulation);
 *  - exact, more rows (AVX-512 only): 32 output rows at a time dequantized
 *    into a [K][32] float panel, then the float32 panel kernel's register
 *    tile (panel_gemm.h) over every x row, so each weight is unpacked once
 *    per call rather than once per row tile;
 *  - fast: x quantized once per call to the type's activation format, then
 *    the type's integer dot_fast per output row and tile of 4 x rows, or
 *    from 5 x rows on, where the type has it, dot_fast_x8 over groups of 8 x
 *    rows interleaved (act_q8_32x8), 8 weight rows at a time.
 * Work is split into tasks over contiguous runs of output rows, so each task
 * streams its own part of W once, and run on the engine's pool (pool.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "panel_gemm.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include "convert.h"
#include "pool.h"
#include "quant.h"

/* Exact path: above this many x rows, dequantize panels (where there is a
 * panel kernel); at or below it, dot_exact. Measured with K = 576 and 2048:
 * dot_exact wins to M = 8-9, as the panel's dequantize-and-transpose costs
 * about 40% of its float32 multiply at M = 32. (The limits here can be set
 * with -D to retune.) */
#ifndef EXACT_DOT_MAX_M
#define EXACT_DOT_MAX_M 9
#endif
/* Below this many multiply-adds (a few microseconds) a call stays on the
 * caller's thread: waking the pool would cost about as much. */
#define SERIAL_MACS 131072
/* Output rows per task at the least, so a task is worth handing out. */
#define MIN_TASK_ROWS 16
/* Tasks per thread: uneven cores (other work on the machine) balance out. */
#define TASKS_PER_THREAD 4
/* Fast path: from this many x rows on, groups of 8 rows go to dot_fast_x8;
 * a last group of X8_PAD_MIN rows or more is padded with zero rows (measured:
 * 5 rows cost dot_fast as much as 8 cost dot_fast_x8). */
#ifndef X8_MIN_M
#define X8_MIN_M 5
#endif
#ifndef X8_PAD_MIN
#define X8_PAD_MIN 5
#endif
/* Activation buffers up to this size live on the stack: no malloc per call. */
#define STACK_ACT_BYTES 16384

static const qtype_ops *ops_of(int qtype) {
    const qtype_ops *o = quant_legacy_ops(qtype);
    return o ? o : quant_k_ops(qtype);
}

int quant_supported(int qtype, int fast) {
    const qtype_ops *o = ops_of(qtype);
    return o != 0 && (!fast || o->dot_fast != 0);
}

/* ---- activation quantizers -------------------------------------------------
 * d = max|x| / 127, qs = x * (1 / d) rounded to nearest even (the vector
 * conversions' default rounding), 0 where d == 0: every ISA gives the same bytes. */

static inline float scale_of(float amax, float *inv) {
    float d = amax / 127.0f;
    *inv = d != 0.0f ? 1.0f / d : 0.0f;
    return d;
}

#if defined(__AVX512F__)
static inline float amax512(const float *x, int n) {
    __m512 m = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j)), m);
    return _mm512_reduce_max_ps(m);
}

/* 16 values to int8 at qs; returns their sum. */
static inline int quant16(const float *x, __m512 inv, int8_t *qs) {
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(q));
    return _mm512_reduce_add_epi32(q);
}

void quantize_act_q8_32(const float *x, int64_t k, act_q8_32 *out) {
    for (int64_t b = 0; b < k / 32; b++, x += 32, out++) {
        float inv, d = scale_of(amax512(x, 32), &inv);
        __m512 vi = _mm512_set1_ps(inv);
        int sum = quant16(x, vi, out->qs) + quant16(x + 16, vi, out->qs + 16);
        out->d = d;
        out->s = d * (float)sum;
    }
}

void quantize_act_q8_256(const float *x, int64_t k, act_q8_256 *out) {
    for (int64_t b = 0; b < k / 256; b++, x += 256, out++) {
        float inv, d = scale_of(amax512(x, 256), &inv);
        __m512 vi = _mm512_set1_ps(inv);
        for (int g = 0; g < 16; g++)
            out->bsums[g] = (int16_t)quant16(x + 16 * g, vi, out->qs + 16 * g);
        out->d = d;
    }
}

#elif defined(__AVX2__)
static inline float amax256(const float *x, int n) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

/* 32 values to int8 at qs; sums of the first and the second 16. */
static inline void quant32(const float *x, __m256 inv, int8_t *qs, int *s0, int *s1) {
    __m256i q[4];
    for (int i = 0; i < 4; i++)
        q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), inv));
    /* packs interleave 128-bit lanes; the final permute restores value order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    *s0 = hsum_epi32(_mm256_add_epi32(q[0], q[1]));
    *s1 = hsum_epi32(_mm256_add_epi32(q[2], q[3]));
}

void quantize_act_q8_32(const float *x, int64_t k, act_q8_32 *out) {
    for (int64_t b = 0; b < k / 32; b++, x += 32, out++) {
        float inv, d = scale_of(amax256(x, 32), &inv);
        int s0, s1;
        quant32(x, _mm256_set1_ps(inv), out->qs, &s0, &s1);
        out->d = d;
        out->s = d * (float)(s0 + s1);
    }
}

void quantize_act_q8_256(const float *x, int64_t k, act_q8_256 *out) {
    for (int64_t b = 0; b < k / 256; b++, x += 256, out++) {
        float inv, d = scale_of(amax256(x, 256), &inv);
        __m256 vi = _mm256_set1_ps(inv);
        for (int g = 0; g < 8; g++) {
            int s0, s1;
            quant32(x + 32 * g, vi, out->qs + 32 * g, &s0, &s1);
            out->bsums[2 * g] = (int16_t)s0;
            out->bsums[2 * g + 1] = (int16_t)s1;
        }
        out->d = d;
    }
}

#else
static inline float amax_c(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        float a = x[j] < 0 ? -x[j] : x[j];
        amax = a > amax ? a : amax;
    }
    return amax;
}

static inline int round_even(float v) {
    /* 1.5 * 2^23: adding and subtracting it rounds |v| < 2^22 to nearest even */
    const float magic = 12582912.0f;
    return (int)((v + magic) - magic);
}

void quantize_act_q8_32(const float *x, int64_t k, act_q8_32 *out) {
    for (int64_t b = 0; b < k / 32; b++, x += 32, out++) {
        float inv, d = scale_of(amax_c(x, 32), &inv);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = round_even(x[j] * inv);
            out->qs[j] = (int8_t)q;
            sum += q;
        }
        out->d = d;
        out->s = d * (float)sum;
    }
}

void quantize_act_q8_256(const float *x, int64_t k, act_q8_256 *out) {
    for (int64_t b = 0; b < k / 256; b++, x += 256, out++) {
        float inv, d = scale_of(amax_c(x, 256), &inv);
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; j++) {
                int q = round_even(x[j] * inv);
                out->qs[j] = (int8_t)q;
                sum += q;
            }
            out->bsums[g] = (int16_t)sum;
        }
        out->d = d;
    }
}
#endif

/* ---- tasks ----------------------------------------------------------------- */

typedef struct {
    const qtype_ops *ops;
    const uint8_t *w;
    int64_t N, K, nb, row_bytes;
    const float *x;
    int64_t M, ldx;
    const float *bias;
    float *out;
    int64_t ldo;
    const void *xq; /* fast path: quantized x rows, xq_stride bytes apart */
    int64_t xq_stride;
    void *xg; /* and the first 8 * groups of them in groups of 8 (dot_fast_x8) */
    int64_t xg_stride, groups;
    int64_t chunk; /* output rows per task */
} gemm_ctx;

static void run_tasks(pool_fn fn, void *ctx, int64_t ntasks, int threads) {
    if (ntasks == 1 || threads <= 1) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
    } else {
        pool_run(fn, ctx, ntasks, threads);
    }
}

/* Rows per task: about TASKS_PER_THREAD tasks a thread, at least min_rows,
 * a multiple of align. Returns the task count. */
static int64_t split(int64_t n, int threads, int64_t align, int64_t min_rows, int64_t *chunk) {
    int64_t tasks = threads <= 1 ? 1 : (int64_t)threads * TASKS_PER_THREAD;
    int64_t c = (n + tasks - 1) / tasks;
    if (c < min_rows) c = min_rows;
    c = (c + align - 1) / align * align;
    *chunk = c;
    return (n + c - 1) / c;
}

static inline void add_bias(const gemm_ctx *c, int64_t n, int64_t m0, int mr) {
    if (c->bias)
        for (int i = 0; i < mr; i++) c->out[(m0 + i) * c->ldo + n] += c->bias[n];
}

/* Rows of weights ahead of the one being multiplied that are prefetched: at
 * one or a few x rows a dot is short (a K = 576 row of Q4_1 is 360 bytes),
 * and the hardware prefetcher alone left M = 1 at ~10 GB/s from memory:
 * prefetching 8 rows ahead took a SmolLM2-135M decode step from ~9.0 to
 * ~6.5 ms (4 and 16 rows: about the same; a non-temporal hint: slower). */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif

static inline void prefetch_row(const gemm_ctx *c, int64_t n, int64_t n1) {
    if (n + PREFETCH_ROWS >= n1) return;
    const char *p = (const char *)c->w + (n + PREFETCH_ROWS) * c->row_bytes;
    for (int64_t i = 0; i < c->row_bytes; i += 64) __builtin_prefetch(p + i, 0, 3);
}

static void task_dot_exact(void *arg, int64_t t) {
    const gemm_ctx *c = arg;
    int64_t n1 = (t + 1) * c->chunk < c->N ? (t + 1) * c->chunk : c->N;
    for (int64_t n = t * c->chunk; n < n1; n++) {
        const uint8_t *row = c->w + n * c->row_bytes;
        prefetch_row(c, n, n1);
        for (int64_t m0 = 0; m0 < c->M; m0 += QDOT_MAX_ROWS) {
            int mr = c->M - m0 < QDOT_MAX_ROWS ? (int)(c->M - m0) : QDOT_MAX_ROWS;
            c->ops->dot_exact(row, c->nb, c->x + m0 * c->ldx, c->ldx, mr,
                              c->out + m0 * c->ldo + n, c->ldo);
            add_bias(c, n, m0, mr);
        }
    }
}

static void task_dot_fast(void *arg, int64_t t) {
    const gemm_ctx *c = arg;
    int64_t n1 = (t + 1) * c->chunk < c->N ? (t + 1) * c->chunk : c->N;
    /* groups of 8 real rows, then at most one padded group */
    int64_t full = c->M / 8 < c->groups ? c->M / 8 : c->groups;
    int64_t m_x8 = 8 * c->groups < c->M ? 8 * c->groups : c->M;
    for (int64_t n0 = t * c->chunk; n0 < n1; n0 += QX8_MAX_ROWS) {
        int nr = n1 - n0 < QX8_MAX_ROWS ? (int)(n1 - n0) : QX8_MAX_ROWS;
        const uint8_t *w = c->w + n0 * c->row_bytes;
        for (int64_t g0 = 0; g0 < full; g0 += QX8_MAX_GROUPS) {
            int ng = full - g0 < QX8_MAX_GROUPS ? (int)(full - g0) : QX8_MAX_GROUPS;
            c->ops->dot_fast_x8(w, c->row_bytes, nr, c->nb, (const char *)c->xg + g0 * c->xg_stride,
                                c->xg_stride, ng, c->out + 8 * g0 * c->ldo + n0, c->ldo);
        }
        if (c->groups > full) { /* the last group, padded with zero rows: keep the real ones */
            float tmp[8 * QX8_MAX_ROWS];
            c->ops->dot_fast_x8(w, c->row_bytes, nr, c->nb,
                                (const char *)c->xg + full * c->xg_stride, c->xg_stride, 1, tmp,
                                QX8_MAX_ROWS);
            for (int64_t m = 8 * full; m < c->M; m++)
                for (int j = 0; j < nr; j++)
                    c->out[m * c->ldo + n0 + j] = tmp[(m - 8 * full) * QX8_MAX_ROWS + j];
        }
        for (int64_t n = n0; n < n0 + nr; n++) {
            const uint8_t *row = c->w + n * c->row_bytes;
            if (m_x8 == 0) prefetch_row(c, n, n1);
            for (int64_t m0 = m_x8; m0 < c->M; m0 += QDOT_MAX_ROWS) {
                int mr = c->M - m0 < QDOT_MAX_ROWS ? (int)(c->M - m0) : QDOT_MAX_ROWS;
                c->ops->dot_fast(row, c->nb, (const char *)c->xq + m0 * c->xq_stride,
                                 c->xq_stride, mr, c->out + m0 * c->ldo + n, c->ldo);
            }
            add_bias(c, n, 0, (int)c->M);
        }
    }
}

/* Rows 8 g .. 8 g + 7 of xq (act_q8_256) interleaved into group g
 * (act_q8_256x8); rows from M on are zeros. */
static void interleave256(const gemm_ctx *c, int64_t g) {
    int64_t nb = c->K / 256;
    act_q8_256x8 *dst = (act_q8_256x8 *)((char *)c->xg + g * c->xg_stride);
    for (int r = 0; r < 8; r++) {
        int pad = 8 * g + r >= c->M;
        const act_q8_256 *src =
            pad ? 0 : (const act_q8_256 *)((const char *)c->xq + (8 * g + r) * c->xq_stride);
        for (int64_t b = 0; b < nb; b++) {
            dst[b].d[r] = pad ? 0.0f : src[b].d;
            for (int p = 0; p < 8; p++) {
                dst[b].bsums[p][r][0] = pad ? 0 : src[b].bsums[2 * p];
                dst[b].bsums[p][r][1] = pad ? 0 : src[b].bsums[2 * p + 1];
            }
            for (int j = 0; j < 64; j++) {
                if (pad)
                    memset(dst[b].qs + 32 * j + 4 * r, 0, 4);
                else
                    memcpy(dst[b].qs + 32 * j + 4 * r, src[b].qs + 4 * j, 4);
            }
        }
    }
}

/* Rows 8 g .. 8 g + 7 of xq (act_q8_32) interleaved into group g
 * (act_q8_32x8); rows from M on are zeros. */
static void interleave_task(void *arg, int64_t g) {
    const gemm_ctx *c = arg;
    if (c->ops->act == ACT_Q8_256) {
        interleave256(c, g);
        return;
    }
    int64_t nb = c->K / 32;
    act_q8_32x8 *dst = (act_q8_32x8 *)((char *)c->xg + g * c->xg_stride);
    for (int r = 0; r < 8; r++) {
        int pad = 8 * g + r >= c->M;
        const act_q8_32 *src =
            pad ? 0 : (const act_q8_32 *)((const char *)c->xq + (8 * g + r) * c->xq_stride);
        for (int64_t b = 0; b < nb; b++) {
            dst[b].d[r] = pad ? 0.0f : src[b].d;
            dst[b].s[r] = pad ? 0.0f : src[b].s;
            for (int j = 0; j < 8; j++) {
                if (pad)
                    memset(dst[b].qs + 32 * j + 4 * r, 0, 4);
                else
                    memcpy(dst[b].qs + 32 * j + 4 * r, src[b].qs + 4 * j, 4);
            }
        }
    }
}

/* nblocks consecutive blocks of a row to floats. */
static inline void dequant_run(const qtype_ops *o, const uint8_t *src, int64_t nblocks,
                               float *dst) {
    if (o->dequant_row) {
        o->dequant_row(src, nblocks, dst);
        return;
    }
    for (int64_t b = 0; b < nblocks; b++) o->dequant_block(src + b * o->bytes, dst + b * o->block);
}

#if defined(__AVX512F__)
/* Values per dequantize-and-transpose step: rows of tmp[32][PANEL_STEP]. */
#define PANEL_STEP 256

/* dst[j * ldd + i] = src[i * lds + j] for a 16 x 16 tile, in registers:
 * pairs of rows interleaved, then 4 x 4 blocks, then 128-bit lanes. */
static inline void transpose16(const float *src, int64_t lds, float *dst, int64_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* r[4i + c], 128-bit lane L: rows 4i .. 4i + 3 of column 4L + c */
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    /* column 4L + c takes lane L of r[c], r[4 + c], r[8 + c], r[12 + c] */
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
        __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
        __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_ps(dst + c * ldd, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}

/* panel[k][r] = W[r][k] for the `rows` (<= 32) rows at w; zero beyond them. */
static void dequant_panel(const gemm_ctx *c, const uint8_t *w, int rows, float *panel,
                          float *tmp) {
    const qtype_ops *o = c->ops;
    int64_t step = o->block > PANEL_STEP ? o->block : PANEL_STEP;
    for (int64_t k0 = 0; k0 < c->K; k0 += step) {
        int kc = c->K - k0 < step ? (int)(c->K - k0) : (int)step;
        for (int r = 0; r < 32; r++) {
            float *dst = tmp + r * step;
            if (r < rows)
                dequant_run(o, w + r * c->row_bytes + k0 / o->block * o->bytes, kc / o->block,
                            dst);
            else
                memset(dst, 0, sizeof(float) * kc);
        }
        int full = kc & ~15;
        for (int r0 = 0; r0 < 32; r0 += 16)
            for (int j0 = 0; j0 < full; j0 += 16)
                transpose16(tmp + r0 * step + j0, step, panel + (k0 + j0) * 32 + r0, 32);
        for (int j = full; j < kc; j++)
            for (int r = 0; r < 32; r++) panel[(k0 + j) * 32 + r] = tmp[r * step + j];
    }
}

/* M tiled in chunks of up to 64 rows, K in KC steps, like gemm_packed. */
#define PANEL_MAX_M 64

static void task_panel(void *arg, int64_t t) {
    const gemm_ctx *c = arg;
    int64_t n0 = t * c->chunk, n1 = n0 + c->chunk < c->N ? n0 + c->chunk : c->N;
    int64_t step = c->ops->block > PANEL_STEP ? c->ops->block : PANEL_STEP;
    float *panel = aligned_alloc(64, (size_t)(c->K * 32 + 32 * step) * sizeof(float));
    if (!panel) { /* no memory for the panel: the slower path needs none */
        task_dot_exact(arg, t);
        return;
    }
    float *tmp = panel + c->K * 32;
    float acc[PANEL_MAX_M * 32];
    for (int64_t p0 = n0; p0 < n1; p0 += 32) {
        int cols = n1 - p0 < 32 ? (int)(n1 - p0) : 32;
        dequant_panel(c, c->w + p0 * c->row_bytes, cols, panel, tmp);
        for (int64_t m0 = 0; m0 < c->M; m0 += PANEL_MAX_M) {
            int64_t mc = c->M - m0 < PANEL_MAX_M ? c->M - m0 : PANEL_MAX_M;
            /* even row blocks: 32 rows go as 11 + 11 + 10, not 12 + 12 + 8 */
            int64_t blocks = (mc + MR - 1) / MR, rows = (mc + blocks - 1) / blocks;
            const float *x = c->x + m0 * c->ldx;
            for (int64_t k0 = 0; k0 < c->K; k0 += KC) {
                int kc = c->K - k0 < KC ? (int)(c->K - k0) : KC;
                const char *ahead = (const char *)(panel + (k0 + 2 * KC) * NR);
                for (int64_t i0 = 0; i0 < mc; i0 += rows) {
                    int mr = mc - i0 < rows ? (int)(mc - i0) : (int)rows;
                    gemm_rows(x + i0 * c->ldx + k0, c->ldx, panel + k0 * NR, kc, acc + i0 * NR,
                              mr, k0 == 0, ahead);
                }
            }
            for (int64_t i = 0; i < mc; i++) {
                float *o = c->out + (m0 + i) * c->ldo + p0;
                for (int j = 0; j < cols; j++)
                    o[j] = acc[i * NR + j] + (c->bias ? c->bias[p0 + j] : 0.0f);
            }
        }
    }
    free(panel);
}
#endif

/* ---- entry points ------------------------------------------------------------ */

static void quantize_rows_task(void *arg, int64_t t) {
    const gemm_ctx *c = arg;
    const float *x = c->x + t * c->ldx;
    void *dst = (char *)c->xq + t * c->xq_stride;
    if (c->ops->act == ACT_Q8_32)
        quantize_act_q8_32(x, c->K, dst);
    else
        quantize_act_q8_256(x, c->K, dst);
}

int quant_gemm(int qtype, const uint8_t *w, int64_t N, int64_t K, const float *x, int64_t M,
               int64_t ldx, const float *bias, float *out, int64_t ldo, int fast, int threads) {
    const qtype_ops *o = ops_of(qtype);
    if (!o || K <= 0 || K % o->block || N < 0 || M < 0) return -1;
    if (M == 0 || N == 0) return 0;
    if (M * N * K < SERIAL_MACS) threads = 1;
    gemm_ctx c = {.ops = o, .w = w, .N = N, .K = K, .nb = K / o->block,
                  .row_bytes = K / o->block * o->bytes, .x = x, .M = M, .ldx = ldx,
                  .bias = bias, .out = out, .ldo = ldo};
    /* A type without an integer path has nothing faster than exact. */
    if (fast && o->dot_fast) {
        int per = o->act == ACT_Q8_32 ? 32 : 256;
        size_t size = o->act == ACT_Q8_32 ? sizeof(act_q8_32) : sizeof(act_q8_256);
        if (K % per) return -1;
        c.xq_stride = (int64_t)(K / per * size);
        size_t total = (size_t)(M * c.xq_stride);
        _Alignas(64) char stack_buf[STACK_ACT_BYTES];
        void *buf = total <= sizeof stack_buf ? stack_buf : malloc(total);
        if (!buf) return -1;
        c.xq = buf;
        run_tasks(quantize_rows_task, &c, M, M * K >= 65536 ? threads : 1);
        void *xg = 0;
        if (o->dot_fast_x8 && M >= X8_MIN_M) {
            /* a last group of X8_PAD_MIN or more rows is padded with zero rows */
            int64_t groups = M % 8 >= X8_PAD_MIN ? (M + 7) / 8 : M / 8;
            c.xg_stride = o->act == ACT_Q8_256 ? (int64_t)(K / 256 * sizeof(act_q8_256x8))
                                               : (int64_t)(K / 32 * sizeof(act_q8_32x8));
            xg = malloc((size_t)(groups * c.xg_stride));
            if (xg) {
                c.xg = xg;
                c.groups = groups;
                run_tasks(interleave_task, &c, c.groups, M * K >= 65536 ? threads : 1);
            }
        }
        int64_t ntasks = split(N, threads, QX8_MAX_ROWS, MIN_TASK_ROWS, &c.chunk);
        run_tasks(task_dot_fast, &c, ntasks, threads);
        free(xg);
        if (buf != stack_buf) free(buf);
        return 0;
    }
#if defined(__AVX512F__)
    if (M > EXACT_DOT_MAX_M) {
        int64_t ntasks = split(N, threads, 32, 32, &c.chunk);
        run_tasks(task_panel, &c, ntasks, threads);
        return 0;
    }
#endif
    int64_t ntasks = split(N, threads, 4, MIN_TASK_ROWS, &c.chunk);
    run_tasks(task_dot_exact, &c, ntasks, threads);
    return 0;
}

typedef struct {
    const qtype_ops *ops;
    const uint8_t *w;
    int64_t K, row_bytes, chunk, n, ldo;
    const int64_t *rows;
    void *out;
    int bf16;
} dequant_ctx;

static void task_dequant(void *arg, int64_t t) {
    const dequant_ctx *c = arg;
    /* bfloat16: a run of blocks at a time through a float buffer that stays in L1 */
    enum { RUN = 256 };
    float buf[RUN];
    int64_t nb = c->K / c->ops->block, per = RUN / c->ops->block;
    int64_t i1 = (t + 1) * c->chunk < c->n ? (t + 1) * c->chunk : c->n;
    for (int64_t i = t * c->chunk; i < i1; i++) {
        const uint8_t *row = c->w + (c->rows ? c->rows[i] : i) * c->row_bytes;
        if (!c->bf16) {
            dequant_run(c->ops, row, nb, (float *)c->out + i * c->ldo);
            continue;
        }
        uint16_t *dst = (uint16_t *)c->out + i * c->ldo;
        for (int64_t b = 0; b < nb; b += per) {
            int64_t cnt = nb - b < per ? nb - b : per;
            dequant_run(c->ops, row + b * c->ops->bytes, cnt, buf);
            f32_to_bf16_row(buf, dst + b * c->ops->block, cnt * c->ops->block);
        }
    }
}

/* Rows rows[0..n) (0..n when rows is NULL) of w into out, rows ldo elements
 * apart: float32, or bfloat16 where bf16 is set (each value dequantized
 * exactly, then rounded to nearest even: the weights of a prompt-sized matmul
 * where the CPU multiplies bfloat16 faster, quant/layers.py). */
int quant_dequant_rows(int qtype, const uint8_t *w, int64_t K, const int64_t *rows, int64_t n,
                       void *out, int64_t ldo, int bf16, int threads) {
    const qtype_ops *o = ops_of(qtype);
    if (!o || K <= 0 || K % o->block || n < 0 || o->block > 256) return -1;
    if (n == 0) return 0;
    dequant_ctx c = {.ops = o, .w = w, .K = K, .row_bytes = K / o->block * o->bytes, .n = n,
                     .ldo = ldo, .rows = rows, .out = out, .bf16 = bf16};
    /* at least ~64K values a task: small lookups stay on the caller */
    int64_t ntasks = split(n, threads, 1, 65536 / K + 1, &c.chunk);
    run_tasks(task_dequant, &c, ntasks, threads);
    return 0;
}
