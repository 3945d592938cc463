/* arch_qwen3_next.c: Qwen3-Next (Qwen3-Coder-Next). Three Gated DeltaNet (linear
 * attention) layers for every gated full-attention layer, zero-centred RMSNorm (1 + w),
 * per-head q/k norm, partial RoPE, and a MoE block with a sigmoid-gated shared expert.
 *
 * The Gated DeltaNet follows transformers' Qwen3NextGatedDeltaNet
 * (src/transformers/models/qwen3_next/modeling_qwen3_next.py):
 *   in_proj_qkvz / in_proj_ba, regrouped per key head (fix_query_key_value_ordering);
 *   causal depthwise conv1d over [q|k|v] (kernel K, rolling state of K-1 inputs) + SiLU;
 *   q, k L2-normalised per head (eps 1e-6), q scaled by 1/sqrt(dk), repeated to the value
 *   heads; beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias);
 *   per value head: S *= exp(g); delta = (v - S^T k) * beta; S += k delta^T; o = S^T q
 *   (torch_recurrent_gated_delta_rule); decode (one token) runs this recurrent form,
 *   prefill the chunked form of torch_chunk_gated_delta_rule (backend/cpu/deltanet.c,
 *   chunks of FM_GDR_CHUNK tokens) from the session's state, which it leaves after the
 *   last token, so decode and a later prefill continue from it; the two forms agree to
 *   float rounding, not bitwise;
 *   o = RMSNorm(o) * w * silu(z) (Qwen3NextRMSNormGated); out_proj.
 * MLX conversions (mlx_lm/models/qwen3_next.py sanitize) store the conv weight as [C, K, 1]
 * instead of [C, 1, K] (the same bytes) and the norm weights as 1 + w (see model.c). */
#include "arch.h"
#include "backend/ops.h"
#include "backend/cpu/deltanet.h"
#include "config.h"
#include "loader.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dn_w {
    fm__mat qkvz;     /* [2*kd + 2*vd, hidden], rows grouped per key head: q, k, v, z */
    fm__mat ba;       /* [2*nv, hidden], rows grouped per key head: b, a */
    float *conv;      /* [conv_dim][K], conv_dim = 2*kd + vd */
    float *dt_bias;   /* [nv] */
    float *a_neg;     /* [nv]: -exp(A_log) */
    float *norm;      /* [dv] */
    fm__mat out;      /* [hidden, vd] */
} dn_w;

typedef struct dims {
    int32_t nk, nv, dk, dv, K, r, kd, vd, C, P;
} dims;

static dims dims_of(const fm__config *c) {
    dims d;
    d.nk = c->lin_k_heads;
    d.nv = c->lin_v_heads;
    d.dk = c->lin_k_dim;
    d.dv = c->lin_v_dim;
    d.K = c->lin_conv;
    d.r = d.nv / d.nk;
    d.kd = d.nk * d.dk;
    d.vd = d.nv * d.dv;
    d.C = 2 * d.kd + d.vd;
    d.P = 2 * d.kd + 2 * d.vd;
    return d;
}

static size_t state_floats(const fm__config *c) {
    dims d = dims_of(c);
    return (size_t)(d.K - 1) * (size_t)d.C + (size_t)d.nv * (size_t)d.dk * (size_t)d.dv;
}

/* floats of one value head's work area: g and beta of up to B tokens, the chunked form's */
static size_t head_work(dims d, int32_t B) {
    return 2u * (size_t)B + fm__gdr_work_floats(d.dk, d.dv);
}

static size_t scratch_floats(const fm__config *c, int32_t B) {
    dims d = dims_of(c);
    return (size_t)B * ((size_t)d.P + 2u * (size_t)d.nv + 2u * (size_t)d.C + 2u * (size_t)d.vd) +
           (size_t)d.nv * head_work(d, B);
}

static void free_weights(void *w) { free(w); }

static fm_status load(fm__loader *L, const fm__config *c, const char *prefix, void **out) {
    dims d = dims_of(c);
    dn_w *w = calloc(1, sizeof *w);
    if (!w) return fm__err(FM_ERR_NOMEM, "out of memory");
    char n[300];
    fm_status rc;
    int64_t H = c->hidden;
    float *alog = NULL;
#define NM(s) (snprintf(n, sizeof n, "%s.%s", prefix, s), n)
    if ((rc = fm__load_mat(L, NM("in_proj_qkvz"), d.P, H, true, &w->qkvz)) ||
        (rc = fm__load_mat(L, NM("in_proj_ba"), 2 * d.nv, H, true, &w->ba)) ||
        (rc = fm__load_mat(L, NM("out_proj"), H, d.vd, true, &w->out)) ||
        (rc = fm__load_vec(L, NM("dt_bias"), d.nv, true, &w->dt_bias)) ||
        (rc = fm__load_vec(L, NM("A_log"), d.nv, true, &alog)) ||
        (rc = fm__load_vec(L, NM("norm.weight"), d.dv, true, &w->norm)))
        goto fail;
    /* conv1d weight: [C, 1, K] (transformers) or [C, K, 1] (MLX): the same bytes */
    const fm__st_tensor *t = fm__st_find(L->st, NM("conv1d.weight"));
    int64_t hf[3] = {d.C, 1, d.K}, mlx[3] = {d.C, d.K, 1};
    bool is_mlx = t && t->ndim == 3 && t->shape[1] == d.K && t->shape[2] == 1 && d.K != 1;
    if ((rc = fm__load_array(L, n, 3, is_mlx ? mlx : hf, &w->conv))) goto fail;
    w->a_neg = alog; /* owned by the loader; rewritten in place */
    for (int32_t h = 0; h < d.nv; h++) w->a_neg[h] = -expf(alog[h]);
#undef NM
    *out = w;
    return FM_OK;
fail:
    free(w);
    return rc;
}

static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

typedef struct head_ctx {
    const dn_w *w;
    dims d;
    int32_t T;
    float eps;
    const float *conv;   /* [T, C]: activated conv outputs; q, k normalized in place */
    const float *z;      /* [T, vd] */
    const float *b, *a;  /* [T, nv] */
    float *rec;          /* [nv][dk][dv] recurrent state */
    float *o;            /* [T, vd] */
    float *work;         /* [nv][work_floats]: per-head work areas (head_work) */
    size_t work_floats;
} head_ctx;

/* All T tokens of one value head h through the gated delta rule (one token: the recurrent
 * step; more: the chunked form) and the gated norm. */
static void head_task(int64_t hh, void *vctx) {
    const head_ctx *x = vctx;
    const dims d = x->d;
    int32_t h = (int32_t)hh, kh = h / d.r, T = x->T;
    float *S = x->rec + (size_t)h * d.dk * d.dv, *g = x->work + (size_t)h * x->work_floats;
    float *beta = g + T, *work = beta + T;
    for (int32_t t = 0; t < T; t++) {
        beta[t] = fm__sigmoid(x->b[(size_t)t * d.nv + h]);
        g[t] = x->w->a_neg[h] * softplus(x->a[(size_t)t * d.nv + h] + x->w->dt_bias[h]);
    }
    const float *q = x->conv + (size_t)kh * d.dk, *k = x->conv + d.kd + (size_t)kh * d.dk;
    const float *v = x->conv + 2 * d.kd + (size_t)h * d.dv;
    float *o = x->o + (size_t)h * d.dv;
    if (T == 1)
        fm__gdr_step(S, k, q, v, beta[0], expf(g[0]), d.dk, d.dv, work, o);
    else
        fm__gdr_chunked(S, d.dk, d.dv, T, q, d.C, k, d.C, v, d.C, g, beta, o, d.vd, work);
    /* gated RMSNorm: rmsnorm(o) * w * silu(z) */
    for (int32_t t = 0; t < T; t++) {
        float *ot = o + (size_t)t * d.vd;
        const float *z = x->z + (size_t)t * d.vd + (size_t)h * d.dv;
        fm__rmsnorm(ot, ot, x->w->norm, d.dv, x->eps);
        for (int32_t j = 0; j < d.dv; j++) ot[j] *= z[j] / (1.0f + expf(-z[j]));
    }
}

static void forward(const void *vw, const fm__config *c, fm__pool *pool, const float *xb,
                    int32_t T, float *state, float *scratch, float *out) {
    const dn_w *w = vw;
    const dims d = dims_of(c);
    int64_t H = c->hidden;
    float *qkvz = scratch, *ba = qkvz + (size_t)T * d.P, *mixed = ba + (size_t)T * 2 * d.nv;
    float *conv = mixed + (size_t)T * d.C, *z = conv + (size_t)T * d.C, *o = z + (size_t)T * d.vd;
    float *work = o + (size_t)T * d.vd; /* [nv] head work areas */
    float *b = ba, *a = ba + (size_t)T * d.nv;
    float *hist = state, *rec = state + (size_t)(d.K - 1) * d.C;
    /* 1. input projections */
    fm__matmul(pool, &w->qkvz, xb, H, T, qkvz, d.P);
    fm__matmul(pool, &w->ba, xb, H, T, mixed, 2 * d.nv); /* ba rows staged in `mixed` */
    /* 2. regroup per key head: [q|k|v|z] blocks -> mixed [q_all|k_all|v_all], z; [b|a] -> b, a */
    for (int32_t t = 0; t < T; t++) {
        const float *src = mixed + (size_t)t * 2 * d.nv;
        for (int32_t g = 0; g < d.nk; g++)
            for (int32_t j = 0; j < d.r; j++) {
                b[(size_t)t * d.nv + g * d.r + j] = src[g * 2 * d.r + j];
                a[(size_t)t * d.nv + g * d.r + j] = src[g * 2 * d.r + d.r + j];
            }
    }
    for (int32_t t = 0; t < T; t++) {
        const float *src = qkvz + (size_t)t * d.P;
        float *mx = mixed + (size_t)t * d.C, *zt = z + (size_t)t * d.vd;
        int32_t grp = 2 * d.dk + 2 * d.r * d.dv, rv = d.r * d.dv;
        for (int32_t g = 0; g < d.nk; g++) {
            const float *blk = src + (size_t)g * grp;
            memcpy(mx + (size_t)g * d.dk, blk, (size_t)d.dk * 4);
            memcpy(mx + d.kd + (size_t)g * d.dk, blk + d.dk, (size_t)d.dk * 4);
            memcpy(mx + 2 * d.kd + (size_t)g * rv, blk + 2 * d.dk, (size_t)rv * 4);
            memcpy(zt + (size_t)g * rv, blk + 2 * d.dk + rv, (size_t)rv * 4);
        }
    }
    /* 3. causal depthwise conv1d with the rolling state of the last K-1 inputs, then SiLU */
    for (int32_t t = 0; t < T; t++) {
        const float *xt = mixed + (size_t)t * d.C;
        float *y = conv + (size_t)t * d.C;
        for (int32_t ch = 0; ch < d.C; ch++) {
            const float *wc = w->conv + (size_t)ch * d.K;
            float s = 0;
            for (int32_t j = 0; j < d.K - 1; j++) s += wc[j] * hist[(size_t)j * d.C + ch];
            s += wc[d.K - 1] * xt[ch];
            y[ch] = s / (1.0f + expf(-s));
        }
        if (d.K > 1) {
            memmove(hist, hist + d.C, (size_t)(d.K - 2) * d.C * 4);
            memcpy(hist + (size_t)(d.K - 2) * d.C, xt, (size_t)d.C * 4);
        }
    }
    /* 4. L2-normalise q and k per key head; scale q by 1/sqrt(dk) */
    float qscale = 1.0f / sqrtf((float)d.dk);
    for (int32_t t = 0; t < T; t++) {
        float *row = conv + (size_t)t * d.C;
        for (int32_t g = 0; g < 2 * d.nk; g++) {
            float *v = row + (size_t)g * d.dk;
            double ss = 0;
            for (int32_t i = 0; i < d.dk; i++) ss += (double)v[i] * v[i];
            float inv = (float)(1.0 / sqrt(ss + 1e-6)) * (g < d.nk ? qscale : 1.0f);
            for (int32_t i = 0; i < d.dk; i++) v[i] *= inv;
        }
    }
    /* 5. gated delta rule + gated norm, one task per value head */
    head_ctx hc = {w, d, T, c->rms_eps, conv, z, b, a, rec, o, work, head_work(d, T)};
    fm__pool_run(pool, d.nv, head_task, &hc);
    /* 6. output projection */
    fm__matmul(pool, &w->out, o, d.vd, T, out, H);
}

static const fm__mixer k_gated_deltanet = {
    .state_floats = state_floats,
    .scratch_floats = scratch_floats,
    .load = load,
    .free_weights = free_weights,
    .forward = forward,
};

static fm_status parse(struct fm__config *c, const struct cJSON *root) {
    fm_status rc;
    if ((rc = fm__cfg_int(c, NULL, "shared_expert_intermediate_size", true, &c->shared_inter)) ||
        (rc = fm__cfg_int(c, NULL, "linear_num_key_heads", true, &c->lin_k_heads)) ||
        (rc = fm__cfg_int(c, NULL, "linear_num_value_heads", true, &c->lin_v_heads)) ||
        (rc = fm__cfg_int(c, NULL, "linear_key_head_dim", true, &c->lin_k_dim)) ||
        (rc = fm__cfg_int(c, NULL, "linear_value_head_dim", true, &c->lin_v_dim)) ||
        (rc = fm__cfg_int(c, NULL, "linear_conv_kernel_dim", true, &c->lin_conv)))
        return rc;
    if (c->lin_k_heads <= 0 || c->lin_v_heads <= 0 || c->lin_v_heads % c->lin_k_heads ||
        c->lin_k_dim <= 0 || c->lin_v_dim <= 0 || c->lin_conv <= 0 || c->lin_k_dim > 4096 ||
        c->lin_v_dim > 4096 || c->lin_conv > 64)
        return fm__err(FM_ERR_FORMAT, "%s: linear attention dimensions are invalid (value heads "
                                      "must be a multiple of key heads)", c->path);
    c->layer_linear = calloc((size_t)c->n_layers, 1);
    if (!c->layer_linear) return fm__err(FM_ERR_NOMEM, "out of memory");
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers)
            return fm__err(FM_ERR_FORMAT, "%s: key layer_types must list num_hidden_layers types", c->path);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, lt) {
            if (!cJSON_IsString(it) || (strcmp(it->valuestring, "linear_attention") != 0 &&
                                        strcmp(it->valuestring, "full_attention") != 0))
                return fm__err(FM_ERR_FORMAT, "%s: layer_types[%d] must be linear_attention or "
                                              "full_attention", c->path, i);
            c->layer_linear[i++] = strcmp(it->valuestring, "linear_attention") == 0;
        }
    } else {
        int32_t every = 4;
        if ((rc = fm__cfg_int(c, NULL, "full_attention_interval", false, &every))) return rc;
        if (every <= 0) return fm__err(FM_ERR_FORMAT, "%s: full_attention_interval must be > 0", c->path);
        for (int32_t i = 0; i < c->n_layers; i++) c->layer_linear[i] = (i + 1) % every != 0;
    }
    return FM_OK;
}

const fm__arch fm__arch_qwen3_next = {
    .name = "qwen3_next",
    .rope_theta = 10000.0,
    .rms_eps = 1e-6f,
    .norm_topk_prob = 1,
    .expert_inter_key = "moe_intermediate_size",
    .qk_norm = FM_QKNORM_HEAD,
    .shared_expert = 1,
    .moe_prefix = "mlp",
    .router_name = "gate",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
    .partial_rotary = 0.25f,
    .norm_zero_centred = 1,
    .attn_output_gate = 1,
    .linear = &k_gated_deltanet,
    .parse_config = parse,
};
