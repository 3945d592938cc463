/* arch.h: what distinguishes one MoE architecture from another, as data. Every supported
 * config model_type has one fm__arch, defined in its own src/arch_<name>.c and named in
 * the one table in src/arch.c. The generic loader (loader.c) and forward pass (model.c)
 * read only these fields; an architecture whose layers differ in structure adds hooks
 * here rather than branches elsewhere. */
#ifndef FM_ARCH_H
#define FM_ARCH_H

#include "common.h"

struct fm__config;
struct cJSON;

typedef enum {
    FM_QKNORM_NONE = 0,
    FM_QKNORM_HEAD,  /* RMSNorm over each head's head_dim values (weight [head_dim]) */
    FM_QKNORM_FULL   /* RMSNorm over the whole q (k) projection (weight [heads*head_dim]) */
} fm__qknorm;

typedef struct fm__arch {
    const char *name;            /* config.json model_type */
    /* config defaults (transformers' config class) used when a key is absent */
    double rope_theta;
    float rms_eps;
    int norm_topk_prob;          /* default of config norm_topk_prob */
    int always_norm_topk;        /* renormalize top-k whatever the config says (Mixtral) */
    const char *expert_inter_key;/* config key of the routed expert intermediate size */
    /* structure */
    fm__qknorm qk_norm;
    int qkv_bias;                /* q/k/v projections carry a bias */
    int shared_expert;           /* mlp.shared_expert + sigmoid mlp.shared_expert_gate */
    const char *moe_prefix;      /* module holding router + experts: "mlp", "block_sparse_moe" */
    const char *router_name;     /* router linear under moe_prefix: "gate" */
    const char *expert_names[3]; /* per-expert gate, up, down: "gate_proj", ... or "w1","w3","w2" */
    /* Optional: reads architecture-only keys after the common ones (NULL = none). */
    fm_status (*parse_config)(struct fm__config *c, const struct cJSON *root);
} fm__arch;

/* The architecture named model_type, or NULL. */
const fm__arch *fm__arch_find(const char *model_type);
/* Comma-separated list of supported model_type names (static string). */
const char *fm__arch_names(void);

#endif
