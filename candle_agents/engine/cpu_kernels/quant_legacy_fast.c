/* Integer dots of the 32-value block types against act_q8_32 activations
 * (the fast path; quant.h). Per block: an exact int32 sum of weight x
 * activation bytes, scaled by d_w * d_x in float.
 *
 * Operands: the integer instructions multiply unsigned by signed bytes
 * (vpdpbusd, vpmaddubsw). Q4/Q5 weights are used as their unsigned codes q
 * (0..15, 0..31) against the signed activations; the offset of Q4_0 / Q5_0
 * (q - 8, q - 16) is taken off afterwards with the activation block's sum:
 * sum((q - o) a) = sum(q a) - o sum(a), and d_x sum(a) is the block's s. The
 * _1 types add m * s for their min. Q8_0 weights are signed: the dot uses
 * |w| and moves w's sign onto the activation (vpsignb).
 */
#include "quant_legacy_blocks.h"

#if defined(__AVX2__)
/* kind 0: d * (q - off) (Q4_0, Q5_0); kind 1: d * q + m (Q4_1, Q5_1). */
INLINE void dot_fast_q(const int kind, const int high, const int off, const int bytes,
                       const uint8_t *row, int64_t nb, const void *xq, int64_t stride,
                       const int m, float *out, int64_t ldo) {
    const int head = kind ? 4 : 2;
    __m256 acc[QDOT_MAX_ROWS], acc2[QDOT_MAX_ROWS];
    float corr[QDOT_MAX_ROWS];
    for (int r = 0; r < m; r++) {
        acc[r] = acc2[r] = _mm256_setzero_ps();
        corr[r] = 0.0f;
    }
    const act_q8_32 *a[QDOT_MAX_ROWS];
    for (int r = 0; r < m; r++) a[r] = act_row(xq, stride, r);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        float d = half_to_float(rd16(blk)), c = kind ? half_to_float(rd16(blk + 2)) : d;
        __m256i q = nib_u8(blk + head + 4 * high);
        if (high) q = _mm256_or_si256(q, fifth_bits_u8(rd32(blk + head)));
        for (int r = 0; r < m; r++) {
            const act_q8_32 *ab = a[r] + b;
            __m256i s = dot_u8s8(q, _mm256_loadu_si256((const __m256i *)ab->qs));
            __m256 f = _mm256_cvtepi32_ps(s), dd = _mm256_set1_ps(d * ab->d);
            /* alternate accumulators for a single row: FMA latency */
            if (m == 1 && (b & 1))
                acc2[r] = _mm256_fmadd_ps(f, dd, acc2[r]);
            else
                acc[r] = _mm256_fmadd_ps(f, dd, acc[r]);
            corr[r] += c * ab->s;
        }
    }
    for (int r = 0; r < m; r++) {
        float s = hsum256(_mm256_add_ps(acc[r], acc2[r]));
        out[r * ldo] = kind ? s + corr[r] : s - (float)off * corr[r];
    }
}

INLINE void dot_fast_q8(const uint8_t *row, int64_t nb, const void *xq, int64_t stride,
                        const int m, float *out, int64_t ldo) {
    __m256 acc[QDOT_MAX_ROWS], acc2[QDOT_MAX_ROWS];
    for (int r = 0; r < m; r++) acc[r] = acc2[r] = _mm256_setzero_ps();
    const act_q8_32 *a[QDOT_MAX_ROWS];
    for (int r = 0; r < m; r++) a[r] = act_row(xq, stride, r);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 34;
        float d = half_to_float(rd16(blk));
        __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2)), u = _mm256_abs_epi8(w);
        for (int r = 0; r < m; r++) {
            const act_q8_32 *ab = a[r] + b;
            __m256i x = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)ab->qs), w);
            __m256 f = _mm256_cvtepi32_ps(dot_u8s8(u, x)), dd = _mm256_set1_ps(d * ab->d);
            if (m == 1 && (b & 1))
                acc2[r] = _mm256_fmadd_ps(f, dd, acc2[r]);
            else
                acc[r] = _mm256_fmadd_ps(f, dd, acc[r]);
        }
    }
    for (int r = 0; r < m; r++) out[r * ldo] = hsum256(_mm256_add_ps(acc[r], acc2[r]));
}

#else /* portable */

INLINE void unpack_q(const uint8_t *qs, int high, uint32_t qh, uint8_t *q) {
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    if (high)
        for (int j = 0; j < 32; j++) q[j] |= (uint8_t)(((qh >> j) & 1u) << 4);
}

INLINE void dot_fast_q(const int kind, const int high, const int off, const int bytes,
                       const uint8_t *row, int64_t nb, const void *xq, int64_t stride,
                       const int m, float *out, int64_t ldo) {
    const int head = kind ? 4 : 2;
    float acc[QDOT_MAX_ROWS] = {0}, corr[QDOT_MAX_ROWS] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        float d = half_to_float(rd16(blk)), c = kind ? half_to_float(rd16(blk + 2)) : d;
        uint8_t q[32];
        unpack_q(blk + head + 4 * high, high, high ? rd32(blk + head) : 0, q);
        for (int r = 0; r < m; r++) {
            const act_q8_32 *ab = act_row(xq, stride, r) + b;
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int32_t)q[j] * ab->qs[j];
            acc[r] += d * ab->d * (float)s;
            corr[r] += c * ab->s;
        }
    }
    for (int r = 0; r < m; r++) out[r * ldo] = kind ? acc[r] + corr[r] : acc[r] - off * corr[r];
}

INLINE void dot_fast_q8(const uint8_t *row, int64_t nb, const void *xq, int64_t stride,
                        const int m, float *out, int64_t ldo) {
    float acc[QDOT_MAX_ROWS] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 34;
        float d = half_to_float(rd16(blk));
        const int8_t *q = (const int8_t *)(blk + 2);
        for (int r = 0; r < m; r++) {
            const act_q8_32 *ab = act_row(xq, stride, r) + b;
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int32_t)q[j] * ab->qs[j];
            acc[r] += d * ab->d * (float)s;
        }
    }
    for (int r = 0; r < m; r++) out[r * ldo] = acc[r];
}
#endif

/* ---- groups of 8 x rows ------------------------------------------------------------
 * Weights of up to QX8_MAX_ROWS rows are unpacked, X8_CHUNK blocks at a time,
 * to bytes in value order (a stack buffer that stays in L1) with their d and
 * c (m for the _1 types, else d) per block. Then for each group of 8 x rows
 * and each weight row: per block, 8 multiply-adds of a broadcast dword of 4
 * weight bytes with 4 bytes of each of the 8 rows (act_q8_32x8), one int32
 * sum per row in a lane, scaled by d_w * d_x[row] in float. The x group's
 * chunk (20 KiB) is reused from L1 or L2 by every weight row, and each x
 * load serves two weight rows (four with AVX-512 VNNI, which also takes two
 * groups at once).
 *
 * Q8_0 has signed weights: here they are offset to unsigned (w + 128) and the
 * offset is taken off with s like Q4_0's. Without VNNI, vpmaddubsw's int16
 * pair sums would saturate on that (255 * 127 * 2), so Q8_0 has no x8 path. */
#if defined(HAVE_X8)
#ifndef X8_CHUNK
#define X8_CHUNK 64
#endif

INLINE __m256i dot_acc(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

/* kind 0: d * (q - off); kind 1: d * q + m; kind 2: Q8_0 (offset 128). */
INLINE void unpack_x8(const int kind, const int high, const int bytes, const uint8_t *row,
                      int n, uint8_t *wq, float *dw, float *cw) {
    for (int i = 0; i < n; i++) {
        const uint8_t *blk = row + i * bytes;
        float d = half_to_float(rd16(blk));
        __m256i q;
        if (kind == 2) {
            q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                 _mm256_set1_epi8((char)0x80));
        } else {
            const int head = kind ? 4 : 2;
            q = nib_u8(blk + head + 4 * high);
            if (high) q = _mm256_or_si256(q, fifth_bits_u8(rd32(blk + head)));
        }
        _mm256_storeu_si256((__m256i *)(wq + 32 * i), q);
        dw[i] = d;
        cw[i] = kind == 1 ? half_to_float(rd16(blk + 2)) : d;
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
/* Two x groups side by side in 512-bit registers (16 rows a multiply-add,
 * twice the work of a 256-bit one for a little more time here), four weight
 * rows per x load: the same sums as the 256-bit loop below. */
INLINE __m512i both(const int8_t *a, const int8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

INLINE __m512 both_ps(const float *a, const float *b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(a)), _mm256_loadu_ps(b), 1);
}

INLINE void store_both(__m512 v, float *lo, float *hi) {
    _mm256_store_ps(lo, _mm512_castps512_ps256(v));
    _mm256_store_ps(hi, _mm512_extractf32x8_ps(v, 1));
}

INLINE void pair_x8(uint8_t wq[][X8_CHUNK * 32], float dw[][X8_CHUNK], float cw[][X8_CHUNK],
                    int nrows, int n, const act_q8_32x8 *xa, const act_q8_32x8 *xb,
                    float acc_a[][8], float corr_a[][8], float acc_b[][8], float corr_b[][8]) {
    for (int j0 = 0; j0 < nrows; j0 += 4) {
        /* rows past the last are repeats of it, computed but not stored */
        int jj[4];
        for (int u = 0; u < 4; u++) jj[u] = j0 + u < nrows ? j0 + u : nrows - 1;
        __m512 a[4], c[4];
        for (int u = 0; u < 4; u++) {
            a[u] = both_ps(acc_a[jj[u]], acc_b[jj[u]]);
            c[u] = both_ps(corr_a[jj[u]], corr_b[jj[u]]);
        }
        for (int i = 0; i < n; i++) {
            __m512i s[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                            _mm512_setzero_si512()};
            for (int q = 0; q < 8; q++) {
                __m512i xv = both(xa[i].qs + 32 * q, xb[i].qs + 32 * q);
                for (int u = 0; u < 4; u++)
                    s[u] = _mm512_dpbusd_epi32(
                        s[u], _mm512_set1_epi32(((const int32_t *)(wq[jj[u]] + 32 * i))[q]), xv);
            }
            __m512 xd = both_ps(xa[i].d, xb[i].d), xs = both_ps(xa[i].s, xb[i].s);
            for (int u = 0; u < 4; u++) {
                a[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[u]),
                                       _mm512_mul_ps(_mm512_set1_ps(dw[jj[u]][i]), xd), a[u]);
                c[u] = _mm512_fmadd_ps(_mm512_set1_ps(cw[jj[u]][i]), xs, c[u]);
            }
        }
        for (int u = 0; u < 4 && j0 + u < nrows; u++) {
            store_both(a[u], acc_a[j0 + u], acc_b[j0 + u]);
            store_both(c[u], corr_a[j0 + u], corr_b[j0 + u]);
        }
    }
}
#endif

INLINE void dot_x8(const int kind, const int high, const int off, const int bytes,
                   const uint8_t *w, int64_t row_bytes, int nrows, int64_t nb, const void *xg,
                   int64_t xg_stride, int ngroups, float *out, int64_t ldo) {
    _Alignas(32) uint8_t wq[QX8_MAX_ROWS][X8_CHUNK * 32];
    float dw[QX8_MAX_ROWS][X8_CHUNK], cw[QX8_MAX_ROWS][X8_CHUNK];
    _Alignas(32) float acc[QX8_MAX_GROUPS][QX8_MAX_ROWS][8], corr[QX8_MAX_GROUPS][QX8_MAX_ROWS][8];
    memset(acc, 0, sizeof acc);
    memset(corr, 0, sizeof corr);
    for (int64_t b0 = 0; b0 < nb; b0 += X8_CHUNK) {
        int n = nb - b0 < X8_CHUNK ? (int)(nb - b0) : X8_CHUNK;
        for (int j = 0; j < nrows; j++)
            unpack_x8(kind, high, bytes, w + j * row_bytes + b0 * bytes, n, wq[j], dw[j], cw[j]);
        int g = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
        for (; g + 2 <= ngroups; g += 2)
            pair_x8(wq, dw, cw, nrows, n,
                    (const act_q8_32x8 *)((const char *)xg + g * xg_stride) + b0,
                    (const act_q8_32x8 *)((const char *)xg + (g + 1) * xg_stride) + b0, acc[g],
                    corr[g], acc[g + 1], corr[g + 1]);
#endif
        for (; g < ngroups; g++) {
            const act_q8_32x8 *xb = (const act_q8_32x8 *)((const char *)xg + g * xg_stride) + b0;
            int j = 0;
            /* two weight rows share each x load: loads, not multiply-adds, would bind */
            for (; j + 2 <= nrows; j += 2) {
                __m256 a0 = _mm256_load_ps(acc[g][j]), c0 = _mm256_load_ps(corr[g][j]);
                __m256 a1 = _mm256_load_ps(acc[g][j + 1]), c1 = _mm256_load_ps(corr[g][j + 1]);
                for (int i = 0; i < n; i++) {
                    const int32_t *w0 = (const int32_t *)(wq[j] + 32 * i);
                    const int32_t *w1 = (const int32_t *)(wq[j + 1] + 32 * i);
                    const act_q8_32x8 *x = xb + i;
                    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
                    for (int q = 0; q < 8; q++) {
                        __m256i xv = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * q));
                        s0 = dot_acc(s0, _mm256_set1_epi32(w0[q]), xv);
                        s1 = dot_acc(s1, _mm256_set1_epi32(w1[q]), xv);
                    }
                    __m256 xd = _mm256_loadu_ps(x->d), xs = _mm256_loadu_ps(x->s);
                    __m256 d0 = _mm256_mul_ps(_mm256_set1_ps(dw[j][i]), xd);
                    __m256 d1 = _mm256_mul_ps(_mm256_set1_ps(dw[j + 1][i]), xd);
                    a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), d0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), d1, a1);
                    c0 = _mm256_fmadd_ps(_mm256_set1_ps(cw[j][i]), xs, c0);
                    c1 = _mm256_fmadd_ps(_mm256_set1_ps(cw[j + 1][i]), xs, c1);
                }
                _mm256_store_ps(acc[g][j], a0);
                _mm256_store_ps(corr[g][j], c0);
                _mm256_store_ps(acc[g][j + 1], a1);
                _mm256_store_ps(corr[g][j + 1], c1);
            }
            for (; j < nrows; j++) {
                __m256 a = _mm256_load_ps(acc[g][j]), c = _mm256_load_ps(corr[g][j]);
                for (int i = 0; i < n; i++) {
                    const int32_t *wv = (const int32_t *)(wq[j] + 32 * i);
                    const act_q8_32x8 *x = xb + i;
                    /* two chains of multiply-adds: their latency, not their count, would bind */
                    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
                    for (int q = 0; q < 8; q += 2) {
                        const __m256i *xv = (const __m256i *)(x->qs + 32 * q);
                        s0 = dot_acc(s0, _mm256_set1_epi32(wv[q]), _mm256_loadu_si256(xv));
                        s1 = dot_acc(s1, _mm256_set1_epi32(wv[q + 1]), _mm256_loadu_si256(xv + 1));
                    }
                    __m256 dd = _mm256_mul_ps(_mm256_set1_ps(dw[j][i]), _mm256_loadu_ps(x->d));
                    a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), dd, a);
                    c = _mm256_fmadd_ps(_mm256_set1_ps(cw[j][i]), _mm256_loadu_ps(x->s), c);
                }
                _mm256_store_ps(acc[g][j], a);
                _mm256_store_ps(corr[g][j], c);
            }
        }
    }
    for (int g = 0; g < ngroups; g++)
        for (int j = 0; j < nrows; j++)
            for (int r = 0; r < 8; r++) {
                float a = acc[g][j][r], c = corr[g][j][r];
                out[(8 * g + r) * ldo + j] = kind == 1 ? a + c : a - (float)off * c;
            }
}

#define X8(name, kind, high, off, bytes)                                                     \
    void name(DOT_X8_ARGS) {                                                                 \
        dot_x8(kind, high, off, bytes, w, row_bytes, nrows, nb, xg, xg_stride, ngroups, out, \
               ldo);                                                                         \
    }
X8(q4_0_dot_x8, 0, 0, 8, 18)
X8(q4_1_dot_x8, 1, 0, 0, 20)
X8(q5_0_dot_x8, 0, 1, 16, 22)
X8(q5_1_dot_x8, 1, 1, 0, 24)
#if defined(HAVE_X8_Q8)
X8(q8_0_dot_x8, 2, 0, 128, 34)
#endif
#endif

/* One copy of the loop per row count, so accumulators stay in registers. */
#define FAST(name, call)                                                                     \
    void name(const uint8_t *row, int64_t nb, const void *xq, int64_t stride, int m,         \
              float *out, int64_t ldo) {                                                     \
        switch (m) {                                                                         \
        case 1: call(row, nb, xq, stride, 1, out, ldo); break;                               \
        case 2: call(row, nb, xq, stride, 2, out, ldo); break;                               \
        case 3: call(row, nb, xq, stride, 3, out, ldo); break;                               \
        default: call(row, nb, xq, stride, 4, out, ldo); break;                              \
        }                                                                                    \
    }
#define Q4_0(...) dot_fast_q(0, 0, 8, 18, __VA_ARGS__)
#define Q4_1(...) dot_fast_q(1, 0, 0, 20, __VA_ARGS__)
#define Q5_0(...) dot_fast_q(0, 1, 16, 22, __VA_ARGS__)
#define Q5_1(...) dot_fast_q(1, 1, 0, 24, __VA_ARGS__)
FAST(q4_0_dot_fast, Q4_0)
FAST(q4_1_dot_fast, Q4_1)
FAST(q5_0_dot_fast, Q5_0)
FAST(q5_1_dot_fast, Q5_1)
FAST(q8_0_dot_fast, dot_fast_q8)
