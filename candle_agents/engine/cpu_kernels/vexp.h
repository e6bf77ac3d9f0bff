/* exp(x) in float32, scalar, 16 lanes and 8 lanes (kernels.c's SiLU, attention.c's
 * softmax). */
#ifndef CANDLE_VEXP_H
#define CANDLE_VEXP_H
#include <math.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

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

#if defined(__AVX512F__)
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
#elif defined(__AVX2__) && defined(__FMA__)
#define V256_MADD(p, r, c) _mm256_fmadd_ps(p, r, _mm256_set1_ps(c))
static inline __m256 exp_v256(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(EXP_HI)), _mm256_set1_ps(EXP_LO));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    EXP_POLY(p, r, V256_MADD);
    /* times 2^n, built in the exponent bits (AVX2 has no scalef) */
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                      _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

#endif
