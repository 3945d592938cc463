/* model.c: a loaded MoE model and its exact CPU forward pass.
 *
 * Load: config.json -> safetensors index -> resident weights (fm__mat views into the
 * mmap) -> expert map (byte ranges of every routed expert) -> memory plan -> expert
 * cache. Forward, llama2.c style: weight structs with shape comments, scratch allocated
 * once at load, a linear forward() with one comment per step, no allocation in the hot
 * path.
 *
 * Exactness: a token's MoE output is the sum over its top-k experts, in rank order, of
 * weight * expert(x). Each expert runs once per batch over all tokens routed to it,
 * whatever the cache holds; experts are fetched in chunks of at most the cache capacity
 * and their per-(token, rank) outputs kept until all chunks ran, so logits are bitwise the
 * same at any capacity, and (with batch-independent kernels) in prefill and decode.
 * Reads overlap compute: a chunk's reads start right after the router, the shared expert
 * runs meanwhile, and each expert runs as soon as it is resident (fm__ec_fetch_any). With
 * FM_PREFETCH=1, decode also queues the next MoE layer's likely experts (its router on the
 * current residual stream); measured slower here, so it is off by default.
 *
 * Layers whose config marks them linear (qwen3_next) run the architecture's token mixer
 * (arch.h fm__mixer) on a flat recurrent state instead of attention over the KV cache. That
 * state cannot be cut back like a KV cache, so fm__state_snapshot copies it (the last
 * N_SNAP positions) and fm__state_truncate restores a copy; the mixer processes tokens one
 * at a time in every batch, so a continued run is bitwise equal to an uninterrupted one. */
#include "model.h"
#include "arch.h"
#include "backend/ops.h"
#include "config.h"
#include "loader.h"
#include "safetensors.h"
#include "tokenizer.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_BATCH 128       /* tokens per forward chunk (bounds the scratch) */
#define MAX_HEAD_DIM 1024

typedef struct layer_w {
    float *attn_norm;        /* [hidden] */
    fm__mat wq;              /* [n_heads*head_dim, hidden] */
    fm__mat wk, wv;          /* [n_kv_heads*head_dim, hidden] */
    fm__mat wo;              /* [hidden, n_heads*head_dim] */
    float *bq, *bk, *bv, *bo;/* biases of q/k/v/o or NULL */
    float *q_norm, *k_norm;  /* [head_dim] (per head) or [heads*head_dim] (whole), or NULL */
    float *ffn_norm;         /* [hidden] */
    int32_t moe;             /* index among MoE layers, -1 = dense MLP */
    int32_t attn;            /* index among attention layers (KV cache), -1 = linear mixer */
    int32_t lin;             /* index among linear-mixer layers (state), -1 = attention */
    void *mix;               /* linear mixer weights (arch->linear), or NULL */
    fm__mat router;          /* [n_experts, hidden] */
    fm__mat mg, mu, md;      /* dense MLP or shared expert: [I, hidden] x2, [hidden, I] */
    int32_t m_inter;         /* I of mg/mu/md, 0 = none */
    fm__mat shared_gate;     /* [1, hidden] (qwen2_moe), data NULL if none */
} layer_w;

struct fm_model {
    char *dir;
    fm__config *cfg;
    fm__st_set *st;
    fm__loader ld;
    fm__mat embed;           /* [vocab, hidden] */
    float *final_norm;       /* [hidden] */
    fm__mat lm_head;         /* [vocab, hidden] (the embedding when tied) */
    layer_w *layers;         /* [n_layers] */
    int32_t n_moe, n_attn, n_lin;
    size_t lin_state;        /* floats of one linear layer's state */
    int mlx_layout;          /* MLX conversion (switch_mlp experts): norms stored as 1 + w */
    fm__expert_map emap;
    fm__ec_plan plan;
    fm__ecache *cache;
    fm__pool *pool;
    struct fm__tokenizer *tok;
    int32_t n_ctx, miss_policy;
    int32_t qd, kvd, rot;    /* n_heads*head_dim, n_kv_heads*head_dim, rotated dims */
    float *rope_cos, *rope_sin; /* [n_ctx][rot/2] */
    int64_t resident_bytes;
    fm_model_info info;
    int32_t eos_count;
    const int32_t *eos_ids;
    /* scratch, B = MAX_BATCH rows */
    float *x, *xb, *hb;      /* [B, hidden] */
    float *q, *att, *gate;   /* [B, qd] */
    float *qg;               /* [B, 2*qd] q projection with output gate (attn_output_gate) */
    float *mix_scratch;      /* linear mixer scratch */
    float *k, *v;            /* [B, kvd] */
    float *mg_out, *mu_out;  /* [B, max intermediate] */
    float *rl;               /* [B, n_experts] router probabilities */
    float *topw;             /* [B, top_k] routing weights */
    int32_t *topi;           /* [B, top_k] expert ids */
    float *ebuf;             /* [B, top_k, hidden] per-(token, rank) expert outputs */
    float *ein, *eout;       /* [B, hidden] gathered expert input / output */
    float *sg;               /* [B] shared expert gate */
    float *sbuf;             /* [B, hidden] shared expert output */
    uint8_t *done;           /* [capacity] fm__ec_fetch_any progress */
    float *pf_x, *pf_rl;     /* [hidden], [n_experts]: next-layer router (prefetch) */
    int32_t *pf_ids;         /* [top_k] */
    float *pf_w;             /* [top_k] */
    int32_t *cnt, *eoff;     /* [n_experts + 1] */
    int32_t *elist;          /* [B * top_k] (token*top_k + rank), grouped by expert */
    int32_t *uniq;           /* [n_experts] experts routed in this batch */
    fm__expert_w *ew;        /* [capacity] */
    void *streamed;          /* the streamed resident matrices' bytes on huge pages, or NULL */
    int32_t *pidx;           /* [B] decode: the (token, rank) row of each batched expert */
    const fm__mat **mv_w;    /* [2B] fm__matvec_multi arguments */
    const float **mv_x;
    float **mv_y;
    /* decode phase timers (FM_PHASES=1): seconds per phase over ph_tokens one-token calls */
    int ph_env, ph_on;       /* FM_PHASES set; timing the current call */
    double ph_t[16];
    int64_t ph_tokens;
};

#define N_SNAP 2

struct fm__state {
    fm_model *m;
    int32_t pos, n_ctx;
    float *kc, *vc;          /* [n_attn][n_kv_heads][n_ctx][head_dim]: each head's rows
                                contiguous, so attention streams them in order */
    float *lin;              /* [n_lin][lin_state] recurrent + convolution state */
    float *snap[N_SNAP];     /* copies of lin at positions snap_pos (-1 = empty) */
    int32_t snap_pos[N_SNAP], snap_next;
};

/* Decode phase timers: with FM_PHASES=1 in the environment at load, one-token forward
 * calls add the wall time of each phase (caller thread) to m->ph_t, and fm_model_free logs
 * the per-token breakdown. Off: one branch per phase. */
enum { PH_EMBED, PH_NORM, PH_QKV, PH_QKROPE, PH_ATTN, PH_WO, PH_ROUTER, PH_TOPK, PH_FETCH,
       PH_GATEUP, PH_SILU, PH_DOWN, PH_SHARED, PH_COMBINE, PH_LMHEAD, PH_N };
_Static_assert(PH_N <= 16, "fm_model.ph_t holds 16 phases");
static const char *const ph_names[PH_N] = {
    "embed", "norms", "qkv", "qk-norm+rope+kv", "attention", "o_proj+res", "router",
    "top-k+group", "expert lookup", "experts gate+up", "silu", "experts down", "shared/mlp",
    "combine+res", "final norm+lm_head"};

/* Adds the time since t0 to phase i and returns the time now (0 when the timers are off). */
static inline double ph(fm_model *m, int i, double t0) {
    if (!m->ph_on) return 0;
    double t = fm__now();
    m->ph_t[i] += t - t0;
    return t;
}
static inline double ph_now(const fm_model *m) { return m->ph_on ? fm__now() : 0; }

static void ph_report(const fm_model *m) {
    if (m->ph_tokens <= 0) return;
    double tot = 0;
    for (int i = 0; i < PH_N; i++) tot += m->ph_t[i];
    char buf[1024];
    int at = 0;
    for (int i = 0; i < PH_N && at < (int)sizeof buf - 64; i++)
        at += snprintf(buf + at, sizeof buf - (size_t)at, "%s%s %.3f (%.1f%%)", i ? ", " : "", ph_names[i],
                       1e3 * m->ph_t[i] / (double)m->ph_tokens, 100 * m->ph_t[i] / tot);
    FM_LOGW("decode phases, ms per token over %lld tokens (total %.3f): %s", (long long)m->ph_tokens,
            1e3 * tot / (double)m->ph_tokens, buf);
}

/* ---- load --------------------------------------------------------------------------- */

/* Zero-centred RMSNorm: the weight acts as (1 + w), except in MLX conversions (stored so). */
static void norm_offset(const fm_model *m, float *w, int64_t n) {
    if (!m->cfg->arch->norm_zero_centred || m->mlx_layout) return;
    for (int64_t i = 0; i < n; i++) w[i] = 1.0f + w[i];
}

static fm_status load_layer(fm_model *m, int32_t l, int32_t *moe_idx) {
    const fm__config *c = m->cfg;
    const fm__arch *a = c->arch;
    fm__loader *L = &m->ld;
    layer_w *w = &m->layers[l];
    char p[200], n[300];
    fm_status rc;
    int64_t H = c->hidden, hd = c->head_dim;
    snprintf(p, sizeof p, "model.layers.%d", l);
#define MOD(...) (snprintf(n, sizeof n, __VA_ARGS__), n)
    if ((rc = fm__load_vec(L, MOD("%s.input_layernorm.weight", p), H, true, &w->attn_norm)) ||
        (rc = fm__load_vec(L, MOD("%s.post_attention_layernorm.weight", p), H, true, &w->ffn_norm)))
        return rc;
    norm_offset(m, w->attn_norm, H);
    norm_offset(m, w->ffn_norm, H);
    w->attn = w->lin = -1;
    if (c->layer_linear && c->layer_linear[l]) {
        w->lin = m->n_lin++;
        if ((rc = a->linear->load(L, c, MOD("%s.linear_attn", p), &w->mix))) return rc;
        goto mlp_part;
    }
    w->attn = m->n_attn++;
    if ((rc = fm__load_mat(L, MOD("%s.self_attn.q_proj", p), (a->attn_output_gate ? 2 : 1) * m->qd, H, true, &w->wq)) ||
        (rc = fm__load_mat(L, MOD("%s.self_attn.k_proj", p), m->kvd, H, true, &w->wk)) ||
        (rc = fm__load_mat(L, MOD("%s.self_attn.v_proj", p), m->kvd, H, true, &w->wv)) ||
        (rc = fm__load_mat(L, MOD("%s.self_attn.o_proj", p), H, m->qd, true, &w->wo)))
        return rc;
    bool need_b = a->qkv_bias || c->attention_bias;
    if ((rc = fm__load_vec(L, MOD("%s.self_attn.q_proj.bias", p), m->qd, need_b, &w->bq)) ||
        (rc = fm__load_vec(L, MOD("%s.self_attn.k_proj.bias", p), m->kvd, need_b, &w->bk)) ||
        (rc = fm__load_vec(L, MOD("%s.self_attn.v_proj.bias", p), m->kvd, need_b, &w->bv)) ||
        (rc = fm__load_vec(L, MOD("%s.self_attn.o_proj.bias", p), H, c->attention_bias, &w->bo)))
        return rc;
    if (a->qk_norm != FM_QKNORM_NONE) {
        int64_t qn = a->qk_norm == FM_QKNORM_HEAD ? hd : m->qd;
        int64_t kn = a->qk_norm == FM_QKNORM_HEAD ? hd : m->kvd;
        if ((rc = fm__load_vec(L, MOD("%s.self_attn.q_norm.weight", p), qn, true, &w->q_norm)) ||
            (rc = fm__load_vec(L, MOD("%s.self_attn.k_norm.weight", p), kn, true, &w->k_norm)))
            return rc;
        norm_offset(m, w->q_norm, qn);
        norm_offset(m, w->k_norm, kn);
    }
mlp_part:
    w->moe = -1;
    if (fm__config_layer_is_moe(c, l)) {
        /* Mixtral checkpoints written by transformers 5 use "mlp" instead of its prefix. */
        char mp[240];
        snprintf(mp, sizeof mp, "%s.%s", p, a->moe_prefix);
        if (!fm__has_experts(L, mp)) {
            char alt[240];
            snprintf(alt, sizeof alt, "%s.mlp", p);
            if (fm__has_experts(L, alt)) memcpy(mp, alt, sizeof mp);
        }
        w->moe = (*moe_idx)++;
        if ((rc = fm__load_mat(L, MOD("%s.%s", mp, a->router_name), c->n_experts, H, true, &w->router)))
            return rc;
        fm__expert_src *src = m->emap.src + (int64_t)w->moe * c->n_experts;
        if ((rc = fm__load_experts(L, mp, c->n_experts, c->moe_inter, H, src))) return rc;
        if (a->shared_expert) {
            w->m_inter = c->shared_inter;
            if ((rc = fm__load_mat(L, MOD("%s.shared_expert.gate_proj", mp), w->m_inter, H, true, &w->mg)) ||
                (rc = fm__load_mat(L, MOD("%s.shared_expert.up_proj", mp), w->m_inter, H, true, &w->mu)) ||
                (rc = fm__load_mat(L, MOD("%s.shared_expert.down_proj", mp), H, w->m_inter, true, &w->md)) ||
                (rc = fm__load_mat(L, MOD("%s.shared_expert_gate", mp), 1, H, true, &w->shared_gate)))
                return rc;
        }
    } else {
        if (c->inter <= 0)
            return fm__err(FM_ERR_FORMAT, "%s: missing key intermediate_size (layer %d is dense)",
                           c->path, l);
        w->m_inter = c->inter;
        if ((rc = fm__load_mat(L, MOD("%s.mlp.gate_proj", p), w->m_inter, H, true, &w->mg)) ||
            (rc = fm__load_mat(L, MOD("%s.mlp.up_proj", p), w->m_inter, H, true, &w->mu)) ||
            (rc = fm__load_mat(L, MOD("%s.mlp.down_proj", p), H, w->m_inter, true, &w->md)))
            return rc;
    }
#undef MOD
    return FM_OK;
}

/* A key that changes when the checkpoint or its config changes (canonical paths, sizes,
 * mtimes), and not with the working directory the model was opened from. */
static char *content_key(const fm_model *m) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < m->st->n_files; i++) {
        struct stat st;
        char *canon = realpath(m->st->files[i].path, NULL);
        const char *p = canon ? canon : m->st->files[i].path;
        for (const char *q = p; *q; q++) h = (h ^ (uint8_t)*q) * 1099511628211ull;
        free(canon);
        if (stat(p, &st) == 0) {
            h = (h ^ (uint64_t)st.st_size) * 1099511628211ull;
            h = (h ^ (uint64_t)st.st_mtime) * 1099511628211ull;
        }
    }
    struct stat cs;
    if (stat(m->cfg->path, &cs) == 0) {
        h = (h ^ (uint64_t)cs.st_size) * 1099511628211ull;
        h = (h ^ (uint64_t)cs.st_mtime) * 1099511628211ull;
    }
    return fm__asprintf("%s-%016llx", m->cfg->model_type, (unsigned long long)h);
}

static uint64_t expert_bytes(const fm__expert_src *e) {
    const fm__mat_src *ms[3] = {&e->gate, &e->up, &e->down};
    uint64_t b = 0;
    for (int i = 0; i < 3; i++) b += ms[i]->data.len + ms[i]->scales.len + ms[i]->biases.len;
    return b;
}

static float *falloc(size_t n) { return fm__aligned_alloc(64, (n ? n : 1) * sizeof(float)); }

/* Process image, libraries, thread stacks, the tokenizer and a caller's logits rows: a
 * fixed allowance paid by a --mem-limit budget next to the forward scratch. */
#define PROCESS_ALLOWANCE ((uint64_t)40 << 20)

/* Bytes alloc_scratch and rope_table will allocate (the large arrays), plus
 * PROCESS_ALLOWANCE (declared in model.h). Kept next to alloc_scratch: a new scratch array
 * is added to both. */
uint64_t fm__model_work_bytes(const fm__config *c, int32_t n_ctx) {
    uint64_t B = MAX_BATCH, H = (uint64_t)c->hidden, K = (uint64_t)c->top_k, E = (uint64_t)c->n_experts;
    uint64_t I = (uint64_t)FM_MAX(c->moe_inter, FM_MAX(c->inter, c->shared_inter));
    uint64_t qd = (uint64_t)c->n_heads * (uint64_t)c->head_dim;
    uint64_t kvd = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    int32_t rot = (int32_t)(c->head_dim * c->partial_rotary);
    uint64_t floats = B * (7 * H + 5 * qd + 2 * kvd + 2 * I + E + K + K * H + 1) + H + E + K;
    if (c->arch->linear) floats += (uint64_t)c->arch->linear->scratch_floats(c, MAX_BATCH);
    floats += 2 * (uint64_t)n_ctx * (uint64_t)(rot / 2 + 1);
    uint64_t ints = B * K * 3 + 3 * E + 8 * B + (uint64_t)c->n_experts * 2;
    return floats * sizeof(float) + ints * sizeof(int64_t) + PROCESS_ALLOWANCE;
}

static fm_status alloc_scratch(fm_model *m) {
    const fm__config *c = m->cfg;
    size_t B = MAX_BATCH, H = (size_t)c->hidden, K = (size_t)c->top_k, E = (size_t)c->n_experts;
    size_t I = (size_t)FM_MAX(c->moe_inter, FM_MAX(c->inter, c->shared_inter));
    int32_t cap = fm__ec_capacity(m->cache);
    m->x = falloc(B * H);
    m->xb = falloc(B * H);
    m->hb = falloc(B * H);
    m->q = falloc(B * (size_t)m->qd);
    m->att = falloc(B * (size_t)m->qd);
    m->gate = falloc(B * (size_t)m->qd);
    m->qg = falloc(B * 2 * (size_t)m->qd);
    m->mix_scratch = falloc(c->arch->linear ? c->arch->linear->scratch_floats(c, MAX_BATCH) : 1);
    m->k = falloc(B * (size_t)m->kvd);
    m->v = falloc(B * (size_t)m->kvd);
    m->mg_out = falloc(B * I);
    m->mu_out = falloc(B * I);
    m->rl = falloc(B * E);
    m->topw = falloc(B * K);
    m->ebuf = falloc(B * K * H);
    m->ein = falloc(B * H);
    m->eout = falloc(B * H);
    m->sg = falloc(B);
    m->sbuf = falloc(B * H);
    m->done = fm__calloc((size_t)(cap > 0 ? cap : 1), 1);
    m->pf_x = falloc(H);
    m->pf_rl = falloc(E);
    m->pf_ids = fm__calloc(K, sizeof *m->pf_ids);
    m->pf_w = falloc(K);
    m->topi = fm__calloc(B * K, sizeof *m->topi);
    m->cnt = fm__calloc(E + 1, sizeof *m->cnt);
    m->eoff = fm__calloc(E + 1, sizeof *m->eoff);
    m->elist = fm__calloc(B * K, sizeof *m->elist);
    m->uniq = fm__calloc(E, sizeof *m->uniq);
    m->ew = fm__calloc((size_t)(cap > 0 ? cap : 1), sizeof *m->ew);
    m->pidx = fm__calloc(MAX_BATCH, sizeof *m->pidx);
    m->mv_w = fm__calloc(2 * MAX_BATCH, sizeof *m->mv_w);
    m->mv_x = fm__calloc(2 * MAX_BATCH, sizeof *m->mv_x);
    m->mv_y = fm__calloc(2 * MAX_BATCH, sizeof *m->mv_y);
    if (!m->pidx || !m->mv_w || !m->mv_x || !m->mv_y)
        return fm__err(FM_ERR_NOMEM, "out of memory for the forward pass scratch");
    if (!m->sbuf || !m->done || !m->pf_x || !m->pf_rl || !m->pf_ids || !m->pf_w)
        return fm__err(FM_ERR_NOMEM, "out of memory for the forward pass scratch");
    if (!m->gate || !m->qg || !m->mix_scratch) return fm__err(FM_ERR_NOMEM, "out of memory for the forward pass scratch");
    if (!m->x || !m->xb || !m->hb || !m->q || !m->att || !m->k || !m->v || !m->mg_out ||
        !m->mu_out || !m->rl || !m->topw || !m->ebuf || !m->ein || !m->eout || !m->sg ||
        !m->topi || !m->cnt || !m->eoff || !m->elist || !m->uniq || !m->ew)
        return fm__err(FM_ERR_NOMEM, "out of memory for the forward pass scratch");
    return FM_OK;
}

/* Precomputes cos/sin of every position like transformers' default RoPE (float32
 * inv_freq and position products). */
static fm_status rope_table(fm_model *m) {
    int32_t half = m->rot / 2;
    m->rope_cos = falloc((size_t)m->n_ctx * (size_t)half);
    m->rope_sin = falloc((size_t)m->n_ctx * (size_t)half);
    if (!m->rope_cos || !m->rope_sin) return fm__err(FM_ERR_NOMEM, "out of memory for RoPE tables");
    for (int32_t i = 0; i < half; i++) {
        float inv = (float)(1.0 / pow(m->cfg->rope_theta, (double)(2 * i) / (double)m->rot));
        for (int32_t p = 0; p < m->n_ctx; p++) {
            float f = (float)p * inv;
            m->rope_cos[(size_t)p * half + i] = cosf(f);
            m->rope_sin[(size_t)p * half + i] = sinf(f);
        }
    }
    return FM_OK;
}

/* Drops the whole pages of [p, p + n) from our mapping of the checkpoint and from the page
 * cache, once their bytes have been copied, so the copy does not count twice against the
 * memory budget (RSS and page cache). Only ranges inside one of the read-only file
 * mappings are touched; the pages would simply fault in again from the file if read. */
static void release_mapped(const fm__st_set *st, const void *p, size_t n) {
    const uint8_t *b = p;
    for (int32_t f = 0; f < st->n_files; f++) {
        const fm__st_file *sf = &st->files[f];
        if (!sf->map || b < sf->map || n > sf->size || (size_t)(b - sf->map) > sf->size - n) continue;
        const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t lo = ((uintptr_t)b + pg - 1) & ~(pg - 1), hi = ((uintptr_t)b + n) & ~(pg - 1);
        if (hi > lo) {
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
            posix_fadvise(sf->fd, (off_t)(lo - (uintptr_t)sf->map), (off_t)(hi - lo), POSIX_FADV_DONTNEED);
        }
        return;
    }
}

/* Copies the arrays of matrix w into buf at *at (64-byte aligned pieces), points w at the
 * copies and releases the mapped source pages; with buf NULL only advances *at. */
static void mat_move(const fm__st_set *st, fm__mat *w, char *buf, size_t *at) {
    if (!w->data || w->rows <= 0) return;
    const void **arr[3] = {&w->data, &w->scales, &w->biases};
    size_t len[3] = {fm__mat_data_bytes(w), fm__mat_scale_bytes(w), fm__mat_scale_bytes(w)};
    for (int i = 0; i < 3; i++) {
        if (!*arr[i] || !len[i]) continue;
        if (buf) {
            memcpy(buf + *at, *arr[i], len[i]);
            release_mapped(st, *arr[i], len[i]);
            *arr[i] = buf + *at;
        }
        *at += (len[i] + 63) & ~(size_t)63;
    }
}

/* Decode streams every resident matrix once per token (attention, router, dense or shared
 * MLP, LM head). Read through the checkpoint's mmap they sit on 4 KiB pages, and the
 * page walks of such long streams cost a third of the read rate here; so they are copied
 * once into one anonymous buffer that asks for transparent huge pages (MADV_HUGEPAGE),
 * the page cache copy staying clean and reclaimable. The bytes are the same, so results
 * are unchanged. Skipped (the mmap views stay) if the buffer cannot be allocated or
 * FM_HUGEPAGES=0. The token embedding stays mapped: one row of it is read per token. */
static void streamed_to_huge_pages(fm_model *m) {
    const char *env = getenv("FM_HUGEPAGES");
    if (env && strcmp(env, "0") == 0) return;
    const fm__config *c = m->cfg;
    bool tied = m->lm_head.data == m->embed.data;
    for (int pass = 0; pass < 2; pass++) {
        char *buf = pass ? m->streamed : NULL;
        size_t at = 0;
        for (int32_t l = 0; l < c->n_layers; l++) {
            layer_w *w = &m->layers[l];
            fm__mat *ms[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->router, &w->mg, &w->mu, &w->md, &w->shared_gate};
            for (size_t i = 0; i < FM_ARRAY_LEN(ms); i++) mat_move(m->st, ms[i], buf, &at);
        }
        mat_move(m->st, &m->lm_head, buf, &at);
        if (pass == 0) {
            const size_t huge = 2u << 20;
            size_t n = (at + huge - 1) & ~(huge - 1);
            if (n == 0 || posix_memalign(&m->streamed, huge, n) != 0) { m->streamed = NULL; return; }
#ifdef MADV_HUGEPAGE
            madvise(m->streamed, n, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
#endif
        }
    }
    if (tied) m->embed = m->lm_head;
}

/* The packed store directory for fm_model_params.cache_dir: the parameter itself when set
 * ("" = no store), else $HOME/.cache/flash-moe (created by the store on first use), else
 * NULL (no HOME: no store). The store writes a temporary file and renames it into place,
 * so processes sharing the directory never see a partial store. */
static const char *cache_dir_param(const char *p, char *buf, size_t n) {
    if (p) return p;
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    int len = snprintf(buf, n, "%s/.cache/flash-moe", home);
    return len > 0 && (size_t)len < n ? buf : NULL;
}

static fm_status load(fm_model *m, const char *dir, const fm_model_params *p) {
    fm_status rc;
    if ((rc = fm__config_load(dir, &m->cfg))) return rc;
    const fm__config *c = m->cfg;
    if ((rc = fm__st_open_dir(dir, &m->st))) return rc;
    m->ld.st = m->st;
    m->ld.cfg = c;
    m->qd = c->n_heads * c->head_dim;
    m->kvd = c->n_kv_heads * c->head_dim;
    if (c->head_dim > MAX_HEAD_DIM)
        return fm__err(FM_ERR_UNSUPPORTED, "%s: head_dim %d is over %d", c->path, c->head_dim, MAX_HEAD_DIM);
    m->rot = (int32_t)(c->head_dim * c->partial_rotary);
    m->rot -= m->rot % 2;
    m->n_ctx = p->n_ctx > 0 ? p->n_ctx : (c->max_pos > 0 ? FM_MIN(c->max_pos, 4096) : 4096);
    m->miss_policy = p->miss_policy;
    const char *phe = getenv("FM_PHASES");
    m->ph_env = phe && *phe && strcmp(phe, "0") != 0;
    if (p->miss_policy != FM_MISS_EXACT && p->miss_policy != FM_MISS_SKIP)
        return fm__err(FM_ERR_ARG, "miss_policy %d is neither FM_MISS_EXACT nor FM_MISS_SKIP", p->miss_policy);

    /* Resident weights and the expert map. */
    int64_t H = c->hidden, V = c->vocab;
    for (int32_t i = 0; i < m->st->n_tensors && !m->mlx_layout; i++)
        m->mlx_layout = strstr(m->st->tensors[i].name, ".switch_mlp.") != NULL;
    if ((rc = fm__load_mat(&m->ld, "model.embed_tokens", V, H, true, &m->embed)) ||
        (rc = fm__load_vec(&m->ld, "model.norm.weight", H, true, &m->final_norm)))
        return rc;
    norm_offset(m, m->final_norm, H);
    if (c->tie_embeddings) {
        m->lm_head = m->embed; /* tied: transformers and mlx-lm use the embedding */
    } else if ((rc = fm__load_mat(&m->ld, "lm_head", V, H, true, &m->lm_head))) {
        return rc;
    }
    for (int32_t l = 0; l < c->n_layers; l++) m->n_moe += fm__config_layer_is_moe(c, l);
    m->layers = fm__calloc((size_t)c->n_layers, sizeof *m->layers);
    m->emap.src = fm__calloc((size_t)FM_MAX(m->n_moe, 1) * (size_t)c->n_experts, sizeof *m->emap.src);
    m->emap.layer_index = fm__calloc((size_t)FM_MAX(m->n_moe, 1), sizeof *m->emap.layer_index);
    if (!m->layers || !m->emap.src || !m->emap.layer_index) return fm__err(FM_ERR_NOMEM, "out of memory");
    for (int32_t l = 0, j = 0; l < c->n_layers; l++)
        if (fm__config_layer_is_moe(c, l)) m->emap.layer_index[j++] = l;
    int32_t moe_idx = 0;
    for (int32_t l = 0; l < c->n_layers; l++)
        if ((rc = load_layer(m, l, &moe_idx))) return rc;
    m->resident_bytes = (int64_t)m->ld.resident_bytes;
    streamed_to_huge_pages(m);
    m->lin_state = m->n_lin ? c->arch->linear->state_floats(c) : 0;

    fm__expert_map *em = &m->emap;
    em->n_files = m->st->n_files;
    em->paths = fm__calloc((size_t)em->n_files, sizeof *em->paths);
    if (!em->paths) return fm__err(FM_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < em->n_files; i++)
        if (!(em->paths[i] = fm__strdup(m->st->files[i].path))) return fm__err(FM_ERR_NOMEM, "out of memory");
    em->n_moe_layers = m->n_moe;
    em->n_experts = c->n_experts;
    em->top_k = c->top_k;
    em->expert_bytes = m->n_moe ? expert_bytes(&em->src[0]) : 0;
    em->content_key = content_key(m);
    if (!em->content_key) return fm__err(FM_ERR_NOMEM, "out of memory");
    if (m->n_moe == 0)
        return fm__err(FM_ERR_UNSUPPORTED, "%s: no layer has routed experts", c->path);

    /* Memory plan, then the cache. A given budget first pays for the working memory
     * (forward scratch, RoPE tables, process image), so the whole process stays under it. */
    uint64_t kv_bytes = 2ull * (uint64_t)m->n_attn * (uint64_t)m->n_ctx * (uint64_t)m->kvd * 4u +
                        (1u + N_SNAP) * (uint64_t)m->n_lin * m->lin_state * 4u;
    uint64_t work = fm__model_work_bytes(c, m->n_ctx);
    int64_t limit = p->mem_limit;
    if (limit > 0 && p->capacity <= 0) {
        if ((uint64_t)limit <= work)
            return fm__err(FM_ERR_NOMEM, "memory plan: budget %.1f MiB does not cover the working "
                           "memory (forward scratch and process image) of %.1f MiB",
                           (double)limit / 1048576.0, (double)work / 1048576.0);
        limit -= (int64_t)work;
    }
    if ((rc = fm__ec_make_plan(em, (uint64_t)m->resident_bytes, kv_bytes, limit, p->capacity,
                               &m->plan)))
        return rc;
    m->plan.work_bytes = work;
    if (p->mem_limit > 0 && p->capacity <= 0) m->plan.budget = (uint64_t)p->mem_limit;
    char cbuf[512];
    fm__ec_params ecp = {0};
    ecp.capacity = m->plan.capacity;
    ecp.miss_policy = p->miss_policy;
    ecp.profile = p->profile;
    ecp.store_dir = cache_dir_param(p->cache_dir, cbuf, sizeof cbuf);
    ecp.store_max = p->cache_max > 0 ? (uint64_t)p->cache_max : 0;
    if ((rc = fm__ec_open(em, &ecp, &m->cache))) return rc;
    if (p->verbose)
        FM_LOGW("memory plan: resident %.1f MiB, KV %.1f MiB (n_ctx %d), working memory %.1f MiB, "
                "expert cache %.1f MiB: "
                "capacity %d of %d experts per layer (%.0f%%), %d MoE layers, %.2f MiB per expert",
                (double)m->plan.resident_bytes / 1048576.0, (double)m->plan.kv_bytes / 1048576.0,
                m->n_ctx, (double)m->plan.work_bytes / 1048576.0, (double)m->plan.cache_bytes / 1048576.0, m->plan.capacity, c->n_experts,
                100.0 * m->plan.fraction, m->n_moe, (double)em->expert_bytes / 1048576.0);

    m->pool = fm__pool_new(p->n_threads);
    if (!m->pool) return fm__err(FM_ERR_NOMEM, "cannot start the thread pool");
    if ((rc = alloc_scratch(m)) || (rc = rope_table(m))) return rc;

    /* Tokenizer (optional). */
    char *tj = fm__path_join(dir, "tokenizer.json");
    if (!tj) return fm__err(FM_ERR_NOMEM, "out of memory");
    bool has_tok = fm__file_exists(tj);
    free(tj);
    if (has_tok) {
        rc = fm__tok_load(dir, &m->tok);
        if (rc == FM_ERR_UNSUPPORTED) { m->tok = NULL; fm__clear_err(); }
        else if (rc) return rc;
    }
    m->eos_count = c->n_eos;
    m->eos_ids = c->eos_ids;
    if (m->tok) {
        const int32_t *ids = NULL;
        int n = fm__tok_eos_ids(m->tok, &ids);
        if (n > 0) { m->eos_count = n; m->eos_ids = ids; }
    }
    return FM_OK;
}

fm_status fm__model_load(const char *dir, const fm_model_params *p, fm_model **out) {
    if (!out) return fm__err(FM_ERR_ARG, "fm_model_open: out is NULL");
    *out = NULL;
    if (!dir) return fm__err(FM_ERR_ARG, "fm_model_open: dir is NULL");
    fm_model_params defp;
    if (!p) { fm_model_params_default(&defp); p = &defp; }
    fm_model *m = calloc(1, sizeof *m);
    if (!m) return fm__err(FM_ERR_NOMEM, "out of memory");
    m->dir = fm__strdup(dir);
    fm_status rc = m->dir ? load(m, dir, p) : fm__err(FM_ERR_NOMEM, "out of memory");
    if (rc) { fm_model_free(m); return rc; }
    *out = m;
    return FM_OK;
}

fm_status fm_model_open(const char *dir, const fm_model_params *p, fm_model **out) {
    return fm__model_load(dir, p, out);
}

void fm_model_free(fm_model *m) {
    if (!m) return;
    if (m->ph_env) ph_report(m);
    fm__ec_free(m->cache);
    fm__tok_free(m->tok);
    fm__pool_free(m->pool);
    if (m->emap.paths)
        for (int32_t i = 0; i < m->emap.n_files; i++) free(m->emap.paths[i]);
    free(m->emap.paths);
    free(m->emap.src);
    free(m->emap.layer_index);
    free(m->emap.content_key);
    if (m->layers)
        for (int32_t l = 0; l < m->cfg->n_layers; l++)
            if (m->layers[l].mix) m->cfg->arch->linear->free_weights(m->layers[l].mix);
    free(m->layers);
    fm__loader_free(&m->ld);
    free(m->streamed);
    fm__st_free(m->st);
    fm__config_free(m->cfg);
    void *bufs[] = {m->x, m->xb, m->hb, m->q, m->att, m->gate, m->qg, m->mix_scratch, m->k, m->v, m->mg_out, m->mu_out, m->rl,
                    m->topw, m->ebuf, m->ein, m->eout, m->sg, m->sbuf, m->done, m->pf_x, m->pf_rl,
                    m->pf_ids, m->pf_w, m->topi, m->cnt, m->eoff, m->elist,
                    m->uniq, m->ew, m->pidx, m->mv_w, m->mv_x, m->mv_y, m->rope_cos, m->rope_sin};
    for (size_t i = 0; i < FM_ARRAY_LEN(bufs); i++) free(bufs[i]);
    free(m->dir);
    free(m);
}

fm_status fm_model_get_info(const fm_model *m, fm_model_info *out) {
    if (!m || !out) return fm__err(FM_ERR_ARG, "fm_model_get_info: NULL argument");
    const fm__config *c = m->cfg;
    memset(out, 0, sizeof *out);
    out->arch = c->model_type;
    out->n_layers = c->n_layers;
    out->n_moe_layers = m->n_moe;
    out->hidden = c->hidden;
    out->vocab = c->vocab;
    out->n_experts = c->n_experts;
    out->top_k = c->top_k;
    out->n_ctx = m->n_ctx;
    out->resident_bytes = m->resident_bytes;
    out->expert_bytes = (int64_t)m->emap.expert_bytes;
    out->all_expert_bytes = (int64_t)m->emap.expert_bytes * m->n_moe * c->n_experts;
    out->capacity = fm__ec_capacity(m->cache);
    out->eos_count = m->eos_count;
    out->eos_ids = m->eos_ids;
    return FM_OK;
}

int32_t fm__model_vocab(const fm_model *m) { return m->cfg->vocab; }
fm__ecache *fm__model_cache(fm_model *m) { return m->cache; }
struct fm__tokenizer *fm__model_tokenizer(const fm_model *m) { return m->tok; }
const char *fm__model_dir(const fm_model *m) { return m->dir; }

/* ---- state ------------------------------------------------------------------------- */

fm_status fm__state_new(fm_model *m, int32_t n_ctx, fm__state **out) {
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > m->n_ctx)
        return fm__err(FM_ERR_ARG, "state n_ctx %d must be in [1, %d]", n_ctx, m->n_ctx);
    fm__state *s = calloc(1, sizeof *s);
    if (!s) return fm__err(FM_ERR_NOMEM, "out of memory");
    size_t n = (size_t)m->n_attn * (size_t)n_ctx * (size_t)m->kvd;
    size_t nl = (size_t)m->n_lin * m->lin_state;
    s->m = m;
    s->n_ctx = n_ctx;
    s->kc = falloc(n);
    s->vc = falloc(n);
    s->lin = falloc(nl);
    for (int i = 0; i < N_SNAP; i++) s->snap_pos[i] = -1;
    if (!s->kc || !s->vc || !s->lin) {
        fm__state_free(s);
        return fm__err(FM_ERR_NOMEM, "out of memory for a KV cache of %d positions", n_ctx);
    }
    memset(s->lin, 0, (nl ? nl : 1) * sizeof(float));
    *out = s;
    return FM_OK;
}

void fm__state_free(fm__state *s) {
    if (!s) return;
    free(s->kc);
    free(s->vc);
    free(s->lin);
    for (int i = 0; i < N_SNAP; i++) free(s->snap[i]);
    free(s);
}

int32_t fm__state_pos(const fm__state *s) { return s->pos; }
int32_t fm__state_n_ctx(const fm__state *s) { return s->n_ctx; }
uint64_t fm__state_bytes(const fm__state *s) {
    const fm_model *m = s->m;
    uint64_t lin = (uint64_t)m->n_lin * m->lin_state * 4u;
    for (int i = 0; i < N_SNAP; i++) lin += s->snap[i] ? (uint64_t)m->n_lin * m->lin_state * 4u : 0;
    return 2ull * (uint64_t)m->n_attn * (uint64_t)s->n_ctx * (uint64_t)m->kvd * 4u + lin;
}

fm_status fm__state_truncate(fm__state *s, int32_t n) {
    if (n < 0 || n > s->pos) return fm__err(FM_ERR_ARG, "truncate to %d of %d positions", n, s->pos);
    size_t nl = (size_t)s->m->n_lin * s->m->lin_state;
    if (nl && n != s->pos) {
        int found = -1;
        for (int i = 0; i < N_SNAP; i++)
            if (s->snap[i] && s->snap_pos[i] == n) found = i;
        if (n == 0) memset(s->lin, 0, nl * sizeof(float));
        else if (found >= 0) memcpy(s->lin, s->snap[found], nl * sizeof(float));
        else
            return fm__err(FM_ERR_UNSUPPORTED, "no recurrent-state snapshot at position %d "
                                               "(re-prefill needed)", n);
    }
    s->pos = n;
    /* Snapshots past n described tokens that are gone. */
    for (int i = 0; i < N_SNAP; i++)
        if (s->snap_pos[i] > n) s->snap_pos[i] = -1;
    return FM_OK;
}

fm_status fm__state_snapshot(fm__state *s) {
    size_t nl = (size_t)s->m->n_lin * s->m->lin_state;
    if (!nl) return FM_OK;
    for (int i = 0; i < N_SNAP; i++)
        if (s->snap_pos[i] == s->pos) return FM_OK;
    int i = s->snap_next;
    if (!s->snap[i] && !(s->snap[i] = falloc(nl)))
        return fm__err(FM_ERR_NOMEM, "out of memory for a recurrent-state snapshot");
    memcpy(s->snap[i], s->lin, nl * sizeof(float));
    s->snap_pos[i] = s->pos;
    s->snap_next = (i + 1) % N_SNAP;
    return FM_OK;
}

/* ---- forward ----------------------------------------------------------------------- */

typedef struct attn_ctx {
    fm_model *m;
    const fm__state *s;
    int32_t layer, p0;
    int32_t group;  /* query heads per key/value head */
    int32_t per;    /* query heads per task (divides group) */
    int32_t n_task; /* tasks per token: n_heads / per */
} attn_ctx;

/* Causal attention over the KV cache of token t's query heads [h0, h0 + per), which share
 * one key/value head (each head's result is the same whatever the split). */
static void attn_task(int64_t i, void *vctx) {
    const attn_ctx *a = vctx;
    const fm_model *m = a->m;
    const fm__config *c = m->cfg;
    int32_t t = (int32_t)(i / a->n_task), h0 = (int32_t)(i % a->n_task) * a->per;
    int32_t pos = a->p0 + t, hd = c->head_dim;
    /* this layer's (attention index) key/value head, head-major */
    size_t kvh = ((size_t)a->layer * c->n_kv_heads + (size_t)(h0 / a->group)) * (size_t)a->s->n_ctx * hd;
    const float *kb = a->s->kc + kvh, *vb = a->s->vc + kvh;
    int32_t k0 = c->sliding_window > 0 ? FM_MAX(0, pos - c->sliding_window + 1) : 0;
    size_t qo = (size_t)t * m->qd + (size_t)h0 * hd;
    fm__attend_heads(m->att + qo, hd, m->q + qo, hd, a->per, kb, vb, hd, k0, pos + 1, hd,
                     1.0f / sqrtf((float)hd));
}

/* Dense SwiGLU MLP of w over xb[0..T) into out (stride hidden). */
static void mlp(fm_model *m, const layer_w *w, const float *xb, int32_t T, float *out) {
    int64_t H = m->cfg->hidden, I = w->m_inter;
    fm__matmul(m->pool, &w->mg, xb, H, T, m->mg_out, I);
    fm__matmul(m->pool, &w->mu, xb, H, T, m->mu_out, I);
    for (int32_t t = 0; t < T; t++) fm__silu_mul(m->mg_out + t * I, m->mu_out + t * I, I);
    fm__matmul(m->pool, &w->md, m->mg_out, I, T, out, H);
}

/* Runs expert ew over the tokens routed to it (elist[first..first+n)), writing each
 * (token, rank) output row into ebuf. */
static void run_expert(fm_model *m, const fm__expert_w *ew, const float *xb, int32_t first,
                       int32_t n) {
    const fm__config *c = m->cfg;
    int64_t H = c->hidden, I = c->moe_inter;
    for (int32_t i = 0; i < n; i++)
        memcpy(m->ein + (size_t)i * H, xb + (size_t)(m->elist[first + i] / c->top_k) * H, (size_t)H * 4);
    fm__matmul(m->pool, &ew->gate, m->ein, H, n, m->mg_out, I);
    fm__matmul(m->pool, &ew->up, m->ein, H, n, m->mu_out, I);
    for (int32_t i = 0; i < n; i++) fm__silu_mul(m->mg_out + i * I, m->mu_out + i * I, I);
    fm__matmul(m->pool, &ew->down, m->mg_out, I, n, m->eout, H);
    for (int32_t i = 0; i < n; i++)
        memcpy(m->ebuf + (size_t)m->elist[first + i] * H, m->eout + (size_t)i * H, (size_t)H * 4);
}

/* Decode (one token): runs the experts m->ew[0..np) on xb[0], expert j writing the
 * output row of its (token, rank) pair m->pidx[j] of ebuf; the same bits as run_expert on
 * each, in two pool dispatches (gate and up of all, then down of all). */
static void run_experts_1(fm_model *m, const float *xb, int32_t np) {
    int64_t H = m->cfg->hidden, I = m->cfg->moe_inter;
    double t = ph_now(m);
    for (int32_t j = 0; j < np; j++) {
        m->mv_w[2 * j] = &m->ew[j].gate;
        m->mv_w[2 * j + 1] = &m->ew[j].up;
        m->mv_x[2 * j] = m->mv_x[2 * j + 1] = xb;
        m->mv_y[2 * j] = m->mg_out + j * I;
        m->mv_y[2 * j + 1] = m->mu_out + j * I;
    }
    fm__matvec_multi(m->pool, 2 * np, m->mv_w, m->mv_x, m->mv_y);
    t = ph(m, PH_GATEUP, t);
    for (int32_t j = 0; j < np; j++) {
        fm__silu_mul(m->mg_out + j * I, m->mu_out + j * I, I);
        m->mv_w[j] = &m->ew[j].down;
        m->mv_x[j] = m->mg_out + j * I;
        m->mv_y[j] = m->ebuf + (size_t)m->pidx[j] * H;
    }
    t = ph(m, PH_SILU, t);
    fm__matvec_multi(m->pool, np, m->mv_w, m->mv_x, m->mv_y);
    ph(m, PH_DOWN, t);
}

/* Top-k of probabilities pr[0..E) into ti/tw (ties to the lower id), renormalized to sum
 * 1 when norm. */
static void top_k(const float *pr, int32_t E, int32_t K, int norm, int32_t *ti, float *tw) {
    double sum = 0;
    for (int32_t k = 0; k < K; k++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            bool taken = false;
            for (int32_t j = 0; j < k; j++) taken |= ti[j] == e;
            if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
        }
        ti[k] = best;
        tw[k] = pr[best];
        sum += pr[best];
    }
    if (norm)
        for (int32_t k = 0; k < K; k++) tw[k] = (float)(tw[k] / sum);
}

/* Shared expert of w over xb[0..T): sbuf = expert(x), sg = its gate logit. */
static void shared_expert(fm_model *m, const layer_w *w, const float *xb, int32_t T) {
    mlp(m, w, xb, T, m->sbuf);
    fm__matmul(m->pool, &w->shared_gate, xb, m->cfg->hidden, T, m->sg, 1);
}

/* Speculative prefetch for decode: runs the residual stream m->x[0] through the norm and
 * router of the next MoE layer `next` and queues reads of its top-k (low priority; exact
 * results do not depend on it). */
static void prefetch_next(fm_model *m, const layer_w *next) {
    const fm__config *c = m->cfg;
    fm__rmsnorm(m->pf_x, m->x, next->ffn_norm, c->hidden, c->rms_eps);
    fm__matmul(m->pool, &next->router, m->pf_x, c->hidden, 1, m->pf_rl, c->n_experts);
    fm__softmax(m->pf_rl, c->n_experts);
    top_k(m->pf_rl, c->n_experts, c->top_k, c->norm_topk_prob, m->pf_ids, m->pf_w);
    fm__ec_prefetch(m->cache, next->moe, m->pf_ids, c->top_k);
}

/* MoE block of layer w for xb[0..T) into out: routed experts combined in rank order, plus
 * the shared expert scaled by its sigmoid gate. The reads of a chunk of experts start as
 * soon as the router has run; the shared expert and the resident experts run while they
 * are in flight, and each missing expert runs as its read lands. Each expert writes only
 * its own (token, rank) rows of ebuf, so the order experts run in changes no bit. */
static fm_status moe(fm_model *m, const layer_w *w, const layer_w *next, const float *xb,
                     int32_t T, float *out) {
    const fm__config *c = m->cfg;
    int32_t E = c->n_experts, K = c->top_k, H = c->hidden;
    fm_status rc;
    double tp = ph_now(m);
    /* 1. router probabilities: softmax over the router logits */
    fm__matmul(m->pool, &w->router, xb, H, T, m->rl, E);
    for (int32_t t = 0; t < T; t++) fm__softmax(m->rl + (size_t)t * E, E);
    tp = ph(m, PH_ROUTER, tp);
    /* 2. top-k per token (ties to the lower id), optional renormalization */
    for (int32_t t = 0; t < T; t++)
        top_k(m->rl + (size_t)t * E, E, K, c->norm_topk_prob, m->topi + (size_t)t * K,
              m->topw + (size_t)t * K);
    /* 3. skip policy: rank 0 always runs; other ranks only if resident, else dropped and
     *    the kept weights rescaled to the original sum */
    if (m->miss_policy == FM_MISS_SKIP) {
        for (int32_t t = 0; t < T; t++) {
            float *tw = m->topw + (size_t)t * K;
            int32_t *ti = m->topi + (size_t)t * K;
            double all = 0, kept = 0;
            int32_t n_hit = 0, n_skip = 0;
            for (int32_t k = 0; k < K; k++) {
                fm__expert_w tmp;
                bool hit = fm__ec_lookup(m->cache, w->moe, ti[k], &tmp);
                n_hit += hit;
                all += tw[k];
                if (k > 0 && !hit) { n_skip++; tw[k] = 0; }
                else kept += tw[k];
            }
            fm__ec_note_routed(m->cache, w->moe, ti, K, n_hit, n_skip);
            if (n_skip && kept > 0)
                for (int32_t k = 0; k < K; k++) tw[k] = (float)(tw[k] * (all / kept));
        }
    }
    /* 4. group (token, rank) pairs by expert: the union of routed experts, ascending */
    memset(m->cnt, 0, (size_t)(E + 1) * sizeof *m->cnt);
    for (int32_t i = 0; i < T * K; i++)
        if (m->miss_policy != FM_MISS_SKIP || m->topw[i] != 0 || i % K == 0) m->cnt[m->topi[i]]++;
    int32_t nu = 0;
    m->eoff[0] = 0;
    for (int32_t e = 0; e < E; e++) {
        m->eoff[e + 1] = m->eoff[e] + m->cnt[e];
        if (m->cnt[e]) m->uniq[nu++] = e;
        m->cnt[e] = 0;
    }
    for (int32_t i = 0; i < T * K; i++) {
        if (m->miss_policy == FM_MISS_SKIP && m->topw[i] == 0 && i % K != 0) continue;
        int32_t e = m->topi[i];
        m->elist[m->eoff[e] + m->cnt[e]++] = i;
    }
    tp = ph(m, PH_TOPK, tp);
    /* 5. fetch the union in chunks of at most the fetch limit (capacity less pinned slots):
     *    start the chunk's reads, compute the shared expert meanwhile (first chunk), then run
     *    each expert once, as soon as it is resident */
    int32_t cap = FM_MAX(1, fm__ec_fetch_limit(m->cache));
    bool shared_done = w->m_inter == 0;
    for (int32_t j0 = 0; j0 < nu; j0 += cap) {
        int32_t n = FM_MIN(cap, nu - j0), i = -1;
        const int32_t *ids = m->uniq + j0;
        if ((rc = fm__ec_fetch_begin(m->cache, w->moe, ids, n))) return rc;
        if (j0 == 0 && T == 1 && next && fm__ec_prefetch_enabled(m->cache)) prefetch_next(m, next);
        if (!shared_done) {
            tp = ph(m, PH_FETCH, tp);
            shared_expert(m, w, xb, T);
            shared_done = true;
            tp = ph(m, PH_SHARED, tp);
        }
        memset(m->done, 0, (size_t)n);
        fm__expert_w ew;
        if (T == 1) { /* decode: run the resident experts together, then each landing one */
            int32_t np = 0;
            for (;;) {
                bool more = false; /* another expert is resident: take it before computing */
                for (int32_t q = 0; q < n && !more && np > 0 && np < MAX_BATCH; q++)
                    more = !m->done[q] && fm__ec_lookup(m->cache, w->moe, ids[q], NULL);
                if (np > 0 && !more) {
                    ph(m, PH_FETCH, tp);
                    run_experts_1(m, xb, np);
                    np = 0;
                    tp = ph_now(m);
                }
                if ((rc = fm__ec_fetch_any(m->cache, w->moe, ids, n, m->done, &i, &ew)) || i < 0) break;
                m->ew[np] = ew;
                m->pidx[np++] = m->elist[m->eoff[ids[i]]];
            }
            if (!rc && np > 0) {
                ph(m, PH_FETCH, tp);
                run_experts_1(m, xb, np);
                tp = ph_now(m);
            }
        } else {
            while ((rc = fm__ec_fetch_any(m->cache, w->moe, ids, n, m->done, &i, &ew)) == FM_OK && i >= 0)
                run_expert(m, &ew, xb, m->eoff[ids[i]], m->eoff[ids[i] + 1] - m->eoff[ids[i]]);
        }
        if (rc) return rc;
    }
    tp = ph(m, PH_FETCH, tp);
    if (!shared_done) shared_expert(m, w, xb, T);
    tp = ph(m, PH_SHARED, tp);
    /* 6. combine each token's expert outputs in rank order */
    for (int32_t t = 0; t < T; t++) {
        float *o = out + (size_t)t * H;
        memset(o, 0, (size_t)H * 4);
        for (int32_t k = 0; k < K; k++) {
            size_t i = (size_t)t * K + k;
            if (m->miss_policy == FM_MISS_SKIP && m->topw[i] == 0 && k != 0) continue;
            fm__axpy(o, m->topw[i], m->ebuf + i * H, H);
        }
    }
    /* 7. shared expert scaled by its sigmoid gate */
    if (w->m_inter)
        for (int32_t t = 0; t < T; t++) fm__axpy(out + t * H, fm__sigmoid(m->sg[t]), m->sbuf + t * H, H);
    ph(m, PH_COMBINE, tp);
    return FM_OK;
}

/* Runs tokens[0..T) (T <= MAX_BATCH) at positions p0.. through all layers, leaving the
 * final hidden states in m->x. */
static fm_status forward_chunk(fm_model *m, fm__state *s, const int32_t *tokens, int32_t T, int32_t p0) {
    const fm__config *c = m->cfg;
    const fm__arch *a = c->arch;
    int64_t H = c->hidden, hd = c->head_dim, QD = m->qd, KVD = m->kvd;
    int32_t half = m->rot / 2;
    fm_status rc;
    double tp = ph_now(m);
    /* 1. token embeddings */
    for (int32_t t = 0; t < T; t++) fm__mat_row(&m->embed, tokens[t], m->x + t * H);
    tp = ph(m, PH_EMBED, tp);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const layer_w *w = &m->layers[l];
        /* 2. token-mixer pre-norm */
        for (int32_t t = 0; t < T; t++) fm__rmsnorm(m->xb + t * H, m->x + t * H, w->attn_norm, H, c->rms_eps);
        tp = ph(m, PH_NORM, tp);
        if (w->lin >= 0) {
            /* 2'. linear attention (recurrent state) instead of steps 3-9 */
            a->linear->forward(w->mix, c, m->pool, m->xb, T, s->lin + (size_t)w->lin * m->lin_state,
                               m->mix_scratch, m->hb);
            fm__axpy(m->x, 1.0f, m->hb, T * H);
            goto ffn;
        }
        /* 3. q, k, v projections (+ bias); with an output gate q_proj gives [q | gate] per head */
        if (a->attn_output_gate) {
            fm__matmul(m->pool, &w->wq, m->xb, H, T, m->qg, 2 * QD);
            for (int32_t t = 0; t < T; t++)
                for (int32_t h = 0; h < c->n_heads; h++) {
                    const float *src = m->qg + (size_t)t * 2 * QD + (size_t)h * 2 * hd;
                    memcpy(m->q + t * QD + h * hd, src, (size_t)hd * 4);
                    memcpy(m->gate + t * QD + h * hd, src + hd, (size_t)hd * 4);
                }
        } else if (T == 1) { /* decode: one dispatch for the three */
            const fm__mat *W3[3] = {&w->wq, &w->wk, &w->wv};
            const float *X3[3] = {m->xb, m->xb, m->xb};
            float *Y3[3] = {m->q, m->k, m->v};
            fm__matvec_multi(m->pool, 3, W3, X3, Y3);
        } else {
            fm__matmul(m->pool, &w->wq, m->xb, H, T, m->q, QD);
        }
        if (T > 1 || a->attn_output_gate) {
            fm__matmul(m->pool, &w->wk, m->xb, H, T, m->k, KVD);
            fm__matmul(m->pool, &w->wv, m->xb, H, T, m->v, KVD);
        }
        tp = ph(m, PH_QKV, tp);
        for (int32_t t = 0; t < T; t++) {
            float *q = m->q + t * QD, *k = m->k + t * KVD, *v = m->v + t * KVD;
            if (w->bq) for (int64_t i = 0; i < QD; i++) q[i] += w->bq[i];
            if (w->bk) for (int64_t i = 0; i < KVD; i++) k[i] += w->bk[i];
            if (w->bv) for (int64_t i = 0; i < KVD; i++) v[i] += w->bv[i];
            /* 4. q/k RMSNorm: over the whole projection, or per head */
            if (a->qk_norm == FM_QKNORM_FULL) {
                fm__rmsnorm(q, q, w->q_norm, QD, c->rms_eps);
                fm__rmsnorm(k, k, w->k_norm, KVD, c->rms_eps);
            } else if (a->qk_norm == FM_QKNORM_HEAD) {
                for (int32_t h = 0; h < c->n_heads; h++) fm__rmsnorm(q + h * hd, q + h * hd, w->q_norm, hd, c->rms_eps);
                for (int32_t h = 0; h < c->n_kv_heads; h++) fm__rmsnorm(k + h * hd, k + h * hd, w->k_norm, hd, c->rms_eps);
            }
            /* 5. optional clipping (OLMoE clip_qkv) */
            if (c->clip_qkv > 0) {
                float cl = c->clip_qkv;
                for (int64_t i = 0; i < QD; i++) q[i] = fminf(fmaxf(q[i], -cl), cl);
                for (int64_t i = 0; i < KVD; i++) {
                    k[i] = fminf(fmaxf(k[i], -cl), cl);
                    v[i] = fminf(fmaxf(v[i], -cl), cl);
                }
            }
            /* 6. rotary embedding at this token's position */
            const float *cs = m->rope_cos + (size_t)(p0 + t) * half, *sn = m->rope_sin + (size_t)(p0 + t) * half;
            fm__rope(q, c->n_heads, (int32_t)hd, m->rot, cs, sn);
            fm__rope(k, c->n_kv_heads, (int32_t)hd, m->rot, cs, sn);
            /* 7. append k, v to the cache (head-major) */
            for (int32_t g = 0; g < c->n_kv_heads; g++) {
                size_t at = (((size_t)w->attn * c->n_kv_heads + g) * s->n_ctx + (size_t)(p0 + t)) * (size_t)hd;
                memcpy(s->kc + at, k + (size_t)g * hd, (size_t)hd * 4);
                memcpy(s->vc + at, v + (size_t)g * hd, (size_t)hd * 4);
            }
        }
        tp = ph(m, PH_QKROPE, tp);
        /* 8. causal GQA attention, one task per (token, group of query heads sharing a
         *    key/value head) */
        attn_ctx ac = {m, s, w->attn, p0, c->n_heads / c->n_kv_heads, 0, 0};
        /* heads per task: the whole group, halved while that leaves under 4 tasks per thread */
        ac.per = ac.group;
        while (ac.per % 2 == 0 && (int64_t)T * (c->n_heads / ac.per) < 4 * fm__pool_size(m->pool)) ac.per /= 2;
        ac.n_task = c->n_heads / ac.per;
        fm__pool_run(m->pool, (int64_t)T * ac.n_task, attn_task, &ac);
        if (a->attn_output_gate)
            for (int64_t i = 0; i < T * QD; i++) m->att[i] *= fm__sigmoid(m->gate[i]);
        tp = ph(m, PH_ATTN, tp);
        /* 9. output projection and residual */
        fm__matmul(m->pool, &w->wo, m->att, QD, T, m->hb, H);
        if (w->bo)
            for (int64_t i = 0; i < T * H; i++) m->x[i] += m->hb[i] + w->bo[i % H];
        else
            fm__axpy(m->x, 1.0f, m->hb, T * H);
        tp = ph(m, PH_WO, tp);
    ffn:
        /* 10. FFN pre-norm */
        for (int32_t t = 0; t < T; t++) fm__rmsnorm(m->xb + t * H, m->x + t * H, w->ffn_norm, H, c->rms_eps);
        tp = ph(m, PH_NORM, tp);
        if (w->moe >= 0) {
            /* 11. routed experts (+ shared expert scaled by its sigmoid gate), reads overlapped */
            const layer_w *next = NULL; /* the next MoE layer, for speculative prefetch */
            for (int32_t j = l + 1; j < c->n_layers && !next; j++)
                if (m->layers[j].moe >= 0) next = &m->layers[j];
            if ((rc = moe(m, w, next, m->xb, T, m->hb))) return rc;
            tp = ph_now(m);
        } else {
            /* 11'. dense SwiGLU MLP */
            mlp(m, w, m->xb, T, m->hb);
            tp = ph(m, PH_SHARED, tp);
        }
        /* 12. residual */
        fm__axpy(m->x, 1.0f, m->hb, T * H);
        tp = ph(m, PH_COMBINE, tp);
    }
    return FM_OK;
}

fm_status fm__forward(fm_model *m, fm__state *s, const int32_t *tokens, int32_t n,
                      float *logits, int all_logits) {
    const fm__config *c = m->cfg;
    if (n < 0 || (n > 0 && !tokens)) return fm__err(FM_ERR_ARG, "fm__forward: bad token array");
    if ((int64_t)s->pos + n > s->n_ctx)
        return fm__err(FM_ERR_CONTEXT_FULL, "context full: %d + %d tokens > n_ctx %d", s->pos, n, s->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab)
            return fm__err(FM_ERR_ARG, "token %d at index %d is outside the vocabulary [0, %d)",
                           tokens[i], i, c->vocab);
    int32_t pos0 = s->pos;
    int64_t H = c->hidden, V = c->vocab;
    for (int32_t c0 = 0; c0 < n; c0 += MAX_BATCH) {
        int32_t T = FM_MIN(MAX_BATCH, n - c0);
        m->ph_on = m->ph_env && n == 1;
        fm_status rc = forward_chunk(m, s, tokens + c0, T, s->pos);
        if (rc) {
            /* The KV cache past pos0 is simply ignored; recurrent state cannot be rewound
             * except to a snapshot, so without one the context is dropped. */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", fm_last_error());
            s->pos += T;
            if (fm__state_truncate(s, pos0) != FM_OK) {
                fm__state_truncate(s, 0);
                return fm__err(rc, "%s (the context of %d tokens was dropped: no recurrent-state "
                                   "snapshot to rewind to)", msg, pos0);
            }
            return fm__err(rc, "%s", msg);
        }
        s->pos += T;
        if (!logits) continue;
        /* 13. final norm and LM head: every row, or only the last token's */
        if (all_logits) {
            for (int32_t t = 0; t < T; t++) fm__rmsnorm(m->xb + t * H, m->x + t * H, m->final_norm, H, c->rms_eps);
            fm__matmul(m->pool, &m->lm_head, m->xb, H, T, logits + (size_t)c0 * V, V);
        } else if (c0 + T == n) {
            double tp = ph_now(m);
            fm__rmsnorm(m->xb, m->x + (T - 1) * H, m->final_norm, H, c->rms_eps);
            fm__matmul(m->pool, &m->lm_head, m->xb, H, 1, logits, V);
            ph(m, PH_LMHEAD, tp);
        }
    }
    m->ph_tokens += m->ph_on;
    m->ph_on = 0;
    return FM_OK;
}

const fm__ec_plan *fm__model_plan(const fm_model *m) { return &m->plan; }
