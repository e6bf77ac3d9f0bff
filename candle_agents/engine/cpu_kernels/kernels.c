/* CPU kernels for the engine, called through ctypes (see __init__.py).
 *
 * Plain C: no torch headers, so it compiles in about a second on first use.
 * The kernels run their tasks on the engine's own thread pool (pool.c), not
 * on OpenMP: an OpenMP pool is per calling thread and shared with torch, and
 * one left idle by another thread throttled every region (see pool.c).
 *
 * Here: the fused elementwise ops (norms, SiLU, rotary) and the small-M
 * matmul on panel-packed float32 weights. Decode attention is in
 * attention.c, quantized matmuls in quant*.c, whole decode steps in
 * decode_stack.c.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "vexp.h"

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

static inline float silu_mul_scalar(float g, float u) { return g / (1.0f + exp_scalar(-g)) * u; }

#if defined(__AVX512F__)
#define LANES 16
static inline void silu_mul_lanes(const float *g, const float *u, float *o) {
    __m512 gv = _mm512_loadu_ps(g);
    __m512 e = exp_v512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(o, _mm512_mul_ps(s, _mm512_loadu_ps(u)));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
static inline void silu_mul_lanes(const float *g, const float *u, float *o) {
    __m256 gv = _mm256_loadu_ps(g);
    __m256 e = exp_v256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
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

/* Rotary embedding (rotate-half form), in place on the first `d` values of
 * `heads` heads of `head_dim` per row (d < head_dim: partial rotary, as in
 * Phi-4-mini); rows are `stride` floats apart, so q and k can be rotated inside
 * the fused QKV output. cos/sin are [positions, d] tables. */
typedef struct {
    float *x;
    int64_t stride;
    int heads, d, head_dim; /* rotate the first d of each head's head_dim values */
    const float *cos_t, *sin_t;
    const int64_t *pos;
} rotary_args;

static void rotary_rows(const void *p, int64_t r0, int64_t r1) {
    const rotary_args *ra = p;
    int d = ra->d, half = d / 2;
    for (int64_t r = r0; r < r1; r++) {
        const float *c = ra->cos_t + ra->pos[r] * d, *s = ra->sin_t + ra->pos[r] * d;
        for (int h = 0; h < ra->heads; h++) {
            float *v = ra->x + r * ra->stride + (int64_t)h * ra->head_dim;
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
            const int64_t *pos, int64_t rows, int d, int head_dim, int threads) {
    rotary_args a = {x, stride, heads, d, head_dim, cos_t, sin_t, pos};
    run_rows(rotary_rows, &a, rows, (int64_t)heads * d, threads);
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
