/* K-quant dot products for AVX2 + FMA: the fast (integer) path of every x86
 * vector build (AVX-512 ones included, where it also gets 32 registers and
 * VNNI's vpdpwssd), and the exact path and row dequantization of AVX2-only
 * builds (quant_k_avx512.c has those for AVX-512).
 *
 * A block unpacks into 8 vectors of 32 unsigned bytes in value order
 * (value = u - off), 16 int16 scales and 16 int16 mins (or off * scale) per
 * 16 values, d and dmin. Per activation row the fast path then needs
 * pmaddubsw (u8 x s8 pairs; no saturation at these ranges: at most
 * 2 * 63 * 127) and vpdpwssd (or pmaddwd + add) with the scales; the mins
 * come from the activations' 16-value sums (bsums). One unpack serves up to
 * QDOT_MAX_ROWS rows. */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include "quant_k.h"

#define AI static inline __attribute__((always_inline))

typedef struct {
    __m256i u[8];  /* values 32 c .. 32 c + 31 */
    __m256i sc;    /* int16 scale per 16 values */
    __m256i mn;    /* int16 per 16 values: the min (Q2_K/Q4_K/Q5_K) or off * scale */
    float d, dmin;
} kb;

/* Q4_K/Q5_K scales and mins, each repeated for its two 16-value halves. */
AI void k4_common(const uint8_t *b, kb *o) {
    __m128i s = qk_k4_scales(b);
    o->sc = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(s, s));
    o->mn = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(s, s));
    o->d = qk_f16(b), o->dmin = qk_f16(b + 2);
}

/* The nibbles of q[128]: part 2g low, 2g + 1 high nibbles of q[32g .. 32g + 31]. */
AI void nibbles(const uint8_t *q, kb *o) {
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int g = 0; g < 4; g++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(q + 32 * g));
        o->u[2 * g] = _mm256_and_si256(v, m4);
        o->u[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
}

AI void unpack_q4k(const uint8_t *b, kb *o) {
    nibbles(b + 16, o);
    k4_common(b, o);
}

/* Bit c of each byte of h, moved to bit `to` (epi16 shifts: what crosses
 * into the neighbouring byte lands below or above bit `to` and is masked). */
AI __m256i bit_to(__m256i h, int c, int to) {
    __m256i s = c < to ? _mm256_slli_epi16(h, to - c) : _mm256_srli_epi16(h, c - to);
    return _mm256_and_si256(s, _mm256_set1_epi8((char)(1 << to)));
}

AI void unpack_q5k(const uint8_t *b, kb *o) {
    nibbles(b + 48, o);
    __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
    for (int c = 0; c < 8; c++) o->u[c] = _mm256_or_si256(o->u[c], bit_to(qh, c, 4));
    k4_common(b, o);
}

/* 2-bit fields: value 128h + 32s + l is (q[32h + l] >> 2s) & 3, c = 4h + s. */
AI __m256i twobits(const uint8_t *q, int c) {
    __m256i w = _mm256_loadu_si256((const __m256i *)(q + 32 * (c >> 2)));
    return _mm256_and_si256(_mm256_srli_epi16(w, 2 * (c & 3)), _mm256_set1_epi8(3));
}

AI void unpack_q2k(const uint8_t *b, kb *o) {
    for (int c = 0; c < 8; c++) o->u[c] = twobits(b + 16, c);
    __m128i s = _mm_loadu_si128((const __m128i *)b);
    o->sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(15)));
    o->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(15)));
    o->d = qk_f16(b + 80), o->dmin = qk_f16(b + 82);
}

AI void unpack_q3k(const uint8_t *b, kb *o) {
    __m256i hm = _mm256_loadu_si256((const __m256i *)b);
    for (int c = 0; c < 8; c++) o->u[c] = _mm256_or_si256(twobits(b + 32, c), bit_to(hm, c, 2));
    uint32_t a, bb, c;
    memcpy(&a, b + 96, 4), memcpy(&bb, b + 100, 4), memcpy(&c, b + 104, 4);
    __m128i s = _mm_set_epi32((int)(((bb >> 4) & 0x0F0F0F0F) | ((c >> 2) & 0x30303030)),
                              (int)(((a >> 4) & 0x0F0F0F0F) | (c & 0x30303030)),
                              (int)((bb & 0x0F0F0F0F) | ((c << 2) & 0x30303030)),
                              (int)((a & 0x0F0F0F0F) | ((c << 4) & 0x30303030)));
    o->sc = _mm256_cvtepi8_epi16(_mm_sub_epi8(s, _mm_set1_epi8(32)));
    o->mn = _mm256_slli_epi16(o->sc, 2);
    o->d = qk_f16(b + 108), o->dmin = 0.0f;
}

AI void unpack_q6k(const uint8_t *b, kb *o) {
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m256i l0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
        /* part c = 4h + s: low nibbles of l0, l1 then high nibbles; high pair s of qh */
        __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                         _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                         _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
        __m256i hi[4] = {_mm256_slli_epi16(qh, 4), _mm256_slli_epi16(qh, 2), qh,
                         _mm256_srli_epi16(qh, 2)};
        for (int s = 0; s < 4; s++)
            o->u[4 * h + s] = _mm256_or_si256(lo[s], _mm256_and_si256(hi[s], m2));
    }
    o->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
    o->mn = _mm256_slli_epi16(o->sc, 5);
    o->d = qk_f16(b + 208), o->dmin = 0.0f;
}

/* -- the fast path ------------------------------------------------------------ */

#if defined(__AVXVNNI__)
#define DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#else
#define DPWSSD(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#endif

typedef void (*unpack_fn)(const uint8_t *, kb *);

AI float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* Int16 lanes of part c's pmaddubsw result take scales 2c (lanes 0-7) and
 * 2c + 1 (8-15): from the scales doubled into 32-bit lanes, lo = 0-3, 8-11
 * and hi = 4-7, 12-15, by vpermd. */
AI void scale_vectors(__m256i sc, __m256i s[8]) {
    __m256i lo = _mm256_unpacklo_epi16(sc, sc), hi = _mm256_unpackhi_epi16(sc, sc);
    for (int c = 0; c < 8; c++) {
        int k = 2 * (c & 1) + 4 * (c >> 2); /* dword of scale 2c within lo or hi */
        __m256i idx = _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1);
        s[c] = _mm256_permutevar8x32_epi32((c >> 1) & 1 ? hi : lo, idx);
    }
}

AI void fast_rows(const uint8_t *row, int64_t nblocks, const void *xq, int64_t xq_stride,
                  const int M, float *out, int64_t ldo, const int bytes, unpack_fn unpack,
                  const int fold) {
    __m256 acc[QDOT_MAX_ROWS];
    for (int i = 0; i < M; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < nblocks; blk++) {
        kb w;
        __m256i s[8];
        unpack(row + blk * bytes, &w);
        scale_vectors(w.sc, s);
        const __m256 d = _mm256_set1_ps(w.d), dmin = _mm256_set1_ps(w.dmin);
        for (int i = 0; i < M; i++) {
            const act_q8_256 *a = (const act_q8_256 *)((const char *)xq + i * xq_stride) + blk;
            __m256i sum2[2];
            for (int c = 0; c < 8; c++) {
                __m256i p = _mm256_maddubs_epi16(
                    w.u[c], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * c)));
                sum2[c & 1] = c < 2 ? _mm256_madd_epi16(p, s[c]) : DPWSSD(sum2[c & 1], p, s[c]);
            }
            __m256i sum = _mm256_add_epi32(sum2[0], sum2[1]);
            __m256i mn = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), w.mn);
            /* the block's dot / dx: d * sum - dmin * mn */
            __m256 t = fold ? _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sum, mn)), d)
                            : _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), dmin,
                                               _mm256_mul_ps(_mm256_cvtepi32_ps(sum), d));
            acc[i] = _mm256_fmadd_ps(t, _mm256_set1_ps(a->d), acc[i]);
        }
    }
    for (int i = 0; i < M; i++) out[i * ldo] = hsum(acc[i]);
}

/* -- the exact path -------------------------------------------------------------
 * The unpacked bytes (minus off) through int32 to float, times the 16-value
 * scale d * sc, minus dmin * mn where the type has a min: the float
 * operations of the reference dequantization. */
typedef struct {
    int8_t q[QK] __attribute__((aligned(32)));
    float dl[16] __attribute__((aligned(32))), ml[16] __attribute__((aligned(32)));
} kf;

AI __m256 i16_to_f32(__m256i v, int h) {
    __m128i x = h ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
    return _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(x));
}

AI void to_floats(const kb *w, kf *f, const int off, const int has_min) {
    for (int c = 0; c < 8; c++)
        _mm256_store_si256((__m256i *)(f->q + 32 * c),
                           _mm256_sub_epi8(w->u[c], _mm256_set1_epi8((char)off)));
    for (int h = 0; h < 2; h++) {
        _mm256_store_ps(f->dl + 8 * h, _mm256_mul_ps(_mm256_set1_ps(w->d), i16_to_f32(w->sc, h)));
        if (has_min)
            _mm256_store_ps(f->ml + 8 * h,
                            _mm256_mul_ps(_mm256_set1_ps(w->dmin), i16_to_f32(w->mn, h)));
    }
}

/* Weights 8 j .. 8 j + 7 of the block: dl * q (- ml), as the reference. */
AI __m256 weights8(const kf *f, int j, const int has_min) {
    __m128i q = _mm_loadl_epi64((const __m128i *)(f->q + 8 * j));
    __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    v = _mm256_mul_ps(v, _mm256_broadcast_ss(f->dl + j / 2));
    return has_min ? _mm256_sub_ps(v, _mm256_broadcast_ss(f->ml + j / 2)) : v;
}

AI void exact_rows(const uint8_t *row, int64_t nblocks, const float *x, int64_t ldx,
                   const int M, float *out, int64_t ldo, const int bytes, unpack_fn unpack,
                   const int off, const int has_min) {
    __m256 acc[QDOT_MAX_ROWS][2]; /* 2 chains per row: FMA latency bounds one row */
    for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    /* The next block is unpacked one block ahead (see exact_q4k_rows). */
    kf f[2];
    kb w;
    unpack(row, &w);
    to_floats(&w, &f[0], off, has_min);
    for (int64_t blk = 0; blk < nblocks; blk++) {
        if (blk + 1 < nblocks) {
            unpack(row + (blk + 1) * bytes, &w);
            to_floats(&w, &f[(blk + 1) & 1], off, has_min);
        }
        const kf *fb = &f[blk & 1];
        const float *xb = x + blk * QK;
        for (int j0 = 0; j0 < 32; j0 += 2)
            for (int k = 0; k < 2; k++) { /* k constant once unrolled: acc stays in registers */
                __m256 v = weights8(fb, j0 + k, has_min);
                for (int i = 0; i < M; i++)
                    acc[i][k] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xb + i * ldx + 8 * (j0 + k)),
                                                acc[i][k]);
            }
    }
    for (int i = 0; i < M; i++) out[i * ldo] = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
}

AI void dequant_rows(const uint8_t *row, int64_t nblocks, float *out, const int bytes,
                     unpack_fn unpack, const int off, const int has_min) {
    kf f;
    for (int64_t blk = 0; blk < nblocks; blk++) {
        kb w;
        unpack(row + blk * bytes, &w);
        to_floats(&w, &f, off, has_min);
        for (int j = 0; j < 32; j++)
            _mm256_storeu_ps(out + blk * QK + 8 * j, weights8(&f, j, has_min));
    }
}

/* -- groups of 8 x rows (dot_fast_x8) -------------------------------------------
 * Blocks of up to QX8_MAX_ROWS weight rows are unpacked, X8_CHUNK at a time,
 * into a stack buffer that stays in L1 (bytes in value order, d * scale per
 * 16 values as floats, the min terms as int16 pairs). Then per weight row,
 * for up to X8_GROUPS groups of 8 x rows at once (act_q8_256x8): per 4
 * values a broadcast dword of 4 weight bytes, one vpdpbusd with 4 bytes of
 * each of a group's 8 rows (an int32 sum per row in a lane); each 16-value
 * sum (32 where the type's scales are per 32) scaled in float; the min (or
 * offset) terms from 8 pmaddwd of the rows' 16-value sums with the block's
 * int16 pairs. With VNNI that is one instruction per 32 multiply-adds, where
 * dot_fast takes two (pmaddubsw + vpdpwssd). */
#define X8_CHUNK 4  /* blocks: 8 rows x 4 unpacked (12 KiB) + 4 groups' 4 (37 KiB) in L1 */
#define X8_GROUPS 4 /* x groups a weight broadcast serves */

typedef struct {
    uint8_t u[QK] __attribute__((aligned(32))); /* values u (value = u - off), in order */
    float dsc[16];   /* d * scale, per 16 values */
    int32_t mnp[8];  /* (mn[2p], mn[2p + 1]) as an int16 pair */
    float dm;        /* the factor of the min terms: dmin, or d where they fold */
} kx8;

AI __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else /* u <= 63: pair sums stay within int16 */
    __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

AI void prep_x8(const uint8_t *b, kx8 *o, unpack_fn unpack, const int fold) {
    kb w;
    unpack(b, &w);
    for (int c = 0; c < 8; c++) _mm256_store_si256((__m256i *)(o->u + 32 * c), w.u[c]);
    for (int h = 0; h < 2; h++)
        _mm256_storeu_ps(o->dsc + 8 * h, _mm256_mul_ps(_mm256_set1_ps(w.d), i16_to_f32(w.sc, h)));
    _mm256_storeu_si256((__m256i *)o->mnp, w.mn); /* int16 j at pair j / 2 */
    o->dm = fold ? w.d : w.dmin;
}

/* One block's dots for G groups of 8 x rows, over d_x, added to acc[g]:
 * sum of d sc (u . a) - dm sum mn A. Each broadcast of weight bytes serves
 * all G groups (a load per multiply-add, not two). pair: the scales come in
 * equal pairs (per 32 values). */
AI void block_x8(const kx8 *k, const act_q8_256x8 *const *x, const int G, const int pair,
                 __m256 *acc) {
    const int32_t *wv = (const int32_t *)k->u;
    __m256 blk[X8_GROUPS];
    for (int g = 0; g < G; g++) blk[g] = _mm256_setzero_ps();
    for (int j = 0; j < 16; j += 2) { /* 32 values; a chain per 16 */
        __m256i s0[X8_GROUPS], s1[X8_GROUPS];
        for (int g = 0; g < G; g++) s0[g] = s1[g] = _mm256_setzero_si256();
        for (int q = 0; q < 4; q++) {
            __m256i w0 = _mm256_set1_epi32(wv[4 * j + q]);
            __m256i w1 = _mm256_set1_epi32(wv[4 * j + 4 + q]);
            for (int g = 0; g < G; g++) {
                const int8_t *a = x[g]->qs + 32 * (4 * j + q);
                s0[g] = dpbusd(s0[g], w0, _mm256_loadu_si256((const __m256i *)a));
                s1[g] = dpbusd(s1[g], w1, _mm256_loadu_si256((const __m256i *)(a + 128)));
            }
        }
        for (int g = 0; g < G; g++) {
            if (pair) {
                blk[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0[g], s1[g])),
                                         _mm256_set1_ps(k->dsc[j]), blk[g]);
            } else {
                blk[g] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0[g]), _mm256_set1_ps(k->dsc[j]), blk[g]);
                blk[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[g]), _mm256_set1_ps(k->dsc[j + 1]),
                                         blk[g]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        __m256i m[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int p = 0; p < 8; p++) {
            __m256i pr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[g]->bsums[p]),
                                           _mm256_set1_epi32(k->mnp[p]));
            m[p & 1] = _mm256_add_epi32(m[p & 1], pr);
        }
        __m256 b = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(m[0], m[1])),
                                    _mm256_set1_ps(k->dm), blk[g]);
        acc[g] = _mm256_fmadd_ps(b, _mm256_loadu_ps(x[g]->d), acc[g]);
    }
}

/* Weight rows j < nrows against groups g0 .. g0 + G - 1 for chunk blocks b0 .. b0 + n - 1. */
AI void chunk_x8(kx8 (*k)[X8_CHUNK], int nrows, int n, const void *xg, int64_t xg_stride,
                 int64_t b0, int g0, const int G, const int pair,
                 __m256 (*acc)[QX8_MAX_ROWS]) {
    for (int j = 0; j < nrows; j++) {
        __m256 a[X8_GROUPS];
        for (int g = 0; g < G; g++) a[g] = acc[g0 + g][j];
        for (int i = 0; i < n; i++) {
            const act_q8_256x8 *x[X8_GROUPS];
            for (int g = 0; g < G; g++)
                x[g] = (const act_q8_256x8 *)((const char *)xg + (g0 + g) * xg_stride) + b0 + i;
            block_x8(&k[j][i], x, G, pair, a);
        }
        for (int g = 0; g < G; g++) acc[g0 + g][j] = a[g];
    }
}

AI void fast_x8(const uint8_t *w, int64_t row_bytes, int nrows, int64_t nb, const void *xg,
                int64_t xg_stride, int ngroups, float *out, int64_t ldo, const int bytes,
                unpack_fn unpack, const int fold, const int pair) {
    kx8 k[QX8_MAX_ROWS][X8_CHUNK];
    __m256 acc[QX8_MAX_GROUPS][QX8_MAX_ROWS];
    for (int g = 0; g < ngroups; g++)
        for (int j = 0; j < nrows; j++) acc[g][j] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += X8_CHUNK) {
        int n = nb - b0 < X8_CHUNK ? (int)(nb - b0) : X8_CHUNK;
        for (int j = 0; j < nrows; j++)
            for (int i = 0; i < n; i++)
                prep_x8(w + j * row_bytes + (b0 + i) * bytes, &k[j][i], unpack, fold);
        for (int g0 = 0; g0 < ngroups; g0 += X8_GROUPS) {
            switch (ngroups - g0 < X8_GROUPS ? ngroups - g0 : X8_GROUPS) {
            case 1: chunk_x8(k, nrows, n, xg, xg_stride, b0, g0, 1, pair, acc); break;
            case 2: chunk_x8(k, nrows, n, xg, xg_stride, b0, g0, 2, pair, acc); break;
            case 3: chunk_x8(k, nrows, n, xg, xg_stride, b0, g0, 3, pair, acc); break;
            default: chunk_x8(k, nrows, n, xg, xg_stride, b0, g0, 4, pair, acc); break;
            }
        }
    }
    for (int g = 0; g < ngroups; g++)
        for (int j = 0; j < nrows; j++) {
            float v[8];
            _mm256_storeu_ps(v, acc[g][j]);
            for (int r = 0; r < 8; r++) out[(8 * g + r) * ldo + j] = v[r];
        }
}

#define X8(t, bytes, fold, pair)                                                         \
    void qk256_##t##_x8(QK_X8_ARGS) {                                                    \
        fast_x8(w, row_bytes, nrows, nblocks, xg, xg_stride, ngroups, out, ldo, bytes,   \
                unpack_##t, fold, pair);                                                 \
    }
X8(q2k, Q2K_BYTES, 0, 0)
X8(q3k, Q3K_BYTES, 1, 0)
X8(q4k, Q4K_BYTES, 0, 1)
X8(q5k, Q5K_BYTES, 0, 1)
X8(q6k, Q6K_BYTES, 1, 0)

/* -- entry points: one instance per row count ----------------------------------- */

#define BY_ROWS(body)       \
    switch (m) {            \
    case 1: body(1); break; \
    case 2: body(2); break; \
    case 3: body(3); break; \
    default: body(4); break; \
    }

#define DEFINE(t)                                                        \
    void qk256_##t##_fast(QK_DOT_FAST_ARGS) {                            \
        _Static_assert(QDOT_MAX_ROWS == 4, "BY_ROWS covers 1..4 rows"); \
        BY_ROWS(FAST_##t)                                                \
    }                                                                    \
    void qk256_##t##_exact(QK_DOT_EXACT_ARGS) { BY_ROWS(EXACT_##t) }

#define FAST_ARGS row, nblocks, xq, xq_stride
#define EXACT_ARGS row, nblocks, x, ldx
#define FAST_q2k(M) fast_rows(FAST_ARGS, M, out, ldo, Q2K_BYTES, unpack_q2k, 0)
#define FAST_q3k(M) fast_rows(FAST_ARGS, M, out, ldo, Q3K_BYTES, unpack_q3k, 1)
#define FAST_q4k(M) fast_rows(FAST_ARGS, M, out, ldo, Q4K_BYTES, unpack_q4k, 0)
#define FAST_q5k(M) fast_rows(FAST_ARGS, M, out, ldo, Q5K_BYTES, unpack_q5k, 0)
#define FAST_q6k(M) fast_rows(FAST_ARGS, M, out, ldo, Q6K_BYTES, unpack_q6k, 1)
#define EXACT_q2k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q2K_BYTES, unpack_q2k, 0, 1)
#define EXACT_q3k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q3K_BYTES, unpack_q3k, 4, 0)
#define EXACT_q4k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q4K_BYTES, unpack_q4k, 0, 1)
#define EXACT_q5k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q5K_BYTES, unpack_q5k, 0, 1)
#define EXACT_q6k(M) exact_rows(EXACT_ARGS, M, out, ldo, Q6K_BYTES, unpack_q6k, 32, 0)

DEFINE(q2k)
DEFINE(q3k)
DEFINE(q4k)
DEFINE(q5k)
DEFINE(q6k)

void qk256_q2k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q2K_BYTES, unpack_q2k, 0, 1);
}
void qk256_q3k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q3K_BYTES, unpack_q3k, 4, 0);
}
void qk256_q4k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q4K_BYTES, unpack_q4k, 0, 1);
}
void qk256_q5k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q5K_BYTES, unpack_q5k, 0, 1);
}
void qk256_q6k_dequant(QK_DEQUANT_ARGS) {
    dequant_rows(row, nblocks, out, Q6K_BYTES, unpack_q6k, 32, 0);
}
#endif
