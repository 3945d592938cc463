/* ops.c: CPU reference for the forward pass's non-matmul ops (see backend/ops.h). */
#include "backend/ops.h"

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

/* out[d] = out[d] * c + p * v[d] (c == 1 skips the multiply); element-wise, so the same
 * bits as the scalar loop. */
static void scale_axpy(float *out, float c, float p, const float *v, int32_t n) {
    int32_t d = 0;
    if (c != 1.0f) {
        for (; d + 4 <= n; d += 4) {
            fm__v4 o;
            ld4(&o, out + d);
            o *= c;
            st4(out + d, &o);
        }
        for (; d < n; d++) out[d] *= c;
        d = 0;
    }
    for (; d + 4 <= n; d += 4) {
        fm__v4 o, x;
        ld4(&o, out + d);
        ld4(&x, v + d);
        o += p * x;
        st4(out + d, &o);
    }
    for (; d < n; d++) out[d] += p * v[d];
}

void fm__attend(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                int32_t k0, int32_t k1, int32_t head_dim, float scale) {
    float mx = -INFINITY;
    double sum = 0;
    for (int32_t d = 0; d < head_dim; d++) out[d] = 0;
    for (int32_t j = k0; j < k1; j++) {
        const float *kj = k + (int64_t)j * kv_stride;
        const float *vj = v + (int64_t)j * kv_stride;
        float s = dot8(q, kj, head_dim) * scale;
        float c = 1.0f;
        if (s > mx) { /* rescale what was accumulated under the old maximum */
            c = expf(mx - s);
            sum *= c;
            mx = s;
        }
        float p = expf(s - mx);
        sum += p;
        scale_axpy(out, c, p, vj, head_dim);
    }
    float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (int32_t d = 0; d < head_dim; d++) out[d] *= inv;
}
