/* ops.c: CPU reference for the forward pass's non-matmul ops (see backend/ops.h). */
#include "backend/ops.h"
#include "common.h"

#include <math.h>

void fm__rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

void fm__rope(float *x, int32_t n_heads, int32_t head_dim, int32_t rot, const float *cos,
              const float *sin) {
    int32_t half = rot / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int32_t i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

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

void fm__silu_mul(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* 4 floats as one value (GCC/Clang vector extension: one SSE or NEON register on x86-64
 * and ARM64): element-wise arithmetic, unaligned loads through memcpy. */
typedef float fm__v4 __attribute__((vector_size(16)));
static inline void ld4(fm__v4 *v, const float *p) { __builtin_memcpy(v, p, sizeof *v); }
static inline void st4(float *p, const fm__v4 *v) { __builtin_memcpy(p, v, sizeof *v); }

/* q.k over n floats: 8 running lanes (lane l sums the columns = l mod 8 in order), the
 * remainder added to lane d mod 8, then ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7)). A fixed
 * order, the same on every path. */
static float dot8(const float *q, const float *k, int32_t n) {
    fm__v4 a0 = {0}, a1 = {0};
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        fm__v4 x0, y0, x1, y1;
        ld4(&x0, q + d);
        ld4(&y0, k + d);
        ld4(&x1, q + d + 4);
        ld4(&y1, k + d + 4);
        a0 += x0 * y0;
        a1 += x1 * y1;
    }
    float l[8]; /* the lanes (the accumulators themselves stay in registers) */
    st4(l, &a0);
    st4(l + 4, &a1);
    for (; d < n; d++) l[d & 7] += q[d] * k[d];
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

/* The scores q.k_j of 4 positions in lockstep (independent chains hide the add latency),
 * each with exactly dot8's arithmetic. */
static void dot8_x4(const float *q, const float *k0, const float *k1, const float *k2,
                    const float *k3, int32_t n, float *out) {
    fm__v4 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, c0 = {0}, c1 = {0}, d0 = {0}, d1 = {0};
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        fm__v4 x0, x1, y0, y1;
        ld4(&x0, q + d);
        ld4(&x1, q + d + 4);
        ld4(&y0, k0 + d); ld4(&y1, k0 + d + 4); a0 += x0 * y0; a1 += x1 * y1;
        ld4(&y0, k1 + d); ld4(&y1, k1 + d + 4); b0 += x0 * y0; b1 += x1 * y1;
        ld4(&y0, k2 + d); ld4(&y1, k2 + d + 4); c0 += x0 * y0; c1 += x1 * y1;
        ld4(&y0, k3 + d); ld4(&y1, k3 + d + 4); d0 += x0 * y0; d1 += x1 * y1;
    }
    const fm__v4 *acc[4][2] = {{&a0, &a1}, {&b0, &b1}, {&c0, &c1}, {&d0, &d1}};
    const float *ks[4] = {k0, k1, k2, k3};
    for (int r = 0; r < 4; r++) {
        float l[8];
        st4(l, acc[r][0]);
        st4(l + 4, acc[r][1]);
        for (int32_t e = d; e < n; e++) l[e & 7] += q[e] * ks[r][e];
        out[r] = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    }
}

/* out[d] = out[d] + sum_j p[j] * v_j[d] for j < nb in order (v_j at v + j*stride). */
static void acc_values(float *out, const float *p, const float *v, int64_t stride, int32_t nb,
                       int32_t n) {
    int32_t d = 0;
    for (; d + 32 <= n; d += 32) {
        fm__v4 a[8];
        for (int i = 0; i < 8; i++) ld4(&a[i], out + d + 4 * i);
        for (int32_t j = 0; j < nb; j++) {
            const float *vj = v + (int64_t)j * stride + d;
            float pj = p[j];
            for (int i = 0; i < 8; i++) {
                fm__v4 x;
                ld4(&x, vj + 4 * i);
                a[i] += pj * x;
            }
        }
        for (int i = 0; i < 8; i++) st4(out + d + 4 * i, &a[i]);
    }
    for (; d + 4 <= n; d += 4) {
        fm__v4 a;
        ld4(&a, out + d);
        for (int32_t j = 0; j < nb; j++) {
            fm__v4 x;
            ld4(&x, v + (int64_t)j * stride + d);
            a += p[j] * x;
        }
        st4(out + d, &a);
    }
    for (; d < n; d++) {
        float a = out[d];
        for (int32_t j = 0; j < nb; j++) a += p[j] * v[(int64_t)j * stride + d];
        out[d] = a;
    }
}

#define ATT_BLOCK 32 /* key positions per softmax block */
#define ATT_HEADS 8  /* query heads per pass */

/* Up to ATT_HEADS query heads over one key/value head. Per head, in blocks of ATT_BLOCK
 * positions from k0: the block's scores (dot8 * scale), the running maximum raised to the
 * block's (accumulator and sum rescaled by expf(old - new) once), p_j = expf(s_j - max)
 * added to the double sum and p_j * v_j to the output in position order. */
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
            for (j = 0; j < nb; j++) {
                sh[j] = expf(sh[j] - mx[h]);
                sum[h] += sh[j];
            }
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
