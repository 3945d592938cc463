/* ops.c: CPU reference for the forward pass's non-matmul ops (see backend/ops.h). */
#include "backend/ops.h"
#include "common.h"

#include <math.h>

void fm__softmax(float *x, int64_t n) {
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}


/* 8 floats as one value (GCC/Clang vector extension: one AVX register, or two SSE or NEON
 * registers): element-wise arithmetic, unaligned loads through memcpy. Element-wise IEEE
 * operations (ISO C mode does not contract a * b + c), so every ISA gives the same bits. */
typedef float fm__v8 __attribute__((vector_size(32)));
#define FM_INLINE static inline __attribute__((always_inline))
FM_INLINE void ld8(fm__v8 *v, const float *p) { __builtin_memcpy(v, p, sizeof *v); }
FM_INLINE void st8(float *p, const fm__v8 *v) { __builtin_memcpy(p, v, sizeof *v); }

/* The attention loops are compiled for AVX-512 and AVX2 besides the baseline (chosen at
 * load through an ifunc): the same source, so the same bits, in fewer instructions. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define FM_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FM_CLONES
#endif

typedef float fm__v4 __attribute__((vector_size(16)));
typedef double fm__v4d __attribute__((vector_size(32)));

/* The sum of squares in double, in 8 running lanes (lane l sums the squares of x[i], i = l
 * mod 8, in order; each square is exact in double), the remainder added to lane i mod 8,
 * then ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7)): a fixed order, the same bits on every path, and
 * 8 add chains instead of one (a 2048-float norm took ~3 us as one chain). */
FM_CLONES
void fm__rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    fm__v4d a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        fm__v4 lo, hi;
        __builtin_memcpy(&lo, x + i, sizeof lo);
        __builtin_memcpy(&hi, x + i + 4, sizeof hi);
        const fm__v4d dl = __builtin_convertvector(lo, fm__v4d), dh = __builtin_convertvector(hi, fm__v4d);
        a += dl * dl;
        b += dh * dh;
    }
    double l[8];
    __builtin_memcpy(l, &a, sizeof a);
    __builtin_memcpy(l + 4, &b, sizeof b);
    for (; i < n; i++) l[i & 7] += (double)x[i] * x[i];
    const double ss = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    const float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    i = 0;
    for (; i + 8 <= n; i += 8) { /* element-wise: the scalar tail's bits */
        fm__v8 v, g;
        ld8(&v, x + i);
        ld8(&g, w + i);
        v = g * (v * r);
        st8(out + i, &v);
    }
    for (; i < n; i++) out[i] = w[i] * (x[i] * r);
}

FM_CLONES
void fm__rope(float *x, int32_t n_heads, int32_t head_dim, int32_t rot, const float *cos,
              const float *sin) {
    const int32_t half = rot / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        int32_t i = 0;
        for (; i + 8 <= half; i += 8) { /* element-wise: the scalar tail's bits */
            fm__v8 a, b, c, s;
            ld8(&a, v + i);
            ld8(&b, v + i + half);
            ld8(&c, cos + i);
            ld8(&s, sin + i);
            const fm__v8 ra = a * c - b * s, rb = b * c + a * s;
            st8(v + i, &ra);
            st8(v + i + half, &rb);
        }
        for (; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

FM_CLONES
void fm__axpy(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        fm__v8 u, v;
        ld8(&u, y + i);
        ld8(&v, x + i);
        u += a * v;
        st8(y + i, &u);
    }
    for (; i < n; i++) y[i] += a * x[i];
}

/* q.k over n floats: 8 running lanes (lane l sums the columns = l mod 8 in order), the
 * remainder added to lane d mod 8, then ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7)). A fixed
 * order, the same on every path. */
FM_INLINE float lanes_sum(const fm__v8 *a, const float *q, const float *k, int32_t d, int32_t n) {
    float l[8];
    st8(l, a);
    for (; d < n; d++) l[d & 7] += q[d] * k[d];
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

FM_INLINE float dot8(const float *q, const float *k, int32_t n) {
    fm__v8 a = {0};
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        fm__v8 x, y;
        ld8(&x, q + d);
        ld8(&y, k + d);
        a += x * y;
    }
    return lanes_sum(&a, q, k, d, n);
}

/* The scores q.k_j of 4 positions in lockstep (independent chains hide the add latency),
 * each with exactly dot8's arithmetic. */
FM_INLINE void dot8_x4(const float *q, const float *k0, const float *k1, const float *k2,
                       const float *k3, int32_t n, float *out) {
    fm__v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        fm__v8 x, y;
        ld8(&x, q + d);
        ld8(&y, k0 + d); a0 += x * y;
        ld8(&y, k1 + d); a1 += x * y;
        ld8(&y, k2 + d); a2 += x * y;
        ld8(&y, k3 + d); a3 += x * y;
    }
    out[0] = lanes_sum(&a0, q, k0, d, n);
    out[1] = lanes_sum(&a1, q, k1, d, n);
    out[2] = lanes_sum(&a2, q, k2, d, n);
    out[3] = lanes_sum(&a3, q, k3, d, n);
}

/* dot8_x4 for 8 positions k + i * stride (more chains in flight). */
FM_INLINE void dot8_x8(const float *q, const float *k, int64_t stride, int32_t n, float *out) {
    fm__v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    const float *k0 = k, *k1 = k + stride, *k2 = k + 2 * stride, *k3 = k + 3 * stride;
    const float *k4 = k + 4 * stride, *k5 = k + 5 * stride, *k6 = k + 6 * stride, *k7 = k + 7 * stride;
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        fm__v8 x, y;
        ld8(&x, q + d);
        ld8(&y, k0 + d); a0 += x * y;
        ld8(&y, k1 + d); a1 += x * y;
        ld8(&y, k2 + d); a2 += x * y;
        ld8(&y, k3 + d); a3 += x * y;
        ld8(&y, k4 + d); a4 += x * y;
        ld8(&y, k5 + d); a5 += x * y;
        ld8(&y, k6 + d); a6 += x * y;
        ld8(&y, k7 + d); a7 += x * y;
    }
    out[0] = lanes_sum(&a0, q, k0, d, n);
    out[1] = lanes_sum(&a1, q, k1, d, n);
    out[2] = lanes_sum(&a2, q, k2, d, n);
    out[3] = lanes_sum(&a3, q, k3, d, n);
    out[4] = lanes_sum(&a4, q, k4, d, n);
    out[5] = lanes_sum(&a5, q, k5, d, n);
    out[6] = lanes_sum(&a6, q, k6, d, n);
    out[7] = lanes_sum(&a7, q, k7, d, n);
}

/* out[d] = out[d] + sum_j p[j] * v_j[d] for j < nb in order (v_j at v + j*stride). */
FM_INLINE void acc_values(float *out, const float *p, const float *v, int64_t stride, int32_t nb,
                          int32_t n) {
    int32_t d = 0;
    for (; d + 64 <= n; d += 64) { /* 64 accumulators in registers: eight add chains of 8
                                     * lanes (a 64-byte vector type is split through memory
                                     * by GCC's AVX2 clone: 10x slower) */
        fm__v8 a[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) ld8(&a[i], out + d + 8 * i);
        for (int32_t j = 0; j < nb; j++) {
            const float *vj = v + (int64_t)j * stride + d;
            const float pj = p[j];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                fm__v8 x;
                ld8(&x, vj + 8 * i);
                a[i] += pj * x;
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) st8(out + d + 8 * i, &a[i]);
    }
    for (; d + 8 <= n; d += 8) {
        fm__v8 a;
        ld8(&a, out + d);
        for (int32_t j = 0; j < nb; j++) {
            fm__v8 x;
            ld8(&x, v + (int64_t)j * stride + d);
            a += p[j] * x;
        }
        st8(out + d, &a);
    }
    for (; d < n; d++) {
        float a = out[d];
        for (int32_t j = 0; j < nb; j++) a += p[j] * v[(int64_t)j * stride + d];
        out[d] = a;
    }
}

typedef int32_t fm__v8i __attribute__((vector_size(32)));

/* e^x element-wise (NaN excluded), in float arithmetic only (so the same bits on every
 * ISA): x = n ln2 + r with n = round(x / ln2) (Cody-Waite, two constants), e^r by Cephes
 * expf's polynomial on |r| <= ln2/2, times 2^n through the exponent bits; 0 below -87
 * (e^-87 = 1.6e-38, next to the normal range), x above 88 taken as 88 (e^88 = 1.7e38).
 * Within 1 ulp of glibc expf on [-87, 0] (every 64th float checked). */
FM_INLINE void exp_v8(fm__v8 *px) {
    const fm__v8 hi = {88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f};
    fm__v8 x = *px;
    fm__v8i over = x > hi, xh, hb;
    __builtin_memcpy(&xh, &x, sizeof xh);
    __builtin_memcpy(&hb, &hi, sizeof hb);
    xh = (xh & ~over) | (hb & over);
    __builtin_memcpy(&x, &xh, sizeof x);
    const fm__v8 lo = {-87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f};
    fm__v8i keep = x >= lo; /* all ones where x >= -87 */
    fm__v8i xb, lob;
    __builtin_memcpy(&xb, &x, sizeof xb);
    __builtin_memcpy(&lob, &lo, sizeof lob);
    xb = (xb & keep) | (lob & ~keep);
    __builtin_memcpy(&x, &xb, sizeof x);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    fm__v8 t = x * 1.44269504088896341f + magic;
    fm__v8 fn = t - magic;
    fm__v8i n;
    __builtin_memcpy(&n, &t, sizeof n);
    n -= 0x4B400000; /* the bits of magic: n = round(x / ln2) */
    fm__v8 r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    fm__v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    fm__v8 y = p * (r * r) + r + 1.0f;
    fm__v8i yb;
    __builtin_memcpy(&yb, &y, sizeof yb); /* y * 2^n */
    yb = (yb + (n << 23)) & keep;
    __builtin_memcpy(px, &yb, sizeof yb);
}

/* g[i] = g[i] / (1 + e^-g[i]) * u[i], 8 at a time with exp_v8 (the last chunk padded). */
FM_INLINE void silu8(float *g, const float *u) {
    fm__v8 x, y, e;
    ld8(&x, g);
    ld8(&y, u);
    e = -x;
    exp_v8(&e);
    x = x / (1.0f + e) * y;
    st8(g, &x);
}

FM_CLONES
void fm__silu_mul(float *g, const float *u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) silu8(g + i, u + i);
    if (i < n) {
        float gb[8] = {0}, ub[8] = {0};
        for (int64_t j = i; j < n; j++) { gb[j - i] = g[j]; ub[j - i] = u[j]; }
        silu8(gb, ub);
        for (int64_t j = i; j < n; j++) g[j] = gb[j - i];
    }
}

#define ATT_BLOCK 32 /* key positions per softmax block */
#define ATT_HEADS 8  /* query heads per pass */

/* Up to ATT_HEADS query heads over one key/value head. Per head, in blocks of ATT_BLOCK
 * positions from k0: the block's scores (dot8 * scale), the running maximum raised to the
 * block's (accumulator and sum rescaled by expf(old - new) once), p_j = expf(s_j - max)
 * added to the double sum and p_j * v_j to the output in position order. */
FM_CLONES
static void attend_pass(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                        int32_t nq, const float *k, const float *v, int64_t kv_stride, int32_t k0,
                        int32_t k1, int32_t head_dim, float scale) {
    float s[ATT_HEADS][ATT_BLOCK], mx[ATT_HEADS];
    double sum[ATT_HEADS];
    for (int32_t h = 0; h < nq; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0;
        float *o = out + h * out_stride;
        for (int32_t d = 0; d < head_dim; d++) o[d] = 0;
    }
    for (int32_t j0 = k0; j0 < k1; j0 += ATT_BLOCK) {
        int32_t nb = FM_MIN(ATT_BLOCK, k1 - j0);
        const float *kb = k + (int64_t)j0 * kv_stride, *vb = v + (int64_t)j0 * kv_stride;
        for (int32_t h = 0; h < nq; h++) {
            const float *qh = q + h * q_stride;
            float *sh = s[h];
            int32_t j = 0;
            for (; j + 8 <= nb; j += 8) dot8_x8(qh, kb + j * kv_stride, kv_stride, head_dim, sh + j);
            for (; j + 4 <= nb; j += 4)
                dot8_x4(qh, kb + j * kv_stride, kb + (j + 1) * kv_stride, kb + (j + 2) * kv_stride,
                        kb + (j + 3) * kv_stride, head_dim, sh + j);
            for (; j < nb; j++) sh[j] = dot8(qh, kb + j * kv_stride, head_dim);
            float bm = -INFINITY;
            for (j = 0; j < nb; j++) {
                sh[j] *= scale;
                bm = sh[j] > bm ? sh[j] : bm;
            }
            if (bm > mx[h]) { /* rescale what was accumulated under the old maximum */
                if (j0 > k0) {
                    float c = expf(mx[h] - bm);
                    float *o = out + h * out_stride;
                    sum[h] *= c;
                    for (int32_t d = 0; d < head_dim; d++) o[d] *= c;
                }
                mx[h] = bm;
            }
            for (j = nb; j < ATT_BLOCK; j++) sh[j] = mx[h]; /* padding, not summed */
            for (j = 0; j < ATT_BLOCK; j += 8) {
                fm__v8 x;
                ld8(&x, sh + j);
                x -= mx[h];
                exp_v8(&x);
                st8(sh + j, &x);
            }
            for (j = 0; j < nb; j++) sum[h] += sh[j];
            acc_values(out + h * out_stride, sh, vb, kv_stride, nb, head_dim);
        }
    }
    for (int32_t h = 0; h < nq; h++) {
        float inv = sum[h] > 0 ? (float)(1.0 / sum[h]) : 0.0f;
        float *o = out + h * out_stride;
        for (int32_t d = 0; d < head_dim; d++) o[d] *= inv;
    }
}

void fm__attend_heads(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                      int32_t n_q, const float *k, const float *v, int64_t kv_stride, int32_t k0,
                      int32_t k1, int32_t head_dim, float scale) {
    for (int32_t h = 0; h < n_q; h += ATT_HEADS)
        attend_pass(out + h * out_stride, out_stride, q + h * q_stride, q_stride,
                    FM_MIN(ATT_HEADS, n_q - h), k, v, kv_stride, k0, k1, head_dim, scale);
}

void fm__attend(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                int32_t k0, int32_t k1, int32_t head_dim, float scale) {
    attend_pass(out, 0, q, 0, 1, k, v, kv_stride, k0, k1, head_dim, scale);
}
