/* test_cancel.c: cancellable prefill. Chunked prefill (256 tokens, and odd chunk sizes)
 * gives the logits of one forward call over the whole prompt on the reference fixtures
 * (bitwise; Qwen3-Next's recurrent state within 1e-5); fm_session_cancel from another thread
 * stops a ~2000-token prefill of the demo model within one chunk of the moment it was asked,
 * the session keeps exactly the whole chunks processed, and the next request on that
 * session reuses them and gives logits bitwise equal to a fresh session's. Also: the
 * progress callback's sequence and its cancel, fm_session_cancel between tokens, and that a
 * cancel made after a turn does not leak into the next one. Counts chunks, never time. */
#include "tap.h"
#include "session.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256 /* the library's prefill chunk */

/* Chunk size of the cancel tests: the default, or smaller for short-context fixtures. */
static int32_t g_chunk = CHUNK;

static fm_model *open_model(const char *dir, int32_t n_ctx) {
    fm_model_params p;
    fm_model_params_default(&p);
    p.cache_dir = "";
    p.n_ctx = n_ctx;
    fm_model *m = NULL;
    if (fm_model_open(dir, &p, &m) != FM_OK) {
        printf("# open %s: %s\n", dir, fm_last_error());
        return NULL;
    }
    return m;
}

static fm_gen_params greedy(int32_t n) {
    fm_gen_params p;
    fm_gen_params_default(&p);
    p.max_tokens = n;
    p.ignore_eos = 1;
    return p;
}

/* Largest |a - b| over n floats; 0 means bitwise equal unless NaNs (checked by memcmp). */
static double max_diff(const float *a, const float *b, int32_t n) {
    double d = 0;
    for (int32_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* Prefills ids[0..n) on a fresh session with the given chunk size (INT32_MAX: one forward
 * call), greedily generates 4 tokens, and returns the logits after the prompt (out[0..V))
 * and the 4 tokens. */
static int run_chunked(fm_model *m, const int32_t *ids, size_t n, int32_t chunk, float *out,
                       int32_t gen[4]) {
    fm_session *s = NULL;
    if (fm_session_new(m, &s) != FM_OK) return -1;
    fm__session_set_chunk(s, chunk);
    int rc = -1;
    if (fm_session_set_tokens(s, ids, n) == FM_OK) {
        int32_t V = 0;
        const float *lg = fm_session_logits(s, &V);
        fm_gen_params gp = greedy(4);
        if (lg) {
            memcpy(out, lg, (size_t)V * sizeof *out);
            size_t ng = 0;
            if (fm_session_generate(s, &gp, NULL, NULL, NULL) == FM_OK) {
                const int32_t *g = fm__session_generated(s, &ng);
                if (ng == 4) {
                    memcpy(gen, g, 4 * sizeof *gen);
                    rc = 0;
                }
            }
        }
    }
    fm_session_free(s);
    return rc;
}

/* Chunked prefill against one forward call over n pseudo-random tokens. */
static void test_chunking(const char *name, int32_t n, double tol) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", tap_root(), name);
    fm_model *m = open_model(dir, 0);
    if (!m) { CHECK(0, "%s: model opens", name); return; }
    fm_model_info info;
    fm_model_get_info(m, &info);
    if (n > info.n_ctx - 8) n = info.n_ctx - 8;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    float *ref = malloc((size_t)info.vocab * sizeof *ref), *got = malloc((size_t)info.vocab * sizeof *got);
    uint32_t x = 12345;
    for (int32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = (int32_t)((x >> 8) % (uint32_t)info.vocab);
    }
    int32_t gref[4], g[4];
    int ok = run_chunked(m, ids, (size_t)n, INT32_MAX, ref, gref) == 0;
    double scale = 1; /* tolerances are relative to the largest logit (at least 1) */
    for (int32_t v = 0; ok && v < info.vocab; v++) scale = fmax(scale, fabs(ref[v]));
    CHECK(ok, "%s: one-call prefill of %d tokens (max |logit| %.2f)", name, n, scale);
    static const int32_t chunks[] = {CHUNK, 100, 37};
    for (size_t c = 0; ok && c < sizeof chunks / sizeof chunks[0]; c++) {
        int r = run_chunked(m, ids, (size_t)n, chunks[c], got, g);
        double d = r == 0 ? max_diff(ref, got, info.vocab) : INFINITY;
        int bitwise = r == 0 && memcmp(ref, got, (size_t)info.vocab * sizeof *ref) == 0;
        int same_gen = r == 0 && memcmp(gref, g, sizeof g) == 0;
        if (tol == 0)
            CHECK(bitwise && same_gen, "%s: prefill in chunks of %d: logits bitwise equal to one "
                  "call, same 4 greedy tokens", name, chunks[c]);
        else
            CHECK(r == 0 && d <= tol * scale && same_gen, "%s: prefill in chunks of %d: max |logit "
                  "diff| %.2e <= %.0e x max |logit| (%s), same 4 greedy tokens", name, chunks[c], d,
                  tol, bitwise ? "bitwise equal" : "not bitwise");
    }
    free(ids);
    free(ref);
    free(got);
    fm_model_free(m);
}

/* ---- cancel from another thread ------------------------------------------------------ */

typedef struct {
    fm_session *s;
    atomic_llong done;       /* progress published by the callback */
    atomic_llong seen;       /* progress the canceller read right after cancelling */
    atomic_int calls;
    int64_t cancel_at;       /* the canceller cancels once done >= cancel_at */
    /* handshake mode: the callback blocks at cancel_at until the canceller has cancelled */
    int handshake;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int reached, cancelled;
} canceller;

static int on_progress(int64_t done, int64_t total, void *user) {
    (void)total;
    canceller *c = user;
    atomic_fetch_add(&c->calls, 1);
    atomic_store(&c->done, (long long)done);
    if (c->handshake && done == c->cancel_at) {
        pthread_mutex_lock(&c->mu);
        c->reached = 1;
        pthread_cond_broadcast(&c->cv);
        while (!c->cancelled) pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
    }
    return 0;
}

static void *cancel_thread(void *arg) {
    canceller *c = arg;
    if (c->handshake) {
        pthread_mutex_lock(&c->mu);
        while (!c->reached) pthread_cond_wait(&c->cv, &c->mu);
        fm_session_cancel(c->s);
        c->cancelled = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    } else {
        while (atomic_load(&c->done) < c->cancel_at) sched_yield();
        fm_session_cancel(c->s);
        atomic_store(&c->seen, atomic_load(&c->done));
    }
    return NULL;
}

/* Runs fm_session_set_tokens(ids) on s while another thread cancels; returns its status. */
static fm_status set_tokens_cancelled(canceller *c, const int32_t *ids, size_t n) {
    pthread_t th;
    pthread_create(&th, NULL, cancel_thread, c);
    fm_session_set_progress(c->s, on_progress, c);
    fm_status st = fm_session_set_tokens(c->s, ids, n);
    fm_session_set_progress(c->s, NULL, NULL);
    if (c->handshake && st == FM_OK) { /* never reached the cancel point: free the thread */
        pthread_mutex_lock(&c->mu);
        c->reached = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    pthread_join(th, NULL);
    return st;
}

static void canceller_init(canceller *c, fm_session *s, int64_t at, int handshake) {
    memset(c, 0, sizeof *c);
    c->s = s;
    atomic_init(&c->done, -1);
    atomic_init(&c->seen, -1);
    atomic_init(&c->calls, 0);
    c->cancel_at = at;
    c->handshake = handshake;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void canceller_free(canceller *c) {
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

/* A fresh session's logits and 4 greedy tokens for ids. */
static int fresh(fm_model *m, const int32_t *ids, size_t n, float *lg, int32_t gen[4]) {
    return run_chunked(m, ids, n, CHUNK, lg, gen);
}

/* Cancel mid-prefill (chunks of g_chunk tokens), then the full prompt again: it reuses the kept
 * chunks and equals a fresh session bitwise. */
static void test_thread_cancel(const char *label, fm_model *m, const int32_t *ids, size_t n) {
    fm_model_info info;
    fm_model_get_info(m, &info);
    int32_t V = info.vocab;
    float *ref = malloc((size_t)V * sizeof *ref);
    int32_t gref[4], g[4];
    CHECK(fresh(m, ids, n, ref, gref) == 0, "%s: fresh session prefills %zu tokens", label, n);
    fm_session *s = NULL;
    fm_session_new(m, &s);
    fm__session_set_chunk(s, g_chunk);

    /* 1. handshake: cancelled while the third chunk is about to start */
    canceller c;
    canceller_init(&c, s, 2 * g_chunk, 1);
    fm_status st = set_tokens_cancelled(&c, ids, n);
    size_t held = 0;
    const int32_t *t = fm_session_tokens(s, &held);
    CHECK(st == FM_ERR_CANCELLED, "%s: cancel from another thread mid-prefill returns "
          "FM_ERR_CANCELLED (%s)", label, fm_status_str(st));
    CHECK(fm__session_prefilled(s) == 2 * g_chunk && atomic_load(&c.calls) == 3,
          "%s: exactly the 2 chunks before the cancel ran (%lld tokens of %zu, %d progress calls)",
          label, (long long)fm__session_prefilled(s), n, atomic_load(&c.calls));
    CHECK(held == 2 * g_chunk && fm__session_pos(s) == 2 * g_chunk && memcmp(t, ids, held * 4) == 0,
          "%s: the session holds exactly the processed prefix (%zu tokens, state at %d)", label,
          held, fm__session_pos(s));
    CHECK(fm_session_logits(s, NULL) == NULL && fm_session_finish_reason(s) == FM_FINISH_CANCEL,
          "%s: no stale logits; finish reason cancel", label);
    canceller_free(&c);

    /* 2. the next request on the same session reuses the kept chunks, equals a fresh one */
    st = fm_session_set_tokens(s, ids, n);
    fm_stats ss;
    fm_session_stats(s, &ss);
    const float *lg = fm_session_logits(s, NULL);
    CHECK(st == FM_OK && ss.reused_tokens == 2 * g_chunk && fm__session_prefilled(s) == (int64_t)n - 2 * g_chunk,
          "%s: next request reuses the %d kept tokens, prefills the other %lld", label, 2 * g_chunk,
          (long long)fm__session_prefilled(s));
    fm_gen_params gp = greedy(4);
    int gen_ok = st == FM_OK && lg && memcmp(lg, ref, (size_t)V * 4) == 0;
    if (gen_ok && fm_session_generate(s, &gp, NULL, NULL, NULL) == FM_OK) {
        size_t ng = 0;
        const int32_t *gg = fm__session_generated(s, &ng);
        gen_ok = ng == 4 && memcmp(gg, gref, sizeof gref) == 0;
    } else {
        gen_ok = 0;
    }
    CHECK(gen_ok, "%s: its logits are bitwise equal to a fresh session's, same 4 greedy tokens", label);

    /* 3. free-running canceller: cancels as soon as it sees a chunk done; at most the chunk
     *    in flight at that moment completes */
    fm_session_reset(s);
    canceller_init(&c, s, g_chunk, 0);
    st = set_tokens_cancelled(&c, ids, n);
    long long seen = atomic_load(&c.seen), pre = fm__session_prefilled(s);
    fm_session_tokens(s, &held);
    CHECK(st == FM_ERR_CANCELLED && seen >= g_chunk && pre % g_chunk == 0 && pre <= seen + g_chunk &&
          (long long)held == pre,
          "%s: free-running cancel: stopped %lld tokens after the progress seen at the cancel "
          "(%lld), whole chunks held (%zu)", label, pre - seen, seen, held);
    canceller_free(&c);
    /* a prompt that diverges inside the kept prefix: rewinds, still exact */
    int32_t *alt = malloc(n * sizeof *alt);
    memcpy(alt, ids, n * sizeof *alt);
    alt[g_chunk / 2] = (alt[g_chunk / 2] + 1) % V;
    float *ref2 = malloc((size_t)V * sizeof *ref2);
    int ok2 = fresh(m, alt, n, ref2, g) == 0;
    st = fm_session_set_tokens(s, alt, n);
    lg = fm_session_logits(s, NULL);
    CHECK(ok2 && st == FM_OK && lg && memcmp(lg, ref2, (size_t)V * 4) == 0,
          "%s: after a cancel, a prompt diverging inside the kept prefix is bitwise exact", label);
    free(alt);
    free(ref2);
    free(ref);
    fm_session_free(s);
}

/* ---- progress callback and cancel between tokens --------------------------------------- */

typedef struct {
    int64_t done[64], total;
    int n;
    int stop_at;    /* return non-zero on this call (0-based), -1 = never */
} progress_log;

static int log_progress(int64_t done, int64_t total, void *user) {
    progress_log *p = user;
    if (p->n < 64) p->done[p->n] = done;
    p->total = total;
    return p->n++ == p->stop_at;
}

typedef struct {
    fm_session *s;
    int at, pieces;
} token_cancel;

static int cancel_on_piece(const char *piece, size_t len, const fm_stats *st, void *user) {
    (void)piece; (void)len;
    token_cancel *tc = user;
    tc->pieces++;
    if (st->generated_tokens == tc->at) fm_session_cancel(tc->s);
    return 0;
}

static void test_progress(fm_model *m, const int32_t *ids, size_t n) {
    fm_session *s = NULL;
    fm_session_new(m, &s);
    progress_log p = {.stop_at = -1};
    fm_session_set_progress(s, log_progress, &p);
    fm_status st = fm_session_set_tokens(s, ids, n);
    int seq = st == FM_OK && p.total == (int64_t)n && p.n == (int)((n + CHUNK - 1) / CHUNK) + 1;
    for (int i = 0; seq && i < p.n && i < 64; i++)
        seq = p.done[i] == (i == p.n - 1 ? (int64_t)n : (int64_t)i * CHUNK);
    CHECK(seq, "progress: %d calls, done 0, 256, ..., %zu of total %lld", p.n, n, (long long)p.total);

    /* the callback cancels before the 4th chunk; append_tokens keeps whole chunks too */
    fm_session_reset(s);
    p = (progress_log){.stop_at = 3};
    st = fm_session_append_tokens(s, ids, n);
    size_t held = 0;
    fm_session_tokens(s, &held);
    CHECK(st == FM_ERR_CANCELLED && held == 3 * CHUNK && fm__session_pos(s) == 3 * CHUNK,
          "progress callback returning non-zero cancels append_tokens after 3 chunks (%zu held)", held);
    CHECK(strstr(fm_last_error(), "768 of") != NULL, "the error names the tokens done: \"%s\"",
          fm_last_error());
    fm_session_set_progress(s, NULL, NULL);

    /* fm_session_cancel between generated tokens, with no stream callback cancelling */
    st = fm_session_set_tokens(s, ids, 100);
    token_cancel tc = {s, 3, 0};
    fm_gen_params gp = greedy(50);
    fm_status g = fm_session_generate(s, &gp, cancel_on_piece, &tc, NULL);
    fm_stats ss;
    fm_session_stats(s, &ss);
    CHECK(st == FM_OK && g == FM_ERR_CANCELLED && ss.generated_tokens == 3 &&
          fm_session_finish_reason(s) == FM_FINISH_CANCEL,
          "fm_session_cancel during generation stops before the next token (%lld generated)",
          (long long)ss.generated_tokens);

    /* a cancel made after a turn ended does not cancel the next turn */
    fm_session_cancel(s);
    st = fm_session_set_tokens(s, ids, 300);
    gp = greedy(3);
    g = fm_session_generate(s, &gp, NULL, NULL, NULL);
    CHECK(st == FM_OK && g == FM_OK && fm_session_finish_reason(s) == FM_FINISH_LENGTH,
          "a cancel made while idle is cleared by the next turn");
    /* ... but one made between set_tokens and generate cancels that turn's generation */
    st = fm_session_set_tokens(s, ids, 310);
    fm_session_cancel(s);
    g = fm_session_generate(s, &gp, NULL, NULL, NULL);
    fm_session_stats(s, &ss);
    CHECK(st == FM_OK && g == FM_ERR_CANCELLED && ss.generated_tokens == 0,
          "a cancel between set_tokens and generate cancels the turn before its first token");
    fm_session_free(s);
}

int main(void) {
    /* chunking against one call: attention models bitwise, Qwen3-Next within 1e-5 */
    test_chunking("qwen3_moe_f32", 700, 0);
    test_chunking("qwen2_moe_f32", 700, 0);
    test_chunking("mixtral_f32", 700, 0);
    test_chunking("olmoe_f32", 700, 0);
    test_chunking("qwen3_moe_q4_g64", 700, 0);
    test_chunking("qwen3_next_f32", 500, 1e-5);

    /* the demo model: a ~2000-token prompt */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/demo", tap_root());
    fm_model *m = open_model(dir, 0);
    CHECK(m != NULL, "demo model opens");
    if (!m) return TAP_DONE();
    const char *unit = "The quick brown fox jumps over the lazy dog, and then it runs away. ";
    size_t ul = strlen(unit), reps = 160;
    char *text = malloc(ul * reps + 1);
    for (size_t i = 0; i < reps; i++) memcpy(text + i * ul, unit, ul);
    text[ul * reps] = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    fm_status st = fm_tokenize(m, text, ul * reps, 0, &ids, &n);
    free(text);
    fm_model_info info;
    fm_model_get_info(m, &info);
    if (st == FM_OK && n > (size_t)info.n_ctx - 16) n = (size_t)info.n_ctx - 16;
    CHECK(st == FM_OK && n >= 1900, "demo: prompt of %zu tokens", n);
    if (st == FM_OK) {
        test_thread_cancel("demo", m, ids, n);
        test_progress(m, ids, n);
    }
    fm_free(ids);
    fm_model_free(m);

    /* recurrent state: cancel and resume on Qwen3-Next */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/qwen3_next_f32", tap_root());
    m = open_model(dir, 0);
    if (m) {
        fm_model_get_info(m, &info);
        size_t nq = (size_t)info.n_ctx - 8;
        int32_t *q = malloc(nq * sizeof *q);
        for (size_t i = 0; i < nq; i++) q[i] = (int32_t)((i * 7919u + 13u) % (uint32_t)info.vocab);
        g_chunk = 128; /* a context of 512 holds only 2 chunks of 256 */
        test_thread_cancel("qwen3_next_f32", m, q, nq);
        free(q);
        fm_model_free(m);
    } else {
        CHECK(0, "qwen3_next_f32 opens");
    }
    return TAP_DONE();
}
