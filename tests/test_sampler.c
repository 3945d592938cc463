/* test_sampler.c: the sampler against hand-computed distributions and penalty formulas,
 * seeded reproducibility, the stop-string matcher across piece boundaries (checked against
 * a whole-text strstr oracle), UTF-8 piece safety and the repetition metrics. */
#include "tap.h"
#include "sampler.h"

#include <math.h>
#include <string.h>

static fm_gen_params defaults(void) {
    fm_gen_params p;
    fm_gen_params_default(&p);
    return p;
}

static int close_all(const float *a, const double *b, int n, double tol) {
    for (int i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > tol) return 0;
    return 1;
}

static void test_distributions(void) {
    enum { V = 5 };
    fm__sampler s;
    CHECK(fm__sampler_init(&s, V) == FM_OK, "sampler init");
    /* logits = ln p: at temperature 1 the distribution is p itself */
    const double p0[V] = {0.4, 0.3, 0.15, 0.1, 0.05};
    float lg[V], pr[V];
    for (int i = 0; i < V; i++) lg[i] = (float)log(p0[i]) + 3.0f; /* shift-invariant */
    fm_gen_params p = defaults();
    p.temperature = 1;
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, p0, V, 1e-6), "temperature 1 reproduces softmax");

    p.temperature = 2; /* p^(1/2), renormalized */
    double e[V], z = 0;
    for (int i = 0; i < V; i++) z += sqrt(p0[i]);
    for (int i = 0; i < V; i++) e[i] = sqrt(p0[i]) / z;
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, e, V, 1e-6), "temperature 2 = sqrt(p) renormalized");

    p.temperature = 1;
    p.top_k = 2;
    const double k2[V] = {0.4 / 0.7, 0.3 / 0.7, 0, 0, 0};
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, k2, V, 1e-6), "top-k 2 keeps the two most probable");

    p.top_k = 0;
    p.top_p = 0.75f; /* 0.4 + 0.3 = 0.7 < 0.75, so the 0.15 token is still needed */
    const double tp[V] = {0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0};
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, tp, V, 1e-6), "top-p 0.75 keeps mass 0.85");
    p.top_p = 0.35f;
    const double tp1[V] = {1, 0, 0, 0, 0};
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, tp1, V, 1e-6), "top-p 0.35 keeps only the top token");
    p.top_p = 0.0f;
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, tp1, V, 1e-6), "top-p 0 keeps only the top token");

    /* top-p after top-k renormalizes over top-k's set: {0.4,0.3,0.15}/0.85 with top_p 0.8:
     * 0.4/0.85=0.47 < 0.8, 0.7/0.85=0.82 >= 0.8 -> keep 2 */
    p.top_k = 3;
    p.top_p = 0.8f;
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, k2, V, 1e-6), "top-p is measured on top-k's renormalized mass");
    p.top_k = 0;
    p.top_p = 1;

    p.min_p = 0.3f; /* p >= 0.12 */
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, tp, V, 1e-6), "min-p 0.3 keeps p >= 0.3 * p_max");
    p.min_p = 0.5f; /* p >= 0.2 */
    fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
    CHECK(close_all(pr, k2, V, 1e-6), "min-p 0.5 keeps p >= 0.2");
    p.min_p = 0;

    /* empirical frequencies of seeded draws follow the distribution */
    p.top_k = 3;
    int cnt[V] = {0};
    fm__sampler_seed(&s, 7);
    const int N = 20000;
    for (int i = 0; i < N; i++) cnt[fm__sampler_sample(&s, &p, lg, NULL, 0)]++;
    double worst = 0;
    const double k3[V] = {0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0};
    for (int i = 0; i < V; i++) worst = fmax(worst, fabs(cnt[i] / (double)N - k3[i]));
    CHECK(worst < 0.015 && cnt[3] == 0 && cnt[4] == 0,
          "20000 draws match top-k 3 within 0.015 (worst %.4f)", worst);
    fm__sampler_free(&s);
}

/* Brute force over a large vocabulary: full sort, then the documented rules, in doubles.
 * Checks the sampler's partial (thresholded) sorting gives the same support and mass. */
typedef struct { double p; int id; } bf;
static int bf_cmp(const void *a, const void *b) {
    const bf *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

static void test_large_vocab(void) {
    enum { V = 20000 };
    static float lg[V], pr[V];
    static bf b[V];
    static double want[V];
    fm__sampler s;
    fm__sampler_init(&s, V);
    uint64_t x = 777;
    for (int i = 0; i < V; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(x >> 11) / 9007199254740992.0;
        lg[i] = (float)(8.0 * u * u * u); /* a few large logits, a long tail */
    }
    const int ks[] = {0, 1, 5, 40, 1000};
    const float ps[] = {1.0f, 0.5f, 0.9f, 0.99f};
    const float mps[] = {0.0f, 0.05f};
    int bad = 0, cases = 0;
    const float temps[] = {0.7f, 3.0f};
    for (int ti = 0; ti < 2; ti++)
    for (int ki = 0; ki < 5; ki++)
        for (int pi = 0; pi < 4; pi++)
            for (int mi = 0; mi < 2; mi++) {
                fm_gen_params p = defaults();
                const double T = temps[ti];
                p.temperature = temps[ti];
                p.top_k = ks[ki];
                p.top_p = ps[pi];
                p.min_p = mps[mi];
                fm__sampler_probs(&s, &p, lg, NULL, 0, pr);
                double mx = -1e30, z = 0;
                for (int i = 0; i < V; i++) mx = fmax(mx, lg[i] / T);
                for (int i = 0; i < V; i++) {
                    b[i].p = exp(lg[i] / T - mx);
                    b[i].id = i;
                }
                qsort(b, V, sizeof *b, bf_cmp);
                int m = V;
                if (p.top_k > 0 && p.top_k < m) m = p.top_k;
                for (int i = 0; i < m; i++) z += b[i].p;
                if (p.top_p < 1) {
                    double cum = 0;
                    int keep = 0;
                    while (keep < m && (keep == 0 || cum < p.top_p * z)) cum += b[keep++].p;
                    m = keep;
                }
                if (p.min_p > 0) {
                    int keep = 1;
                    while (keep < m && b[keep].p >= p.min_p * b[0].p) keep++;
                    m = keep;
                }
                z = 0;
                for (int i = 0; i < m; i++) z += b[i].p;
                memset(want, 0, sizeof want);
                for (int i = 0; i < m; i++) want[b[i].id] = b[i].p / z;
                int ok = 1;
                for (int i = 0; i < V && ok; i++)
                    if ((want[i] > 0) != (pr[i] > 0) || fabs(want[i] - pr[i]) > 1e-5) ok = 0;
                bad += !ok;
                cases++;
            }
    CHECK(bad == 0, "20000-token vocabulary: %d top-k/top-p/min-p combinations match a full sort (%d wrong)",
          cases, bad);
    fm__sampler_free(&s);
}

static void test_greedy_and_seeds(void) {
    enum { V = 1000 };
    fm__sampler s;
    fm__sampler_init(&s, V);
    static float lg[V];
    uint64_t x = 12345;
    for (int i = 0; i < V; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        lg[i] = (float)((x >> 40) % 10000) / 1000.0f;
    }
    int32_t am = 0;
    for (int i = 1; i < V; i++) if (lg[i] > lg[am]) am = i;
    fm_gen_params p = defaults();
    CHECK(fm__sampler_sample(&s, &p, lg, NULL, 0) == am, "temperature 0 is the arg max");
    lg[999] = lg[am];
    CHECK(fm__sampler_sample(&s, &p, lg, NULL, 0) == am, "greedy ties go to the lower id");

    p.temperature = 1.5f;
    p.top_p = 0.95f;
    int32_t a[200], b[200], c[200];
    fm__sampler_seed(&s, 42);
    for (int i = 0; i < 200; i++) a[i] = fm__sampler_sample(&s, &p, lg, NULL, 0);
    fm__sampler_seed(&s, 42);
    for (int i = 0; i < 200; i++) b[i] = fm__sampler_sample(&s, &p, lg, NULL, 0);
    fm__sampler_seed(&s, 43);
    for (int i = 0; i < 200; i++) c[i] = fm__sampler_sample(&s, &p, lg, NULL, 0);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same 200 tokens");
    int diff = 0;
    for (int i = 0; i < 200; i++) diff += a[i] != c[i];
    CHECK(diff > 100, "different seeds differ (%d of 200 tokens)", diff);
    fm__sampler_seed(&s, 0);
    double u = fm__sampler_uniform(&s);
    fm__sampler_seed(&s, 0);
    CHECK(u == fm__sampler_uniform(&s) && u >= 0 && u < 1, "seed 0 is a fixed default seed");
    fm__sampler_free(&s);
}

static void test_penalties(void) {
    fm__sampler s;
    fm__sampler_init(&s, 4);
    fm_gen_params p = defaults();
    p.repeat_penalty = 2;
    float pos[4] = {3.0f, 2.0f, 0, 0};
    int32_t ctx[3] = {0, 0, 2};
    /* llama.cpp: positive logits are divided: 3/2 = 1.5 < 2 */
    CHECK(fm__sampler_sample(&s, &p, pos, ctx, 3) == 1, "repeat penalty divides a positive logit");
    p.repeat_penalty = 1.4f; /* 3/1.4 = 2.14 > 2, applied once despite the repeat */
    CHECK(fm__sampler_sample(&s, &p, pos, ctx, 3) == 0, "repeat penalty applies once per distinct token");
    float neg[4] = {-1.0f, -1.5f, -9, -9};
    p.repeat_penalty = 2; /* negative logits are multiplied: -2 < -1.5 */
    CHECK(fm__sampler_sample(&s, &p, neg, ctx, 3) == 1, "repeat penalty multiplies a negative logit");
    /* only the last 64 tokens count */
    int32_t longctx[65];
    longctx[0] = 0;
    for (int i = 1; i < 65; i++) longctx[i] = 3;
    CHECK(fm__sampler_sample(&s, &p, pos, longctx, 65) == 0, "repeat window is 64 tokens");
    CHECK(fm__sampler_sample(&s, &p, pos, longctx, 64) == 1, "token 64 back is inside the window");

    /* OpenAI: logit - count*frequency - (count>0)*presence */
    p = defaults();
    float l2[4] = {3.0f, 1.4f, 0, 0};
    fm__sampler_accept(&s, 0);
    fm__sampler_accept(&s, 0);
    p.frequency_penalty = 0.6f;
    p.presence_penalty = 0.5f; /* 3 - 1.2 - 0.5 = 1.3 < 1.4 */
    CHECK(fm__sampler_sample(&s, &p, l2, NULL, 0) == 1, "frequency 0.6 x2 + presence 0.5 -> 1.3");
    p.frequency_penalty = 0.5f; /* 3 - 1.0 - 0.5 = 1.5 > 1.4 */
    CHECK(fm__sampler_sample(&s, &p, l2, NULL, 0) == 0, "frequency 0.5 x2 + presence 0.5 -> 1.5");
    p.frequency_penalty = 0;
    p.presence_penalty = 1.7f; /* 1.3 < 1.4, presence is not multiplied by the count */
    CHECK(fm__sampler_sample(&s, &p, l2, NULL, 0) == 1, "presence 1.7 -> 1.3");
    p.presence_penalty = 1.5f; /* 1.5 > 1.4 */
    CHECK(fm__sampler_sample(&s, &p, l2, NULL, 0) == 0, "presence 1.5 -> 1.5 (once, not per count)");
    p.presence_penalty = 1.7f;
    fm__sampler_reset_counts(&s);
    CHECK(fm__sampler_sample(&s, &p, l2, NULL, 0) == 0, "reset counts clears the penalties");
    CHECK(l2[0] == 3.0f, "logits are not modified");
    fm__sampler_free(&s);
}

/* Feeds text split at the given cut points; collects the released output. */
static int run_stopper(const char *text, const size_t *cuts, int n_cuts, const char *const *stops,
                       int n_stops, char *out, size_t *out_len, int *utf8_ok) {
    fm__stopper st;
    fm__stopper_init(&st, stops, n_stops);
    size_t prev = 0, o = 0;
    int matched = 0;
    *utf8_ok = 1;
    size_t tl = strlen(text);
    for (int i = 0; i <= n_cuts && !matched; i++) {
        size_t end = i < n_cuts ? cuts[i] : tl;
        const char *r;
        size_t rl;
        matched = fm__stopper_feed(&st, text + prev, end - prev, &r, &rl);
        if (rl && !fm__utf8_valid(r, rl)) *utf8_ok = 0;
        memcpy(out + o, r, rl);
        o += rl;
        prev = end;
    }
    if (!matched) {
        const char *r;
        size_t rl;
        fm__stopper_flush(&st, &r, &rl);
        memcpy(out + o, r, rl);
        o += rl;
    }
    fm__stopper_free(&st);
    out[o] = 0;
    *out_len = o;
    return matched;
}

static void test_stopper(void) {
    char out[512];
    size_t ol;
    int u8;
    const char *s1[] = {"</end>"};
    size_t c1[] = {7, 9};
    int m = run_stopper("Hello </end> more", c1, 2, s1, 1, out, &ol, &u8);
    CHECK(m == 1 && strcmp(out, "Hello ") == 0, "stop string split over three pieces ends output before it");

    /* released pieces hold back a possible prefix */
    fm__stopper st;
    const char *s2[] = {"abc"};
    fm__stopper_init(&st, s2, 1);
    const char *r;
    size_t rl;
    fm__stopper_feed(&st, "xa", 2, &r, &rl);
    CHECK(rl == 1 && r[0] == 'x', "a possible stop prefix is held back");
    fm__stopper_feed(&st, "bd", 2, &r, &rl);
    CHECK(rl == 3 && memcmp(r, "abd", 3) == 0, "held text is released when the match fails");
    fm__stopper_free(&st);

    const char *s3[] = {"zz", "cd"};
    m = run_stopper("abcdzz", NULL, 0, s3, 2, out, &ol, &u8);
    CHECK(m == 1 && strcmp(out, "ab") == 0, "the earliest of several stop strings wins");

    /* UTF-8: a character split over pieces is released whole */
    fm__stopper_init(&st, NULL, 0);
    fm__stopper_feed(&st, "a\xe4\xbd", 3, &r, &rl);
    CHECK(rl == 1 && r[0] == 'a', "an incomplete UTF-8 character is held back");
    fm__stopper_feed(&st, "\xa0ok", 3, &r, &rl);
    CHECK(rl == 5 && memcmp(r, "\xe4\xbd\xa0ok", 5) == 0, "the completed character is released whole");
    fm__stopper_free(&st);

    /* property: any split of any text gives strstr's answer, with valid UTF-8 pieces */
    const char *alpha[] = {"a", "b", "\xc3\xa9", "\xe2\x82\xac", " "};
    const char *s4[] = {"ab\xc3\xa9", "\xe2\x82\xac\xe2\x82\xac", "b a"};
    uint64_t x = 99;
    int bad = 0, bad_u8 = 0, n_matched = 0;
    for (int trial = 0; trial < 2000; trial++) {
        char text[256];
        size_t tl = 0;
        int nchar = 1 + (int)(x % 40);
        for (int i = 0; i < nchar; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            const char *a = alpha[(x >> 33) % 5];
            memcpy(text + tl, a, strlen(a));
            tl += strlen(a);
        }
        text[tl] = 0;
        size_t cuts[16];
        int nc = 0;
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        int want = (int)((x >> 33) % 16);
        size_t last = 0;
        for (int i = 0; i < want; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t cpos = last + (x >> 33) % (tl - last + 1);
            cuts[nc++] = cpos; /* byte cuts, possibly inside characters */
            last = cpos;
        }
        /* oracle: cut at the earliest strstr match */
        size_t expect = tl;
        for (int k = 0; k < 3; k++) {
            const char *h = strstr(text, s4[k]);
            if (h && (size_t)(h - text) < expect) expect = (size_t)(h - text);
        }
        int mm = run_stopper(text, cuts, nc, s4, 3, out, &ol, &u8);
        n_matched += mm;
        if (ol != expect || memcmp(out, text, expect) != 0 || mm != (expect < tl)) bad++;
        if (!u8) bad_u8++;
    }
    CHECK(bad == 0, "2000 random splits agree with strstr (%d wrong, %d matched)", bad, n_matched);
    CHECK(bad_u8 == 0, "every released piece is valid UTF-8 (%d bad)", bad_u8);
}

static void test_rep(void) {
    fm__rep r;
    char buf[512];
    memset(buf, 'a', 300);
    fm__rep_metrics(buf, 300, &r);
    CHECK(fabs(r.trigram_share - 1.0) < 1e-12, "all-'a' text has trigram share 1");
    /* "abc" repeated: 198 trigrams over the last 200 chars, 66 each of abc/bca/cab */
    for (int i = 0; i < 300; i++) buf[i] = (char)('a' + i % 3);
    fm__rep_metrics(buf, 300, &r);
    CHECK(fabs(r.trigram_share - 66.0 / 198.0) < 1e-12, "abc-repeated share 66/198 (%.4f)", r.trigram_share);
    const char *w = "a b c d a b c d";
    fm__rep_metrics(w, strlen(w), &r);
    CHECK(fabs(r.distinct4 - 0.8) < 1e-12, "distinct word 4-grams 4/5 (%.3f)", r.distinct4);
    const char *w2 = "one two three";
    fm__rep_metrics(w2, strlen(w2), &r);
    CHECK(r.distinct4 == 1.0, "fewer than 4 words: distinct-4 is 1");
    /* code points, not bytes: 200 x "é" (2 bytes) -> share 1; last 200 chars of 300 */
    size_t n = 0;
    for (int i = 0; i < 100; i++) buf[n++] = 'x';
    for (int i = 0; i < 200; i++) { buf[n++] = (char)0xc3; buf[n++] = (char)0xa9; }
    fm__rep_metrics(buf, n, &r);
    CHECK(fabs(r.trigram_share - 1.0) < 1e-12, "trigrams count code points over the last 200");
}

int main(void) {
    test_distributions();
    test_greedy_and_seeds();
    test_large_vocab();
    test_penalties();
    test_stopper();
    test_rep();
    return TAP_DONE();
}
