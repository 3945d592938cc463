/* ref.c: the scalar reference kernels and a serial stand-in for the thread pool. These
 * define the numerics every SIMD path must reproduce. (Kernel work replaces the pool
 * and adds dispatch; the scalar functions stay as the reference.) */
#include "backend/backend.h"
#include "common.h"

#include <stdlib.h>

struct fm__pool { int n; };

fm__pool *fm__pool_new(int n_threads) {
    fm__pool *p = calloc(1, sizeof *p);
    if (p) p->n = 1;
    (void)n_threads;
    return p;
}
void fm__pool_free(fm__pool *p) { free(p); }
int fm__pool_size(const fm__pool *p) { return p ? p->n : 1; }
void fm__pool_run(fm__pool *p, int64_t n, void (*fn)(int64_t, void *), void *ctx) {
    (void)p;
    for (int64_t i = 0; i < n; i++) fn(i, ctx);
}

static inline float load_scale(const void *base, fm__dtype dt, int64_t i) {
    switch (dt) {
    case FM_DT_BF16: return fm__bf16_to_f32(((const uint16_t *)base)[i]);
    case FM_DT_F16: return fm__f16_to_f32(((const uint16_t *)base)[i]);
    default: return ((const float *)base)[i];
    }
}

/* Dequantizes row r of an affine-quantized matrix (MLX layout: little-endian bit stream,
 * element j of a row at bit j*bits of the row's uint32 words). */
static void qrow(const fm__mat *W, int64_t r, float *out) {
    const uint32_t *w = (const uint32_t *)W->data + r * (W->cols * W->bits / 32);
    int64_t ng = W->cols / W->group;
    uint32_t mask = (1u << W->bits) - 1;
    for (int64_t j = 0; j < W->cols; j++) {
        uint64_t bit = (uint64_t)j * (uint64_t)W->bits;
        uint64_t word = bit >> 5, sh = bit & 31;
        uint64_t v = w[word] >> sh;
        if (sh + (uint64_t)W->bits > 32) v |= (uint64_t)w[word + 1] << (32 - sh);
        float q = (float)(v & mask);
        int64_t g = r * ng + j / W->group;
        out[j] = load_scale(W->scales, W->sdt, g) * q + load_scale(W->biases, W->sdt, g);
    }
}

void fm__mat_row(const fm__mat *W, int64_t r, float *out) {
    switch (W->type) {
    case FM_W_F32: {
        const float *s = (const float *)W->data + r * W->cols;
        for (int64_t j = 0; j < W->cols; j++) out[j] = s[j];
        break;
    }
    case FM_W_BF16: {
        const uint16_t *s = (const uint16_t *)W->data + r * W->cols;
        for (int64_t j = 0; j < W->cols; j++) out[j] = fm__bf16_to_f32(s[j]);
        break;
    }
    case FM_W_F16: {
        const uint16_t *s = (const uint16_t *)W->data + r * W->cols;
        for (int64_t j = 0; j < W->cols; j++) out[j] = fm__f16_to_f32(s[j]);
        break;
    }
    case FM_W_QAFFINE: qrow(W, r, out); break;
    }
}

void fm__matmul(fm__pool *p, const fm__mat *W, const float *X, int64_t ldx, int64_t n,
                float *Y, int64_t ldy) {
    (void)p;
    float *row = malloc((size_t)W->cols * sizeof *row); /* reference path only */
    FM_ASSERT(row != NULL);
    for (int64_t r = 0; r < W->rows; r++) {
        fm__mat_row(W, r, row);
        for (int64_t b = 0; b < n; b++) {
            const float *x = X + b * ldx;
            double acc = 0; /* reference: accumulate in double */
            for (int64_t j = 0; j < W->cols; j++) acc += (double)row[j] * x[j];
            Y[b * ldy + r] = (float)acc;
        }
    }
    free(row);
}

const char *fm__kernel_path(void) { return "scalar"; }
int fm__kernel_force(const char *path) { return path && path[0] == 's'; }
