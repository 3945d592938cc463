/* arch_qwen_moe.c: Qwen MoE families.
 * qwen3_moe: q/k RMSNorm per head, no biases, dense layers from mlp_only_layers and
 *   decoder_sparse_step, experts mlp.experts.{e}.{gate,up,down}_proj.
 * qwen2_moe: q/k/v bias, a shared expert (mlp.shared_expert.*) scaled by
 *   sigmoid(mlp.shared_expert_gate x), same dense-layer rules. */
#include "arch.h"
#include "config.h"

static fm_status parse_qwen2(struct fm__config *c, const struct cJSON *root) {
    (void)root;
    return fm__cfg_int(c, NULL, "shared_expert_intermediate_size", true, &c->shared_inter);
}

const fm__arch fm__arch_qwen3_moe = {
    .name = "qwen3_moe",
    .rope_theta = 10000.0,
    .rms_eps = 1e-6f,
    .norm_topk_prob = 0,
    .expert_inter_key = "moe_intermediate_size",
    .qk_norm = FM_QKNORM_HEAD,
    .moe_prefix = "mlp",
    .router_name = "gate",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
};

const fm__arch fm__arch_qwen2_moe = {
    .name = "qwen2_moe",
    .rope_theta = 10000.0,
    .rms_eps = 1e-6f,
    .norm_topk_prob = 0,
    .expert_inter_key = "moe_intermediate_size",
    .qkv_bias = 1,
    .shared_expert = 1,
    .moe_prefix = "mlp",
    .router_name = "gate",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
    .parse_config = parse_qwen2,
};
