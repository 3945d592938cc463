/* test_kernels.c: the CPU kernels and the thread pool. Every available SIMD path is
 * compared with the scalar reference (double accumulation) on random inputs: odd sizes,
 * sizes that are not multiples of the vector width, every MLX group size, bits 2-8 and
 * scales in BF16/F16/F32, batch sizes 1..9 and 1/2/3 threads. Results must also be
 * bitwise the same for every thread count and batch size. The packed layout is built
 * here from MLX's byte-level definition (extract_bits in mlx/backend/cpu/quantized.cpp)
 * independently of the library's unpacking.
 * The integer affine kernels (activation digits, 3 or 2 per column: kern.h) are also
 * compared bitwise with their scalar reference (fm__rows_digits_ref) for both digit
 * counts, their digit preparation bitwise with fm__xq_prep_ref, and the reference's
 * error is bounded against a float64 dot product (the bound derived from the 2^-(8D-1)
 * rounding per chunk and the float32 accumulation). */
#include "backend/backend.h"
#include "backend/cpu/kern.h"
#include "common.h"
#include "tap.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return g_rng;
}
static float frand(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }

/* ---- MLX packing, transcribed from the byte-level definition ------------------------ */

/* Packs K values q[] (each < 2^bits) into out bytes the way MLX lays them out:
 * bits 2/4/8: 8/bits values per byte, first value in the lowest bits;
 * bits 3: 8 values per 3 bytes; bits 5: 8 values per 5 bytes; bits 6: 4 values per 3 bytes,
 * each pack's values consecutive from the lowest bit of its first byte. */
static void mlx_pack(const uint8_t *q, int64_t K, int bits, uint8_t *out) {
    int pf = (bits == 3 || bits == 5) ? 8 : (bits == 6 ? 4 : 8 / bits);
    int bpp = ((bits & (bits - 1)) == 0) ? 1 : (bits == 5 ? 5 : 3);
    for (int64_t p = 0; p < K / pf; p++) {
        uint64_t acc = 0;
        for (int i = 0; i < pf; i++) acc |= (uint64_t)q[p * pf + i] << (i * bits);
        for (int k = 0; k < bpp; k++) out[p * bpp + k] = (uint8_t)(acc >> (8 * k));
    }
}

/* MLX extract_bits for 3/5/6 bits, as written in mlx/backend/cpu/quantized.cpp. */
static void mlx_extract(const uint8_t *w, int bits, uint8_t *o) {
    if (bits == 3) {
        o[0] = w[0] & 0x7; o[1] = (w[0] & 0x38) >> 3;
        o[2] = ((w[0] & 0xc0) >> 6) + ((w[1] & 0x1) << 2); o[3] = (w[1] & 0xe) >> 1;
        o[4] = (w[1] & 0x70) >> 4; o[5] = ((w[1] & 0x80) >> 7) + ((w[2] & 0x3) << 1);
        o[6] = (w[2] & 0x1c) >> 2; o[7] = (w[2] & 0xe0) >> 5;
    } else if (bits == 5) {
        o[0] = w[0] & 0x1f; o[1] = ((w[0] & 0xe0) >> 5) + ((w[1] & 0x3) << 3);
        o[2] = (w[1] & 0x7c) >> 2; o[3] = ((w[1] & 0x80) >> 7) + ((w[2] & 0xf) << 1);
        o[4] = ((w[2] & 0xf0) >> 4) + ((w[3] & 0x1) << 4); o[5] = (w[3] & 0x3e) >> 1;
        o[6] = ((w[3] & 0xc0) >> 6) + ((w[4] & 0x7) << 2); o[7] = (w[4] & 0xf8) >> 3;
    } else {
        o[0] = w[0] & 0x3f; o[1] = ((w[0] >> 6) & 0x03) + ((w[1] & 0x0f) << 2);
        o[2] = ((w[1] >> 4) & 0x0f) + ((w[2] & 0x03) << 4); o[3] = (w[2] >> 2) & 0x3f;
    }
}

/* ---- random matrices ------------------------------------------------------------------ */

typedef struct {
    fm__mat m;
    void *data, *scales, *biases;
    uint8_t *q; /* QAFFINE: the integer values, [rows][cols] */
} tmat;

static void put_scale(void *base, fm__dtype dt, int64_t i, float v) {
    if (dt == FM_DT_BF16) ((uint16_t *)base)[i] = fm__f32_to_bf16(v);
    else if (dt == FM_DT_F16) ((uint16_t *)base)[i] = fm__f32_to_f16(v);
    else ((float *)base)[i] = v;
}

static void tmat_make(tmat *t, fm__wtype type, int64_t rows, int64_t cols, int bits, int group,
                      fm__dtype sdt) {
    memset(t, 0, sizeof *t);
    t->m.type = type; t->m.rows = rows; t->m.cols = cols;
    if (type == FM_W_QAFFINE) {
        t->m.bits = bits; t->m.group = group; t->m.sdt = sdt;
        int64_t wpr = cols * bits / 32, ng = cols / group;
        t->data = calloc((size_t)(rows * wpr + 1), 4);
        t->q = malloc((size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) t->q[i] = (uint8_t)(rnd() & ((1u << bits) - 1));
        for (int64_t r = 0; r < rows; r++)
            mlx_pack(t->q + r * cols, cols, bits, (uint8_t *)t->data + r * wpr * 4);
        t->scales = malloc((size_t)(rows * ng * 4));
        t->biases = malloc((size_t)(rows * ng * 4));
        for (int64_t i = 0; i < rows * ng; i++) {
            put_scale(t->scales, sdt, i, 0.002f + 0.05f * (frand() + 1.0f));
            put_scale(t->biases, sdt, i, -0.3f * (frand() + 1.0f));
        }
        t->m.scales = t->scales; t->m.biases = t->biases;
    } else {
        t->data = malloc((size_t)(rows * cols * 4));
        for (int64_t i = 0; i < rows * cols; i++) {
            float v = frand();
            if (type == FM_W_F32) ((float *)t->data)[i] = v;
            else if (type == FM_W_BF16) ((uint16_t *)t->data)[i] = fm__f32_to_bf16(v);
            else ((uint16_t *)t->data)[i] = fm__f32_to_f16(v);
        }
    }
    t->m.data = t->data;
}

static void tmat_free(tmat *t) { free(t->data); free(t->scales); free(t->biases); free(t->q); }

static float *rand_vec(int64_t n) {
    float *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = frand();
    return v;
}

/* ---- checks ----------------------------------------------------------------------------- */

static const char *g_paths[] = {"scalar", "avx2", "avx512", "avx512vnni", "neon"};
static fm__pool *g_pool[4]; /* index = thread count (1..3) */

/* Condition of each output: sum |w||x| plus, for affine weights, sum_g |bias_g| sum |x|
 * (the bias term the SIMD paths factor out). */
static void out_mag(const fm__mat *W, const float *X, int64_t ldx, int64_t n, double *mag) {
    float *row = malloc((size_t)W->cols * sizeof *row);
    for (int64_t r = 0; r < W->rows; r++) {
        fm__mat_row(W, r, row);
        for (int64_t b = 0; b < n; b++) {
            double s = 0;
            for (int64_t j = 0; j < W->cols; j++) s += fabs((double)row[j] * X[b * ldx + j]);
            if (W->type == FM_W_QAFFINE) {
                int64_t ng = W->cols / W->group;
                for (int64_t g = 0; g < ng; g++) {
                    double xs = 0;
                    for (int64_t j = g * W->group; j < (g + 1) * W->group; j++) xs += fabs(X[b * ldx + j]);
                    s += fabs(fm__ld_scale(W->biases, W->sdt, r * ng + g)) * xs;
                }
            }
            mag[b * W->rows + r] = s;
        }
    }
    free(row);
}

/* Runs W against random X (n = 1..9, threads 1..3) on the current path; checks closeness to
 * the reference and bitwise equality across thread counts and batch sizes. */
static void check_mat(const char *path, const fm__mat *W, const char *what) {
    const int64_t NMAX = 9, ldx = W->cols + 3, ldy = W->rows + 1;
    float *X = rand_vec(NMAX * ldx);
    float *ref = calloc((size_t)(NMAX * ldy), sizeof *ref);
    float *one = calloc((size_t)(NMAX * ldy), sizeof *one);
    float *Y = calloc((size_t)(NMAX * ldy), sizeof *Y);
    double *mag = malloc((size_t)(NMAX * W->rows) * sizeof *mag);
    fm__kernel_force("scalar");
    fm__matmul(NULL, W, X, ldx, NMAX, ref, ldy);
    fm__kernel_force(path);
    out_mag(W, X, ldx, NMAX, mag);
    /* single rows, one thread: the bitwise baseline */
    for (int64_t b = 0; b < NMAX; b++) fm__matmul(g_pool[1], W, X + b * ldx, ldx, 1, one + b * ldy, ldy);
    double worst = 0;
    for (int64_t b = 0; b < NMAX; b++)
        for (int64_t r = 0; r < W->rows; r++) {
            double e = fabs((double)one[b * ldy + r] - ref[b * ldy + r]) / (mag[b * W->rows + r] + 1e-30);
            if (!(e <= worst)) worst = e; /* NaN-safe */
        }
    CHECK(worst <= 1e-5, "%s %s: matches the scalar reference (worst error %.2g of sum|w x|)", path, what, worst);
    int same = 1;
    for (int t = 1; t <= 3 && same; t++)
        for (int64_t n = 1; n <= NMAX && same; n++) {
            for (int64_t i = 0; i < NMAX * ldy; i++) Y[i] = NAN;
            fm__matmul(g_pool[t], W, X, ldx, n, Y, ldy);
            for (int64_t b = 0; b < n && same; b++)
                if (memcmp(Y + b * ldy, one + b * ldy, (size_t)W->rows * sizeof *Y) != 0) {
                    same = 0;
                    printf("# %s %s: differs at threads %d n %lld row b %lld\n", path, what, t, (long long)n, (long long)b);
                }
        }
    CHECK(same, "%s %s: bitwise equal for threads 1-3 and batch 1-9", path, what);
    free(X); free(ref); free(one); free(Y); free(mag);
}

static void test_packing(void) {
    /* The test's packer agrees with MLX's extract_bits, and the library unpacks it. */
    static const int bits_list[] = {2, 3, 4, 5, 6, 8};
    for (size_t bi = 0; bi < FM_ARRAY_LEN(bits_list); bi++) {
        int bits = bits_list[bi];
        tmat t;
        tmat_make(&t, FM_W_QAFFINE, 3, 128, bits, 32, FM_DT_F32);
        int ok_mlx = 1, ok_row = 1;
        const uint8_t *bytes = t.data;
        int64_t wpr = 128 * bits / 32;
        for (int64_t r = 0; r < 3; r++) {
            const uint8_t *rb = bytes + r * wpr * 4;
            for (int64_t j = 0; j < 128; j++) {
                uint8_t v;
                if (bits == 3 || bits == 5 || bits == 6) {
                    int pf = bits == 6 ? 4 : 8, bpp = bits == 5 ? 5 : 3;
                    uint8_t o[8];
                    mlx_extract(rb + (j / pf) * bpp, bits, o);
                    v = o[j % pf];
                } else {
                    int pf = 8 / bits;
                    v = (uint8_t)((rb[j / pf] >> ((j % pf) * bits)) & ((1u << bits) - 1));
                }
                if (v != t.q[r * 128 + j]) ok_mlx = 0;
            }
            float row[128];
            fm__mat_row(&t.m, r, row);
            for (int64_t j = 0; j < 128; j++) {
                float s = ((float *)t.scales)[r * 4 + j / 32], b = ((float *)t.biases)[r * 4 + j / 32];
                float want = s * (float)t.q[r * 128 + j] + b;
                if (memcmp(&want, &row[j], 4) != 0) ok_row = 0;
            }
        }
        CHECK(ok_mlx, "bits %d: test packer matches MLX extract_bits", bits);
        CHECK(ok_row, "bits %d: fm__mat_row dequantizes the MLX layout (scale*q+bias)", bits);
        tmat_free(&t);
    }
    tmat t;
    tmat_make(&t, FM_W_BF16, 2, 37, 0, 0, FM_DT_F32);
    float row[37];
    fm__mat_row(&t.m, 1, row);
    int ok = 1;
    for (int j = 0; j < 37; j++) if (row[j] != fm__bf16_to_f32(((uint16_t *)t.data)[37 + j])) ok = 0;
    CHECK(ok, "fm__mat_row BF16 row");
    tmat_free(&t);
}

static void test_path(const char *path) {
    static const int64_t dense_cols[] = {1, 7, 15, 17, 33, 100, 1031};
    static const fm__wtype dts[] = {FM_W_F32, FM_W_BF16, FM_W_F16};
    static const char *dtn[] = {"F32", "BF16", "F16"};
    char what[128];
    for (size_t t = 0; t < 3; t++)
        for (size_t c = 0; c < FM_ARRAY_LEN(dense_cols); c++) {
            tmat m;
            tmat_make(&m, dts[t], 13, dense_cols[c], 0, 0, FM_DT_F32);
            snprintf(what, sizeof what, "%s 13x%lld", dtn[t], (long long)dense_cols[c]);
            check_mat(path, &m.m, what);
            tmat_free(&m);
        }
    /* large enough to be split over threads */
    for (size_t t = 0; t < 3; t++) {
        tmat m;
        tmat_make(&m, dts[t], 301, 997, 0, 0, FM_DT_F32);
        snprintf(what, sizeof what, "%s 301x997", dtn[t]);
        check_mat(path, &m.m, what);
        tmat_free(&m);
    }
    static const int bits_list[] = {2, 3, 4, 5, 6, 8};
    static const int groups[] = {32, 64, 128};
    static const fm__dtype sdts[] = {FM_DT_BF16, FM_DT_F16, FM_DT_F32};
    for (size_t bi = 0; bi < FM_ARRAY_LEN(bits_list); bi++)
        for (size_t gi = 0; gi < 3; gi++) {
            int bits = bits_list[bi], g = groups[gi];
            fm__dtype sdt = sdts[(bi + gi) % 3];
            int64_t cols = (int64_t)g * (gi == 0 ? 7 : 3); /* 224, 192, 384: odd group counts */
            tmat m;
            tmat_make(&m, FM_W_QAFFINE, 11, cols, bits, g, sdt);
            snprintf(what, sizeof what, "Q%d g%d %s 11x%lld", bits, g, fm__dtype_name(sdt), (long long)cols);
            check_mat(path, &m.m, what);
            tmat_free(&m);
            if (g == 32) { /* also in whole 64-column chunks (the integer kernels) */
                tmat_make(&m, FM_W_QAFFINE, 11, 320, bits, g, sdt);
                snprintf(what, sizeof what, "Q%d g%d %s 11x320", bits, g, fm__dtype_name(sdt));
                check_mat(path, &m.m, what);
                tmat_free(&m);
            }
        }
    /* large enough to be split over threads; 4 and 8 bits with every group size */
    for (size_t bi = 0; bi < FM_ARRAY_LEN(bits_list); bi++)
        for (size_t gi = 0; gi < 3; gi++) {
            int bits = bits_list[bi], g = groups[gi];
            if (bits != 4 && bits != 8 && g != 64) continue;
            fm__dtype sdt = sdts[(bi + gi + 1) % 3];
            tmat m;
            tmat_make(&m, FM_W_QAFFINE, 263, 2048, bits, g, sdt);
            snprintf(what, sizeof what, "Q%d g%d %s 263x2048", bits, g, fm__dtype_name(sdt));
            check_mat(path, &m.m, what);
            tmat_free(&m);
        }
    /* large enough (> 1 MB) that the last rows go in the short tail tasks of the split */
    tmat m;
    tmat_make(&m, FM_W_QAFFINE, 1031, 2048, 4, 64, FM_DT_BF16);
    check_mat(path, &m.m, "Q4 g64 BF16 1031x2048");
    tmat_free(&m);
}

/* ---- activation digits ------------------------------------------------------------------ */

/* A row of x with chunks of very different size (so the per-chunk scales matter) and, if
 * `special`, a zero chunk, a tiny one (below 2^-100) and an exactly representable one. */
static void digits_x(float *x, int64_t cols, int special) {
    for (int64_t c = 0; c < cols / 64; c++) {
        float mag = ldexpf(1.0f, (int)(rnd() % 24) - 12);
        for (int k = 0; k < 64; k++) x[c * 64 + k] = frand() * mag;
        if (special && c % 5 == 1) for (int k = 0; k < 64; k++) x[c * 64 + k] = 0;
        if (special && c % 5 == 2) for (int k = 0; k < 64; k++) x[c * 64 + k] = frand() * 1e-32f;
        if (special && c % 5 == 3) for (int k = 0; k < 64; k++) x[c * 64 + k] = (float)((int)(rnd() % 200) - 100);
    }
}

/* fm__xq_prep_ref against its contract (kern.h), and every SIMD preparation bitwise
 * against it. */
static void test_prep(void) {
    static const int64_t cols_list[] = {64, 128, 192, 320, 2048};
    int ok_ref = 1, ok_simd = 1, nsimd = 0;
    for (int D = 2; D <= 3; D++)
        for (int bits = 3; bits <= 8; bits++) {
            if (bits != 3 && bits != 4 && bits != 8) continue;
            for (size_t ci = 0; ci < FM_ARRAY_LEN(cols_list); ci++) {
                int64_t cols = cols_list[ci], nc = cols / 64;
                float *x = malloc((size_t)cols * sizeof *x), *s = malloc((size_t)nc * sizeof *s);
                int8_t *q = malloc((size_t)FM_XQ_BYTES(cols, D));
                digits_x(x, cols, 1);
                if (cols == 320) x[130] = NAN, x[200] = INFINITY; /* chunks 2 and 3: s = NaN */
                fm__xq_prep_ref(x, cols, bits, D, q, s);
                const int K = 8 * D - 2;
                for (int64_t c = 0; c < nc && ok_ref; c++) {
                    float amax = 0;
                    int bad = 0;
                    for (int k = 0; k < 64; k++) {
                        if (!isfinite(x[c * 64 + k])) bad = 1;
                        else amax = fmaxf(amax, fabsf(x[c * 64 + k]));
                    }
                    if (bad) { if (!isnan(s[c])) ok_ref = 0; continue; }
                    if (amax < 1e-30f) { if (s[c] != 0) ok_ref = 0; continue; }
                    int e;
                    frexpf(amax, &e);
                    if (s[c] != ldexpf(1.0f, e - K)) ok_ref = 0;
                    for (int k = 0; k < 64; k++) {
                        int64_t m = 0;
                        for (int d = 0; d < D; d++) {
                            int8_t dg = q[fm__xq_at(bits, D, cols, c, k, d)];
                            if (d == 0 && (dg < -64 || dg > 64)) ok_ref = 0;
                            m = m * 256 + dg;
                        }
                        double err = fabs((double)x[c * 64 + k] - (double)m * s[c]);
                        if (m > (1 << K) || m < -(1 << K) || err > 0.5 * s[c]) {
                            ok_ref = 0;
                            printf("# prep ref D%d bits %d cols %lld chunk %lld col %d: m %lld err %g s %g\n", D, bits,
                                   (long long)cols, (long long)c, k, (long long)m, err, s[c]);
                            break;
                        }
                    }
                }
#if defined(__x86_64__) || defined(__i386__)
                for (int w = 0; w < 2; w++) {
                    const char *path = w ? "avx512" : "avx2";
                    if (!fm__kernel_force(path)) continue;
                    float *s2 = malloc((size_t)nc * sizeof *s2);
                    int8_t *q2 = malloc((size_t)FM_XQ_BYTES(cols, D));
                    if (w) fm__xq_prep_avx512(x, cols, bits, D, q2, s2);
                    else fm__xq_prep_avx2(x, cols, bits, D, q2, s2);
                    nsimd++;
                    if (memcmp(q, q2, (size_t)FM_XQ_BYTES(cols, D)) != 0 || memcmp(s, s2, (size_t)nc * sizeof *s) != 0) {
                        ok_simd = 0;
                        printf("# %s prep D%d bits %d cols %lld differs from the reference\n", path, D, bits, (long long)cols);
                    }
                    free(s2); free(q2);
                }
#endif
                free(x); free(s); free(q);
            }
        }
    CHECK(ok_ref, "fm__xq_prep_ref: digits in range, |x - m s| <= s/2, s = 2^(e-K), NaN/Inf/zero/tiny chunks");
    CHECK(ok_simd, "SIMD digit preparations bitwise equal to fm__xq_prep_ref (%d cases)", nsimd);
}

/* The reference digit kernel on W for X (n rows): its own kargs. */
static void digits_ref(const fm__mat *W, const float *X, int64_t ldx, int64_t n, int D, float *Y, int64_t ldy) {
    int64_t ng = W->cols / W->group, nc = W->cols / 64, xqb = FM_XQ_BYTES(W->cols, D);
    float *xs = malloc((size_t)(n * ng) * sizeof *xs), *xqs = malloc((size_t)(n * nc) * sizeof *xqs);
    int8_t *xq = malloc((size_t)(n * xqb));
    for (int64_t b = 0; b < n; b++) {
        fm__xsum(X + b * ldx, W->cols, W->group, xs + b * ng);
        fm__xq_prep_ref(X + b * ldx, W->cols, W->bits, D, xq + b * xqb, xqs + b * nc);
    }
    fm__kargs ka = {xs, ng, xq, xqb, xqs, nc, D};
    fm__rows_digits_ref(W, 0, W->rows, X, ldx, n, Y, ldy, &ka);
    free(xs); free(xqs); free(xq);
}

/* Does `path` run W through the digit kernels? */
static int uses_digits(const char *path, const fm__mat *W) {
    if (W->type != FM_W_QAFFINE || W->cols % 64 != 0) return 0;
    if (strcmp(path, "avx512vnni") == 0) return 1;
    if (strcmp(path, "avx2") == 0 || strcmp(path, "neon") == 0) return W->bits == 4;
    return 0;
}

/* The path's digit kernels on W, D digits: bitwise equal to fm__rows_digits_ref for batch
 * sizes 1..5 (one call) and 1..3 threads. */
static void check_digits(const char *path, const fm__mat *W, int D, const char *what) {
    const int64_t N = 5, ldx = W->cols + 5, ldy = W->rows + 2;
    float *X = malloc((size_t)(N * ldx) * sizeof *X);
    for (int64_t b = 0; b < N; b++) digits_x(X + b * ldx, W->cols, b == 2);
    float *ref = calloc((size_t)(N * ldy), sizeof *ref), *Y = calloc((size_t)(N * ldy), sizeof *Y);
    digits_ref(W, X, ldx, N, D, ref, ldy);
    fm__kernel_force(path);
    int old = fm__kern_set_act_digits(D), same = 1;
    for (int t = 1; t <= 3 && same; t++)
        for (int64_t n = 1; n <= N && same; n += (t == 1 ? 1 : 4)) {
            for (int64_t i = 0; i < N * ldy; i++) Y[i] = NAN;
            fm__matmul(g_pool[t], W, X, ldx, n, Y, ldy);
            for (int64_t b = 0; b < n && same; b++)
                for (int64_t r = 0; r < W->rows; r++)
                    if (memcmp(&Y[b * ldy + r], &ref[b * ldy + r], sizeof(float)) != 0) {
                        same = 0;
                        printf("# %s %s D%d: threads %d n %lld: row %lld of x %lld: %.9g, reference %.9g\n", path, what, D, t,
                               (long long)n, (long long)r, (long long)b, Y[b * ldy + r], ref[b * ldy + r]);
                        break;
                    }
        }
    fm__kern_set_act_digits(old);
    CHECK(same, "%s %s, %d digits: bitwise equal to the digit reference (batch 1-5, threads 1-3)", path, what, D);
    free(X); free(ref); free(Y);
}

static void test_digits_path(const char *path) {
    static const int bits_list[] = {2, 3, 4, 5, 6, 8};
    static const int groups[] = {32, 64, 128};
    static const fm__dtype sdts[] = {FM_DT_BF16, FM_DT_F16, FM_DT_F32};
    char what[128];
    int n = 0;
    for (int D = 2; D <= 3; D++)
        for (size_t bi = 0; bi < FM_ARRAY_LEN(bits_list); bi++)
            for (size_t gi = 0; gi < 3; gi++) {
                int bits = bits_list[bi], g = groups[gi];
                /* odd chunk counts (a last unpaired 4-bit chunk) where the group allows */
                int64_t cols_list[2] = {g == 128 ? 384 : 192, g == 128 ? 2048 : 320};
                for (int ci = 0; ci < 2; ci++)
                    for (int si = 0; si < 3; si++) {
                        if (si != (int)((bi + gi + ci) % 3) && !(bits == 4 && ci == 0)) continue;
                        tmat m;
                        int64_t rows = ci ? 263 : 11;
                        tmat_make(&m, FM_W_QAFFINE, rows, cols_list[ci], bits, g, sdts[si]);
                        if (!uses_digits(path, &m.m)) { tmat_free(&m); continue; }
                        snprintf(what, sizeof what, "Q%d g%d %s %lldx%lld", bits, g, fm__dtype_name(sdts[si]),
                                 (long long)rows, (long long)cols_list[ci]);
                        check_digits(path, &m.m, D, what);
                        tmat_free(&m);
                        n++;
                    }
            }
    if (n == 0) printf("# %s: no digit kernels\n", path);
}

/* The digit reference against a float64 dot product of the dequantized (affine, exact in
 * double) weights: per output |y - y64| <= Eq + Ef with
 *   Eq = sum_j |scale_g q_j| 2^(e_c - K - 1)     (x_j rounded to m_j s_c, kern.h)
 *   Ef = u ((steps + ceil(ng/16) + 7) (A + B) + (G/8 + 3) B),  u = 2^-24,
 *   A = sum_j |scale_g q_j| (|x_j| + s_c/2),  B = sum_g |bias_g| sum_{j in g} |x_j|
 * (float32 fma per lane and step, the bias lanes, the lane sum; the group sums of x).
 * Random inputs keep well inside it; an input built so that every rounding has the same
 * sign reaches 3/4 of Eq, so the bound is tight enough to see a lost bit. */
static double digits_err(const tmat *t, const float *x, int D, float *y, double *worst_ratio) {
    const fm__mat *W = &t->m;
    const int64_t C = W->cols, ng = C / W->group, nc = C / 64;
    const int K = 8 * D - 2;
    digits_ref(W, x, C, 1, D, y, W->rows);
    double steps = W->bits == 4 ? nc / 2 + 1 : nc;
    for (int64_t r = 0; r < W->rows; r++) {
        double y64 = 0, Eq = 0, A = 0, B = 0;
        for (int64_t g = 0; g < ng; g++) {
            double sc = fm__ld_scale(W->scales, W->sdt, r * ng + g), bi = fm__ld_scale(W->biases, W->sdt, r * ng + g);
            double dq = 0, ax = 0, sx = 0;
            for (int64_t j = g * W->group; j < (g + 1) * W->group; j++) {
                float amax = 0;
                for (int k = 0; k < 64; k++) amax = fmaxf(amax, fabsf(x[j / 64 * 64 + k]));
                int e;
                frexpf(amax, &e);
                double s = amax > 0 ? ldexp(1.0, e - K) : 0, w = fabs(sc * t->q[r * C + j]);
                dq += t->q[r * C + j] * (double)x[j];
                sx += x[j];
                ax += fabs(x[j]);
                Eq += w * s / 2;
                A += w * (fabs(x[j]) + s / 2);
            }
            y64 += sc * dq + bi * sx;
            B += fabs(bi) * ax;
        }
        double Ef = ldexp(1.0, -24) * ((steps + (ng + 15) / 16 + 7) * (A + B) + (W->group / 8 + 3) * B);
        double ratio = fabs((double)y[r] - y64) / (Eq + Ef);
        if (!(ratio <= *worst_ratio)) *worst_ratio = ratio;
    }
    (void)nc;
    return 0;
}

static void test_digits_error(void) {
    static const int bits_list[] = {2, 3, 4, 5, 6, 8};
    static const int groups[] = {32, 64, 128};
    for (int D = 2; D <= 3; D++) {
        double worst = 0;
        for (size_t bi = 0; bi < FM_ARRAY_LEN(bits_list); bi++)
            for (size_t gi = 0; gi < 3; gi++) {
                tmat m;
                tmat_make(&m, FM_W_QAFFINE, 37, groups[gi] == 128 ? 1024 : 960, bits_list[bi], groups[gi],
                          (fm__dtype[]){FM_DT_BF16, FM_DT_F16, FM_DT_F32}[(bi + gi) % 3]);
                float *x = malloc((size_t)m.m.cols * sizeof *x), *y = malloc((size_t)m.m.rows * sizeof *y);
                for (int rep = 0; rep < 3; rep++) {
                    digits_x(x, m.m.cols, rep == 1);
                    digits_err(&m, x, D, y, &worst);
                }
                free(x); free(y);
                tmat_free(&m);
            }
        CHECK(worst <= 1.0, "%d digits: random inputs within the derived error bound (worst %.3f of it)", D, worst);
        /* aligned roundings: q = 15, positive scales, no bias, x_j = (m_j + 3/8) s with
         * s = 2^(3-K) (one element 2^(K-1) s = 4 sets e = 3), so every x_j rounds down by 3/8 s;
         * m_j < 2^12 keeps x_j exact in float and the float32 terms small */
        tmat m;
        tmat_make(&m, FM_W_QAFFINE, 3, 512, 4, 64, FM_DT_F32);
        for (int64_t i = 0; i < 3 * 512; i++) m.q[i] = 15;
        for (int64_t r = 0; r < 3; r++) mlx_pack(m.q + r * 512, 512, 4, (uint8_t *)m.data + r * 256);
        for (int64_t i = 0; i < 3 * 8; i++) ((float *)m.scales)[i] = 0.01f + 0.001f * (float)i, ((float *)m.biases)[i] = 0;
        float x[512], y[3];
        const int K = 8 * D - 2;
        for (int j = 0; j < 512; j++) {
            int64_t mj = j % 64 == 0 ? (1 << (K - 1)) : (int64_t)(rnd() % 4096);
            x[j] = ldexpf((float)mj + (j % 64 == 0 ? 0.0f : 0.375f), 3 - K);
        }
        double tight = 0;
        digits_err(&m, x, D, y, &tight);
        CHECK(tight <= 1.0 && tight >= 0.6, "%d digits: aligned roundings reach %.3f of the bound (0.6..1)", D, tight);
        tmat_free(&m);
    }
}

/* ---- thread pool ----------------------------------------------------------------------- */

typedef struct { _Atomic int *hits; fm__pool *p; _Atomic int nested; } pctx;

static void count_task(int64_t i, void *c) {
    pctx *x = c;
    atomic_fetch_add(&x->hits[i], 1);
}

static void nested_task(int64_t i, void *c) {
    pctx *x = c;
    fm__pool_run(x->p, 3, count_task, x); /* runs serially inside a task */
    atomic_fetch_add(&x->nested, 1);
    (void)i;
}

static void test_pool(void) {
    for (int nt = 1; nt <= 5; nt++) {
        fm__pool *p = fm__pool_new(nt);
        CHECK(p && fm__pool_size(p) == nt, "pool of %d threads", nt);
        int ok = 1;
        for (int rep = 0; rep < 300 && ok; rep++) {
            int64_t n = 1 + (rep * 7) % 50;
            _Atomic int hits[64];
            for (int i = 0; i < 64; i++) atomic_init(&hits[i], 0);
            pctx x = {hits, p, 0};
            fm__pool_run(p, n, count_task, &x);
            for (int64_t i = 0; i < 64; i++) if (atomic_load(&hits[i]) != (i < n)) ok = 0;
        }
        CHECK(ok, "pool %d: 300 jobs, every task runs exactly once", nt);
        _Atomic int hits[64];
        for (int i = 0; i < 64; i++) atomic_init(&hits[i], 0);
        pctx x = {hits, p, 0};
        fm__pool_run(p, 20, nested_task, &x);
        CHECK(atomic_load(&x.nested) == 20 && atomic_load(&hits[0]) == 20 && atomic_load(&hits[2]) == 20,
              "pool %d: nested run inside a task runs serially", nt);
        fm__pool_free(p);
    }
    fm__pool_free(NULL);
    CHECK(1, "fm__pool_free(NULL) is a no-op");
    fm__pool *d = fm__pool_new(0);
    CHECK(d && fm__pool_size(d) >= 1, "pool_new(0) uses the online cores (%d)", fm__pool_size(d));
    fm__pool_free(d);
}

/* fm__matvec_multi gives, for each matrix, the same bits as fm__matmul with n = 1, whatever
 * the thread count, with inputs shared by consecutive matrices (the decode gate/up case). */
static void test_multi(const char *path) {
    enum { NM = 6 };
    tmat m[NM];
    tmat_make(&m[0], FM_W_QAFFINE, 37, 256, 4, 64, FM_DT_BF16);  /* gate, expert a */
    tmat_make(&m[1], FM_W_QAFFINE, 37, 256, 4, 64, FM_DT_BF16);  /* up, expert a (same x) */
    tmat_make(&m[2], FM_W_QAFFINE, 29, 192, 8, 32, FM_DT_F16);
    tmat_make(&m[3], FM_W_BF16, 41, 97, 0, 0, FM_DT_F32);
    tmat_make(&m[4], FM_W_F32, 23, 33, 0, 0, FM_DT_F32);
    tmat_make(&m[5], FM_W_QAFFINE, 300, 128, 3, 128, FM_DT_F32);
    float *x[NM], *ref[NM], *y[NM];
    const fm__mat *W[NM];
    for (int i = 0; i < NM; i++) {
        W[i] = &m[i].m;
        x[i] = (i == 1) ? x[0] : rand_vec(m[i].m.cols);
        ref[i] = calloc((size_t)m[i].m.rows, sizeof(float));
        y[i] = calloc((size_t)m[i].m.rows, sizeof(float));
        fm__matmul(g_pool[1], W[i], x[i], m[i].m.cols, 1, ref[i], m[i].m.rows);
    }
    int same = 1;
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < NM; i++)
            for (int64_t r = 0; r < m[i].m.rows; r++) y[i][r] = NAN;
        fm__matvec_multi(g_pool[t], NM, W, (const float *const *)x, y);
        for (int i = 0; i < NM; i++)
            if (memcmp(y[i], ref[i], (size_t)m[i].m.rows * sizeof(float)) != 0) {
                same = 0;
                printf("# %s matvec_multi: matrix %d differs at %d threads\n", path, i, t);
            }
    }
    CHECK(same, "%s matvec_multi: bitwise equal to fm__matmul per matrix, threads 1-3", path);
    for (int i = 0; i < NM; i++) {
        if (i != 1) free(x[i]);
        free(ref[i]);
        free(y[i]);
        tmat_free(&m[i]);
    }
}

int main(void) {
    printf("# kernel path: %s\n", fm__kernel_path());
    CHECK(!fm__kernel_force("no-such-path"), "unknown path refused");
    CHECK(fm__kernel_force("scalar"), "scalar path always available");
    test_pool();
    test_packing();
    for (int t = 1; t <= 3; t++) g_pool[t] = fm__pool_new(t);
    test_prep();
    test_digits_error();
    int tested = 0;
    for (size_t i = 0; i < FM_ARRAY_LEN(g_paths); i++) {
        if (!fm__kernel_force(g_paths[i])) { printf("# path %s not available here\n", g_paths[i]); continue; }
        test_path(g_paths[i]);
        test_multi(g_paths[i]);
        test_digits_path(g_paths[i]);
        tested++;
    }
    CHECK(tested >= 1, "%d kernel paths tested", tested);
    for (int t = 1; t <= 3; t++) fm__pool_free(g_pool[t]);
    return TAP_DONE();
}
