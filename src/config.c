/* config.c: config.json reader (see config.h). */
#include "config.h"
#include "arch.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fm__config_free(fm__config *c) {
    if (!c) return;
    free(c->path);
    free(c->mlp_only_layers);
    free(c->eos_ids);
    free(c->layer_linear);
    fm__quant_config_free(&c->quant);
    cJSON_Delete(c->json);
    free(c);
}

static const cJSON *get(const fm__config *c, const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj ? obj : c->json, key);
    return (v && cJSON_IsNull(v)) ? NULL : v;
}

fm_status fm__cfg_num(const fm__config *c, const cJSON *obj, const char *key, bool required,
                      double *out) {
    const cJSON *v = get(c, obj, key);
    if (!v) return required ? fm__err(FM_ERR_FORMAT, "%s: missing key %s", c->path, key) : FM_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return fm__err(FM_ERR_FORMAT, "%s: key %s is not a number", c->path, key);
    *out = v->valuedouble;
    return FM_OK;
}

fm_status fm__cfg_int(const fm__config *c, const cJSON *obj, const char *key, bool required,
                      int32_t *out) {
    double d = 0;
    const cJSON *v = get(c, obj, key);
    if (!v) return required ? fm__err(FM_ERR_FORMAT, "%s: missing key %s", c->path, key) : FM_OK;
    fm_status rc = fm__cfg_num(c, obj, key, true, &d);
    if (rc != FM_OK) return rc;
    if (d != floor(d) || d < -2147483648.0 || d > 2147483647.0)
        return fm__err(FM_ERR_FORMAT, "%s: key %s is not a 32-bit integer", c->path, key);
    *out = (int32_t)d;
    return FM_OK;
}

fm_status fm__cfg_bool(const fm__config *c, const cJSON *obj, const char *key, bool required,
                       int *out) {
    const cJSON *v = get(c, obj, key);
    if (!v) return required ? fm__err(FM_ERR_FORMAT, "%s: missing key %s", c->path, key) : FM_OK;
    if (!cJSON_IsBool(v)) return fm__err(FM_ERR_FORMAT, "%s: key %s is not a boolean", c->path, key);
    *out = cJSON_IsTrue(v);
    return FM_OK;
}

fm_status fm__cfg_int_any(const fm__config *c, const char *const *keys, bool required,
                          int32_t *out) {
    for (int i = 0; keys[i]; i++)
        if (get(c, NULL, keys[i])) return fm__cfg_int(c, NULL, keys[i], true, out);
    if (!required) return FM_OK;
    char buf[256] = "";
    for (int i = 0; keys[i]; i++) {
        strncat(buf, i ? " or " : "", sizeof buf - strlen(buf) - 1);
        strncat(buf, keys[i], sizeof buf - strlen(buf) - 1);
    }
    return fm__err(FM_ERR_FORMAT, "%s: missing key %s", c->path, buf);
}

bool fm__config_layer_is_moe(const fm__config *c, int32_t i) {
    if (c->n_experts <= 0) return false;
    for (int32_t j = 0; j < c->n_mlp_only; j++)
        if (c->mlp_only_layers[j] == i) return false;
    return c->decoder_sparse_step <= 1 || (i + 1) % c->decoder_sparse_step == 0;
}

static fm_status int_list(fm__config *c, const char *key, int32_t **out, int32_t *n) {
    const cJSON *v = get(c, NULL, key);
    *out = NULL;
    *n = 0;
    if (!v) return FM_OK;
    if (cJSON_IsNumber(v)) { /* eos_token_id may be a single id */
        *out = malloc(sizeof **out);
        if (!*out) return fm__err(FM_ERR_NOMEM, "out of memory");
        (*out)[0] = (int32_t)v->valuedouble;
        *n = 1;
        return FM_OK;
    }
    if (!cJSON_IsArray(v)) return fm__err(FM_ERR_FORMAT, "%s: key %s is not a list", c->path, key);
    int m = cJSON_GetArraySize(v);
    *out = fm__calloc((size_t)(m ? m : 1), sizeof **out);
    if (!*out) return fm__err(FM_ERR_NOMEM, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            fabs(it->valuedouble) > 2147483647.0)
            return fm__err(FM_ERR_FORMAT, "%s: key %s has a non-integer item", c->path, key);
        (*out)[(*n)++] = (int32_t)it->valuedouble;
    }
    return FM_OK;
}

/* RoPE: top-level rope_theta / rope_scaling (published checkpoints) or transformers 5's
 * rope_parameters {rope_type, rope_theta, partial_rotary_factor}. */
static fm_status parse_rope(fm__config *c) {
    const cJSON *rp = get(c, NULL, "rope_parameters");
    const cJSON *rs = get(c, NULL, "rope_scaling");
    fm_status rc;
    c->rope_theta = c->arch->rope_theta;
    double pr = c->arch->partial_rotary > 0 ? c->arch->partial_rotary : 1.0;
    if ((rc = fm__cfg_num(c, NULL, "rope_theta", false, &c->rope_theta)) != FM_OK) return rc;
    if ((rc = fm__cfg_num(c, NULL, "partial_rotary_factor", false, &pr)) != FM_OK) return rc;
    const cJSON *typed = NULL;
    const char *where = "rope_scaling";
    if (rp) {
        if (!cJSON_IsObject(rp))
            return fm__err(FM_ERR_FORMAT, "%s: key rope_parameters is not an object", c->path);
        if ((rc = fm__cfg_num(c, rp, "rope_theta", false, &c->rope_theta)) != FM_OK) return rc;
        if ((rc = fm__cfg_num(c, rp, "partial_rotary_factor", false, &pr)) != FM_OK) return rc;
        typed = rp;
        where = "rope_parameters";
    } else if (rs) {
        if (!cJSON_IsObject(rs))
            return fm__err(FM_ERR_FORMAT, "%s: key rope_scaling is not an object", c->path);
        typed = rs;
    }
    if (typed) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(typed, "rope_type");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(typed, "type");
        if (t && !(cJSON_IsString(t) && strcmp(t->valuestring, "default") == 0))
            return fm__err(FM_ERR_UNSUPPORTED, "%s: %s.rope_type %s is not supported (default only)",
                           c->path, where, cJSON_IsString(t) ? t->valuestring : "?");
    }
    if (!(c->rope_theta > 0)) return fm__err(FM_ERR_FORMAT, "%s: rope_theta must be > 0", c->path);
    if (!(pr > 0 && pr <= 1))
        return fm__err(FM_ERR_FORMAT, "%s: partial_rotary_factor must be in (0, 1]", c->path);
    c->partial_rotary = (float)pr;
    return FM_OK;
}

static fm_status parse(fm__config *c) {
    fm_status rc;
    const cJSON *mt = get(c, NULL, "model_type");
    if (!mt) return fm__err(FM_ERR_FORMAT, "%s: missing key model_type", c->path);
    if (!cJSON_IsString(mt)) return fm__err(FM_ERR_FORMAT, "%s: key model_type is not a string", c->path);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    c->arch = fm__arch_find(mt->valuestring);
    if (!c->arch)
        return fm__err(FM_ERR_UNSUPPORTED, "%s: model_type %s is not supported (supported: %s)",
                       c->path, mt->valuestring, fm__arch_names());
    const fm__arch *a = c->arch;
    if ((rc = fm__cfg_int(c, NULL, "vocab_size", true, &c->vocab)) ||
        (rc = fm__cfg_int(c, NULL, "hidden_size", true, &c->hidden)) ||
        (rc = fm__cfg_int(c, NULL, "num_hidden_layers", true, &c->n_layers)) ||
        (rc = fm__cfg_int(c, NULL, "num_attention_heads", true, &c->n_heads)))
        return rc;
    c->n_kv_heads = c->n_heads;
    if ((rc = fm__cfg_int(c, NULL, "num_key_value_heads", false, &c->n_kv_heads))) return rc;
    if (c->hidden <= 0 || c->n_heads <= 0 || c->n_layers <= 0 || c->vocab <= 0 || c->n_kv_heads <= 0)
        return fm__err(FM_ERR_FORMAT, "%s: hidden_size, num_hidden_layers, num_attention_heads, "
                                      "num_key_value_heads and vocab_size must be > 0", c->path);
    if (c->n_heads % c->n_kv_heads)
        return fm__err(FM_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of "
                                      "num_key_value_heads %d", c->path, c->n_heads, c->n_kv_heads);
    c->head_dim = c->hidden / c->n_heads;
    if ((rc = fm__cfg_int(c, NULL, "head_dim", false, &c->head_dim))) return rc;
    if (c->head_dim <= 0 || c->head_dim % 2)
        return fm__err(FM_ERR_FORMAT, "%s: head_dim %d must be even and > 0", c->path, c->head_dim);
    if ((rc = fm__cfg_int(c, NULL, "intermediate_size", false, &c->inter))) return rc;
    static const char *const k_experts[] = {"num_experts", "num_local_experts", NULL};
    if ((rc = fm__cfg_int_any(c, k_experts, true, &c->n_experts)) ||
        (rc = fm__cfg_int(c, NULL, "num_experts_per_tok", true, &c->top_k)) ||
        (rc = fm__cfg_int(c, NULL, a->expert_inter_key, true, &c->moe_inter)))
        return rc;
    if (c->n_experts <= 0 || c->top_k <= 0 || c->top_k > c->n_experts || c->moe_inter <= 0)
        return fm__err(FM_ERR_FORMAT, "%s: need 0 < num_experts_per_tok <= num_experts and an "
                                      "expert intermediate size > 0", c->path);
    c->norm_topk_prob = a->norm_topk_prob;
    if ((rc = fm__cfg_bool(c, NULL, "norm_topk_prob", false, &c->norm_topk_prob))) return rc;
    if (a->always_norm_topk) c->norm_topk_prob = 1;
    c->decoder_sparse_step = 1;
    if ((rc = fm__cfg_int(c, NULL, "decoder_sparse_step", false, &c->decoder_sparse_step))) return rc;
    if (c->decoder_sparse_step < 1)
        return fm__err(FM_ERR_FORMAT, "%s: decoder_sparse_step must be >= 1", c->path);
    if ((rc = int_list(c, "mlp_only_layers", &c->mlp_only_layers, &c->n_mlp_only))) return rc;
    double eps = a->rms_eps;
    if ((rc = fm__cfg_num(c, NULL, "rms_norm_eps", false, &eps))) return rc;
    c->rms_eps = (float)eps;
    if ((rc = parse_rope(c))) return rc;
    if ((rc = fm__cfg_int(c, NULL, "max_position_embeddings", false, &c->max_pos))) return rc;
    int use_sw = 1;
    if ((rc = fm__cfg_bool(c, NULL, "use_sliding_window", false, &use_sw))) return rc;
    if ((rc = fm__cfg_int(c, NULL, "sliding_window", false, &c->sliding_window))) return rc;
    if (!use_sw || c->sliding_window < 0) c->sliding_window = 0;
    double clip = 0;
    if ((rc = fm__cfg_num(c, NULL, "clip_qkv", false, &clip))) return rc;
    c->clip_qkv = (float)clip;
    if ((rc = fm__cfg_bool(c, NULL, "tie_word_embeddings", false, &c->tie_embeddings))) return rc;
    if ((rc = fm__cfg_bool(c, NULL, "attention_bias", false, &c->attention_bias))) return rc;
    const cJSON *dt = get(c, NULL, "torch_dtype");
    if (!dt) dt = get(c, NULL, "dtype");
    if (dt && cJSON_IsString(dt)) snprintf(c->dtype, sizeof c->dtype, "%s", dt->valuestring);
    if ((rc = int_list(c, "eos_token_id", &c->eos_ids, &c->n_eos))) return rc;
    if ((rc = fm__quant_config_parse(c->path, c->json, &c->quant))) return rc;
    if (a->parse_config && (rc = a->parse_config(c, c->json))) return rc;
    return FM_OK;
}

fm_status fm__config_load(const char *dir, fm__config **out) {
    *out = NULL;
    fm__config *c = calloc(1, sizeof *c);
    if (!c) return fm__err(FM_ERR_NOMEM, "out of memory");
    c->path = fm__path_join(dir, "config.json");
    if (!c->path) { free(c); return fm__err(FM_ERR_NOMEM, "out of memory"); }
    char *text = NULL;
    size_t len = 0;
    fm_status rc = fm__read_file(c->path, &text, &len);
    if (rc == FM_OK) {
        c->json = cJSON_ParseWithLength(text, len);
        free(text);
        if (!c->json || !cJSON_IsObject(c->json))
            rc = fm__err(FM_ERR_FORMAT, "%s: not a JSON object", c->path);
    }
    if (rc == FM_OK) rc = parse(c);
    if (rc != FM_OK) { fm__config_free(c); return rc; }
    *out = c;
    return FM_OK;
}
