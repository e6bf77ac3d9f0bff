/* The kernels' entry points that other C files call too (decode_stack.c runs
 * a whole decode step on them). Python reaches the same functions through
 * ctypes (__init__.py); the comments at each definition say what they do. */
#ifndef CANDLE_KERNELS_H
#define CANDLE_KERNELS_H
#include <stdint.h>

/* Cache element types (`ctype`): float32, bfloat16, float16. */
enum { CACHE_F32 = 0, CACHE_BF16 = 1, CACHE_F16 = 2 };

void rms_norm(const float *x, const float *w, float *out, int64_t rows, int dim, float eps,
              int threads);
void add_rms_norm(float *x, float *residual, const float *w, int64_t rows, int dim, float eps,
                  int threads);
void silu_and_mul(const float *gate_up, float *out, int64_t rows, int inter, int threads);
void rotary(float *x, int64_t stride, int heads, const float *cos_t, const float *sin_t,
            const int64_t *pos, int64_t rows, int d, int head_dim, int threads);
int decode_attention(const float *q, int64_t q_stride, const void *k_cache, const void *v_cache,
                     int ctype, const int64_t *tables, int64_t table_stride,
                     const int64_t *seq_lens, float *out, int batch, int heads, int kv_heads,
                     int d, int bs, float scale, int window, float softcap, int threads);
int gemm_packed(const float *x, int64_t M, int64_t K, const float *packed, const float *bias,
                int64_t N, float *out, int threads);
int quant_gemm(int qtype, const uint8_t *w, int64_t N, int64_t K, const float *x, int64_t M,
               int64_t ldx, const float *bias, float *out, int64_t ldo, int fast, int threads);
void store_kv(const float *k, int64_t ldk, const float *v, int64_t ldv, void *k_cache,
              void *v_cache, int ctype, const int64_t *slots, int64_t n, int kv_heads, int d,
              int bs);

#endif
