/* backend.h: the math the forward pass needs, behind one small interface. The CPU backend
 * (src/backend/cpu/) is the reference; other backends implement the same contracts.
 *
 * Every kernel is pure: no allocation, no I/O, no global state beyond the thread pool.
 * Results must not depend on the thread count or on the batch size (bitwise). */
#ifndef FM_BACKEND_H
#define FM_BACKEND_H

#include "tensor.h"
#include <stddef.h>
#include <stdint.h>

typedef struct fm__pool fm__pool;

/* Thread pool for kernels. n_threads <= 0 means the number of online cores. */
fm__pool *fm__pool_new(int n_threads);
void fm__pool_free(fm__pool *p);
int fm__pool_size(const fm__pool *p);
/* Runs fn(i, ctx) for i in [0, n) spread over the pool's threads; returns when all ran.
 * pool == NULL runs serially on the caller, and so does a call made from inside a task.
 * One caller at a time per pool. */
void fm__pool_run(fm__pool *p, int64_t n, void (*fn)(int64_t i, void *ctx), void *ctx);

/* Y[b][r] = sum_c W[r][c] * X[b][c] for b in [0, n), r in [0, W->rows).
 * X: n rows of W->cols floats (stride ldx), Y: n rows of W->rows floats (stride ldy).
 * n == 1 is the decode matrix-vector case; larger n is prefill. */
void fm__matmul(fm__pool *p, const fm__mat *W, const float *X, int64_t ldx, int64_t n,
                float *Y, int64_t ldy);

/* y[i][r] = sum_c W[i][r][c] * x[i][c] for each matrix i < nm (r < W[i]->rows): the same
 * bits as fm__matmul(p, W[i], x[i], W[i]->cols, 1, y[i], W[i]->rows) for each i, with the
 * rows of all matrices spread over the pool in few dispatches and the preparations of an
 * input shared by consecutive matrices that read the same x pointer. Outputs must not
 * overlap any input. Decode: the experts of one token. */
void fm__matvec_multi(fm__pool *p, int32_t nm, const fm__mat *const *W, const float *const *x,
                      float *const *y);

/* Writes row r of W (dequantized) into out[W->cols]: embedding lookup. */
void fm__mat_row(const fm__mat *W, int64_t r, float *out);

/* Which SIMD path the kernels use ("avx512vnni", "avx512", "avx2", "neon", "scalar"). */
const char *fm__kernel_path(void);
/* Forces a path for tests ("scalar", "avx2", "avx512", "avx512vnni", "neon"); returns 0 if
 * unavailable. Call it only while no kernel runs. */
int fm__kernel_force(const char *path);

#endif
