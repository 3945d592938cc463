/* test_ops.c: the forward pass's vector helpers (RMSNorm, RoPE, axpy) against their
 * textbook formulas on sizes that are and are not multiples of the 8-float vector, so the
 * vector body and the scalar tail are both checked. RMSNorm against a long double
 * reference (its sum of squares runs in 8 lanes, so its bits are its own); RoPE and axpy
 * bitwise against the formula evaluated in float, which they must round the same way. */
#include "tap.h"
#include "backend/ops.h"

#include <string.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(float scale) { /* uniform in [-scale, scale) */
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return scale * ((float)(g_rng >> 40) / (float)(1u << 23) - 1.0f);
}

static const int sizes[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 64, 127, 128, 129, 2048, 2051};

static void test_rmsnorm(void) {
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int n = sizes[si];
        float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w), *out = malloc(n * sizeof *out);
        /* magnitudes from 1e-3 to 1e3 so a lost or misplaced element shows */
        for (int i = 0; i < n; i++) {
            x[i] = frand(1.0f) * (i % 5 == 0 ? 1000.0f : i % 3 == 0 ? 0.001f : 1.0f);
            w[i] = 0.5f + frand(0.5f);
        }
        const float eps = 1e-6f;
        fm__rmsnorm(out, x, w, n, eps);
        long double ss = 0;
        for (int i = 0; i < n; i++) ss += (long double)x[i] * x[i];
        const long double r = 1.0L / sqrtl(ss / n + eps);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            const long double ref = (long double)w[i] * x[i] * r;
            const double scale = fabs((double)ref) > 1e-30 ? fabs((double)ref) : 1e-30;
            const double e = fabs((double)(out[i] - ref)) / scale;
            worst = e > worst ? e : worst;
        }
        /* three float roundings (r, x * r, w * ...) and the sum: well under 1e-6 */
        CHECK(worst < 1e-6, "rmsnorm n=%d: relative error %.2e against long double", n, worst);
        float *inplace = malloc(n * sizeof *inplace);
        memcpy(inplace, x, n * sizeof *x);
        fm__rmsnorm(inplace, inplace, w, n, eps);
        CHECK(memcmp(inplace, out, n * sizeof *out) == 0, "rmsnorm n=%d: in place gives the same bits", n);
        free(x); free(w); free(out); free(inplace);
    }
}

static void test_rope(void) {
    /* (head_dim, rot): full and partial rotary, halves of 1, 6, 20, 64 dims */
    static const int shapes[][2] = {{2, 2}, {20, 12}, {64, 40}, {128, 128}, {64, 64}, {36, 34}};
    const int nh = 3;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int hd = shapes[si][0], rot = shapes[si][1], half = rot / 2;
        float *x = malloc(nh * hd * sizeof *x), *ref = malloc(nh * hd * sizeof *ref);
        float *cs = malloc(half * sizeof *cs), *sn = malloc(half * sizeof *sn);
        for (int i = 0; i < nh * hd; i++) x[i] = ref[i] = frand(2.0f);
        for (int i = 0; i < half; i++) {
            const float t = frand(3.14159f);
            cs[i] = cosf(t);
            sn[i] = sinf(t);
        }
        for (int h = 0; h < nh; h++) /* rotate_half: (a, b) -> (a cos - b sin, b cos + a sin) */
            for (int i = 0; i < half; i++) {
                float *v = ref + h * hd;
                const float a = v[i], b = v[i + half];
                const float ra = a * cs[i] - b * sn[i], rb = b * cs[i] + a * sn[i];
                v[i] = ra;
                v[i + half] = rb;
            }
        fm__rope(x, nh, hd, rot, cs, sn);
        CHECK(memcmp(x, ref, nh * hd * sizeof *x) == 0,
              "rope head_dim %d rot %d: bitwise the rotate_half formula, dims past rot untouched", hd, rot);
        free(x); free(ref); free(cs); free(sn);
    }
}

static void test_axpy(void) {
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int n = sizes[si];
        float *y = malloc(n * sizeof *y), *x = malloc(n * sizeof *x), *ref = malloc(n * sizeof *ref);
        for (int i = 0; i < n; i++) {
            y[i] = frand(10.0f);
            x[i] = frand(10.0f);
        }
        const float a = frand(2.0f);
        for (int i = 0; i < n; i++) {
            const float ax = a * x[i];
            ref[i] = y[i] + ax;
        }
        fm__axpy(y, a, x, n);
        int same = memcmp(y, ref, n * sizeof *y) == 0;
        for (int i = 0; i < n; i++) ref[i] = y[i] + x[i];
        fm__axpy(y, 1.0f, x, n);
        same = same && memcmp(y, ref, n * sizeof *y) == 0;
        CHECK(same, "axpy n=%d: bitwise y + a*x, and y + x for a = 1", n);
        free(y); free(x); free(ref);
    }
}

int main(void) {
    test_rmsnorm();
    test_rope();
    test_axpy();
    return TAP_DONE();
}
