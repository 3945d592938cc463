/* deltanet_avx2.c: the chunked gated delta rule (deltanet_tmpl.h) with AVX2 + FMA
 * vectors; chosen by fm__gdr_chunked (deltanet.c) on x86 SIMD kernel paths. */
#include "backend/cpu/deltanet.h"

#include <immintrin.h>

/* the caller is deltanet.c */
void fm__gdr_chunked_avx2(float *S, int32_t dk, int32_t dv, int32_t T, const float *q, int64_t ldq,
                          const float *k, int64_t ldk, const float *v, int64_t ldv, const float *g,
                          const float *beta, float *o, int64_t ldo, float *work);

typedef __m256 vf;
#define VW 8
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VSET1(x) _mm256_set1_ps(x)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define GDR_FN fm__gdr_chunked_avx2
#include "backend/cpu/deltanet_tmpl.h"
