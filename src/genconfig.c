/* genconfig.c: reads a model's generation_config.json into generation defaults the way
 * transformers reads it (fm_gen_defaults_load), merges them with explicit choices and
 * describes where each value came from (genconfig.h). Used by `flash-moe run`, `chat` and
 * `serve`, so the three agree on a model's defaults. */
#include "genconfig.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define GEN_FILE "generation_config.json"

static const char *json_type(const cJSON *v) {
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "something else";
}

/* The field's value, or NULL if absent or null. */
static const cJSON *field(const cJSON *root, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A number field in [lo, hi] (lo_open: strictly above lo; range: that, in words). 1 = set,
 * 0 = absent, -1 = error (recorded, naming path and field). */
static int num_field(const cJSON *root, const char *path, const char *name, double lo, int lo_open,
                     double hi, const char *range, double *out) {
    const cJSON *v = field(root, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v)) {
        fm__err(FM_ERR_FORMAT, "%s: field %s: expected a number, got %s", path, name, json_type(v));
        return -1;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || (lo_open && d == lo) || d > hi) {
        fm__err(FM_ERR_FORMAT, "%s: field %s: %g is out of range (expected %s)", path, name, d, range);
        return -1;
    }
    *out = d;
    return 1;
}

/* An integer >= 0 that fits int32 (what = name shown in errors). */
static int int_value(const cJSON *v, const char *path, const char *what, int32_t *out) {
    if (!cJSON_IsNumber(v)) {
        fm__err(FM_ERR_FORMAT, "%s: field %s: expected an integer, got %s", path, what, json_type(v));
        return -1;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < 0 || d > 2147483647.0) {
        fm__err(FM_ERR_FORMAT, "%s: field %s: %g is not an integer in [0, 2147483647]", path, what, d);
        return -1;
    }
    *out = (int32_t)d;
    return 1;
}

static int int_field(const cJSON *root, const char *path, const char *name, int32_t *out) {
    const cJSON *v = field(root, name);
    return v ? int_value(v, path, name, out) : 0;
}

static fm_status parse(const cJSON *g, const char *path, fm_gen_defaults *d) {
    fm_gen_params *p = &d->params;
    if (!cJSON_IsObject(g))
        return fm__err(FM_ERR_FORMAT, "%s: expected a JSON object, got %s", path, json_type(g));
    const cJSON *ds = field(g, "do_sample");
    if (ds && !cJSON_IsBool(ds))
        return fm__err(FM_ERR_FORMAT, "%s: field do_sample: expected a boolean, got %s", path,
                       json_type(ds));
    d->do_sample = ds ? cJSON_IsTrue(ds) : -1;
    double x;
    int32_t k;
    int r;
    /* transformers: greedy unless do_sample; with it, temperature 1, top_k 50, top_p 1
     * stand where the file has no value */
    if ((r = num_field(g, path, "temperature", 0, 0, HUGE_VAL, ">= 0", &x)) < 0) return FM_ERR_FORMAT;
    p->temperature = d->do_sample == 1 ? (r ? (float)x : 1.0f) : 0.0f;
    d->from_file |= FM_GENCFG_TEMPERATURE;
    if ((r = num_field(g, path, "top_p", 0, 0, 1, "0 to 1", &x)) < 0) return FM_ERR_FORMAT;
    if (r) p->top_p = (float)x;
    if (r || d->do_sample == 1) d->from_file |= FM_GENCFG_TOP_P;
    if ((r = int_field(g, path, "top_k", &k)) < 0) return FM_ERR_FORMAT;
    if (r) p->top_k = k;
    else if (d->do_sample == 1) p->top_k = 50;
    if (r || d->do_sample == 1) d->from_file |= FM_GENCFG_TOP_K;
    if ((r = num_field(g, path, "min_p", 0, 0, 1, "0 to 1", &x)) < 0) return FM_ERR_FORMAT;
    if (r) {
        p->min_p = (float)x;
        d->from_file |= FM_GENCFG_MIN_P;
    }
    if ((r = num_field(g, path, "repetition_penalty", 0, 1, HUGE_VAL, "> 0", &x)) < 0) return FM_ERR_FORMAT;
    if (r) {
        p->repeat_penalty = (float)x;
        d->from_file |= FM_GENCFG_REPEAT_PENALTY;
    }
    if ((r = int_field(g, path, "max_new_tokens", &k)) < 0) return FM_ERR_FORMAT;
    if (r) {
        p->max_tokens = k;
        d->from_file |= FM_GENCFG_MAX_TOKENS;
    }
    const cJSON *eos = field(g, "eos_token_id");
    if (eos && cJSON_IsArray(eos)) {
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, eos) {
            char what[48];
            snprintf(what, sizeof what, "eos_token_id[%d]", i++);
            if (int_value(e, path, what, &k) < 0) return FM_ERR_FORMAT;
            if (d->n_eos < FM_GENCFG_MAX_EOS) d->eos_ids[d->n_eos++] = k;
        }
        if (i > FM_GENCFG_MAX_EOS)
            FM_LOGW("%s: eos_token_id has %d ids; the first %d are reported", path, i,
                    FM_GENCFG_MAX_EOS);
        d->from_file |= FM_GENCFG_EOS;
    } else if (eos) {
        if (!cJSON_IsNumber(eos))
            return fm__err(FM_ERR_FORMAT, "%s: field eos_token_id: expected an integer or a list "
                           "of integers, got %s", path, json_type(eos));
        if (int_value(eos, path, "eos_token_id", &k) < 0) return FM_ERR_FORMAT;
        d->eos_ids[d->n_eos++] = k;
        d->from_file |= FM_GENCFG_EOS;
    }
    return FM_OK;
}

static void reset(fm_gen_defaults *d) {
    memset(d, 0, sizeof *d);
    fm_gen_params_default(&d->params);
    d->do_sample = -1;
}

fm_status fm_gen_defaults_load(const char *model_dir, fm_gen_defaults *out) {
    if (!out) return fm__err(FM_ERR_ARG, "fm_gen_defaults_load: out is NULL");
    reset(out);
    if (!model_dir) return fm__err(FM_ERR_ARG, "fm_gen_defaults_load: model_dir is NULL");
    char *path = fm__path_join(model_dir, GEN_FILE);
    if (!path) return fm__err(FM_ERR_NOMEM, "out of memory");
    if (!fm__file_exists(path)) {
        free(path);
        return FM_OK;
    }
    char *txt = NULL;
    size_t n = 0;
    fm_status st = fm__read_file(path, &txt, &n);
    if (st == FM_OK) {
        const char *end = NULL;
        cJSON *g = cJSON_ParseWithLengthOpts(txt, n, &end, 0);
        if (!g) {
            size_t at = end && end >= txt ? (size_t)(end - txt) : 0;
            st = fm__err(FM_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", path, at);
        } else {
            out->found = 1;
            st = parse(g, path, out);
            cJSON_Delete(g);
        }
    }
    free(txt);
    free(path);
    if (st != FM_OK) {
        /* keep the message; leave the documented defaults */
        fm_gen_defaults keep;
        reset(&keep);
        *out = keep;
    }
    return st;
}

void fm__gen_apply(fm_gen_params *p, const fm_gen_defaults *d, uint32_t given) {
    if (!p || !d) return;
    uint32_t use = d->from_file & ~given;
    if (use & FM_GENCFG_TEMPERATURE) p->temperature = d->params.temperature;
    if (use & FM_GENCFG_TOP_P) p->top_p = d->params.top_p;
    if (use & FM_GENCFG_TOP_K) p->top_k = d->params.top_k;
    if (use & FM_GENCFG_MIN_P) p->min_p = d->params.min_p;
    if (use & FM_GENCFG_REPEAT_PENALTY) p->repeat_penalty = d->params.repeat_penalty;
    if (use & FM_GENCFG_MAX_TOKENS) p->max_tokens = d->params.max_tokens;
}

static const char *source(const fm_gen_defaults *d, uint32_t given, uint32_t bit) {
    if (given & bit) return "flag";
    if (d && (d->from_file & bit)) return GEN_FILE;
    return "default";
}

void fm__gen_describe(const fm_gen_params *p, const fm_gen_defaults *d, uint32_t given,
                      char *buf, size_t cap) {
    if (!buf || !cap) return;
    buf[0] = 0;
    if (!p) return;
    const char *greedy = "";
    if (d && d->found && d->do_sample != 1 && !(given & FM_GENCFG_TEMPERATURE))
        greedy = d->do_sample == 0 ? ", do_sample false" : ", no do_sample";
    int n = snprintf(buf, cap,
                     "temperature %g (%s%s), top_p %g (%s), top_k %d (%s), min_p %g (%s), "
                     "repeat_penalty %g (%s), max_tokens %d (%s)",
                     (double)p->temperature, source(d, given, FM_GENCFG_TEMPERATURE), greedy,
                     (double)p->top_p, source(d, given, FM_GENCFG_TOP_P), p->top_k,
                     source(d, given, FM_GENCFG_TOP_K), (double)p->min_p,
                     source(d, given, FM_GENCFG_MIN_P), (double)p->repeat_penalty,
                     source(d, given, FM_GENCFG_REPEAT_PENALTY), p->max_tokens,
                     source(d, given, FM_GENCFG_MAX_TOKENS));
    if (d && d->n_eos > 0 && n > 0 && (size_t)n < cap) {
        size_t at = (size_t)n;
        int w = snprintf(buf + at, cap - at, ", eos");
        for (int32_t i = 0; i < d->n_eos && w > 0 && (at += (size_t)w) < cap; i++)
            w = snprintf(buf + at, cap - at, "%s%d", i ? "," : " ", d->eos_ids[i]);
        if (w > 0 && (at += (size_t)w) < cap) snprintf(buf + at, cap - at, " (%s)", GEN_FILE);
    }
}
