/* Paged decode attention over the KV cache (float32, bfloat16 or float16
 * elements), one query token per sequence: a portable two-pass version and
 * an AVX-512 one-pass version with an online softmax. Called from Python
 * (paged_decode_attention) and from decode_stack.c (decode_attention).
 *
 * Caches are laid out [num_blocks, kv_heads, block_size, head_dim] (the torch
 * backend's layout). Accumulation is in float32.
 *
 * Sliding windows (window > 0): the query at position seq_len - 1 sees the
 * last `window` keys only. Reading starts at the block holding the first of
 * them; table entries before it may be placeholders (block 0, someone
 * else's) and are never touched. Soft-capping (softcap > 0, Gemma 2): each
 * scaled score s becomes softcap * tanh(s / softcap) before the softmax. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "vexp.h"

#define MAX_HEAD_DIM 256

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to float, exactly (subnormals included), without F16C. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t u;
    if (exp == 0x1F) {
        u = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        float f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24 */
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Row `i` of a cache as float32: the row itself, or `buf` filled from 16-bit values. */
static inline const float *cache_row(const void *cache, int64_t off, int ctype, int d,
                                     float *buf) {
    if (ctype == CACHE_F32) return (const float *)cache + off;
    const uint16_t *src = (const uint16_t *)cache + off;
    if (ctype == CACHE_F16) {
        for (int j = 0; j < d; j++) buf[j] = f16_to_f32(src[j]);
        return buf;
    }
#pragma omp simd
    for (int j = 0; j < d; j++) buf[j] = bf16_to_f32(src[j]);
    return buf;
}

/* Ask for the next block (one head's rows: a few KiB, contiguous) while this
 * one is being used: block tables scatter blocks, so the hardware prefetcher
 * cannot guess where the next one is. */
static inline void prefetch_block(const void *cache, int64_t off, int ctype, int elems) {
    const char *p = (const char *)cache + off * (ctype ? 2 : 4);
    int bytes = elems * (ctype ? 2 : 4);
    for (int i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, 3);
}

/* The first position a decode query at seq_len - 1 sees: 0 without a window. */
static inline int64_t window_start(int64_t seq_len, int window) {
    return window > 0 && seq_len > window ? seq_len - window : 0;
}

/* Rows [lo, hi) of block b that positions [first, seq_len) cover. */
static inline void block_rows(int64_t b, int bs, int64_t first, int64_t seq_len, int *lo,
                              int *hi) {
    int64_t start = b * bs;
    *lo = first > start ? (int)(first - start) : 0;
    *hi = seq_len - start < bs ? (int)(seq_len - start) : bs;
}

/* Attention of the `g` query heads sharing one KV head, for one sequence,
 * over positions [first, seq_len): scores holds g * (seq_len - first) floats.
 * K is read once for all of them (GQA reuse), then V once. */
static void decode_group(const float *q, const void *kc, const void *vc, int ctype,
                         const int64_t *table, int64_t seq_len, int64_t first,
                         int64_t block_stride, int64_t head_off, int bs, int d, int g,
                         float scale, float softcap, float *scores, float *out) {
    float kbuf[MAX_HEAD_DIM], vbuf[MAX_HEAD_DIM];
    int64_t len = seq_len - first, nblocks = (seq_len + bs - 1) / bs;
    for (int64_t b = first / bs; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int lo, hi;
        block_rows(b, bs, first, seq_len, &lo, &hi);
        if (b + 1 < nblocks) prefetch_block(kc, table[b + 1] * block_stride + head_off, ctype, bs * d);
        for (int i = lo; i < hi; i++) {
            const float *k = cache_row(kc, base + (int64_t)i * d, ctype, d, kbuf);
            int64_t t = b * bs + i - first;
            for (int h = 0; h < g; h++) {
                const float *qh = q + h * d;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < d; j++) s += qh[j] * k[j];
                s *= scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                scores[h * len + t] = s;
            }
        }
    }
    for (int h = 0; h < g; h++) {
        float *sh = scores + h * len;
        float m = -INFINITY;
        for (int64_t t = 0; t < len; t++) m = sh[t] > m ? sh[t] : m;
        float sum = 0.0f;
        for (int64_t t = 0; t < len; t++) {
            sh[t] = expf(sh[t] - m);
            sum += sh[t];
        }
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t t = 0; t < len; t++) sh[t] *= inv;
        memset(out + h * d, 0, sizeof(float) * d);
    }
    for (int64_t b = first / bs; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int lo, hi;
        block_rows(b, bs, first, seq_len, &lo, &hi);
        if (b + 1 < nblocks) prefetch_block(vc, table[b + 1] * block_stride + head_off, ctype, bs * d);
        for (int i = lo; i < hi; i++) {
            const float *v = cache_row(vc, base + (int64_t)i * d, ctype, d, vbuf);
            int64_t t = b * bs + i - first;
            for (int h = 0; h < g; h++) {
                float w = scores[h * len + t];
                float *oh = out + h * d;
#pragma omp simd
                for (int j = 0; j < d; j++) oh[j] += w * v[j];
            }
        }
    }
}
/* ---- decode attention, AVX-512 -------------------------------------------
 * One pass over K and V with an online softmax, 16 tokens (a tile) at a time:
 * scores of a tile go through the vector exp together, and the running
 * output of each query head is rescaled once a tile. Measured on 2 vCPUs,
 * the two-pass scalar version was bound by compute (scalar expf, per-token
 * stores of the output), not by memory, even with the cache out of L3. */
#if defined(__AVX512F__)
#define TILE 16

/* n rows of d floats at `off` as float32: in place, or widened from 16 bits into buf. */
static inline const float *tile_rows(const void *cache, int64_t off, int ctype, int n, int d,
                                     float *buf) {
    if (ctype == CACHE_F32) return (const float *)cache + off;
    const uint16_t *src = (const uint16_t *)cache + off;
    if (ctype == CACHE_F16) {
        for (int i = 0; i < n * d; i += 16)
            _mm512_storeu_ps(buf + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
        return buf;
    }
    for (int i = 0; i < n * d; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(src + i));
        __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        _mm512_storeu_ps(buf + i, _mm512_castsi512_ps(w));
    }
    return buf;
}

/* The sums of 16 vectors, as one vector: lane i is the sum of v[i]'s lanes.
 * A transpose-and-add tree, about 3 instructions a vector where reducing each
 * alone takes 8 or more. */
static inline __m512 sum16(const __m512 *v) {
    __m512 x[8], y[4];
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* y[i] holds, in each 128-bit lane, that lane's partial sums of v[4i..4i+3] */
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* tanh on 16 lanes as 1 - 2 / (exp(2x) + 1): exp's clamping makes large |x|
 * give exactly +-1; near 0 the absolute error is a few float32 ulps of 1,
 * which the softcap (tens) scales to ~1e-5 in a score. */
static inline __m512 tanh_v512(__m512 x) {
    __m512 e = exp_v512(_mm512_add_ps(x, x));
    __m512 r = _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
    return _mm512_sub_ps(_mm512_set1_ps(1.0f), r);
}

/* Up to HEADS_MAX query heads of one KV head, d = 16 * C floats each, over
 * positions [first, seq_len) of one sequence. Inlined with constant `hn` and
 * `C`, the per-head accumulators and the query live in registers; with
 * run-time ones it still works, slower. */
#define HEADS_MAX 4
#define C_MAX 16
static inline __attribute__((always_inline)) void
attend_heads(const float *q, const void *kc, const void *vc, int ctype, const int64_t *table,
             int64_t seq_len, int64_t first, int64_t block_stride, int64_t head_off, int bs,
             int hn, int C, float scale, float softcap, float *out) {
    int d = 16 * C;
    float kbuf[TILE * C_MAX * 16], vbuf[TILE * C_MAX * 16];
    float s[HEADS_MAX][TILE], m[HEADS_MAX], l[HEADS_MAX];
    __m512 part[HEADS_MAX][TILE], acc[HEADS_MAX][C_MAX];
    for (int h = 0; h < hn; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        for (int c = 0; c < C; c++) acc[h][c] = _mm512_setzero_ps();
    }
    int64_t b0 = first / bs, nblocks = (seq_len + bs - 1) / bs;
    for (int64_t b = b0; b < nblocks && b < b0 + 2; b++) {
        prefetch_block(kc, table[b] * block_stride + head_off, ctype, bs * d);
        prefetch_block(vc, table[b] * block_stride + head_off, ctype, bs * d);
    }
    for (int64_t b = b0; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int lo, nb;
        block_rows(b, bs, first, seq_len, &lo, &nb);
        if (b + 2 < nblocks) { /* two blocks ahead: one is not enough to hide DRAM latency */
            int64_t ahead = table[b + 2] * block_stride + head_off;
            prefetch_block(kc, ahead, ctype, bs * d);
            prefetch_block(vc, ahead, ctype, bs * d);
        }
        for (int t0 = lo; t0 < nb; t0 += TILE) {
            int n = nb - t0 < TILE ? nb - t0 : TILE;
            int64_t off = base + (int64_t)t0 * d;
            const float *K = tile_rows(kc, off, ctype, n, d, kbuf);
            for (int t = 0; t < n; t++) {
                __m512 k[C_MAX];
                for (int c = 0; c < C; c++) k[c] = _mm512_loadu_ps(K + t * d + 16 * c);
                for (int h = 0; h < hn; h++) {
                    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q + h * d), k[0]);
                    for (int c = 1; c < C; c++)
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * d + 16 * c), k[c], a);
                    part[h][t] = a;
                }
            }
            __mmask16 live = (__mmask16)((1u << n) - 1u);
            for (int h = 0; h < hn; h++) {
                for (int t = n; t < TILE; t++) part[h][t] = _mm512_setzero_ps();
                __m512 sv = _mm512_mul_ps(sum16(part[h]), _mm512_set1_ps(scale));
                if (softcap > 0.0f)
                    sv = _mm512_mul_ps(_mm512_set1_ps(softcap),
                                       tanh_v512(_mm512_div_ps(sv, _mm512_set1_ps(softcap))));
                sv = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, sv);
                float top = _mm512_reduce_max_ps(sv);
                float mnew = top > m[h] ? top : m[h];
                float corr = expf(m[h] - mnew); /* 0 on the first tile: m is -inf */
                __m512 p = _mm512_maskz_mov_ps(live, exp_v512(_mm512_sub_ps(sv, _mm512_set1_ps(mnew))));
                l[h] = l[h] * corr + _mm512_reduce_add_ps(p);
                m[h] = mnew;
                _mm512_storeu_ps(s[h], p);
                __m512 cv = _mm512_set1_ps(corr);
                for (int c = 0; c < C; c++) acc[h][c] = _mm512_mul_ps(acc[h][c], cv);
            }
            const float *V = tile_rows(vc, off, ctype, n, d, vbuf);
            for (int t = 0; t < n; t++) {
                __m512 v[C_MAX];
                for (int c = 0; c < C; c++) v[c] = _mm512_loadu_ps(V + t * d + 16 * c);
                for (int h = 0; h < hn; h++) {
                    __m512 w = _mm512_set1_ps(s[h][t]);
                    for (int c = 0; c < C; c++) acc[h][c] = _mm512_fmadd_ps(w, v[c], acc[h][c]);
                }
            }
        }
    }
    for (int h = 0; h < hn; h++) {
        __m512 inv = _mm512_set1_ps(l[h] > 0.0f ? 1.0f / l[h] : 0.0f);
        for (int c = 0; c < C; c++)
            _mm512_storeu_ps(out + h * d + 16 * c, _mm512_mul_ps(acc[h][c], inv));
    }
}

/* As decode_group, for d a multiple of 16 up to 16 * C_MAX: query heads in
 * chunks that keep their accumulators in registers (16 vectors). */
static void decode_group_v512(const float *q, const void *kc, const void *vc, int ctype,
                              const int64_t *table, int64_t seq_len, int64_t first,
                              int64_t block_stride, int64_t head_off, int bs, int d, int g,
                              float scale, float softcap, float *out) {
    /* 16 accumulator vectors at most: 4 heads of d <= 64, 2 of 128, 1 of 256 */
    int C = d / 16, chunk = C <= 4 ? 4 : (C <= 8 ? 2 : 1);
    for (int h0 = 0; h0 < g; h0 += chunk) {
        int hn = g - h0 < chunk ? g - h0 : chunk;
        const float *qh = q + h0 * d;
        float *oh = out + h0 * d;
#define ATTEND(HN, CC)                                                                         \
    attend_heads(qh, kc, vc, ctype, table, seq_len, first, block_stride, head_off, bs, HN,  \
                 CC, scale, softcap, oh)
        switch (C * 8 + hn) {
        case 4 * 8 + 1: ATTEND(1, 4); break;
        case 4 * 8 + 2: ATTEND(2, 4); break;
        case 4 * 8 + 3: ATTEND(3, 4); break;
        case 4 * 8 + 4: ATTEND(4, 4); break;
        case 8 * 8 + 1: ATTEND(1, 8); break;
        case 8 * 8 + 2: ATTEND(2, 8); break;
        case 16 * 8 + 1: ATTEND(1, 16); break;
        default: ATTEND(hn, C); break;
        }
#undef ATTEND
    }
}
#endif

typedef struct {
    const float *q;
    int64_t q_stride; /* floats between two sequences' query rows */
    const void *k_cache, *v_cache;
    int ctype;
    const int64_t *tables;
    int64_t table_stride;
    const int64_t *seq_lens;
    float *out;
    int heads, kv_heads, d, bs;
    float scale;
    int window;    /* > 0: sliding window in tokens */
    float softcap; /* > 0: cap on the scaled scores */
    _Atomic int failed;
} attn_args;

/* Task (sequence s, KV head kvh): the g query heads sharing that KV head.
 * One task each, claimed dynamically: histories differ in length. */
static void attn_task(void *p, int64_t task) {
    attn_args *a = p;
    int kv_heads = a->kv_heads, d = a->d, bs = a->bs, g = a->heads / kv_heads;
    int64_t s = task / kv_heads, kvh = task % kv_heads;
    int64_t row = (s * a->heads + kvh * g) * d;
    const float *q = a->q + s * a->q_stride + kvh * g * d;
    int64_t block_stride = (int64_t)kv_heads * bs * d, head_off = kvh * bs * d;
    const int64_t *table = a->tables + s * a->table_stride;
    int64_t len = a->seq_lens[s], first = window_start(len, a->window);
#if defined(__AVX512F__)
    if (d % 16 == 0 && d <= 16 * C_MAX) {
        decode_group_v512(q, a->k_cache, a->v_cache, a->ctype, table, len, first, block_stride,
                          head_off, bs, d, g, a->scale, a->softcap, a->out + row);
        return;
    }
#endif
    float *scores = malloc(sizeof(float) * (size_t)g * (size_t)(len > first ? len - first : 1));
    if (!scores) {
        atomic_store_explicit(&a->failed, 1, memory_order_relaxed);
        return;
    }
    decode_group(q, a->k_cache, a->v_cache, a->ctype, table, len, first, block_stride,
                 head_off, bs, d, g, a->scale, a->softcap, scores, a->out + row);
    free(scores);
}

/* One query token per sequence over its paged history.
 * q, out: [batch, heads, d] float32; tables: [batch, table_stride] int64;
 * seq_lens: [batch] int64; window <= 0 and softcap <= 0 mean none.
 * Returns 0, or -1 if scratch memory ran out. */
int paged_decode_attention(const float *q, const void *k_cache, const void *v_cache,
                           int ctype, const int64_t *tables, int64_t table_stride,
                           const int64_t *seq_lens, float *out, int batch, int heads,
                           int kv_heads, int d, int bs, float scale, int window, float softcap,
                           int threads) {
    return decode_attention(q, (int64_t)heads * d, k_cache, v_cache, ctype, tables,
                            table_stride, seq_lens, out, batch, heads, kv_heads, d, bs, scale,
                            window, softcap, threads);
}

/* As paged_decode_attention, with query rows q_stride floats apart (the Q
 * columns of a fused QKV output). */
int decode_attention(const float *q, int64_t q_stride, const void *k_cache, const void *v_cache,
                     int ctype, const int64_t *tables, int64_t table_stride,
                     const int64_t *seq_lens, float *out, int batch, int heads, int kv_heads,
                     int d, int bs, float scale, int window, float softcap, int threads) {
    attn_args a = {q,     q_stride, k_cache, v_cache, ctype, tables,  table_stride, seq_lens,
                   out,   heads,    kv_heads, d,      bs,    scale,   window,       softcap,
                   0};
    pool_run(attn_task, &a, (int64_t)batch * kv_heads, threads);
    return atomic_load(&a.failed) ? -1 : 0;
}
