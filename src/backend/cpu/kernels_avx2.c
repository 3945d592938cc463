/* kernels_avx2.c: the AVX2 + FMA + F16C kernel path, 8 lanes. Built with those flags by
 * the Makefile and used only when cpuid reports them (dispatch.c). The kernels themselves
 * are in kern_tmpl.h. */
#include <immintrin.h>
#include <stdint.h>

#define VW 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSET1(f) _mm256_set1_ps(f)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VLOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VLOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

static inline __attribute__((always_inline)) float VHSUM(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) __m256 u8x8(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

static inline __attribute__((always_inline)) void Q4X(const uint8_t *p, vf *q) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
    q[0] = u8x8(e0);
    q[1] = u8x8(_mm_srli_si128(e0, 8));
    q[2] = u8x8(e1);
    q[3] = u8x8(_mm_srli_si128(e1, 8));
}

static inline __attribute__((always_inline)) void Q8X(const uint8_t *p, vf *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    q[0] = u8x8(v);
    q[1] = u8x8(_mm_srli_si128(v, 8));
}

#define ROWS_FN fm__rows_avx2
#include "backend/cpu/kern_tmpl.h"
