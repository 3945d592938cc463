/* arch.h: what distinguishes one MoE architecture from another, as data. Every supported
 * config model_type has one fm__arch, defined in its own src/arch_<name>.c and named in
 * the one table in src/arch.c. The generic loader (loader.c) and forward pass (model.c)
 * read only these fields; an architecture whose layers differ in structure adds hooks
 * here rather than branches elsewhere. */
#ifndef FM_ARCH_H
#define FM_ARCH_H

#include "common.h"
#include "backend/backend.h"

struct fm__config;
struct fm__loader;
struct cJSON;

/* A token mixer other than softmax attention (linear attention), used on the layers the
 * config marks as linear. It owns its weights and defines its per-sequence state: a flat
 * float array that all zeros means "no tokens yet", so a state can be reset, copied and
 * snapshotted without knowing its structure. */
typedef struct fm__mixer {
    /* floats of per-sequence state of one layer */
    size_t (*state_floats)(const struct fm__config *c);
    /* floats of scratch for a batch of up to max_batch tokens */
    size_t (*scratch_floats)(const struct fm__config *c, int32_t max_batch);
    /* Binds the weights of the mixer at prefix (e.g. "model.layers.0.linear_attn"); *w is
     * released with free_weights. */
    fm_status (*load)(struct fm__loader *L, const struct fm__config *c, const char *prefix,
                      void **w);
    void (*free_weights)(void *w);
    /* xb: [T, hidden] normalized inputs -> out [T, hidden]; advances state by T tokens.
     * Must give the same result for a batch as for its tokens one at a time (to float
     * rounding), with no allocation. */
    void (*forward)(const void *w, const struct fm__config *c, fm__pool *pool, const float *xb,
                    int32_t T, float *state, float *scratch, float *out);
} fm__mixer;

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
    float partial_rotary;        /* default partial_rotary_factor (0 = 1: rotate all dims) */
    int norm_zero_centred;       /* decoder/q/k/final RMSNorm weights w act as (1 + w), except
                                    in MLX-converted checkpoints, which store 1 + w */
    int attn_output_gate;        /* q_proj yields [q | gate] per head; output *= sigmoid(gate) */
    const fm__mixer *linear;     /* mixer of the layers config->layer_linear marks, or NULL */
    /* Optional: reads architecture-only keys after the common ones (NULL = none). */
    fm_status (*parse_config)(struct fm__config *c, const struct cJSON *root);
} fm__arch;

/* The architecture named model_type, or NULL. */
const fm__arch *fm__arch_find(const char *model_type);
/* Comma-separated list of supported model_type names (static string). */
const char *fm__arch_names(void);

#endif
