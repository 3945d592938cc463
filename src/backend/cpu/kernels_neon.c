/* kernels_neon.c: the ARM64 NEON kernel path, 4 lanes (AdvSIMD is part of the ARMv8-A
 * baseline). Compiled only for aarch64 (Makefile). The kernels are in kern_tmpl.h, plus
 * an integer 4-bit affine kernel on the activation digits of kern.h. */
#include <arm_neon.h>
#include <stdint.h>

#define VW 4
typedef float32x4_t vf;
#define VZERO() vdupq_n_f32(0.0f)
#define VLOAD(p) vld1q_f32(p)
#define VSET1(f) vdupq_n_f32(f)
#define VFMA(a, b, c) vfmaq_f32(c, a, b)
#define VADD(a, b) vaddq_f32(a, b)
#define VHSUM(v) vaddvq_f32(v)
#define VLOAD_BF16(p) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))
#define VLOAD_F16(p) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))

static inline __attribute__((always_inline)) void u8x16(uint8x16_t v, vf *q) {
    uint16x8_t a = vmovl_u8(vget_low_u8(v)), b = vmovl_u8(vget_high_u8(v));
    q[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a)));
    q[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(a)));
    q[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b)));
    q[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(b)));
}

static inline __attribute__((always_inline)) void Q4X(const uint8_t *p, vf *q) {
    uint8x16_t v = vld1q_u8(p);
    uint8x16_t lo = vandq_u8(v, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(v, 4);
    uint8x16x2_t z = vzipq_u8(lo, hi);
    u8x16(z.val[0], q);
    u8x16(z.val[1], q + 4);
}

static inline __attribute__((always_inline)) void Q8X(const uint8_t *p, vf *q) { u8x16(vld1q_u8(p), q); }

#define ROWS_FN fm__rows_neon
#define ROWS_CUSTOM
#include "backend/cpu/kern_tmpl.h"

/* ---- 4-bit affine with integer dot products --------------------------------------------
 * The digits of x (D = 2 or 3 per column, fm__xq_prep_ref, the pair layout of kern.h) and
 * fm__rows_digits_ref's arithmetic lane for lane: its 16 lanes are four 4-lane
 * accumulators. Per 16 weight bytes the low nibbles (even columns) and high nibbles (odd
 * columns) are multiplied with their digits by vmull_s8/vmlal_s8 (|sum| <= 2*15*128 per
 * 16-bit lane) and two pairwise additions give the exact int32 sum of the 8 columns of
 * each 4 bytes, combined per digit as (a.q << 8) + b.q (<< 8) + c.q. */

/* Lanes 0-3: exact sums of bytes 4l..4l+3 of lo*e + hi*o (16 bytes each). */
static inline __attribute__((always_inline)) int32x4_t dot16(uint8x16_t lo, uint8x16_t hi, const int8_t *e,
                                                             const int8_t *o) {
    int8x16_t ev = vld1q_s8(e), ov = vld1q_s8(o), l = vreinterpretq_s8_u8(lo), h = vreinterpretq_s8_u8(hi);
    int16x8_t a = vmlal_s8(vmull_s8(vget_low_s8(l), vget_low_s8(ev)), vget_low_s8(h), vget_low_s8(ov));
    int16x8_t b = vmlal_high_s8(vmull_high_s8(l, ev), h, ov);
    return vpaddq_s32(vpaddlq_s16(a), vpaddlq_s16(b));
}

/* t[0..1] (lanes 0-7 of a chunk): D digits dstep apart, most significant first. */
static inline __attribute__((always_inline)) void dot_chunk(const uint8x16_t *lo, const uint8x16_t *hi,
                                                            const int8_t *e, const int8_t *o, int64_t dstep,
                                                            const int D, int32x4_t *t) {
    for (int i = 0; i < 2; i++) {
        int32x4_t a = dot16(lo[i], hi[i], e + 16 * i, o + 16 * i);
        for (int d = 1; d < D; d++)
            a = vaddq_s32(vshlq_n_s32(a, 8), dot16(lo[i], hi[i], e + d * dstep + 16 * i, o + d * dstep + 16 * i));
        t[i] = a;
    }
}

static inline __attribute__((always_inline)) float hsum16(const float32x4_t *acc) {
    float32x4_t q = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
    float32x2_t r = vadd_f32(vget_low_f32(q), vget_high_f32(q));
    return vget_lane_f32(r, 0) + vget_lane_f32(r, 1);
}

static inline __attribute__((always_inline)) void q4i_row(const fm__mat *W, int64_t r, float *Y, int64_t ldy,
                                                          const fm__kargs *ka, int64_t b, const int G, const int D) {
    const int64_t C = W->cols, nc = C / 64, np = nc / 2, ng = C / G;
    const fm__dtype sdt = W->sdt;
    const void *scales = W->scales;
    const uint8_t *row = (const uint8_t *)W->data + r * (C / 2);
    const int8_t *xq = ka->xq + b * ka->ldxq;
    const float *xqs = ka->xqs + b * ka->ldxqs, *xs = ka->xs + b * ka->ldxs;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    for (int64_t p = 0; p < np; p++) {
        __builtin_prefetch(row + p * 64 + KPF);
        for (int h = 0; h < 2; h++) { /* chunk 2p + h: lanes 8h..8h+7 */
            uint8x16_t lo[2], hi[2];
            for (int i = 0; i < 2; i++) {
                uint8x16_t v = vld1q_u8(row + p * 64 + h * 32 + i * 16);
                lo[i] = vandq_u8(v, m4);
                hi[i] = vshrq_n_u8(v, 4);
            }
            int32x4_t t[2];
            const int8_t *x = xq + p * 128 * D + h * 32;
            dot_chunk(lo, hi, x, x + 64, 128, D, t);
            const float s = xqs[2 * p + h];
            const int64_t g = r * ng + (p * 128 + h * 64) / G;
            float s0 = fm__ld_scale(scales, sdt, g), s1 = G == 32 ? fm__ld_scale(scales, sdt, g + 1) : s0;
            acc[2 * h] = vfmaq_f32(acc[2 * h], vcvtq_f32_s32(t[0]), vdupq_n_f32(s0 * s));
            acc[2 * h + 1] = vfmaq_f32(acc[2 * h + 1], vcvtq_f32_s32(t[1]), vdupq_n_f32(s1 * s));
        }
    }
    if (nc & 1) { /* last chunk alone: even columns in lanes 0-7, odd in lanes 8-15 */
        const int64_t c = nc - 1;
        uint8x16_t lo[2], hi[2], z[2] = {vdupq_n_u8(0), vdupq_n_u8(0)};
        for (int i = 0; i < 2; i++) {
            uint8x16_t v = vld1q_u8(row + c * 32 + i * 16);
            lo[i] = vandq_u8(v, m4);
            hi[i] = vshrq_n_u8(v, 4);
        }
        const int8_t *x = xq + c * 64 * D;
        int32x4_t te[2], to[2];
        dot_chunk(lo, z, x, x, 64, D, te);
        dot_chunk(hi, z, x + 32, x + 32, 64, D, to);
        const float s = xqs[c];
        const int64_t g = r * ng + c * 64 / G;
        float s0 = fm__ld_scale(scales, sdt, g), s1 = G == 32 ? fm__ld_scale(scales, sdt, g + 1) : s0;
        acc[0] = vfmaq_f32(acc[0], vcvtq_f32_s32(te[0]), vdupq_n_f32(s0 * s));
        acc[1] = vfmaq_f32(acc[1], vcvtq_f32_s32(te[1]), vdupq_n_f32(s1 * s));
        acc[2] = vfmaq_f32(acc[2], vcvtq_f32_s32(to[0]), vdupq_n_f32(s0 * s));
        acc[3] = vfmaq_f32(acc[3], vcvtq_f32_s32(to[1]), vdupq_n_f32(s1 * s));
    }
    for (int64_t g0 = 0; g0 < ng; g0 += 16) { /* bias_g * xs_g into lane g mod 16 */
        float bb[16], xx[16];
        for (int i = 0; i < 16; i++) {
            bb[i] = g0 + i < ng ? fm__ld_scale(W->biases, sdt, r * ng + g0 + i) : 0.0f;
            xx[i] = g0 + i < ng ? xs[g0 + i] : 0.0f;
        }
        for (int i = 0; i < 4; i++) acc[i] = vfmaq_f32(acc[i], vld1q_f32(bb + 4 * i), vld1q_f32(xx + 4 * i));
    }
    Y[b * ldy + r] = hsum16(acc);
}

static inline __attribute__((always_inline)) void q4i_rows(const fm__mat *W, int64_t r0, int64_t r1, int64_t n,
                                                           float *Y, int64_t ldy, const fm__kargs *ka, const int G,
                                                           const int D) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t b = 0; b < n; b++) q4i_row(W, r, Y, ldy, ka, b, G, D);
}

FM_ROWS_DECL(fm__rows_neon) {
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
