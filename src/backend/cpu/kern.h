/* kern.h: what the CPU kernel paths (scalar reference, AVX2, AVX-512, NEON) share inside
 * src/backend/cpu/. Each path provides one row-range function with the contract below;
 * dispatch.c picks the path at run time and spreads rows over the thread pool. */
#ifndef FM_CPU_KERN_H
#define FM_CPU_KERN_H

#include "backend/backend.h"
#include <stdint.h>

/* Computes Y[b*ldy + r] = sum_c W[r][c] * X[b*ldx + c] for r in [r0, r1), b in [0, n).
 * xs: for FM_W_QAFFINE on SIMD paths, the group sums of X made by fm__xsum (row b at
 * xs + b*ldxs); NULL elsewhere. Each (r, b) result depends only on row r and X row b,
 * never on n, r0/r1 or the thread that runs it. No allocation. */
typedef void (*fm__rows_fn)(const fm__mat *W, int64_t r0, int64_t r1, const float *X,
                            int64_t ldx, int64_t n, float *Y, int64_t ldy, const float *xs,
                            int64_t ldxs);

void fm__rows_scalar(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx,
                     int64_t n, float *Y, int64_t ldy, const float *xs, int64_t ldxs);
#if defined(__x86_64__) || defined(__i386__)
void fm__rows_avx2(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx,
                   int64_t n, float *Y, int64_t ldy, const float *xs, int64_t ldxs);
void fm__rows_avx512(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx,
                     int64_t n, float *Y, int64_t ldy, const float *xs, int64_t ldxs);
#endif
#if defined(__aarch64__)
void fm__rows_neon(const fm__mat *W, int64_t r0, int64_t r1, const float *X, int64_t ldx,
                   int64_t n, float *Y, int64_t ldy, const float *xs, int64_t ldxs);
#endif

/* Largest groups-per-row the SIMD quantized paths take (cols/group); wider matrices use the
 * scalar reference. */
#define FM_XSUM_MAX 8192

/* xs[g] = sum of x[g*group .. (g+1)*group) in float, in index order (all SIMD paths). */
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
