/* arch_olmoe.c: OLMoE. q/k RMSNorm over the whole projection (before the head split),
 * optional clip_qkv, norm_topk_prob (default off), experts mlp.experts.{e}.*_proj. */
#include "arch.h"

const fm__arch fm__arch_olmoe = {
    .name = "olmoe",
    .rope_theta = 10000.0,
    .rms_eps = 1e-5f,
    .norm_topk_prob = 0,
    .expert_inter_key = "intermediate_size",
    .qk_norm = FM_QKNORM_FULL,
    .moe_prefix = "mlp",
    .router_name = "gate",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
};
