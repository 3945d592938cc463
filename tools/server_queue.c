/* server_queue.c: the generation side of `flash-moe serve`. One worker thread takes jobs
 * from a bounded FIFO queue and runs them one at a time; each job is routed to the cached
 * session whose tokens share the longest prefix with its prompt, so a growing
 * conversation is not prefilled again. A job whose client left is cancelled between
 * prefill chunks (256 tokens) and between tokens; the chunks it prefilled stay in its
 * session for the next request. Also: byte buffers, UTF-8 checks and job lifetime. */
#include "server.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- buffers ----------------------------------------------------------------------- */

static int sb_reserve(srv_buf *b, size_t extra) {
    if (b->oom) return -1;
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + extra + 1) {
        if (nc > SIZE_MAX / 2) { b->oom = 1; return -1; }
        nc *= 2;
    }
    char *np = realloc(b->p, nc);
    if (!np) { b->oom = 1; return -1; }
    b->p = np;
    b->cap = nc;
    return 0;
}

void sb_put(srv_buf *b, const char *s, size_t n) {
    if (sb_reserve(b, n)) return;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sb_puts(srv_buf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(srv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) { sb_put(b, tmp, (size_t)k); return; }
    if (sb_reserve(b, (size_t)k)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

void sb_json(srv_buf *b, const cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    if (!s) { b->oom = 1; return; }
    sb_puts(b, s);
    cJSON_free(s);
}

void sb_free(srv_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

int srv_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 character. */
static size_t utf8_complete(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && (s[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return n;
    unsigned c = s[i - 1];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return (back + 1 >= need) ? n : i - 1;
}

void srv_make_id(char *dst, size_t cap, const char *prefix) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[24];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        uint64_t x = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)dst;
        for (size_t i = 0; i < sizeof r; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            r[i] = (unsigned char)(x >> 56);
        }
    }
    size_t k = (size_t)snprintf(dst, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof r && k + 1 < cap; i++) dst[k++] = al[r[i] % 62];
    if (k < cap) dst[k] = 0;
}

/* ---- jobs -------------------------------------------------------------------------- */

srv_job *srv_job_new(server *s, int api) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->srv = s;
    j->api = api;
    j->refs = 1;
    pthread_cond_init(&j->cv, NULL);
    pthread_mutex_lock(&s->mu);
    s->n_jobs++;
    pthread_mutex_unlock(&s->mu);
    j->created = (long)time(NULL);
    j->stop_idx = -1;
    j->gp = s->defaults;
    srv_make_id(j->id, sizeof j->id, api == API_MESSAGES ? "msg_" : api == API_CHAT ? "chatcmpl-" : "cmpl-");
    return j;
}

void srv_job_ref(srv_job *j) {
    pthread_mutex_lock(&j->srv->mu);
    j->refs++;
    pthread_mutex_unlock(&j->srv->mu);
}

/* Frees j; locked says whether the caller holds srv->mu. */
static void job_free(srv_job *j, int locked) {
    if (!locked) pthread_mutex_lock(&j->srv->mu);
    j->srv->n_jobs--;
    if (!locked) pthread_mutex_unlock(&j->srv->mu);
    free(j->ids);
    for (int i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->stops);
    free(j->prefix);
    sb_free(&j->out);
    sb_free(&j->text);
    sb_free(&j->acc);
    sb_free(&j->tb);
    sb_free(&j->ws);
    sb_free(&j->th);
    sb_free(&j->reasoning);
    cJSON_Delete(j->tools);
    for (int i = 0; i < j->n_calls; i++) {
        free(j->calls[i].id);
        free(j->calls[i].name);
        free(j->calls[i].args);
    }
    free(j->calls);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void srv_job_unref(srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->srv->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->srv->mu);
    if (last) job_free(j, 0);
}

void srv_job_fail(srv_job *j, int status, const char *type, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err_msg, sizeof j->err_msg, fmt, ap);
    va_end(ap);
    snprintf(j->err_type, sizeof j->err_type, "%s", type);
    j->err_status = status;
    j->finish = FIN_ERROR;
}

/* Under s->mu. */
static void cancel_locked(srv_job *j) {
    server *s = j->srv;
    if (j->state == JOB_DONE || j->cancel) return;
    j->cancel = 1;
    s->n_cancelled++;
    if (j->state == JOB_QUEUED) {
        /* unlink from the queue; the queue's reference is dropped here */
        srv_job **pp = &s->head, *prev = NULL;
        while (*pp && *pp != j) { prev = *pp; pp = &(*pp)->next; }
        if (*pp) {
            *pp = j->next;
            if (s->tail == j) s->tail = prev;
            j->next = NULL;
            s->n_waiting--;
            j->state = JOB_DONE;
            j->finish = FIN_CANCEL;
            j->refs--; /* never the last: the canceller holds one */
        }
    }
    pthread_cond_broadcast(&j->cv);
}

void srv_job_cancel(srv_job *j) {
    pthread_mutex_lock(&j->srv->mu);
    cancel_locked(j);
    pthread_mutex_unlock(&j->srv->mu);
}

int srv_queue_push(srv_job *j) {
    server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->n_waiting >= s->cfg.queue + (s->busy ? 0 : 1)) {
        s->n_rejected++;
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    j->refs++;
    j->state = JOB_QUEUED;
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->n_waiting++;
    s->n_requests++;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* ---- generation -------------------------------------------------------------------- */

static int job_cancelled(srv_job *j) {
    pthread_mutex_lock(&j->srv->mu);
    int c = j->cancel || j->srv->stopping;
    pthread_mutex_unlock(&j->srv->mu);
    return c;
}

static int on_piece(const char *piece, size_t len, const fm_stats *st, void *user) {
    (void)st;
    srv_job *j = user;
    j->n_pieces++;
    if (srv_pipe_feed(j, piece, len)) return 1;
    return job_cancelled(j);
}

/* Prefill progress (fm_progress_fn): counts the tokens, publishes the progress for /health,
 * prints it with --stats (at most once a second), and cancels a job whose client left. */
static int on_prefill(int64_t done, int64_t total, void *user) {
    srv_job *j = user;
    server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    s->prefill_tokens += done - j->prefilled;
    j->prefilled = done;
    j->prefill_total = total;
    s->prefill_done = done;
    s->prefill_total = total;
    int c = j->cancel || s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (s->cfg.stats && done > 0 && done < total) {
        double now = srv_now();
        if (now - j->last_progress >= 1.0) {
            j->last_progress = now;
            fprintf(stderr, "flash-moe: prefill %lld of %lld tokens\n", (long long)done, (long long)total);
        }
    }
    return c;
}

/* Picks the session for a prompt of n tokens. Let l be a session's common prefix with the
 * prompt and m the tokens it holds. The session with the longest l wins (a continuation,
 * l == m, on ties) when it is a continuation, or when l covers at least half the prompt and
 * at least half of what the session holds (a short prompt must not throw away most of a
 * long conversation's cache, e.g. one whose request was cancelled and will be retried).
 * Otherwise a conversation that merely shares a system prompt must not overwrite another's
 * cache: a new session is made while fewer than cfg.sessions exist, else the least recently
 * used one is taken. */
static fm_session *pick_session(server *s, const int32_t *ids, size_t n) {
    int best = -1, best_cont = 0;
    size_t best_l = 0, best_m = 0;
    for (int i = 0; i < s->n_sess; i++) {
        size_t m = 0;
        const int32_t *t = fm_session_tokens(s->sess[i], &m);
        size_t l = 0;
        while (t && l < m && l < n && t[l] == ids[l]) l++;
        int cont = m > 0 && l == m;
        if (l > best_l || (l == best_l && l > 0 && cont && !best_cont)) {
            best_l = l;
            best_m = m;
            best = i;
            best_cont = cont;
        }
    }
    if (best >= 0 && !best_cont && (best_l * 2 < n || best_l * 2 < best_m)) best = -1;
    if (best < 0) {
        if (s->n_sess < s->cfg.sessions) {
            fm_session *ns = NULL;
            if (fm_session_new(s->model, &ns) != FM_OK) return NULL;
            best = s->n_sess++;
            s->sess[best] = ns;
        } else {
            best = 0;
            for (int i = 1; i < s->n_sess; i++)
                if (s->sess_used[i] < s->sess_used[best]) best = i;
        }
    }
    s->sess_used[best] = ++s->clock;
    return s->sess[best];
}

/* Streams the --force-completion tokens through the normal output path. Each token is
 * also appended to the session (one decode step per token, as in sampling), so timing,
 * KV-cache growth and prefix reuse behave as in real generation. */
static fm_status run_forced(srv_job *j, fm_session *se) {
    server *s = j->srv;
    size_t done = 0, limit = s->n_forced;
    if (j->gp.max_tokens > 0 && (size_t)j->gp.max_tokens < limit) limit = (size_t)j->gp.max_tokens;
    size_t i;
    for (i = 0; i < limit; i++) {
        fm_status st = fm_session_append_tokens(se, &s->forced_ids[i], 1);
        if (st != FM_OK) { j->completion_tokens = (int64_t)i; return st; }
        char *t = NULL;
        size_t tl = 0;
        if (fm_detokenize(s->model, s->forced_ids, i + 1, &t, &tl) != FM_OK) return FM_ERR_TOKENIZER;
        size_t ok = i + 1 == s->n_forced ? tl : utf8_complete(t, tl);
        int stop = 0;
        if (ok > done) {
            stop = on_piece(t + done, ok - done, NULL, j);
            done = ok;
        } else {
            stop = job_cancelled(j);
        }
        fm_free(t);
        if (stop) { j->completion_tokens = (int64_t)i + 1; return FM_ERR_CANCELLED; }
    }
    j->completion_tokens = (int64_t)i;
    return FM_OK;
}

static void run_job(server *s, srv_job *j) {
    j->prompt_tokens = (int64_t)j->n_ids;
    fm_session *se = pick_session(s, j->ids, j->n_ids);
    if (!se) {
        srv_job_fail(j, 500, "server_error", "cannot create a session: %s", fm_last_error());
        srv_emit_start(j);
        srv_emit_end(j);
        return;
    }
    j->last_progress = srv_now();
    fm_session_set_progress(se, on_prefill, j);
    fm_status st = fm_session_set_tokens(se, j->ids, j->n_ids);
    fm_session_set_progress(se, NULL, NULL);
    if (st != FM_OK && st != FM_ERR_CANCELLED) {
        if (st == FM_ERR_CONTEXT_FULL)
            srv_job_fail(j, 400, "invalid_request_error", "%s", fm_last_error());
        else
            srv_job_fail(j, 500, "server_error", "prefill failed: %s", fm_last_error());
        fm_session_reset(se);
        srv_emit_start(j);
        srv_emit_end(j);
        return;
    }
    fm_stats stats;
    fm_session_stats(se, &stats);
    j->reused_tokens = stats.reused_tokens;
    srv_emit_start(j);
    int fin = FM_FINISH_NONE;
    if (st == FM_ERR_CANCELLED) {
        /* the client left (or the server stops) during prefill: nothing is generated, and
         * the session keeps the chunks prefilled so far for a later request */
        fin = FM_FINISH_CANCEL;
    } else {
        if (j->prefix) srv_pipe_feed(j, j->prefix, strlen(j->prefix));
        if (s->forced_ids) {
            st = run_forced(j, se);
            fin = st == FM_OK ? (j->completion_tokens < (int64_t)s->n_forced ? FM_FINISH_LENGTH
                                                                           : FM_FINISH_EOS)
                              : FM_FINISH_CANCEL;
        } else {
            st = fm_session_generate(se, &j->gp, on_piece, j, NULL);
            fm_session_stats(se, &stats);
            j->completion_tokens = stats.generated_tokens;
            fin = fm_session_finish_reason(se);
            if (s->cfg.stats)
                fprintf(stderr, "flash-moe: TTFT %.1f ms, prefill %.1f tok/s, decode %.2f tok/s, expert cache "
                        "hit rate %.1f%%, read %.3f GiB, io wait %.1f ms, RSS %.3f GiB, KV %.3f GiB\n",
                        stats.ttft_ms, stats.prefill_tok_s, stats.decode_tok_s, stats.hit_rate * 100,
                        (double)stats.bytes_read / 1073741824.0, stats.io_wait_ms,
                        (double)stats.rss_bytes / 1073741824.0, (double)stats.kv_bytes / 1073741824.0);
        }
    }
    pthread_mutex_lock(&s->mu);
    int shutdown = st == FM_ERR_CANCELLED && !j->stop_hit && !j->cancel && s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (shutdown) {
        srv_job_fail(j, 503, "overloaded_error", "the server is shutting down");
    } else if (st == FM_OK || st == FM_ERR_CANCELLED) {
        if (j->stop_hit) j->finish = FIN_STOPSEQ;
        else if (st == FM_ERR_CANCELLED) j->finish = FIN_CANCEL;
        else if (fin == FM_FINISH_LENGTH) j->finish = FIN_LENGTH;
        else j->finish = FIN_STOP;
    } else if (st == FM_ERR_CONTEXT_FULL) {
        j->finish = FIN_LENGTH;
    } else {
        srv_job_fail(j, 500, "server_error", "generation failed: %s", fm_last_error());
    }
    srv_pipe_finish(j);
    if (j->n_calls > 0 && (j->finish == FIN_STOP || j->finish == FIN_STOPSEQ)) j->finish = FIN_TOOLS;
    srv_emit_end(j);
}

/* One line per generation on stderr. */
static void log_job(const srv_job *j, double secs) {
    static const char *const api[] = {"chat", "completion", "messages"};
    static const char *const fin[] = {"none", "stop", "stop sequence", "length", "tool calls",
                                      "cancelled", "error"};
    char pre[96] = "";
    if (j->prefilled < j->prefill_total)
        snprintf(pre, sizeof pre, ", prefill stopped after %lld of %lld tokens",
                 (long long)j->prefilled, (long long)j->prefill_total);
    fprintf(stderr, "flash-moe: %s%s: prompt %lld tokens (%lld reused), %lld generated, %s%s, "
            "%.2f s%s%s\n", api[j->api], j->stream ? " stream" : "", (long long)j->prompt_tokens,
            (long long)j->reused_tokens, (long long)j->completion_tokens, fin[j->finish], pre, secs,
            j->finish == FIN_ERROR ? ": " : "", j->finish == FIN_ERROR ? j->err_msg : "");
}

static void *worker_main(void *arg) {
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->work_cv, &s->mu);
        if (s->stopping) break;
        srv_job *j = s->head;
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        j->next = NULL;
        s->n_waiting--;
        j->state = JOB_RUNNING;
        s->busy = 1;
        s->n_generations++;
        pthread_mutex_unlock(&s->mu);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        run_job(s, j);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        log_job(j, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        pthread_mutex_lock(&s->mu);
        s->reused_tokens += j->reused_tokens;
        s->prefill_done = s->prefill_total = 0;
        j->state = JOB_DONE;
        s->busy = 0;
        pthread_cond_broadcast(&j->cv);
        if (--j->refs == 0) {
            pthread_mutex_unlock(&s->mu);
            job_free(j, 0);
            pthread_mutex_lock(&s->mu);
        }
    }
    /* shutting down: fail what still waits */
    while (s->head) {
        srv_job *j = s->head;
        s->head = j->next;
        j->next = NULL;
        s->n_waiting--;
        srv_job_fail(j, 503, "overloaded_error", "the server is shutting down");
        j->state = JOB_DONE;
        pthread_cond_broadcast(&j->cv);
        if (--j->refs == 0) job_free(j, 1);
    }
    s->tail = NULL;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int srv_queue_start(server *s) {
    if (s->cfg.sessions < 1) s->cfg.sessions = 1;
    s->sess = calloc((size_t)s->cfg.sessions, sizeof *s->sess);
    s->sess_used = calloc((size_t)s->cfg.sessions, sizeof *s->sess_used);
    if (!s->sess || !s->sess_used) return -1;
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) return -1;
    s->worker_started = 1;
    return 0;
}

void srv_queue_stop(server *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->worker_started) pthread_join(s->worker, NULL);
    s->worker_started = 0;
    for (int i = 0; i < s->n_sess; i++) fm_session_free(s->sess[i]);
    free(s->sess);
    free(s->sess_used);
    s->sess = NULL;
    s->sess_used = NULL;
    s->n_sess = 0;
}

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void srv_job_write(srv_job *j, const char *s, size_t n) {
    double now = srv_now();
    pthread_mutex_lock(&j->srv->mu);
    sb_put(&j->out, s, n);
    /* unsignalled output is still picked up by the reader's next poll or signal */
    if (now - j->last_signal >= SRV_COALESCE_S) {
        pthread_cond_broadcast(&j->cv);
        j->last_signal = now;
    }
    pthread_mutex_unlock(&j->srv->mu);
}

char *srv_pool_add(srv_pool *pl, char *str) {
    if (!str) return NULL;
    if (pl->n == pl->cap) {
        int nc = pl->cap ? pl->cap * 2 : 16;
        char **np = realloc(pl->p, (size_t)nc * sizeof *np);
        if (!np) { free(str); return NULL; }
        pl->p = np;
        pl->cap = nc;
    }
    pl->p[pl->n++] = str;
    return str;
}

void srv_pool_free(srv_pool *pl) {
    for (int i = 0; i < pl->n; i++) free(pl->p[i]);
    free(pl->p);
    memset(pl, 0, sizeof *pl);
}

int srv_num(const cJSON *obj, const char *key, double lo, double hi, int integer, double *out,
            char *msg, size_t msg_len, const char **param) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    double x = v->valuedouble;
    if (!cJSON_IsNumber(v) || x != x || (integer && x != trunc(x))) {
        snprintf(msg, msg_len, "'%s' must be %s", key, integer ? "an integer" : "a number");
        *param = key;
        return -1;
    }
    if (x < lo || x > hi) {
        snprintf(msg, msg_len, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
        *param = key;
        return -1;
    }
    *out = x;
    return 1;
}

const char *srv_unknown_key(const cJSON *obj, const char *const *allowed) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (int k = 0; allowed[k]; k++)
            if (it->string && strcmp(it->string, allowed[k]) == 0) { ok = 1; break; }
        if (!ok) return it->string ? it->string : "";
    }
    return NULL;
}
