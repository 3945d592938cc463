/* deltanet.c: the gated delta rule of Gated DeltaNet layers (deltanet.h): the recurrent
 * step used for decode, and the chunked form used for prefill, compiled here with
 * portable GCC vectors and in deltanet_avx2.c with AVX2 + FMA. The chunked form picks the
 * AVX2 build when the matmul kernels run an x86 SIMD path (fm__kernel_path), so
 * FM_KERNEL=scalar selects the portable build for both. */
#include "backend/cpu/deltanet.h"
#include "backend/backend.h"

#include <string.h>

/* One token of one head: S *= decay; delta = (v - S^T k) * beta; S += k delta^T;
 * o = S^T q. S: [dk][dv]. Written in blocks of 8 columns so that compilers vectorize it. */
void fm__gdr_step(float *restrict S, const float *restrict k, const float *restrict q,
                  const float *restrict v, float beta, float decay, int32_t dk, int32_t dv,
                  float *restrict delta, float *restrict o) {
    int32_t j0 = 0;
    for (; j0 + 8 <= dv; j0 += 8) {
        float acc[8] = {0}, out[8] = {0};
        for (int32_t i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + j0;
            for (int u = 0; u < 8; u++) {
                Si[u] *= decay;
                acc[u] += Si[u] * k[i];
            }
        }
        for (int u = 0; u < 8; u++) delta[j0 + u] = (v[j0 + u] - acc[u]) * beta;
        for (int32_t i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + j0;
            for (int u = 0; u < 8; u++) {
                Si[u] += k[i] * delta[j0 + u];
                out[u] += Si[u] * q[i];
            }
        }
        for (int u = 0; u < 8; u++) o[j0 + u] = out[u];
    }
    for (int32_t j = j0; j < dv; j++) { /* leftover columns */
        float acc = 0, out = 0;
        for (int32_t i = 0; i < dk; i++) {
            S[(size_t)i * dv + j] *= decay;
            acc += S[(size_t)i * dv + j] * k[i];
        }
        delta[j] = (v[j] - acc) * beta;
        for (int32_t i = 0; i < dk; i++) {
            S[(size_t)i * dv + j] += k[i] * delta[j];
            out += S[(size_t)i * dv + j] * q[i];
        }
        o[j] = out;
    }
}

size_t fm__gdr_work_floats(int32_t dk, int32_t dv) {
    size_t c = FM_GDR_CHUNK;
    return 2 * c + 4 * c * (size_t)dk + 2 * c * (size_t)dv + 2 * c * c;
}

/* portable build of the chunked form: 4-lane GCC vectors (SSE, NEON) */
typedef float vf __attribute__((vector_size(16)));
typedef float vfu __attribute__((vector_size(16), aligned(4))); /* unaligned access */
#define VW 4
#define VZERO() ((vf){0})
#define VLOAD(p) (*(const vfu *)(p))
#define VSTORE(p, v) (*(vfu *)(p) = (v))
#define VSET1(x) ((vf){0} + (x))
#define VMUL(a, b) ((a) * (b))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define GDR_FN fm__gdr_chunked_generic
#include "backend/cpu/deltanet_tmpl.h"

#if defined(__x86_64__) || defined(__i386__)
void fm__gdr_chunked_avx2(float *S, int32_t dk, int32_t dv, int32_t T, const float *q, int64_t ldq,
                          const float *k, int64_t ldk, const float *v, int64_t ldv, const float *g,
                          const float *beta, float *o, int64_t ldo, float *work);
#endif

void fm__gdr_chunked(float *S, int32_t dk, int32_t dv, int32_t T, const float *q, int64_t ldq,
                     const float *k, int64_t ldk, const float *v, int64_t ldv, const float *g,
                     const float *beta, float *o, int64_t ldo, float *work) {
#if defined(__x86_64__) || defined(__i386__)
    if (strncmp(fm__kernel_path(), "avx", 3) == 0) {
        fm__gdr_chunked_avx2(S, dk, dv, T, q, ldq, k, ldk, v, ldv, g, beta, o, ldo, work);
        return;
    }
#endif
    fm__gdr_chunked_generic(S, dk, dv, T, q, ldq, k, ldk, v, ldv, g, beta, o, ldo, work);
}
