/* loader.c: binds checkpoint tensors to matrices, vectors and expert byte ranges (see
 * loader.h). Nothing here computes; it checks shapes and dtypes and records where bytes
 * are. */
#include "loader.h"
#include "arch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *where(const fm__loader *L, const fm__st_tensor *t) {
    return t ? L->st->files[t->file].path
             : (L->st->n_files ? L->st->files[0].path : "checkpoint");
}

static fm_status own(fm__loader *L, void *p) {
    if (L->n_owned == L->cap_owned) {
        int32_t nc = L->cap_owned ? L->cap_owned * 2 : 64;
        void **no = realloc(L->owned, (size_t)nc * sizeof *no);
        if (!no) { free(p); return fm__err(FM_ERR_NOMEM, "out of memory"); }
        L->owned = no;
        L->cap_owned = nc;
    }
    L->owned[L->n_owned++] = p;
    return FM_OK;
}

void fm__loader_free(fm__loader *L) {
    if (!L) return;
    for (int32_t i = 0; i < L->n_owned; i++) free(L->owned[i]);
    free(L->owned);
    L->owned = NULL;
    L->n_owned = L->cap_owned = 0;
}

static void shape_str(const fm__st_tensor *t, char *buf, size_t n) {
    size_t p = 0;
    buf[0] = 0;
    for (int d = 0; d < t->ndim && p + 24 < n; d++)
        p += (size_t)snprintf(buf + p, n - p, "%s%lld", d ? "," : "", (long long)t->shape[d]);
}

/* Checks t has shape dims[0..nd). */
static fm_status want_shape(const fm__loader *L, const fm__st_tensor *t, int nd, const int64_t *dims) {
    bool ok = t->ndim == nd;
    for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == dims[d];
    if (ok) return FM_OK;
    char got[128], want[128];
    shape_str(t, got, sizeof got);
    size_t p = 0;
    want[0] = 0;
    for (int d = 0; d < nd && p + 24 < sizeof want; d++)
        p += (size_t)snprintf(want + p, sizeof want - p, "%s%lld", d ? "," : "", (long long)dims[d]);
    return fm__err(FM_ERR_FORMAT, "%s: tensor %s: shape [%s], expected [%s] from config.json",
                   where(L, t), t->name, got, want);
}

static fm_status float_type(const fm__loader *L, const fm__st_tensor *t, fm__wtype *wt) {
    switch (t->dtype) {
    case FM_DT_F32: *wt = FM_W_F32; return FM_OK;
    case FM_DT_BF16: *wt = FM_W_BF16; return FM_OK;
    case FM_DT_F16: *wt = FM_W_F16; return FM_OK;
    default:
        return fm__err(FM_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s (expected F32, BF16 or F16)",
                       where(L, t), t->name, fm__dtype_name(t->dtype));
    }
}

/* Returns t's bytes, copied to an aligned heap buffer when the mapping is misaligned. */
static fm_status aligned_data(fm__loader *L, const fm__st_tensor *t, const void **out) {
    size_t es = (size_t)fm__dtype_size(t->dtype);
    if (((uintptr_t)t->data % es) == 0) { *out = t->data; return FM_OK; }
    void *p = fm__aligned_alloc(64, t->nbytes ? (size_t)t->nbytes : 64);
    if (!p) return fm__err(FM_ERR_NOMEM, "%s: tensor %s: out of memory", where(L, t), t->name);
    memcpy(p, t->data, (size_t)t->nbytes);
    fm_status rc = own(L, p);
    if (rc) return rc;
    *out = p;
    return FM_OK;
}

/* Quantization of module (scales present) as bits/group, or an error. */
static fm_status quant_of(const fm__loader *L, const char *module, const fm__st_tensor *w,
                          int32_t *bits, int32_t *group) {
    if (!fm__quant_for(&L->cfg->quant, module, bits, group))
        return fm__err(FM_ERR_FORMAT,
                       "%s: tensor %s: has .scales but %s declares no quantization for %s",
                       where(L, w), w->name, L->cfg->path, module);
    return FM_OK;
}

static fm_status scale_pair(const fm__loader *L, const char *module, const fm__st_tensor **s,
                            const fm__st_tensor **b) {
    *s = fm__st_findf(L->st, "%s.scales", module);
    *b = fm__st_findf(L->st, "%s.biases", module);
    if (!*b)
        return fm__err(FM_ERR_FORMAT, "%s: tensor %s.biases missing (quantized %s)", where(L, *s),
                       module, module);
    if ((*s)->dtype != (*b)->dtype ||
        ((*s)->dtype != FM_DT_BF16 && (*s)->dtype != FM_DT_F16 && (*s)->dtype != FM_DT_F32))
        return fm__err(FM_ERR_UNSUPPORTED, "%s: tensor %s: scales/biases dtype %s/%s (need equal BF16, F16 or F32)",
                       where(L, *s), (*s)->name, fm__dtype_name((*s)->dtype), fm__dtype_name((*b)->dtype));
    return FM_OK;
}

fm_status fm__load_mat(fm__loader *L, const char *module, int64_t rows, int64_t cols,
                       bool required, fm__mat *out) {
    memset(out, 0, sizeof *out);
    const fm__st_tensor *w = fm__st_findf(L->st, "%s.weight", module);
    if (!w) {
        if (!required) return FM_OK;
        return fm__err(FM_ERR_FORMAT, "%s: missing tensor %s.weight", where(L, NULL), module);
    }
    out->rows = rows;
    out->cols = cols;
    fm_status rc;
    if (fm__st_findf(L->st, "%s.scales", module)) {
        const fm__st_tensor *s, *b;
        int32_t bits, group;
        if ((rc = quant_of(L, module, w, &bits, &group)) || (rc = scale_pair(L, module, &s, &b)))
            return rc;
        if (w->dtype != FM_DT_U32)
            return fm__err(FM_ERR_FORMAT, "%s: tensor %s: quantized weight must be U32, not %s",
                           where(L, w), w->name, fm__dtype_name(w->dtype));
        if ((cols * bits) % 32 || cols % group)
            return fm__err(FM_ERR_FORMAT, "%s: tensor %s: %lld columns do not fit %d-bit groups of %d",
                           where(L, w), w->name, (long long)cols, bits, group);
        int64_t wd[2] = {rows, cols * bits / 32}, sd[2] = {rows, cols / group};
        if ((rc = want_shape(L, w, 2, wd)) || (rc = want_shape(L, s, 2, sd)) ||
            (rc = want_shape(L, b, 2, sd)))
            return rc;
        out->type = FM_W_QAFFINE;
        out->bits = bits;
        out->group = group;
        out->sdt = s->dtype;
        if ((rc = aligned_data(L, w, &out->data)) || (rc = aligned_data(L, s, &out->scales)) ||
            (rc = aligned_data(L, b, &out->biases)))
            return rc;
        L->resident_bytes += w->nbytes + s->nbytes + b->nbytes;
        return FM_OK;
    }
    int64_t wd[2] = {rows, cols};
    if ((rc = float_type(L, w, &out->type)) || (rc = want_shape(L, w, 2, wd)) ||
        (rc = aligned_data(L, w, &out->data)))
        return rc;
    L->resident_bytes += w->nbytes;
    return FM_OK;
}

fm_status fm__load_array(fm__loader *L, const char *name, int nd, const int64_t *dims, float **out) {
    *out = NULL;
    const fm__st_tensor *t = fm__st_find(L->st, name);
    if (!t) return fm__err(FM_ERR_FORMAT, "%s: missing tensor %s", where(L, NULL), name);
    fm_status rc;
    fm__wtype wt;
    if ((rc = float_type(L, t, &wt)) || (rc = want_shape(L, t, nd, dims))) return rc;
    size_t n = (size_t)(t->nbytes / (uint64_t)fm__dtype_size(t->dtype));
    float *v = fm__malloc_array(n ? n : 1, sizeof *v);
    if (!v) return fm__err(FM_ERR_NOMEM, "%s: tensor %s: out of memory", where(L, t), name);
    const uint8_t *p = t->data;
    for (size_t i = 0; i < n; i++) {
        if (wt == FM_W_F32) memcpy(&v[i], p + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            v[i] = wt == FM_W_BF16 ? fm__bf16_to_f32(h) : fm__f16_to_f32(h);
        }
    }
    if ((rc = own(L, v))) return rc;
    L->resident_bytes += t->nbytes;
    *out = v;
    return FM_OK;
}

fm_status fm__load_vec(fm__loader *L, const char *name, int64_t n, bool required, float **out) {
    *out = NULL;
    if (!required && !fm__st_find(L->st, name)) return FM_OK;
    int64_t d[1] = {n};
    return fm__load_array(L, name, 1, d, out);
}

/* One expert matrix inside tensor wname: rows [r0, r0+rows) of expert e of a stacked
 * [E][rtot][*] tensor (stacked != 0), or the whole [rows][*] tensor. qmod: module name
 * whose .scales/.biases hold the quantization (NULL = never quantized). */
static fm_status mat_src(fm__loader *L, const char *wname, const char *qmod, int stacked,
                         int64_t e, int64_t E, int64_t rtot, int64_t r0, int64_t rows,
                         int64_t cols, fm__mat_src *out) {
    memset(out, 0, sizeof *out);
    const fm__st_tensor *w = fm__st_find(L->st, wname);
    if (!w) return fm__err(FM_ERR_FORMAT, "%s: missing tensor %s", where(L, NULL), wname);
    fm__mat *m = &out->meta;
    m->rows = rows;
    m->cols = cols;
    fm_status rc;
    const fm__st_tensor *s = NULL, *b = NULL;
    int64_t wcols = cols;
    if (qmod && fm__st_findf(L->st, "%s.scales", qmod)) {
        int32_t bits, group;
        if ((rc = quant_of(L, qmod, w, &bits, &group)) || (rc = scale_pair(L, qmod, &s, &b)))
            return rc;
        if (w->dtype != FM_DT_U32)
            return fm__err(FM_ERR_FORMAT, "%s: tensor %s: quantized weight must be U32, not %s",
                           where(L, w), w->name, fm__dtype_name(w->dtype));
        if ((cols * bits) % 32 || cols % group)
            return fm__err(FM_ERR_FORMAT, "%s: tensor %s: %lld columns do not fit %d-bit groups of %d",
                           where(L, w), w->name, (long long)cols, bits, group);
        m->type = FM_W_QAFFINE;
        m->bits = bits;
        m->group = group;
        m->sdt = s->dtype;
        wcols = cols * bits / 32;
    } else if ((rc = float_type(L, w, &m->type))) {
        return rc;
    }
    int64_t wd[3] = {E, rtot, wcols};
    if ((rc = want_shape(L, w, stacked ? 3 : 2, stacked ? wd : wd + 1))) return rc;
    uint64_t es = (uint64_t)fm__dtype_size(w->dtype);
    uint64_t rb = (uint64_t)wcols * es;
    out->data.file = w->file;
    out->data.off = w->off + ((uint64_t)(e * rtot + r0)) * rb;
    out->data.len = (uint64_t)rows * rb;
    if (s) {
        int64_t sd[3] = {E, rtot, cols / m->group};
        if ((rc = want_shape(L, s, stacked ? 3 : 2, stacked ? sd : sd + 1)) ||
            (rc = want_shape(L, b, stacked ? 3 : 2, stacked ? sd : sd + 1)))
            return rc;
        uint64_t sb = (uint64_t)(cols / m->group) * (uint64_t)fm__dtype_size(s->dtype);
        out->scales.file = s->file;
        out->scales.off = s->off + ((uint64_t)(e * rtot + r0)) * sb;
        out->scales.len = (uint64_t)rows * sb;
        out->biases.file = b->file;
        out->biases.off = b->off + ((uint64_t)(e * rtot + r0)) * sb;
        out->biases.len = (uint64_t)rows * sb;
    }
    return FM_OK;
}

bool fm__has_experts(const fm__loader *L, const char *prefix) {
    const char *const *en = L->cfg->arch->expert_names;
    return fm__st_findf(L->st, "%s.experts.0.%s.weight", prefix, en[0]) ||
           fm__st_findf(L->st, "%s.switch_mlp.gate_proj.weight", prefix) ||
           fm__st_findf(L->st, "%s.input_linear.weight", prefix) ||
           fm__st_findf(L->st, "%s.experts.gate_up_proj", prefix);
}

fm_status fm__load_experts(fm__loader *L, const char *prefix, int32_t n_experts, int64_t inter,
                           int64_t hidden, fm__expert_src *src) {
    const char *const *en = L->cfg->arch->expert_names;
    char wn[3][320], qm[3][300];
    fm_status rc = FM_OK;
    if (fm__st_findf(L->st, "%s.experts.0.%s.weight", prefix, en[0])) {
        for (int32_t e = 0; e < n_experts && rc == FM_OK; e++) {
            for (int j = 0; j < 3; j++) {
                snprintf(qm[j], sizeof qm[j], "%s.experts.%d.%s", prefix, e, en[j]);
                snprintf(wn[j], sizeof wn[j], "%.300s.weight", qm[j]);
            }
            if ((rc = mat_src(L, wn[0], qm[0], 0, 0, 1, inter, 0, inter, hidden, &src[e].gate)) ||
                (rc = mat_src(L, wn[1], qm[1], 0, 0, 1, inter, 0, inter, hidden, &src[e].up)) ||
                (rc = mat_src(L, wn[2], qm[2], 0, 0, 1, hidden, 0, hidden, inter, &src[e].down)))
                break;
        }
        return rc;
    }
    if (fm__st_findf(L->st, "%s.switch_mlp.gate_proj.weight", prefix)) {
        static const char *const sn[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int j = 0; j < 3; j++) {
            snprintf(qm[j], sizeof qm[j], "%s.switch_mlp.%s", prefix, sn[j]);
            snprintf(wn[j], sizeof wn[j], "%.300s.weight", qm[j]);
        }
        for (int32_t e = 0; e < n_experts && rc == FM_OK; e++) {
            if ((rc = mat_src(L, wn[0], qm[0], 1, e, n_experts, inter, 0, inter, hidden, &src[e].gate)) ||
                (rc = mat_src(L, wn[1], qm[1], 1, e, n_experts, inter, 0, inter, hidden, &src[e].up)) ||
                (rc = mat_src(L, wn[2], qm[2], 1, e, n_experts, hidden, 0, hidden, inter, &src[e].down)))
                break;
        }
        return rc;
    }
    /* Fused gate+up stacks: gate is rows [0, I) of each expert, up rows [I, 2I). */
    const char *gu = NULL, *dn = NULL;
    char gq[300], dq[300];
    if (fm__st_findf(L->st, "%s.input_linear.weight", prefix)) {
        snprintf(gq, sizeof gq, "%s.input_linear", prefix);
        snprintf(dq, sizeof dq, "%s.output_linear", prefix);
        snprintf(wn[0], sizeof wn[0], "%s.weight", gq);
        snprintf(wn[2], sizeof wn[2], "%s.weight", dq);
        gu = gq;
        dn = dq;
    } else if (fm__st_findf(L->st, "%s.experts.gate_up_proj", prefix)) {
        snprintf(wn[0], sizeof wn[0], "%s.experts.gate_up_proj", prefix);
        snprintf(wn[2], sizeof wn[2], "%s.experts.down_proj", prefix);
    } else {
        return fm__err(FM_ERR_FORMAT, "%s: no routed expert tensors under %s (looked for "
                                      "%s.experts.0.%s.weight, %s.switch_mlp.*, %s.input_linear.*, "
                                      "%s.experts.gate_up_proj)",
                       where(L, NULL), prefix, prefix, en[0], prefix, prefix, prefix);
    }
    for (int32_t e = 0; e < n_experts && rc == FM_OK; e++) {
        if ((rc = mat_src(L, wn[0], gu, 1, e, n_experts, 2 * inter, 0, inter, hidden, &src[e].gate)) ||
            (rc = mat_src(L, wn[0], gu, 1, e, n_experts, 2 * inter, inter, inter, hidden, &src[e].up)) ||
            (rc = mat_src(L, wn[2], dn, 1, e, n_experts, hidden, 0, hidden, inter, &src[e].down)))
            break;
    }
    return rc;
}
