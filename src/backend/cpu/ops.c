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

void fm__attend(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                int32_t k0, int32_t k1, int32_t head_dim, float scale) {
    float mx = -INFINITY;
    double sum = 0;
    for (int32_t d = 0; d < head_dim; d++) out[d] = 0;
    for (int32_t j = k0; j < k1; j++) {
        const float *kj = k + (int64_t)j * kv_stride;
        const float *vj = v + (int64_t)j * kv_stride;
        float s = 0;
        for (int32_t d = 0; d < head_dim; d++) s += q[d] * kj[d];
        s *= scale;
        if (s > mx) { /* rescale what was accumulated under the old maximum */
            float c = expf(mx - s);
            sum *= c;
            for (int32_t d = 0; d < head_dim; d++) out[d] *= c;
            mx = s;
        }
        float p = expf(s - mx);
        sum += p;
        for (int32_t d = 0; d < head_dim; d++) out[d] += p * vj[d];
    }
    float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (int32_t d = 0; d < head_dim; d++) out[d] *= inv;
}
