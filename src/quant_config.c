/* quant_config.c: MLX quantization settings from config.json (see quant_config.h). */
#include "quant_config.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

void fm__quant_config_free(fm__quant_config *q) {
    if (!q) return;
    for (int32_t i = 0; i < q->n_over; i++) free(q->over[i].path);
    free(q->over);
    memset(q, 0, sizeof *q);
}

static bool valid_bits(double b) { return b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8; }
static bool valid_group(double g) { return g == 32 || g == 64 || g == 128; }

fm_status fm__quant_config_parse(const char *path, const cJSON *root, fm__quant_config *q) {
    memset(q, 0, sizeof *q);
    const char *key = "quantization";
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!o || cJSON_IsNull(o)) {
        key = "quantization_config";
        o = cJSON_GetObjectItemCaseSensitive(root, key);
    }
    if (!o || cJSON_IsNull(o)) return FM_OK;
    if (!cJSON_IsObject(o)) return fm__err(FM_ERR_FORMAT, "%s: %s is not an object", path, key);
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(o, "quant_method");
    if (qm && !(cJSON_IsString(qm) && strcmp(qm->valuestring, "mlx") == 0))
        return fm__err(FM_ERR_UNSUPPORTED, "%s: %s.quant_method %s is not supported (MLX affine only)",
                       path, key, cJSON_IsString(qm) ? qm->valuestring : "?");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(o, "mode");
    if (mode && !(cJSON_IsString(mode) && strcmp(mode->valuestring, "affine") == 0))
        return fm__err(FM_ERR_UNSUPPORTED, "%s: %s.mode %s is not supported (affine only)", path,
                       key, cJSON_IsString(mode) ? mode->valuestring : "?");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "bits");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "group_size");
    if (!cJSON_IsNumber(b) || !valid_bits(b->valuedouble))
        return fm__err(FM_ERR_FORMAT, "%s: %s.bits missing or not in {2,3,4,5,6,8}", path, key);
    if (!cJSON_IsNumber(g) || !valid_group(g->valuedouble))
        return fm__err(FM_ERR_FORMAT, "%s: %s.group_size missing or not in {32,64,128}", path, key);
    q->enabled = 1;
    q->bits = (int32_t)b->valuedouble;
    q->group = (int32_t)g->valuedouble;
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        if (!cJSON_IsObject(it) && !cJSON_IsFalse(it)) continue; /* bits, group_size, mode ... */
        fm__quant_override ov = {0};
        ov.quantized = cJSON_IsObject(it);
        ov.bits = q->bits;
        ov.group = q->group;
        if (ov.quantized) {
            const cJSON *ob = cJSON_GetObjectItemCaseSensitive(it, "bits");
            const cJSON *og = cJSON_GetObjectItemCaseSensitive(it, "group_size");
            const cJSON *om = cJSON_GetObjectItemCaseSensitive(it, "mode");
            if (om && !(cJSON_IsString(om) && strcmp(om->valuestring, "affine") == 0))
                return fm__err(FM_ERR_UNSUPPORTED, "%s: %s[%s].mode %s is not supported (affine only)",
                               path, key, it->string, cJSON_IsString(om) ? om->valuestring : "?");
            if (ob) {
                if (!cJSON_IsNumber(ob) || !valid_bits(ob->valuedouble))
                    return fm__err(FM_ERR_FORMAT, "%s: %s[%s].bits not in {2,3,4,5,6,8}", path, key,
                                   it->string);
                ov.bits = (int32_t)ob->valuedouble;
            }
            if (og) {
                if (!cJSON_IsNumber(og) || !valid_group(og->valuedouble))
                    return fm__err(FM_ERR_FORMAT, "%s: %s[%s].group_size not in {32,64,128}", path,
                                   key, it->string);
                ov.group = (int32_t)og->valuedouble;
            }
        }
        fm__quant_override *no = realloc(q->over, (size_t)(q->n_over + 1) * sizeof *no);
        if (!no) return fm__err(FM_ERR_NOMEM, "out of memory");
        q->over = no;
        ov.path = fm__strdup(it->string);
        if (!ov.path) return fm__err(FM_ERR_NOMEM, "out of memory");
        q->over[q->n_over++] = ov;
    }
    return FM_OK;
}

int fm__quant_for(const fm__quant_config *q, const char *module, int32_t *bits, int32_t *group) {
    if (!q->enabled) return 0;
    for (int32_t i = 0; i < q->n_over; i++) {
        if (strcmp(q->over[i].path, module) == 0) {
            if (!q->over[i].quantized) return 0;
            *bits = q->over[i].bits;
            *group = q->over[i].group;
            return 1;
        }
    }
    *bits = q->bits;
    *group = q->group;
    return 1;
}
