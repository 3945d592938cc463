/* cmd_eval.c: flash-moe eval MODEL --tokens 1,2,3 --logits-out FILE [--decode]
 * The conformance contract: writes float32 little-endian logits, row-major
 * [n_tokens, vocab]. Without --decode all tokens go through one prefill; with --decode
 * they go one at a time through the KV cache. */
#include "cli.h"
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses "1,2,3" into a new array; returns false on bad syntax. */
static bool parse_tokens(const char *s, int32_t **out, int32_t *n) {
    *out = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return false;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) { free(ids); return false; }
        ids[(*n)++] = (int32_t)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) { free(ids); return false; }
    }
    *out = ids;
    return *n > 0;
}

int cmd_eval(int argc, char **argv) {
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    const char *tokens = NULL, *out_path = NULL;
    int decode = 0;
    cli_opt opts[] = {
        {"--tokens", NULL, CLI_STR, &tokens, "comma-separated token ids (required)"},
        {"--logits-out", "-o", CLI_STR, &out_path, "output file: float32 LE [n_tokens, vocab] (required)"},
        {"--decode", NULL, CLI_FLAG, &decode, "feed tokens one at a time through the KV cache"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *usage = "flash-moe eval MODEL --tokens 1,2,3 --logits-out FILE [--decode]";
    const char *pos[1];
    int n_pos = 0;
    int r = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &n_pos);
    if (r == 1) return 0;
    if (r) return 2;
    if (n_pos != 1 || !tokens || !out_path) {
        fprintf(stderr, "flash-moe: eval needs MODEL, --tokens and --logits-out\nusage: %s\n", usage);
        return 2;
    }
    int32_t *ids = NULL, n = 0;
    if (!parse_tokens(tokens, &ids, &n)) {
        fprintf(stderr, "flash-moe: --tokens: expected comma-separated non-negative ids\n");
        return 2;
    }
    if (mo.ctx == 0) mo.ctx = n; /* the KV cache needs only these positions */
    fm_model *m = cli_open_model(pos[0], &mo);
    if (!m) { free(ids); return 1; }
    int rc = 1;
    int32_t V = fm__model_vocab(m);
    float *logits = malloc((size_t)n * (size_t)V * sizeof *logits);
    fm__state *s = NULL;
    FILE *f = NULL;
    double t0 = fm__now();
    if (!logits) { fprintf(stderr, "flash-moe: out of memory\n"); goto done; }
    if (fm__state_new(m, n, &s) != FM_OK) { cli_fail("state"); goto done; }
    if (decode) {
        for (int32_t i = 0; i < n; i++)
            if (fm__forward(m, s, ids + i, 1, logits + (size_t)i * V, 0) != FM_OK) { cli_fail("forward"); goto done; }
    } else if (fm__forward(m, s, ids, n, logits, 1) != FM_OK) {
        cli_fail("forward");
        goto done;
    }
    double dt = fm__now() - t0;
    f = fopen(out_path, "wb");
    if (!f || fwrite(logits, sizeof *logits, (size_t)n * V, f) != (size_t)n * V) {
        fprintf(stderr, "flash-moe: %s: %s\n", out_path, strerror(errno));
        goto done;
    }
    if (mo.stats) {
        fm__ec_stats st;
        fm__ec_get_stats(fm__model_cache(m), &st);
        fprintf(stderr, "eval: %d tokens in %.3f s (%.1f tok/s, %s), cache hits %lld misses %lld "
                        "skipped %lld, %.1f MiB read\n",
                n, dt, n / (dt > 0 ? dt : 1e-9), decode ? "decode" : "prefill",
                (long long)st.hits, (long long)st.misses, (long long)st.skipped,
                (double)st.bytes_read / 1048576.0);
        /* per-layer hit rates, read GB/s, I/O wait, prefetch */
        fm__ec_log_stats(fm__model_cache(m), FM_LOG_WARN);
    }
    rc = 0;
done:
    if (f && fclose(f) != 0 && rc == 0) { fprintf(stderr, "flash-moe: %s: write failed\n", out_path); rc = 1; }
    fm__state_free(s);
    fm_model_free(m);
    free(logits);
    free(ids);
    return rc;
}
