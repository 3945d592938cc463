/* test_genconfig.c: fm_gen_defaults_load on hand-written generation_config.json files (the
 * expected values are the JSON written here), transformers' reading of do_sample, errors
 * naming the file or the field, and the merge with explicit choices (fm__gen_apply). */
#include "tap.h"
#include "flashmoe.h"
#include "genconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[64];

static void write_gen(const char *json) {
    char p[128];
    snprintf(p, sizeof p, "%s/generation_config.json", g_dir);
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); exit(1); }
    fputs(json, f);
    fclose(f);
}

static int near(float a, double b) { return a > b - 1e-6 && a < b + 1e-6; }

static fm_status load(const char *json, fm_gen_defaults *d) {
    write_gen(json);
    return fm_gen_defaults_load(g_dir, d);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fm-genconfig-XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    fm_gen_defaults d;
    fm_gen_params def;
    fm_gen_params_default(&def);

    /* missing file: no error, library defaults, nothing from the file */
    fm_status st = fm_gen_defaults_load(g_dir, &d);
    CHECK(st == FM_OK && d.found == 0 && d.from_file == 0 && d.n_eos == 0,
          "missing file: FM_OK, found 0, nothing from the file");
    CHECK(memcmp(&d.params, &def, sizeof def) == 0, "missing file: params are fm_gen_params_default()");

    /* a Qwen3-style file: do_sample with every field, eos as a list */
    st = load("{\"bos_token_id\": 151643, \"do_sample\": true, \"eos_token_id\": [151645, 151643],"
              " \"pad_token_id\": 151643, \"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95,"
              " \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"max_new_tokens\": 321,"
              " \"transformers_version\": \"4.51.0\"}", &d);
    CHECK(st == FM_OK && d.found == 1 && d.do_sample == 1, "full file loads [%s]", fm_last_error());
    CHECK(near(d.params.temperature, 0.6) && near(d.params.top_p, 0.95) && d.params.top_k == 20 &&
          near(d.params.min_p, 0.05) && near(d.params.repeat_penalty, 1.1) && d.params.max_tokens == 321,
          "full file: temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens");
    CHECK(d.n_eos == 2 && d.eos_ids[0] == 151645 && d.eos_ids[1] == 151643, "eos_token_id as a list");
    CHECK(d.from_file == (FM_GENCFG_TEMPERATURE | FM_GENCFG_TOP_P | FM_GENCFG_TOP_K | FM_GENCFG_MIN_P |
                          FM_GENCFG_REPEAT_PENALTY | FM_GENCFG_MAX_TOKENS | FM_GENCFG_EOS),
          "full file: every field marked as from the file (0x%x)", d.from_file);

    /* eos as an int; do_sample absent: greedy (transformers), other fields still read */
    st = load("{\"eos_token_id\": 2, \"temperature\": 0.9, \"top_p\": 0.5, \"repetition_penalty\": 1.2}", &d);
    CHECK(st == FM_OK && d.n_eos == 1 && d.eos_ids[0] == 2 && (d.from_file & FM_GENCFG_EOS),
          "eos_token_id as an int");
    CHECK(d.do_sample == -1 && d.params.temperature == 0.0f && (d.from_file & FM_GENCFG_TEMPERATURE),
          "no do_sample: greedy (temperature 0 from the file)");
    CHECK(near(d.params.top_p, 0.5) && near(d.params.repeat_penalty, 1.2) && !(d.from_file & FM_GENCFG_TOP_K) &&
          d.params.top_k == 0 && !(d.from_file & FM_GENCFG_MAX_TOKENS),
          "no do_sample: top_p and repetition_penalty kept, absent top_k/max_new_tokens not marked");

    /* do_sample true with nothing else: transformers' temperature 1, top_k 50, top_p 1 */
    st = load("{\"do_sample\": true}", &d);
    CHECK(st == FM_OK && d.params.temperature == 1.0f && d.params.top_k == 50 && d.params.top_p == 1.0f &&
          d.n_eos == 0 && !(d.from_file & FM_GENCFG_MIN_P),
          "do_sample alone: temperature 1, top_k 50, top_p 1");
    st = load("{\"do_sample\": false, \"temperature\": 0.7, \"eos_token_id\": null}", &d);
    CHECK(st == FM_OK && d.do_sample == 0 && d.params.temperature == 0.0f && d.n_eos == 0,
          "do_sample false: greedy; null eos_token_id is absent");

    /* malformed JSON: error naming the file */
    char path[128];
    snprintf(path, sizeof path, "%s/generation_config.json", g_dir);
    st = load("{\"do_sample\": true, \"temperature\": 0.7,", &d);
    CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), path) && strstr(fm_last_error(), "JSON"),
          "malformed JSON: FM_ERR_FORMAT naming the file [%s]", fm_last_error());
    CHECK(d.found == 0 && memcmp(&d.params, &def, sizeof def) == 0, "malformed JSON: params left at the defaults");
    st = load("[0.7]", &d);
    CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), path) && strstr(fm_last_error(), "object"),
          "not an object: error naming the file [%s]", fm_last_error());

    /* wrong types and ranges: error naming the field */
    static const struct { const char *json, *field; } bad[] = {
        {"{\"temperature\": \"0.7\"}", "field temperature"},
        {"{\"top_k\": 2.5}", "field top_k"},
        {"{\"top_k\": -1}", "field top_k"},
        {"{\"top_p\": 1.5}", "field top_p"},
        {"{\"min_p\": true}", "field min_p"},
        {"{\"repetition_penalty\": 0}", "field repetition_penalty"},
        {"{\"max_new_tokens\": \"many\"}", "field max_new_tokens"},
        {"{\"do_sample\": \"yes\"}", "field do_sample"},
        {"{\"eos_token_id\": \"</s>\"}", "field eos_token_id"},
        {"{\"eos_token_id\": [2, \"x\"]}", "field eos_token_id[1]"},
        {"{\"eos_token_id\": [2, -3]}", "field eos_token_id[1]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        st = load(bad[i].json, &d);
        CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), bad[i].field) && strstr(fm_last_error(), path),
              "%s: error names the file and the %s [%s]", bad[i].json, bad[i].field, fm_last_error());
    }

    /* merge: explicit choices win, the file fills the rest, absent fields keep the caller's */
    st = load("{\"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.9, \"top_k\": 20,"
              " \"repetition_penalty\": 1.05}", &d);
    fm_gen_params p;
    fm_gen_params_default(&p);
    p.temperature = 0.0f; /* given */
    p.top_p = 0.5f;       /* not given: the file's 0.9 */
    p.min_p = 0.1f;       /* not given, not in the file: kept */
    p.max_tokens = 77;    /* not given, not in the file: kept */
    fm__gen_apply(&p, &d, FM_GENCFG_TEMPERATURE);
    CHECK(st == FM_OK && p.temperature == 0.0f && near(p.top_p, 0.9) && p.top_k == 20 &&
          near(p.repeat_penalty, 1.05) && near(p.min_p, 0.1) && p.max_tokens == 77,
          "apply: flag wins, file fills, absent fields keep the caller's values");
    char line[512];
    fm__gen_describe(&p, &d, FM_GENCFG_TEMPERATURE, line, sizeof line);
    CHECK(strstr(line, "temperature 0 (flag)") && strstr(line, "top_p 0.9 (generation_config.json)") &&
          strstr(line, "min_p 0.1 (default)"), "describe names each value's source [%s]", line);

    unlink(path);
    rmdir(g_dir);
    return TAP_DONE();
}
