/* kernels_avx512.c: the AVX-512 kernel paths, 16 lanes: "avx512" (F/BW/VL/DQ: the
 * kern_tmpl.h kernels) and "avx512vnni" (the same plus integer affine kernels for every
 * MLX bit width; needs VNNI and VBMI).
 * Built with AVX-512 flags by the Makefile and used only when cpuid reports the features
 * (dispatch.c). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Software prefetch distance (bytes) and hint for the weight stream of the integer kernels
 * other than 4 bits: into L2, 8 KiB ahead (8-bit g64 matvec, 2 threads, 2 MiB pages:
 * about 55 GB/s with 2 digits against 47-51 for L1 at 2 KiB). */
#ifndef FM_PF
#define FM_PF 8192
#endif
#ifndef FM_PF_HINT
#define FM_PF_HINT _MM_HINT_T1
#endif
/* The 4-bit kernel's distance and hint: into L2, 8 KiB ahead (measured best for long
 * streams here, 1 and 2 threads, 4 KiB and 2 MiB pages; T0 or NTA hints, or 2 KiB, halve
 * the 2-thread rate), rounded up to whole blocks of rows (fm__pf_dist). */
#ifndef FM_PF4
#define FM_PF4 8192
#endif
#ifndef FM_PF4_HINT
#define FM_PF4_HINT _MM_HINT_T1
#endif
#define VW 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSET1(f) _mm512_set1_ps(f)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VHSUM(v) _mm512_reduce_add_ps(v)
#define VLOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VLOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))

static inline __attribute__((always_inline)) void Q4X(const uint8_t *p, vf *q) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
    q[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
}

static inline __attribute__((always_inline)) void Q8X(const uint8_t *p, vf *q) {
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

#define ROWS_FN fm__rows_avx512
#include "backend/cpu/kern_tmpl.h"

/* ---- integer affine kernels with AVX512-VNNI -------------------------------------------
 * The activations are written once per call as D = 2 or 3 int8 digits per column with one
 * power-of-two scale per 64-column chunk (fm__xq_prep_avx512, the format in kern.h), and
 * vpdpbusd gives exact integer dot products of the weights with each digit, combined
 * most significant first as (a.q << 8) + b.q (<< 8) + c.q, converted to float and scaled
 * by scale_g * s; the arithmetic is fm__rows_digits_ref's, lane for lane.
 * 4 bits: two chunks (64 weight bytes, 128 columns) per step: one 64-byte load gives the
 * low nibbles (even columns of both chunks) and the high nibbles (odd columns), matching
 * the digits' pair layout, so 32-bit lane l < 8 sums columns 8l..8l+7 of chunk 2p and
 * lane 8 + l those of chunk 2p + 1 (sums below 2^31). A last odd chunk is computed alone
 * (32-byte load: its even columns in lanes 0-7, its odd ones in lanes 8-15).
 * Other bits: the weights unpacked to one byte per column, lane l columns 4l..4l+3. The
 * bias term is sum_g bias_g * xsum_g as on the other paths. */

#define AI static inline __attribute__((always_inline))
#define VBMI __attribute__((target("avx512vbmi"))) /* the path requires it (dispatch.c) */

/* The lane sum of fm__rows_digits_ref: lanes i and i+8, then i and i+4, then pairs. */
AI float hsum16(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

void fm__xq_prep_avx512(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const int inter = bits == 4, D = digits == 2 ? 2 : 3, K = 8 * D - 2;
    const __m512i c128 = _mm512_set1_epi32(128), c255 = _mm512_set1_epi32(255);
    const int64_t nc = cols / 64;
    for (int64_t c = 0; c < nc; c++) {
        const float *p = x + c * 64;
        __m512 x0 = _mm512_loadu_ps(p), x1 = _mm512_loadu_ps(p + 16);
        __m512 x2 = _mm512_loadu_ps(p + 32), x3 = _mm512_loadu_ps(p + 48);
        __mmask16 nan = _mm512_cmp_ps_mask(x0, x1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x2, x3, _CMP_UNORD_Q);
        __m512 m = _mm512_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)),
                                 _mm512_max_ps(_mm512_abs_ps(x2), _mm512_abs_ps(x3)));
        float amax = _mm512_reduce_max_ps(m);
        /* where digit d's even (v[0], v[1]) and odd (v[2], v[3]) column vectors go */
        int8_t *o = xq + c * 64 * D;
        int64_t ev_at = 0, od_at = 32, dstep = 64;
        if (inter && c < (nc & ~(int64_t)1)) { /* 4 bits, chunk of a pair */
            o = xq + (c >> 1) * 128 * D + (c & 1) * 32;
            od_at = 64;
            dstep = 128;
        }
        int e = 0;
        if (amax > 0 && amax <= 3.0e38f) frexpf(amax, &e); /* amax < 2^e */
        if (nan || !(amax <= 3.0e38f) || amax == 0 || e < -100) { /* NaN/Inf (through s), zeros, tiny */
            for (int d = 0; d < D; d++) {
                memset(o + d * dstep + ev_at, 0, 32);
                memset(o + d * dstep + od_at, 0, 32);
            }
            s[c] = (nan || !(amax <= 3.0e38f)) ? NAN : 0.0f;
            continue;
        }
        s[c] = ldexpf(1.0f, e - K);
        __m512 k = _mm512_set1_ps((float)(K - e));
        /* 4 bits: even columns of the chunk, then odd (the nibble order); else in order */
        __m512 v[4] = {x0, x1, x2, x3};
        if (inter) {
            v[0] = _mm512_permutex2var_ps(x0, ev, x1);
            v[1] = _mm512_permutex2var_ps(x2, ev, x3);
            v[2] = _mm512_permutex2var_ps(x0, od, x1);
            v[3] = _mm512_permutex2var_ps(x2, od, x3);
        }
        for (int i = 0; i < 4; i++) {
            __m512i q = _mm512_cvtps_epi32(_mm512_scalef_ps(v[i], k)); /* exact scaling, round */
            int64_t at = (i < 2 ? ev_at : od_at) + (i & 1) * 16;
            for (int d = D - 1; d > 0; d--) {
                __m512i lo = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(q, c128), c255), c128);
                _mm_storeu_si128((__m128i *)(o + d * dstep + at), _mm512_cvtepi32_epi8(lo));
                q = _mm512_srai_epi32(_mm512_sub_epi32(q, lo), 8);
            }
            _mm_storeu_si128((__m128i *)(o + at), _mm512_cvtepi32_epi8(q));
        }
    }
}

/* acc + bias_g * xs[g] for g < ng, group g in lane g mod 16 (in order of g). */
AI __m512 bias_fold(const void *biases, fm__dtype sdt, int64_t base, const float *xs, int64_t ng, __m512 acc) {
    for (int64_t g = 0; g < ng; g += 16) {
        __mmask16 k = ng - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
        __m512 bv;
        if (sdt == FM_DT_BF16)
            bv = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, (const uint16_t *)biases + base + g)), 16));
        else if (sdt == FM_DT_F16)
            bv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, (const uint16_t *)biases + base + g));
        else
            bv = _mm512_maskz_loadu_ps(k, (const float *)biases + base + g);
        acc = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(k, xs + g), acc);
    }
    return acc;
}

/* sum_g bias_g * xs[g], vectorized (fixed order: 16 lanes, then the lane sum). */
AI float bias_dot(const void *biases, fm__dtype sdt, int64_t base, const float *xs, int64_t ng) {
    return hsum16(bias_fold(biases, sdt, base, xs, ng, _mm512_setzero_ps()));
}

/* Exact dot products of one chunk's weights q (0..63 per byte) with its D digits at x,
 * x + 64, ... (most significant first): sum(q * m) per 32-bit lane. */
AI __m512i dot_digits(__m512i q, const int8_t *x, const int D) {
    __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(x));
    for (int d = 1; d < D; d++) t = _mm512_dpbusd_epi32(_mm512_slli_epi32(t, 8), q, _mm512_loadu_si512(x + 64 * d));
    return t;
}

/* The 4-bit weights of one chunk (32 bytes at p): low nibbles in bytes 0-31, high nibbles
 * in bytes 32-63, the order of the activation digits of an unpaired chunk. */
AI __m512i q4_chunk(const uint8_t *p) {
    const __m256i m4h = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4h)),
                              _mm256_and_si256(_mm256_srli_epi16(v, 4), m4h), 1);
}

/* Per-lane scales of an unpaired chunk c of row r (ng groups per row): G = 32: lanes 0-3
 * and 8-11 take group 2c, lanes 4-7 and 12-15 group 2c+1; else one scale. */
AI __m512 q4_chunk_scales(const void *scales, fm__dtype sdt, int64_t r, int64_t ng, int64_t c, const int G) {
    if (G == 32) {
        float a = fm__ld_scale(scales, sdt, r * ng + 2 * c), bb = fm__ld_scale(scales, sdt, r * ng + 2 * c + 1);
        __m256 h = _mm256_setr_ps(a, a, a, a, bb, bb, bb, bb);
        return _mm512_insertf32x8(_mm512_castps256_ps512(h), h, 1);
    }
    return _mm512_set1_ps(fm__ld_scale(scales, sdt, r * ng + c * 64 / G));
}

/* Per-lane scales of chunk pair p (groups from g = r*ng + the pair's first): lane l takes
 * the group of its columns: G = 32: group 4p + l/4, G = 64: 2p + l/8, G = 128: p. BF16
 * scales (the common case) are one broadcast load and one byte shuffle. */
AI __m512 q4_pair_scales(const void *scales, const fm__dtype sdt, int64_t g, const int G) {
    const __m512i sidx = G == 32 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                 : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    if (sdt == FM_DT_BF16) {
        const uint16_t *h = (const uint16_t *)scales + g;
        if (G == 128) return _mm512_castsi512_ps(_mm512_set1_epi32((int)((uint32_t)*h << 16)));
        /* bf16 number i of the broadcast to the high half of lanes 4i..4i+3 (G = 32) or
         * 8i..8i+7 (G = 64); the other bytes zero */
        const __m512i ctl = G == 32 ? _mm512_set_epi32(0x0706FFFF, 0x0706FFFF, 0x0706FFFF, 0x0706FFFF,
                                                       0x0504FFFF, 0x0504FFFF, 0x0504FFFF, 0x0504FFFF,
                                                       0x0302FFFF, 0x0302FFFF, 0x0302FFFF, 0x0302FFFF,
                                                       0x0100FFFF, 0x0100FFFF, 0x0100FFFF, 0x0100FFFF)
                                    : _mm512_set_epi32(0x0302FFFF, 0x0302FFFF, 0x0302FFFF, 0x0302FFFF,
                                                       0x0302FFFF, 0x0302FFFF, 0x0302FFFF, 0x0302FFFF,
                                                       0x0100FFFF, 0x0100FFFF, 0x0100FFFF, 0x0100FFFF,
                                                       0x0100FFFF, 0x0100FFFF, 0x0100FFFF, 0x0100FFFF);
        __m512i b = G == 32 ? _mm512_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)h))
                            : _mm512_broadcastd_epi32(_mm_loadu_si32(h));
        return _mm512_castsi512_ps(_mm512_shuffle_epi8(b, ctl));
    }
    if (G == 128) return _mm512_set1_ps(fm__ld_scale(scales, sdt, g));
    __m128 v;
    if (sdt == FM_DT_F16) {
        const uint16_t *h = (const uint16_t *)scales + g;
        v = _mm_cvtph_ps(G == 32 ? _mm_loadl_epi64((const __m128i *)h) : _mm_loadu_si32(h));
    } else {
        const float *f = (const float *)scales + g;
        v = G == 32 ? _mm_loadu_ps(f) : _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)f));
    }
    return _mm512_permutexvar_ps(sidx, _mm512_castps128_ps512(v));
}

/* The chunk scales of pair p per lane: lanes 0-7 s[2p], lanes 8-15 s[2p+1]. */
AI __m512 q4_pair_xs(const float *xqs, int64_t p) {
    const __m512i sidx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(sidx, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(xqs + 2 * p)))));
}

/* NR consecutive rows r.. (NR <= 4) against NB batch rows b0.. (NB <= KB; NR == 1 or
 * NB == 1): each output the same arithmetic (so the same bits) whatever NR and NB; the
 * rows share the activation digit loads, the batch rows the weight loads. */
#define NRMAX 4
AI VBMI void q4v(const fm__mat *W, int64_t r, float *Y, int64_t ldy, const fm__kargs *ka, int64_t b0,
                 const int NR, const int NB, const int G, const int D, const fm__dtype sdt, int64_t pf) {
    const int64_t C = W->cols, nc = C / 64, np = nc / 2, ng = C / G;
    const void *scales = W->scales;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const uint8_t *row[NRMAX];
    const int8_t *xq[KB];
    const float *xqs[KB];
    __m512 acc[NRMAX][KB];
#pragma GCC unroll 4
    for (int k = 0; k < NR; k++) row[k] = (const uint8_t *)W->data + (r + k) * (C / 2);
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        xq[b] = ka->xq + (b0 + b) * ka->ldxq;
        xqs[b] = ka->xqs + (b0 + b) * ka->ldxqs;
#pragma GCC unroll 4
        for (int k = 0; k < NR; k++) acc[k][b] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < np; p++) {
        __m512i lo[NRMAX], hi[NRMAX];
        __m512 sc[NRMAX];
#pragma GCC unroll 4
        for (int k = 0; k < NR; k++) {
            _mm_prefetch((const char *)(row[k] + p * 64) + pf, FM_PF4_HINT);
            __m512i v = _mm512_loadu_si512(row[k] + p * 64);
            lo[k] = _mm512_and_si512(v, m4);
            hi[k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            sc[k] = q4_pair_scales(scales, sdt, (r + k) * ng + p * 128 / G, G);
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            const int8_t *x = xq[b] + p * 128 * D;
            const __m512 xs = q4_pair_xs(xqs[b], p);
            __m512i t[NRMAX];
#pragma GCC unroll 3
            for (int d = 0; d < D; d++) {
                __m512i d0 = _mm512_loadu_si512(x + d * 128), d1 = _mm512_loadu_si512(x + d * 128 + 64);
#pragma GCC unroll 4
                for (int k = 0; k < NR; k++)
                    t[k] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d ? _mm512_slli_epi32(t[k], 8) : _mm512_setzero_si512(),
                                                                   lo[k], d0), hi[k], d1);
            }
#pragma GCC unroll 4
            for (int k = 0; k < NR; k++)
                acc[k][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[k]), _mm512_mul_ps(sc[k], xs), acc[k][b]);
        }
    }
    if (nc & 1) { /* last chunk alone: low nibbles then high nibbles of its 32 bytes */
        const int64_t c = nc - 1;
#pragma GCC unroll 4
        for (int k = 0; k < NR; k++) {
            const __m512i q = q4_chunk(row[k] + c * 32);
            const __m512 sw = q4_chunk_scales(scales, sdt, r + k, ng, c, G);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) {
                __m512i t = dot_digits(q, xq[b] + c * 64 * D, D);
                acc[k][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sw, _mm512_set1_ps(xqs[b][c])), acc[k][b]);
            }
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < NR; k++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) /* the bias terms join the lanes: one lane sum per output */
            Y[(b0 + b) * ldy + r + k] =
                hsum16(bias_fold(W->biases, sdt, (r + k) * ng, ka->xs + (b0 + b) * ka->ldxs, ng, acc[k][b]));
}

/* 8 bits: the weight bytes are the unsigned digits in column order. D = 3: the top digit
 * is kept apart (sum q*a up to 2^17, times 2^16 in float) so nothing overflows; D = 2:
 * (a.q << 8) + b.q below 2^25. */
AI void q8v_nb(const fm__mat *W, int64_t r, float *Y, int64_t ldy, const fm__kargs *ka, int64_t b0,
               const int NB, const int G, const int D) {
    const int64_t C = W->cols, nc = C / 64, ng = C / G;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales;
    const uint8_t *row = (const uint8_t *)W->data + r * C;
    const __m512 k16 = _mm512_set1_ps(65536.0f);
    const int8_t *xq[KB];
    const float *xqs[KB];
    __m512 acc[KB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        xq[b] = ka->xq + (b0 + b) * ka->ldxq;
        xqs[b] = ka->xqs + (b0 + b) * ka->ldxqs;
        acc[b] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < nc; c++) {
        _mm_prefetch((const char *)(row + c * 64) + FM_PF, FM_PF_HINT);
        __m512i q = _mm512_loadu_si512(row + c * 64);
        __m512 sw;
        if (G == 32) { /* lanes 0-7: columns 0-31, lanes 8-15: columns 32-63 */
            float a = fm__ld_scale(scales, sdt, r * ng + 2 * c), bb = fm__ld_scale(scales, sdt, r * ng + 2 * c + 1);
            sw = _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(bb), 1);
        } else {
            sw = _mm512_set1_ps(fm__ld_scale(scales, sdt, r * ng + c * 64 / G));
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            const int8_t *p = xq[b] + c * 64 * D;
            __m512 f;
            if (D == 3) {
                __m512i th = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(p));
                __m512i tl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(p + 64));
                tl = _mm512_dpbusd_epi32(_mm512_slli_epi32(tl, 8), q, _mm512_loadu_si512(p + 128));
                f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(th), k16, _mm512_cvtepi32_ps(tl));
            } else {
                f = _mm512_cvtepi32_ps(dot_digits(q, p, 2));
            }
            acc[b] = _mm512_fmadd_ps(f, _mm512_mul_ps(sw, _mm512_set1_ps(xqs[b][c])), acc[b]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++)
        Y[(b0 + b) * ldy + r] = hsum16(acc[b]) + bias_dot(W->biases, sdt, r * ng, ka->xs + (b0 + b) * ka->ldxs, ng);
}

/* Bits 2, 3, 5 and 6: each 64-column chunk is 8*bits bytes; two vpermb gather, for every
 * column, the two bytes holding its bits into a 16-bit lane, vpsrlvw aligns them and the
 * values are packed to 64 unsigned bytes in column order (digits as for 8 bits). q < 64,
 * so the digit sums nest as for 4 bits ((a.q << 8) + b.q << 8) + c.q < 2^31. */
typedef struct { __m512i idx[2], sh[2], mask; __mmask64 ld; } qgen_tab;

static void qgen_init(qgen_tab *t, int bits) {
    for (int h = 0; h < 2; h++) {
        uint8_t ix[64];
        uint16_t sh[32];
        for (int j = 0; j < 32; j++) {
            int bit = (32 * h + j) * bits;
            ix[2 * j] = (uint8_t)(bit >> 3);
            ix[2 * j + 1] = (uint8_t)((bit >> 3) + 1);
            sh[j] = (uint16_t)(bit & 7);
        }
        t->idx[h] = _mm512_loadu_si512(ix);
        t->sh[h] = _mm512_loadu_si512(sh);
    }
    t->mask = _mm512_set1_epi16((short)((1 << bits) - 1));
    t->ld = bits >= 8 ? ~(__mmask64)0 : (((__mmask64)1 << (8 * bits)) - 1);
}

AI VBMI void qgv_nb(const fm__mat *W, int64_t r, float *Y, int64_t ldy, const fm__kargs *ka, const qgen_tab *tb,
                    int64_t b0, const int NB, const int G, const int D) {
    const int64_t C = W->cols, nc = C / 64, ng = C / G;
    const int bits = W->bits;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales;
    const uint8_t *row = (const uint8_t *)W->data + r * (C * bits / 8);
    const int8_t *xq[KB];
    const float *xqs[KB];
    __m512 acc[KB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        xq[b] = ka->xq + (b0 + b) * ka->ldxq;
        xqs[b] = ka->xqs + (b0 + b) * ka->ldxqs;
        acc[b] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < nc; c++) {
        _mm_prefetch((const char *)(row + c * 8 * bits) + FM_PF, FM_PF_HINT);
        __m512i v = _mm512_maskz_loadu_epi8(tb->ld, row + c * 8 * bits);
        __m512i w0 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(tb->idx[0], v), tb->sh[0]), tb->mask);
        __m512i w1 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(tb->idx[1], v), tb->sh[1]), tb->mask);
        __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(w0)), _mm512_cvtepi16_epi8(w1), 1);
        __m512 sw;
        if (G == 32) { /* lanes 0-7: columns 0-31, lanes 8-15: columns 32-63 */
            float a = fm__ld_scale(scales, sdt, r * ng + 2 * c), bb = fm__ld_scale(scales, sdt, r * ng + 2 * c + 1);
            sw = _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(bb), 1);
        } else {
            sw = _mm512_set1_ps(fm__ld_scale(scales, sdt, r * ng + c * 64 / G));
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            __m512i t = dot_digits(q, xq[b] + c * 64 * D, D);
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sw, _mm512_set1_ps(xqs[b][c])), acc[b]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++)
        Y[(b0 + b) * ldy + r] = hsum16(acc[b]) + bias_dot(W->biases, sdt, r * ng, ka->xs + (b0 + b) * ka->ldxs, ng);
}

AI VBMI void qgv_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n, float *Y, int64_t ldy,
                      const fm__kargs *ka, const int G, const int D) {
    qgen_tab tb;
    qgen_init(&tb, W->bits);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) qgv_nb(W, r, Y, ldy, ka, &tb, b, KB, G, D);
        switch (n - b) {
        case 1: qgv_nb(W, r, Y, ldy, ka, &tb, b, 1, G, D); break;
        case 2: qgv_nb(W, r, Y, ldy, ka, &tb, b, 2, G, D); break;
        case 3: qgv_nb(W, r, Y, ldy, ka, &tb, b, 3, G, D); break;
        default: break;
        }
    }
}

/* Decode: rows in fours sharing the digit loads (scale dtype a constant inside). */
AI VBMI void q4v_dec(const fm__mat *W, int64_t r0, int64_t r1, float *Y, const fm__kargs *ka, const int G,
                     const int D, const fm__dtype sdt) {
    const int64_t pf4 = fm__pf_dist(FM_PF4, 4 * (W->cols / 2)), pf1 = fm__pf_dist(FM_PF4, W->cols / 2);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) q4v(W, r, Y, 0, ka, 0, 4, 1, G, D, sdt, pf4);
    for (; r < r1; r++) q4v(W, r, Y, 0, ka, 0, 1, 1, G, D, sdt, pf1);
}

AI VBMI void q4v_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n, float *Y, int64_t ldy,
                      const fm__kargs *ka, const int G, const int D) {
    if (n == 1) {
        switch (W->sdt) {
        case FM_DT_BF16: q4v_dec(W, r0, r1, Y, ka, G, D, FM_DT_BF16); return;
        case FM_DT_F16: q4v_dec(W, r0, r1, Y, ka, G, D, FM_DT_F16); return;
        default: q4v_dec(W, r0, r1, Y, ka, G, D, FM_DT_F32); return;
        }
    }
    const fm__dtype sdt = W->sdt;
    const int64_t pf1 = fm__pf_dist(FM_PF4, W->cols / 2);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) q4v(W, r, Y, ldy, ka, b, 1, KB, G, D, sdt, pf1);
        switch (n - b) {
        case 1: q4v(W, r, Y, ldy, ka, b, 1, 1, G, D, sdt, pf1); break;
        case 2: q4v(W, r, Y, ldy, ka, b, 1, 2, G, D, sdt, pf1); break;
        case 3: q4v(W, r, Y, ldy, ka, b, 1, 3, G, D, sdt, pf1); break;
        default: break;
        }
    }
}

AI void q8v_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n, float *Y, int64_t ldy, const fm__kargs *ka,
                 const int G, const int D) {
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB) q8v_nb(W, r, Y, ldy, ka, b, KB, G, D);
        switch (n - b) {
        case 1: q8v_nb(W, r, Y, ldy, ka, b, 1, G, D); break;
        case 2: q8v_nb(W, r, Y, ldy, ka, b, 2, G, D); break;
        case 3: q8v_nb(W, r, Y, ldy, ka, b, 3, G, D); break;
        default: break;
        }
    }
}

/* One function per kernel family, group size and digit count (constants inside; separate
 * functions keep each one small enough for the compiler to keep its accumulators in
 * registers). */
#define Q_INST(fam, G, D)                                                                          \
    static __attribute__((noinline)) VBMI void fam##_##G##_##D(const fm__mat *W, int64_t r0, int64_t r1, \
                                                               int64_t n, float *Y, int64_t ldy,      \
                                                               const fm__kargs *ka) {                 \
        fam(W, r0, r1, n, Y, ldy, ka, G, D);                                                       \
    }
#define Q_FAMILY(fam) \
    Q_INST(fam, 32, 2) Q_INST(fam, 64, 2) Q_INST(fam, 128, 2) Q_INST(fam, 32, 3) Q_INST(fam, 64, 3) Q_INST(fam, 128, 3)
Q_FAMILY(q4v_rows)
Q_FAMILY(q8v_rows)
Q_FAMILY(qgv_rows)

#define Q_DISPATCH(fam)                                                                       \
    switch (W->group * 4 + (ka->digits == 2 ? 2 : 3)) {                                       \
    case 32 * 4 + 2: fam##_32_2(W, r0, r1, n, Y, ldy, ka); return;                            \
    case 64 * 4 + 2: fam##_64_2(W, r0, r1, n, Y, ldy, ka); return;                            \
    case 128 * 4 + 2: fam##_128_2(W, r0, r1, n, Y, ldy, ka); return;                          \
    case 32 * 4 + 3: fam##_32_3(W, r0, r1, n, Y, ldy, ka); return;                            \
    case 64 * 4 + 3: fam##_64_3(W, r0, r1, n, Y, ldy, ka); return;                            \
    case 128 * 4 + 3: fam##_128_3(W, r0, r1, n, Y, ldy, ka); return;                          \
    default: break;                                                                           \
    }

VBMI FM_ROWS_DECL(fm__rows_avx512vnni) {
    if (W->type == FM_W_QAFFINE && ka && ka->xq) {
        if (W->bits == 4) { Q_DISPATCH(q4v_rows) }
        else if (W->bits == 8) { Q_DISPATCH(q8v_rows) }
        else if (W->bits <= 6) { Q_DISPATCH(qgv_rows) }
    }
    rows_tmpl(W, r0, r1, X, ldx, n, Y, ldy, ka);
}
