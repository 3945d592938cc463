/* session.c: sessions: the token context and its forward-pass state, prefix reuse across
 * turns (with snapshot fallback for recurrent state), and generation (sampling, EOS, stop
 * strings, max tokens, streaming with UTF-8-safe pieces, cancellation, statistics).
 *
 * Invariants: toks[0..n_toks) is the session's context; the state has processed
 * toks[0..pos) with pos == n_toks, or pos == n_toks - 1 right after a generation (the last
 * sampled token is processed lazily by the next call, which never needs its logits if the
 * next prompt diverges there). logits, when logits_ok, follow toks[pos - 1].
 * Context policy: a prompt longer than n_ctx fails with FM_ERR_CONTEXT_FULL (nothing is
 * dropped silently); generation that fills the context ends with FM_FINISH_LENGTH.
 * Cancellation: prefill runs in chunks of FM__PREFILL_CHUNK tokens (a multiple of the
 * forward pass's own batch, so the forward pass sees the same batches and the logits are
 * those of one call); before each chunk and each generated token the progress callback's
 * answer and the cross-thread cancel flag are checked. A chunk is all or nothing
 * (fm__forward rolls a failed one back), so a cancelled prefill leaves the state at a chunk
 * boundary and toks cut to it. */
#include "session.h"
#include "model.h"
#include "tokenizer.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FM__MAX_SNAPS 32
#define FM__PREFILL_CHUNK 256 /* tokens per prefill chunk: a cancellation point */

struct fm_session {
    fm_model *m;
    fm__state *st;
    const fm__tokenizer *tok;  /* NULL: token-level generation only */
    int32_t n_ctx, n_vocab;
    int32_t *toks;             /* [n_ctx] */
    size_t n_toks;
    float *logits;             /* [n_vocab] */
    int logits_ok;
    int32_t snaps[FM__MAX_SNAPS]; /* snapshot positions, ascending */
    int n_snaps;
    int emulate_recurrent;     /* tests: truncate only to 0 or a snapshot */
    int32_t *eos;
    int n_eos;
    fm__sampler smp;
    fm__stopper stop;          /* its buffer is kept across calls */
    size_t gen_start, n_gen;   /* the last generation's ids: toks[gen_start..+n_gen) */
    fm_stats stats;
    int finish;
    int call_open;             /* a prefill began a call that generate continues */
    double prefill_s;
    int64_t prefilled;         /* tokens prefilled by the current call */
    int32_t chunk;             /* tokens per prefill chunk (FM__PREFILL_CHUNK; tests vary it) */
    fm_progress_fn progress;   /* prefill progress / cancel callback, or NULL */
    void *progress_user;
    atomic_int cancel;         /* fm_session_cancel, from any thread */
    char *text;                /* generated text of the last call */
    size_t text_len, text_cap;
};

/* ---- helpers ---------------------------------------------------------------------- */

static void begin_call(fm_session *s) {
    memset(&s->stats, 0, sizeof s->stats);
    s->prefill_s = 0;
    s->prefilled = 0;
    s->call_open = 0;
    atomic_store(&s->cancel, 0);
}

static int cancel_requested(fm_session *s) { return atomic_load(&s->cancel); }

static void fill_memory(const fm_session *s, fm_stats *o) {
    fm__ecache *c = fm__model_cache(s->m);
    if (c) {
        fm__ec_stats es;
        memset(&es, 0, sizeof es);
        fm__ec_get_stats(c, &es);
        o->cache_hits = es.hits;
        o->cache_misses = es.misses;
        o->hit_rate = es.hits + es.misses ? (double)es.hits / (double)(es.hits + es.misses) : 0;
        o->experts_skipped = es.skipped;
        o->bytes_read = es.bytes_read;
        o->io_wait_ms = es.io_wait_s * 1e3;
        o->cache_bytes = (int64_t)fm__ec_bytes(c);
    }
    o->rss_bytes = fm__rss_bytes(0);
    o->kv_bytes = s->st ? (int64_t)fm__state_bytes(s->st) : 0;
}

static void add_snap(fm_session *s, int32_t pos) {
    if (s->n_snaps && s->snaps[s->n_snaps - 1] >= pos) {
        /* positions only grow between rewinds; keep the list strictly ascending */
        while (s->n_snaps && s->snaps[s->n_snaps - 1] >= pos) s->n_snaps--;
    }
    if (s->n_snaps == FM__MAX_SNAPS) {
        memmove(s->snaps, s->snaps + 1, (FM__MAX_SNAPS - 1) * sizeof s->snaps[0]);
        s->n_snaps--;
    }
    s->snaps[s->n_snaps++] = pos;
}

static void snapshot(fm_session *s) {
    if (fm__state_snapshot(s->st) == FM_OK) add_snap(s, fm__state_pos(s->st));
    else fm__clear_err();
}

/* fm__state_truncate, or its recurrent-state contract when emulated for tests. */
static fm_status truncate_state(fm_session *s, int32_t n) {
    if (s->emulate_recurrent && n != 0) {
        int found = 0;
        for (int i = 0; i < s->n_snaps; i++) found |= s->snaps[i] == n;
        if (!found) return fm__err(FM_ERR_UNSUPPORTED, "no snapshot at %d (emulated)", n);
    }
    return fm__state_truncate(s->st, n);
}

void fm__session_emulate_recurrent(fm_session *s, int on) { s->emulate_recurrent = on; }

/* Brings the state back to at most target positions. Attention-only state truncates
 * exactly; recurrent state falls back to the nearest snapshot at or below target, then to
 * an empty state. Returns the resulting position. */
static fm_status rewind_to(fm_session *s, int32_t target, int32_t *pos_out) {
    int32_t pos = fm__state_pos(s->st);
    if (target >= pos) {
        *pos_out = pos;
        return FM_OK;
    }
    s->logits_ok = 0;
    int32_t got = -1;
    if (truncate_state(s, target) == FM_OK) got = target;
    else {
        fm__clear_err();
        for (int i = s->n_snaps - 1; i >= 0 && got < 0; i--) {
            if (s->snaps[i] > target) continue;
            if (truncate_state(s, s->snaps[i]) == FM_OK) got = s->snaps[i];
            else fm__clear_err();
        }
        if (got < 0) {
            if (truncate_state(s, 0) == FM_OK) got = 0;
            else {
                fm__clear_err();
                fm__state *ns = NULL;
                fm_status st = fm__state_new(s->m, s->n_ctx, &ns);
                if (st != FM_OK) return fm__err_ctx(st, "session: resetting the state");
                fm__state_free(s->st);
                s->st = ns;
                got = 0;
            }
        }
    }
    while (s->n_snaps && s->snaps[s->n_snaps - 1] > got) s->n_snaps--;
    *pos_out = got;
    return FM_OK;
}

/* Processes toks[pos..n_toks) so that logits follow the last held token, in chunks of
 * s->chunk tokens; only the last chunk computes logits. Before each chunk (and once at the
 * end) the progress callback runs; it or fm_session_cancel stops the prefill before the
 * next chunk with FM_ERR_CANCELLED. On any failure toks is cut to what the state holds. */
static fm_status sync_state(fm_session *s) {
    int32_t pos = fm__state_pos(s->st);
    if ((size_t)pos == s->n_toks && s->logits_ok) return FM_OK;
    if (s->n_toks == 0) return FM_OK;
    if ((size_t)pos == s->n_toks) { /* processed but logits lost: redo the last token */
        fm_status st = rewind_to(s, pos - 1, &pos);
        if (st != FM_OK) return st;
    }
    int64_t total = (int64_t)s->n_toks - pos, done = 0;
    int32_t chunk = s->chunk > 0 ? s->chunk : FM__PREFILL_CHUNK;
    fm_status st = FM_OK;
    double t0 = fm__now();
    for (;;) {
        if (s->progress && s->progress(done, total, s->progress_user)) st = FM_ERR_CANCELLED;
        else if (done < total && cancel_requested(s)) st = FM_ERR_CANCELLED;
        if (st != FM_OK || done == total) break;
        int32_t T = (int32_t)FM_MIN((int64_t)chunk, total - done);
        int last = done + T == total;
        st = fm__forward(s->m, s->st, s->toks + pos + done, T, last ? s->logits : NULL, 0);
        if (st != FM_OK) break;
        done += T;
        s->logits_ok = last;
    }
    s->prefill_s += fm__now() - t0;
    s->prefilled += done;
    if (st != FM_OK) {
        /* keep the invariant: hold only what the state has processed */
        s->n_toks = (size_t)fm__state_pos(s->st);
        if (st == FM_ERR_CANCELLED) /* logits_ok is right: set by the last chunk run, if any */
            return fm__err(st, "prefill cancelled after %lld of %lld tokens", (long long)done,
                           (long long)total);
        s->logits_ok = 0;
        return st;
    }
    return FM_OK;
}

/* Records the prefill rate of the tokens processed since begin_call. */
static void note_prefill(fm_session *s) {
    int64_t n = s->prefilled;
    s->stats.prefill_tok_s = s->prefill_s > 0 && n > 0 ? (double)n / s->prefill_s : 0;
}

/* Ends a prefill that failed with st: a cancelled one keeps its chunks (snapshotted for
 * recurrent state, as at a turn boundary). Returns st. */
static fm_status prefill_failed(fm_session *s, fm_status st) {
    note_prefill(s);
    if (st == FM_ERR_CANCELLED) {
        s->finish = FM_FINISH_CANCEL;
        snapshot(s);
    }
    return st;
}

static fm_status check_ids(const fm_session *s, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return fm__err(FM_ERR_ARG, "token %zu: id %d outside the vocabulary [0, %d)", i,
                           ids[i], s->n_vocab);
    return FM_OK;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

fm_status fm_session_new(fm_model *m, fm_session **out) {
    if (!out) return fm__err(FM_ERR_ARG, "fm_session_new: out is NULL");
    *out = NULL;
    if (!m) return fm__err(FM_ERR_ARG, "fm_session_new: model is NULL");
    fm_model_info info;
    fm_status st = fm_model_get_info(m, &info);
    if (st != FM_OK) return st;
    fm_session *s = fm__calloc(1, sizeof *s);
    if (!s) return fm__err(FM_ERR_NOMEM, "session");
    s->m = m;
    s->tok = fm__model_tokenizer(m);
    s->n_vocab = fm__model_vocab(m);
    s->n_ctx = info.n_ctx > 0 ? info.n_ctx : 4096;
    s->chunk = FM__PREFILL_CHUNK;
    atomic_init(&s->cancel, 0);
    st = fm__state_new(m, s->n_ctx, &s->st);
    if (st != FM_OK) goto fail;
    st = fm__sampler_init(&s->smp, s->n_vocab);
    if (st != FM_OK) goto fail;
    s->toks = fm__malloc_array((size_t)s->n_ctx, sizeof *s->toks);
    s->logits = fm__malloc_array((size_t)s->n_vocab, sizeof *s->logits);
    /* EOS ids: the model config's and the tokenizer's (generation_config), merged */
    const int32_t *te = NULL;
    int nte = s->tok ? fm__tok_eos_ids(s->tok, &te) : 0;
    s->eos = fm__malloc_array((size_t)(info.eos_count + nte + 1), sizeof *s->eos);
    if (!s->toks || !s->logits || !s->eos) {
        st = fm__err(FM_ERR_NOMEM, "session buffers (n_ctx %d, vocab %d)", s->n_ctx, s->n_vocab);
        goto fail;
    }
    for (int i = 0; i < info.eos_count + nte; i++) {
        int32_t id = i < info.eos_count ? info.eos_ids[i] : te[i - info.eos_count];
        int dup = 0;
        for (int j = 0; j < s->n_eos; j++) dup |= s->eos[j] == id;
        if (!dup) s->eos[s->n_eos++] = id;
    }
    *out = s;
    return FM_OK;
fail:
    fm_session_free(s);
    return st;
}

void fm_session_free(fm_session *s) {
    if (!s) return;
    fm__state_free(s->st);
    fm__sampler_free(&s->smp);
    fm__stopper_free(&s->stop);
    free(s->toks);
    free(s->logits);
    free(s->eos);
    free(s->text);
    free(s);
}

void fm_session_set_progress(fm_session *s, fm_progress_fn fn, void *user) {
    if (!s) return;
    s->progress = fn;
    s->progress_user = user;
}

void fm_session_cancel(fm_session *s) {
    if (s) atomic_store(&s->cancel, 1);
}

void fm__session_set_chunk(fm_session *s, int32_t n) { s->chunk = n > 0 ? n : FM__PREFILL_CHUNK; }
int64_t fm__session_prefilled(const fm_session *s) { return s->prefilled; }

void fm_session_reset(fm_session *s) {
    if (!s) return;
    int32_t pos;
    if (rewind_to(s, 0, &pos) != FM_OK) fm__clear_err();
    s->n_toks = 0;
    s->n_gen = s->gen_start = 0;
    s->logits_ok = 0;
    s->n_snaps = 0;
    s->finish = FM_FINISH_NONE;
}

/* ---- context ---------------------------------------------------------------------- */

fm_status fm_session_set_tokens(fm_session *s, const int32_t *ids, size_t n) {
    if (!s || (!ids && n)) return fm__err(FM_ERR_ARG, "fm_session_set_tokens: NULL argument");
    if (n > (size_t)s->n_ctx)
        return fm__err(FM_ERR_CONTEXT_FULL,
                       "prompt of %zu tokens exceeds the context length of %d tokens", n,
                       s->n_ctx);
    fm_status st = check_ids(s, ids, n);
    if (st != FM_OK) return st;
    begin_call(s);
    s->stats.prompt_tokens = (int64_t)n;
    if (n == 0) {
        fm_session_reset(s);
        return FM_OK;
    }
    size_t lcp = 0;
    while (lcp < n && lcp < s->n_toks && s->toks[lcp] == ids[lcp]) lcp++;
    int32_t pos = fm__state_pos(s->st);
    if (lcp == n && n == s->n_toks && (size_t)pos == n && s->logits_ok) {
        s->stats.reused_tokens = (int64_t)n;
        s->call_open = 1;
        return FM_OK;
    }
    st = rewind_to(s, (int32_t)FM_MIN(lcp, n - 1), &pos);
    if (st != FM_OK) return st;
    memmove(s->toks + pos, ids + pos, (n - (size_t)pos) * sizeof *ids);
    s->n_toks = n;
    s->stats.reused_tokens = pos;
    s->logits_ok = 0;
    st = sync_state(s);
    if (st != FM_OK) return prefill_failed(s, st);
    note_prefill(s);
    snapshot(s);
    s->call_open = 1;
    return FM_OK;
}

fm_status fm_session_append_tokens(fm_session *s, const int32_t *ids, size_t n) {
    if (!s || (!ids && n)) return fm__err(FM_ERR_ARG, "fm_session_append_tokens: NULL argument");
    if (s->n_toks + n > (size_t)s->n_ctx)
        return fm__err(FM_ERR_CONTEXT_FULL,
                       "%zu held + %zu new tokens exceed the context length of %d tokens",
                       s->n_toks, n, s->n_ctx);
    fm_status st = check_ids(s, ids, n);
    if (st != FM_OK) return st;
    begin_call(s);
    s->stats.reused_tokens = fm__state_pos(s->st);
    memcpy(s->toks + s->n_toks, ids, n * sizeof *ids);
    s->n_toks += n;
    s->stats.prompt_tokens = (int64_t)s->n_toks;
    if (n) s->logits_ok = 0;
    st = sync_state(s);
    if (st != FM_OK) return prefill_failed(s, st);
    note_prefill(s);
    snapshot(s);
    s->call_open = 1;
    return FM_OK;
}

const int32_t *fm_session_tokens(const fm_session *s, size_t *n) {
    if (n) *n = s ? s->n_toks : 0;
    return s ? s->toks : NULL;
}

const int32_t *fm__session_generated(const fm_session *s, size_t *n) {
    *n = s->n_gen;
    return s->toks + s->gen_start;
}

fm_model *fm__session_model(const fm_session *s) { return s->m; }
int32_t fm__session_n_ctx(const fm_session *s) { return s->n_ctx; }
int32_t fm__session_pos(const fm_session *s) { return fm__state_pos(s->st); }

const float *fm_session_logits(const fm_session *s, int32_t *n_vocab) {
    if (n_vocab) *n_vocab = s ? s->n_vocab : 0;
    return s && s->logits_ok ? s->logits : NULL;
}

void fm_session_stats(const fm_session *s, fm_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!s) return;
    *out = s->stats;
    fill_memory(s, out);
}

int fm_session_finish_reason(const fm_session *s) { return s ? s->finish : FM_FINISH_NONE; }

/* ---- generation -------------------------------------------------------------------- */

static int text_add(fm_session *s, const char *p, size_t n) {
    if (s->text_len + n + 1 > s->text_cap) {
        size_t nc = s->text_cap ? s->text_cap : 256;
        while (nc < s->text_len + n + 1) nc *= 2;
        char *nt = realloc(s->text, nc);
        if (!nt) return -1;
        s->text = nt;
        s->text_cap = nc;
    }
    memcpy(s->text + s->text_len, p, n);
    s->text_len += n;
    s->text[s->text_len] = 0;
    return 0;
}

static int is_eos(const fm_session *s, int32_t id) {
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return 1;
    return 0;
}

/* Releases text: records it and streams it. Returns non-zero if the callback cancels. */
static int emit(fm_session *s, const char *p, size_t n, fm_stream_fn cb, void *user) {
    if (n && text_add(s, p, n) != 0) return -1;
    return cb ? cb(p, n, &s->stats, user) : 0;
}

fm_status fm_session_generate(fm_session *s, const fm_gen_params *gp, fm_stream_fn cb,
                              void *user, char **text) {
    if (text) *text = NULL;
    if (!s) return fm__err(FM_ERR_ARG, "fm_session_generate: session is NULL");
    fm_gen_params defp;
    if (!gp) {
        fm_gen_params_default(&defp);
        gp = &defp;
    }
    if (gp->n_stop < 0 || (gp->n_stop > 0 && !gp->stop) || gp->max_tokens < 0)
        return fm__err(FM_ERR_ARG, "fm_session_generate: bad stop list or max_tokens");
    s->finish = FM_FINISH_NONE;
    s->text_len = 0;
    if (s->text) s->text[0] = 0;
    if (s->n_toks == 0)
        return fm__err(FM_ERR_ARG, "fm_session_generate: the context is empty (append a prompt first)");
    if (!s->call_open) {
        begin_call(s);
        s->stats.prompt_tokens = (int64_t)s->n_toks;
        s->stats.reused_tokens = fm__state_pos(s->st);
    }
    s->call_open = 0;
    double t_gen = fm__now();
    double prefill_before = s->prefill_s;
    fm_status st = sync_state(s);
    if (st != FM_OK) {
        fill_memory(s, &s->stats);
        return prefill_failed(s, st);
    }
    note_prefill(s);
    double pre_ms = prefill_before * 1e3; /* prefill done by set/append_tokens */

    fm__sampler_seed(&s->smp, gp->seed);
    fm__sampler_reset_counts(&s->smp);
    fm__stopper *stop = &s->stop;
    fm__stopper_reset(stop, gp->stop, gp->n_stop);
    fm__tok_stream *ts = NULL;
    if (s->tok) {
        st = fm__tok_stream_new(s->tok, &ts);
        if (st != FM_OK) return st;
    }
    s->gen_start = s->n_toks;
    s->n_gen = 0;
    int finish = FM_FINISH_NONE, cancelled = 0;
    double t_first = 0;
    const char *r;
    size_t rl;
    for (;;) {
        if (gp->max_tokens > 0 && s->n_gen >= (size_t)gp->max_tokens) { finish = FM_FINISH_LENGTH; break; }
        if (s->n_toks >= (size_t)s->n_ctx) { finish = FM_FINISH_LENGTH; break; }
        if (cancel_requested(s)) { cancelled = 1; break; }
        if (s->n_gen > 0) { /* process the previous token */
            st = fm__forward(s->m, s->st, s->toks + s->n_toks - 1, 1, s->logits, 0);
            if (st != FM_OK) {
                s->logits_ok = 0;
                break;
            }
        }
        int32_t id = fm__sampler_sample(&s->smp, gp, s->logits, s->toks, s->n_toks);
        fm__sampler_accept(&s->smp, id);
        s->toks[s->n_toks++] = id;
        s->n_gen++;
        double now = fm__now();
        if (s->n_gen == 1) {
            t_first = now;
            s->stats.ttft_ms = pre_ms + (now - t_gen) * 1e3;
        } else {
            s->stats.decode_tok_s = (double)(s->n_gen - 1) / (now - t_first);
        }
        s->stats.generated_tokens = (int64_t)s->n_gen;
        if ((s->n_gen & 63) == 1) fill_memory(s, &s->stats); /* reads /proc: not per token */
        if (!gp->ignore_eos && is_eos(s, id)) { finish = FM_FINISH_EOS; break; }
        const char *piece = "";
        size_t plen = 0;
        if (ts) {
            st = fm__tok_stream_push(ts, id, &piece, &plen);
            if (st != FM_OK) break;
        }
        int m = fm__stopper_feed(stop, piece, plen, &r, &rl);
        if (m < 0) { st = fm__err(FM_ERR_NOMEM, "stop-string buffer"); break; }
        if (emit(s, r, rl, cb, user)) { cancelled = 1; break; }
        if (m == 1) { finish = FM_FINISH_STOP; break; }
    }
    if (st == FM_OK && !cancelled && finish != FM_FINISH_STOP) {
        /* release what is held back: an incomplete character, a stop prefix */
        if (ts && fm__tok_stream_flush(ts, &r, &rl) == FM_OK && rl) {
            int m = fm__stopper_feed(stop, r, rl, &r, &rl);
            if (m >= 0 && rl && emit(s, r, rl, cb, user)) cancelled = 1;
            if (m == 1) finish = FM_FINISH_STOP;
        }
        if (!cancelled && finish != FM_FINISH_STOP) {
            fm__stopper_flush(stop, &r, &rl);
            if (rl && emit(s, r, rl, cb, user)) cancelled = 1;
        }
    }
    fm__tok_stream_free(ts);
    fill_memory(s, &s->stats);
    if (st != FM_OK) {
        s->finish = FM_FINISH_NONE;
        return st;
    }
    /* turn boundary: let recurrent state snapshot what it has processed */
    snapshot(s);
    if (cancelled) {
        s->finish = FM_FINISH_CANCEL;
        return fm__err(FM_ERR_CANCELLED, "generation cancelled after %zu tokens", s->n_gen);
    }
    s->finish = finish;
    if (text) {
        *text = fm__strndup(s->text ? s->text : "", s->text_len);
        if (!*text) return fm__err(FM_ERR_NOMEM, "generated text (%zu bytes)", s->text_len);
    }
    return FM_OK;
}
