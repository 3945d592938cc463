/* kern.h: what the CPU kernel paths (scalar reference, AVX2, AVX-512, NEON) share inside
 * src/backend/cpu/. Each path provides one row-range function with the contract below;
 * dispatch.c picks the path at run time and spreads rows over the thread pool. */
#ifndef FM_CPU_KERN_H
#define FM_CPU_KERN_H

#include "backend/backend.h"
#include <stdint.h>

/* Per-call preparations of X that some kernels read (made by dispatch.c, row b of each
 * at base + b*ld). Fields a path does not use are NULL. */
typedef struct fm__kargs {
    const float *xs;   /* group sums of X (fm__xsum): FM_W_QAFFINE on the SIMD paths */
    int64_t ldxs;
    const int8_t *xq;  /* X as int8 digits per 64 columns (fm__xq_prep_*): affine weights */
    int64_t ldxq;      /*   on the avx512vnni path, 4-bit ones on the avx2 and neon paths */
    const float *xqs;  /* the scale of each 64-column chunk of xq */
    int64_t ldxqs;
    int digits;        /* digits per activation in xq: 3 (23-bit) or 2 (15-bit fixed point) */
} fm__kargs;

/* Computes Y[b*ldy + r] = sum_c W[r][c] * X[b*ldx + c] for r in [r0, r1), b in [0, n).
 * Each (r, b) result depends only on row r and X row b, never on n, r0/r1 or the thread
 * that runs it. No allocation. */
typedef void (*fm__rows_fn)(const fm__mat *W, int64_t r0, int64_t r1, const float *X,
                            int64_t ldx, int64_t n, float *Y, int64_t ldy, const fm__kargs *ka);

#define FM_ROWS_DECL(name)                                                                     \
    void name(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx, int64_t n, \
              float *Y, int64_t ldy, const fm__kargs *ka)
FM_ROWS_DECL(fm__rows_scalar);

/* Software prefetch distance of a kernel that reads a block of consecutive weight rows
 * side by side, 64 bytes of each row per step, and prefetches row_k + step*64 + dist: the
 * smallest multiple of the block's bytes that is at least `ahead`, so that the target is
 * the same place in the same row of a block further on. A fixed distance below the
 * block's size instead lands in rows the block is reading now (8192 columns of 4 bits, 2
 * rows: 20-21 -> 24-26 GB/s Q4 matvec on the Zen 3 VM when fixed). Call it once per
 * call, not per block (it divides). */
static inline int64_t fm__pf_dist(int64_t ahead, int64_t block_bytes) {
    return block_bytes > 0 ? (ahead + block_bytes - 1) / block_bytes * block_bytes : ahead;
}

/* ---- activation digits (the integer affine kernels) ----------------------------------
 * fm__xq_prep_* write x[0..cols) (cols % 64 == 0) once per call as D = `digits` (2 or 3)
 * int8 digits per column and one scale per 64-column chunk c: with K = 8*D - 2 (22 or
 * 14) and 2^e the smallest power of two above the chunk's largest |x| (frexpf),
 *   m_j = rint(x_j * 2^(K-e)),  |m_j| <= 2^K,  s[c] = 2^(e-K),  x_j ~ m_j * s[c]
 * (so |x_j - m_j s[c]| <= 2^(e-K-1): 2^-23 or 2^-15 of 2^e), m_j split into digits
 * most significant first, each but the first in [-128, 127]:
 *   D = 3: m = (a*256 + b)*256 + c;  D = 2: m = a*256 + b.
 * A chunk with a NaN or Inf has zero digits and s = NaN; a chunk of zeros, or with
 * e < -100, zero digits and s = 0.
 * Layout of one row (FM_XQ_BYTES(cols, D) bytes, chunk c at c*64*D): for bits != 4 digit
 * d of column k of chunk c at c*64*D + d*64 + k. For bits == 4 the chunks go in pairs
 * (2p, 2p+1) matching one 64-byte load of packed weights (low nibbles = even columns):
 * digit d of the pair at p*128*D + d*128: [even columns of 2p][even of 2p+1][odd of 2p]
 * [odd of 2p+1], 32 bytes each; a last unpaired chunk at c*64*D + d*64: [even][odd].
 *
 * The kernels then compute, per output, exactly what fm__rows_digits_ref does: 16 float
 * lanes, lane l taking the exact int32 dot product sum q_j m_j over a fixed set of 8 (Q4)
 * or 4 (other bits) columns of one chunk per step, converted to float and accumulated
 * as acc_l = fma(t_l, scale_g * s[c], acc_l) (8 bits with 3 digits: the top digit's sum
 * apart, t_l = fma((float)(a.q), 2^16, (float)((b.q << 8) + c.q))), then the bias terms
 * sum_g bias_g * xsum_g in lane g mod 16 and a fixed lane-sum tree; so every path that
 * implements them gives the same bits. */
#define FM_XQ_BYTES(cols, D) ((cols) * (D))
int64_t fm__xq_at(int bits, int D, int64_t cols, int64_t c, int k, int d);
void fm__xq_prep_ref(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s);
FM_ROWS_DECL(fm__rows_digits_ref); /* needs ka->xs, xq, xqs (from fm__xq_prep_ref), digits */

/* Activation digits of the integer kernels from now on: 2 or 3 (the default, or
 * $FM_ACT_DIGITS at the first call). Returns the previous value; other values change
 * nothing. Not to be called while a matmul runs. */
int fm__kern_set_act_digits(int digits);

#if defined(__x86_64__) || defined(__i386__)
FM_ROWS_DECL(fm__rows_avx2);
FM_ROWS_DECL(fm__rows_avx512);
FM_ROWS_DECL(fm__rows_avx512vnni);
/* fm__xq_prep_ref's digits and scales, bitwise. */
void fm__xq_prep_avx512(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s);
void fm__xq_prep_avx2(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s);
#endif
#if defined(__aarch64__)
FM_ROWS_DECL(fm__rows_neon);
#endif

/* Largest groups-per-row the SIMD quantized paths take (cols/group); wider matrices use the
 * scalar reference. */
#define FM_XSUM_MAX 8192

/* xs[g] = sum of x[g*group .. (g+1)*group) in float, in a fixed order (all SIMD paths). */
void fm__xsum(const float *x, int64_t cols, int32_t group, float *xs);

/* Unpacks the `count` quantized integers starting at element j0 of a packed MLX row
 * (bits in 2..8) into out[] as floats (q, not scale*q+bias). j0*bits must be a multiple
 * of 32. */
void fm__qunpack(const uint32_t *row, int32_t bits, int64_t j0, int count, float *out);

/* Scale or bias number i of an array of dtype dt (BF16, F16 or F32). */
static inline float fm__ld_scale(const void *base, fm__dtype dt, int64_t i) {
    switch (dt) {
    case FM_DT_BF16: return fm__bf16_to_f32(((const uint16_t *)base)[i]);
    case FM_DT_F16: return fm__f16_to_f32(((const uint16_t *)base)[i]);
    default: return ((const float *)base)[i];
    }
}

#endif
