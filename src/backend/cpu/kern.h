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
    const int8_t *xq;  /* X as three int8 digits per 64 columns (fm__xq_prep_*): affine */
    int64_t ldxq;      /*   weights on the avx512vnni path, 4-bit ones on the avx2 path */
    const float *xqs;  /* the scale of each 64-column chunk of xq */
    int64_t ldxqs;
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
#if defined(__x86_64__) || defined(__i386__)
FM_ROWS_DECL(fm__rows_avx2);
FM_ROWS_DECL(fm__rows_avx512);
FM_ROWS_DECL(fm__rows_avx512vnni);
/* Writes x[0..cols) (cols % 64 == 0) as xq: per 64-column chunk, 3 x 64 int8 digits
 * (a, b, c: x ~ (a*65536 + b*256 + c) * s, |m| <= 2^22; the columns of each digit in
 * the order even then odd for bits == 4, in order otherwise) and s[chunk] = 2^(e-22)
 * where 2^e bounds the chunk's |x|. */
void fm__xq_prep_avx512(const float *x, int64_t cols, int bits, int8_t *xq, float *s);
/* The same digits for the avx2 path (4 bits): each 32-column half of a chunk is stored as
 * its even columns then its odd columns. */
void fm__xq_prep_avx2(const float *x, int64_t cols, int bits, int8_t *xq, float *s);
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
