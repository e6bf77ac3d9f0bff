/* The panel matmul's register tile, shared by the float32 panel kernel
 * (kernels.c) and the quantized kernels that dequantize a panel first (quant.c).
 *
 * A panel holds 32 output columns of W as [K][32] floats: one contiguous
 * stream. gemm_rows(x, ...) adds x[0:mr, 0:kc] @ panel[0:kc, :] into an
 * accumulator of mr x 32 floats kept in registers, prefetching `ahead`. */
#ifndef CANDLE_PANEL_GEMM_H
#define CANDLE_PANEL_GEMM_H
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define NR 32
#define MR 12
#define KC 64

/* acc(mr x 32) (+)= x[0:mr, 0:kc] @ panel[0:kc, :], acc kept in registers. */
static inline __attribute__((always_inline)) void
gemm_tile(const float *x, int64_t ldx, const float *panel, int kc, float *acc, int mr,
          int first, const char *ahead) {
    __m512 c0[MR], c1[MR];
    for (int i = 0; i < mr; i++) {
        c0[i] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + i * NR);
        c1[i] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + i * NR + 16);
    }
    for (int k = 0; k < kc; k++) {
        /* The next slice: 2 cache lines per k step, 128 bytes ahead of need. */
        __builtin_prefetch(ahead + k * NR * 4, 0, 3);
        __builtin_prefetch(ahead + k * NR * 4 + 64, 0, 3);
        __m512 b0 = _mm512_loadu_ps(panel + k * NR), b1 = _mm512_loadu_ps(panel + k * NR + 16);
        for (int i = 0; i < mr; i++) {
            __m512 a = _mm512_set1_ps(x[i * ldx + k]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm512_storeu_ps(acc + i * NR, c0[i]);
        _mm512_storeu_ps(acc + i * NR + 16, c1[i]);
    }
}

static inline void gemm_rows(const float *x, int64_t ldx, const float *panel, int kc, float *acc,
                             int mr, int first, const char *ahead) {
    switch (mr) {
#define ROWS(R) case R: gemm_tile(x, ldx, panel, kc, acc, R, first, ahead); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6)
        ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)
#undef ROWS
    }
}

#endif /* __AVX512F__ */
#endif
