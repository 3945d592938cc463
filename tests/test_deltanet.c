/* test_deltanet.c: the chunked gated delta rule (prefill) against the recurrent step
 * (decode) on random inputs with a nonzero initial state: outputs and final state within
 * ||chunked - recurrent|| / ||recurrent|| <= 1e-5, for lengths around the chunk size
 * (FM_GDR_CHUNK = 64) and several head dims, for the dispatched (SIMD) build and the
 * portable one; and within 2e-6 when strong decays make the cumulative log decay large. Both are also compared with the recurrence in double precision, and the
 * chunked form's result must not depend on the strides of its inputs. */
#include "backend/cpu/deltanet.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* The recurrence in double precision: S [dk][dv]. */
static void ref_double(double *S, int dk, int dv, int T, const float *q, const float *k,
                       const float *v, int ld, const float *g, const float *beta, float *o) {
    double *delta = malloc((size_t)dv * sizeof *delta);
    for (int t = 0; t < T; t++) {
        const float *qt = q + (size_t)t * ld, *kt = k + (size_t)t * ld, *vt = v + (size_t)t * ld;
        double dec = exp((double)g[t]);
        for (int i = 0; i < dk * dv; i++) S[i] *= dec;
        for (int j = 0; j < dv; j++) {
            double acc = 0;
            for (int i = 0; i < dk; i++) acc += S[(size_t)i * dv + j] * kt[i];
            delta[j] = (vt[j] - acc) * beta[t];
        }
        for (int i = 0; i < dk; i++)
            for (int j = 0; j < dv; j++) S[(size_t)i * dv + j] += kt[i] * delta[j];
        for (int j = 0; j < dv; j++) {
            double acc = 0;
            for (int i = 0; i < dk; i++) acc += S[(size_t)i * dv + j] * qt[i];
            o[(size_t)t * dv + j] = (float)acc;
        }
    }
    free(delta);
}

typedef void (*chunked_fn)(float *, int32_t, int32_t, int32_t, const float *, int64_t, const float *,
                           int64_t, const float *, int64_t, const float *, const float *, float *,
                           int64_t, float *);

/* spiky: slow decay (g in [-0.05, 0)) with a near-reset (g = -60) every 16th token, so the
 * cumulative log decay of a chunk is large while the decay between close tokens is not */
static void one_case(int dk, int dv, int T, int spiky, double *worst) {
    /* inputs as the model lays them out: one row per token holding q, k, v */
    int ld = 2 * dk + dv + 3;
    float *rows = malloc((size_t)T * ld * sizeof *rows), *g = malloc((size_t)T * 4), *beta = malloc((size_t)T * 4);
    float *S0 = malloc((size_t)dk * dv * 4), *Sr = malloc((size_t)dk * dv * 4), *Sc = malloc((size_t)dk * dv * 4);
    float *orr = malloc((size_t)T * dv * 4), *oc = malloc((size_t)T * dv * 4), *delta = malloc((size_t)dv * 4);
    float *od = malloc((size_t)T * dv * 4), *Sdf = malloc((size_t)dk * dv * 4);
    double *Sd = malloc((size_t)dk * dv * sizeof *Sd);
    float *work = malloc(fm__gdr_work_floats(dk, dv) * 4);
    for (int t = 0; t < T; t++) {
        float *r = rows + (size_t)t * ld;
        for (int i = 0; i < ld; i++) r[i] = frand();
        for (int h = 0; h < 2; h++) { /* L2-normalise q and k; q scaled by 1/sqrt(dk) */
            float *x = r + h * dk;
            double ss = 0;
            for (int i = 0; i < dk; i++) ss += (double)x[i] * x[i];
            float inv = (float)(1.0 / sqrt(ss + 1e-6)) * (h == 0 ? 1.0f / sqrtf((float)dk) : 1.0f);
            for (int i = 0; i < dk; i++) x[i] *= inv;
        }
        g[t] = -0.5f * (frand() + 1.0f) - 1e-3f; /* decay exp(g) in (0.37, 1) */
        if (spiky) g[t] = t % 16 == 3 ? -60.0f : -0.025f * (frand() + 1.0f) - 1e-4f;
        beta[t] = 0.5f * (frand() + 1.0f);
    }
    for (int i = 0; i < dk * dv; i++) S0[i] = frand();
    const float *q = rows, *k = rows + dk, *v = rows + 2 * dk;
    /* recurrent, float */
    memcpy(Sr, S0, (size_t)dk * dv * 4);
    for (int t = 0; t < T; t++)
        fm__gdr_step(Sr, k + (size_t)t * ld, q + (size_t)t * ld, v + (size_t)t * ld, beta[t], expf(g[t]),
                     dk, dv, delta, orr + (size_t)t * dv);
    for (int i = 0; i < dk * dv; i++) Sd[i] = S0[i];
    ref_double(Sd, dk, dv, T, q, k, v, ld, g, beta, od);
    for (int i = 0; i < dk * dv; i++) Sdf[i] = (float)Sd[i];
    chunked_fn fns[2] = {fm__gdr_chunked, fm__gdr_chunked_generic};
    const char *names[2] = {"dispatched", "portable"};
    for (int f = 0; f < 2; f++) {
        memcpy(Sc, S0, (size_t)dk * dv * 4);
        memset(oc, 0xff, (size_t)T * dv * 4); /* NaN: every output must be written */
        fns[f](Sc, dk, dv, T, q, ld, k, ld, v, ld, g, beta, oc, dv, work);
        double eo = tap_rel_err(oc, orr, (size_t)T * dv), es = tap_rel_err(Sc, Sr, (size_t)dk * dv);
        double xo = tap_rel_err(oc, od, (size_t)T * dv), xs = tap_rel_err(Sc, Sdf, (size_t)dk * dv);
        if (eo > *worst) *worst = eo;
        if (es > *worst) *worst = es;
        /* spiky: 2e-6, which subtracting cumulative sums (G_i - G_j) would exceed */
        double tol = spiky ? 2e-6 : 1e-5;
        CHECK(eo <= tol && es <= tol,
              "chunked (%s) = recurrent, dk %d dv %d T %d%s: rel err out %.2g state %.2g <= %g (vs double: "
              "chunked %.2g/%.2g)", names[f], dk, dv, T, spiky ? " spiky decay" : "", eo, es, tol, xo, xs);
    }
    if (T == 130 && dk == 32 && !spiky) {
        /* contiguous inputs give the same bits as strided ones */
        float *cq = malloc((size_t)T * dk * 4), *ck = malloc((size_t)T * dk * 4), *cv = malloc((size_t)T * dv * 4);
        float *o2 = malloc((size_t)T * dv * 4), *S2 = malloc((size_t)dk * dv * 4);
        for (int t = 0; t < T; t++) {
            memcpy(cq + (size_t)t * dk, q + (size_t)t * ld, (size_t)dk * 4);
            memcpy(ck + (size_t)t * dk, k + (size_t)t * ld, (size_t)dk * 4);
            memcpy(cv + (size_t)t * dv, v + (size_t)t * ld, (size_t)dv * 4);
        }
        memcpy(Sc, S0, (size_t)dk * dv * 4);
        memcpy(S2, S0, (size_t)dk * dv * 4);
        fm__gdr_chunked(Sc, dk, dv, T, q, ld, k, ld, v, ld, g, beta, oc, dv, work);
        fm__gdr_chunked(S2, dk, dv, T, cq, dk, ck, dk, cv, dv, g, beta, o2, dv, work);
        CHECK(memcmp(oc, o2, (size_t)T * dv * 4) == 0 && memcmp(Sc, S2, (size_t)dk * dv * 4) == 0,
              "chunked: strided and contiguous inputs give the same bits (dk %d dv %d T %d)", dk, dv, T);
        free(cq), free(ck), free(cv), free(o2), free(S2);
    }
    free(rows), free(g), free(beta), free(S0), free(Sr), free(Sc), free(orr), free(oc), free(delta);
    free(od), free(Sdf), free(Sd), free(work);
}

int main(void) {
    const int lens[] = {1, 5, 63, 64, 65, 130, 200};
    const int dims[][2] = {{16, 16}, {32, 32}, {32, 20}, {64, 48}, {128, 128}};
    double worst = 0;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) one_case(dims[d][0], dims[d][1], lens[l], 0, &worst);
    one_case(128, 128, 200, 1, &worst);
    one_case(32, 20, 130, 1, &worst);
    printf("# worst rel err chunked vs recurrent: %.3g\n", worst);
    return TAP_DONE();
}
