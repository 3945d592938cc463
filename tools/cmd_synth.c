/* cmd_synth.c: flash-moe synth. Writes a random-weight checkpoint with the real shapes of
 * a chosen model (config.json + safetensors), for benchmarks and cache experiments:
 * BF16, or MLX affine quantized exactly as mlx_lm.convert lays it out (U32 packed weight,
 * BF16 scales/biases per group, experts stacked under mlp.switch_mlp.*, "quantization"
 * and "quantization_config" in config.json). Weights are streamed to disk in small chunks,
 * so memory stays small whatever the model size; shards are cut at 4 GB (--shard-size) with a
 * model.safetensors.index.json. Values: BF16 weights with std ~0.02; quantized weights
 * uniform q with scale/bias chosen for the same spread; norms 1.
 * Qwen3-Next presets (model_type qwen3_next) write its hybrid layout as mlx_lm converts it
 * (mlx_lm/models/qwen3_next.py): every full_attention_interval-th layer gated attention
 * (q_proj of 2 x heads x head_dim: query and output gate), the others linear_attn
 * (in_proj_qkvz, in_proj_ba, conv1d.weight [C, K, 1] in BF16, A_log and dt_bias 0, norm,
 * out_proj), and a shared expert with its sigmoid gate in every MoE block. */
#include "cli.h"
#include "common.h"
#include "tensor.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_DIMS 3

typedef struct {
    const char *model_type;
    int hidden, layers, heads, kv_heads, head_dim, experts, top_k, moe_inter, inter, vocab;
    int max_pos;
    double rope_theta;
    int norm_topk;
    /* qwen3_next only (0 otherwise) */
    int shared_inter, lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, lin_conv, full_every;
    double partial_rotary;
} preset;

static const struct { const char *name; preset p; } g_presets[] = {
    /* Published config.json values (Qwen3MoeConfig). */
    {"qwen3-30b-a3b", {"qwen3_moe", 2048, 48, 32, 4, 128, 128, 8, 768, 6144, 151936, 40960, 1e6, 1, 0, 0, 0, 0, 0, 0, 0, 0}},
    {"qwen3-235b-a22b", {"qwen3_moe", 4096, 94, 64, 4, 128, 128, 8, 1536, 12288, 151936, 40960, 1e6, 1, 0, 0, 0, 0, 0, 0, 0, 0}},
    {"tiny", {"qwen3_moe", 128, 2, 4, 2, 32, 8, 2, 64, 256, 512, 4096, 1e6, 1, 0, 0, 0, 0, 0, 0, 0, 0}},
    /* Qwen3-Coder-Next (Qwen3NextConfig): 16 q / 2 kv heads of 256, linear attention with
     * 16 key / 32 value heads of 128, conv 4, full attention every 4th layer, partial RoPE
     * 0.25, 512 experts top-10 of 512 plus a shared expert of 512. */
    {"qwen3-next", {"qwen3_next", 2048, 48, 16, 2, 256, 512, 10, 512, 5120, 151936, 262144, 5e6, 1,
                    512, 16, 32, 128, 128, 4, 4, 0.25}},
    {"qwen3-next-tiny", {"qwen3_next", 128, 4, 4, 2, 32, 8, 2, 64, 256, 512, 4096, 1e6, 1,
                         64, 2, 4, 32, 32, 4, 4, 0.25}},
};

typedef enum {
    K_NORM,   /* BF16 ones */
    K_LINEAR, /* BF16 or quantized matrix */
    K_ZERO,   /* BF16 zeros (A_log, dt_bias) */
    K_SMALL   /* BF16 random, std 0.1, never quantized (conv1d weight) */
} tkind;

typedef struct {
    char name[160];
    tkind kind;
    int nd;
    int64_t shape[MAX_DIMS]; /* logical shape: [experts,] rows, cols */
} tspec;

typedef struct {
    tspec *t;
    int n, cap;
    int bits, group; /* bits 0 = BF16 */
} tlist;

static int add(tlist *L, tkind kind, int nd, int64_t a, int64_t b, int64_t c, const char *fmt, ...)
    FM_PRINTF(7, 8);
static int add(tlist *L, tkind kind, int nd, int64_t a, int64_t b, int64_t c, const char *fmt, ...) {
    if (L->n == L->cap) {
        int nc = L->cap ? L->cap * 2 : 64;
        tspec *nt = realloc(L->t, (size_t)nc * sizeof *nt);
        if (!nt) return -1;
        L->t = nt;
        L->cap = nc;
    }
    tspec *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->kind = kind;
    t->nd = nd;
    t->shape[0] = a; t->shape[1] = b; t->shape[2] = c;
    return 0;
}

/* One stored array: a tensor is 1 array (BF16) or 3 (quantized weight, scales, biases). */
typedef struct {
    int ti;      /* tensor index */
    int part;    /* 0 weight/data, 1 scales, 2 biases */
    const char *dtype;
    int nd;
    int64_t shape[MAX_DIMS];
    uint64_t bytes;
} arr;

static int64_t lin_rows(const tspec *t) { return t->nd == 3 ? t->shape[0] * t->shape[1] : t->shape[0]; }
static int64_t lin_cols(const tspec *t) { return t->shape[t->nd - 1]; }

static int arrays_of(const tlist *L, int ti, arr out[3]) {
    const tspec *t = &L->t[ti];
    int64_t elems = 1;
    for (int d = 0; d < t->nd; d++) elems *= t->shape[d];
    if (t->kind != K_LINEAR || L->bits == 0) {
        out[0] = (arr){ti, 0, "BF16", t->nd, {t->shape[0], t->shape[1], t->shape[2]}, (uint64_t)elems * 2};
        return 1;
    }
    for (int p = 0; p < 3; p++) {
        arr *a = &out[p];
        *a = (arr){ti, p, p == 0 ? "U32" : "BF16", t->nd, {t->shape[0], t->shape[1], t->shape[2]}, 0};
        int64_t c = lin_cols(t);
        a->shape[t->nd - 1] = p == 0 ? c * L->bits / 32 : c / L->group;
        a->bytes = (uint64_t)lin_rows(t) * (uint64_t)a->shape[t->nd - 1] * (p == 0 ? 4 : 2);
    }
    return 3;
}

static const char *part_suffix(const tlist *L, const tspec *t, int part) {
    if (t->kind != K_LINEAR || L->bits == 0) return "";
    return part == 0 ? "" : part == 1 ? "scales" : "biases";
}

static void arr_name(const tlist *L, const arr *a, char *buf, size_t n) {
    const tspec *t = &L->t[a->ti];
    const char *suf = part_suffix(L, t, a->part);
    if (!*suf) { snprintf(buf, n, "%s", t->name); return; }
    /* "x.weight" -> "x.scales" */
    size_t len = strlen(t->name);
    if (len > 7 && strcmp(t->name + len - 7, ".weight") == 0) snprintf(buf, n, "%.*s.%s", (int)(len - 7), t->name, suf);
    else snprintf(buf, n, "%s.%s", t->name, suf);
}

/* ---- random data ------------------------------------------------------------------- */

static uint64_t g_rng;
static inline uint64_t rnd(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return g_rng;
}
static inline float unif(void) { return (float)(rnd() >> 40) * (1.0f / 16777216.0f); }

/* Writes `bytes` of array a to f in chunks. */
static int write_arr(FILE *f, const tlist *L, const arr *a, uint8_t *buf, size_t bufsz) {
    const tspec *t = &L->t[a->ti];
    uint64_t left = a->bytes;
    const float spread = 0.02f * sqrtf(12.0f); /* width of a uniform with std 0.02 */
    while (left) {
        size_t n = (size_t)FM_MIN((uint64_t)bufsz, left);
        if (t->kind == K_NORM || t->kind == K_ZERO) {
            uint16_t v = t->kind == K_NORM ? 0x3F80 : 0; /* 1.0 or 0 */
            for (size_t i = 0; i < n / 2; i++) ((uint16_t *)buf)[i] = v;
        } else if (t->kind == K_SMALL || (a->part == 0 && !L->bits)) {
            /* BF16 ~ N(0, sd^2): Irwin-Hall(4), std 1/sqrt(3) */
            float sd = t->kind == K_SMALL ? 0.1f : 0.02f;
            for (size_t i = 0; i < n / 2; i++) {
                float v = (unif() + unif() + unif() + unif() - 2.0f) * (sd * 1.7320508f);
                ((uint16_t *)buf)[i] = fm__f32_to_bf16(v);
            }
        } else if (a->part == 0) {
            for (size_t i = 0; i < n / 8; i++) ((uint64_t *)buf)[i] = rnd();
        } else {
            float qmax = (float)((1 << L->bits) - 1);
            for (size_t i = 0; i < n / 2; i++) {
                float s = spread * (0.9f + 0.2f * unif()) / qmax;
                ((uint16_t *)buf)[i] = fm__f32_to_bf16(a->part == 1 ? s : -0.5f * s * qmax);
            }
        }
        if (fwrite(buf, 1, n, f) != n) return -1;
        left -= n;
    }
    return 0;
}

/* Writes one shard: header for arrays [a0, a1), then their data. */
static int write_shard(const char *path, const tlist *L, const arr *as, int a0, int a1, uint8_t *buf,
                       size_t bufsz) {
    size_t hcap = 256 + (size_t)(a1 - a0) * 320, hl = 0;
    char *h = malloc(hcap);
    if (!h) return -1;
    hl += (size_t)snprintf(h + hl, hcap - hl, "{\"__metadata__\":{\"format\":\"mlx\"}");
    uint64_t off = 0;
    for (int i = a0; i < a1; i++) {
        char nm[200];
        arr_name(L, &as[i], nm, sizeof nm);
        hl += (size_t)snprintf(h + hl, hcap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", nm, as[i].dtype);
        for (int d = 0; d < as[i].nd; d++)
            hl += (size_t)snprintf(h + hl, hcap - hl, "%s%lld", d ? "," : "", (long long)as[i].shape[d]);
        hl += (size_t)snprintf(h + hl, hcap - hl, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                               (unsigned long long)(off + as[i].bytes));
        off += as[i].bytes;
    }
    hl += (size_t)snprintf(h + hl, hcap - hl, "}");
    while (hl % 8) h[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "flash-moe: %s: %s\n", path, strerror(errno)); free(h); return -1; }
    uint64_t hl64 = hl;
    int rc = fwrite(&hl64, 8, 1, f) == 1 && fwrite(h, 1, hl, f) == hl ? 0 : -1;
    free(h);
    for (int i = a0; i < a1 && rc == 0; i++) rc = write_arr(f, L, &as[i], buf, bufsz);
    if (fclose(f) != 0) rc = -1;
    if (rc) fprintf(stderr, "flash-moe: %s: write failed: %s\n", path, strerror(errno));
    return rc;
}

static int write_config(const char *dir, const preset *p, int bits, int group) {
    char *path = fm__path_join(dir, "config.json");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) { fprintf(stderr, "flash-moe: cannot write %s\n", path ? path : dir); free(path); return -1; }
    bool next = p->full_every > 0;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
            next ? "Qwen3NextForCausalLM" : "Qwen3MoeForCausalLM", p->model_type);
    fprintf(f, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
               "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
               "  \"num_experts\": %d,\n  \"num_experts_per_tok\": %d,\n  \"moe_intermediate_size\": %d,\n"
               "  \"norm_topk_prob\": %s,\n  \"decoder_sparse_step\": 1,\n  \"mlp_only_layers\": [],\n"
               "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rope_theta\": %.1f,\n"
               "  \"rms_norm_eps\": 1e-06,\n  \"hidden_act\": \"silu\",\n  \"attention_bias\": false,\n"
               "  \"tie_word_embeddings\": false,\n  \"bos_token_id\": 151643,\n  \"eos_token_id\": 151645,\n"
               "  \"torch_dtype\": \"bfloat16\"",
            p->hidden, p->inter, p->layers, p->heads, p->kv_heads, p->head_dim, p->experts, p->top_k,
            p->moe_inter, p->norm_topk ? "true" : "false", p->vocab, p->max_pos, p->rope_theta);
    if (next)
        fprintf(f, ",\n  \"shared_expert_intermediate_size\": %d,\n  \"linear_num_key_heads\": %d,\n"
                   "  \"linear_num_value_heads\": %d,\n  \"linear_key_head_dim\": %d,\n"
                   "  \"linear_value_head_dim\": %d,\n  \"linear_conv_kernel_dim\": %d,\n"
                   "  \"full_attention_interval\": %d,\n  \"partial_rotary_factor\": %g",
                p->shared_inter, p->lin_k_heads, p->lin_v_heads, p->lin_k_dim, p->lin_v_dim, p->lin_conv,
                p->full_every, p->partial_rotary);
    if (bits)
        fprintf(f, ",\n  \"quantization\": {\"group_size\": %d, \"bits\": %d},\n"
                   "  \"quantization_config\": {\"group_size\": %d, \"bits\": %d}",
                group, bits, group, bits);
    fprintf(f, "\n}\n");
    int rc = fclose(f) == 0 ? 0 : -1;
    free(path);
    return rc;
}

int cmd_synth(int argc, char **argv) {
    const char *preset_name = "tiny";
    int32_t layers = 0, experts = 0, q = 4, group = 64, seed = 1;
    int64_t shard_max = 4ll << 30;
    cli_opt opts[] = {
        {"--preset", NULL, CLI_STR, &preset_name,
         "qwen3-30b-a3b | qwen3-235b-a22b | qwen3-next (alias qwen3-next-80b) | tiny | qwen3-next-tiny"},
        {"--layers", NULL, CLI_INT, &layers, "number of layers (0 = the preset's)"},
        {"--experts", NULL, CLI_INT, &experts, "routed experts per layer (0 = the preset's)"},
        {"-q", NULL, CLI_INT, &q, "weight bits: 2,3,4,5,6,8 (MLX affine) or 0 (BF16)"},
        {"--group", NULL, CLI_INT, &group, "quantization group size: 32, 64 or 128"},
        {"--seed", NULL, CLI_INT, &seed, "random seed"},
        {"--shard-size", NULL, CLI_SIZE, &shard_max, "largest safetensors file before splitting, e.g. 4G"},
    };
    const char *pos[1];
    int n_pos = 0;
    int rc = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), "flash-moe synth DIR [options]", pos, 1, &n_pos);
    if (rc) return rc == 1 ? 0 : 2;
    if (n_pos != 1) { fprintf(stderr, "flash-moe: synth needs an output directory (see --help)\n"); return 2; }
    const char *dir = pos[0];
    if (strcmp(preset_name, "qwen3-next-80b") == 0) preset_name = "qwen3-next";
    const preset *pp = NULL;
    for (size_t i = 0; i < FM_ARRAY_LEN(g_presets); i++)
        if (strcmp(g_presets[i].name, preset_name) == 0) pp = &g_presets[i].p;
    if (!pp) { fprintf(stderr, "flash-moe: unknown preset '%s' (see --help)\n", preset_name); return 2; }
    preset p = *pp;
    if (shard_max <= 0) { fprintf(stderr, "flash-moe: --shard-size must be > 0\n"); return 2; }
    if (layers < 0 || experts < 0) { fprintf(stderr, "flash-moe: --layers and --experts must be >= 0\n"); return 2; }
    if (layers) p.layers = layers;
    if (experts) p.experts = experts;
    if (p.top_k > p.experts) p.top_k = p.experts;
    if (!(q == 0 || q == 2 || q == 3 || q == 4 || q == 5 || q == 6 || q == 8)) {
        fprintf(stderr, "flash-moe: -q must be 0, 2, 3, 4, 5, 6 or 8\n");
        return 2;
    }
    if (q && group != 32 && group != 64 && group != 128) {
        fprintf(stderr, "flash-moe: --group must be 32, 64 or 128\n");
        return 2;
    }
    tlist L = {NULL, 0, 0, q, group};
    int64_t H = p.hidden, QD = (int64_t)p.heads * p.head_dim, KV = (int64_t)p.kv_heads * p.head_dim;
    int e = 0;
    e |= add(&L, K_LINEAR, 2, p.vocab, H, 0, "model.embed_tokens.weight");
    bool next = p.full_every > 0;
    int64_t KD = (int64_t)p.lin_k_heads * p.lin_k_dim, VD = (int64_t)p.lin_v_heads * p.lin_v_dim;
    for (int l = 0; l < p.layers; l++) {
        e |= add(&L, K_NORM, 1, H, 0, 0, "model.layers.%d.input_layernorm.weight", l);
        if (next && (l + 1) % p.full_every != 0) {
            e |= add(&L, K_LINEAR, 2, 2 * KD + 2 * VD, H, 0, "model.layers.%d.linear_attn.in_proj_qkvz.weight", l);
            e |= add(&L, K_LINEAR, 2, 2 * (int64_t)p.lin_v_heads, H, 0, "model.layers.%d.linear_attn.in_proj_ba.weight", l);
            e |= add(&L, K_SMALL, 3, 2 * KD + VD, p.lin_conv, 1, "model.layers.%d.linear_attn.conv1d.weight", l);
            e |= add(&L, K_ZERO, 1, p.lin_v_heads, 0, 0, "model.layers.%d.linear_attn.A_log", l);
            e |= add(&L, K_ZERO, 1, p.lin_v_heads, 0, 0, "model.layers.%d.linear_attn.dt_bias", l);
            e |= add(&L, K_NORM, 1, p.lin_v_dim, 0, 0, "model.layers.%d.linear_attn.norm.weight", l);
            e |= add(&L, K_LINEAR, 2, H, VD, 0, "model.layers.%d.linear_attn.out_proj.weight", l);
            goto mlp;
        }
        e |= add(&L, K_LINEAR, 2, next ? 2 * QD : QD, H, 0, "model.layers.%d.self_attn.q_proj.weight", l);
        e |= add(&L, K_LINEAR, 2, KV, H, 0, "model.layers.%d.self_attn.k_proj.weight", l);
        e |= add(&L, K_LINEAR, 2, KV, H, 0, "model.layers.%d.self_attn.v_proj.weight", l);
        e |= add(&L, K_LINEAR, 2, H, QD, 0, "model.layers.%d.self_attn.o_proj.weight", l);
        e |= add(&L, K_NORM, 1, p.head_dim, 0, 0, "model.layers.%d.self_attn.q_norm.weight", l);
        e |= add(&L, K_NORM, 1, p.head_dim, 0, 0, "model.layers.%d.self_attn.k_norm.weight", l);
    mlp:
        e |= add(&L, K_NORM, 1, H, 0, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        e |= add(&L, K_LINEAR, 2, p.experts, H, 0, "model.layers.%d.mlp.gate.weight", l);
        e |= add(&L, K_LINEAR, 3, p.experts, p.moe_inter, H, "model.layers.%d.mlp.switch_mlp.gate_proj.weight", l);
        e |= add(&L, K_LINEAR, 3, p.experts, p.moe_inter, H, "model.layers.%d.mlp.switch_mlp.up_proj.weight", l);
        e |= add(&L, K_LINEAR, 3, p.experts, H, p.moe_inter, "model.layers.%d.mlp.switch_mlp.down_proj.weight", l);
        if (next) {
            e |= add(&L, K_LINEAR, 2, p.shared_inter, H, 0, "model.layers.%d.mlp.shared_expert.gate_proj.weight", l);
            e |= add(&L, K_LINEAR, 2, p.shared_inter, H, 0, "model.layers.%d.mlp.shared_expert.up_proj.weight", l);
            e |= add(&L, K_LINEAR, 2, H, p.shared_inter, 0, "model.layers.%d.mlp.shared_expert.down_proj.weight", l);
            e |= add(&L, K_LINEAR, 2, 1, H, 0, "model.layers.%d.mlp.shared_expert_gate.weight", l);
        }
    }
    e |= add(&L, K_NORM, 1, H, 0, 0, "model.norm.weight");
    e |= add(&L, K_LINEAR, 2, p.vocab, H, 0, "lm_head.weight");
    if (e) { fprintf(stderr, "flash-moe: out of memory\n"); free(L.t); return 1; }
    if (q)
        for (int i = 0; i < L.n; i++)
            if (L.t[i].kind == K_LINEAR && lin_cols(&L.t[i]) % group) {
                fprintf(stderr, "flash-moe: %s has %lld input columns, not a multiple of --group %d\n",
                        L.t[i].name, (long long)lin_cols(&L.t[i]), group);
                free(L.t);
                return 2;
            }
    arr *as = malloc((size_t)L.n * 3 * sizeof *as);
    int na = 0;
    uint64_t total = 0;
    for (int i = 0; i < L.n && as; i++) na += arrays_of(&L, i, as + na);
    for (int i = 0; i < na && as; i++) total += as[i].bytes;
    /* shards: consecutive arrays up to SHARD_MAX each */
    int *cut = malloc(((size_t)na + 2) * sizeof *cut), ns = 0;
    size_t bufsz = 4u << 20;
    uint8_t *buf = malloc(bufsz);
    if (!as || !cut || !buf) { fprintf(stderr, "flash-moe: out of memory\n"); rc = 1; goto out; }
    cut[ns++] = 0;
    for (uint64_t acc = 0, i = 0; i < (uint64_t)na; i++) {
        if (acc && acc + as[i].bytes > (uint64_t)shard_max) { cut[ns++] = (int)i; acc = 0; }
        acc += as[i].bytes;
    }
    cut[ns] = na;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "flash-moe: cannot create %s: %s\n", dir, strerror(errno));
        rc = 1;
        goto out;
    }
    g_rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)(uint32_t)seed * 0xD1B54A32D192ED03ull);
    if (!g_rng) g_rng = 1;
    if (write_config(dir, &p, q, group)) { rc = 1; goto out; }
    fprintf(stderr, "flash-moe: writing %s: %s, %d layers, %d experts, %s, %.2f GB in %d file(s)\n", dir,
            preset_name, p.layers, p.experts, q ? "MLX affine" : "BF16", total / 1e9, ns);
    if (q) fprintf(stderr, "flash-moe: %d-bit, group %d\n", q, group);
    FILE *idx = NULL;
    if (ns > 1) {
        char *ip = fm__path_join(dir, "model.safetensors.index.json");
        idx = ip ? fopen(ip, "w") : NULL;
        free(ip);
        if (!idx) { fprintf(stderr, "flash-moe: cannot write the shard index\n"); rc = 1; goto out; }
        fprintf(idx, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
    }
    for (int s = 0; s < ns && rc == 0; s++) {
        char fname[96];
        if (ns == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, ns);
        char *path = fm__path_join(dir, fname);
        if (!path || write_shard(path, &L, as, cut[s], cut[s + 1], buf, bufsz)) rc = 1;
        free(path);
        for (int i = cut[s]; idx && i < cut[s + 1]; i++) {
            char nm[200];
            arr_name(&L, &as[i], nm, sizeof nm);
            fprintf(idx, "%s\n    \"%s\": \"%s\"", (s || i) ? "," : "", nm, fname);
        }
    }
    if (idx) {
        fprintf(idx, "\n  }\n}\n");
        if (fclose(idx) != 0) rc = 1;
    }
out:
    free(buf);
    free(cut);
    free(as);
    free(L.t);
    return rc;
}
