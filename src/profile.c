/* profile.c: expert profiles (which experts to pin). Reads the original flash-moe's
 * profile JSON:
 *   {"num_prompts": 22, "threshold": 0.5, "num_experts": 512,
 *    "layers": {"0": {"universal": [5, 17], "activation_counts": {"5": 12, "17": 12}}}}
 * Layer keys are model layer numbers (map->layer_index translates them to MoE layers).
 * Also accepted: "layers" as an array indexed by layer, "activation_counts" as an array
 * indexed by expert, and a layer without "universal" (universal is then derived from the
 * counts: count >= threshold * num_prompts). */
#include "ec_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MoE layer of model layer `ml`, or -1. */
static int32_t moe_of(const fm__expert_map *map, long ml) {
    if (!map->layer_index) return (ml >= 0 && ml < map->n_moe_layers) ? (int32_t)ml : -1;
    for (int32_t i = 0; i < map->n_moe_layers; i++)
        if (map->layer_index[i] == ml) return i;
    return -1;
}

static bool json_int(const cJSON *v, long *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (d != floor(d) || d < -2e9 || d > 2e9) return false;
    *out = (long)d;
    return true;
}

static bool parse_long(const char *s, long *out) {
    if (!s || !*s) return false;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end) return false;
    *out = v;
    return true;
}

/* Fills counts[n_experts] (-1 = absent) from an activation_counts object or array. */
static fm_status read_counts(const char *path, const char *lkey, const cJSON *ac, int32_t ne,
                             double *counts) {
    for (int32_t e = 0; e < ne; e++) counts[e] = -1;
    if (!ac) return FM_OK;
    if (cJSON_IsArray(ac)) {
        int32_t e = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, ac) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0)
                return fm__err(FM_ERR_FORMAT, "%s: layers.%s.activation_counts[%d]: not a "
                               "non-negative number", path, lkey, e);
            if (e >= ne)
                return fm__err(FM_ERR_FORMAT, "%s: layers.%s.activation_counts has more than "
                               "%d entries (the model has %d experts)", path, lkey, ne, ne);
            counts[e++] = v->valuedouble;
        }
        return FM_OK;
    }
    if (!cJSON_IsObject(ac))
        return fm__err(FM_ERR_FORMAT, "%s: layers.%s.activation_counts: expected an object or "
                       "array", path, lkey);
    const cJSON *v;
    cJSON_ArrayForEach(v, ac) {
        long id;
        if (!parse_long(v->string, &id) || id < 0 || id >= ne)
            return fm__err(FM_ERR_FORMAT, "%s: layers.%s.activation_counts: key \"%s\" is not an "
                           "expert id in [0, %d)", path, lkey, v->string ? v->string : "", ne);
        if (!cJSON_IsNumber(v) || v->valuedouble < 0)
            return fm__err(FM_ERR_FORMAT, "%s: layers.%s.activation_counts.%s: not a "
                           "non-negative number", path, lkey, v->string);
        counts[id] = v->valuedouble;
    }
    return FM_OK;
}

typedef struct { int32_t id; double count; int32_t pos; } pin_cand;

static int cand_cmp(const void *a, const void *b) {
    const pin_cand *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->pos - y->pos;
}

static fm_status load_layer(const char *path, const char *lkey, const cJSON *ly,
                            const fm__expert_map *map, int32_t moe, double min_count,
                            int32_t max_per_layer, uint8_t *pins, int32_t *n_pinned,
                            int32_t *dropped, double *counts, pin_cand *cand) {
    int32_t ne = map->n_experts;
    if (!cJSON_IsObject(ly))
        return fm__err(FM_ERR_FORMAT, "%s: layers.%s: expected an object", path, lkey);
    const cJSON *uni = cJSON_GetObjectItemCaseSensitive(ly, "universal");
    const cJSON *ac = cJSON_GetObjectItemCaseSensitive(ly, "activation_counts");
    fm_status st = read_counts(path, lkey, ac, ne, counts);
    if (st != FM_OK) return st;
    int32_t n = 0;
    if (uni) {
        if (!cJSON_IsArray(uni))
            return fm__err(FM_ERR_FORMAT, "%s: layers.%s.universal: expected an array of expert "
                           "ids", path, lkey);
        const cJSON *v;
        int32_t pos = 0;
        cJSON_ArrayForEach(v, uni) {
            long id;
            if (!json_int(v, &id) || id < 0 || id >= ne)
                return fm__err(FM_ERR_FORMAT, "%s: layers.%s.universal[%d]: not an expert id in "
                               "[0, %d)", path, lkey, pos, ne);
            bool dup = false;
            for (int32_t i = 0; i < n && !dup; i++) dup = cand[i].id == id;
            if (!dup) {
                cand[n].id = (int32_t)id;
                cand[n].count = counts[id];
                cand[n].pos = pos;
                n++;
            }
            pos++;
        }
    } else if (ac) {
        for (int32_t e = 0; e < ne; e++)
            if (counts[e] >= 0 && counts[e] >= min_count) {
                cand[n].id = e;
                cand[n].count = counts[e];
                cand[n].pos = e;
                n++;
            }
    } else {
        return fm__err(FM_ERR_FORMAT, "%s: layers.%s: neither \"universal\" nor "
                       "\"activation_counts\"", path, lkey);
    }
    if (moe < 0) return FM_OK;
    qsort(cand, (size_t)n, sizeof *cand, cand_cmp);
    uint8_t *lp = pins + (size_t)moe * (size_t)ne;
    int32_t have = 0;
    for (int32_t e = 0; e < ne; e++) have += lp[e] != 0;
    for (int32_t i = 0; i < n; i++) {
        if (lp[cand[i].id]) continue;
        if (have >= max_per_layer) {
            (*dropped)++;
            continue;
        }
        lp[cand[i].id] = 1;
        have++;
        (*n_pinned)++;
    }
    return FM_OK;
}

fm_status fm__profile_load(const char *path, const fm__expert_map *map, int32_t max_per_layer,
                           uint8_t *pins, int32_t *n_pinned) {
    *n_pinned = 0;
    char *text;
    size_t len;
    fm_status st = fm__read_file(path, &text, &len);
    if (st != FM_OK) return fm__err_ctx(st, "profile");
    const char *errp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &errp, 0);
    if (!root) {
        size_t off = errp ? (size_t)(errp - text) : 0;
        free(text);
        return fm__err(FM_ERR_FORMAT, "%s: malformed JSON near byte %zu", path, off);
    }
    free(text);
    int32_t ne = map->n_experts;
    double *counts = fm__malloc_array((size_t)ne, sizeof(double));
    pin_cand *cand = fm__malloc_array((size_t)ne, sizeof(pin_cand));
    st = FM_OK;
    if (!counts || !cand) {
        st = fm__err(FM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = fm__err(FM_ERR_FORMAT, "%s: expected a JSON object", path);
        goto done;
    }
    const cJSON *nexp = cJSON_GetObjectItemCaseSensitive(root, "num_experts");
    long v;
    if (nexp && (!json_int(nexp, &v) || v != ne)) {
        st = fm__err(FM_ERR_FORMAT, "%s: num_experts is %s, the model has %d experts per layer",
                     path, cJSON_IsNumber(nexp) ? "different" : "not a number", ne);
        goto done;
    }
    double thr = 0.5, nprompts = -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "threshold");
    if (cJSON_IsNumber(t)) thr = t->valuedouble;
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(root, "num_prompts");
    if (cJSON_IsNumber(np)) nprompts = np->valuedouble;
    /* The original's rule: universal if count >= int(threshold * num_prompts). */
    double min_count = nprompts > 0 ? floor(thr * nprompts) : 1;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (!layers || !(cJSON_IsObject(layers) || cJSON_IsArray(layers))) {
        st = fm__err(FM_ERR_FORMAT, "%s: missing \"layers\" (an object keyed by layer number, "
                     "or an array)", path);
        goto done;
    }
    int32_t dropped = 0, idx = 0, unknown = 0;
    const cJSON *ly;
    cJSON_ArrayForEach(ly, layers) {
        char key[32];
        long ml;
        if (cJSON_IsArray(layers)) {
            ml = idx;
            snprintf(key, sizeof key, "%d", idx);
        } else {
            snprintf(key, sizeof key, "%.20s", ly->string ? ly->string : "");
            if (!parse_long(ly->string, &ml) || ml < 0) {
                st = fm__err(FM_ERR_FORMAT, "%s: layers: key \"%s\" is not a layer number", path,
                             key);
                goto done;
            }
        }
        idx++;
        if (cJSON_IsNull(ly)) continue;
        int32_t moe = moe_of(map, ml);
        if (moe < 0) unknown++;
        st = load_layer(path, key, ly, map, moe, min_count, max_per_layer, pins, n_pinned,
                        &dropped, counts, cand);
        if (st != FM_OK) goto done;
    }
    if (unknown)
        FM_LOGW("%s: %d layer(s) are not MoE layers of this model; ignored", path, unknown);
    if (dropped)
        FM_LOGW("%s: %d universal expert(s) not pinned: at most %d pins per layer fit a capacity "
                "that must also hold top_k routed experts", path, dropped, max_per_layer);
done:
    free(counts);
    free(cand);
    cJSON_Delete(root);
    return st;
}
