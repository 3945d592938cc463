/* sampler.c: token sampling, the stop-string matcher and the repetition metrics (see
 * sampler.h for the exact semantics). Per-token work allocates nothing: the candidate and
 * penalty buffers live in the sampler. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- PRNG: splitmix64 seeds xoshiro256** ------------------------------------------- */

#define FM__DEFAULT_SEED 0x5EEDF1A5F00DULL

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

void fm__sampler_seed(fm__sampler *s, uint64_t seed) {
    uint64_t x = seed ? seed : FM__DEFAULT_SEED;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

double fm__sampler_uniform(fm__sampler *s) {
    return (double)(xoshiro_next(s->rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- setup ------------------------------------------------------------------------- */

fm_status fm__sampler_init(fm__sampler *s, int32_t n_vocab) {
    memset(s, 0, sizeof *s);
    if (n_vocab <= 0) return fm__err(FM_ERR_ARG, "sampler: vocabulary size %d", n_vocab);
    s->n_vocab = n_vocab;
    s->cand = fm__malloc_array((size_t)n_vocab, sizeof *s->cand);
    s->work = fm__malloc_array((size_t)n_vocab, sizeof *s->work);
    s->counts = fm__calloc((size_t)n_vocab, sizeof *s->counts);
    s->seen = fm__malloc_array((size_t)n_vocab, sizeof *s->seen);
    if (!s->cand || !s->work || !s->counts || !s->seen) {
        fm__sampler_free(s);
        return fm__err(FM_ERR_NOMEM, "sampler: scratch for %d tokens", n_vocab);
    }
    fm__sampler_seed(s, 0);
    return FM_OK;
}

void fm__sampler_free(fm__sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->work);
    free(s->counts);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

void fm__sampler_reset_counts(fm__sampler *s) {
    for (int32_t i = 0; i < s->n_seen; i++) s->counts[s->seen[i]] = 0;
    s->n_seen = 0;
}

void fm__sampler_accept(fm__sampler *s, int32_t id) {
    if (id < 0 || id >= s->n_vocab) return;
    if (s->counts[id]++ == 0) s->seen[s->n_seen++] = id;
}

/* ---- the pipeline -------------------------------------------------------------------- */

static int cand_cmp(const void *a, const void *b) {
    const fm__cand *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Moves the candidates with p >= t to the front, sorted (p desc, id asc); returns their
 * count. Everything not moved has p < t, so the sorted front is an exact prefix of the
 * fully sorted order. */
static size_t front_sorted(fm__cand *c, size_t n, float t) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i].p >= t) {
            fm__cand tmp = c[m];
            c[m++] = c[i];
            c[i] = tmp;
        }
    }
    qsort(c, m, sizeof *c, cand_cmp);
    return m;
}

static const float thresholds[] = {1e-1f, 1e-3f, 1e-6f, 1e-10f, 0.0f};

/* Applies the penalties; returns the logits to use (logits itself when none apply). */
static const float *penalize(fm__sampler *s, const fm_gen_params *p, const float *logits,
                             const int32_t *ctx, size_t n_ctx) {
    int rep = p->repeat_penalty > 0 && p->repeat_penalty != 1.0f && n_ctx > 0;
    int pf = (p->presence_penalty != 0 || p->frequency_penalty != 0) && s->n_seen > 0;
    if (!rep && !pf) return logits;
    float *w = s->work;
    memcpy(w, logits, (size_t)s->n_vocab * sizeof *w);
    if (rep) {
        size_t from = n_ctx > FM__REPEAT_WINDOW ? n_ctx - FM__REPEAT_WINDOW : 0;
        for (size_t i = from; i < n_ctx; i++) {
            int32_t id = ctx[i];
            if (id < 0 || id >= s->n_vocab) continue;
            int dup = 0;
            for (size_t j = from; j < i; j++) if (ctx[j] == id) { dup = 1; break; }
            if (dup) continue;
            w[id] = w[id] > 0 ? w[id] / p->repeat_penalty : w[id] * p->repeat_penalty;
        }
    }
    if (pf) {
        for (int32_t i = 0; i < s->n_seen; i++) {
            int32_t id = s->seen[i];
            w[id] -= (float)s->counts[id] * p->frequency_penalty + p->presence_penalty;
        }
    }
    return w;
}

static int32_t argmax(const float *l, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best] || (l[best] != l[best] && l[i] == l[i])) best = i;
    return best;
}

/* Runs steps 1-4. Returns the number m of kept candidates: cand[0..m) holds them with
 * their unnormalized probabilities and *total their sum. m == -1 means greedy, with the
 * token in *greedy. */
static int64_t build(fm__sampler *s, const fm_gen_params *p, const float *logits,
                     const int32_t *ctx, size_t n_ctx, int32_t *greedy, double *total) {
    const int32_t V = s->n_vocab;
    const float *l = penalize(s, p, logits, ctx, n_ctx);
    if (!(p->temperature > 0)) {
        *greedy = argmax(l, V);
        return -1;
    }
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) if (l[i] > mx) mx = l[i];
    if (!(mx > -INFINITY)) { /* all -inf or NaN: nothing to sample from */
        *greedy = argmax(l, V);
        return -1;
    }
    const float inv_t = 1.0f / p->temperature;
    fm__cand *c = s->cand;
    double sum = 0;
    for (int32_t i = 0; i < V; i++) {
        float e = l[i] == l[i] ? expf((l[i] - mx) * inv_t) : 0.0f;
        c[i].p = e;
        c[i].id = i;
        sum += e;
    }
    /* Probabilities are e / sum; the max has e == 1. */
    size_t m = (size_t)V;
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < V) {
        size_t k = (size_t)p->top_k;
        for (size_t ti = 0; ti < FM_ARRAY_LEN(thresholds); ti++) {
            size_t got = front_sorted(c, (size_t)V, thresholds[ti]);
            if (got >= k) break;
        }
        m = k;
        sorted = 1;
        sum = 0;
        for (size_t i = 0; i < m; i++) sum += c[i].p;
    }
    if (p->top_p >= 0 && p->top_p < 1) { /* 0 keeps only the most probable token */
        double target = (double)p->top_p * sum;
        if (!sorted) {
            for (size_t ti = 0; ti < FM_ARRAY_LEN(thresholds); ti++) {
                size_t got = front_sorted(c, (size_t)V, thresholds[ti]);
                double cm = 0;
                for (size_t i = 0; i < got; i++) cm += c[i].p;
                if (cm >= target || thresholds[ti] == 0.0f) break;
            }
            sorted = 1;
        }
        /* keep token i while the mass before it is below top_p (Hugging Face's rule) */
        double cum = 0;
        size_t keep = 0;
        while (keep < m && (keep == 0 || cum < target)) cum += c[keep++].p;
        m = keep;
        sum = cum;
    }
    if (p->min_p > 0) {
        float thr = FM_MIN(p->min_p, 1.0f); /* p_max has e == 1 */
        if (sorted) {
            size_t keep = 1;
            while (keep < m && c[keep].p >= thr) keep++;
            m = keep;
            sum = 0;
            for (size_t i = 0; i < m; i++) sum += c[i].p;
        } else {
            m = front_sorted(c, (size_t)V, thr);
            sum = 0;
            for (size_t i = 0; i < m; i++) sum += c[i].p;
        }
    }
    *total = sum;
    return (int64_t)m;
}

int32_t fm__sampler_sample(fm__sampler *s, const fm_gen_params *p, const float *logits,
                           const int32_t *ctx, size_t n_ctx) {
    int32_t g = 0;
    double total = 0;
    int64_t m = build(s, p, logits, ctx, n_ctx, &g, &total);
    if (m < 0) return g;
    double u = fm__sampler_uniform(s) * total, cum = 0;
    for (int64_t i = 0; i < m; i++) {
        cum += s->cand[i].p;
        if (u < cum) return s->cand[i].id;
    }
    /* rounding: the last candidate with non-zero probability */
    for (int64_t i = m - 1; i >= 0; i--)
        if (s->cand[i].p > 0) return s->cand[i].id;
    return s->cand[0].id;
}

void fm__sampler_probs(fm__sampler *s, const fm_gen_params *p, const float *logits,
                       const int32_t *ctx, size_t n_ctx, float *probs) {
    int32_t g = 0;
    double total = 0;
    int64_t m = build(s, p, logits, ctx, n_ctx, &g, &total);
    memset(probs, 0, (size_t)s->n_vocab * sizeof *probs);
    if (m < 0) {
        probs[g] = 1;
        return;
    }
    for (int64_t i = 0; i < m; i++) probs[s->cand[i].id] = (float)(s->cand[i].p / total);
}

/* ---- stop strings ------------------------------------------------------------------- */

void fm__stopper_init(fm__stopper *st, const char *const *stop, int32_t n_stop) {
    memset(st, 0, sizeof *st);
    st->stop = stop;
    st->n_stop = stop ? n_stop : 0;
}

void fm__stopper_reset(fm__stopper *st, const char *const *stop, int32_t n_stop) {
    st->stop = stop;
    st->n_stop = stop ? n_stop : 0;
    st->len = st->off = 0;
    st->matched = 0;
}

void fm__stopper_free(fm__stopper *st) {
    if (!st) return;
    free(st->buf);
    st->buf = NULL;
    st->len = st->cap = st->off = 0;
}

int fm__stopper_feed(fm__stopper *st, const char *piece, size_t len, const char **out,
                     size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (st->matched) return 1;
    /* drop what the previous call released */
    if (st->off) {
        memmove(st->buf, st->buf + st->off, st->len - st->off);
        st->len -= st->off;
        st->off = 0;
    }
    if (st->len + len + 1 > st->cap) {
        size_t nc = st->cap ? st->cap : 64;
        while (nc < st->len + len + 1) nc *= 2;
        char *nb = realloc(st->buf, nc);
        if (!nb) return -1;
        st->buf = nb;
        st->cap = nc;
    }
    if (len) memcpy(st->buf + st->len, piece, len);
    st->len += len;
    /* earliest full match of any stop string */
    size_t best = SIZE_MAX;
    for (int32_t i = 0; i < st->n_stop; i++) {
        const char *w = st->stop[i];
        size_t wl = w ? strlen(w) : 0;
        if (!wl) continue;
        const char *hit = memmem(st->buf, st->len, w, wl);
        if (hit && (size_t)(hit - st->buf) < best) best = (size_t)(hit - st->buf);
    }
    if (best != SIZE_MAX) {
        st->matched = 1;
        *out = st->buf;
        *out_len = best;
        st->off = st->len; /* nothing more is released */
        return 1;
    }
    /* hold back the longest tail that is a proper prefix of some stop string */
    size_t hold = 0;
    for (int32_t i = 0; i < st->n_stop; i++) {
        const char *w = st->stop[i];
        size_t wl = w ? strlen(w) : 0;
        if (wl < 2) continue;
        size_t k = FM_MIN(st->len, wl - 1);
        for (; k > hold; k--)
            if (memcmp(st->buf + st->len - k, w, k) == 0) break;
        if (k > hold) hold = k;
    }
    size_t rel = fm__utf8_complete_prefix(st->buf, st->len - hold);
    *out = st->buf;
    *out_len = rel;
    st->off = rel;
    return 0;
}

void fm__stopper_flush(fm__stopper *st, const char **out, size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (st->matched || !st->buf) return;
    *out = st->buf + st->off;
    *out_len = st->len - st->off;
    st->off = st->len;
}

/* ---- repetition metrics --------------------------------------------------------------- */

/* Decodes one code point at s[i..n) (a stray byte counts as itself); returns its length. */
static size_t utf8_next(const unsigned char *s, size_t i, size_t n, uint32_t *cp) {
    unsigned c = s[i];
    size_t k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
             : (c & 0xF8) == 0xF0 ? 3 : 0;
    if (i + k >= n) k = 0;
    uint32_t v = k == 0 ? c : k == 1 ? (c & 0x1F) : k == 2 ? (c & 0x0F) : (c & 0x07);
    for (size_t j = 1; j <= k; j++) {
        if ((s[i + j] & 0xC0) != 0x80) { *cp = c; return 1; }
        v = (v << 6) | (s[i + j] & 0x3F);
    }
    *cp = v;
    return k + 1;
}

static int u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void fm__rep_metrics(const char *text, size_t len, fm__rep *out) {
    const unsigned char *s = (const unsigned char *)text;
    out->trigram_share = 0;
    out->distinct4 = 1;
    /* last 200 code points: walk back over 200 lead bytes */
    size_t start = len, chars = 0;
    while (start > 0 && chars < 200) {
        start--;
        if ((s[start] & 0xC0) != 0x80) chars++;
    }
    uint32_t cps[200];
    size_t nc = 0;
    for (size_t i = start; i < len && nc < 200;) {
        uint32_t cp;
        i += utf8_next(s, i, len, &cp);
        cps[nc++] = cp;
    }
    if (nc >= 3) {
        size_t nt = nc - 2, best = 0;
        for (size_t i = 0; i < nt; i++) {
            size_t cnt = 0;
            for (size_t j = 0; j < nt; j++)
                if (cps[j] == cps[i] && cps[j + 1] == cps[i + 1] && cps[j + 2] == cps[i + 2]) cnt++;
            if (cnt > best) best = cnt;
        }
        out->trigram_share = (double)best / (double)nt;
    }
    /* word 4-grams: hash each word, then each 4-gram of hashes */
    size_t nw = 0, capw = 0;
    uint64_t *wh = NULL;
    for (size_t i = 0; i < len;) {
        while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) i++;
        if (i >= len) break;
        uint64_t h = 1469598103934665603ULL;
        while (i < len && !(s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
            h = (h ^ s[i++]) * 1099511628211ULL;
        if (nw == capw) {
            size_t nc2 = capw ? capw * 2 : 256;
            uint64_t *nh = realloc(wh, nc2 * sizeof *nh);
            if (!nh) { free(wh); return; }
            wh = nh;
            capw = nc2;
        }
        wh[nw++] = h;
    }
    if (nw >= 4) {
        size_t ng = nw - 3;
        for (size_t i = 0; i < ng; i++) {
            uint64_t x = wh[i];
            for (int k = 1; k < 4; k++) {
                uint64_t z = x ^ (wh[i + k] + 0x9E3779B97F4A7C15ULL + (x << 6) + (x >> 2));
                x = splitmix64(&z);
            }
            wh[i] = x; /* in place: wh[i] is not read again by later 4-grams' first word */
        }
        qsort(wh, ng, sizeof *wh, u64_cmp);
        size_t distinct = 1;
        for (size_t i = 1; i < ng; i++) distinct += wh[i] != wh[i - 1];
        out->distinct4 = (double)distinct / (double)ng;
    }
    free(wh);
}
