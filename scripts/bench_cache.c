/* bench_cache.c: decode driver for scripts/bench_cache.sh (built by it against the library).
 * Loads a model at a given cache capacity, prefills W pseudo-random tokens (warms the
 * cache), resets the cache statistics, then decodes N tokens one at a time, each a fresh
 * pseudo-random token (teacher forcing, so routing varies from token to token as in real
 * text; greedy decoding of a random-weight model repeats one token and would flatter the
 * cache). Prints one line of key=value figures. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_route(void *user, int32_t layer, const int32_t *ids, int32_t n) {
    FILE *f = user;
    fprintf(f, "%d", layer);
    for (int32_t i = 0; i < n; i++) fprintf(f, " %d", ids[i]);
    fputc('\n', f);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: bench_cache MODEL CAPACITY WARM DECODE CACHE_DIR [PREFETCH [TRACE]]\n");
        return 2;
    }
    fm_model_params p;
    fm_model_params_default(&p);
    p.capacity = atoi(argv[2]);
    int warm = atoi(argv[3]), n = atoi(argv[4]);
    p.cache_dir = argv[5];
    p.n_ctx = warm + n + 8;
    fm_set_log(NULL, NULL, FM_LOG_WARN);
    fm_model *m = NULL;
    if (fm__model_load(argv[1], &p, &m) != FM_OK) {
        fprintf(stderr, "bench_cache: %s\n", fm_last_error());
        return 1;
    }
    fm__ecache *c = fm__model_cache(m);
    if (argc > 6) fm__ec_set_prefetch(c, atoi(argv[6]));
    int32_t V = fm__model_vocab(m);
    fm__state *s = NULL;
    float *logits = malloc((size_t)V * sizeof *logits);
    int32_t *toks = malloc((size_t)(warm > 0 ? warm : 1) * sizeof *toks);
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < warm; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    if (!logits || !toks || fm__state_new(m, p.n_ctx, &s) != FM_OK ||
        (warm > 0 && fm__forward(m, s, toks, warm, logits, 0) != FM_OK)) {
        fprintf(stderr, "bench_cache: %s\n", fm_last_error());
        return 1;
    }
    fm__ec_reset_stats(c);
    FILE *tf = argc > 7 ? fopen(argv[7], "w") : NULL;
    if (tf) fm__ec_set_trace(c, on_route, tf);
    double *tt = calloc((size_t)(n > 0 ? n : 1), sizeof *tt), *tw = calloc((size_t)(n > 0 ? n : 1), sizeof *tw);
    double t0 = fm__now();
    for (int i = 0; i < n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int32_t t = (int32_t)((r >> 33) % (uint64_t)V);
        fm__ec_stats2 a, b;
        fm__ec_get_stats2(c, &a);
        double t1 = fm__now();
        if (fm__forward(m, s, &t, 1, logits, 0) != FM_OK) {
            fprintf(stderr, "bench_cache: %s\n", fm_last_error());
            return 1;
        }
        tt[i] = fm__now() - t1;
        fm__ec_get_stats2(c, &b);
        tw[i] = b.io_wait_s - a.io_wait_s;
    }
    double dt = fm__now() - t0;
    if (tf) {
        fm__ec_set_trace(c, NULL, NULL);
        fclose(tf);
    }
    /* medians: robust to other processes' bursts on a shared machine */
    double med_t = 0, med_c = 0;
    if (n > 0) {
        double *cc = calloc((size_t)n, sizeof *cc);
        for (int i = 0; i < n; i++) cc[i] = tt[i] - tw[i];
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) {
                if (tt[j] < tt[i]) { double x = tt[i]; tt[i] = tt[j]; tt[j] = x; }
                if (cc[j] < cc[i]) { double x = cc[i]; cc[i] = cc[j]; cc[j] = x; }
            }
        med_t = tt[n / 2];
        med_c = cc[n / 2];
        free(cc);
    }
    free(tt);
    free(tw);
    fm__ec_stats2 st;
    fm__ec_get_stats2(c, &st);
    printf("capacity=%d tok_s=%.4f hits=%lld misses=%lld bytes=%lld io_wait_s=%.4f read_gbps=%.3f "
           "time_s=%.4f med_tok_s=%.5f med_compute_s=%.5f prefetched=%lld prefetch_used=%lld "
           "rss_peak=%lld cache_bytes=%llu\n",
           fm__ec_capacity(c), n / dt, (long long)st.hits, (long long)st.misses,
           (long long)st.bytes_read, st.io_wait_s, st.read_gbps, dt, med_t, med_c,
           (long long)st.prefetched,
           (long long)st.prefetch_used, (long long)fm__rss_bytes(1),
           (unsigned long long)fm__ec_bytes(c));
    free(logits);
    free(toks);
    fm__state_free(s);
    fm_model_free(m);
    return 0;
}
