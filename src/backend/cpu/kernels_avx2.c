/* kernels_avx2.c: the AVX2 + FMA + F16C kernel path, 8 lanes. Built with those flags by
 * the Makefile and used only when cpuid reports them (dispatch.c). The kernels are in
 * kern_tmpl.h, plus an integer 4-bit affine kernel (vpmaddubsw on int8 digits of x). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define VW 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSET1(f) _mm256_set1_ps(f)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VLOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VLOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

static inline __attribute__((always_inline)) float VHSUM(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) __m256 u8x8(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

static inline __attribute__((always_inline)) void Q4X(const uint8_t *p, vf *q) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
    q[0] = u8x8(e0);
    q[1] = u8x8(_mm_srli_si128(e0, 8));
    q[2] = u8x8(e1);
    q[3] = u8x8(_mm_srli_si128(e1, 8));
}

static inline __attribute__((always_inline)) void Q8X(const uint8_t *p, vf *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    q[0] = u8x8(v);
    q[1] = u8x8(_mm_srli_si128(v, 8));
}

#define ROWS_FN fm__rows_avx2
#define ROWS_CUSTOM
#include "backend/cpu/kern_tmpl.h"

/* ---- 4-bit affine with integer dot products --------------------------------------------
 * As on the AVX512-VNNI path, x is written once per call as D = 2 or 3 int8 digits per
 * column with one scale per 64 columns, in the pair layout of kern.h, and the arithmetic
 * is fm__rows_digits_ref's, lane for lane: its 16 lanes are two 8-lane accumulators
 * (lanes 0-7: chunk 2p, lanes 8-15: chunk 2p + 1). Per chunk one 32-byte load gives the
 * low nibbles (even columns) and high nibbles (odd columns); vpmaddubsw (u8 x s8, pairs:
 * at most 2 * 15 * 128 each, so the even + odd sum fits int16) and vpmaddwd give the
 * exact int32 sum of columns 8l..8l+7 in lane l, combined per digit as (a.q << 8) + b.q
 * (<< 8) + c.q, converted and scaled. Per row block the scales and biases are converted to
 * floats once and the multipliers scale * s[c] formed as vectors, so the inner loop is the
 * integer work, one conversion and one FMA per chunk; decode takes rows in pairs that share
 * the digit loads. About 13 GB/s per thread from L2 (was 6) on a Zen 3 core, the bound of
 * its ~20 vector operations per 32 weight bytes. */

/* 8 floats a[0..8), b[0..8) -> their even (sel 0) or odd (sel 1) elements, in order. */
static inline __attribute__((always_inline)) __m256 deint(__m256 a, __m256 b, int odd) {
    __m256 t = odd ? _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)) : _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* 4 x 8 int32 (each in int8 range) -> 32 bytes in order. */
static inline __attribute__((always_inline)) __m256i pack4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void fm__xq_prep_avx2(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s) {
    const int inter = bits == 4, D = digits == 2 ? 2 : 3, K = 8 * D - 2;
    const __m256i c128 = _mm256_set1_epi32(128), c255 = _mm256_set1_epi32(255);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const int64_t nc = cols / 64;
    for (int64_t c = 0; c < nc; c++) {
        const float *p = x + c * 64;
        __m256 v[8], m = _mm256_setzero_ps(), un = _mm256_setzero_ps();
        for (int i = 0; i < 8; i++) {
            v[i] = _mm256_loadu_ps(p + 8 * i);
            m = _mm256_max_ps(m, _mm256_and_ps(v[i], absmask));
            un = _mm256_or_ps(un, _mm256_cmp_ps(v[i], v[i], _CMP_UNORD_Q));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        float amax = _mm_cvtss_f32(h);
        int nan = !_mm256_testz_ps(un, un) || !(amax <= 3.0e38f);
        /* where digit d's even (u[0..3]) and odd (u[4..7]) columns go */
        int8_t *o = xq + c * 64 * D;
        int64_t od_at = 32, dstep = 64;
        if (inter && c < (nc & ~(int64_t)1)) { /* chunk of a pair */
            o = xq + (c >> 1) * 128 * D + (c & 1) * 32;
            od_at = 64;
            dstep = 128;
        }
        int e = 0;
        if (!nan && amax > 0) frexpf(amax, &e);
        if (nan || amax == 0 || e < -100) { /* NaN/Inf (through s), zeros, tiny */
            for (int d = 0; d < D; d++) {
                memset(o + d * dstep, 0, 32);
                memset(o + d * dstep + od_at, 0, 32);
            }
            s[c] = nan ? NAN : 0.0f;
            continue;
        }
        s[c] = ldexpf(1.0f, e - K);
        const __m256 k = _mm256_set1_ps(ldexpf(1.0f, K - e)); /* exact power of two */
        __m256 u[8];
        for (int i = 0; i < 4; i++) {
            u[i] = inter ? deint(v[2 * i], v[2 * i + 1], 0) : v[i];
            u[4 + i] = inter ? deint(v[2 * i], v[2 * i + 1], 1) : v[4 + i];
        }
        __m256i dg[3][8];
        for (int i = 0; i < 8; i++) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(u[i], k));
            for (int d = D - 1; d > 0; d--) {
                dg[d][i] = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(q, c128), c255), c128);
                q = _mm256_srai_epi32(_mm256_sub_epi32(q, dg[d][i]), 8);
            }
            dg[0][i] = q;
        }
        for (int d = 0; d < D; d++) {
            _mm256_storeu_si256((__m256i *)(o + d * dstep), pack4(dg[d][0], dg[d][1], dg[d][2], dg[d][3]));
            _mm256_storeu_si256((__m256i *)(o + d * dstep + od_at), pack4(dg[d][4], dg[d][5], dg[d][6], dg[d][7]));
        }
    }
}

/* The exact int32 sums of one 64-column chunk (or half of a pair), lane l: columns
 * 8l..8l+7, their low-nibble weights lo against the digits at e, the high-nibble ones hi
 * against those at o, D digits dstep apart. Per digit the two vpmaddubsw products of a
 * lane's column pairs add in int16 (at most 4 * 15 * 128); vpmaddwd widens: by 1, or by
 * 256 for the middle digit of 3 (the last of 2), so t = (A << 16) + 256 B + C (3 digits)
 * or 256 A + B (2), which is ((A << 8) + B) << 8 + C and (A << 8) + B in int32. */
static inline __attribute__((always_inline)) __m256i q4i_dot(__m256i lo, __m256i hi, const int8_t *e,
                                                             const int8_t *o, int64_t dstep, const int D) {
    const __m256i one = _mm256_set1_epi16(1), c256 = _mm256_set1_epi16(256);
    __m256i s[3];
#pragma GCC unroll 3
    for (int d = 0; d < D; d++)
        s[d] = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(e + d * dstep))),
                                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(o + d * dstep))));
    if (D == 3)
        return _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(s[0], one), 16),
                                                 _mm256_madd_epi16(s[1], c256)),
                                _mm256_madd_epi16(s[2], one));
    return _mm256_add_epi32(_mm256_madd_epi16(s[0], c256), _mm256_madd_epi16(s[1], one));
}

/* q4i_dot for NR weight rows (lo[k], hi[k]) against one digit row at x (pair layout),
 * each digit loaded once. */
static inline __attribute__((always_inline)) void q4i_dotn(const __m256i *lo, const __m256i *hi, const int8_t *x,
                                                           const int NR, const int D, __m256i *t) {
    const __m256i one = _mm256_set1_epi16(1), c256 = _mm256_set1_epi16(256);
#pragma GCC unroll 3
    for (int d = 0; d < D; d++) {
        const __m256i e = _mm256_loadu_si256((const __m256i *)(x + d * 128));
        const __m256i o = _mm256_loadu_si256((const __m256i *)(x + d * 128 + 64));
        /* widen by 1 (first of 3, last), by 256 (middle of 3, first of 2) */
        const __m256i k = (D == 3 && d == 1) || (D == 2 && d == 0) ? c256 : one;
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256i w = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[r], e), _mm256_maddubs_epi16(hi[r], o)), k);
            if (d == 0) t[r] = D == 3 ? _mm256_slli_epi32(w, 16) : w;
            else t[r] = _mm256_add_epi32(t[r], w);
        }
    }
}

/* The same for an unpaired chunk's even (or odd) columns alone: weights w, digits at e. */
static inline __attribute__((always_inline)) __m256i q4i_dot1(__m256i w, const int8_t *e, int64_t dstep,
                                                              const int D) {
    const __m256i one = _mm256_set1_epi16(1);
    __m256i t = _mm256_setzero_si256();
#pragma GCC unroll 3
    for (int d = 0; d < D; d++)
        t = _mm256_add_epi32(d ? _mm256_slli_epi32(t, 8) : t,
                             _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_loadu_si256((const __m256i *)(e + d * dstep))), one));
    return t;
}

/* Scales or biases i..i+7 of an array of dtype dt as floats, bitwise fm__ld_scale's (F16:
 * vcvtph2ps, whose NaNs come out quiet, with fm__f16_to_f32's NaN bits put back). */
static inline __attribute__((always_inline)) __m256 ld8(const void *base, fm__dtype dt, int64_t i) {
    if (dt == FM_DT_BF16) return VLOAD_BF16((const uint16_t *)base + i);
    if (dt == FM_DT_F32) return _mm256_loadu_ps((const float *)base + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
    __m256i w = _mm256_cvtepu16_epi32(h);
    __m256i man = _mm256_and_si256(w, _mm256_set1_epi32(0x3FF)), ex = _mm256_and_si256(w, _mm256_set1_epi32(0x7C00));
    __m256i nan = _mm256_andnot_si256(_mm256_cmpeq_epi32(man, _mm256_setzero_si256()),
                                      _mm256_cmpeq_epi32(ex, _mm256_set1_epi32(0x7C00)));
    __m256i ref = _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                                                  _mm256_set1_epi32(0x7F800000)),
                                  _mm256_slli_epi32(man, 13));
    return _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_castsi256_ps(ref), _mm256_castsi256_ps(nan));
}

/* Lanes i < n all ones, the others zero (n may be <= 0 or >= 8). */
static inline __attribute__((always_inline)) __m256i lanes_below(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* acc0/acc1 (lanes 0-7 / 8-15) + bias_g * xs[g], group g in lane g mod 16, zeros past ng
 * (fma(0, 0, acc) included, as in fm__rows_digits_ref). bf: the row's biases as floats,
 * readable (any finite or not) up to the next multiple of 16. */
static inline __attribute__((always_inline)) void bias_fold2(const float *bf, const float *xs, int64_t ng,
                                                             __m256 *acc) {
    for (int64_t g = 0; g < ng; g += 16) {
        __m256 b0 = _mm256_loadu_ps(bf + g), b1 = _mm256_loadu_ps(bf + g + 8), x0, x1;
        if (g + 16 <= ng) {
            x0 = _mm256_loadu_ps(xs + g);
            x1 = _mm256_loadu_ps(xs + g + 8);
        } else {
            const __m256i m0 = lanes_below(ng - g), m1 = lanes_below(ng - g - 8);
            b0 = _mm256_and_ps(b0, _mm256_castsi256_ps(m0));
            b1 = _mm256_and_ps(b1, _mm256_castsi256_ps(m1));
            x0 = _mm256_maskload_ps(xs + g, m0);
            x1 = _mm256_maskload_ps(xs + g + 8, m1);
        }
        acc[0] = _mm256_fmadd_ps(b0, x0, acc[0]);
        acc[1] = _mm256_fmadd_ps(b1, x1, acc[1]);
    }
}

/* Software prefetch of the 4-bit path, bytes ahead in the stream of a block of rows: each
 * weight row into L2 far ahead (rounded up to whole blocks, fm__pf_dist, so that wide rows
 * are covered) and into L1 nearer (as is: measured best for 2048 columns), and the scale
 * and bias streams 512 bytes ahead. On the Zen 3 VM (Q4 g64 matvec, 2048 and 8192
 * columns, from DRAM) this gave 1 thread 10.9 -> 12.2-13.2 GB/s and 2 threads
 * 18.4 -> 24.2 GB/s at 8192 columns over a single T0 prefetch 2 KiB ahead; with no
 * software prefetch at all the kernel ran at half speed. */
#ifndef Q4_PF_L2
#define Q4_PF_L2 4096
#endif
#ifndef Q4_PF_L1
#define Q4_PF_L1 1536
#endif
#define Q4_PF_SB 512

/* Rows and chunks a block of the digit path can meet: dispatch.c gives it rows of at most
 * 64 KiB of digits (2 or more per column), so cols <= 32768, nc <= 512, ng <= 1024. */
#define Q4_NCMAX 512
#define Q4_NGMAX 1024
#define Q4_NRMAX 2

/* n scales or biases from number i of an array of dtype dt into out as floats, then 16
 * zeros. */
static inline __attribute__((always_inline)) void cvt_scales(const void *base, fm__dtype dt, int64_t i, int64_t n,
                                                             float *out) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(out + j, ld8(base, dt, i + j));
    for (; j < n; j++) out[j] = fm__ld_scale(base, dt, i + j);
    _mm256_storeu_ps(out + n, _mm256_setzero_ps());
    _mm256_storeu_ps(out + n + 8, _mm256_setzero_ps());
}

/* The per-chunk multipliers scale * s[c] of one row (scales sf as floats, readable 16 past
 * the row's) against the chunk scales xqs (read masked only in a last partial group), in
 * mq: G >= 64 one per chunk, G = 32 two (the chunk's columns 0-31 and 32-63). */
static inline __attribute__((always_inline)) void q4i_mults(const float *sf, int64_t nc, const float *xqs,
                                                            float *mq, const int G) {
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3); /* lanes 0-3 each twice */
    if (G == 32) {
        for (int64_t c = 0; c < nc; c += 4) {
            const __m128 x4 = c + 4 <= nc ? _mm_loadu_ps(xqs + c)
                                          : _mm_maskload_ps(xqs + c, _mm256_castsi256_si128(lanes_below(nc - c)));
            const __m256 x = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(x4), dup);
            _mm256_storeu_ps(mq + 2 * c, _mm256_mul_ps(_mm256_loadu_ps(sf + 2 * c), x));
        }
    } else {
        for (int64_t c = 0; c < nc; c += 8) {
            __m256 s = G == 64 ? _mm256_loadu_ps(sf + c)
                               : _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sf + c / 2)), dup);
            __m256 x = c + 8 <= nc ? _mm256_loadu_ps(xqs + c) : _mm256_maskload_ps(xqs + c, lanes_below(nc - c));
            _mm256_storeu_ps(mq + c, _mm256_mul_ps(s, x));
        }
    }
}

/* The multiplier vector of chunk c: lanes 0-3 and 4-7 take the groups of columns 0-31
 * and 32-63 (the same group unless G = 32). */
static inline __attribute__((always_inline)) __m256 q4i_mv(const float *mq, int64_t c, const int G) {
    if (G != 32) return _mm256_broadcast_ss(mq + c);
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd((const double *)(mq + 2 * c)))),
                                    _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

/* NR consecutive rows r.. against NB batch rows b0.. (NR == 1 or NB == 1, NR <= Q4_NRMAX,
 * NB <= KB): each output the same arithmetic whatever NR and NB. */
static inline __attribute__((always_inline)) void q4i_blk(const fm__mat *W, int64_t r, float *Y, int64_t ldy,
                                                          const fm__kargs *ka, int64_t b0, const int NR,
                                                          const int NB, const int G, const int D,
                                                          const int64_t *pf) {
    const int64_t C = W->cols, nc = C / 64, np = nc / 2, ng = C / G;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    _Alignas(32) float sf[Q4_NRMAX * Q4_NGMAX + 16], bf[Q4_NRMAX * Q4_NGMAX + 16];
    _Alignas(32) float mq[KB][Q4_NCMAX * 2 + 8];
    const uint8_t *row[Q4_NRMAX];
    const int8_t *xq[KB];
    __m256 acc[KB][2];
    { /* the scales and biases of a block further on (their streams are not software
       * prefetched otherwise, and each block starts with them) */
        const int64_t es = fm__dtype_size(W->sdt);
        const char *sp = (const char *)W->scales + r * ng * es + Q4_PF_SB;
        const char *bp = (const char *)W->biases + r * ng * es + Q4_PF_SB;
        for (int64_t o = 0; o < NR * ng * es; o += 64) {
            _mm_prefetch(sp + o, _MM_HINT_T0);
            _mm_prefetch(bp + o, _MM_HINT_T0);
        }
    }
    /* the block's scales and biases (contiguous rows) as floats */
    cvt_scales(W->scales, W->sdt, r * ng, NR * ng, sf);
    cvt_scales(W->biases, W->sdt, r * ng, NR * ng, bf);
#pragma GCC unroll 4
    for (int k = 0; k < NR * NB; k++) {
        const int kr = NR > 1 ? k : 0, kb = NR > 1 ? 0 : k;
        q4i_mults(sf + kr * ng, nc, ka->xqs + (b0 + kb) * ka->ldxqs, mq[k], G);
        acc[k][0] = acc[k][1] = _mm256_setzero_ps();
    }
#pragma GCC unroll 4
    for (int k = 0; k < NR; k++) row[k] = (const uint8_t *)W->data + (r + k) * (C / 2);
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) xq[b] = ka->xq + (b0 + b) * ka->ldxq;
    const int64_t pf2 = pf[0], pf1 = pf[1];
    for (int64_t p = 0; p < np; p++) {
#pragma GCC unroll 4
        for (int k = 0; k < NR; k++) {
            _mm_prefetch((const char *)(row[k] + p * 64) + pf2, _MM_HINT_T1);
            _mm_prefetch((const char *)(row[k] + p * 64) + pf1, _MM_HINT_T0);
        }
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            if (NR > 1) { /* the rows share each digit load */
                __m256i lo[Q4_NRMAX], hi[Q4_NRMAX], t[Q4_NRMAX];
#pragma GCC unroll 4
                for (int k = 0; k < NR; k++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(row[k] + p * 64 + h * 32));
                    lo[k] = _mm256_and_si256(v, m4);
                    hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                }
                q4i_dotn(lo, hi, xq[0] + p * 128 * D + h * 32, NR, D, t);
#pragma GCC unroll 4
                for (int k = 0; k < NR; k++)
                    acc[k][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t[k]), q4i_mv(mq[k], 2 * p + h, G), acc[k][h]);
                continue;
            }
            __m256i v = _mm256_loadu_si256((const __m256i *)(row[0] + p * 64 + h * 32));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) {
                const int8_t *x = xq[b] + p * 128 * D + h * 32;
                __m256i t = q4i_dot(lo, hi, x, x + 64, 128, D);
                acc[b][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), q4i_mv(mq[b], 2 * p + h, G), acc[b][h]);
            }
        }
    }
    if (nc & 1) { /* last chunk alone: even columns in lanes 0-7, odd in lanes 8-15 */
        const int64_t c = nc - 1;
#pragma GCC unroll 4
        for (int k = 0; k < NR; k++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row[k] + c * 32));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) {
                const int8_t *x = xq[b] + c * 64 * D;
                const __m256 m = q4i_mv(mq[k + b], c, G);
                acc[k + b][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4i_dot1(lo, x, 64, D)), m, acc[k + b][0]);
                acc[k + b][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4i_dot1(hi, x + 32, 64, D)), m, acc[k + b][1]);
            }
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < NR; k++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            bias_fold2(bf + k * ng, ka->xs + (b0 + b) * ka->ldxs, ng, acc[k + b]);
            Y[(b0 + b) * ldy + r + k] = VHSUM(_mm256_add_ps(acc[k + b][0], acc[k + b][1]));
        }
}

static inline __attribute__((always_inline)) void q4i_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n,
                                                           float *Y, int64_t ldy, const fm__kargs *ka, const int G,
                                                           const int D) {
    const int64_t RB = W->cols / 2; /* prefetch distances for blocks of Q4_NRMAX rows and of 1 */
    const int64_t pfn[2] = {fm__pf_dist(Q4_PF_L2, Q4_NRMAX * RB), Q4_PF_L1};
    const int64_t pf1[2] = {fm__pf_dist(Q4_PF_L2, RB), Q4_PF_L1};
    if (n == 1) { /* decode: rows in blocks that share the digit loads */
        int64_t r = r0;
        for (; r + Q4_NRMAX <= r1; r += Q4_NRMAX) q4i_blk(W, r, Y, ldy, ka, 0, Q4_NRMAX, 1, G, D, pfn);
        for (; r < r1; r++) q4i_blk(W, r, Y, ldy, ka, 0, 1, 1, G, D, pf1);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) q4i_blk(W, r, Y, ldy, ka, b, 1, KB, G, D, pf1);
        switch (n - b) {
        case 1: q4i_blk(W, r, Y, ldy, ka, b, 1, 1, G, D, pf1); break;
        case 2: q4i_blk(W, r, Y, ldy, ka, b, 1, 2, G, D, pf1); break;
        case 3: q4i_blk(W, r, Y, ldy, ka, b, 1, 3, G, D, pf1); break;
        default: break;
        }
    }
}

FM_ROWS_DECL(fm__rows_avx2) {
    if (W->type == FM_W_QAFFINE && W->bits == 4 && ka && ka->xq) {
        if (W->cols / 64 > Q4_NCMAX || W->cols / W->group > Q4_NGMAX) { /* not from dispatch.c: the same bits, slowly */
            fm__rows_digits_ref(W, r0, r1, X, ldx, n, Y, ldy, ka);
            return;
        }
        const int D = ka->digits == 2 ? 2 : 3;
        switch (W->group * 4 + D) {
        case 32 * 4 + 2: q4i_rows(W, r0, r1, n, Y, ldy, ka, 32, 2); return;
        case 64 * 4 + 2: q4i_rows(W, r0, r1, n, Y, ldy, ka, 64, 2); return;
        case 128 * 4 + 2: q4i_rows(W, r0, r1, n, Y, ldy, ka, 128, 2); return;
        case 32 * 4 + 3: q4i_rows(W, r0, r1, n, Y, ldy, ka, 32, 3); return;
        case 64 * 4 + 3: q4i_rows(W, r0, r1, n, Y, ldy, ka, 64, 3); return;
        case 128 * 4 + 3: q4i_rows(W, r0, r1, n, Y, ldy, ka, 128, 3); return;
        default: break;
        }
    }
    rows_tmpl(W, r0, r1, X, ldx, n, Y, ldy, ka);
}
