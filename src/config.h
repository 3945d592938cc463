/* config.h: a model's config.json, read into one struct. Accepts both spellings of the
 * keys that differ between published checkpoints / MLX conversions and transformers 5
 * (rope_theta vs rope_parameters, num_experts vs num_local_experts, torch_dtype vs dtype).
 * Architecture-specific defaults and keys come from the architecture table (arch.h). */
#ifndef FM_CONFIG_H
#define FM_CONFIG_H

#include "common.h"
#include "quant_config.h"

struct cJSON;
struct fm__arch;

typedef struct fm__config {
    char *path;                    /* config.json path, for messages */
    char model_type[64];
    const struct fm__arch *arch;
    int32_t vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim;
    int32_t inter;                 /* dense MLP intermediate size (0 = none) */
    int32_t moe_inter;             /* routed expert intermediate size */
    int32_t shared_inter;          /* shared expert intermediate size (0 = none) */
    int32_t n_experts, top_k;
    int norm_topk_prob;            /* renormalize the top-k routing weights */
    int32_t decoder_sparse_step;   /* MoE on layers with (i+1) % step == 0 */
    int32_t n_mlp_only, *mlp_only_layers;
    float rms_eps;
    double rope_theta;
    float partial_rotary;          /* fraction of head_dim rotated (1 = all) */
    int32_t max_pos;               /* max_position_embeddings (0 = unknown) */
    int32_t sliding_window;        /* 0 = none */
    float clip_qkv;                /* 0 = none */
    int tie_embeddings;
    int attention_bias;
    char dtype[16];                /* "float32", "bfloat16", ... ("" if absent) */
    int32_t n_eos, *eos_ids;
    /* linear attention (Gated DeltaNet) dimensions; 0 when the architecture has none */
    int32_t lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, lin_conv;
    uint8_t *layer_linear;         /* [n_layers]: 1 = linear-attention layer; NULL = none */
    fm__quant_config quant;
    struct cJSON *json;            /* the whole document, for architecture hooks */
} fm__config;

/* Reads dir/config.json. FM_ERR_FORMAT names the key and the file for a missing or
 * invalid key; FM_ERR_UNSUPPORTED names an unknown model_type or rope type. On success
 * *out owns everything; release with fm__config_free. */
fm_status fm__config_load(const char *dir, fm__config **out);
void fm__config_free(fm__config *c);

/* True if layer i has routed experts (mlp_only_layers, decoder_sparse_step). */
bool fm__config_layer_is_moe(const fm__config *c, int32_t i);

/* Helpers for architecture hooks. Each looks up key in obj (NULL obj = the top level),
 * returning FM_ERR_FORMAT "config.json: missing key K" when required and absent, or when
 * present with the wrong type. When optional and absent, *out keeps its value. */
fm_status fm__cfg_int(const fm__config *c, const struct cJSON *obj, const char *key,
                      bool required, int32_t *out);
fm_status fm__cfg_num(const fm__config *c, const struct cJSON *obj, const char *key,
                      bool required, double *out);
fm_status fm__cfg_bool(const fm__config *c, const struct cJSON *obj, const char *key,
                       bool required, int *out);
/* First present key of a NULL-terminated list of alternative spellings. */
fm_status fm__cfg_int_any(const fm__config *c, const char *const *keys, bool required,
                          int32_t *out);

#endif
