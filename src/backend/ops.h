/* ops.h: the non-matmul math of the forward pass (normalization, rotary embedding,
 * softmax, attention, activations). Pure functions: no allocation, no global state.
 * The CPU versions in cpu/ops.c are the reference; results do not depend on the batch
 * size or the thread count (each row is computed the same way wherever it appears). */
#ifndef FM_OPS_H
#define FM_OPS_H

#include "backend/backend.h"
#include <stdint.h>

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], i < n. out may alias x. */
void fm__rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* Rotary embedding, transformers' rotate_half convention, applied in place to each of the
 * n_heads heads of x (head stride head_dim): the first rot dims are rotated as pairs
 * (i, i + rot/2) by angle pos * inv_freq[i]; cos/sin: [rot/2] values for this position. */
void fm__rope(float *x, int32_t n_heads, int32_t head_dim, int32_t rot, const float *cos,
              const float *sin);

/* y[i] += a * x[i], i < n (each element rounded as written; a = 1: y[i] += x[i]). */
void fm__axpy(float *y, float a, const float *x, int64_t n);

/* In-place softmax over x[0..n). */
void fm__softmax(float *x, int64_t n);

/* g[i] = silu(g[i]) * u[i], i < n. */
void fm__silu_mul(float *g, const float *u, int64_t n);

static inline float fm__sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }

/* Causal attention of one query head over keys/values at positions [k0, k1):
 * out[head_dim] = sum_j softmax_j(scale * q.k_j) v_j. k/v: row j at k + j*kv_stride.
 * Blocks of 32 positions: the block's scores, then one rescale of the running maximum,
 * then the block's values in position order (no scratch beyond the stack). */
void fm__attend(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                int32_t k0, int32_t k1, int32_t head_dim, float scale);

/* fm__attend for n_q query heads sharing one key/value head (GQA): head h reads q + h *
 * q_stride and writes out + h * out_stride, each with the same bits as fm__attend alone;
 * a block of keys and values is loaded once into cache for all of them. */
void fm__attend_heads(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                      int32_t n_q, const float *k, const float *v, int64_t kv_stride, int32_t k0,
                      int32_t k1, int32_t head_dim, float scale);

#endif
