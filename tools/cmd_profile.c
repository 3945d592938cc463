/* cmd_profile.c: flash-moe profile MODEL --prompts FILE -o profile.json [--threshold 0.5]
 * Runs each prompt (one per line: prefill, then --gen greedy tokens) and records, per MoE
 * layer, how many prompts activated each expert. Experts activated by at least
 * int(threshold * prompts) prompts are "universal". The output is the original
 * flash-moe's profile JSON (layers keyed by model layer number, "universal",
 * "activation_counts", "total_unique"), which --profile reads back to pin them.
 * --ids reads prompts as comma-separated token ids (no tokenizer needed); --trace writes
 * every routing request ("prompt layer id id ...") for eviction studies. */
#include "cli.h"
#include "expert_cache.h"
#include "model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    uint8_t *seen; /* [layers * experts] activated by the current prompt */
    int32_t n_experts;
    FILE *trace;
    int prompt;
} prof_ctx;

static void on_route(void *user, int32_t layer, const int32_t *ids, int32_t n) {
    prof_ctx *p = user;
    for (int32_t i = 0; i < n; i++) p->seen[(size_t)layer * (size_t)p->n_experts + ids[i]] = 1;
    if (p->trace) {
        fprintf(p->trace, "%d %d", p->prompt, layer);
        for (int32_t i = 0; i < n; i++) fprintf(p->trace, " %d", ids[i]);
        fputc('\n', p->trace);
    }
}

static bool parse_ids(const char *s, int32_t **out, size_t *n) {
    size_t cap = 1;
    for (const char *q = s; *q; q++) cap += *q == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return false;
    *n = 0;
    const char *q = s;
    while (*q) {
        char *end;
        errno = 0;
        long v = strtol(q, &end, 10);
        if (end == q || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return false;
        }
        ids[(*n)++] = (int32_t)v;
        q = end;
        while (*q == ' ') q++;
        if (*q == ',') q++;
        else if (*q) {
            free(ids);
            return false;
        }
    }
    *out = ids;
    return *n > 0;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

int cmd_profile(int argc, char **argv) {
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    const char *prompts = NULL, *out_path = NULL, *trace_path = NULL;
    float threshold = 0.5f;
    int32_t gen = 10;
    int ids_mode = 0;
    cli_opt opts[] = {
        {"--prompts", NULL, CLI_STR, &prompts, "file with one prompt per line (required)"},
        {"--output", "-o", CLI_STR, &out_path, "profile JSON to write (required)"},
        {"--threshold", NULL, CLI_FLOAT, &threshold, "fraction of prompts that makes an expert universal"},
        {"--gen", NULL, CLI_INT, &gen, "greedy tokens generated after each prompt"},
        {"--ids", NULL, CLI_FLAG, &ids_mode, "prompt lines are comma-separated token ids"},
        {"--trace", NULL, CLI_STR, &trace_path, "also write every routing request to this file"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *usage = "flash-moe profile MODEL --prompts FILE -o profile.json [--threshold 0.5]";
    const char *pos[1];
    int n_pos = 0;
    int r = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &n_pos);
    if (r == 1) return 0;
    if (r) return 2;
    if (!prompts || !out_path) {
        fprintf(stderr, "flash-moe: profile needs --prompts and -o\nusage: %s\n", usage);
        return 2;
    }
    if (!(threshold > 0 && threshold <= 1) || gen < 0) {
        fprintf(stderr, "flash-moe: --threshold must be in (0, 1] and --gen >= 0\n");
        return 2;
    }
    const char *dir = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir) return 2;
    char *text = NULL;
    size_t tlen = 0;
    if (fm__read_file(prompts, &text, &tlen) != FM_OK) return cli_fail("--prompts");

    fm_model *m = cli_open_model(dir, &mo);
    if (!m) {
        free(text);
        return 1;
    }
    fm__ecache *cache = fm__model_cache(m);
    const fm__expert_map *map = fm__ec_map(cache);
    int32_t L = map->n_moe_layers, E = map->n_experts, V = fm__model_vocab(m);
    prof_ctx pc = {0};
    pc.n_experts = E;
    pc.seen = calloc((size_t)L * (size_t)E, 1);
    int32_t *counts = calloc((size_t)L * (size_t)E, sizeof *counts);
    float *logits = malloc((size_t)V * sizeof *logits);
    int rc = 1, n_prompts = 0;
    fm__state *st = NULL;
    cJSON *root = NULL;
    if (!pc.seen || !counts || !logits) {
        fprintf(stderr, "flash-moe: out of memory\n");
        goto done;
    }
    if (trace_path && !(pc.trace = fopen(trace_path, "w"))) {
        fprintf(stderr, "flash-moe: %s: %s\n", trace_path, strerror(errno));
        goto done;
    }
    fm__ec_set_trace(cache, on_route, &pc);
    double t0 = fm__now();
    int tty = isatty(2);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[--ll] = 0;
        if (ll == 0) continue;
        int32_t *ids = NULL;
        size_t n = 0;
        if (ids_mode) {
            if (!parse_ids(line, &ids, &n)) {
                fprintf(stderr, "flash-moe: %s: prompt %d: expected comma-separated token ids\n",
                        prompts, n_prompts + 1);
                goto done;
            }
        } else if (fm_tokenize(m, line, ll, 1, &ids, &n) != FM_OK) {
            cli_fail("tokenize");
            goto done;
        }
        memset(pc.seen, 0, (size_t)L * (size_t)E);
        pc.prompt = n_prompts;
        fm_status s = fm__state_new(m, (int32_t)n + gen, &st);
        if (s == FM_OK) s = fm__forward(m, st, ids, (int32_t)n, logits, 0);
        for (int32_t g = 0; g < gen && s == FM_OK; g++) {
            int32_t tok = argmax(logits, V);
            s = fm__forward(m, st, &tok, 1, logits, 0);
        }
        fm_free(ids);
        fm__state_free(st);
        st = NULL;
        if (s != FM_OK) {
            cli_fail("forward");
            goto done;
        }
        for (size_t i = 0; i < (size_t)L * (size_t)E; i++) counts[i] += pc.seen[i];
        n_prompts++;
        if (tty) fprintf(stderr, "\rprofile: %d prompts (%.1f s)", n_prompts, fm__now() - t0);
    }
    if (tty) fprintf(stderr, "\n");
    fm__ec_set_trace(cache, NULL, NULL);
    if (n_prompts == 0) {
        fprintf(stderr, "flash-moe: %s: no prompts\n", prompts);
        goto done;
    }
    /* The original's rule: universal if count >= int(threshold * num_prompts). */
    int32_t min_count = (int32_t)((double)threshold * n_prompts);
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", dir);
    cJSON_AddNumberToObject(root, "num_prompts", n_prompts);
    cJSON_AddNumberToObject(root, "threshold", threshold);
    cJSON_AddNumberToObject(root, "capacity", fm__ec_capacity(cache));
    cJSON_AddNumberToObject(root, "num_experts", E);
    cJSON_AddNumberToObject(root, "moe_layers", L);
    cJSON *layers = cJSON_AddObjectToObject(root, "layers");
    int32_t total_uni = 0;
    for (int32_t l = 0; l < L; l++) {
        char key[16];
        snprintf(key, sizeof key, "%d", map->layer_index ? map->layer_index[l] : l);
        cJSON *ly = cJSON_AddObjectToObject(layers, key);
        cJSON *uni = cJSON_AddArrayToObject(ly, "universal");
        cJSON *ac = cJSON_AddObjectToObject(ly, "activation_counts");
        int32_t uniq = 0;
        for (int32_t e = 0; e < E; e++) {
            int32_t c = counts[(size_t)l * E + e];
            if (!c) continue;
            uniq++;
            char ek[16];
            snprintf(ek, sizeof ek, "%d", e);
            cJSON_AddNumberToObject(ac, ek, c);
            if (c >= min_count) {
                cJSON_AddItemToArray(uni, cJSON_CreateNumber(e));
                total_uni++;
            }
        }
        cJSON_AddNumberToObject(ly, "total_unique", uniq);
    }
    char *js = cJSON_Print(root);
    FILE *f = js ? fopen(out_path, "w") : NULL;
    if (!f || fputs(js, f) < 0 || fputc('\n', f) < 0) {
        fprintf(stderr, "flash-moe: %s: %s\n", out_path, strerror(errno));
        if (f) fclose(f);
        free(js);
        goto done;
    }
    free(js);
    if (fclose(f) != 0) {
        fprintf(stderr, "flash-moe: %s: write failed\n", out_path);
        goto done;
    }
    fprintf(stderr, "profile: %d prompts, threshold %.2f (%d/%d), %d universal experts over %d "
            "layers (%.1f per layer) -> %s\n", n_prompts, (double)threshold, min_count, n_prompts,
            total_uni, L, (double)total_uni / L, out_path);
    if (mo.stats) fm__ec_log_stats(cache, FM_LOG_WARN);
    rc = 0;
done:
    if (pc.trace) fclose(pc.trace);
    cJSON_Delete(root);
    fm__state_free(st);
    fm_model_free(m);
    free(pc.seen);
    free(counts);
    free(logits);
    free(text);
    return rc;
}
