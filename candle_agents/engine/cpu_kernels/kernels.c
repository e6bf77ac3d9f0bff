/* CPU kernels for the engine, called through ctypes (see __init__.py).
 *
 * Plain C: no torch headers, so it compiles in about a second on first use.
 * The kernels run their tasks on the engine's own thread pool (pool.c), not
 * on OpenMP: an OpenMP pool is per calling thread and shared with torch, and
 * one left idle by another thread throttled every region (see pool.c).
 *
 * Caches are laid out [num_blocks, kv_heads, block_size, head_dim] (the torch
 * backend's layout), in float32 or bfloat16. Accumulation is in float32.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"

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

/* Attention of the `g` query heads sharing one KV head, for one sequence.
 * K is read once for all of them (GQA reuse), then V once. */
static void decode_group(const float *q, const void *kc, const void *vc, int ctype,
                         const int64_t *table, int64_t seq_len, int64_t block_stride,
                         int64_t head_off, int bs, int d, int g, float scale, float *scores,
                         float *out) {
    float kbuf[MAX_HEAD_DIM], vbuf[MAX_HEAD_DIM];
    int64_t nblocks = (seq_len + bs - 1) / bs;
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int n = (int)((seq_len - b * bs) < bs ? (seq_len - b * bs) : bs);
        if (b + 1 < nblocks) prefetch_block(kc, table[b + 1] * block_stride + head_off, ctype, bs * d);
        for (int i = 0; i < n; i++) {
            const float *k = cache_row(kc, base + (int64_t)i * d, ctype, d, kbuf);
            int64_t t = b * bs + i;
            for (int h = 0; h < g; h++) {
                const float *qh = q + h * d;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < d; j++) s += qh[j] * k[j];
                scores[h * seq_len + t] = s * scale;
            }
        }
    }
    for (int h = 0; h < g; h++) {
        float *sh = scores + h * seq_len;
        float m = -INFINITY;
        for (int64_t t = 0; t < seq_len; t++) m = sh[t] > m ? sh[t] : m;
        float sum = 0.0f;
        for (int64_t t = 0; t < seq_len; t++) {
            sh[t] = expf(sh[t] - m);
            sum += sh[t];
        }
        float inv = 1.0f / sum;
        for (int64_t t = 0; t < seq_len; t++) sh[t] *= inv;
        memset(out + h * d, 0, sizeof(float) * d);
    }
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int n = (int)((seq_len - b * bs) < bs ? (seq_len - b * bs) : bs);
        if (b + 1 < nblocks) prefetch_block(vc, table[b + 1] * block_stride + head_off, ctype, bs * d);
        for (int i = 0; i < n; i++) {
            const float *v = cache_row(vc, base + (int64_t)i * d, ctype, d, vbuf);
            int64_t t = b * bs + i;
            for (int h = 0; h < g; h++) {
                float w = scores[h * seq_len + t];
                float *oh = out + h * d;
#pragma omp simd
                for (int j = 0; j < d; j++) oh[j] += w * v[j];
            }
        }
    }
}

/* ---- fused float32 elementwise ops over [rows, dim] ------------------------
 * Each is one pass over memory where torch takes three to six, and follows
 * the HF models' order of operations so results stay within float rounding. */

/* Below this many elements one thread wins: waking a second one costs 50-100 us
 * on a VM, longer than the whole op (measured on 2 vCPUs). */
#define PAR_MIN_ELEMS (1 << 18)
/* Tasks per thread for the row-wise ops: contiguous row chunks, a few per
 * thread so that a worker that starts late leaves its share to the others. */
#define CHUNKS_PER_THREAD 4

/* A row-wise op split into contiguous row ranges on the pool. */
typedef struct {
    void (*rows_fn)(const void *args, int64_t r0, int64_t r1);
    const void *args;
    int64_t rows, per_task;
} row_job;

static void row_task(void *p, int64_t t) {
    const row_job *job = p;
    int64_t r0 = t * job->per_task, r1 = r0 + job->per_task;
    job->rows_fn(job->args, r0, r1 < job->rows ? r1 : job->rows);
}

/* rows_fn over [0, rows), on one thread when rows * width < PAR_MIN_ELEMS. */
static void run_rows(void (*rows_fn)(const void *, int64_t, int64_t), const void *args,
                     int64_t rows, int64_t width, int threads) {
    if (rows <= 0) return;
    if (threads <= 1 || rows * width < PAR_MIN_ELEMS) {
        rows_fn(args, 0, rows);
        return;
    }
    int64_t tasks = (int64_t)threads * CHUNKS_PER_THREAD;
    if (tasks > rows) tasks = rows;
    row_job job = {rows_fn, args, rows, (rows + tasks - 1) / tasks};
    pool_run(row_task, &job, (rows + job.per_task - 1) / job.per_task, threads);
}

static inline void norm_row(const float *x, const float *w, float *out, int dim, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < dim; j++) ss += x[j] * x[j];
    float r = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
    for (int j = 0; j < dim; j++) out[j] = w[j] * (x[j] * r);
}

typedef struct {
    float *x, *residual, *out;
    const float *w;
    int dim;
    float eps;
} norm_args;

static void rms_norm_rows(const void *p, int64_t r0, int64_t r1) {
    const norm_args *a = p;
    for (int64_t r = r0; r < r1; r++)
        norm_row(a->x + r * a->dim, a->w, a->out + r * a->dim, a->dim, a->eps);
}

/* out = w * x / rms(x), row by row. */
void rms_norm(const float *x, const float *w, float *out, int64_t rows, int dim, float eps,
              int threads) {
    norm_args a = {(float *)x, NULL, out, w, dim, eps};
    run_rows(rms_norm_rows, &a, rows, dim, threads);
}

static void add_rms_norm_rows(const void *p, int64_t r0, int64_t r1) {
    const norm_args *a = p;
    int dim = a->dim;
    for (int64_t r = r0; r < r1; r++) {
        float *res = a->residual + r * dim, *xr = a->x + r * dim;
#pragma omp simd
        for (int j = 0; j < dim; j++) res[j] = res[j] + xr[j];
        norm_row(res, a->w, xr, dim, a->eps);
    }
}

/* residual += x; x = w * residual / rms(residual): the residual stream's add
 * fused with the next norm, both in place. */
void add_rms_norm(float *x, float *residual, const float *w, int64_t rows, int dim, float eps,
                  int threads) {
    norm_args a = {x, residual, NULL, w, dim, eps};
    run_rows(add_rms_norm_rows, &a, rows, dim, threads);
}

/* exp(x) in float32: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
 * Taylor polynomial (relative error ~1e-7, what float32 holds), times 2^n.
 * glibc's expf is a scalar call the compiler cannot vectorise, so the SIMD
 * versions below compute the same thing 16 or 8 lanes at a time. */
#define EXP_LO -87.0f
#define EXP_HI 88.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f /* ln2 split in two for precision */
#define LN2_LO 1.428606765330187045e-06f
#define EXP_POLY(P, R, MADD)                                                                   \
    P = MADD(P, R, 1.0f / 120.0f);                                                             \
    P = MADD(P, R, 1.0f / 24.0f);                                                              \
    P = MADD(P, R, 1.0f / 6.0f);                                                               \
    P = MADD(P, R, 0.5f);                                                                      \
    P = MADD(P, R, 1.0f);                                                                      \
    P = MADD(P, R, 1.0f)

#define SCALAR_MADD(p, r, c) ((p) * (r) + (c))
static inline float exp_scalar(float x) {
    x = x < EXP_LO ? EXP_LO : (x > EXP_HI ? EXP_HI : x);
    float n = nearbyintf(x * LOG2E);
    float r = (x - n * LN2_HI) - n * LN2_LO;
    float p = 1.0f / 720.0f;
    EXP_POLY(p, r, SCALAR_MADD);
    return ldexpf(p, (int)n);
}

static inline float silu_mul_scalar(float g, float u) { return g / (1.0f + exp_scalar(-g)) * u; }

#if defined(__AVX512F__)
#include <immintrin.h>
#define LANES 16
#define V512_MADD(p, r, c) _mm512_fmadd_ps(p, r, _mm512_set1_ps(c))
static inline __m512 exp_v512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(EXP_HI)), _mm512_set1_ps(EXP_LO));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    EXP_POLY(p, r, V512_MADD);
    return _mm512_scalef_ps(p, n);
}
static inline void silu_mul_lanes(const float *g, const float *u, float *o) {
    __m512 gv = _mm512_loadu_ps(g);
    __m512 e = exp_v512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(o, _mm512_mul_ps(s, _mm512_loadu_ps(u)));
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LANES 8
#define V256_MADD(p, r, c) _mm256_fmadd_ps(p, r, _mm256_set1_ps(c))
static inline void silu_mul_lanes(const float *g, const float *u, float *o) {
    __m256 gv = _mm256_loadu_ps(g);
    __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), gv);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(EXP_HI)), _mm256_set1_ps(EXP_LO));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    EXP_POLY(p, r, V256_MADD);
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                      _mm256_set1_epi32(127)), 23);
    __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    __m256 s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(o, _mm256_mul_ps(s, _mm256_loadu_ps(u)));
}
#else
#define LANES 1
static inline void silu_mul_lanes(const float *g, const float *u, float *o) {
    *o = silu_mul_scalar(*g, *u);
}
#endif

typedef struct {
    const float *gate_up;
    float *out;
    int inter;
} silu_args;

static void silu_rows(const void *p, int64_t r0, int64_t r1) {
    const silu_args *a = p;
    int inter = a->inter;
    for (int64_t r = r0; r < r1; r++) {
        const float *g = a->gate_up + r * 2 * inter, *u = g + inter;
        float *o = a->out + r * inter;
        int j = 0;
        for (; j + LANES <= inter; j += LANES) silu_mul_lanes(g + j, u + j, o + j);
        for (; j < inter; j++) o[j] = silu_mul_scalar(g[j], u[j]);
    }
}

/* out[r] = silu(gate_up[r, :inter]) * gate_up[r, inter:]. */
void silu_and_mul(const float *gate_up, float *out, int64_t rows, int inter, int threads) {
    silu_args a = {gate_up, out, inter};
    run_rows(silu_rows, &a, rows, inter, threads);
}

/* Rotary embedding (rotate-half form), in place on `heads` heads of `d` per
 * row; rows are `stride` floats apart, so q and k can be rotated inside the
 * fused QKV output. cos/sin are [positions, d] tables. */
typedef struct {
    float *x;
    int64_t stride;
    int heads, d;
    const float *cos_t, *sin_t;
    const int64_t *pos;
} rotary_args;

static void rotary_rows(const void *p, int64_t r0, int64_t r1) {
    const rotary_args *ra = p;
    int d = ra->d, half = d / 2;
    for (int64_t r = r0; r < r1; r++) {
        const float *c = ra->cos_t + ra->pos[r] * d, *s = ra->sin_t + ra->pos[r] * d;
        for (int h = 0; h < ra->heads; h++) {
            float *v = ra->x + r * ra->stride + (int64_t)h * d;
#pragma omp simd
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * c[j] + (-b) * s[j];
                v[j + half] = b * c[j + half] + a * s[j + half];
            }
        }
    }
}

void rotary(float *x, int64_t stride, int heads, const float *cos_t, const float *sin_t,
            const int64_t *pos, int64_t rows, int d, int threads) {
    rotary_args a = {x, stride, heads, d, cos_t, sin_t, pos};
    run_rows(rotary_rows, &a, rows, (int64_t)heads * d, threads);
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

/* Up to HEADS_MAX query heads of one KV head, d = 16 * C floats each, over
 * one sequence. Inlined with constant `hn` and `C`, the per-head accumulators
 * and the query live in registers; with run-time ones it still works, slower. */
#define HEADS_MAX 4
#define C_MAX 8
static inline __attribute__((always_inline)) void
attend_heads(const float *q, const void *kc, const void *vc, int ctype, const int64_t *table,
             int64_t seq_len, int64_t block_stride, int64_t head_off, int bs, int hn, int C,
             float scale, float *out) {
    int d = 16 * C;
    float kbuf[TILE * C_MAX * 16], vbuf[TILE * C_MAX * 16];
    float s[HEADS_MAX][TILE], m[HEADS_MAX], l[HEADS_MAX];
    __m512 part[HEADS_MAX][TILE], acc[HEADS_MAX][C_MAX];
    for (int h = 0; h < hn; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        for (int c = 0; c < C; c++) acc[h][c] = _mm512_setzero_ps();
    }
    int64_t nblocks = (seq_len + bs - 1) / bs;
    for (int64_t b = 0; b < nblocks && b < 2; b++) {
        prefetch_block(kc, table[b] * block_stride + head_off, ctype, bs * d);
        prefetch_block(vc, table[b] * block_stride + head_off, ctype, bs * d);
    }
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t base = table[b] * block_stride + head_off;
        int nb = (int)((seq_len - b * bs) < bs ? (seq_len - b * bs) : bs);
        if (b + 2 < nblocks) { /* two blocks ahead: one is not enough to hide DRAM latency */
            int64_t ahead = table[b + 2] * block_stride + head_off;
            prefetch_block(kc, ahead, ctype, bs * d);
            prefetch_block(vc, ahead, ctype, bs * d);
        }
        for (int t0 = 0; t0 < nb; t0 += TILE) {
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
                              const int64_t *table, int64_t seq_len, int64_t block_stride,
                              int64_t head_off, int bs, int d, int g, float scale,
                              float *out) {
    int C = d / 16, chunk = C <= 4 ? 4 : 2;
    for (int h0 = 0; h0 < g; h0 += chunk) {
        int hn = g - h0 < chunk ? g - h0 : chunk;
        const float *qh = q + h0 * d;
        float *oh = out + h0 * d;
#define ATTEND(HN, CC)                                                                         \
    attend_heads(qh, kc, vc, ctype, table, seq_len, block_stride, head_off, bs, HN, CC,     \
                 scale, oh)
        switch (C * 8 + hn) {
        case 4 * 8 + 1: ATTEND(1, 4); break;
        case 4 * 8 + 2: ATTEND(2, 4); break;
        case 4 * 8 + 3: ATTEND(3, 4); break;
        case 4 * 8 + 4: ATTEND(4, 4); break;
        case 8 * 8 + 1: ATTEND(1, 8); break;
        case 8 * 8 + 2: ATTEND(2, 8); break;
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
    int64_t len = a->seq_lens[s];
#if defined(__AVX512F__)
    if (d % 16 == 0 && d <= 16 * C_MAX) {
        decode_group_v512(q, a->k_cache, a->v_cache, a->ctype, table, len,
                          block_stride, head_off, bs, d, g, a->scale, a->out + row);
        return;
    }
#endif
    float *scores = malloc(sizeof(float) * (size_t)g * (size_t)(len > 0 ? len : 1));
    if (!scores) {
        atomic_store_explicit(&a->failed, 1, memory_order_relaxed);
        return;
    }
    decode_group(q, a->k_cache, a->v_cache, a->ctype, table, len, block_stride,
                 head_off, bs, d, g, a->scale, scores, a->out + row);
    free(scores);
}

/* One query token per sequence over its paged history.
 * q, out: [batch, heads, d] float32; tables: [batch, table_stride] int64;
 * seq_lens: [batch] int64. Returns 0, or -1 if scratch memory ran out. */
int paged_decode_attention(const float *q, const void *k_cache, const void *v_cache,
                           int ctype, const int64_t *tables, int64_t table_stride,
                           const int64_t *seq_lens, float *out, int batch, int heads,
                           int kv_heads, int d, int bs, float scale, int threads) {
    return decode_attention(q, (int64_t)heads * d, k_cache, v_cache, ctype, tables,
                            table_stride, seq_lens, out, batch, heads, kv_heads, d, bs, scale,
                            threads);
}

/* As paged_decode_attention, with query rows q_stride floats apart (the Q
 * columns of a fused QKV output). */
int decode_attention(const float *q, int64_t q_stride, const void *k_cache, const void *v_cache,
                     int ctype, const int64_t *tables, int64_t table_stride,
                     const int64_t *seq_lens, float *out, int batch, int heads, int kv_heads,
                     int d, int bs, float scale, int threads) {
    attn_args a = {q,   q_stride, k_cache,  v_cache, ctype, tables, table_stride, seq_lens,
                   out, heads,    kv_heads, d,       bs,    scale,  0};
    pool_run(attn_task, &a, (int64_t)batch * kv_heads, threads);
    return atomic_load(&a.failed) ? -1 : 0;
}

/* ---- small-M matmul on panel-packed weights, AVX-512 -----------------------
 * out[M, N] = x[M, K] @ W[N, K]^T for the few rows of a decode step (4-64).
 * W is packed as [ceil(N / 32)][K][32] (zero-padded): a panel of 32 output
 * columns is one contiguous stream. oneDNN at these sizes runs its row blocks
 * one after another over each panel, so the first block waits on memory and
 * the others on the FMA units (measured: the sum of the two). Here every row
 * block takes its turn on the same 64-deep slice of a panel while it sits in
 * L1, and the next slice is prefetched meanwhile: the weight stream and the
 * arithmetic overlap. */
#include "panel_gemm.h"
#if defined(__AVX512F__)
#define GEMM_MAX_M 64

typedef struct {
    const float *x, *packed, *bias;
    float *out;
    int64_t M, K, N, rows, panels, per_task;
} gemm_args;

/* Task t: panels [t * per_task, (t + 1) * per_task), each streamed once. */
static void gemm_task(void *arg, int64_t t) {
    const gemm_args *a = arg;
    const float *x = a->x, *bias = a->bias;
    float *out = a->out;
    int64_t M = a->M, K = a->K, N = a->N, rows = a->rows;
    int64_t p1 = (t + 1) * a->per_task < a->panels ? (t + 1) * a->per_task : a->panels;
    for (int64_t p = t * a->per_task; p < p1; p++) {
        float acc[GEMM_MAX_M * NR];
        const float *panel = a->packed + p * K * NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? (int)(K - k0) : KC;
            /* after the panel's last slice comes the next panel's first */
            const char *ahead = (const char *)(panel + (k0 + 2 * KC) * NR);
            for (int64_t m0 = 0; m0 < M; m0 += rows) {
                int mr = M - m0 < rows ? (int)(M - m0) : rows;
                gemm_rows(x + m0 * K + k0, K, panel + k0 * NR, kc, acc + m0 * NR, mr, k0 == 0,
                          ahead);
            }
        }
        int64_t n0 = p * NR;
        int cols = N - n0 < NR ? (int)(N - n0) : NR;
        for (int64_t i = 0; i < M; i++)
            for (int j = 0; j < cols; j++)
                out[i * N + n0 + j] = acc[i * NR + j] + (bias ? bias[n0 + j] : 0.0f);
    }
}

/* out[M, N] = x[M, K] @ W^T (+ bias), W packed as above; M <= GEMM_MAX_M. */
int gemm_packed(const float *x, int64_t M, int64_t K, const float *packed, const float *bias,
                int64_t N, float *out, int threads) {
    if (M > GEMM_MAX_M) return -1;
    if (M <= 0 || N <= 0) return 0;
    int64_t panels = (N + NR - 1) / NR;
    /* even row blocks: 32 rows go as 11 + 11 + 10, not 12 + 12 + 8 */
    int64_t blocks = (M + MR - 1) / MR, rows = (M + blocks - 1) / blocks;
    /* contiguous runs of panels, a few per thread (see CHUNKS_PER_THREAD) */
    int64_t tasks = threads > 1 ? (int64_t)threads * CHUNKS_PER_THREAD : 1;
    if (tasks > panels) tasks = panels;
    int64_t per_task = (panels + tasks - 1) / tasks;
    gemm_args a = {x, packed, bias, out, M, K, N, rows, panels, per_task};
    pool_run(gemm_task, &a, (panels + per_task - 1) / per_task, threads);
    return 0;
}
#else
int gemm_packed(const float *x, int64_t M, int64_t K, const float *packed, const float *bias,
                int64_t N, float *out, int threads) {
    (void)x, (void)M, (void)K, (void)packed, (void)bias, (void)N, (void)out, (void)threads;
    return -1; /* no vector path: callers keep to torch */
}
#endif

/* ---- OpenMP thread pools ---------------------------------------------------
 * The kernels no longer use OpenMP, but torch does: libgomp keeps one pool of
 * workers per thread that has opened a parallel region, and once it manages
 * more threads than there are CPUs it stops spinning between regions: every
 * region then pays a futex wake-up (50-100 us on a VM). Loading a model on
 * the caller's thread leaves such a pool behind while the engine's torch work
 * (prefill matmuls, SDPA) runs on its own thread; releasing the caller's pool
 * keeps the engine thread's workers spinning. Returns 0 when released. */
#if defined(_OPENMP) && defined(__GNUC__)
/* OpenMP 5.0; declared here because compilers that ship it still define
 * _OPENMP as 4.5. Weak: an older runtime without it leaves this null. */
extern int omp_pause_resource_all(int kind) __attribute__((weak));
int release_thread_pool(void) {
    return omp_pause_resource_all ? omp_pause_resource_all(1 /* omp_pause_soft */) : -1;
}
#else
int release_thread_pool(void) { return -1; }
#endif
