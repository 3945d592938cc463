/* kernels_avx512.c: the AVX-512 (F/BW/VL/DQ) kernel path, 16 lanes. Built with AVX-512
 * flags by the Makefile and used only when cpuid reports the features (dispatch.c).
 * The kernels themselves are in kern_tmpl.h. */
#include <immintrin.h>
#include <stdint.h>

#define VW 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSET1(f) _mm512_set1_ps(f)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VHSUM(v) _mm512_reduce_add_ps(v)
#define VLOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VLOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))

static inline __attribute__((always_inline)) void Q4X(const uint8_t *p, vf *q) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
    q[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
}

static inline __attribute__((always_inline)) void Q8X(const uint8_t *p, vf *q) {
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

#define ROWS_FN fm__rows_avx512
#include "backend/cpu/kern_tmpl.h"
