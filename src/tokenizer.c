/* tokenizer.c: Hugging Face tokenizer.json loader, encoder and decoder.
 *
 * Encoding follows HF tokenizers step by step: added tokens are split out of the raw text
 * (non-normalized ones first, leftmost-longest), the remaining sections are normalized
 * (NFC/NFD/NFKC/NFKD, Prepend, Replace, Lowercase, Strip, Sequence), normalized added
 * tokens are split out, then the pre-tokenizer (Split with PCRE2 regexes, ByteLevel,
 * Metaspace, Digits, Sequence) cuts words and the BPE model merges each word by rank.
 * BPE results are cached per word within one encode call. Decoding runs the decoder chain
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence).
 *
 * HF runs its Split regexes on Oniguruma; we run them on PCRE2 (UTF + UCP, JIT). Both treat
 * U+0085 as \s and U+FEFF as not \s (JavaScript differs on both, so transformers.js does
 * too). Not implemented (FM_ERR_UNSUPPORTED at load): Unigram/WordPiece/WordLevel models,
 * BERT-style normalizers and pre-tokenizers, Replace decoders with a Regex, BPE dropout
 * (ignored, as at inference). Lowercase uses utf8proc's one-to-one mapping (Rust's
 * to_lowercase maps a few characters, e.g. U+0130, to two). Streaming decode follows HF's
 * DecodeStream: a piece is released once the window's text stops ending in U+FFFD. */
#include "tokenizer.h"
#include "tok_util.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------ definitions */

enum { N_NFC, N_NFD, N_NFKC, N_NFKD, N_PREPEND, N_REPLACE, N_REPLACE_RE, N_LOWER, N_STRIP };
typedef struct {
    int kind;
    char *a, *b;       /* Prepend: a; Replace: pattern a -> content b */
    size_t alen, blen;
    pcre2_code *re;
    int left, right;   /* Strip */
} norm_step;

enum { P_SPLIT, P_BYTELEVEL, P_METASPACE, P_DIGITS };
enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };
enum { PS_ALWAYS, PS_FIRST, PS_NEVER };
typedef struct {
    int kind;
    pcre2_code *re;      /* Split, Digits, ByteLevel(use_regex) */
    int behavior;
    int invert;
    int add_prefix_space; /* ByteLevel */
    char repl[8];        /* Metaspace replacement */
    int repl_len;
    int prepend_scheme;
    int split;
} pre_step;

enum { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_METASPACE };
typedef struct {
    int kind;
    char *a, *b;
    size_t alen, blen;
    int32_t content;     /* Strip: the character to strip */
    int start, stop;
    int32_t repl;        /* Metaspace replacement character */
    int prepend;
} dec_step;

typedef struct {
    char *s;             /* content (pattern: normalized content for normalized tokens) */
    size_t len;
    int32_t id;
    int lstrip, rstrip, single_word, normalized, special;
} added_tok;

typedef struct {         /* added tokens of one pass, bucketed by first byte */
    int32_t *idx;        /* indices into added[], sorted by first byte then length desc */
    int n;
    int start[257];
} added_set;

struct fm__tokenizer {
    /* id -> text for decoding (added tokens override the model vocab) */
    int32_t n_ids;
    uint32_t *dec_off, *dec_len;     /* UINT32_MAX = no token */
    uint8_t *special;                /* 1 for added tokens marked special */
    /* model vocab: id -> text, and text -> id map */
    uint32_t *voc_off, *voc_len;
    struct vslot { uint32_t off, len, tag; int32_t id; } *vmap; /* id -1 = empty */
    int32_t cp_id[1024];             /* vocab id of single characters below U+0400, or -1 */
    uint32_t vmask;
    char *arena;
    size_t arena_len, arena_cap;
    /* merges: key (a<<32|b)+1 -> (rank<<32 | new_id) */
    struct mslot { uint64_t key, val; } *mslot; /* key 0 = empty */
    uint32_t mmask;
    int32_t unk_id;
    int fuse_unk, byte_fallback, ignore_merges;
    int sp_split;                    /* words may be cut before "▁" runs (see bpe_word) */
    char *cont_prefix, *eow_suffix;  /* NULL when absent */
    int32_t byte_tok[256];           /* <0xNN> ids for byte_fallback, -1 if missing */
    /* added tokens */
    added_tok *added;
    int n_added;
    added_set raw_set, norm_set;
    /* pipeline */
    norm_step *norm;
    int n_norm;
    pre_step *pre;
    int n_pre;
    dec_step *dec;
    int n_dec;
    int has_decoder;
    /* special tokens and templates */
    int32_t *prefix_ids, *suffix_ids;
    int n_prefix, n_suffix;
    int32_t *eos_ids;
    int n_eos;
    int32_t bos_id;
    char *bos_token, *eos_token, *chat_template;
};

/* GPT-2 bytes_to_unicode. */
static int32_t g_byte2cp[256];
static int16_t g_cp2byte[324];
static void byte_tables_build(void) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            g_byte2cp[b] = b;
        else
            g_byte2cp[b] = 256 + n++;
    }
    for (int i = 0; i < 324; i++) g_cp2byte[i] = -1;
    for (int b = 0; b < 256; b++) g_cp2byte[g_byte2cp[b]] = (int16_t)b;
}
static void byte_tables_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, byte_tables_build);
}

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------ small buffers */

typedef struct { char *p; size_t n, cap; } sbuf;
static int sb_reserve(sbuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + extra) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) return -1;
    b->p = np;
    b->cap = nc;
    return 0;
}
static int sb_put(sbuf *b, const void *s, size_t n) {
    if (sb_reserve(b, n + 1)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

typedef struct { int32_t *p; size_t n, cap; } ibuf;
static int ib_reserve(ibuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 64;
    while (nc < b->n + extra) nc *= 2;
    int32_t *np = realloc(b->p, nc * sizeof *np);
    if (!np) return -1;
    b->p = np;
    b->cap = nc;
    return 0;
}
static int ib_push(ibuf *b, int32_t v) {
    if (ib_reserve(b, 1)) return -1;
    b->p[b->n++] = v;
    return 0;
}

/* ------------------------------------------------------------------ vocab and merges */

static uint32_t arena_add(fm__tokenizer *t, const char *s, size_t n) {
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t nc = t->arena_cap ? t->arena_cap : 1 << 16;
        while (nc < t->arena_len + n + 1) nc *= 2;
        char *np = realloc(t->arena, nc);
        if (!np) return UINT32_MAX;
        t->arena = np;
        t->arena_cap = nc;
    }
    if (t->arena_len + n >= UINT32_MAX) return UINT32_MAX;
    uint32_t off = (uint32_t)t->arena_len;
    memcpy(t->arena + off, s, n);
    t->arena[off + n] = 0;
    t->arena_len += n + 1;
    return off;
}

static int32_t vocab_get(const fm__tokenizer *t, const char *s, size_t n) {
    if (!t->vmap) return -1;
    uint64_t hh = fm__tok_hash(s, n);
    uint32_t h = (uint32_t)hh & t->vmask, tag = (uint32_t)(hh >> 32);
    for (;;) {
        const struct vslot *e = &t->vmap[h];
        if (e->id < 0) return -1;
        if (e->tag == tag && e->len == n && memcmp(t->arena + e->off, s, n) == 0) return e->id;
        h = (h + 1) & t->vmask;
    }
}

/* vocab_get for one character (c: its UTF-8 bytes, cl of them). */
static inline int32_t vocab_char(const fm__tokenizer *t, const char *c, size_t cl) {
    const unsigned char *u = (const unsigned char *)c;
    if (cl == 1) return t->cp_id[u[0]];
    if (cl == 2 && u[0] < 0xD0) return t->cp_id[((u[0] & 0x1F) << 6) | (u[1] & 0x3F)];
    return vocab_get(t, c, cl);
}

static int merge_get(const fm__tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *new_id) {
    if (!t->mslot) return 0;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->mmask;
    for (;;) {
        uint64_t k = t->mslot[h].key;
        if (k == 0) return 0;
        if (k == key) {
            *rank = (int32_t)(t->mslot[h].val >> 32);
            *new_id = (int32_t)(uint32_t)t->mslot[h].val;
            return 1;
        }
        h = (h + 1) & t->mmask;
    }
}

static void merge_put(fm__tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->mmask;
    while (t->mslot[h].key != 0 && t->mslot[h].key != key) h = (h + 1) & t->mmask;
    t->mslot[h].key = key;
    t->mslot[h].val = ((uint64_t)(uint32_t)rank << 32) | (uint32_t)new_id;
}

/* ------------------------------------------------------------------ encode context */

typedef struct { uint32_t off, len; int first; } span;
typedef struct { sbuf b; span *s; size_t n, cap; } plist;

static int pl_add(plist *l, const char *p, size_t n, int first) {
    if (n == 0) return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        span *ns = realloc(l->s, nc * sizeof *ns);
        if (!ns) return -1;
        l->s = ns;
        l->cap = nc;
    }
    size_t off = l->b.n;
    if (sb_put(&l->b, p, n)) return -1;
    l->s[l->n].off = (uint32_t)off;
    l->s[l->n].len = (uint32_t)n;
    l->s[l->n].first = first;
    l->n++;
    return 0;
}
static void pl_clear(plist *l) { l->b.n = 0; l->n = 0; }
static void pl_free(plist *l) { free(l->b.p); free(l->s); }

typedef struct { uint32_t a, b; int m; } seg;
typedef struct { int32_t id, prev, next, alive; } sym;
typedef struct { int32_t rank, pos, new_id; } hent;
typedef struct { uint64_t h; uint32_t koff, klen, ioff, in; } centry;

typedef struct {
    const fm__tokenizer *t;
    ibuf out;
    sbuf n1, n2;                  /* normalization buffers */
    plist pa, pb;                 /* pre-token lists */
    seg *segs;
    size_t nseg, segcap;
    sym *syms;
    size_t symcap;
    hent *heap;
    size_t heapcap;
    sbuf tmp;
    /* word cache */
    centry *cache;
    uint32_t cmask, cn;
    sbuf ckeys;
    ibuf cids;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
} enc_ctx;

static void ctx_free(enc_ctx *c) {
    free(c->out.p);
    free(c->n1.p);
    free(c->n2.p);
    pl_free(&c->pa);
    pl_free(&c->pb);
    free(c->segs);
    free(c->syms);
    free(c->heap);
    free(c->tmp.p);
    free(c->cache);
    free(c->ckeys.p);
    free(c->cids.p);
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mc) pcre2_match_context_free(c->mc);
    if (c->js) pcre2_jit_stack_free(c->js);
}

static fm_status nomem(void) { return fm__err(FM_ERR_NOMEM, "tokenizer: out of memory"); }

/* ------------------------------------------------------------------ regex matching */

/* Finds the next non-empty match of re in s[0..n) at or after *pos. Returns 1 with
 * [*ms,*me) set, 0 when there is none, -1 on a matcher error. */
static int re_next(enc_ctx *c, const pcre2_code *re, const char *s, size_t n, size_t pos,
                   size_t *ms, size_t *me) {
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, c->mc);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !c->js) {
            /* the default 32 KiB JIT stack was too small: retry with a large one */
            if (!c->mc) c->mc = pcre2_match_context_create(NULL);
            c->js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
            if (!c->mc || !c->js) return -1;
            pcre2_jit_stack_assign(c->mc, NULL, c->js);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* empty match: continue one character further */
        pos = ov[0] + (ov[0] < n ? (size_t)fm__tok_u8len((unsigned char)s[ov[0]]) : 1);
    }
    return 0;
}

static int seg_add(enc_ctx *c, size_t a, size_t b, int m) {
    if (c->nseg == c->segcap) {
        size_t nc = c->segcap ? c->segcap * 2 : 64;
        seg *ns = realloc(c->segs, nc * sizeof *ns);
        if (!ns) return -1;
        c->segs = ns;
        c->segcap = nc;
    }
    c->segs[c->nseg].a = (uint32_t)a;
    c->segs[c->nseg].b = (uint32_t)b;
    c->segs[c->nseg].m = m;
    c->nseg++;
    return 0;
}

/* HF NormalizedString::split of s[0..n) by re with the given behaviour; non-empty pieces
 * are appended to out (first: s starts at original offset 0). */
static fm_status re_split(enc_ctx *c, const pcre2_code *re, int behavior, int invert,
                          const char *s, size_t n, int first, plist *out) {
    c->nseg = 0;
    size_t pos = 0, prev = 0, ms, me;
    for (;;) {
        int r = re_next(c, re, s, n, pos, &ms, &me);
        if (r < 0) return fm__err(FM_ERR_TOKENIZER, "tokenizer: regex match failed");
        if (r == 0) break;
        if (ms != prev && seg_add(c, prev, ms, invert)) return nomem();
        if (seg_add(c, ms, me, !invert)) return nomem();
        prev = pos = me;
    }
    if (prev != n && seg_add(c, prev, n, invert)) return nomem();
    /* apply the behaviour in place: result segments with m = "remove" */
    size_t k = 0;
    seg *g = c->segs;
    switch (behavior) {
    case B_ISOLATED:
        for (size_t i = 0; i < c->nseg; i++) g[i].m = 0;
        k = c->nseg;
        break;
    case B_REMOVED: k = c->nseg; break;
    case B_CONTIGUOUS:
        for (size_t i = 0; i < c->nseg; i++) {
            if (k > 0 && g[k - 1].m == g[i].m) g[k - 1].b = g[i].b;
            else g[k++] = g[i];
        }
        for (size_t i = 0; i < k; i++) g[i].m = 0;
        break;
    case B_MERGED_PREV: {
        int prev_match = 0;
        for (size_t i = 0; i < c->nseg; i++) {
            int m = g[i].m;
            if (m && !prev_match && k > 0) g[k - 1].b = g[i].b;
            else { g[k] = g[i]; g[k].m = 0; k++; }
            prev_match = m;
        }
        break;
    }
    case B_MERGED_NEXT: {
        /* walk backwards, merging a match into the piece after it */
        int prev_match = 0;
        size_t nn = c->nseg;
        seg *r = malloc((nn ? nn : 1) * sizeof *r);
        if (!r) return nomem();
        size_t rk = 0;
        for (size_t i = nn; i-- > 0;) {
            int m = g[i].m;
            if (m && !prev_match && rk > 0) r[rk - 1].a = g[i].a;
            else { r[rk] = g[i]; r[rk].m = 0; rk++; }
            prev_match = m;
        }
        for (size_t i = 0; i < rk; i++) g[i] = r[rk - 1 - i];
        k = rk;
        free(r);
        break;
    }
    }
    for (size_t i = 0; i < k; i++) {
        if (g[i].m) continue;
        if (pl_add(out, s + g[i].a, g[i].b - g[i].a, first && g[i].a == 0)) return nomem();
    }
    return FM_OK;
}

/* ------------------------------------------------------------------ normalizers */

static fm_status utf8proc_norm(sbuf *out, const char *s, size_t n, int opts) {
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (i == n) return sb_put(out, s, n) ? nomem() : FM_OK; /* ASCII is in every form */
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)(UTF8PROC_STABLE | opts));
    if (r < 0) {
        free(dst);
        return fm__err(FM_ERR_ARG, "tokenizer: normalization failed: %s", utf8proc_errmsg(r));
    }
    int e = sb_put(out, dst, (size_t)r);
    free(dst);
    return e ? nomem() : FM_OK;
}

/* Applies the normalizer chain to s[0..n); the result is in *res / *rn (owned by c). */
static fm_status normalize(enc_ctx *c, const char *s, size_t n, const char **res, size_t *rn) {
    const fm__tokenizer *t = c->t;
    const char *cur = s;
    size_t cn = n;
    for (int i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        sbuf *o = (cur == c->n1.p) ? &c->n2 : &c->n1;
        o->n = 0;
        fm_status e = FM_OK;
        switch (st->kind) {
        case N_NFC: e = utf8proc_norm(o, cur, cn, UTF8PROC_COMPOSE); break;
        case N_NFD: e = utf8proc_norm(o, cur, cn, UTF8PROC_DECOMPOSE); break;
        case N_NFKC: e = utf8proc_norm(o, cur, cn, UTF8PROC_COMPOSE | UTF8PROC_COMPAT); break;
        case N_NFKD: e = utf8proc_norm(o, cur, cn, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT); break;
        case N_PREPEND:
            if (cn > 0 && (sb_put(o, st->a, st->alen) || sb_put(o, cur, cn))) e = nomem();
            break;
        case N_REPLACE: {
            size_t p = 0;
            while (p < cn) {
                const char *f = st->alen ? memmem(cur + p, cn - p, st->a, st->alen) : NULL;
                if (!f) break;
                size_t at = (size_t)(f - cur);
                if (sb_put(o, cur + p, at - p) || sb_put(o, st->b, st->blen)) return nomem();
                p = at + st->alen;
            }
            if (sb_put(o, cur + p, cn - p)) e = nomem();
            break;
        }
        case N_REPLACE_RE: {
            size_t p = 0, ms, me;
            for (;;) {
                int r = re_next(c, st->re, cur, cn, p, &ms, &me);
                if (r < 0) return fm__err(FM_ERR_TOKENIZER, "tokenizer: regex match failed");
                if (r == 0) break;
                if (sb_put(o, cur + p, ms - p) || sb_put(o, st->b, st->blen)) return nomem();
                p = me;
            }
            if (sb_put(o, cur + p, cn - p)) e = nomem();
            break;
        }
        case N_LOWER: {
            size_t p = 0;
            while (p < cn) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)cur + p, cn - p, &cp);
                char enc[4];
                int el = fm__tok_u8enc(utf8proc_tolower(cp), enc);
                if (sb_put(o, enc, (size_t)el)) return nomem();
                p += (size_t)l;
            }
            if (sb_reserve(o, 1)) e = nomem();
            break;
        }
        case N_STRIP: {
            size_t a = 0, b = cn;
            while (st->left && a < b) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)cur + a, b - a, &cp);
                if (!fm__tok_is_ws(cp)) break;
                a += (size_t)l;
            }
            while (st->right && b > a) {
                size_t q = b - 1;
                while (q > a && ((unsigned char)cur[q] & 0xC0) == 0x80) q--;
                int32_t cp;
                fm__tok_u8dec((const unsigned char *)cur + q, b - q, &cp);
                if (!fm__tok_is_ws(cp)) break;
                b = q;
            }
            if (sb_put(o, cur + a, b - a)) e = nomem();
            break;
        }
        }
        if (e) return e;
        if (sb_reserve(o, 1)) return nomem();
        cur = o->p;
        cn = o->n;
    }
    *res = cur;
    *rn = cn;
    return FM_OK;
}

/* ------------------------------------------------------------------ BPE */

static int heap_push(enc_ctx *c, size_t *hn, hent e) {
    if (*hn == c->heapcap) {
        size_t nc = c->heapcap ? c->heapcap * 2 : 64;
        hent *nh = realloc(c->heap, nc * sizeof *nh);
        if (!nh) return -1;
        c->heap = nh;
        c->heapcap = nc;
    }
    hent *h = c->heap;
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < e.rank || (h[p].rank == e.rank && h[p].pos < e.pos)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
    return 0;
}
static hent heap_pop(enc_ctx *c, size_t *hn) {
    hent *h = c->heap;
    hent top = h[0], last = h[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent *best = &last;
        if (l < n && (h[l].rank < best->rank || (h[l].rank == best->rank && h[l].pos < best->pos))) { m = l; best = &h[l]; }
        if (r < n && (h[r].rank < best->rank || (h[r].rank == best->rank && h[r].pos < best->pos))) { m = r; best = &h[r]; }
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (n > 0) h[i] = last;
    return top;
}

static int sym_add(enc_ctx *c, size_t *ns, int32_t id) {
    if (*ns == c->symcap) {
        size_t nc = c->symcap ? c->symcap * 2 : 64;
        sym *nsy = realloc(c->syms, nc * sizeof *nsy);
        if (!nsy) return -1;
        c->syms = nsy;
        c->symcap = nc;
    }
    sym *s = &c->syms[*ns];
    s->id = id;
    s->prev = (int32_t)*ns - 1;
    s->next = -1;
    s->alive = 1;
    if (*ns > 0) c->syms[*ns - 1].next = (int32_t)*ns;
    (*ns)++;
    return 0;
}

/* Runs the BPE model on one word, appending ids to c->out (HF BPE::merge_word). */
static fm_status bpe_word_uncached(enc_ctx *c, const char *w, size_t n) {
    const fm__tokenizer *t = c->t;
    if (t->ignore_merges) {
        int32_t id = vocab_get(t, w, n);
        if (id >= 0) return ib_push(&c->out, id) ? nomem() : FM_OK;
    }
    size_t ns = 0;
    int32_t unk = -1;
    size_t i = 0;
    while (i < n) {
        size_t cl = (size_t)fm__tok_u8len((unsigned char)w[i]);
        if (cl > n - i) cl = n - i;
        const char *s = w + i;
        size_t sl = cl;
        int is_first = i == 0, is_last = i + cl == n;
        if ((!is_first && t->cont_prefix) || (is_last && t->eow_suffix)) {
            c->tmp.n = 0;
            if (!is_first && t->cont_prefix && sb_put(&c->tmp, t->cont_prefix, strlen(t->cont_prefix))) return nomem();
            if (sb_put(&c->tmp, w + i, cl)) return nomem();
            if (is_last && t->eow_suffix && sb_put(&c->tmp, t->eow_suffix, strlen(t->eow_suffix))) return nomem();
            s = c->tmp.p;
            sl = c->tmp.n;
        }
        int32_t id = s == w + i ? vocab_char(t, s, sl) : vocab_get(t, s, sl);
        if (id >= 0) {
            if (unk >= 0) {
                if (sym_add(c, &ns, unk)) return nomem();
                unk = -1;
            }
            if (sym_add(c, &ns, id)) return nomem();
        } else {
            int done = 0;
            if (t->byte_fallback) {
                int ok = 1;
                for (size_t k = 0; k < sl; k++)
                    if (t->byte_tok[(unsigned char)s[k]] < 0) ok = 0;
                if (ok) {
                    for (size_t k = 0; k < sl; k++)
                        if (sym_add(c, &ns, t->byte_tok[(unsigned char)s[k]])) return nomem();
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && !t->fuse_unk && sym_add(c, &ns, unk)) return nomem();
                unk = t->unk_id;
            }
        }
        i += cl;
    }
    if (unk >= 0 && sym_add(c, &ns, unk)) return nomem();

    /* merge by rank, leftmost first among equal ranks */
    size_t hn = 0;
    sym *sy = c->syms;
    for (size_t k = 0; k + 1 < ns; k++) {
        int32_t rank, nid;
        if (merge_get(t, c->syms[k].id, c->syms[k + 1].id, &rank, &nid) &&
            heap_push(c, &hn, (hent){rank, (int32_t)k, nid}))
            return nomem();
    }
    sy = c->syms;
    while (hn > 0) {
        hent top = heap_pop(c, &hn);
        sym *a = &sy[top.pos];
        if (!a->alive || a->next < 0) continue;
        sym *b = &sy[a->next];
        int32_t rank, nid;
        if (!merge_get(t, a->id, b->id, &rank, &nid) || nid != top.new_id) continue;
        a->id = nid;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0) sy[b->next].prev = top.pos;
        if (a->prev >= 0 && merge_get(t, sy[a->prev].id, a->id, &rank, &nid)) {
            if (heap_push(c, &hn, (hent){rank, a->prev, nid})) return nomem();
        }
        if (a->next >= 0 && merge_get(t, a->id, sy[a->next].id, &rank, &nid)) {
            if (heap_push(c, &hn, (hent){rank, top.pos, nid})) return nomem();
        }
    }
    for (int32_t k = ns ? 0 : -1; k >= 0; k = sy[k].next)
        if (ib_push(&c->out, sy[k].id)) return nomem();
    return FM_OK;
}

static fm_status bpe_chunk(enc_ctx *c, const char *w, size_t n) {
    uint64_t h = fm__tok_hash(w, n);
    if (c->cache) {
        uint32_t i = (uint32_t)h & c->cmask;
        while (c->cache[i].klen != UINT32_MAX) {
            centry *e = &c->cache[i];
            if (e->h == h && e->klen == n && memcmp(c->ckeys.p + e->koff, w, n) == 0) {
                if (ib_reserve(&c->out, e->in)) return nomem();
                if (e->in) memcpy(c->out.p + c->out.n, c->cids.p + e->ioff, e->in * sizeof(int32_t));
                c->out.n += e->in;
                return FM_OK;
            }
            i = (i + 1) & c->cmask;
        }
    }
    size_t before = c->out.n;
    fm_status st = bpe_word_uncached(c, w, n);
    if (st) return st;
    if (n > 256) return FM_OK; /* long words are rarely repeated */
    /* insert into the cache (grow at half load) */
    if (!c->cache || (c->cn + 1) * 2 > c->cmask + 1) {
        uint32_t ncap = c->cache ? (c->cmask + 1) * 2 : 64;
        centry *nc = malloc((size_t)ncap * sizeof *nc);
        if (!nc) return nomem();
        for (uint32_t i = 0; i < ncap; i++) nc[i].klen = UINT32_MAX;
        if (c->cache) {
            for (uint32_t i = 0; i <= c->cmask; i++) {
                if (c->cache[i].klen == UINT32_MAX) continue;
                uint32_t j = (uint32_t)c->cache[i].h & (ncap - 1);
                while (nc[j].klen != UINT32_MAX) j = (j + 1) & (ncap - 1);
                nc[j] = c->cache[i];
            }
            free(c->cache);
        }
        c->cache = nc;
        c->cmask = ncap - 1;
    }
    size_t cnt = c->out.n - before;
    centry e = {h, (uint32_t)c->ckeys.n, (uint32_t)n, (uint32_t)c->cids.n, (uint32_t)cnt};
    if (sb_put(&c->ckeys, w, n) || ib_reserve(&c->cids, cnt)) return nomem();
    if (cnt) memcpy(c->cids.p + c->cids.n, c->out.p + before, cnt * sizeof(int32_t));
    c->cids.n += cnt;
    uint32_t i = (uint32_t)h & c->cmask;
    while (c->cache[i].klen != UINT32_MAX) i = (i + 1) & c->cmask;
    c->cache[i] = e;
    c->cn++;
    return FM_OK;
}

/* BPE of one pre-token word. When no vocabulary token has "▁" after another character
 * (t->sp_split, true of SentencePiece vocabularies), no merge can cross the start of a
 * "▁" run, so the word is cut there and each piece is cached: exact, and fast for
 * SentencePiece models that have no pre-tokenizer (the whole text is one word). */
static fm_status bpe_word(enc_ctx *c, const char *w, size_t n) {
    if (!c->t->sp_split || n <= 3) return bpe_chunk(c, w, n);
    size_t a = 0;
    for (size_t i = 3; i + 3 <= n; i++) {
        if (memcmp(w + i, "\xE2\x96\x81", 3) == 0 && memcmp(w + i - 3, "\xE2\x96\x81", 3) != 0) {
            fm_status st = bpe_chunk(c, w + a, i - a);
            if (st) return st;
            a = i;
        }
    }
    return bpe_chunk(c, w + a, n - a);
}

/* ------------------------------------------------------------------ pre-tokenizers */

static fm_status bytelevel_map(plist *out, const char *s, size_t n, int first) {
    /* each byte becomes one code point of the GPT-2 table (1 or 2 UTF-8 bytes) */
    size_t off = out->b.n;
    if (sb_reserve(&out->b, 2 * n + 1)) return nomem();
    char *o = out->b.p + off;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)fm__tok_u8enc(g_byte2cp[(unsigned char)s[i]], o + k);
    if (out->n == out->cap) {
        size_t nc = out->cap ? out->cap * 2 : 16;
        span *ns = realloc(out->s, nc * sizeof *ns);
        if (!ns) return nomem();
        out->s = ns;
        out->cap = nc;
    }
    out->b.n += k;
    out->s[out->n++] = (span){(uint32_t)off, (uint32_t)k, first};
    return FM_OK;
}

/* Pre-tokenizes s[0..n) and runs BPE on every word. */
static fm_status pretok_and_model(enc_ctx *c, const char *s, size_t n, int first) {
    const fm__tokenizer *t = c->t;
    plist *cur = &c->pa, *nxt = &c->pb;
    pl_clear(cur);
    if (pl_add(cur, s, n, first)) return nomem();
    for (int i = 0; i < t->n_pre; i++) {
        const pre_step *p = &t->pre[i];
        pl_clear(nxt);
        for (size_t k = 0; k < cur->n; k++) {
            const char *ps = cur->b.p + cur->s[k].off;
            size_t pn = cur->s[k].len;
            int pf = cur->s[k].first;
            fm_status st = FM_OK;
            switch (p->kind) {
            case P_SPLIT:
            case P_DIGITS:
                st = re_split(c, p->re, p->behavior, p->invert, ps, pn, pf, nxt);
                break;
            case P_BYTELEVEL: {
                const char *q = ps;
                size_t qn = pn;
                if (p->add_prefix_space && (pn == 0 || ps[0] != ' ')) {
                    c->tmp.n = 0;
                    if (sb_put(&c->tmp, " ", 1) || sb_put(&c->tmp, ps, pn)) return nomem();
                    q = c->tmp.p;
                    qn = c->tmp.n;
                }
                if (p->re) {
                    size_t pos = 0, prev = 0, ms, me;
                    for (;;) {
                        int r = re_next(c, p->re, q, qn, pos, &ms, &me);
                        if (r < 0) return fm__err(FM_ERR_TOKENIZER, "tokenizer: regex match failed");
                        if (r == 0) break;
                        if (ms > prev && (st = bytelevel_map(nxt, q + prev, ms - prev, pf && prev == 0))) return st;
                        if ((st = bytelevel_map(nxt, q + ms, me - ms, pf && ms == 0))) return st;
                        prev = pos = me;
                    }
                    if (prev < qn) st = bytelevel_map(nxt, q + prev, qn - prev, pf && prev == 0);
                } else if (qn > 0) {
                    st = bytelevel_map(nxt, q, qn, pf);
                }
                break;
            }
            case P_METASPACE: {
                c->tmp.n = 0;
                int starts = pn >= (size_t)p->repl_len && memcmp(ps, p->repl, (size_t)p->repl_len) == 0;
                if (!starts && pn > 0 && ps[0] == ' ') starts = 1; /* becomes the replacement */
                if ((p->prepend_scheme == PS_ALWAYS || (p->prepend_scheme == PS_FIRST && pf)) && !starts)
                    if (sb_put(&c->tmp, p->repl, (size_t)p->repl_len)) return nomem();
                for (size_t j = 0; j < pn; j++) {
                    if (ps[j] == ' ') { if (sb_put(&c->tmp, p->repl, (size_t)p->repl_len)) return nomem(); }
                    else if (sb_put(&c->tmp, ps + j, 1)) return nomem();
                }
                if (!p->split) {
                    if (pl_add(nxt, c->tmp.p, c->tmp.n, pf)) return nomem();
                } else {
                    /* split before each replacement character (MergedWithNext) */
                    size_t a = 0, L = (size_t)p->repl_len;
                    for (size_t j = 1; j + L <= c->tmp.n; j++) {
                        if (memcmp(c->tmp.p + j, p->repl, L) == 0) {
                            if (pl_add(nxt, c->tmp.p + a, j - a, pf && a == 0)) return nomem();
                            a = j;
                        }
                    }
                    if (pl_add(nxt, c->tmp.p + a, c->tmp.n - a, pf && a == 0)) return nomem();
                }
                break;
            }
            }
            if (st) return st;
        }
        plist *sw = cur;
        cur = nxt;
        nxt = sw;
    }
    for (size_t k = 0; k < cur->n; k++) {
        fm_status st = bpe_word(c, cur->b.p + cur->s[k].off, cur->s[k].len);
        if (st) return st;
    }
    return FM_OK;
}

/* ------------------------------------------------------------------ added tokens */

/* Rust regex \w, which HF uses for single_word: letters, marks, Nd, Nl, Pc, ZWNJ/ZWJ. */
static int is_word_cp(int32_t cp) {
    if (cp == '_' || cp == 0x200C || cp == 0x200D) return 1;
    utf8proc_category_t k = utf8proc_category(cp);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_NL) || k == UTF8PROC_CATEGORY_PC;
}

/* Finds the leftmost-longest added token of set in s[0..n) starting at or after from.
 * Returns the index into t->added or -1; *at = match start. */
static int find_added(const fm__tokenizer *t, const added_set *set, const char *s, size_t n,
                      size_t from, size_t *at) {
    if (set->n == 0) return -1;
    for (size_t i = from; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        for (int k = set->start[b]; k < set->start[b + 1]; k++) {
            const added_tok *a = &t->added[set->idx[k]];
            if (a->len > n - i || memcmp(s + i, a->s, a->len) != 0) continue;
            *at = i;
            return set->idx[k];
        }
    }
    return -1;
}

/* single_word: the match [ms,me) must not touch a word character on either side. */
static int single_word_ok(const char *s, size_t n, size_t ms, size_t me) {
    if (ms > 0) {
        size_t q = ms - 1;
        while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
        int32_t cp;
        fm__tok_u8dec((const unsigned char *)s + q, ms - q, &cp);
        if (is_word_cp(cp)) return 0;
    }
    if (me < n) {
        int32_t cp;
        fm__tok_u8dec((const unsigned char *)s + me, n - me, &cp);
        if (is_word_cp(cp)) return 0;
    }
    return 1;
}

typedef fm_status (*section_fn)(enc_ctx *c, const char *s, size_t n, int first);

/* Splits s[0..n) by the added tokens of set; tokens go to c->out, the text between them
 * to fn. lstrip/rstrip take the adjacent whitespace into the token. */
static fm_status split_added(enc_ctx *c, const added_set *set, const char *s, size_t n, int first,
                             section_fn fn) {
    const fm__tokenizer *t = c->t;
    size_t start_off = 0, pos = 0, at;
    for (;;) {
        int k = find_added(t, set, s, n, pos, &at);
        if (k < 0) break;
        const added_tok *a = &t->added[k];
        size_t ms = at, me = at + a->len;
        if (a->single_word && !single_word_ok(s, n, ms, me)) {
            pos = me; /* HF skips this match; matching resumes after it */
            continue;
        }
        if (a->lstrip) {
            size_t q = ms;
            while (q > 0) {
                size_t r = q - 1;
                while (r > 0 && ((unsigned char)s[r] & 0xC0) == 0x80) r--;
                int32_t cp;
                fm__tok_u8dec((const unsigned char *)s + r, q - r, &cp);
                if (!fm__tok_is_ws(cp)) break;
                q = r;
            }
            ms = q > start_off ? q : start_off;
        }
        if (a->rstrip) {
            while (me < n) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)s + me, n - me, &cp);
                if (!fm__tok_is_ws(cp)) break;
                me += (size_t)l;
            }
        }
        if (start_off < ms) {
            fm_status st = fn(c, s + start_off, ms - start_off, first && start_off == 0);
            if (st) return st;
        }
        if (ib_push(&c->out, a->id)) return nomem();
        start_off = pos = me;
    }
    if (start_off < n) return fn(c, s + start_off, n - start_off, first && start_off == 0);
    return FM_OK;
}

static fm_status normalized_section(enc_ctx *c, const char *s, size_t n, int first) {
    return pretok_and_model(c, s, n, first);
}

static fm_status raw_section(enc_ctx *c, const char *s, size_t n, int first) {
    const char *ns;
    size_t nn;
    fm_status st = normalize(c, s, n, &ns, &nn);
    if (st) return st;
    if (c->t->norm_set.n == 0) return pretok_and_model(c, ns, nn, first);
    /* the normalized text lives in a normalization buffer that later sections reuse */
    char *copy = fm__strndup(ns, nn);
    if (!copy) return nomem();
    st = split_added(c, &c->t->norm_set, copy, nn, first, normalized_section);
    free(copy);
    return st;
}

/* ------------------------------------------------------------------ public: encode */

fm_status fm__tok_encode(const fm__tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len)) return fm__err(FM_ERR_ARG, "tokenizer: NULL argument");
    if (len > (size_t)UINT32_MAX / 4)
        return fm__err(FM_ERR_ARG, "tokenizer: text of %zu bytes is too long (at most 1 GiB)", len);
    size_t bad = fm__tok_utf8_invalid_at(text, len);
    if (bad < len)
        return fm__err(FM_ERR_ARG, "tokenizer: invalid UTF-8 in the text at byte offset %zu", bad);
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    fm_status st = FM_OK;
    c.md = pcre2_match_data_create(4, NULL);
    if (!c.md) { st = nomem(); goto done; }
    if (add_special)
        for (int i = 0; i < t->n_prefix; i++)
            if (ib_push(&c.out, t->prefix_ids[i])) { st = nomem(); goto done; }
    if (len > 0) st = split_added(&c, &t->raw_set, text ? text : "", len, 1, raw_section);
    if (st) goto done;
    if (add_special)
        for (int i = 0; i < t->n_suffix; i++)
            if (ib_push(&c.out, t->suffix_ids[i])) { st = nomem(); goto done; }
    if (ib_reserve(&c.out, 1)) { st = nomem(); goto done; }
    *ids = c.out.p;
    *n = c.out.n;
    c.out.p = NULL;
done:
    ctx_free(&c);
    return st;
}

/* ------------------------------------------------------------------ decode */

typedef struct { sbuf b; uint32_t *off, *len; size_t n, cap; } tlist;
static int tl_add(tlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        uint32_t *no = realloc(l->off, nc * sizeof *no), *nl;
        if (!no) return -1;
        l->off = no;
        nl = realloc(l->len, nc * sizeof *nl);
        if (!nl) return -1;
        l->len = nl;
        l->cap = nc;
    }
    l->off[l->n] = (uint32_t)l->b.n;
    l->len[l->n] = (uint32_t)n;
    l->n++;
    return sb_put(&l->b, s, n);
}
static void tl_free(tlist *l) { free(l->b.p); free(l->off); free(l->len); }

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* One decoder step: in -> out. */
static int dec_apply(const dec_step *d, const tlist *in, tlist *out) {
    const char *B = in->b.p;
    switch (d->kind) {
    case D_BYTELEVEL: {
        sbuf raw = {0};
        for (size_t i = 0; i < in->n; i++) {
            const char *s = B + in->off[i];
            size_t n = in->len[i], p = 0, start = raw.n;
            int ok = 1;
            while (p < n) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)s + p, n - p, &cp);
                if (cp >= 324 || g_cp2byte[cp] < 0) { ok = 0; break; }
                char byte = (char)g_cp2byte[cp];
                if (sb_put(&raw, &byte, 1)) { free(raw.p); return -1; }
                p += (size_t)l;
            }
            if (!ok) {
                raw.n = start;
                if (sb_put(&raw, s, n)) { free(raw.p); return -1; }
            }
        }
        char *fixed = malloc(raw.n * 3 + 1);
        if (!fixed) { free(raw.p); return -1; }
        size_t fl = fm__tok_utf8_lossy(raw.p ? raw.p : "", raw.n, fixed);
        int e = tl_add(out, fixed, fl);
        free(fixed);
        free(raw.p);
        return e;
    }
    case D_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = B + in->off[i];
            size_t n = in->len[i], p = 0;
            sbuf r = {0};
            while (p < n) {
                const char *f = d->alen ? memmem(s + p, n - p, d->a, d->alen) : NULL;
                if (!f) break;
                size_t at = (size_t)(f - s);
                if (sb_put(&r, s + p, at - p) || sb_put(&r, d->b, d->blen)) { free(r.p); return -1; }
                p = at + d->alen;
            }
            if (sb_put(&r, s + p, n - p) || tl_add(out, r.p, r.n)) { free(r.p); return -1; }
            free(r.p);
        }
        return 0;
    case D_BYTEFALLBACK: {
        sbuf bytes = {0};
        int e = 0;
        for (size_t i = 0; i <= in->n && !e; i++) {
            const char *s = i < in->n ? B + in->off[i] : NULL;
            size_t n = i < in->n ? in->len[i] : 0;
            if (s && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
                hexval(s[4]) >= 0) {
                char byte = (char)(hexval(s[3]) * 16 + hexval(s[4]));
                e = sb_put(&bytes, &byte, 1);
                continue;
            }
            if (bytes.n) {
                if (fm__tok_utf8_invalid_at(bytes.p, bytes.n) == bytes.n) e = tl_add(out, bytes.p, bytes.n);
                else
                    for (size_t k = 0; k < bytes.n && !e; k++) e = tl_add(out, "\xEF\xBF\xBD", 3);
                bytes.n = 0;
            }
            if (s && !e) e = tl_add(out, s, n);
        }
        free(bytes.p);
        return e;
    }
    case D_FUSE: {
        if (tl_add(out, "", 0)) return -1;
        out->b.n = out->off[0];
        if (sb_put(&out->b, B ? B : "", in->b.n)) return -1;
        out->len[0] = (uint32_t)in->b.n;
        return 0;
    }
    case D_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = B + in->off[i];
            size_t n = in->len[i], a = 0, b = n;
            for (int k = 0; k < d->start && a < b; k++) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)s + a, b - a, &cp);
                if (cp != d->content) break;
                a += (size_t)l;
            }
            for (int k = 0; k < d->stop && b > a; k++) {
                size_t q = b - 1;
                while (q > a && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                int32_t cp;
                fm__tok_u8dec((const unsigned char *)s + q, b - q, &cp);
                if (cp != d->content) break;
                b = q;
            }
            if (tl_add(out, s + a, b - a)) return -1;
        }
        return 0;
    case D_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = B + in->off[i];
            size_t n = in->len[i], p = 0;
            sbuf r = {0};
            while (p < n) {
                int32_t cp;
                int l = fm__tok_u8dec((const unsigned char *)s + p, n - p, &cp);
                int e;
                if (cp == d->repl) e = (i == 0 && d->prepend) ? 0 : sb_put(&r, " ", 1);
                else e = sb_put(&r, s + p, (size_t)l);
                if (e) { free(r.p); return -1; }
                p += (size_t)l;
            }
            if (tl_add(out, r.p ? r.p : "", r.n)) { free(r.p); return -1; }
            free(r.p);
        }
        return 0;
    }
    return 0;
}

fm_status fm__tok_decode(const fm__tokenizer *t, const int32_t *ids, size_t n, char **out,
                         size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    if (!t || (!ids && n)) return fm__err(FM_ERR_ARG, "tokenizer: NULL argument");
    tlist a = {0}, b = {0};
    fm_status st = FM_OK;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || t->dec_off[id] == UINT32_MAX) {
            st = fm__err(FM_ERR_ARG, "tokenizer: token id %d out of range (vocabulary of %d)", id, t->n_ids);
            goto done;
        }
        if (tl_add(&a, t->arena + t->dec_off[id], t->dec_len[id])) { st = nomem(); goto done; }
    }
    for (int k = 0; k < t->n_dec; k++) {
        b.n = 0;
        b.b.n = 0;
        if (dec_apply(&t->dec[k], &a, &b)) { st = nomem(); goto done; }
        tlist sw = a;
        a = b;
        b = sw;
    }
    /* concatenate (HF joins with " " when there is no decoder) and repair UTF-8 */
    sbuf cat = {0};
    for (size_t i = 0; i < a.n; i++) {
        if (!t->has_decoder && i > 0 && sb_put(&cat, " ", 1)) { free(cat.p); st = nomem(); goto done; }
        if (sb_put(&cat, a.b.p + a.off[i], a.len[i])) { free(cat.p); st = nomem(); goto done; }
    }
    char *res = malloc(cat.n * 3 + 1);
    if (!res) { free(cat.p); st = nomem(); goto done; }
    size_t rl = fm__tok_utf8_lossy(cat.p ? cat.p : "", cat.n, res);
    res[rl] = 0;
    free(cat.p);
    *out = res;
    if (len) *len = rl;
done:
    tl_free(&a);
    tl_free(&b);
    return st;
}

/* ------------------------------------------------------------------ streaming decode */

struct fm__tok_stream {
    const fm__tokenizer *t;
    ibuf ids;          /* window: context ids then not-yet-emitted ids */
    size_t prefix_index;
    char *prefix;      /* decode of the window's context */
    size_t prefix_len;
    char *piece;       /* last returned piece */
};

fm_status fm__tok_stream_new(const fm__tokenizer *t, fm__tok_stream **out) {
    *out = NULL;
    if (!t) return fm__err(FM_ERR_ARG, "tokenizer: NULL argument");
    fm__tok_stream *s = calloc(1, sizeof *s);
    if (!s) return nomem();
    s->t = t;
    s->prefix = fm__strdup("");
    if (!s->prefix) { free(s); return nomem(); }
    *out = s;
    return FM_OK;
}

/* HF DecodeStream: decode the window; when it grows past the context's text and does not
 * end in U+FFFD (an unfinished character), emit the new text and slide the window. */
fm_status fm__tok_stream_push(fm__tok_stream *s, int32_t id, const char **piece, size_t *len) {
    *piece = "";
    *len = 0;
    if (!s) return fm__err(FM_ERR_ARG, "tokenizer: NULL stream");
    if (id < 0 || id >= s->t->n_ids || s->t->dec_off[id] == UINT32_MAX)
        return fm__err(FM_ERR_ARG, "tokenizer: token id %d out of range (vocabulary of %d)", id, s->t->n_ids);
    if (ib_push(&s->ids, id)) return nomem();
    char *str;
    size_t sl;
    fm_status st = fm__tok_decode(s->t, s->ids.p, s->ids.n, &str, &sl);
    if (st) return st;
    if (sl > s->prefix_len && !(sl >= 3 && memcmp(str + sl - 3, "\xEF\xBF\xBD", 3) == 0)) {
        size_t common = 0;
        while (common < s->prefix_len && str[common] == s->prefix[common]) common++;
        if (common < s->prefix_len) /* the context decoded differently: emit what differs */
            while (common > 0 && ((unsigned char)str[common] & 0xC0) == 0x80) common--;
        else
            common = s->prefix_len;
        free(s->piece);
        s->piece = fm__strndup(str + common, sl - common);
        free(str);
        if (!s->piece) return nomem();
        *piece = s->piece;
        *len = sl - common;
        /* slide: keep ids from prefix_index on as the new context */
        size_t new_prefix_index = s->ids.n - s->prefix_index;
        memmove(s->ids.p, s->ids.p + s->prefix_index, new_prefix_index * sizeof(int32_t));
        s->ids.n = new_prefix_index;
        char *np;
        size_t npl;
        st = fm__tok_decode(s->t, s->ids.p, s->ids.n, &np, &npl);
        if (st) return st;
        free(s->prefix);
        s->prefix = np;
        s->prefix_len = npl;
        s->prefix_index = new_prefix_index;
        return FM_OK;
    }
    free(str);
    return FM_OK;
}

fm_status fm__tok_stream_flush(fm__tok_stream *s, const char **piece, size_t *len) {
    *piece = "";
    *len = 0;
    if (!s || s->ids.n == 0) return FM_OK;
    char *str;
    size_t sl;
    fm_status st = fm__tok_decode(s->t, s->ids.p, s->ids.n, &str, &sl);
    if (st) return st;
    size_t common = 0;
    while (common < s->prefix_len && common < sl && str[common] == s->prefix[common]) common++;
    while (common > 0 && common < sl && ((unsigned char)str[common] & 0xC0) == 0x80) common--;
    free(s->piece);
    s->piece = fm__strndup(str + common, sl - common);
    free(str);
    if (!s->piece) return nomem();
    *piece = s->piece;
    *len = sl - common;
    /* everything is out: the window becomes pure context */
    free(s->prefix);
    st = fm__tok_decode(s->t, s->ids.p, s->ids.n, &s->prefix, &s->prefix_len);
    s->prefix_index = s->ids.n;
    return st;
}

void fm__tok_stream_free(fm__tok_stream *s) {
    if (!s) return;
    free(s->ids.p);
    free(s->prefix);
    free(s->piece);
    free(s);
}

/* ------------------------------------------------------------------ accessors */

int32_t fm__tok_vocab_size(const fm__tokenizer *t) { return t ? t->n_ids : 0; }

int32_t fm__tok_token_id(const fm__tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].s, token, n) == 0 && !t->added[i].normalized)
            return t->added[i].id;
    for (int i = 0; i < t->n_added; i++) {
        int32_t id = t->added[i].id;
        if (t->dec_len[id] == n && memcmp(t->arena + t->dec_off[id], token, n) == 0) return id;
    }
    return vocab_get(t, token, n);
}

const char *fm__tok_id_to_piece(const fm__tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids || t->dec_off[id] == UINT32_MAX) return NULL;
    return t->arena + t->dec_off[id];
}

int fm__tok_is_special(const fm__tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return 0;
    return t->special[id];
}

int fm__tok_eos_ids(const fm__tokenizer *t, const int32_t **ids) {
    *ids = t ? t->eos_ids : NULL;
    return t ? t->n_eos : 0;
}
int32_t fm__tok_bos_id(const fm__tokenizer *t) { return t ? t->bos_id : -1; }
const char *fm__tok_bos_token(const fm__tokenizer *t) { return t ? t->bos_token : NULL; }
const char *fm__tok_eos_token(const fm__tokenizer *t) { return t ? t->eos_token : NULL; }
const char *fm__tok_chat_template(const fm__tokenizer *t) { return t ? t->chat_template : NULL; }

void fm__tok_free(fm__tokenizer *t) {
    if (!t) return;
    free(t->dec_off);
    free(t->dec_len);
    free(t->special);
    free(t->voc_off);
    free(t->voc_len);
    free(t->vmap);
    free(t->arena);
    free(t->mslot);
    free(t->cont_prefix);
    free(t->eow_suffix);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].s);
    free(t->added);
    free(t->raw_set.idx);
    free(t->norm_set.idx);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
        if (t->norm[i].re) pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++)
        if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t->eos_ids);
    free(t->bos_token);
    free(t->eos_token);
    free(t->chat_template);
    free(t);
}

/* ------------------------------------------------------------------ loading */

typedef struct { const char *file; fm__tokenizer *t; } ld;

static fm_status bad(const ld *L, const char *field, const char *what) {
    return fm__err(FM_ERR_FORMAT, "%s: field %s: %s", L->file, field, what);
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
/* 1 / 0 for a JSON bool, def when absent or not a bool. */
static int jbool(const cJSON *o, const char *k, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}
static int jint(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

static fm_status compile_re(const ld *L, const char *field, const char *pat, int literal,
                            pcre2_code **out) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL refuses UCP */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (!re) {
        char msg[256], full[400];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(full, sizeof full, "bad regex at offset %zu: %s", (size_t)eo, msg);
        return bad(L, field, full);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is used if JIT fails */
    *out = re;
    return FM_OK;
}

/* Reads {"String": s} or {"Regex": r}: *pat and *literal. */
static fm_status read_pattern(const ld *L, const char *field, const cJSON *o, const char **pat,
                              int *literal) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s;
    if ((s = jstr(p, "String"))) { *pat = s; *literal = 1; return FM_OK; }
    if ((s = jstr(p, "Regex"))) { *pat = s; *literal = 0; return FM_OK; }
    return bad(L, field, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

static void *grow(void *p, int n, size_t sz) {
    return realloc(p, (size_t)(n + 1) * sz);
}

static fm_status load_normalizer(const ld *L, const cJSON *o, int depth) {
    fm__tokenizer *t = L->t;
    if (cJSON_IsNull(o) || !o) return FM_OK;
    const char *type = jstr(o, "type");
    if (!cJSON_IsObject(o) || !type) return bad(L, "normalizer.type", "missing");
    if (depth > 8) return bad(L, "normalizer", "nested too deeply");
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "normalizers"), *e;
        if (!cJSON_IsArray(a)) return bad(L, "normalizer.normalizers", "expected an array");
        cJSON_ArrayForEach(e, a) {
            fm_status st = load_normalizer(L, e, depth + 1);
            if (st) return st;
        }
        return FM_OK;
    }
    norm_step s;
    memset(&s, 0, sizeof s);
    if (!strcmp(type, "NFC")) s.kind = N_NFC;
    else if (!strcmp(type, "NFD")) s.kind = N_NFD;
    else if (!strcmp(type, "NFKC")) s.kind = N_NFKC;
    else if (!strcmp(type, "NFKD")) s.kind = N_NFKD;
    else if (!strcmp(type, "Lowercase")) s.kind = N_LOWER;
    else if (!strcmp(type, "Strip")) {
        s.kind = N_STRIP;
        s.left = jbool(o, "strip_left", 1);
        s.right = jbool(o, "strip_right", 1);
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p) return bad(L, "normalizer.prepend", "expected a string");
        s.kind = N_PREPEND;
        s.a = fm__strdup(p);
        s.alen = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *pat, *content = jstr(o, "content");
        int lit;
        fm_status st = read_pattern(L, "normalizer.pattern", o, &pat, &lit);
        if (st) return st;
        if (!content) return bad(L, "normalizer.content", "expected a string");
        s.kind = lit ? N_REPLACE : N_REPLACE_RE;
        if (!lit && (st = compile_re(L, "normalizer.pattern.Regex", pat, 0, &s.re))) return st;
        s.a = fm__strdup(pat);
        s.alen = strlen(pat);
        s.b = fm__strdup(content);
        s.blen = strlen(content);
    } else {
        return fm__err(FM_ERR_UNSUPPORTED, "%s: normalizer type %s is not supported", L->file, type);
    }
    norm_step *nn = grow(t->norm, t->n_norm, sizeof *nn);
    if (!nn) { free(s.a); free(s.b); return nomem(); }
    t->norm = nn;
    t->norm[t->n_norm++] = s;
    return FM_OK;
}

static int parse_scheme(const cJSON *o) {
    const char *ps = jstr(o, "prepend_scheme");
    if (ps) return !strcmp(ps, "first") ? PS_FIRST : !strcmp(ps, "never") ? PS_NEVER : PS_ALWAYS;
    return jbool(o, "add_prefix_space", 1) ? PS_ALWAYS : PS_NEVER;
}

static fm_status load_pretok(const ld *L, const cJSON *o, int depth) {
    fm__tokenizer *t = L->t;
    if (cJSON_IsNull(o) || !o) return FM_OK;
    const char *type = jstr(o, "type");
    if (!cJSON_IsObject(o) || !type) return bad(L, "pre_tokenizer.type", "missing");
    if (depth > 8) return bad(L, "pre_tokenizer", "nested too deeply");
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers"), *e;
        if (!cJSON_IsArray(a)) return bad(L, "pre_tokenizer.pretokenizers", "expected an array");
        cJSON_ArrayForEach(e, a) {
            fm_status st = load_pretok(L, e, depth + 1);
            if (st) return st;
        }
        return FM_OK;
    }
    pre_step s;
    memset(&s, 0, sizeof s);
    fm_status st = FM_OK;
    if (!strcmp(type, "Split")) {
        const char *pat, *beh = jstr(o, "behavior");
        int lit;
        if ((st = read_pattern(L, "pre_tokenizer.pattern", o, &pat, &lit))) return st;
        s.kind = P_SPLIT;
        if (!beh) return bad(L, "pre_tokenizer.behavior", "expected a string");
        if (!strcmp(beh, "Removed")) s.behavior = B_REMOVED;
        else if (!strcmp(beh, "Isolated")) s.behavior = B_ISOLATED;
        else if (!strcmp(beh, "MergedWithPrevious")) s.behavior = B_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) s.behavior = B_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) s.behavior = B_CONTIGUOUS;
        else return bad(L, "pre_tokenizer.behavior", "unknown behavior");
        s.invert = jbool(o, "invert", 0);
        if ((st = compile_re(L, "pre_tokenizer.pattern", pat, lit, &s.re))) return st;
    } else if (!strcmp(type, "ByteLevel")) {
        s.kind = P_BYTELEVEL;
        s.add_prefix_space = jbool(o, "add_prefix_space", 1);
        if (jbool(o, "use_regex", 1) && (st = compile_re(L, "pre_tokenizer(ByteLevel)", GPT2_RE, 0, &s.re)))
            return st;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement");
        if (!r || strlen(r) == 0 || strlen(r) > 4) return bad(L, "pre_tokenizer.replacement", "expected one character");
        s.kind = P_METASPACE;
        memcpy(s.repl, r, strlen(r));
        s.repl_len = (int)strlen(r);
        s.prepend_scheme = parse_scheme(o);
        s.split = jbool(o, "split", 1);
    } else if (!strcmp(type, "Digits")) {
        s.kind = P_DIGITS;
        s.behavior = B_ISOLATED;
        int ind = jbool(o, "individual_digits", 0);
        if ((st = compile_re(L, "pre_tokenizer(Digits)", ind ? "\\p{N}" : "\\p{N}+", 0, &s.re))) return st;
    } else {
        return fm__err(FM_ERR_UNSUPPORTED, "%s: pre_tokenizer type %s is not supported", L->file, type);
    }
    pre_step *np = grow(t->pre, t->n_pre, sizeof *np);
    if (!np) { if (s.re) pcre2_code_free(s.re); return nomem(); }
    t->pre = np;
    t->pre[t->n_pre++] = s;
    return FM_OK;
}

static int32_t first_cp(const char *s) {
    int32_t cp = 0;
    if (s && *s) fm__tok_u8dec((const unsigned char *)s, strlen(s), &cp);
    return cp;
}

static fm_status load_decoder(const ld *L, const cJSON *o, int depth) {
    fm__tokenizer *t = L->t;
    if (cJSON_IsNull(o) || !o) return FM_OK;
    const char *type = jstr(o, "type");
    if (!cJSON_IsObject(o) || !type) return bad(L, "decoder.type", "missing");
    if (depth > 8) return bad(L, "decoder", "nested too deeply");
    t->has_decoder = 1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "decoders"), *e;
        if (!cJSON_IsArray(a)) return bad(L, "decoder.decoders", "expected an array");
        cJSON_ArrayForEach(e, a) {
            fm_status st = load_decoder(L, e, depth + 1);
            if (st) return st;
        }
        return FM_OK;
    }
    dec_step s;
    memset(&s, 0, sizeof s);
    if (!strcmp(type, "ByteLevel")) s.kind = D_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) s.kind = D_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) s.kind = D_FUSE;
    else if (!strcmp(type, "Replace")) {
        const char *pat, *content = jstr(o, "content");
        int lit;
        fm_status st = read_pattern(L, "decoder.pattern", o, &pat, &lit);
        if (st) return st;
        if (!lit) return fm__err(FM_ERR_UNSUPPORTED, "%s: decoder Replace with a Regex pattern is not supported", L->file);
        if (!content) return bad(L, "decoder.content", "expected a string");
        s.kind = D_REPLACE;
        s.a = fm__strdup(pat);
        s.alen = strlen(pat);
        s.b = fm__strdup(content);
        s.blen = strlen(content);
    } else if (!strcmp(type, "Strip")) {
        const char *content = jstr(o, "content");
        int64_t a = 0, b = 0;
        if (!content) return bad(L, "decoder.content", "expected a string");
        if (!jint(cJSON_GetObjectItemCaseSensitive(o, "start"), &a) || a < 0 || a > 1 << 20 ||
            !jint(cJSON_GetObjectItemCaseSensitive(o, "stop"), &b) || b < 0 || b > 1 << 20)
            return bad(L, "decoder.start/stop", "expected non-negative integers");
        s.kind = D_STRIP;
        s.content = first_cp(content);
        s.start = (int)a;
        s.stop = (int)b;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement");
        if (!r || !*r) return bad(L, "decoder.replacement", "expected one character");
        s.kind = D_METASPACE;
        s.repl = first_cp(r);
        s.prepend = parse_scheme(o) != PS_NEVER;
    } else {
        return fm__err(FM_ERR_UNSUPPORTED, "%s: decoder type %s is not supported", L->file, type);
    }
    dec_step *nd = grow(t->dec, t->n_dec, sizeof *nd);
    if (!nd) { free(s.a); free(s.b); return nomem(); }
    t->dec = nd;
    t->dec[t->n_dec++] = s;
    return FM_OK;
}

static int push_id(int32_t **arr, int *n, int32_t id) {
    int32_t *na = realloc(*arr, (size_t)(*n + 1) * sizeof *na);
    if (!na) return -1;
    *arr = na;
    na[(*n)++] = id;
    return 0;
}

/* Prefix/suffix special ids from the post_processor (used when tokenizer_config.json does
 * not say add_bos_token / add_eos_token). */
static fm_status load_post(const ld *L, const cJSON *o, int depth) {
    fm__tokenizer *t = L->t;
    if (!o || cJSON_IsNull(o)) return FM_OK;
    const char *type = jstr(o, "type");
    if (!type) return bad(L, "post_processor.type", "missing");
    if (depth > 8) return bad(L, "post_processor", "nested too deeply");
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "processors"), *e;
        cJSON_ArrayForEach(e, a) {
            fm_status st = load_post(L, e, depth + 1);
            if (st) return st;
        }
        return FM_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *e;
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        if (!cJSON_IsArray(single)) return bad(L, "post_processor.single", "expected an array");
        int after = 0;
        cJSON_ArrayForEach(e, single) {
            if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) { after = 1; continue; }
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            const char *name = jstr(st, "id");
            if (!name) return bad(L, "post_processor.single", "entry is neither Sequence nor SpecialToken");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sp, name), "ids"), *x;
            if (!cJSON_IsArray(ids)) return bad(L, "post_processor.special_tokens", "missing ids of a special token");
            cJSON_ArrayForEach(x, ids) {
                int64_t v;
                if (!jint(x, &v) || v < 0 || v >= t->n_ids) return bad(L, "post_processor.special_tokens", "bad id");
                if (push_id(after ? &t->suffix_ids : &t->prefix_ids, after ? &t->n_suffix : &t->n_prefix, (int32_t)v))
                    return nomem();
            }
        }
        return FM_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
        int64_t a, b;
        if (!jint(cJSON_GetArrayItem(cls, 1), &a) || !jint(cJSON_GetArrayItem(sep, 1), &b) ||
            a < 0 || b < 0 || a >= t->n_ids || b >= t->n_ids)
            return bad(L, "post_processor.cls/sep", "expected [token, id]");
        if (push_id(&t->prefix_ids, &t->n_prefix, (int32_t)a) || push_id(&t->suffix_ids, &t->n_suffix, (int32_t)b))
            return nomem();
    }
    return FM_OK; /* ByteLevel and others add no tokens */
}

static int cmp_added_len(const void *x, const void *y, void *ctx) {
    const fm__tokenizer *t = ctx;
    const added_tok *a = &t->added[*(const int32_t *)x], *b = &t->added[*(const int32_t *)y];
    unsigned char fa = a->len ? (unsigned char)a->s[0] : 0, fb = b->len ? (unsigned char)b->s[0] : 0;
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return 0;
}

static fm_status build_set(fm__tokenizer *t, added_set *set, int normalized) {
    set->idx = malloc((size_t)(t->n_added + 1) * sizeof *set->idx);
    if (!set->idx) return nomem();
    set->n = 0;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == normalized && t->added[i].len > 0) set->idx[set->n++] = i;
    qsort_r(set->idx, (size_t)set->n, sizeof *set->idx, cmp_added_len, t);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < set->n && (unsigned char)t->added[set->idx[k]].s[0] < b) k++;
        set->start[b] = k;
    }
    set->start[256] = set->n;
    return FM_OK;
}

static char *token_content(const cJSON *v) {
    if (cJSON_IsString(v)) return fm__strdup(v->valuestring);
    const char *c = jstr(v, "content");
    return c ? fm__strdup(c) : NULL;
}

static int add_eos(fm__tokenizer *t, int64_t id) {
    if (id < 0 || id >= t->n_ids) return 0;
    for (int i = 0; i < t->n_eos; i++)
        if (t->eos_ids[i] == id) return 0;
    return push_id(&t->eos_ids, &t->n_eos, (int32_t)id);
}

static int add_eos_json(fm__tokenizer *t, const cJSON *v) {
    int64_t id;
    const cJSON *e;
    if (jint(v, &id)) return add_eos(t, id);
    if (cJSON_IsArray(v))
        cJSON_ArrayForEach(e, v) if (jint(e, &id) && add_eos(t, id)) return -1;
    return 0;
}

/* Reads an optional JSON file: *out NULL when the file does not exist. */
static fm_status read_json_opt(const char *dir, const char *name, cJSON **out) {
    *out = NULL;
    char *p = fm__path_join(dir, name);
    if (!p) return nomem();
    if (!fm__file_exists(p)) { free(p); return FM_OK; }
    char *txt;
    size_t n;
    fm_status st = fm__read_file(p, &txt, &n);
    if (st) { free(p); return st; }
    *out = cJSON_ParseWithLength(txt, n);
    free(txt);
    if (!*out) st = fm__err(FM_ERR_FORMAT, "%s: not valid JSON", p);
    free(p);
    return st;
}

static fm_status load_model(const ld *L, const cJSON *root) {
    fm__tokenizer *t = L->t;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return bad(L, "model", "expected an object");
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return fm__err(FM_ERR_UNSUPPORTED, "%s: model type %s is not supported (only BPE)", L->file, type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type && !merges) return fm__err(FM_ERR_UNSUPPORTED, "%s: model without type or merges is not supported", L->file);
    if (!cJSON_IsObject(vocab)) return bad(L, "model.vocab", "expected an object of token -> id");
    if (merges && !cJSON_IsArray(merges)) return bad(L, "model.merges", "expected an array");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *e;
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) return bad(L, "added_tokens", "expected an array");

    /* id range */
    int64_t max_id = -1, nv = 0;
    cJSON_ArrayForEach(e, vocab) {
        int64_t id;
        if (!jint(e, &id) || id < 0 || id > 50000000) return bad(L, "model.vocab", "token id is not an integer in range");
        if (id > max_id) max_id = id;
        nv++;
    }
    if (cJSON_IsArray(added)) {
        cJSON_ArrayForEach(e, added) {
            int64_t id;
            if (!jint(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) || id < 0 || id > 50000000)
                return bad(L, "added_tokens[].id", "expected an integer in range");
            if (!jstr(e, "content")) return bad(L, "added_tokens[].content", "expected a string");
            if (id > max_id) max_id = id;
        }
    }
    t->n_ids = (int32_t)(max_id + 1);
    size_t N = (size_t)t->n_ids ? (size_t)t->n_ids : 1;
    t->dec_off = malloc(N * sizeof(uint32_t));
    t->dec_len = calloc(N, sizeof(uint32_t));
    t->voc_off = malloc(N * sizeof(uint32_t));
    t->voc_len = calloc(N, sizeof(uint32_t));
    t->special = calloc(N, 1);
    uint32_t vcap = 16;
    while (vcap < 2 * (uint64_t)nv + 2) vcap *= 2;
    t->vmap = malloc(vcap * sizeof *t->vmap);
    t->vmask = vcap - 1;
    if (!t->dec_off || !t->dec_len || !t->voc_off || !t->voc_len || !t->vmap || !t->special) return nomem();
    memset(t->dec_off, 0xFF, N * sizeof(uint32_t));
    memset(t->voc_off, 0xFF, N * sizeof(uint32_t));
    memset(t->vmap, 0xFF, vcap * sizeof *t->vmap);
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t n = strlen(e->string);
        uint32_t off = arena_add(t, e->string, n);
        if (off == UINT32_MAX) return nomem();
        int32_t old = vocab_get(t, e->string, n);
        t->voc_off[id] = t->dec_off[id] = off;
        t->voc_len[id] = t->dec_len[id] = (uint32_t)n;
        if (old >= 0) continue; /* duplicate key: keep the first slot */
        uint64_t hh = fm__tok_hash(e->string, n);
        uint32_t h = (uint32_t)hh & t->vmask;
        while (t->vmap[h].id >= 0) h = (h + 1) & t->vmask;
        t->vmap[h] = (struct vslot){off, (uint32_t)n, (uint32_t)(hh >> 32), id};
    }
    for (int32_t cp = 0; cp < 1024; cp++) {
        char u[4];
        int l = fm__tok_u8enc(cp, u);
        t->cp_id[cp] = vocab_get(t, u, (size_t)l);
    }

    /* SentencePiece-style vocabularies: "▁" only ever starts a token or follows "▁" */
    t->sp_split = vocab_get(t, "\xE2\x96\x81", 3) >= 0;
    for (int32_t id = 0; id < t->n_ids && t->sp_split; id++) {
        if (t->voc_off[id] == UINT32_MAX) continue;
        const char *s = t->arena + t->voc_off[id];
        size_t n = t->voc_len[id];
        for (size_t i = 1; i + 3 <= n; i++)
            if (memcmp(s + i, "\xE2\x96\x81", 3) == 0 && (i < 3 || memcmp(s + i - 3, "\xE2\x96\x81", 3) != 0)) {
                t->sp_split = 0;
                break;
            }
    }

    /* BPE options */
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    t->unk_id = -1;
    if (cJSON_IsString(unk)) {
        t->unk_id = vocab_get(t, unk->valuestring, strlen(unk->valuestring));
        if (t->unk_id < 0) return bad(L, "model.unk_token", "not in the vocabulary");
    }
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *cp = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
    if (cp && *cp && !(t->cont_prefix = fm__strdup(cp))) return nomem();
    if (ew && *ew && !(t->eow_suffix = fm__strdup(ew))) return nomem();
    for (int b = 0; b < 256; b++) {
        char nm[8];
        snprintf(nm, sizeof nm, "<0x%02X>", b);
        t->byte_tok[b] = vocab_get(t, nm, 6);
    }

    /* merges */
    int nm = merges ? cJSON_GetArraySize(merges) : 0;
    uint32_t mcap = 16;
    while (mcap < 2 * (uint64_t)nm + 2) mcap *= 2;
    t->mslot = calloc(mcap, sizeof *t->mslot);
    t->mmask = mcap - 1;
    if (!t->mslot) return nomem();
    size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    sbuf tmp = {0};
    int rank = 0;
    fm_status st = FM_OK;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp) { st = bad(L, "model.merges", "a merge string is not \"a b\""); break; }
            a = e->valuestring;
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            al = strlen(a);
            bl = strlen(b);
        } else { st = bad(L, "model.merges", "a merge is neither \"a b\" nor [a, b]"); break; }
        int32_t ia = vocab_get(t, a, al), ib = vocab_get(t, b, bl);
        tmp.n = 0;
        if (bl < plen) { st = bad(L, "model.merges", "merge token shorter than continuing_subword_prefix"); break; }
        if (sb_put(&tmp, a, al) || sb_put(&tmp, b + plen, bl - plen)) { st = nomem(); break; }
        int32_t inew = vocab_get(t, tmp.p, tmp.n);
        if (ia < 0 || ib < 0 || inew < 0) {
            char msg[96];
            snprintf(msg, sizeof msg, "merge %d uses a token that is not in the vocabulary", rank);
            st = bad(L, "model.merges", msg);
            break;
        }
        merge_put(t, ia, ib, rank, inew);
        rank++;
    }
    free(tmp.p);
    if (st) return st;

    /* added tokens */
    int na = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    t->added = calloc((size_t)na + 1, sizeof *t->added);
    if (!t->added) return nomem();
    cJSON_ArrayForEach(e, added) {
        if (!cJSON_IsArray(added)) break;
        added_tok *a = &t->added[t->n_added];
        const char *content = jstr(e, "content");
        a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        a->len = strlen(content);
        a->s = fm__strdup(content);
        if (!a->s) return nomem();
        t->n_added++;
        a->lstrip = jbool(e, "lstrip", 0);
        a->rstrip = jbool(e, "rstrip", 0);
        a->single_word = jbool(e, "single_word", 0);
        a->normalized = jbool(e, "normalized", !jbool(e, "special", 0));
        a->special = jbool(e, "special", 0);
        uint32_t off = arena_add(t, content, a->len);
        if (off == UINT32_MAX) return nomem();
        t->dec_off[a->id] = off;
        t->dec_len[a->id] = (uint32_t)a->len;
        t->special[a->id] = (uint8_t)a->special;
    }
    return FM_OK;
}

/* Parses tokenizer.json text (name: for messages) into t. */
static fm_status parse_tokenizer_json(fm__tokenizer *t, const char *name, const char *txt, size_t n) {
    ld L = {name, t};
    fm_status st = FM_OK;
    cJSON *root = cJSON_ParseWithLength(txt, n);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        return fm__err(FM_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", name,
                       ep && ep >= txt && ep <= txt + n ? (long)(ep - txt) : -1L);
    }
    if (!cJSON_IsObject(root)) { st = bad(&L, "(root)", "expected an object"); goto out; }
    if ((st = load_model(&L, root))) goto out;
    if ((st = load_normalizer(&L, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0))) goto out;
    if ((st = load_pretok(&L, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0))) goto out;
    if ((st = load_decoder(&L, cJSON_GetObjectItemCaseSensitive(root, "decoder"), 0))) goto out;
    if ((st = load_post(&L, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0))) goto out;
    /* normalized added tokens are matched in normalized text: normalize their content */
    for (int i = 0; i < t->n_added && t->n_norm > 0; i++) {
        added_tok *a = &t->added[i];
        if (!a->normalized) continue;
        enc_ctx c;
        memset(&c, 0, sizeof c);
        c.t = t;
        c.md = pcre2_match_data_create(4, NULL);
        const char *r;
        size_t rn;
        st = c.md ? normalize(&c, a->s, a->len, &r, &rn) : nomem();
        if (!st) {
            char *ns = fm__strndup(r, rn);
            if (!ns) st = nomem();
            else { free(a->s); a->s = ns; a->len = rn; }
        }
        ctx_free(&c);
        if (st) goto out;
    }
    if ((st = build_set(t, &t->raw_set, 0)) || (st = build_set(t, &t->norm_set, 1))) goto out;
out:
    cJSON_Delete(root);
    return st;
}

static fm_status load_tokenizer_json(fm__tokenizer *t, const char *dir) {
    char *path = fm__path_join(dir, "tokenizer.json");
    if (!path) return nomem();
    char *txt = NULL;
    size_t n;
    fm_status st = fm__read_file(path, &txt, &n);
    if (!st) st = parse_tokenizer_json(t, path, txt, n);
    free(txt);
    free(path);
    return st;
}

fm_status fm__tok_load_json(const char *json, size_t len, fm__tokenizer **out) {
    *out = NULL;
    if (!json) return fm__err(FM_ERR_ARG, "tokenizer: NULL json");
    byte_tables_init();
    fm__tokenizer *t = calloc(1, sizeof *t);
    if (!t) return nomem();
    t->bos_id = -1;
    fm_status st = parse_tokenizer_json(t, "tokenizer.json", json, len);
    if (st) { fm__tok_free(t); return st; }
    *out = t;
    return FM_OK;
}

fm_status fm__tok_load(const char *dir, fm__tokenizer **out) {
    *out = NULL;
    if (!dir) return fm__err(FM_ERR_ARG, "tokenizer: NULL directory");
    byte_tables_init();
    fm__tokenizer *t = calloc(1, sizeof *t);
    if (!t) return nomem();
    t->bos_id = -1;
    fm_status st = load_tokenizer_json(t, dir);
    cJSON *cfg = NULL, *gen = NULL, *mcfg = NULL;
    if (st) goto fail;
    if ((st = read_json_opt(dir, "tokenizer_config.json", &cfg))) goto fail;
    if ((st = read_json_opt(dir, "generation_config.json", &gen))) goto fail;
    if ((st = read_json_opt(dir, "config.json", &mcfg))) goto fail;
    if (cfg) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token");
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, "eos_token");
        if (b && !cJSON_IsNull(b)) t->bos_token = token_content(b);
        if (e && !cJSON_IsNull(e)) t->eos_token = token_content(e);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *x;
        if (cJSON_IsString(ct)) t->chat_template = fm__strdup(ct->valuestring);
        else if (cJSON_IsArray(ct)) {
            cJSON_ArrayForEach(x, ct) {
                const char *name = jstr(x, "name"), *tpl = jstr(x, "template");
                if (name && tpl && !strcmp(name, "default")) t->chat_template = fm__strdup(tpl);
            }
        }
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
        if (cJSON_IsBool(ab) || cJSON_IsBool(ae)) {
            t->n_prefix = t->n_suffix = 0;
            int32_t bid = t->bos_token ? fm__tok_token_id(t, t->bos_token) : -1;
            int32_t eid = t->eos_token ? fm__tok_token_id(t, t->eos_token) : -1;
            if (cJSON_IsTrue(ab) && bid >= 0 && push_id(&t->prefix_ids, &t->n_prefix, bid)) { st = nomem(); goto fail; }
            if (cJSON_IsTrue(ae) && eid >= 0 && push_id(&t->suffix_ids, &t->n_suffix, eid)) { st = nomem(); goto fail; }
        }
    }
    /* chat_template.jinja, when present, is the template transformers uses */
    char *jp = fm__path_join(dir, "chat_template.jinja");
    if (!jp) { st = nomem(); goto fail; }
    if (fm__file_exists(jp)) {
        char *txt;
        size_t n;
        st = fm__read_file(jp, &txt, &n);
        if (st) { free(jp); goto fail; }
        free(t->chat_template);
        t->chat_template = txt;
    }
    free(jp);
    if (t->bos_token) t->bos_id = fm__tok_token_id(t, t->bos_token);
    if (gen && add_eos_json(t, cJSON_GetObjectItemCaseSensitive(gen, "eos_token_id"))) { st = nomem(); goto fail; }
    if (mcfg) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(mcfg, "eos_token_id");
        if (!v) v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(mcfg, "text_config"), "eos_token_id");
        if (add_eos_json(t, v)) { st = nomem(); goto fail; }
        if (t->bos_id < 0) {
            int64_t b;
            if (jint(cJSON_GetObjectItemCaseSensitive(mcfg, "bos_token_id"), &b) && b >= 0 && b < t->n_ids) t->bos_id = (int32_t)b;
        }
    }
    if (t->eos_token && add_eos(t, fm__tok_token_id(t, t->eos_token))) { st = nomem(); goto fail; }
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    cJSON_Delete(mcfg);
    *out = t;
    return FM_OK;
fail:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    cJSON_Delete(mcfg);
    fm__tok_free(t);
    return st;
}
