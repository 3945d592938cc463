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

#include <math.h>

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

/* ---- activation digits: the reference of the integer kernels (kern.h) ---------------- */

int64_t fm__xq_at(int bits, int D, int64_t cols, int64_t c, int k, int d) {
    int64_t nc = cols / 64;
    if (bits != 4) return c * 64 * D + d * 64 + k;
    if (c < (nc & ~(int64_t)1)) /* chunk of a pair */
        return (c >> 1) * 128 * D + d * 128 + (k & 1) * 64 + (c & 1) * 32 + k / 2;
    return c * 64 * D + d * 64 + (k & 1) * 32 + k / 2;
}

void fm__xq_prep_ref(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s) {
    const int D = digits == 2 ? 2 : 3, K = 8 * D - 2;
    for (int64_t c = 0; c < cols / 64; c++) {
        const float *p = x + c * 64;
        float amax = 0;
        int bad = 0;
        for (int k = 0; k < 64; k++) {
            if (isnan(p[k]) || isinf(p[k])) bad = 1;
            else if (fabsf(p[k]) > amax) amax = fabsf(p[k]);
        }
        int e = 0;
        if (amax > 0) frexpf(amax, &e);
        if (bad || amax == 0 || e < -100) {
            for (int k = 0; k < 64; k++)
                for (int d = 0; d < D; d++) xq[fm__xq_at(bits, D, cols, c, k, d)] = 0;
            s[c] = bad ? NAN : 0.0f;
            continue;
        }
        s[c] = ldexpf(1.0f, e - K);
        const float up = ldexpf(1.0f, K - e); /* a normal float: -100 <= e <= 128 */
        for (int k = 0; k < 64; k++) {
            int32_t m = (int32_t)lrintf(p[k] * up); /* exact scaling (a power of two), then round */
            int8_t dg[3];
            for (int d = D - 1; d > 0; d--) {
                int32_t lo = ((m + 128) & 255) - 128;
                dg[d] = (int8_t)lo;
                m = (m - lo) / 256;
            }
            dg[0] = (int8_t)m;
            for (int d = 0; d < D; d++) xq[fm__xq_at(bits, D, cols, c, k, d)] = dg[d];
        }
    }
}

/* m_j of column k of chunk c, from its digits. */
static int64_t xq_m(const int8_t *xq, int bits, int D, int64_t cols, int64_t c, int k) {
    int64_t m = 0;
    for (int d = 0; d < D; d++) m = m * 256 + xq[fm__xq_at(bits, D, cols, c, k, d)];
    return m;
}

/* The SIMD lane sum: lanes i and i+8, then i and i+4, then (0+2) + (1+3). */
static float hsum16(const float *a) {
    float h[8], q[4];
    for (int i = 0; i < 8; i++) h[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) q[i] = h[i] + h[i + 4];
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* acc_l += bias_g * xs_g for g = l, l + 16, ... (zero products past ng included). */
static void bias_lanes(const fm__mat *W, int64_t r, const float *xs, float *acc) {
    int64_t ng = W->cols / W->group;
    for (int64_t g0 = 0; g0 < ng; g0 += 16)
        for (int i = 0; i < 16; i++) {
            int64_t g = g0 + i;
            float b = g < ng ? fm__ld_scale(W->biases, W->sdt, r * ng + g) : 0.0f, x = g < ng ? xs[g] : 0.0f;
            acc[i] = fmaf(b, x, acc[i]);
        }
}

/* Exact int32 dot product of n columns k0, k0 + step, ... of chunk c with their m (what
 * the digit-by-digit vpdpbusd sums give), for the weights of row `row`. */
static int32_t lane_dot(const uint32_t *row, int bits, int D, int64_t cols, const int8_t *xq, int64_t c,
                        int k0, int step, int n) {
    int64_t t = 0;
    for (int i = 0; i < n; i++) {
        int k = k0 + i * step;
        t += (int64_t)qget(row, bits, c * 64 + k) * xq_m(xq, bits, D, cols, c, k);
    }
    return (int32_t)t;
}

/* One step of lane l: acc_l = fma((float)t_l, scale_g * s_c, acc_l), g the lane's group. */
static void lane_step(const fm__mat *W, int64_t r, int64_t c, int k0, int32_t t, const float *xqs, float *acc) {
    int64_t ng = W->cols / W->group;
    float sc = fm__ld_scale(W->scales, W->sdt, r * ng + (c * 64 + k0) / W->group);
    *acc = fmaf((float)t, sc * xqs[c], *acc);
}

FM_ROWS_DECL(fm__rows_digits_ref) {
    (void)X; (void)ldx;
    const int D = ka->digits == 2 ? 2 : 3, bits = W->bits;
    const int64_t C = W->cols, nc = C / 64;
    for (int64_t b = 0; b < n; b++) {
        const int8_t *xq = ka->xq + b * ka->ldxq;
        const float *xqs = ka->xqs + b * ka->ldxqs, *xs = ka->xs + b * ka->ldxs;
        for (int64_t r = r0; r < r1; r++) {
            const uint32_t *row = row_ptr(W, r);
            float acc[16] = {0};
            if (bits == 4) {
                /* pairs: lane l < 8 columns 8l..8l+7 of chunk 2p, lane 8 + l those of 2p + 1 */
                for (int64_t p = 0; p < nc / 2; p++)
                    for (int l = 0; l < 16; l++) {
                        int64_t c = 2 * p + l / 8;
                        int k0 = 8 * (l % 8);
                        lane_step(W, r, c, k0, lane_dot(row, 4, D, C, xq, c, k0, 1, 8), xqs, &acc[l]);
                    }
                if (nc & 1) /* unpaired last chunk: lane l < 8 its even columns of 8l..8l+7, 8 + l the odd */
                    for (int l = 0; l < 16; l++) {
                        int k0 = 8 * (l % 8) + l / 8;
                        lane_step(W, r, nc - 1, k0, lane_dot(row, 4, D, C, xq, nc - 1, k0, 2, 4), xqs, &acc[l]);
                    }
                bias_lanes(W, r, xs, acc);
                Y[b * ldy + r] = hsum16(acc);
            } else {
                /* lane l: columns 4l..4l+3 of each chunk */
                for (int64_t c = 0; c < nc; c++)
                    for (int l = 0; l < 16; l++) {
                        if (bits == 8 && D == 3) { /* the top digit apart: (a.q) * 2^16 + (b.q << 8) + c.q */
                            int64_t th = 0, tl = 0;
                            for (int k = 4 * l; k < 4 * l + 4; k++) {
                                int64_t q = qget(row, 8, c * 64 + k);
                                th += q * xq[fm__xq_at(8, 3, C, c, k, 0)];
                                tl += q * (xq[fm__xq_at(8, 3, C, c, k, 1)] * 256 + xq[fm__xq_at(8, 3, C, c, k, 2)]);
                            }
                            float f = fmaf((float)(int32_t)th, 65536.0f, (float)(int32_t)tl);
                            int64_t ng = C / W->group;
                            float sc = fm__ld_scale(W->scales, W->sdt, r * ng + (c * 64 + 4 * l) / W->group);
                            acc[l] = fmaf(f, sc * xqs[c], acc[l]);
                        } else {
                            lane_step(W, r, c, 4 * l, lane_dot(row, bits, D, C, xq, c, 4 * l, 1, 4), xqs, &acc[l]);
                        }
                    }
                float bz[16] = {0};
                bias_lanes(W, r, xs, bz);
                Y[b * ldy + r] = hsum16(acc) + hsum16(bz);
            }
        }
    }
}
