/* quant_config.h: the MLX quantization settings of a checkpoint: config.json's
 * "quantization" (or "quantization_config") object: default group_size/bits/mode plus
 * per-module overrides keyed by module path ({"group_size":..,"bits":..} or false). */
#ifndef FM_QUANT_CONFIG_H
#define FM_QUANT_CONFIG_H

#include "common.h"

struct cJSON;

typedef struct fm__quant_override {
    char *path;       /* module path, e.g. "model.layers.0.mlp.gate" */
    int quantized;    /* 0: the module is stored unquantized */
    int32_t bits, group;
} fm__quant_override;

typedef struct fm__quant_config {
    int enabled;      /* 1 if the checkpoint declares MLX quantization */
    int32_t bits, group;
    int32_t n_over;
    fm__quant_override *over;
} fm__quant_config;

/* Parses the quantization object of config.json (root); absent = disabled. A mode other
 * than "affine" or a non-MLX quant_method is FM_ERR_UNSUPPORTED naming it. */
fm_status fm__quant_config_parse(const char *path, const struct cJSON *root,
                                 fm__quant_config *q);
void fm__quant_config_free(fm__quant_config *q);

/* Settings for the module at path (without ".weight"): returns 1 and fills bits/group
 * if it is quantized, 0 if not. */
int fm__quant_for(const fm__quant_config *q, const char *module, int32_t *bits, int32_t *group);

#endif
