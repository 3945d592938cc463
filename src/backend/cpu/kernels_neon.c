/* kernels_neon.c: the ARM64 NEON kernel path, 4 lanes (AdvSIMD is part of the ARMv8-A
 * baseline). Compiled only for aarch64 (Makefile). The kernels are in kern_tmpl.h. */
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
#include "backend/cpu/kern_tmpl.h"
