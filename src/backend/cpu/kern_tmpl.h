/* kern_tmpl.h: the SIMD row kernels, written once over a small vector vocabulary and
 * included by kernels_avx2.c, kernels_avx512.c and kernels_neon.c, which define:
 *   VW lanes; vf vector type; VZERO(); VLOAD(const float *); VSET1(float);
 *   VFMA(a, b, c) = a*b + c; VADD(a, b); VHSUM(v) -> float (fixed order);
 *   VLOAD_BF16(const uint16_t *), VLOAD_F16(const uint16_t *): VW weights as floats;
 *   Q4X(const uint8_t *p, vf q[32/VW]): 16 bytes = 32 4-bit values, in order;
 *   Q8X(const uint8_t *p, vf q[16/VW]): 16 bytes = 16 8-bit values, in order;
 *   ROWS_FN: the name of the exported fm__rows_fn.
 *
 * Numerics, per output (row r, batch row b), the same for every batch size:
 *   dense:  two vector accumulators over chunks of 2*VW columns (even / odd vector),
 *           y = hsum(a0 + a1) + scalar tail (in column order).
 *   affine: per group g, two vector accumulators of q*x (even / odd vector of the group),
 *           acc += (d0 + d1) * scale_g;  y = hsum(acc) + sum_g bias_g * xsum_g (bias_dot_t),
 *           where xsum_g = sum of x over the group (fm__xsum).
 * Several batch rows share each pass over a weight row (KB at a time), so prefill reads
 * the weights once. */
#include "backend/cpu/kern.h"
#include "common.h"

#define KB 4 /* batch rows per weight pass */
#define KPF 2048 /* software prefetch distance of the weight stream, bytes */
#define AI static inline __attribute__((always_inline))

enum { T_F32, T_BF16, T_F16 };

AI vf wload(const void *row, int64_t j, const int T) {
    if (T == T_F32) return VLOAD((const float *)row + j);
    if (T == T_BF16) return VLOAD_BF16((const uint16_t *)row + j);
    return VLOAD_F16((const uint16_t *)row + j);
}

AI float wscalar(const void *row, int64_t j, const int T) {
    if (T == T_F32) return ((const float *)row)[j];
    if (T == T_BF16) return fm__bf16_to_f32(((const uint16_t *)row)[j]);
    return fm__f16_to_f32(((const uint16_t *)row)[j]);
}

AI void dense_nb(const void *row, int64_t C, const float *X, int64_t ldx, float *Y, int64_t ldy,
                 const int NB, const int T) {
    vf a0[KB], a1[KB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) a0[b] = a1[b] = VZERO();
    int64_t j = 0;
    for (; j + 2 * VW <= C; j += 2 * VW) {
        vf w0 = wload(row, j, T), w1 = wload(row, j + VW, T);
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) {
            a0[b] = VFMA(w0, VLOAD(X + b * ldx + j), a0[b]);
            a1[b] = VFMA(w1, VLOAD(X + b * ldx + j + VW), a1[b]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        float t = 0;
        for (int64_t k = j; k < C; k++) t += wscalar(row, k, T) * X[b * ldx + k];
        Y[b * ldy] = VHSUM(VADD(a0[b], a1[b])) + t;
    }
}

AI void dense_rows(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx,
                   int64_t n, float *Y, int64_t ldy, const int T) {
    const int64_t C = W->cols;
    const size_t esz = T == T_F32 ? 4 : 2;
    for (int64_t r = r0; r < r1; r++) {
        const void *row = (const char *)W->data + (size_t)r * (size_t)C * esz;
        int64_t b = 0;
        for (; b + KB <= n; b += KB) dense_nb(row, C, X + b * ldx, ldx, Y + b * ldy + r, ldy, KB, T);
        switch (n - b) {
        case 1: dense_nb(row, C, X + b * ldx, ldx, Y + b * ldy + r, ldy, 1, T); break;
        case 2: dense_nb(row, C, X + b * ldx, ldx, Y + b * ldy + r, ldy, 2, T); break;
        case 3: dense_nb(row, C, X + b * ldx, ldx, Y + b * ldy + r, ldy, 3, T); break;
        default: break;
        }
    }
}

/* sum_g bias_g * xs[g]: VW lanes at a time, then the lane sum, then the rest in order. */
AI float bias_dot_t(const void *biases, fm__dtype sdt, int64_t base, const float *xs, int64_t ng) {
    vf a = VZERO();
    int64_t g = 0;
    for (; g + VW <= ng; g += VW) {
        vf bv = sdt == FM_DT_BF16  ? VLOAD_BF16((const uint16_t *)biases + base + g)
                : sdt == FM_DT_F16 ? VLOAD_F16((const uint16_t *)biases + base + g)
                                   : VLOAD((const float *)biases + base + g);
        a = VFMA(bv, VLOAD(xs + g), a);
    }
    float t = VHSUM(a);
    for (; g < ng; g++) t += fm__ld_scale(biases, sdt, base + g) * xs[g];
    return t;
}

/* One weight row of an affine matrix against NB batch rows. BITS: 4, 8, or 0 (any bits,
 * unpacked per group through buf). G: the group size (a constant, so loops unroll). */
AI void q_nb(const fm__mat *W, int64_t r, const float *X, int64_t ldx, float *Y, int64_t ldy,
             const float *xs, int64_t ldxs, const int NB, const int BITS, const int G) {
    const int64_t C = W->cols, ng = C / G;
    const int32_t bits = W->bits;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales, *biases = W->biases;
    const uint32_t *row32 = (const uint32_t *)W->data + r * (C * bits / 32);
    const uint8_t *row8 = (const uint8_t *)row32;
    vf acc[KB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) acc[b] = VZERO();
    float buf[128] __attribute__((aligned(64)));
    for (int64_t g = 0; g < ng; g++) {
        const float s = fm__ld_scale(scales, sdt, r * ng + g);
        const int64_t j0 = g * G;
        __builtin_prefetch(row8 + j0 * bits / 8 + KPF);
        vf d0[KB], d1[KB];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) d0[b] = d1[b] = VZERO();
        if (BITS == 4) {
#pragma GCC unroll 4
            for (int k = 0; k < G; k += 32) {
                vf q[32 / VW];
                Q4X(row8 + (j0 + k) / 2, q);
#pragma GCC unroll 8
                for (int i = 0; i < 32 / VW; i += 2) {
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) {
                        const float *x = X + b * ldx + j0 + k + i * VW;
                        d0[b] = VFMA(q[i], VLOAD(x), d0[b]);
                        d1[b] = VFMA(q[i + 1], VLOAD(x + VW), d1[b]);
                    }
                }
            }
        } else if (BITS == 8) {
#pragma GCC unroll 4
            for (int k = 0; k < G; k += 32) {
                vf q[32 / VW];
                Q8X(row8 + j0 + k, q);
                Q8X(row8 + j0 + k + 16, q + 16 / VW);
#pragma GCC unroll 8
                for (int i = 0; i < 32 / VW; i += 2) {
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) {
                        const float *x = X + b * ldx + j0 + k + i * VW;
                        d0[b] = VFMA(q[i], VLOAD(x), d0[b]);
                        d1[b] = VFMA(q[i + 1], VLOAD(x + VW), d1[b]);
                    }
                }
            }
        } else {
            fm__qunpack(row32, bits, j0, G, buf);
#pragma GCC unroll 8
            for (int k = 0; k < G; k += 2 * VW) {
                vf q0 = VLOAD(buf + k), q1 = VLOAD(buf + k + VW);
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++) {
                    const float *x = X + b * ldx + j0 + k;
                    d0[b] = VFMA(q0, VLOAD(x), d0[b]);
                    d1[b] = VFMA(q1, VLOAD(x + VW), d1[b]);
                }
            }
        }
        const vf sv = VSET1(s);
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[b] = VFMA(VADD(d0[b], d1[b]), sv, acc[b]);
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        Y[b * ldy] = VHSUM(acc[b]) + bias_dot_t(biases, sdt, r * ng, xs + b * ldxs, ng);
    }
}

AI void q_rows(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx, int64_t n,
               float *Y, int64_t ldy, const float *xs, int64_t ldxs, const int BITS, const int G) {
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = 0;
        for (; b + KB <= n; b += KB)
            q_nb(W, r, X + b * ldx, ldx, Y + b * ldy + r, ldy, xs + b * ldxs, ldxs, KB, BITS, G);
        switch (n - b) {
        case 1: q_nb(W, r, X + b * ldx, ldx, Y + b * ldy + r, ldy, xs + b * ldxs, ldxs, 1, BITS, G); break;
        case 2: q_nb(W, r, X + b * ldx, ldx, Y + b * ldy + r, ldy, xs + b * ldxs, ldxs, 2, BITS, G); break;
        case 3: q_nb(W, r, X + b * ldx, ldx, Y + b * ldy + r, ldy, xs + b * ldxs, ldxs, 3, BITS, G); break;
        default: break;
        }
    }
}

/* Dispatches on the group size, so that G is a constant inside the kernels. */
AI void q_rows_g(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx, int64_t n,
                 float *Y, int64_t ldy, const float *xs, int64_t ldxs, const int BITS) {
    switch (W->group) {
    case 32: q_rows(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, BITS, 32); break;
    case 64: q_rows(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, BITS, 64); break;
    default: q_rows(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, BITS, 128); break;
    }
}

/* The template's entry point (a file may wrap it with faster special cases). */
static void rows_tmpl(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx, int64_t n,
                      float *Y, int64_t ldy, const fm__kargs *ka) {
    const float *xs = ka ? ka->xs : NULL;
    int64_t ldxs = ka ? ka->ldxs : 0;
    switch (W->type) {
    case FM_W_F32: dense_rows(W, r0, r1, X, ldx, n, Y, ldy, T_F32); break;
    case FM_W_BF16: dense_rows(W, r0, r1, X, ldx, n, Y, ldy, T_BF16); break;
    case FM_W_F16: dense_rows(W, r0, r1, X, ldx, n, Y, ldy, T_F16); break;
    case FM_W_QAFFINE:
        if (W->group != 32 && W->group != 64 && W->group != 128) { /* not an MLX group: reference */
            fm__rows_scalar(W, r0, r1, X, ldx, n, Y, ldy, NULL);
        } else if (W->bits == 4) {
            q_rows_g(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, 4);
        } else if (W->bits == 8) {
            q_rows_g(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, 8);
        } else {
            q_rows_g(W, r0, r1, X, ldx, n, Y, ldy, xs, ldxs, 0);
        }
        break;
    }
}

#ifndef ROWS_CUSTOM
FM_ROWS_DECL(ROWS_FN) { rows_tmpl(W, r0, r1, X, ldx, n, Y, ldy, ka); }
#endif
