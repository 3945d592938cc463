/* ref.c: the scalar reference kernels. They define the numerics every SIMD path must
 * reproduce (within rounding): each weight is dequantized exactly as MLX does
 * (w = scale * q + bias, in float) and each dot product is accumulated in double, in
 * column order. Also the embedding row lookup (fm__mat_row) and the helpers the SIMD
 * paths share (fm__qunpack, fm__xsum).
 *
 * MLX affine packing (ml-explore/mlx, mlx/backend/cpu/quantized.cpp: get_pack_factor,
 * get_bytes_per_pack, extract_bits and _qmm_t): a row of K values is stored as bytes;
 * for bits 2, 4 and 8 byte k holds values k*(8/bits) .. with the first value in the
 * lowest bits; for bits 3 and 5 each 3 or 5 bytes hold 8 values and for bits 6 each
 * 3 bytes hold 4 values, again lowest bits first and spilling into the next byte.
 * Both cases are one little-endian bit stream: value j occupies bits [j*bits,
 * (j+1)*bits) of the row's bytes, which on little-endian hosts is bit (j*bits & 31) of
 * uint32 word j*bits/32. Each group of `group` consecutive values has one scale and one
 * bias (scales/biases [rows][cols/group]). */
#include "backend/cpu/kern.h"
#include "common.h"

/* Integer value j of a packed row (bits in 2..8). */
static inline uint32_t qget(const uint32_t *w, int32_t bits, int64_t j) {
    uint64_t bit = (uint64_t)j * (uint64_t)bits;
    uint64_t word = bit >> 5, sh = bit & 31;
    uint64_t v = w[word] >> sh;
    if (sh + (uint64_t)bits > 32) v |= (uint64_t)w[word + 1] << (32 - sh);
    return (uint32_t)v & ((1u << bits) - 1);
}

/* 8 values of `bits` bits from `bits` bytes (MLX's packs are whole bytes: 8 values per
 * 2/3/4/5/6/8 bytes, lowest bits first). */
static inline __attribute__((always_inline)) void unpack8(const uint8_t *p, const int bits, float *out) {
    uint64_t v = 0;
    for (int i = 0; i < bits; i++) v |= (uint64_t)p[i] << (8 * i);
    for (int i = 0; i < 8; i++) out[i] = (float)((v >> (i * bits)) & ((1u << bits) - 1));
}

static inline __attribute__((always_inline)) void unpack_n(const uint8_t *p, const int bits, int count, float *out) {
    for (int k = 0; k + 8 <= count; k += 8, p += bits) unpack8(p, bits, out + k);
}

void fm__qunpack(const uint32_t *row, int32_t bits, int64_t j0, int count, float *out) {
    const uint8_t *p = (const uint8_t *)row + j0 * bits / 8;
    int n8 = count & ~7;
    switch (bits) {
    case 2: unpack_n(p, 2, n8, out); break;
    case 3: unpack_n(p, 3, n8, out); break;
    case 4: unpack_n(p, 4, n8, out); break;
    case 5: unpack_n(p, 5, n8, out); break;
    case 6: unpack_n(p, 6, n8, out); break;
    case 8: unpack_n(p, 8, n8, out); break;
    default: n8 = 0; break;
    }
    for (int k = n8; k < count; k++) out[k] = (float)qget(row, bits, j0 + k);
}

void fm__xsum(const float *x, int64_t cols, int32_t group, float *xs) {
    int64_t ng = cols / group;
    for (int64_t g = 0; g < ng; g++) {
        const float *p = x + g * group;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* 8 interleaved partial sums (group % 8 == 0) */
        int32_t k = 0;
        for (; k + 8 <= group; k += 8)
            for (int i = 0; i < 8; i++) s[i] += p[k + i];
        float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (; k < group; k++) t += p[k];
        xs[g] = t;
    }
}

/* Element j of row r as float, the reference dequantization. */
static inline float ref_elem(const fm__mat *W, const void *row, int64_t r, int64_t j) {
    switch (W->type) {
    case FM_W_F32: return ((const float *)row)[j];
    case FM_W_BF16: return fm__bf16_to_f32(((const uint16_t *)row)[j]);
    case FM_W_F16: return fm__f16_to_f32(((const uint16_t *)row)[j]);
    case FM_W_QAFFINE: {
        int64_t g = r * (W->cols / W->group) + j / W->group;
        float q = (float)qget((const uint32_t *)row, W->bits, j);
        return fm__ld_scale(W->scales, W->sdt, g) * q + fm__ld_scale(W->biases, W->sdt, g);
    }
    }
    return 0;
}

static const void *row_ptr(const fm__mat *W, int64_t r) {
    switch (W->type) {
    case FM_W_F32: return (const float *)W->data + r * W->cols;
    case FM_W_BF16: case FM_W_F16: return (const uint16_t *)W->data + r * W->cols;
    case FM_W_QAFFINE: return (const uint32_t *)W->data + r * (W->cols * W->bits / 32);
    }
    return NULL;
}

void fm__mat_row(const fm__mat *W, int64_t r, float *out) {
    const void *row = row_ptr(W, r);
    for (int64_t j = 0; j < W->cols; j++) out[j] = ref_elem(W, row, r, j);
}

#define REF_NB 8 /* batch rows sharing one pass over a weight row */

FM_ROWS_DECL(fm__rows_scalar) {
    (void)ka;
    for (int64_t r = r0; r < r1; r++) {
        const void *row = row_ptr(W, r);
        for (int64_t b0 = 0; b0 < n; b0 += REF_NB) {
            int nb = (int)FM_MIN((int64_t)REF_NB, n - b0);
            double acc[REF_NB] = {0};
            for (int64_t j = 0; j < W->cols; j++) {
                double w = (double)ref_elem(W, row, r, j);
                for (int b = 0; b < nb; b++) acc[b] += w * (double)X[(b0 + b) * ldx + j];
            }
            for (int b = 0; b < nb; b++) Y[(b0 + b) * ldy + r] = (float)acc[b];
        }
    }
}
