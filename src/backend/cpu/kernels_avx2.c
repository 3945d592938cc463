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
 * As on the AVX512-VNNI path, x is written once per call as three int8 digits per 64
 * columns (x ~ (a*2^16 + b*2^8 + c) * s, |.| <= 2^22). Here each 32-column half of a
 * chunk is stored as its 16 even columns then its 16 odd columns, matching one 16-byte
 * load of weights split into low and high nibbles. vpmaddubsw (u8 x s8, pairs: at most
 * 2 * 15 * 128, no saturation) and vpmaddwd give exact int32 sums, combined per digit
 * as ((a.q << 8) + b.q << 8) + c.q, converted once per group part and scaled. */

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

void fm__xq_prep_avx2(const float *x, int64_t cols, int bits, int8_t *xq, float *s) {
    (void)bits;
    const __m256i c128 = _mm256_set1_epi32(128), c255 = _mm256_set1_epi32(255);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t c = 0; c < cols / 64; c++) {
        const float *p = x + c * 64;
        __m256 v[8], m = _mm256_setzero_ps();
        for (int i = 0; i < 8; i++) {
            v[i] = _mm256_loadu_ps(p + 8 * i);
            m = _mm256_max_ps(m, _mm256_and_ps(v[i], absmask));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        float amax = _mm_cvtss_f32(h);
        int8_t *o = xq + c * 192;
        int e = 0;
        if (!(amax <= 3.0e38f) || amax == 0 || (frexpf(amax, &e), e < -100)) {
            memset(o, 0, 192); /* Inf/NaN propagate through s; zero or negligible chunks */
            s[c] = amax <= 3.0e38f ? 0.0f : NAN;
            continue;
        }
        s[c] = ldexpf(1.0f, e - 22);
        const __m256 k = _mm256_set1_ps(ldexpf(1.0f, 22 - e)); /* exact power of two */
        for (int half = 0; half < 2; half++) {
            __m256 *w = v + 4 * half;
            __m256 u[4] = {deint(w[0], w[1], 0), deint(w[2], w[3], 0), deint(w[0], w[1], 1), deint(w[2], w[3], 1)};
            __m256i dl[4], dm[4], dh[4];
            for (int i = 0; i < 4; i++) {
                __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(u[i], k));
                dl[i] = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(q, c128), c255), c128);
                q = _mm256_srai_epi32(_mm256_sub_epi32(q, dl[i]), 8);
                dm[i] = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(q, c128), c255), c128);
                dh[i] = _mm256_srai_epi32(_mm256_sub_epi32(q, dm[i]), 8);
            }
            _mm256_storeu_si256((__m256i *)(o + half * 32), pack4(dh[0], dh[1], dh[2], dh[3]));
            _mm256_storeu_si256((__m256i *)(o + 64 + half * 32), pack4(dm[0], dm[1], dm[2], dm[3]));
            _mm256_storeu_si256((__m256i *)(o + 128 + half * 32), pack4(dl[0], dl[1], dl[2], dl[3]));
        }
    }
}

static inline __attribute__((always_inline)) __m256i idot(__m256i q, const int8_t *p) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)p)), _mm256_set1_epi16(1));
}

static inline __attribute__((always_inline)) __m256i horner(__m256i a, __m256i b, __m256i c) {
    return _mm256_add_epi32(_mm256_slli_epi32(_mm256_add_epi32(_mm256_slli_epi32(a, 8), b), 8), c);
}

static inline __attribute__((always_inline)) void q4i_nb(const fm__mat *W, int64_t r, float *Y, int64_t ldy,
                                                         const fm__kargs *ka, int64_t b0, const int NB,
                                                         const int G) {
    const int64_t C = W->cols, nc = C / 64, ng = C / G;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales;
    const uint8_t *row = (const uint8_t *)W->data + r * (C / 2);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const int8_t *xq[KB];
    const float *xqs[KB];
    __m256 acc[KB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        xq[b] = ka->xq + (b0 + b) * ka->ldxq;
        xqs[b] = ka->xqs + (b0 + b) * ka->ldxqs;
        acc[b] = _mm256_setzero_ps();
    }
    for (int64_t c = 0; c < nc; c++) {
        if ((c & 1) == 0) _mm_prefetch((const char *)(row + c * 32) + KPF, _MM_HINT_T0);
        __m256i q[2];
        for (int h = 0; h < 2; h++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(row + c * 32 + h * 16));
            q[h] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(v, m4)),
                                           _mm_and_si128(_mm_srli_epi16(v, 4), m4), 1);
        }
        float s0 = fm__ld_scale(scales, sdt, r * ng + (G == 32 ? 2 * c : c * 64 / G));
        float s1 = G == 32 ? fm__ld_scale(scales, sdt, r * ng + 2 * c + 1) : s0;
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            const int8_t *p = xq[b] + c * 192;
            __m256i t0 = horner(idot(q[0], p), idot(q[0], p + 64), idot(q[0], p + 128));
            __m256i t1 = horner(idot(q[1], p + 32), idot(q[1], p + 96), idot(q[1], p + 160));
            const float xs = xqs[b][c];
            if (G == 32) {
                acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t0), _mm256_set1_ps(s0 * xs), acc[b]);
                acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t1), _mm256_set1_ps(s1 * xs), acc[b]);
            } else {
                acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(t0, t1)), _mm256_set1_ps(s0 * xs), acc[b]);
            }
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        Y[(b0 + b) * ldy + r] = VHSUM(acc[b]) + bias_dot_t(W->biases, sdt, r * ng, ka->xs + (b0 + b) * ka->ldxs, ng);
    }
}

static inline __attribute__((always_inline)) void q4i_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n,
                                                           float *Y, int64_t ldy, const fm__kargs *ka, const int G) {
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) q4i_nb(W, r, Y, ldy, ka, b, KB, G);
        switch (n - b) {
        case 1: q4i_nb(W, r, Y, ldy, ka, b, 1, G); break;
        case 2: q4i_nb(W, r, Y, ldy, ka, b, 2, G); break;
        case 3: q4i_nb(W, r, Y, ldy, ka, b, 3, G); break;
        default: break;
        }
    }
}

FM_ROWS_DECL(fm__rows_avx2) {
    if (W->type == FM_W_QAFFINE && W->bits == 4 && ka && ka->xq) {
        switch (W->group) {
        case 32: q4i_rows(W, r0, r1, n, Y, ldy, ka, 32); return;
        case 64: q4i_rows(W, r0, r1, n, Y, ldy, ka, 64); return;
        case 128: q4i_rows(W, r0, r1, n, Y, ldy, ka, 128); return;
        default: break;
        }
    }
    rows_tmpl(W, r0, r1, X, ldx, n, Y, ldy, ka);
}
