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
 * (<< 8) + c.q, converted and scaled. */

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

/* Exact int32 sums, lane l: columns 8l..8l+7 (their low-nibble weights lo against digits
 * e, high-nibble ones hi against digits o, D digits 128 (pair) or 64 bytes apart). */
static inline __attribute__((always_inline)) __m256i q4i_dot(__m256i lo, __m256i hi, const int8_t *e,
                                                             const int8_t *o, int64_t dstep, const int D) {
    const __m256i one = _mm256_set1_epi16(1);
    __m256i t = _mm256_setzero_si256();
    for (int d = 0; d < D; d++) {
        __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(e + d * dstep))),
                                       _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(o + d * dstep))));
        t = _mm256_add_epi32(d ? _mm256_slli_epi32(t, 8) : t, _mm256_madd_epi16(s16, one));
    }
    return t;
}

/* acc0/acc1 (lanes 0-7 / 8-15) + bias_g * xs[g], group g in lane g mod 16, zeros past ng. */
static inline __attribute__((always_inline)) void bias_fold2(const void *biases, fm__dtype sdt, int64_t base,
                                                             const float *xs, int64_t ng, __m256 *acc) {
    for (int64_t g = 0; g < ng; g += 16) {
        float bb[16], xx[16];
        for (int i = 0; i < 16; i++) {
            bb[i] = g + i < ng ? fm__ld_scale(biases, sdt, base + g + i) : 0.0f;
            xx[i] = g + i < ng ? xs[g + i] : 0.0f;
        }
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(bb), _mm256_loadu_ps(xx), acc[0]);
        acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(bb + 8), _mm256_loadu_ps(xx + 8), acc[1]);
    }
}

static inline __attribute__((always_inline)) void q4i_nb(const fm__mat *W, int64_t r, float *Y, int64_t ldy,
                                                         const fm__kargs *ka, int64_t b0, const int NB,
                                                         const int G, const int D) {
    const int64_t C = W->cols, nc = C / 64, np = nc / 2, ng = C / G;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales;
    const uint8_t *row = (const uint8_t *)W->data + r * (C / 2);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const int8_t *xq[KB];
    const float *xqs[KB];
    __m256 acc[KB][2];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        xq[b] = ka->xq + (b0 + b) * ka->ldxq;
        xqs[b] = ka->xqs + (b0 + b) * ka->ldxqs;
        acc[b][0] = acc[b][1] = _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < np; p++) {
        _mm_prefetch((const char *)(row + p * 64) + KPF, _MM_HINT_T0);
        __m256i lo[2], hi[2];
        __m256 sc[2];
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + p * 64 + h * 32));
            lo[h] = _mm256_and_si256(v, m4);
            hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            int64_t g = r * ng + (p * 128 + h * 64) / G; /* the group of the half's first column */
            if (G == 32) {
                float a = fm__ld_scale(scales, sdt, g), bb = fm__ld_scale(scales, sdt, g + 1);
                sc[h] = _mm256_setr_ps(a, a, a, a, bb, bb, bb, bb);
            } else {
                sc[h] = _mm256_set1_ps(fm__ld_scale(scales, sdt, g));
            }
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            const int8_t *x = xq[b] + p * 128 * D;
            for (int h = 0; h < 2; h++) {
                __m256i t = q4i_dot(lo[h], hi[h], x + h * 32, x + 64 + h * 32, 128, D);
                acc[b][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(sc[h], _mm256_set1_ps(xqs[b][2 * p + h])),
                                            acc[b][h]);
            }
        }
    }
    if (nc & 1) { /* last chunk alone: even columns in lanes 0-7, odd in lanes 8-15 */
        const int64_t c = nc - 1;
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + c * 32));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        __m256 sw;
        if (G == 32) {
            float a = fm__ld_scale(scales, sdt, r * ng + 2 * c), bb = fm__ld_scale(scales, sdt, r * ng + 2 * c + 1);
            sw = _mm256_setr_ps(a, a, a, a, bb, bb, bb, bb);
        } else {
            sw = _mm256_set1_ps(fm__ld_scale(scales, sdt, r * ng + c * 64 / G));
        }
        const __m256i z = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            const int8_t *x = xq[b] + c * 64 * D;
            const __m256 m = _mm256_mul_ps(sw, _mm256_set1_ps(xqs[b][c]));
            __m256i te = q4i_dot(lo, z, x, x, 64, D), to = q4i_dot(hi, z, x + 32, x + 32, 64, D);
            acc[b][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(te), m, acc[b][0]);
            acc[b][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(to), m, acc[b][1]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        bias_fold2(W->biases, sdt, r * ng, ka->xs + (b0 + b) * ka->ldxs, ng, acc[b]);
        Y[(b0 + b) * ldy + r] = VHSUM(_mm256_add_ps(acc[b][0], acc[b][1]));
    }
}

static inline __attribute__((always_inline)) void q4i_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n,
                                                           float *Y, int64_t ldy, const fm__kargs *ka, const int G,
                                                           const int D) {
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) q4i_nb(W, r, Y, ldy, ka, b, KB, G, D);
        switch (n - b) {
        case 1: q4i_nb(W, r, Y, ldy, ka, b, 1, G, D); break;
        case 2: q4i_nb(W, r, Y, ldy, ka, b, 2, G, D); break;
        case 3: q4i_nb(W, r, Y, ldy, ka, b, 3, G, D); break;
        default: break;
        }
    }
}

FM_ROWS_DECL(fm__rows_avx2) {
    if (W->type == FM_W_QAFFINE && W->bits == 4 && ka && ka->xq) {
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
