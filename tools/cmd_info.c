/* cmd_info.c: flash-moe info MODEL: architecture, main dimensions, bytes of resident
 * weights, bytes per expert and of all experts, the memory plan for the given
 * --mem-limit / --capacity, and the generation defaults of generation_config.json with
 * each value's source. --config-only estimates the sizes from config.json alone (no
 * weights needed), e.g. for the configs of published checkpoints. */
#include "cli.h"
#include "arch.h"
#include "config.h"
#include "genconfig.h"
#include "model.h"

#include <stdio.h>
#include <string.h>

static void print_bytes(const char *what, double b) {
    printf("%-22s %.0f bytes (%.2f MiB, %.2f GiB)\n", what, b, b / 1048576.0, b / 1073741824.0);
}

static const char *mib(double b, char *buf, size_t n) {
    snprintf(buf, n, "%.2f MiB", b / 1048576.0);
    return buf;
}

/* Bytes of a [rows, cols] matrix stored at `module` given the config's dtype/quantization. */
static double mat_bytes(const fm__config *c, const char *module, double rows, double cols, double es) {
    int32_t bits, group;
    if (fm__quant_for(&c->quant, module, &bits, &group))
        return rows * cols * bits / 8.0 + 2.0 * rows * (cols / group) * es;
    return rows * cols * es;
}

/* Prints the "generation" line: the model's generation defaults as transformers reads
 * generation_config.json, each value with its source (the file, or the library default).
 * Returns 1 (after printing why) if the file is malformed, as run and chat then refuse it. */
static int print_gen_defaults(const char *dir) {
    fm_gen_defaults d;
    if (fm_gen_defaults_load(dir, &d) != FM_OK) {
        printf("generation             unreadable: %s\n", fm_last_error());
        return cli_fail("cannot read the generation defaults");
    }
    char line[640];
    fm__gen_describe(&d.params, &d, 0, line, sizeof line);
    if (d.found) printf("generation             %s\n", line);
    else printf("generation             no generation_config.json; library defaults: %s\n", line);
    return 0;
}

static int config_only(const char *dir, const cli_model_opts *mo) {
    fm__config *c = NULL;
    if (fm__config_load(dir, &c) != FM_OK) return cli_fail("config");
    double es = strstr(c->dtype, "32") ? 4 : 2; /* float32 or 16-bit */
    double H = c->hidden, V = c->vocab, qd = (double)c->n_heads * c->head_dim,
           kvd = (double)c->n_kv_heads * c->head_dim;
    double res = mat_bytes(c, "model.embed_tokens", V, H, es) + H * es;
    if (!c->tie_embeddings) res += mat_bytes(c, "lm_head", V, H, es);
    int32_t n_moe = 0;
    double expert = 0;
    char mod[200];
    for (int32_t l = 0; l < c->n_layers; l++) {
        res += 2 * H * es; /* the two norms */
        if (c->layer_linear && c->layer_linear[l]) { /* Gated DeltaNet */
            double kd = (double)c->lin_k_heads * c->lin_k_dim, vd = (double)c->lin_v_heads * c->lin_v_dim;
            snprintf(mod, sizeof mod, "model.layers.%d.linear_attn.in_proj_qkvz", l);
            res += mat_bytes(c, mod, 2 * kd + 2 * vd, H, es) + mat_bytes(c, mod, 2.0 * c->lin_v_heads, H, es) +
                   mat_bytes(c, mod, H, vd, es) + (2 * kd + vd) * c->lin_conv * es +
                   (3.0 * c->lin_v_heads + c->lin_v_dim) * es;
        } else {
            snprintf(mod, sizeof mod, "model.layers.%d.self_attn.q_proj", l);
            res += mat_bytes(c, mod, qd * (c->arch->attn_output_gate ? 2 : 1), H, es) + mat_bytes(c, mod, qd, H, es) +
                   mat_bytes(c, mod, kvd, H, es) * 2;
        }
        if (fm__config_layer_is_moe(c, l)) {
            n_moe++;
            snprintf(mod, sizeof mod, "model.layers.%d.%s.%s", l, c->arch->moe_prefix, c->arch->router_name);
            res += mat_bytes(c, mod, c->n_experts, H, es);
            if (c->shared_inter) res += mat_bytes(c, mod, 3.0 * c->shared_inter, H, es) + H * es;
            snprintf(mod, sizeof mod, "model.layers.%d.%s.switch_mlp.gate_proj", l, c->arch->moe_prefix);
            expert = mat_bytes(c, mod, 3.0 * c->moe_inter, H, es);
        } else {
            snprintf(mod, sizeof mod, "model.layers.%d.mlp.gate_proj", l);
            res += mat_bytes(c, mod, 3.0 * c->inter, H, es);
        }
    }
    int32_t n_ctx = mo->ctx > 0 ? mo->ctx : (c->max_pos > 0 && c->max_pos < 4096 ? c->max_pos : 4096);
    int32_t n_attn = c->n_layers;
    for (int32_t l = 0; c->layer_linear && l < c->n_layers; l++) n_attn -= c->layer_linear[l];
    double kv = 2.0 * n_attn * n_ctx * kvd * 4;
    if (c->layer_linear) /* recurrent + convolution state of the linear layers */
        kv += (double)(c->n_layers - n_attn) * 4 *
              ((double)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim +
               (c->lin_conv - 1.0) * (2.0 * c->lin_k_heads * c->lin_k_dim + (double)c->lin_v_heads * c->lin_v_dim));
    printf("arch                   %s (estimated from %s; %s%s)\n", c->model_type, c->path,
           c->quant.enabled ? "MLX affine " : (c->dtype[0] ? c->dtype : "16-bit"),
           c->quant.enabled ? "quantized" : "");
    printf("layers                 %d (%d with routed experts)\n", c->n_layers, n_moe);
    printf("hidden                 %d\nattention              %d q heads, %d kv heads of %d\n",
           c->hidden, c->n_heads, c->n_kv_heads, c->head_dim);
    printf("experts                %d, top-%d, intermediate %d%s\nvocab                  %d\n",
           c->n_experts, c->top_k, c->moe_inter, c->shared_inter ? " (+ shared expert)" : "", c->vocab);
    print_bytes("resident weights", res);
    print_bytes("bytes per expert", expert);
    print_bytes("all experts", expert * n_moe * c->n_experts);
    print_bytes("KV cache + state", kv);
    double work = (double)fm__model_work_bytes(c, n_ctx);
    print_bytes("working memory", work);
    int32_t cap = c->n_experts;
    if (mo->capacity > 0) cap = mo->capacity;
    else if (mo->mem_limit > 0) {
        double left = (double)mo->mem_limit - res - kv - work;
        cap = left > 0 && expert > 0 && n_moe > 0 ? (int32_t)(left / (expert * n_moe)) : 0;
    }
    if (cap > c->n_experts) cap = c->n_experts;
    int rc = 0;
    if (cap < c->top_k) {
        printf("plan                   does not fit: %lld bytes cannot hold top-%d experts per layer\n",
               (long long)mo->mem_limit, c->top_k);
        rc = 1;
    } else {
        char b1[32];
        printf("plan                   capacity %d of %d experts per layer (%.0f%%), cache %s\n", cap,
               c->n_experts, 100.0 * cap / c->n_experts, mib(expert * n_moe * cap, b1, sizeof b1));
    }
    if (print_gen_defaults(dir)) rc = 1;
    fm__config_free(c);
    return rc;
}

int cmd_info(int argc, char **argv) {
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    int cfg_only = 0;
    cli_opt opts[] = {
        {"--config-only", NULL, CLI_FLAG, &cfg_only, "estimate sizes from config.json alone (no weights)"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *usage = "flash-moe info MODEL [--config-only] [--mem-limit 8G | --capacity N]";
    const char *pos[1];
    int n_pos = 0;
    int r = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &n_pos);
    if (r == 1) return 0;
    if (r) return 2;
    const char *dir = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir) return 2;
    if (cfg_only) return config_only(dir, &mo);
    fm_model *m = cli_open_model(dir, &mo);
    if (!m) return 1;
    fm_model_info in;
    fm_model_get_info(m, &in);
    const fm__ec_plan *pl = fm__model_plan(m);
    printf("arch                   %s\n", in.arch);
    printf("layers                 %d (%d with routed experts)\n", in.n_layers, in.n_moe_layers);
    printf("hidden                 %d\nexperts                %d, top-%d\nvocab                  %d\n"
           "context                %d\n", in.hidden, in.n_experts, in.top_k, in.vocab, in.n_ctx);
    print_bytes("resident weights", (double)in.resident_bytes);
    print_bytes("bytes per expert", (double)in.expert_bytes);
    print_bytes("all experts", (double)in.all_expert_bytes);
    print_bytes("KV cache + state", (double)pl->kv_bytes);
    print_bytes("working memory", (double)pl->work_bytes);
    char b1[32], b2[32];
    printf("plan                   capacity %d of %d experts per layer (%.0f%%), budget %s, cache %s\n",
           pl->capacity, in.n_experts, 100.0 * pl->fraction, mib((double)pl->budget, b1, sizeof b1),
           mib((double)pl->cache_bytes, b2, sizeof b2));
    int rc = print_gen_defaults(dir);
    fm_model_free(m);
    return rc;
}
