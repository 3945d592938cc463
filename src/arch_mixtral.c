/* arch_mixtral.c: Mixtral. Experts block_sparse_moe.experts.{e}.w1 (gate), w3 (up),
 * w2 (down); the top-k routing weights are always renormalized. */
#include "arch.h"

const fm__arch fm__arch_mixtral = {
    .name = "mixtral",
    .rope_theta = 1e6,
    .rms_eps = 1e-5f,
    .norm_topk_prob = 1,
    .always_norm_topk = 1,
    .expert_inter_key = "intermediate_size",
    .moe_prefix = "block_sparse_moe",
    .router_name = "gate",
    .expert_names = {"w1", "w3", "w2"},
};
